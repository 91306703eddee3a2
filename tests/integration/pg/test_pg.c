/* The PostgreSQL adapter against a real PostgreSQL 15 on 127.0.0.1, directly
 * and through pgbouncer (transaction pooling), with real faults: a slow
 * statement, a stopped (SIGSTOP) server, a restarted server, max_connections
 * exhausted, a full pool, a port with nothing listening.
 *
 * Needs the RESIL_TEST_PG_* variables that scripts/test.sh exports. Without
 * them each test fails under CI (the harness is broken) and skips elsewhere.
 * Every test that stops the server resumes it in its teardown (and at exit),
 * whatever happened. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "resil/config.h"
#include "resil/pg.h"
#include "testutil.h"
#include "probe_heal.h"
#ifdef HAVE_FAULTPROXY
#include "faultproxy.h"
#endif

/* deadline asserts: deadline + this (100 ms, 300 ms under the sanitizers) */
#define SLACK_MS test_slack_ms(0)

/* ---- Environment ------------------------------------------------------- */

static const char *pg_conninfo(void) { return need_env("RESIL_TEST_PG_CONNINFO"); }
static const char *bouncer_conninfo(void) { return need_env("RESIL_TEST_PGBOUNCER_CONNINFO"); }

/* The current postmaster pid: the restart script rewrites the pid file. */
static pid_t postmaster_pid(void) {
  const char *tmp = test_env("RESIL_TEST_TMPDIR");
  if (tmp) {
    char path[4096];
    snprintf(path, sizeof path, "%s/pg.pid", tmp);
    FILE *f = fopen(path, "r");
    if (f) {
      long pid = 0;
      int ok = fscanf(f, "%ld", &pid);
      fclose(f);
      if (ok == 1 && pid > 1) return (pid_t)pid;
    }
  }
  const char *v = need_env("RESIL_TEST_PG_PID");
  long pid = strtol(v, NULL, 10);
  if (pid <= 1) fail_msg("RESIL_TEST_PG_PID=%s is not a pid", v);
  return (pid_t)pid;
}

static int fds_at_start = -1;

/* ---- Stopping and resuming the server ---------------------------------- */

#define MAX_STOPPED 256
static volatile pid_t stopped[MAX_STOPPED];
static volatile int nstopped = 0;

static void resume_server(void) {
  for (int i = 0; i < nstopped; i++)
    if (stopped[i] > 0) kill(stopped[i], SIGCONT);
  nstopped = 0;
}

/* Killed by meson's timeout or ^C: resume the server before dying. */
static void on_fatal_signal(int sig) {
  resume_server();
  signal(sig, SIG_DFL);
  raise(sig);
}

static int teardown_resume(void **state) {
  (void)state;
  resume_server();
  return 0;
}

/* SIGSTOP pid and its children (the postmaster's backends and helpers). */
static void stop_tree(pid_t pid) {
  stopped[nstopped++] = pid;
  if (kill(pid, SIGSTOP) != 0) fail_msg("kill -STOP %d: %s", (int)pid, strerror(errno));
  DIR *d = opendir("/proc");
  assert_non_null(d);
  struct dirent *e;
  while ((e = readdir(d)) != NULL && nstopped < MAX_STOPPED) {
    char path[300], buf[512];
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')'); /* comm may contain spaces */
    char st;
    long ppid;
    if (!rp || sscanf(rp + 1, " %c %ld", &st, &ppid) != 2 || ppid != pid) continue;
    pid_t child = (pid_t)strtol(e->d_name, NULL, 10);
    stopped[nstopped++] = child;
    kill(child, SIGSTOP);
  }
  closedir(d);
}

/* ---- Fixtures ---------------------------------------------------------- */

typedef void (*tweak_fn)(resil_pg_config *cfg);

static resil_pg *make_pg_at(const char *name, const char *conninfo, tweak_fn tweak) {
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  cfg.conninfo = conninfo;
  cfg.dep.breaker.open_ms = 300;
  cfg.dep.breaker.open_jitter_percent = 0;
  cfg.dep.breaker.half_open_probes = 1;
  cfg.pool.max_size = 2;
  cfg.pool.housekeeping_ms = 0;
  cfg.cancel_timeout_ms = 1000;
  if (tweak) tweak(&cfg);
  resil_err err;
  memset(&err, 0, sizeof err);
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new(%s): %s", name, err.msg);
  return pg;
}

static resil_pg *make_pg(const char *name, tweak_fn tweak) {
  return make_pg_at(name, pg_conninfo(), tweak);
}

static resil_dep_stats dep_stats(resil_pg *pg) {
  resil_dep_stats s;
  resil_dep_get_stats(resil_pg_dep(pg), &s);
  return s;
}

static resil_pg_stats pg_stats(resil_pg *pg) {
  resil_pg_stats s;
  resil_pg_get_stats(pg, &s);
  return s;
}

/* Run a statement that must succeed; return its result (caller clears). */
static PGresult *must_query(resil_pg *pg, const char *sql, int n, const char *const *vals) {
  PGresult *res = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(3000), 0, sql, n, vals, &res, &e);
  if (st != RESIL_OK) fail_msg("%s: %s (%s)", sql, e.msg, resil_status_name(st));
  return res;
}

static int64_t query_int(resil_pg *pg, const char *sql) {
  PGresult *res = must_query(pg, sql, 0, NULL);
  int64_t v = 0;
  resil_err e;
  if (resil_pg_int64(res, 0, 0, &v, &e) != RESIL_OK) fail_msg("%s: %s", sql, e.msg);
  PQclear(res);
  return v;
}

/* A plain blocking libpq connection for checks from "another client". */
static PGconn *raw_connect(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("raw connect: %s", PQerrorMessage(c));
  return c;
}

static int64_t raw_int(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

/* Wait up to ms for a running statement whose text contains marker (built
 * so that this query's own text does not) to disappear. True if it did. */
static bool wait_statement_gone(PGconn *c, const char *marker_a, const char *marker_b,
                                unsigned ms) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
           "AND pid <> pg_backend_pid() AND query LIKE '%%' || '%s' || '%s' || '%%'",
           marker_a, marker_b);
  uint64_t until = test_now_ms() + ms;
  for (;;) {
    if (raw_int(c, sql) == 0) return true;
    if (test_now_ms() >= until) return false;
    test_sleep_ms(20);
  }
}

/* A TCP port on 127.0.0.1 with nothing listening (bound, then closed). */
static unsigned dead_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  socklen_t len = sizeof sa;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

static void tweak_pool1(resil_pg_config *cfg) { cfg->pool.max_size = 1; }

/* ---- Configuration ----------------------------------------------------- */

static void config_reports_every_problem_without_secrets(void **state) {
  (void)state;
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, "bad-db");
  cfg.conninfo = "host=127.0.0.1 password=hunter2 secret";
  cfg.query_timeout_ms = 0;
  cfg.pool.max_size = 0;
  cfg.cancel_timeout_ms = 0;
  cfg.max_result_bytes = 100;
  resil_err e;
  memset(&e, 0, sizeof e);
  assert_null(resil_pg_new(&cfg, &e));
  assert_int_equal(e.status, RESIL_E_INVALID);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "bad-db: conninfo: "));
  assert_non_null(strstr(e.msg, "query_timeout_ms"));
  assert_non_null(strstr(e.msg, "max_size"));
  assert_non_null(strstr(e.msg, "cancel_timeout_ms"));
  assert_non_null(strstr(e.msg, "bad-db: max_result_bytes: 100"));
  assert_null(strstr(e.msg, "hunter2"));
  assert_null(strstr(e.msg, "secret"));

  cfg.conninfo = NULL;
  cfg.query_timeout_ms = 100;
  cfg.pool.max_size = 2;
  cfg.cancel_timeout_ms = 100;
  cfg.max_result_bytes = RESIL_PG_DEFAULT_MAX_RESULT_BYTES;
  assert_int_equal(resil_pg_config_validate(&cfg, &e), RESIL_E_INVALID);
  assert_non_null(strstr(e.msg, "conninfo: required"));
  cfg.conninfo = "postgresql://resil:pw@127.0.0.1:5432/resil?sslmode=disable";
  assert_int_equal(resil_pg_config_validate(&cfg, &e), RESIL_OK);
}

static void sqlstates_are_classified(void **state) {
  (void)state;
  bool retry = true;
  assert_int_equal(resil_pg_classify_sqlstate("42601", &retry), RESIL_E_CALLER);
  assert_false(retry);
  assert_int_equal(resil_pg_classify_sqlstate("23505", NULL), RESIL_E_CALLER);
  assert_int_equal(resil_pg_classify_sqlstate("22012", NULL), RESIL_E_CALLER);
  assert_int_equal(resil_pg_classify_sqlstate("40001", &retry), RESIL_E_CALLER);
  assert_true(retry);
  assert_int_equal(resil_pg_classify_sqlstate("40P01", &retry), RESIL_E_CALLER);
  assert_true(retry);
  assert_int_equal(resil_pg_classify_sqlstate("08006", NULL), RESIL_E_FAILURE);
  assert_int_equal(resil_pg_classify_sqlstate("53300", NULL), RESIL_E_FAILURE);
  assert_int_equal(resil_pg_classify_sqlstate("53200", NULL), RESIL_E_OVERLOAD);
  assert_int_equal(resil_pg_classify_sqlstate("57P01", NULL), RESIL_E_FAILURE);
  assert_int_equal(resil_pg_classify_sqlstate("57P03", NULL), RESIL_E_FAILURE);
  assert_int_equal(resil_pg_classify_sqlstate("57014", NULL), RESIL_E_TIMEOUT);
  assert_int_equal(resil_pg_classify_sqlstate(NULL, NULL), RESIL_E_FAILURE);
}

/* ---- Queries ----------------------------------------------------------- */

static void simple_and_parameterised_queries(void **state) {
  (void)state;
  resil_pg *pg = make_pg("q-db", NULL);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  const char *p[] = {"20", "22"};
  PGresult *res = must_query(pg, "SELECT $1::int + $2::int, 'x' || $1", 2, p);
  assert_int_equal(PQntuples(res), 1);
  assert_string_equal(resil_pg_value(res, 0, 0), "42");
  assert_string_equal(resil_pg_value(res, 0, 1), "x20");
  assert_null(resil_pg_value(res, 0, 2));
  assert_null(resil_pg_value(res, 1, 0));
  PQclear(res);
  /* application_name and statement_timeout come from the config. */
  res = must_query(pg, "SELECT current_setting('application_name'), "
                       "current_setting('statement_timeout')", 0, NULL);
  assert_string_equal(resil_pg_value(res, 0, 0), "q-db");
  assert_string_equal(resil_pg_value(res, 0, 1), "5s");
  PQclear(res);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 3);
  assert_true(s.has_pool);
  resil_pg_free(pg);
}

static void nulls_and_binary_safe_text(void **state) {
  (void)state;
  resil_pg *pg = make_pg("bin-db", NULL);
  const char *text = "quote ' dq \" back \\ nl \n tab \t unicode \xc3\xa9\xe2\x82\xac $1 %s";
  const char *p[] = {text, NULL};
  PGresult *res = must_query(pg, "SELECT $1::text, $2::text IS NULL, $2::text", 2, p);
  assert_string_equal(resil_pg_value(res, 0, 0), text);
  assert_string_equal(resil_pg_value(res, 0, 1), "t");
  assert_null(resil_pg_value(res, 0, 2));
  assert_true(PQgetisnull(res, 0, 2));
  PQclear(res);

  /* Bytes with NULs: a binary parameter and a binary result. */
  const char bytes[] = {'a', '\0', 'b', '\xff', '\0'};
  const char *vals[] = {bytes};
  int lens[] = {(int)sizeof bytes};
  int fmts[] = {1};
  Oid types[] = {17}; /* bytea */
  resil_pg_query_args q = {.sql = "SELECT $1::bytea, length($1::bytea)",
                           .nparams = 1,
                           .types = types,
                           .values = vals,
                           .lengths = lens,
                           .formats = fmts,
                           .result_format = 1};
  resil_err e;
  res = NULL;
  assert_int_equal(resil_pg_query_ex(pg, resil_deadline_in_ms(2000), 0, &q, &res, &e), RESIL_OK);
  assert_int_equal(PQgetlength(res, 0, 0), (int)sizeof bytes);
  assert_memory_equal(PQgetvalue(res, 0, 0), bytes, sizeof bytes);
  PQclear(res);
  resil_pg_free(pg);
}

static void syntax_error_is_a_caller_error_not_counted_by_the_breaker(void **state) {
  (void)state;
  resil_pg *pg = make_pg("syntax-db", NULL);
  resil_err e;
  PGresult *res = NULL;
  for (int i = 0; i < 8; i++) { /* more than consecutive_failures (5) */
    PQclear(res);
    res = NULL;
    resil_status st = resil_pg_query(pg, resil_deadline_in_ms(2000), RESIL_CALL_IDEMPOTENT,
                                     "SELEC 1", 0, NULL, &res, &e);
    assert_int_equal(st, RESIL_E_CALLER);
  }
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "syntax-db: query: ERROR 42601 syntax error"));
  assert_non_null(res);
  assert_string_equal(resil_pg_sqlstate(res), "42601");
  PQclear(res);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 8);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(s.retries, 0);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(s.breaker.consecutive_failures, 0);
  /* The connection is still fine and reused. */
  assert_int_equal(query_int(pg, "SELECT 7"), 7);
  assert_int_equal(pg_stats(pg).connects_ok, 1);
  resil_pg_free(pg);
}

static void unique_violation_is_a_caller_error_with_its_fields(void **state) {
  (void)state;
  resil_pg *pg = make_pg("uniq-db", NULL);
  PQclear(must_query(pg, "CREATE TABLE IF NOT EXISTS resil_pg_uniq (id bigint PRIMARY KEY)",
                     0, NULL));
  char id[32];
  snprintf(id, sizeof id, "%ld", (long)getpid() * 1000 + (long)(test_now_ms() % 1000));
  const char *p[] = {id};
  PQclear(must_query(pg, "INSERT INTO resil_pg_uniq VALUES ($1)", 1, p));
  PGresult *res = NULL;
  resil_err e;
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(2000), 0,
                                   "INSERT INTO resil_pg_uniq VALUES ($1)", 1, p, &res, &e);
  assert_int_equal(st, RESIL_E_CALLER);
  assert_non_null(strstr(e.msg, "uniq-db: query: ERROR 23505 duplicate key value"));
  assert_string_equal(PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME), "resil_pg_uniq_pkey");
  PQclear(res);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 1);
  assert_int_equal(s.breaker.consecutive_failures, 0);
  resil_pg_free(pg);
}

static void serialization_failure_is_not_retried_when_not_idempotent(void **state) {
  (void)state;
  resil_pg *pg = make_pg("serial-db", NULL);
  const char *sql = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$";
  resil_err e;
  PGresult *res = NULL;
  /* Not idempotent: one attempt. */
  assert_int_equal(resil_pg_query(pg, resil_deadline_in_ms(2000), 0, sql, 0, NULL, &res, &e),
                   RESIL_E_CALLER);
  assert_int_equal(dep_stats(pg).retries, 0);
  PQclear(res);
  resil_pg_free(pg);
}

static void tweak_retries(resil_pg_config *cfg) {
  cfg->dep.retry.max_attempts = 3;
  cfg->dep.retry.base_backoff_ms = 1;
  cfg->dep.retry.budget_min_per_s = 100;
}

static void serialization_failure_retries_idempotent_calls(void **state) {
  (void)state;
  resil_pg *pg = make_pg("serial2-db", tweak_retries);
  const char *sql = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$";
  resil_err e;
  PGresult *res = NULL;
  assert_int_equal(resil_pg_query(pg, resil_deadline_in_ms(2000), RESIL_CALL_IDEMPOTENT, sql,
                                  0, NULL, &res, &e),
                   RESIL_E_CALLER);
  assert_string_equal(resil_pg_sqlstate(res), "40001");
  PQclear(res);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.retries, 2);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 3);
  assert_int_equal(s.breaker.consecutive_failures, 0);
  resil_pg_free(pg);
}

static void tweak_retries_pool1(resil_pg_config *cfg) {
  tweak_retries(cfg);
  cfg->pool.max_size = 1;
}

/* The retry path for real: the first attempt's backend is terminated while
 * it runs the statement (a retryable connection failure, 57P01), the retry
 * gets a new connection and succeeds. A sequence the statement bumps on every
 * attempt (nextval is not rolled back) kills only the first attempt and
 * counts attempts on the server's side. */
static void idempotent_query_is_retried_after_its_backend_is_killed(void **state) {
  (void)state;
  resil_pg *pg = make_pg("retry-db", tweak_retries_pool1);
  char seq[64], sql[512];
  snprintf(seq, sizeof seq, "resil_retry_seq_%ld", (long)getpid());
  snprintf(sql, sizeof sql, "DROP SEQUENCE IF EXISTS %s", seq);
  PQclear(must_query(pg, sql, 0, NULL));
  snprintf(sql, sizeof sql, "CREATE SEQUENCE %s", seq);
  PQclear(must_query(pg, sql, 0, NULL));
  int64_t pid1 = query_int(pg, "SELECT pg_backend_pid()"); /* the pooled connection */
  resil_dep_stats d0 = dep_stats(pg);
  resil_pool_stats p0;
  resil_pool_get_stats(resil_pg_pool(pg), &p0);
  snprintf(sql, sizeof sql,
           "SELECT CASE WHEN nextval('%s') = 1 THEN pg_terminate_backend(pg_backend_pid())::int "
           "ELSE pg_backend_pid() END",
           seq);
  resil_err e;
  memset(&e, 0, sizeof e);
  PGresult *res = NULL;
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(5000), RESIL_CALL_IDEMPOTENT, sql,
                                   0, NULL, &res, &e);
  if (st != RESIL_OK) fail_msg("idempotent query: %s (%s)", e.msg, resil_status_name(st));
  int64_t pid2 = 0;
  assert_int_equal(resil_pg_int64(res, 0, 0, &pid2, &e), RESIL_OK);
  PQclear(res);
  assert_true(pid2 != pid1); /* answered by a new backend */
  resil_dep_stats d1 = dep_stats(pg);
  assert_int_equal(d1.retries - d0.retries, 1);
  assert_int_equal(d1.calls[RESIL_OUTCOME_FAILURE] - d0.calls[RESIL_OUTCOME_FAILURE], 1);
  assert_int_equal(d1.calls[RESIL_OUTCOME_SUCCESS] - d0.calls[RESIL_OUTCOME_SUCCESS], 1);
  resil_pool_stats p1;
  resil_pool_get_stats(resil_pg_pool(pg), &p1);
  assert_int_equal(p1.closed[RESIL_POOL_CLOSE_BROKEN] - p0.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(p1.connects_ok - p0.connects_ok, 1);
  /* The server saw exactly two attempts. */
  snprintf(sql, sizeof sql, "SELECT last_value FROM %s", seq);
  assert_int_equal(query_int(pg, sql), 2);
  /* Not idempotent: the same failure is not retried (one attempt, 3 in all). */
  snprintf(sql, sizeof sql, "SELECT setval('%s', 1, false)", seq);
  PQclear(must_query(pg, sql, 0, NULL));
  snprintf(sql, sizeof sql,
           "SELECT CASE WHEN nextval('%s') = 1 THEN pg_terminate_backend(pg_backend_pid())::int "
           "ELSE pg_backend_pid() END",
           seq);
  st = resil_pg_query(pg, resil_deadline_in_ms(5000), 0, sql, 0, NULL, NULL, &e);
  print_message("# not idempotent: %s: %s\n", resil_status_name(st), e.msg);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_int_equal(dep_stats(pg).retries, d1.retries);
  snprintf(sql, sizeof sql, "SELECT last_value FROM %s", seq);
  assert_int_equal(query_int(pg, sql), 1);
  snprintf(sql, sizeof sql, "DROP SEQUENCE %s", seq);
  PQclear(must_query(pg, sql, 0, NULL));
  resil_pg_free(pg);
}

static void prepared_statements_are_prepared_once_per_connection(void **state) {
  (void)state;
  resil_pg *pg = make_pg("prep-db", tweak_pool1);
  resil_err e;
  for (int i = 0; i < 3; i++) {
    char a[16];
    snprintf(a, sizeof a, "%d", i);
    const char *vals[] = {a, "10"};
    resil_pg_query_args q = {.sql = "SELECT $1::int + $2::int", .nparams = 2, .values = vals};
    PGresult *res = NULL;
    assert_int_equal(resil_pg_query_prepared(pg, resil_deadline_in_ms(2000), 0, "add_two", &q,
                                             &res, &e),
                     RESIL_OK);
    int64_t v = 0;
    assert_int_equal(resil_pg_int64(res, 0, 0, &v, &e), RESIL_OK);
    assert_int_equal(v, i + 10);
    PQclear(res);
  }
  assert_int_equal(
      query_int(pg, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'add_two'"), 1);
  resil_pg_query_args bad = {.sql = "SELEC 1"};
  PGresult *res = NULL;
  assert_int_equal(
      resil_pg_query_prepared(pg, resil_deadline_in_ms(2000), 0, "bad_one", &bad, &res, &e),
      RESIL_E_CALLER);
  assert_string_equal(resil_pg_sqlstate(res), "42601");
  assert_non_null(strstr(e.msg, "prep-db: prepare: ERROR 42601"));
  PQclear(res);
  assert_int_equal(dep_stats(pg).calls[RESIL_OUTCOME_SUCCESS], 4);
  resil_pg_free(pg);
}

/* ---- Timeouts and cancellation ----------------------------------------- */

static void check_slow_statement_is_cancelled(resil_pg *pg, PGconn *watcher, bool pids) {
  int64_t pid_before = pids ? query_int(pg, "SELECT pg_backend_pid()") : 0;
  resil_err e;
  PGresult *res = NULL;
  uint64_t t0 = test_now_ms();
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(200), 0,
                                   "SELECT pg_sleep(5) /* resil-slow-marker */", 0, NULL, &res,
                                   &e);
  uint64_t took = test_now_ms() - t0;
  print_message("# timed out after %llu ms: %s\n", (unsigned long long)took, e.msg);
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_null(res);
  assert_true(took >= 190 && took <= 200 + SLACK_MS);
  /* The backend stops running it (cancelled by the reaper). */
  assert_true(wait_statement_gone(watcher, "resil-slow-", "marker", 2000));
  if (pids) {
    int64_t pid_after = query_int(pg, "SELECT pg_backend_pid()");
    assert_true(pid_after != pid_before); /* the timed-out connection is not reused */
  }
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_TIMEOUT], 1);
  /* Cancel sent and connection reaped (the reaper may take a moment). */
  for (int i = 0; i < 100 && pg_stats(pg).reaped < 1; i++) test_sleep_ms(10);
  resil_pg_stats ps = pg_stats(pg);
  assert_int_equal(ps.timeouts, 1);
  assert_int_equal(ps.cancels_sent, 1);
  assert_int_equal(ps.reaped, 1);
}

static void slow_statement_times_out_is_cancelled_and_not_reused(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg("slow-db", tweak_pool1);
  check_slow_statement_is_cancelled(pg, watcher, true);
  resil_pg_free(pg);
  PQfinish(watcher);
}

static void tweak_query_timeout(resil_pg_config *cfg) {
  cfg->query_timeout_ms = 200;
  cfg->statement_timeout = false;
}

static void query_timeout_caps_a_longer_deadline(void **state) {
  (void)state;
  resil_pg *pg = make_pg("qt-db", tweak_query_timeout);
  resil_err e;
  uint64_t t0 = test_now_ms();
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(3000), 0, "SELECT pg_sleep(2)", 0,
                                   NULL, NULL, &e);
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_true(took <= 200 + SLACK_MS);
  resil_pg_free(pg);
}

static void server_statement_timeout_is_a_timeout_and_keeps_the_connection(void **state) {
  (void)state;
  resil_pg *pg = make_pg("st-db", tweak_pool1);
  int64_t pid = query_int(pg, "SELECT pg_backend_pid()");
  resil_err e;
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(2000), NULL, &tx, &e), RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "SET LOCAL statement_timeout = 100", 0, NULL, NULL, &e),
                   RESIL_OK);
  PGresult *res = NULL;
  assert_int_equal(resil_pg_tx_query(tx, "SELECT pg_sleep(1)", 0, NULL, &res, &e),
                   RESIL_E_TIMEOUT);
  assert_string_equal(resil_pg_sqlstate(res), "57014");
  PQclear(res);
  assert_int_equal(resil_pg_tx_rollback(tx, &e), RESIL_E_TIMEOUT);
  /* The server cancelled it itself: the session is healthy and reused. */
  assert_int_equal(query_int(pg, "SELECT pg_backend_pid()"), pid);
  assert_int_equal(dep_stats(pg).calls[RESIL_OUTCOME_TIMEOUT], 1);
  resil_pg_free(pg);
}

/* ---- max_result_bytes --------------------------------------------------- */

static void small_result_bound(resil_pg_config *cfg) {
  cfg->max_result_bytes = 1 << 20;
  cfg->pool.max_size = 1;
  cfg->dep.timeout_ms = 5000; /* the server may take a while to build 50 MB */
}

/* Peak-RSS growth allowed while many small rows are cut at a 1 MiB bound:
 * the bound, what one read can bring on top (libpq's small input buffer) and
 * the PGresult under construction; the sanitizers' allocators keep freed
 * blocks and add shadow memory. Without the bound: ~110 MiB. */
static long rows_peak_limit_kb(void) { return test_sanitized() ? 40 * 1024 : 16 * 1024; }

/* For one 50 MB value: libpq sizes its input buffer for the whole DataRow,
 * and one PQconsumeInput() reads on for as long as the server keeps the
 * socket non-empty, so a client slower than the server (seen under ASan)
 * can take in the whole row in one read before the bound is checked. What
 * the bound still prevents is everything after it: the PGresult copy of
 * the value (without the bound: ~95 MiB) and any further row. Under TSan
 * the row's bytes also get shadow memory (+146 MiB seen). */
static long value_peak_limit_kb(void) { return (test_sanitized() ? 200 : 70) * 1024; }

typedef struct big_call {
  resil_status st;
  char msg[RESIL_ERR_MSG_MAX];
  uint64_t took_ms;
  long peak_kb;
  bool got_result;
} big_call;

static big_call big_query(resil_pg *pg, const char *sql, int deadline_ms) {
  big_call c;
  memset(&c, 0, sizeof c);
  resil_err e;
  memset(&e, 0, sizeof e);
  PGresult *res = NULL;
  int perturb = test_malloc_perturb_off();
  long base = test_peak_rss_reset();
  uint64_t t0 = test_now_ms();
  c.st = resil_pg_query(pg, resil_deadline_in_ms(deadline_ms), RESIL_CALL_IDEMPOTENT, sql, 0,
                        NULL, &res, &e);
  c.took_ms = test_now_ms() - t0;
  long peak = test_status_kb("VmHWM");
  test_malloc_perturb_restore(perturb);
  c.peak_kb = base >= 0 && peak >= 0 ? peak - base : -1;
  c.got_result = res != NULL;
  PQclear(res);
  snprintf(c.msg, sizeof c.msg, "%s", c.st == RESIL_OK ? "" : e.msg);
  print_message("# %s after %llu ms, peak RSS +%ld KiB: %s\n", resil_status_name(c.st),
                (unsigned long long)c.took_ms, c.peak_kb, c.msg);
  return c;
}

/* Checks shared by the cases that pass the bound: a caller error naming
 * the bound and the dependency, no result, memory near the bound, the
 * statement cancelled on the server, the connection never reused, the next
 * call served. */
static void check_cut_at_bound(resil_pg *pg, PGconn *watcher, const big_call *c,
                               const char *marker_b, long peak_limit_kb) {
  if (c->st != RESIL_E_CALLER ||
      !strstr(c->msg, ": query: result larger than max_result_bytes 1048576"))
    fail_msg("%s: %s", resil_status_name(c->st), c->msg);
  assert_false(c->got_result);
  assert_true(c->took_ms < 5000);
  if (c->peak_kb > peak_limit_kb)
    fail_msg("peak RSS grew by %ld KiB, limit %ld KiB", c->peak_kb, peak_limit_kb);
  assert_true(wait_statement_gone(watcher, "resil-big-", marker_b, 3000));
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 1); /* never a breaker failure */
  assert_int_equal(s.retries, 0);                      /* nor retried */
  for (int i = 0; i < 200 && pg_stats(pg).reaped < 1; i++) test_sleep_ms(10);
  assert_int_equal(pg_stats(pg).reaped, 1); /* cancelled and closed, not reused */
  assert_int_equal(query_int(pg, "SELECT 7"), 7);
}

/* One 50 MB value: libpq would buffer the whole DataRow before handing
 * anything over. */
static void huge_value_over_max_result_bytes_is_a_caller_error(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg("big-value-db", small_result_bound);
  assert_int_equal(query_int(pg, "SELECT 1"), 1); /* connected before measuring */
  big_call c = big_query(pg, "SELECT repeat('x', 50000000) /* resil-big-value */", 5000);
  check_cut_at_bound(pg, watcher, &c, "value", value_peak_limit_kb());
  resil_pg_free(pg);
  PQfinish(watcher);
}

/* The same as a connection's very first statement: its byte meter has no
 * previous statement's count to start from and measures one. */
static void huge_value_as_a_connections_first_statement_is_a_caller_error(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg("big-first-db", small_result_bound);
  assert_int_equal(pg_stats(pg).connects_ok, 0); /* no connection yet */
  big_call c = big_query(pg, "SELECT repeat('x', 50000000) /* resil-big-first */", 5000);
  check_cut_at_bound(pg, watcher, &c, "first", value_peak_limit_kb());
  resil_pg_free(pg);
  PQfinish(watcher);
}

/* Many small rows (~100 MB in all), none large. */
static void many_rows_over_max_result_bytes_is_a_caller_error(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg("big-rows-db", small_result_bound);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  big_call c = big_query(pg,
                         "SELECT repeat('y', 80) FROM generate_series(1, 1000) a, "
                         "generate_series(1, 1000) b /* resil-big-rows */",
                         5000);
  check_cut_at_bound(pg, watcher, &c, "rows", rows_peak_limit_kb());
  resil_pg_free(pg);
  PQfinish(watcher);
}

/* What fits is untouched: 900 KB under a 1 MiB bound, on a connection then
 * reused. */
static void result_within_max_result_bytes_is_returned(void **state) {
  (void)state;
  resil_pg *pg = make_pg("fits-db", small_result_bound);
  int64_t pid = query_int(pg, "SELECT pg_backend_pid()");
  PGresult *res = must_query(pg, "SELECT repeat('z', 900000)", 0, NULL);
  assert_int_equal(PQgetlength(res, 0, 0), 900000);
  PQclear(res);
  res = must_query(pg, "SELECT g FROM generate_series(1, 20000) g", 0, NULL);
  assert_int_equal(PQntuples(res), 20000);
  assert_string_equal(PQcmdTuples(res), "20000");
  PQclear(res);
  assert_int_equal(query_int(pg, "SELECT pg_backend_pid()"), pid);
  assert_int_equal(dep_stats(pg).calls[RESIL_OUTCOME_IGNORED], 0);
  resil_pg_free(pg);
}

static void large_result_bound(resil_pg_config *cfg) {
  cfg->max_result_bytes = RESIL_PG_MAX_MAX_RESULT_BYTES;
  cfg->pool.max_size = 1;
}

/* A result streaming in for longer than the deadline, under a bound it does
 * not reach: the call ends at the deadline as a timeout. */
static void large_result_streaming_past_the_deadline_times_out(void **state) {
  (void)state;
  resil_pg *pg = make_pg("big-stream-db", large_result_bound);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  big_call c = big_query(pg,
                         "SELECT 1 FROM generate_series(1, 10000) a, "
                         "generate_series(1, 100000) b /* resil-big-stream */",
                         300);
  if (c.st != RESIL_E_TIMEOUT || c.took_ms > 300 + SLACK_MS)
    fail_msg("%s after %llu ms: %s", resil_status_name(c.st), (unsigned long long)c.took_ms,
             c.msg);
  resil_pg_free(pg);
}

/* ---- Addresses --------------------------------------------------------- */

static void host_names_socket_paths_and_host_lists_connect(void **state) {
  (void)state;
  const char *base = pg_conninfo();
  const char *sock = need_env("RESIL_TEST_PG_SOCKDIR");
  const char *port = need_env("RESIL_TEST_PG_PORT");
  char ci[2048];
  /* A name: resolved by resil_resolve, passed as hostaddr (::1 may be
   * refused first: the next address is tried). */
  snprintf(ci, sizeof ci, "%s host=localhost", base);
  resil_pg *pg = make_pg_at("name-db", ci, NULL);
  PGresult *res = must_query(pg, "SELECT inet_server_addr()::text", 0, NULL);
  assert_string_equal(resil_pg_value(res, 0, 0), "127.0.0.1/32");
  PQclear(res);
  resil_pg_free(pg);
  /* A Unix-socket directory: not resolved. */
  snprintf(ci, sizeof ci, "%s host=%s", base, sock);
  pg = make_pg_at("sock-db", ci, NULL);
  res = must_query(pg, "SELECT inet_server_addr() IS NULL", 0, NULL);
  assert_string_equal(resil_pg_value(res, 0, 0), "t");
  PQclear(res);
  resil_pg_free(pg);
  /* A list: a dead port first, then a name on the right port. */
  snprintf(ci, sizeof ci, "%s host=127.0.0.1,localhost port=%u,%s", base, dead_port(), port);
  pg = make_pg_at("list-db", ci, NULL);
  assert_int_equal(query_int(pg, "SELECT 3"), 3);
  resil_pg_free(pg);
}

/* ---- Concurrency ------------------------------------------------------- */

typedef struct mt_arg {
  resil_pg *pg;
  int id;
  int ok, timeouts, local, other;
} mt_arg;

static void *mt_main(void *p) {
  mt_arg *a = p;
  for (int i = 0; i < 40; i++) {
    resil_err e;
    PGresult *res = NULL;
    bool slow = (i % 20) == a->id % 20 && i < 20;
    resil_status st = resil_pg_query(a->pg, resil_deadline_in_ms(slow ? 100 : 3000), 0,
                                     slow ? "SELECT pg_sleep(2)" : "SELECT 1", 0, NULL, &res,
                                     &e);
    PQclear(res);
    if (st == RESIL_OK && !slow)
      a->ok++;
    else if (st == RESIL_E_TIMEOUT && slow)
      a->timeouts++;
    else if (slow && (st == RESIL_E_POOL_TIMEOUT || st == RESIL_E_DEADLINE))
      a->local++; /* waited for a connection past its 100 ms (slow machines) */
    else
      a->other++;
  }
  return NULL;
}

/* Samples the pool while the callers run: open connections must never pass
 * max_size (4), at any sample. */
typedef struct pool_sampler {
  resil_pool *pool;
  _Atomic int stop;
  int samples_busy; /* samples taken with a call in flight */
  uint32_t max_open, max_in_use;
  uint32_t bad_open; /* a sample past the bound, 0 if none */
} pool_sampler;

static void *sampler_main(void *p) {
  pool_sampler *s = p;
  while (!atomic_load(&s->stop)) {
    resil_pool_stats ps;
    resil_pool_get_stats(s->pool, &ps);
    if (ps.open > s->max_open) s->max_open = ps.open;
    if (ps.in_use > s->max_in_use) s->max_in_use = ps.in_use;
    if (ps.open > 4 && !s->bad_open) s->bad_open = ps.open;
    if (ps.in_use > 0) s->samples_busy++;
    test_sleep_ms(1);
  }
  return NULL;
}

static void tweak_mt(resil_pg_config *cfg) {
  cfg->pool.max_size = 4;
  cfg->pool.acquire_timeout_ms = 3000;
}

static void eight_threads_share_a_pool_of_four(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg("mt-db", tweak_mt);
  resil_breaker_set_mode(resil_dep_breaker(resil_pg_dep(pg)), RESIL_BREAKER_MODE_DISABLE);
  static pool_sampler sampler;
  memset(&sampler, 0, sizeof sampler);
  sampler.pool = resil_pg_pool(pg);
  pthread_t sth;
  assert_int_equal(pthread_create(&sth, NULL, sampler_main, &sampler), 0);
  pthread_t th[8];
  mt_arg args[8];
  for (int i = 0; i < 8; i++) {
    args[i] = (mt_arg){.pg = pg, .id = i};
    assert_int_equal(pthread_create(&th[i], NULL, mt_main, &args[i]), 0);
  }
  int ok = 0, timeouts = 0, local = 0, other = 0;
  for (int i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    ok += args[i].ok;
    timeouts += args[i].timeouts;
    local += args[i].local;
    other += args[i].other;
  }
  atomic_store(&sampler.stop, 1);
  pthread_join(sth, NULL);
  print_message("# ok %d, timeouts %d, local rejections %d, other %d\n", ok, timeouts, local,
                other);
  print_message("# pool sampled %d times with calls in flight: at most %u open, %u in use\n",
                sampler.samples_busy, sampler.max_open, sampler.max_in_use);
  if (sampler.bad_open) fail_msg("%u connections open at once, max_size 4", sampler.bad_open);
  /* The bound was watched while calls were in flight (the 8 slow calls
   * alone hold connections for 100 ms each). */
  assert_true(sampler.samples_busy >= 20);
  assert_true(sampler.max_in_use >= 1 && sampler.max_in_use <= 4);
  assert_int_equal(timeouts + local, 8);
  assert_int_equal(ok, 8 * 40 - 8);
  assert_int_equal(other, 0);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  assert_true(ps.open <= 4);
  assert_true(wait_statement_gone(watcher, "pg_sleep", "(2)", 3000));
  /* Statements abandoned at the deadline were all reaped (a connect that
   * timed out on a slow machine is a timeout too, with nothing to reap). */
  for (int i = 0; i < 200 && pg_stats(pg).reaped < pg_stats(pg).timeouts; i++) test_sleep_ms(10);
  resil_pg_stats s = pg_stats(pg);
  assert_true(s.timeouts >= 1 && s.timeouts <= (uint64_t)timeouts);
  assert_int_equal(s.reaped, s.timeouts);
  resil_pg_free(pg); /* joins the reaper */
  PQfinish(watcher);
}

static void tcp_keepalives_and_user_timeout_are_set_by_default(void **state) {
  (void)state;
  resil_pg *pg = make_pg("tcp-db", NULL);
  resil_err e;
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  int fd = PQsocket(resil_pg_tx_conn(tx));
  int v = 0;
  socklen_t len = sizeof v;
  assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
  assert_int_equal(v, 1);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len), 0);
  assert_int_equal(v, 30);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, &len), 0);
  assert_int_equal(v, 10);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &v, &len), 0);
  assert_int_equal(v, 3);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &len), 0);
  assert_int_equal(v, 10000);
  assert_int_equal(resil_pg_tx_rollback(tx, &e), RESIL_OK);
  resil_pg_free(pg);
  /* The conninfo wins over the defaults. */
  char ci[2048];
  snprintf(ci, sizeof ci, "%s keepalives_idle=77 tcp_user_timeout=1234", pg_conninfo());
  pg = make_pg_at("tcp2-db", ci, NULL);
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  fd = PQsocket(resil_pg_tx_conn(tx));
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len), 0);
  assert_int_equal(v, 77);
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, &len), 0);
  assert_int_equal(v, 10); /* the rest keep resil's defaults */
  assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &len), 0);
  assert_int_equal(v, 1234);
  assert_int_equal(resil_pg_tx_rollback(tx, &e), RESIL_OK);
  resil_pg_free(pg);
}

static void tls_settings_reach_libpq(void **state) {
  (void)state;
  /* The test server has no TLS: sslmode=require must be refused by libpq,
   * proving the setting is passed through untouched. */
  char ci[2048];
  snprintf(ci, sizeof ci, "%s sslmode=require", pg_conninfo());
  resil_pg *pg = make_pg_at("tls-db", ci, NULL);
  resil_err e;
  assert_int_equal(
      resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, NULL, &e),
      RESIL_E_FAILURE);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "SSL"));
  resil_pg_free(pg);
}

/* ---- Connection failures ----------------------------------------------- */

static void nothing_listening_fails_fast(void **state) {
  (void)state;
  need_env("RESIL_TEST_PG_CONNINFO");
  char ci[256];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%u dbname=resil user=resil", dead_port());
  resil_pg *pg = make_pg_at("dead-db", ci, NULL);
  resil_err e;
  uint64_t t0 = test_now_ms();
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, NULL, &e);
  uint64_t took = test_now_ms() - t0;
  print_message("# %s (%llu ms)\n", e.msg, (unsigned long long)took);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_true(took < 100);
  assert_non_null(strstr(e.msg, "refused"));
  assert_int_equal(dep_stats(pg).calls[RESIL_OUTCOME_FAILURE], 1);
  resil_pg_free(pg);
}

static void max_connections_exhausted_is_a_dependency_failure(void **state) {
  (void)state;
  const char *ci = pg_conninfo();
  PGconn *watcher = raw_connect(ci); /* sees the fillers go away below */
  PGconn *raw[64];
  int pids[64];
  int n = 0;
  bool refused = false;
  while (n < 64) {
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
      print_message("# refused after %d: %s", n, PQerrorMessage(c));
      PQfinish(c);
      refused = true;
      break;
    }
    pids[n] = PQbackendPID(c);
    raw[n++] = c;
  }
  assert_true(refused);
  resil_pg *pg = make_pg("full-db", NULL);
  resil_err e;
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, NULL, &e);
  print_message("# %s\n", e.msg);
  for (int i = 0; i < n; i++) PQfinish(raw[i]);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_non_null(strstr(e.msg, "53300"));
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 1);
  assert_int_equal(s.breaker.consecutive_failures, 1);
  /* Slots free again once the fillers' backends have exited (asynchronously
   * after PQfinish): then the next call connects. */
  char sql[64 * 12 + 128];
  int len = snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid IN (");
  for (int i = 0; i < n; i++)
    len += snprintf(sql + len, sizeof sql - (size_t)len, "%s%d", i ? "," : "", pids[i]);
  snprintf(sql + len, sizeof sql - (size_t)len, ")");
  if (!TEST_WAIT_UNTIL(raw_int(watcher, sql) == 0, 10000))
    fail_msg("%lld of the %d filler backends still there", (long long)raw_int(watcher, sql), n);
  PQfinish(watcher);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  resil_pg_free(pg);
}

static void tweak_stopped(resil_pg_config *cfg) {
  cfg->dep.breaker.consecutive_failures = 3;
  cfg->dep.breaker.open_ms = 10000;
  cfg->pool.max_size = 1;
  cfg->cancel_timeout_ms = 200;
}

static void stopped_server_times_out_then_breaker_rejects_without_io(void **state) {
  (void)state;
  resil_pg *pg = make_pg("stopped-db", tweak_stopped);
  assert_int_equal(query_int(pg, "SELECT 1"), 1); /* one pooled connection */
  stop_tree(postmaster_pid());
  resil_err e;
  for (int i = 0; i < 3; i++) {
    uint64_t t0 = test_now_ms();
    resil_status st =
        resil_pg_query(pg, resil_deadline_in_ms(300), 0, "SELECT 1", 0, NULL, NULL, &e);
    uint64_t took = test_now_ms() - t0;
    print_message("# call %d: %s after %llu ms: %s\n", i + 1, resil_status_name(st),
                  (unsigned long long)took, e.msg);
    assert_int_equal(st, RESIL_E_TIMEOUT);
    assert_true(took >= 290 && took <= 300 + SLACK_MS);
  }
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  resil_pg_stats before = pg_stats(pg);
  resil_pool_stats pb;
  resil_pool_get_stats(resil_pg_pool(pg), &pb);
  /* Each rejected call gets a 2 s deadline: one that touched the stopped
   * server would wait at least connect_timeout_ms (1 s), so 100 of them
   * within 100 ms (x the build's multiplier) prove that none did I/O, with
   * room for a loaded machine (they take microseconds each). */
  uint64_t t0 = test_now_ms();
  for (int i = 0; i < 100; i++)
    assert_int_equal(
        resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, NULL, &e),
        RESIL_E_BREAKER_OPEN);
  uint64_t took = test_now_ms() - t0;
  print_message("# 100 rejections in %llu ms\n", (unsigned long long)took);
  assert_true(took <= test_slack_ms(0));
  resil_pg_stats after = pg_stats(pg);
  resil_pool_stats pa;
  resil_pool_get_stats(resil_pg_pool(pg), &pa);
  assert_int_equal(after.connects_ok + after.connects_failed + after.connects_timed_out,
                   before.connects_ok + before.connects_failed + before.connects_timed_out);
  assert_int_equal(pa.acquired, pb.acquired);
  resume_server();
  resil_pg_free(pg);
  /* The server answers again. */
  PGconn *c = raw_connect(pg_conninfo());
  assert_int_equal(raw_int(c, "SELECT 1"), 1);
  PQfinish(c);
}

/* ---- Recovery probes ------------------------------------------------------ */

static void tweak_probe(resil_pg_config *cfg) {
  cfg->dep.breaker.consecutive_failures = 2;
  cfg->dep.breaker.failure_rate_percent = 0;
  cfg->dep.breaker.open_ms = 30000; /* a long break, as after several trips */
  cfg->dep.breaker.open_max_ms = 60000;
  cfg->dep.timeout_ms = 400; /* probe timeout: min(400, 1000) */
  cfg->pool.max_size = 1;
  cfg->cancel_timeout_ms = 200;
  /* probe_interval_ms: the default, 500; probe_sql: the default, SELECT 1 */
}

static void heal_pg(void *ctx) {
  (void)ctx;
  resume_server();
}

/* One SELECT 1 under a 500 ms deadline (a probe: a fresh connection). */
static resil_status select_1(void *pg) {
  PGresult *res = NULL;
  resil_err e;
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(500), 0, "SELECT 1", 0, NULL, &res, &e);
  PQclear(res);
  return st;
}

static void recovery_probe_ends_a_long_break_soon_after_the_server_heals(void **state) {
  (void)state;
  resil_pg *pg = make_pg("probe-db", tweak_probe);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  stop_tree(postmaster_pid());
  resil_err e;
  for (int i = 0; i < 2; i++)
    assert_int_equal(
        resil_pg_query(pg, resil_deadline_in_ms(300), 0, "SELECT 1", 0, NULL, NULL, &e),
        RESIL_E_TIMEOUT);
  resil_dep_stats s0 = dep_stats(pg);
  assert_int_equal(s0.breaker.state, RESIL_BREAKER_OPEN);
  resil_dep_stats s = probe_outage_holds(resil_pg_dep(pg), &s0);
  probe_heal_within_bound(resil_pg_dep(pg), &s, heal_pg, select_1, pg);
  resil_pg_free(pg);
}

static void tweak_validate(resil_pg_config *cfg) {
  cfg->pool.max_size = 2;
  cfg->pool.min_idle = 2;
  cfg->pool.validate_after_idle_ms = 0; /* validate every borrow */
}

static void restarted_server_stale_connections_are_replaced(void **state) {
  (void)state;
  const char *restart = need_env("RESIL_TEST_PG_RESTART");
  resil_pg *pg = make_pg("restart-db", tweak_validate);
  resil_err e;
  assert_int_equal(resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(3000), &e),
                   RESIL_OK);
  int64_t old_pid = query_int(pg, "SELECT pg_backend_pid()");
  pid_t pm = postmaster_pid();
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "'%s'", restart);
  int rc = system(cmd);
  assert_int_equal(rc, 0);
  assert_true(postmaster_pid() != pm);
  /* Every call succeeds: validation finds the dead connections and the pool
   * opens new ones. */
  for (int i = 0; i < 4; i++) {
    int64_t pid = query_int(pg, "SELECT pg_backend_pid()");
    assert_true(pid != old_pid);
  }
  assert_int_equal(dep_stats(pg).calls[RESIL_OUTCOME_FAILURE], 0);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  assert_true(ps.closed[RESIL_POOL_CLOSE_VALIDATION] >= 1);
  resil_pg_free(pg);
}

static void tweak_no_validation(resil_pg_config *cfg) {
  cfg->pool.max_size = 2;
  cfg->pool.min_idle = 2;
  cfg->pool.validate_after_idle_ms = 600000; /* the pool never validates here */
}

static void restarted_server_no_caller_sees_a_dead_connection(void **state) {
  (void)state;
  const char *restart = need_env("RESIL_TEST_PG_RESTART");
  resil_pg *pg = make_pg("restart2-db", tweak_no_validation);
  resil_err e;
  assert_int_equal(resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(3000), &e),
                   RESIL_OK);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "'%s'", restart);
  assert_int_equal(system(cmd), 0);
  /* The dead sockets are noticed on borrow (EOF pending) without a round
   * trip, closed and replaced: not one call fails, not even a
   * non-idempotent one. The first one found is a failover sign: the other
   * idle one is evicted with it at once, not found dead on a later borrow. */
  for (int i = 0; i < 4; i++) assert_int_equal(query_int(pg, "SELECT 1"), 1);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 4);
  assert_int_equal(pg_stats(pg).broken, 1);
  assert_int_equal(pg_stats(pg).failovers, 1);
  assert_int_equal(s.pool.closed[RESIL_POOL_CLOSE_EVICTED], 1);
  resil_pg_free(pg);
}

/* ---- Pool and transactions --------------------------------------------- */

static void tweak_small_pool(resil_pg_config *cfg) {
  cfg->pool.max_size = 1;
  cfg->pool.acquire_timeout_ms = 100;
}

static void full_pool_gives_pool_timeout(void **state) {
  (void)state;
  resil_pg *pg = make_pg("full-pool-db", tweak_small_pool);
  resil_err e;
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  uint64_t t0 = test_now_ms();
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(1000), 0, "SELECT 1", 0, NULL, NULL, &e);
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_POOL_TIMEOUT);
  assert_true(took >= 90 && took <= 100 + SLACK_MS);
  assert_int_equal(resil_pg_tx_rollback(tx, &e), RESIL_OK);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.rejections[RESIL_REJECT_POOL_TIMEOUT], 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(s.breaker.consecutive_failures, 0);
  resil_pg_free(pg);
}

static void transaction_commits_and_holds_one_session(void **state) {
  (void)state;
  resil_pg *pg = make_pg("tx-db", NULL);
  PQclear(must_query(pg, "CREATE TABLE IF NOT EXISTS resil_pg_tx (id bigint, v text)", 0, NULL));
  char id[32];
  snprintf(id, sizeof id, "%ld", (long)getpid());
  const char *p[] = {id};
  PQclear(must_query(pg, "DELETE FROM resil_pg_tx WHERE id = $1", 1, p));
  resil_err e;
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  assert_true(resil_pg_tx_backend_pid(tx) > 0);
  assert_int_equal(resil_pg_tx_query(tx, "CREATE TEMP TABLE t_tx (x int) ON COMMIT DROP", 0,
                                     NULL, NULL, &e),
                   RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "INSERT INTO t_tx VALUES (1)", 0, NULL, NULL, &e),
                   RESIL_OK);
  assert_int_equal(
      resil_pg_tx_query(tx, "INSERT INTO resil_pg_tx SELECT $1, 'c' FROM t_tx", 1, p, NULL, &e),
      RESIL_OK);
  assert_int_equal(resil_pg_tx_commit(tx, &e), RESIL_OK);
  PGresult *res = must_query(pg, "SELECT count(*) FROM resil_pg_tx WHERE id = $1", 1, p);
  assert_string_equal(resil_pg_value(res, 0, 0), "1");
  PQclear(res);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 4); /* 3 queries + 1 transaction */
  resil_pg_free(pg);
}

static void open_transaction_is_never_handed_to_the_next_caller(void **state) {
  (void)state;
  resil_pg *pg = make_pg("leak-db", tweak_pool1);
  PGconn *watcher = raw_connect(pg_conninfo());
  PQclear(must_query(pg, "CREATE TABLE IF NOT EXISTS resil_pg_tx (id bigint, v text)", 0, NULL));
  char id[32];
  snprintf(id, sizeof id, "%ld", (long)getpid() + 1000000);
  const char *p[] = {id};
  char count_sql[128];
  snprintf(count_sql, sizeof count_sql, "SELECT count(*) FROM resil_pg_tx WHERE id = %s", id);

  /* 1. A bare BEGIN through resil_pg_query(): rolled back before reuse. */
  PQclear(must_query(pg, "BEGIN", 0, NULL));
  PQclear(must_query(pg, "INSERT INTO resil_pg_tx VALUES ($1, 'autocommit')", 1, p));
  assert_int_equal(raw_int(watcher, count_sql), 1); /* committed: not inside a leftover tx */
  assert_true(pg_stats(pg).rollbacks >= 1);
  PQclear(must_query(pg, "DELETE FROM resil_pg_tx WHERE id = $1", 1, p));

  /* 2. A transaction whose caller hits an error and commits anyway. */
  resil_err e;
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  assert_int_equal(
      resil_pg_tx_query(tx, "INSERT INTO resil_pg_tx VALUES ($1, 'lost')", 1, p, NULL, &e),
      RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "SELEC oops", 0, NULL, NULL, &e), RESIL_E_CALLER);
  assert_int_equal(resil_pg_tx_query(tx, "SELECT 1", 0, NULL, NULL, &e), RESIL_E_CALLER);
  assert_int_equal(resil_pg_tx_commit(tx, &e), RESIL_E_CALLER);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "leak-db: commit: rolled back after an earlier error"));
  assert_non_null(strstr(e.msg, "42601"));
  PGresult *res = must_query(pg,
                             "SELECT txid_current_if_assigned() IS NULL, "
                             "(SELECT count(*) FROM resil_pg_tx WHERE id = $1)",
                             1, p);
  assert_string_equal(resil_pg_value(res, 0, 0), "t"); /* no write tx carried over */
  assert_string_equal(resil_pg_value(res, 0, 1), "0"); /* the write is gone */
  PQclear(res);
  /* SAVEPOINT outside a transaction block is an error (25P01): proof that
   * the session is not inside one. */
  res = NULL;
  assert_int_equal(resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SAVEPOINT s", 0, NULL,
                                  &res, &e),
                   RESIL_E_CALLER);
  assert_string_equal(resil_pg_sqlstate(res), "25P01");
  PQclear(res);

  /* 3. A transaction abandoned at its deadline: the connection is closed. */
  int64_t pid = query_int(pg, "SELECT pg_backend_pid()");
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(300), NULL, &tx, &e), RESIL_OK);
  assert_int_equal(
      resil_pg_tx_query(tx, "INSERT INTO resil_pg_tx VALUES ($1, 'lost')", 1, p, NULL, &e),
      RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "SELECT pg_sleep(2)", 0, NULL, NULL, &e),
                   RESIL_E_TIMEOUT);
  assert_int_equal(resil_pg_tx_rollback(tx, &e), RESIL_E_TIMEOUT);
  assert_true(query_int(pg, "SELECT pg_backend_pid()") != pid);
  assert_int_equal(raw_int(watcher, count_sql), 0);
  PQfinish(watcher);
  resil_pg_free(pg);
}

typedef struct body_ctx {
  int calls;
} body_ctx;

static resil_status flaky_body(void *ctx, resil_pg_tx *tx) {
  body_ctx *b = ctx;
  b->calls++;
  resil_err e;
  if (b->calls == 1)
    return resil_pg_tx_query(
        tx, "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$", 0, NULL,
        NULL, &e);
  return resil_pg_tx_query(tx, "SELECT 1", 0, NULL, NULL, &e);
}

static void transact_retries_a_serialization_failure(void **state) {
  (void)state;
  resil_pg *pg = make_pg("transact-db", tweak_retries);
  body_ctx b = {0};
  resil_err e;
  assert_int_equal(resil_pg_transact(pg, resil_deadline_in_ms(3000), RESIL_CALL_IDEMPOTENT,
                                     "BEGIN ISOLATION LEVEL SERIALIZABLE", flaky_body, &b, &e),
                   RESIL_OK);
  assert_int_equal(b.calls, 2);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.retries, 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 1);
  resil_pg_free(pg);
}

/* ---- Through pgbouncer (transaction pooling) --------------------------- */

static void tweak_bouncer(resil_pg_config *cfg) {
  cfg->statement_timeout = false; /* pgbouncer refuses the options parameter */
  cfg->pool.max_size = 1;
}

static void bouncer_query_syntax_error_and_timeout(void **state) {
  (void)state;
  PGconn *watcher = raw_connect(pg_conninfo());
  resil_pg *pg = make_pg_at("bouncer-db", bouncer_conninfo(), tweak_bouncer);
  const char *p[] = {"41"};
  PGresult *res = must_query(pg, "SELECT $1::int + 1", 1, p);
  assert_string_equal(resil_pg_value(res, 0, 0), "42");
  PQclear(res);
  resil_err e;
  res = NULL;
  assert_int_equal(resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELEC 1", 0, NULL, &res,
                                  &e),
                   RESIL_E_CALLER);
  assert_string_equal(resil_pg_sqlstate(res), "42601");
  PQclear(res);
  /* A held transaction keeps one server session through the pooler. */
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(3000), NULL, &tx, &e), RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "CREATE TEMP TABLE t_b (x int) ON COMMIT DROP", 0, NULL,
                                     NULL, &e),
                   RESIL_OK);
  assert_int_equal(resil_pg_tx_query(tx, "INSERT INTO t_b VALUES (1), (2)", 0, NULL, NULL, &e),
                   RESIL_OK);
  res = NULL;
  assert_int_equal(resil_pg_tx_query(tx, "SELECT count(*) FROM t_b", 0, NULL, &res, &e),
                   RESIL_OK);
  assert_string_equal(resil_pg_value(res, 0, 0), "2");
  PQclear(res);
  assert_int_equal(resil_pg_tx_commit(tx, &e), RESIL_OK);
  check_slow_statement_is_cancelled(pg, watcher, false);
  assert_int_equal(query_int(pg, "SELECT 5"), 5);
  resil_dep_stats s = dep_stats(pg);
  assert_int_equal(s.breaker.consecutive_failures, 0); /* reset by the success */
  PQfinish(watcher);
  resil_pg_free(pg);
}

static void bouncer_rejects_options_with_a_clear_failure(void **state) {
  (void)state;
  resil_pg *pg = make_pg_at("bouncer-opt-db", bouncer_conninfo(), NULL);
  resil_err e;
  assert_int_equal(
      resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, NULL, &e),
      RESIL_E_FAILURE);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "options"));
  resil_pg_free(pg);
}

/* ---- Faults through a proxy ------------------------------------------- */

#ifdef HAVE_FAULTPROXY
static void tweak_proxy(resil_pg_config *cfg) {
  cfg->pool.max_size = 1;
  cfg->cancel_timeout_ms = 200;
  cfg->dep.breaker.consecutive_failures = 100;
}

static fp_proxy *start_proxy(char *ci, size_t size) {
  const char *base = pg_conninfo();
  unsigned port = (unsigned)strtoul(need_env("RESIL_TEST_PG_PORT"), NULL, 10);
  fp_proxy *fp = fp_start("127.0.0.1", (uint16_t)port);
  assert_non_null(fp);
  snprintf(ci, size, "%s port=%u", base, (unsigned)fp_port(fp));
  return fp;
}

static void blackholed_connection_times_out_and_its_cancel_is_abandoned(void **state) {
  (void)state;
  char ci[2048];
  fp_proxy *fp = start_proxy(ci, sizeof ci);
  resil_pg *pg = make_pg_at("blackhole-db", ci, tweak_proxy);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  fp_set_mode(fp, FP_BLACKHOLE, 0);
  resil_err e;
  uint64_t t0 = test_now_ms();
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(300), 0, "SELECT 1", 0, NULL, NULL, &e);
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_true(took <= 300 + SLACK_MS);
  /* The cancel request goes into the same black hole: the reaper gives up
   * on it after cancel_timeout_ms and closes the connection anyway. */
  for (int i = 0; i < 200 && pg_stats(pg).reaped < 1; i++) test_sleep_ms(10);
  resil_pg_stats s = pg_stats(pg);
  assert_int_equal(s.reaped, 1);
  assert_int_equal(s.cancels_abandoned, 1);
  fp_set_mode(fp, FP_PASS, 0); /* the stuck cancel completes; its thread exits */
  assert_int_equal(query_int(pg, "SELECT 2"), 2);
  resil_pg_free(pg);
  assert_true(fp_wait_active(fp, 0, 3000));
  fp_stop(fp);
}

static void reply_cut_mid_way_is_a_failure_and_the_connection_is_replaced(void **state) {
  (void)state;
  char ci[2048];
  fp_proxy *fp = start_proxy(ci, sizeof ci);
  resil_pg *pg = make_pg_at("cut-db", ci, tweak_proxy);
  assert_int_equal(query_int(pg, "SELECT 1"), 1);
  fp_set_mode(fp, FP_CLOSE_MID_REPLY, 0);
  resil_err e;
  PGresult *res = NULL;
  resil_status st = resil_pg_query(pg, resil_deadline_in_ms(2000), RESIL_CALL_IDEMPOTENT,
                                   "SELECT repeat('x', 20000)", 0, NULL, &res, &e);
  print_message("# %s\n", e.msg);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_null(res);
  assert_non_null(strstr(e.msg, "cut-db: query: "));
  fp_set_mode(fp, FP_PASS, 0);
  assert_int_equal(query_int(pg, "SELECT 3"), 3);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  assert_int_equal(ps.connects_ok, 2);
  assert_int_equal(pg_stats(pg).broken, 1);
  resil_pg_free(pg);
  assert_true(fp_wait_active(fp, 0, 3000));
  fp_stop(fp);
}
#endif

/* ---- Configuration from the environment ------------------------------- */

static void environment_configures_a_pg_dependency(void **state) {
  (void)state;
  const char *ci = pg_conninfo();
  char v_deps[] = "RESIL_DEPS=env-db:pg";
  char v_ci[2048];
  snprintf(v_ci, sizeof v_ci, "RESIL_DEP_ENV_DB_CONNINFO=%s", ci);
  char v_qt[] = "RESIL_DEP_ENV_DB_QUERY_TIMEOUT_MS=2s";
  char v_pool[] = "RESIL_DEP_ENV_DB_POOL_MAX_SIZE=3";
  char *env[] = {v_deps, v_ci, v_qt, v_pool, NULL};
  resil_config *cfg = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  if (resil_config_load(env, NULL, &cfg, NULL, &e) != RESIL_OK) fail_msg("%s", e.msg);
  resil_pg_config *pc = resil_config_find(cfg, "env-db", "pg");
  assert_non_null(pc);
  assert_int_equal(pc->query_timeout_ms, 2000);
  assert_int_equal(pc->pool.max_size, 3);
  char *dump = resil_config_dump(cfg);
  assert_non_null(dump);
  const char *pw = strstr(ci, "password=");
  if (pw) assert_null(strstr(dump, pw));
  free(dump);
  resil_pg *pg = resil_pg_new(pc, &e);
  if (!pg) fail_msg("%s", e.msg);
  PGresult *res = must_query(pg, "SELECT current_setting('statement_timeout')", 0, NULL);
  assert_string_equal(resil_pg_value(res, 0, 0), "2s");
  PQclear(res);
  resil_pg_free(pg);
  resil_config_free(cfg);

  char v_bad[] = "RESIL_DEP_ENV_DB_CANCEL_TIMEOUT_MS=0";
  char *env2[] = {v_deps, v_bad, NULL};
  assert_int_equal(resil_config_load(env2, NULL, &cfg, NULL, &e), RESIL_E_INVALID);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "CONNINFO"));
  assert_non_null(strstr(e.msg, "CANCEL_TIMEOUT_MS"));
}

/* ---- The example ------------------------------------------------------- */

static void minimal_example_runs(void **state) {
  (void)state;
  const char *ci = pg_conninfo();
  const char *exe = test_env("RESIL_PG_EXAMPLE");
  if (!exe) fail_msg("RESIL_PG_EXAMPLE (set by meson) is missing");
  char cmd[4600];
  snprintf(cmd, sizeof cmd, "'%s' '%s'", exe, ci);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[256] = "";
  char *got = fgets(line, sizeof line, p);
  int rc = pclose(p);
  assert_non_null(got);
  assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
  assert_string_equal(line, "answer = 42\n");
}

/* ---- Leaks ------------------------------------------------------------- */

static void no_file_descriptor_leaks_over_the_suite(void **state) {
  (void)state;
  need_env("RESIL_TEST_PG_CONNINFO");
  int now = count_open_fds();
  print_message("# fds at start %d, now %d\n", fds_at_start, now);
  assert_int_equal(now, fds_at_start);
}

int main(void) {
  atexit(resume_server);
  signal(SIGTERM, on_fatal_signal);
  signal(SIGINT, on_fatal_signal);
  signal(SIGPIPE, SIG_IGN);
  fds_at_start = count_open_fds();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_reports_every_problem_without_secrets),
      cmocka_unit_test(sqlstates_are_classified),
      cmocka_unit_test(simple_and_parameterised_queries),
      cmocka_unit_test(nulls_and_binary_safe_text),
      cmocka_unit_test(syntax_error_is_a_caller_error_not_counted_by_the_breaker),
      cmocka_unit_test(unique_violation_is_a_caller_error_with_its_fields),
      cmocka_unit_test(serialization_failure_is_not_retried_when_not_idempotent),
      cmocka_unit_test(idempotent_query_is_retried_after_its_backend_is_killed),
      cmocka_unit_test(serialization_failure_retries_idempotent_calls),
      cmocka_unit_test(prepared_statements_are_prepared_once_per_connection),
      cmocka_unit_test(slow_statement_times_out_is_cancelled_and_not_reused),
      cmocka_unit_test(query_timeout_caps_a_longer_deadline),
      cmocka_unit_test(server_statement_timeout_is_a_timeout_and_keeps_the_connection),
      cmocka_unit_test(host_names_socket_paths_and_host_lists_connect),
      cmocka_unit_test(eight_threads_share_a_pool_of_four),
      cmocka_unit_test(tcp_keepalives_and_user_timeout_are_set_by_default),
      cmocka_unit_test(tls_settings_reach_libpq),
      cmocka_unit_test(nothing_listening_fails_fast),
      cmocka_unit_test(max_connections_exhausted_is_a_dependency_failure),
      cmocka_unit_test_teardown(recovery_probe_ends_a_long_break_soon_after_the_server_heals,
                                teardown_resume),
      cmocka_unit_test_teardown(stopped_server_times_out_then_breaker_rejects_without_io,
                                teardown_resume),
      cmocka_unit_test_teardown(restarted_server_stale_connections_are_replaced,
                                teardown_resume),
      cmocka_unit_test_teardown(restarted_server_no_caller_sees_a_dead_connection,
                                teardown_resume),
      cmocka_unit_test(full_pool_gives_pool_timeout),
      cmocka_unit_test(transaction_commits_and_holds_one_session),
      cmocka_unit_test(open_transaction_is_never_handed_to_the_next_caller),
      cmocka_unit_test(transact_retries_a_serialization_failure),
      cmocka_unit_test(bouncer_query_syntax_error_and_timeout),
      cmocka_unit_test(bouncer_rejects_options_with_a_clear_failure),
#ifdef HAVE_FAULTPROXY
      cmocka_unit_test(blackholed_connection_times_out_and_its_cancel_is_abandoned),
      cmocka_unit_test(reply_cut_mid_way_is_a_failure_and_the_connection_is_replaced),
      cmocka_unit_test(huge_value_over_max_result_bytes_is_a_caller_error),
      cmocka_unit_test(huge_value_as_a_connections_first_statement_is_a_caller_error),
      cmocka_unit_test(many_rows_over_max_result_bytes_is_a_caller_error),
      cmocka_unit_test(result_within_max_result_bytes_is_returned),
      cmocka_unit_test(large_result_streaming_past_the_deadline_times_out),
#endif
      cmocka_unit_test(environment_configures_a_pg_dependency),
      cmocka_unit_test(minimal_example_runs),
      cmocka_unit_test(no_file_descriptor_leaks_over_the_suite),
  };
  return cmocka_run_group_tests_name("pg", tests, NULL, NULL);
}
