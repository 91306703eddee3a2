/* The PostgreSQL adapter against a peer that never answers a SYN (no server
 * needed): the connect ends at connect_timeout_ms as a timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "resil/pg.h"
#include "testutil.h"

static void unanswered_connect_times_out_at_connect_timeout(void **state) {
  (void)state;
  int fds[3];
  uint16_t port = unanswered_listener(fds);
  assert_true(port > 0);
  char conninfo[128];
  snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%u dbname=x user=x", port);
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, "blackholed-db");
  cfg.conninfo = conninfo;
  cfg.connect_timeout_ms = 200;
  resil_err err;
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  PGresult *res = NULL;
  uint64_t t0 = resil_now_ns();
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(1000), 0, "SELECT 1", 0, NULL, &res,
                                   &err);
  uint64_t took_ms = (resil_now_ns() - t0) / 1000000;
  PQclear(res);
  if (st != RESIL_E_TIMEOUT || took_ms < 190 || took_ms > 200 + 100)
    fail_msg("status %s after %llu ms: %s", resil_status_name(st), (unsigned long long)took_ms,
             err.msg);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  assert_int_equal(ps.connects_timed_out, 1);
  resil_pg_free(pg);
  unanswered_close(fds);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(unanswered_connect_times_out_at_connect_timeout),
  };
  return cmocka_run_group_tests_name("pg_hostile", tests, NULL, NULL);
}
