/* Internal to libresil-pg (not installed): running one statement on a
 * non-blocking libpq connection under a deadline, with the result-size
 * bound, and classifying its outcome (stmt.c). pg.c borrows connections,
 * fills a pg_stmt, runs it and acts on what it says about the connection.
 *
 * Not thread-safe for one connection (a connection is used by one thread
 * at a time); different statements are independent. */
#ifndef RESIL_PG_STMT_H
#define RESIL_PG_STMT_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resil/adapter.h"
#include "resil/pg.h"

/* What to do with the connection after a statement. DISP_MOVED: close
 * it, and the endpoint moved (read-only after a failover, shut down,
 * reset): see failover() in pg.c. DISP_REAP: the statement is still
 * running; cancel and close it aside (reaper.h). */
typedef enum disp { DISP_KEEP = 0, DISP_BROKEN, DISP_REAP, DISP_MOVED } disp;

/* What running a statement needs of its client (resil_pg keeps one). */
typedef struct pg_stmt_env {
  const char *name;             /* the dependency's, for messages */
  resil_dep *dep;               /* whose memory gauge the received bytes go to */
  size_t max_result_bytes;      /* the result-size bound */
  _Atomic uint64_t *read_only;  /* counts 25006 refusals */
} pg_stmt_env;

typedef enum send_kind { SEND_PARAMS = 0, SEND_PREPARE, SEND_PREPARED } send_kind;

/* One statement, its inputs and outputs together (as libuv's uv_fs_t): the
 * caller fills the inputs, pg_stmt_run() the outputs. */
typedef struct pg_stmt {
  /* in */
  PGconn *conn;
  uint64_t *rx_mark;            /* the connection's received-byte count when its
                                   last statement ended (0: measure it), updated
                                   when this one ends; may be NULL */
  resil_deadline deadline;      /* the statement's (query_timeout_ms applied) */
  const resil_pg_query_args *q; /* NULL: sql through the simple protocol */
  const char *sql;              /* with q NULL */
  send_kind kind;               /* with q */
  const char *name;             /* the prepared statement's (SEND_PREPARE, SEND_PREPARED) */
  const char *phase;            /* the step in messages: "query", "prepare", "commit"... */
  /* out */
  PGresult *res;  /* the first error result, else the last result (the caller's) */
  disp d;         /* what the connection needs now */
  bool retryable; /* the error was 40001/40P01 */
} pg_stmt;

/* Send s's statement and read every result until PQgetResult() returns
 * NULL or s->deadline passes, at most env->max_result_bytes of them (see
 * stmt.c). Returns the outcome (err: "<name>: <phase>: ..."; err may be
 * NULL); s->d says whether the outcome shows the endpoint moved: 25006
 * (read_only_sql_transaction: the old writer after a failover answers
 * writes so; counted in env->read_only), 57P01/57P02 or a connection lost
 * mid-call. */
resil_status pg_stmt_run(const pg_stmt_env *env, pg_stmt *s, resil_err *err);

/* pg_stmt_run() for an internal statement (BEGIN, COMMIT, ROLLBACK) whose
 * result is discarded (s->res is NULL after); tag, when not NULL, receives
 * its command tag's first letters ("" on failure). */
resil_status pg_stmt_simple(const pg_stmt_env *env, pg_stmt *s, char *tag, size_t tagsz,
                            resil_err *err);

/* Copy src into dst (size > 0), collapsing runs of whitespace into one
 * space, dropping libpq's verbose "LOCATION:" lines, trimming the ends. */
void pg_flatten(char *dst, size_t size, const char *src);

#endif
