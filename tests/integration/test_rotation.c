/* Passwords that rotate, under load, against the real servers: the test
 * Redis with requirepass (CONFIG SET requirepass) and the test PostgreSQL's
 * role resil (ALTER ROLE ... PASSWORD). Writer threads call without pause
 * through pools whose connections live 150 ms, so new connections (and
 * AUTH) happen all the time. The server's password is changed, then the
 * password file (or what the callback returns) right after. Promises: only
 * calls in flight at that moment may fail (failures <= threads), none fails
 * once the file has changed and its check interval passed, no restart; a
 * vanished file keeps the last good password. The servers' passwords are
 * restored at the end (other tests use them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "resil/pg.h"
#include "resil/redis.h"
#include "resil/resil.h"
#include "testutil.h"

#define THREADS 3
#define CHECK_MS 500   /* password_file_check_ms of the dependencies */
#define LIFETIME_MS 150 /* pool.max_lifetime_ms: connections churn */

static char pwpath[160];
static char newpw[64];

static void put_file(const char *text) {
  char tmp[200];
  snprintf(tmp, sizeof tmp, "%s.tmp", pwpath);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fprintf(f, "%s\n", text);
  fclose(f);
  assert_int_equal(rename(tmp, pwpath), 0);
}

/* ---- Load ------------------------------------------------------------------- */

typedef struct rec {
  uint64_t start_ms;
  resil_status st;
} rec;

#define MAX_RECS 40000
typedef struct worker {
  pthread_t t;
  void *h;
  bool pg;
  rec *recs;
  _Atomic size_t n;
} worker;

static atomic_bool stop;

static void *work(void *arg) {
  worker *w = arg;
  while (!atomic_load(&stop) && atomic_load(&w->n) < MAX_RECS) {
    rec r = {.start_ms = test_now_ms()};
    resil_err err;
    if (w->pg) {
      PGresult *res = NULL;
      r.st = resil_pg_query(w->h, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, &res, &err);
      PQclear(res);
    } else {
      redisReply *rep = NULL;
      r.st = resil_redis_command(w->h, resil_deadline_in_ms(2000), 0, &rep, &err, "PING");
      if (rep) freeReplyObject(rep);
    }
    if (r.st != RESIL_OK) print_message("# %s\n", err.msg);
    w->recs[atomic_load(&w->n)] = r;
    atomic_fetch_add(&w->n, 1);
    test_sleep_ms(1);
  }
  return NULL;
}

static void start(worker *ws, void *h, bool pg) {
  atomic_store(&stop, false);
  for (int i = 0; i < THREADS; i++) {
    ws[i].h = h;
    ws[i].pg = pg;
    ws[i].recs = calloc(MAX_RECS, sizeof(rec));
    atomic_store(&ws[i].n, 0);
    assert_non_null(ws[i].recs);
    assert_int_equal(pthread_create(&ws[i].t, NULL, work, &ws[i]), 0);
  }
}

static void finish(worker *ws) {
  atomic_store(&stop, true);
  for (int i = 0; i < THREADS; i++) pthread_join(ws[i].t, NULL);
}

/* Failures of calls started in [from, to). */
/* Connects that succeeded so far in pool p. */
static uint64_t connects_ok(resil_pool *p) {
  resil_pool_stats st;
  resil_pool_get_stats(p, &st);
  return st.connects_ok;
}

/* Wait (up to 10 s) for n more successful connects in p than it had when
 * called: new connections made with whatever password is current. Returns
 * the count it started from. */
static uint64_t wait_new_connects(resil_pool *p, uint64_t n) {
  uint64_t from = connects_ok(p);
  assert_true(TEST_WAIT_UNTIL(connects_ok(p) >= from + n, 10000));
  return from;
}

static int failures(worker *ws, uint64_t from, uint64_t to, int *calls) {
  int n = 0, c = 0;
  for (int i = 0; i < THREADS; i++)
    for (size_t k = 0; k < atomic_load(&ws[i].n); k++) {
      rec *r = &ws[i].recs[k];
      if (r->start_ms < from || r->start_ms >= to) continue;
      c++;
      if (r->st != RESIL_OK) n++;
    }
  if (calls) *calls = c;
  return n;
}

static void free_workers(worker *ws) {
  for (int i = 0; i < THREADS; i++) free(ws[i].recs);
}

/* Calls made since t by every worker (progress, not time). */
static bool all_made_calls_since(worker *ws, uint64_t t, int n) {
  int c;
  failures(ws, t, UINT64_MAX, &c);
  return c >= n;
}

static int setup(void **state) {
  (void)state;
  snprintf(pwpath, sizeof pwpath, "%s/rotation-pw-%d", need_env("RESIL_TEST_TMPDIR"),
           (int)getpid());
  snprintf(newpw, sizeof newpw, "rotated-%d-%llx", (int)getpid(),
           (unsigned long long)test_now_us());
  return 0;
}

/* ---- Redis -------------------------------------------------------------------- */

static redisContext *redis_admin(const char *password) {
  struct timeval tv = {.tv_sec = 5};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", need_port("RESIL_TEST_REDIS_AUTH_PORT"), tv);
  if (!c || c->err) fail_msg("redis admin: %s", c ? c->errstr : "oom");
  redisSetTimeout(c, tv);
  redisReply *r = redisCommand(c, "AUTH %s", password);
  bool ok = r && r->type != REDIS_REPLY_ERROR;
  if (r) freeReplyObject(r);
  if (!ok) {
    redisFree(c);
    return NULL;
  }
  return c;
}

static void redis_set_pass(redisContext *c, const char *pw) {
  redisReply *r = redisCommand(c, "CONFIG SET requirepass %s", pw);
  if (!r || r->type == REDIS_REPLY_ERROR) fail_msg("CONFIG SET requirepass failed");
  freeReplyObject(r);
}

/* Restore the server's password whatever state the test left. */
static int redis_teardown(void **state) {
  (void)state;
  atomic_store(&stop, true);
  const char *orig = test_env("RESIL_TEST_REDIS_PASSWORD");
  if (orig) {
    redisContext *c = redis_admin(newpw);
    if (c) {
      redis_set_pass(c, orig);
      redisFree(c);
    }
  }
  unlink(pwpath);
  return 0;
}

static void redis_rotation_under_load_fails_only_calls_in_flight(void **state) {
  (void)state;
  const char *orig = need_env("RESIL_TEST_REDIS_PASSWORD");
  put_file(orig);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "rotating-cache");
  cfg.port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  cfg.password_file = pwpath;
  cfg.password_file_check_ms = CHECK_MS;
  cfg.pool.max_size = 4;
  cfg.pool.max_lifetime_ms = LIFETIME_MS;
  cfg.pool.lifetime_jitter_percent = 0;
  cfg.dep.probe_interval_ms = 0;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  redisContext *admin = redis_admin(orig);
  assert_non_null(admin);
  worker ws[THREADS];
  start(ws, r, false);
  uint64_t t0 = test_now_ms();
  assert_true(TEST_WAIT_UNTIL(all_made_calls_since(ws, t0, 200), 5000));

  redis_set_pass(admin, newpw); /* the server rotates... */
  put_file(newpw);              /* ...then the secret's file */
  uint64_t t_file = test_now_ms();
  redisFree(admin);
  /* Enough new connections after the change: LIFETIME_MS churn. */
  assert_true(TEST_WAIT_UNTIL(all_made_calls_since(ws, t_file + CHECK_MS, 300), 10000));
  wait_new_connects(resil_redis_pool(r), 5);

  /* The file vanishes: new connections keep the last good password. */
  unlink(pwpath);
  uint64_t t_gone = test_now_ms();
  assert_true(TEST_WAIT_UNTIL(({
    resil_redis_stats st;
    resil_redis_get_stats(r, &st);
    st.password_errors >= 1;
  }), 5000));
  uint64_t gone = wait_new_connects(resil_redis_pool(r), 5);
  finish(ws);

  int calls_all, calls_after;
  int f_all = failures(ws, 0, UINT64_MAX, &calls_all);
  int f_after = failures(ws, t_file + CHECK_MS, UINT64_MAX, &calls_after);
  resil_redis_stats st;
  resil_redis_get_stats(r, &st);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_redis_pool(r), &ps);
  print_message("# %d calls, %d failed (%d calls after the file + check interval: %d failed); "
                "connects %llu ok %llu failed; auth refused %llu, password changes %llu, "
                "file errors %llu\n",
                calls_all, f_all, calls_after, f_after, (unsigned long long)ps.connects_ok,
                (unsigned long long)ps.connects_failed, (unsigned long long)st.auth_failures,
                (unsigned long long)st.password_changes,
                (unsigned long long)st.password_errors);
  assert_true(f_all <= THREADS);
  assert_int_equal(f_after, 0);
  assert_int_equal(st.password_changes, 1);
  assert_true(st.password_errors >= 1);
  assert_true(ps.connects_ok >= gone + 5); /* connected after the file vanished */
  (void)t_gone;
  free_workers(ws);
  resil_redis_free(r);
}

/* ---- PostgreSQL ------------------------------------------------------------------ */

static void pg_admin(const char *sql) {
  char ci[512];
  snprintf(ci, sizeof ci, "%s connect_timeout=5", need_env("RESIL_TEST_PG_ADMIN_CONNINFO"));
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("admin connect: %s", PQerrorMessage(c));
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) fail_msg("admin: %s", PQresultErrorMessage(r));
  PQclear(r);
  PQfinish(c);
}

static void pg_set_pass(const char *pw) {
  char sql[200];
  snprintf(sql, sizeof sql, "ALTER ROLE resil PASSWORD '%s'", pw);
  pg_admin(sql);
}

static int pg_teardown(void **state) {
  (void)state;
  atomic_store(&stop, true);
  const char *orig = test_env("RESIL_TEST_PG_PASSWORD");
  if (orig && test_env("RESIL_TEST_PG_ADMIN_CONNINFO")) pg_set_pass(orig);
  unlink(pwpath);
  return 0;
}

/* The callback's password (an IAM token generator's cache, say). */
static pthread_mutex_t cb_mu = PTHREAD_MUTEX_INITIALIZER;
static char cb_pw[64];
static _Atomic int cb_calls, cb_refused_calls;

static int password_cb(void *ctx, unsigned flags, char *buf, size_t size) {
  (void)ctx;
  atomic_fetch_add(&cb_calls, 1);
  if (flags & RESIL_PASSWORD_AUTH_FAILED) atomic_fetch_add(&cb_refused_calls, 1);
  pthread_mutex_lock(&cb_mu);
  snprintf(buf, size, "%s", cb_pw);
  pthread_mutex_unlock(&cb_mu);
  return 0;
}

static resil_pg *make_pg(const char *name, bool use_cb) {
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  char ci[256];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s dbname=resil user=resil",
           need_env("RESIL_TEST_PG_PORT"));
  cfg.conninfo = ci;
  if (use_cb) {
    cfg.password_cb = password_cb;
  } else {
    cfg.password_file = pwpath;
    cfg.password_file_check_ms = CHECK_MS;
  }
  cfg.pool.max_size = 4;
  cfg.pool.max_lifetime_ms = LIFETIME_MS;
  cfg.pool.lifetime_jitter_percent = 0;
  cfg.dep.probe_interval_ms = 0;
  resil_err err;
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  return pg;
}

static void pg_rotation(bool use_cb) {
  const char *orig = need_env("RESIL_TEST_PG_PASSWORD");
  put_file(orig);
  pthread_mutex_lock(&cb_mu);
  snprintf(cb_pw, sizeof cb_pw, "%s", orig);
  pthread_mutex_unlock(&cb_mu);
  resil_pg *pg = make_pg(use_cb ? "rotating-cb-db" : "rotating-db", use_cb);
  worker ws[THREADS];
  start(ws, pg, true);
  uint64_t t0 = test_now_ms();
  assert_true(TEST_WAIT_UNTIL(all_made_calls_since(ws, t0, 100), 5000));

  pg_set_pass(newpw); /* the server rotates... */
  if (use_cb) {       /* ...then the secret's source */
    pthread_mutex_lock(&cb_mu);
    snprintf(cb_pw, sizeof cb_pw, "%s", newpw);
    pthread_mutex_unlock(&cb_mu);
  } else {
    put_file(newpw);
  }
  uint64_t t_file = test_now_ms();
  uint64_t before = connects_ok(resil_pg_pool(pg));
  assert_true(TEST_WAIT_UNTIL(all_made_calls_since(ws, t_file + CHECK_MS, 100), 10000));
  assert_true(TEST_WAIT_UNTIL(connects_ok(resil_pg_pool(pg)) >= before + 5, 10000));
  finish(ws);

  int calls_all, calls_after;
  int f_all = failures(ws, 0, UINT64_MAX, &calls_all);
  int f_after = failures(ws, t_file + CHECK_MS, UINT64_MAX, &calls_after);
  resil_pg_stats st;
  resil_pg_get_stats(pg, &st);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  print_message("# %s: %d calls, %d failed (%d after the change + check interval: %d failed); "
                "connects %llu ok %llu failed; 28P01 %llu; password changes %llu; callback "
                "calls %d (after a refusal %d)\n",
                use_cb ? "callback" : "file", calls_all, f_all, calls_after, f_after,
                (unsigned long long)ps.connects_ok, (unsigned long long)ps.connects_failed,
                (unsigned long long)st.auth_failures, (unsigned long long)st.password_changes,
                atomic_load(&cb_calls), atomic_load(&cb_refused_calls));
  assert_true(f_all <= THREADS);
  assert_int_equal(f_after, 0);
  if (use_cb)
    assert_true(atomic_load(&cb_calls) >= 5); /* asked for each new connection */
  else
    assert_int_equal(st.password_changes, 1);
  free_workers(ws);
  resil_pg_free(pg);
}

static void pg_rotation_under_load_fails_only_calls_in_flight(void **state) {
  (void)state;
  pg_rotation(false);
}

static void pg_password_callback_rotation(void **state) {
  (void)state;
  pg_rotation(true);
}


/* The server's password and the file change before any connection is made,
 * and the file's periodic check is an hour away: the first connect's AUTH is
 * refused, the file is checked at once, and the connect is retried with the
 * new password - the very first call succeeds. */
static void a_refused_password_rereads_the_file_and_retries_at_once(void **state) {
  (void)state;
  const char *orig = need_env("RESIL_TEST_REDIS_PASSWORD");
  put_file(orig);
  resil_redis_config rc;
  resil_redis_config_init(&rc, "retry-cache");
  rc.port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  rc.password_file = pwpath;
  rc.password_file_check_ms = 3600000;
  rc.dep.probe_interval_ms = 0;
  resil_pg_config pc;
  resil_pg_config_init(&pc, "retry-db");
  char ci[256];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%s dbname=resil user=resil",
           need_env("RESIL_TEST_PG_PORT"));
  pc.conninfo = ci;
  pc.password_file = pwpath;
  pc.password_file_check_ms = 3600000;
  pc.dep.probe_interval_ms = 0;
  resil_err err;
  resil_redis *r = resil_redis_new(&rc, &err); /* reads the file: the old password */
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  resil_pg *pg = resil_pg_new(&pc, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  redisContext *admin = redis_admin(orig);
  assert_non_null(admin);
  redis_set_pass(admin, newpw);
  redisFree(admin);
  pg_set_pass(newpw);
  put_file(newpw);
  redisReply *rep = NULL;
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(2000), 0, &rep, &err, "PING");
  if (st != RESIL_OK) fail_msg("redis: %s", err.msg);
  freeReplyObject(rep);
  PGresult *res = NULL;
  st = resil_pg_query(pg, resil_deadline_in_ms(2000), 0, "SELECT 1", 0, NULL, &res, &err);
  if (st != RESIL_OK) fail_msg("pg: %s", err.msg);
  PQclear(res);
  resil_redis_stats rs;
  resil_redis_get_stats(r, &rs);
  resil_pg_stats ps;
  resil_pg_get_stats(pg, &ps);
  assert_int_equal(rs.auth_failures, 1);
  assert_int_equal(rs.password_changes, 1);
  assert_int_equal(ps.auth_failures, 1);
  assert_int_equal(ps.password_changes, 1);
  resil_redis_free(r);
  resil_pg_free(pg);
}

static int both_teardown(void **state) {
  redis_teardown(state);
  return pg_teardown(state);
}

/* A missing password file is a configuration error naming the variable and
 * the file; the secret of a file that exists never shows. */
static void a_missing_password_file_is_a_config_error_naming_it(void **state) {
  (void)state;
  resil_redis_register_kind(NULL);
  resil_pg_register_kind(NULL);
  char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg",
                 (char *)"RESIL_DEP_CACHE_PASSWORD_FILE=/nonexistent/cache-pw",
                 (char *)"RESIL_DEP_DB_CONNINFO=host=127.0.0.1 dbname=x user=x",
                 (char *)"RESIL_DEP_DB_PASSWORD_FILE=/nonexistent/db-pw", NULL};
  resil_config *c = NULL;
  char *report = NULL;
  resil_err err;
  assert_int_equal(resil_config_load(env, NULL, &c, &report, &err), RESIL_E_INVALID);
  assert_non_null(report);
  if (!strstr(report, "RESIL_DEP_CACHE_PASSWORD_FILE: cannot read '/nonexistent/cache-pw'") ||
      !strstr(report, "RESIL_DEP_DB_PASSWORD_FILE: cannot read '/nonexistent/db-pw'"))
    fail_msg("report: %s", report);
  free(report);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(redis_rotation_under_load_fails_only_calls_in_flight,
                                      setup, redis_teardown),
      cmocka_unit_test_setup_teardown(pg_rotation_under_load_fails_only_calls_in_flight, setup,
                                      pg_teardown),
      cmocka_unit_test_setup_teardown(pg_password_callback_rotation, setup, pg_teardown),
      cmocka_unit_test_setup_teardown(a_refused_password_rereads_the_file_and_retries_at_once,
                                      setup, both_teardown),
      cmocka_unit_test(a_missing_password_file_is_a_config_error_naming_it),
  };
  return cmocka_run_group_tests_name("rotation", tests, NULL, NULL);
}
