/* The smallest useful resil-pg program: one dependency, one query under a
 * deadline. Usage: pg_minimal 'host=127.0.0.1 port=5432 dbname=app user=app' */
#include <stdio.h>

#include "resil/pg.h"

int main(int argc, char **argv) {
  if (argc < 2) return fprintf(stderr, "usage: %s CONNINFO\n", argv[0]), 2;
  resil_err err;
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, "example-db");
  cfg.conninfo = argv[1];
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) return fprintf(stderr, "%s\n", err.msg), 1;

  const char *params[] = {"41"};
  PGresult *res = NULL;
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(500), RESIL_CALL_IDEMPOTENT,
                                   "SELECT $1::int + 1", 1, params, &res, &err);
  if (st == RESIL_OK)
    printf("answer = %s\n", resil_pg_value(res, 0, 0));
  else
    fprintf(stderr, "%s: %s\n", resil_status_name(st), err.msg);
  PQclear(res);
  resil_pg_free(pg);
  return st == RESIL_OK ? 0 : 1;
}
