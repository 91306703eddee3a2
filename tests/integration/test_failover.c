/* Failover against real servers: a host name the test controls (a hosts
 * file given to resil's resolver, the way RESIL_HOSTS_FILE does) points at
 * the old writer on 127.0.0.2; at one moment the old writer is demoted and
 * the name moves to the new writer on 127.0.0.1 (same port), as an Aurora /
 * RDS or ElastiCache failover does with its cluster endpoint's DNS record.
 *
 *   PostgreSQL: A = pg2 (RESIL_TEST_PG2_*, started on demand), demoted with
 *   ALTER SYSTEM SET default_transaction_read_only = on + pg_reload_conf(),
 *   so it answers writes with 25006; B = the test PostgreSQL.
 *   Redis: A = redis2 (RESIL_TEST_REDIS2_*), made a replica of B (REPLICAOF)
 *   so it answers writes with READONLY; B = the test Redis.
 *
 * Writer threads write without pause throughout. Promises checked: writes
 * succeed on B within 1 s (+ slack) of the switch; no connection to A is
 * used for a write after the first refusal (refusals <= connections in use
 * at the switch); a refused write (not executed) is replayed at once, so no
 * call fails, and the breaker never opens;
 * the cached answer for the name is not waited out (the resolver's TTL is
 * set to 60 s here). */
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

#define WRITERS 3
#define MAX_RECS 20000
#define RECOVER_MS 1000 /* the promise: writes succeed on the new writer within 1 s */

static char hosts[128];

static void put_hosts(const char *text) {
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", hosts);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(rename(tmp, hosts), 0); /* atomic, as a DNS update is */
}

static void run_script(const char *var) {
  const char *script = need_env(var);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "'%s'", script);
  if (system(cmd) != 0) fail_msg("%s (%s) failed", var, script);
}

/* ---- One writer's record ---------------------------------------------------- */

typedef struct rec {
  uint64_t start_ms, end_ms;
  resil_status st;
  bool on_b; /* served by the new writer (PostgreSQL: inet_server_addr) */
} rec;

typedef struct writer {
  pthread_t t;
  void *h; /* resil_pg * or resil_redis * */
  int id;
  rec *recs;
  _Atomic size_t n; /* records written (published after each is complete) */
} writer;

static atomic_bool stop_writers;

static void *pg_writer(void *arg) {
  writer *w = arg;
  char who[16];
  snprintf(who, sizeof who, "w%d", w->id);
  const char *params[] = {who};
  while (!atomic_load(&stop_writers) && atomic_load(&w->n) < MAX_RECS) {
    rec *r = &w->recs[atomic_load(&w->n)];
    r->start_ms = test_now_ms();
    PGresult *res = NULL;
    resil_err err;
    r->st = resil_pg_query(w->h, resil_deadline_in_ms(1000), 0,
                           "INSERT INTO resil_failover (who) VALUES ($1) "
                           "RETURNING host(inet_server_addr())",
                           1, params, &res, &err);
    r->end_ms = test_now_ms();
    r->on_b = r->st == RESIL_OK && strcmp(resil_pg_value(res, 0, 0), "127.0.0.1") == 0;
    if (r->st != RESIL_OK) print_message("# writer %d: %s\n", w->id, err.msg);
    PQclear(res);
    atomic_fetch_add(&w->n, 1);
    test_sleep_ms(2);
  }
  return NULL;
}

static void *redis_writer(void *arg) {
  writer *w = arg;
  while (!atomic_load(&stop_writers) && atomic_load(&w->n) < MAX_RECS) {
    rec *r = &w->recs[atomic_load(&w->n)];
    r->start_ms = test_now_ms();
    redisReply *rep = NULL;
    resil_err err;
    r->st = resil_redis_command(w->h, resil_deadline_in_ms(1000), 0, &rep, &err,
                                "INCR resil:failover:%d", w->id);
    r->end_ms = test_now_ms();
    if (r->st != RESIL_OK) print_message("# writer %d: %s\n", w->id, err.msg);
    if (rep) freeReplyObject(rep);
    atomic_fetch_add(&w->n, 1);
    test_sleep_ms(2);
  }
  return NULL;
}

static void start_writers(writer *ws, void *h, void *(*fn)(void *)) {
  atomic_store(&stop_writers, false);
  for (int i = 0; i < WRITERS; i++) {
    ws[i].h = h;
    ws[i].id = i;
    ws[i].recs = calloc(MAX_RECS, sizeof(rec));
    atomic_store(&ws[i].n, 0);
    assert_non_null(ws[i].recs);
    assert_int_equal(pthread_create(&ws[i].t, NULL, fn, &ws[i]), 0);
  }
}

static void stop_all(writer *ws) {
  atomic_store(&stop_writers, true);
  for (int i = 0; i < WRITERS; i++) pthread_join(ws[i].t, NULL);
}

/* What the writers saw relative to the switch at t_switch. */
typedef struct summary {
  uint64_t first_ok_after;    /* end of the first success of a call started after t_switch */
  int failures;               /* calls that failed, in all */
  int failures_after_recover; /* calls started after first_ok_after that failed */
  int ok_on_a_after_recover;  /* PostgreSQL: successes on A of calls started after it */
  int calls;
} summary;

static summary summarize(writer *ws, uint64_t t_switch, bool need_b) {
  summary s = {.first_ok_after = UINT64_MAX};
  for (int i = 0; i < WRITERS; i++)
    for (size_t k = 0; k < ws[i].n; k++) {
      rec *r = &ws[i].recs[k];
      s.calls++;
      if (r->st != RESIL_OK) s.failures++;
      if (r->start_ms >= t_switch && r->st == RESIL_OK && (!need_b || r->on_b) &&
          r->end_ms < s.first_ok_after)
        s.first_ok_after = r->end_ms;
    }
  for (int i = 0; i < WRITERS; i++)
    for (size_t k = 0; k < ws[i].n; k++) {
      rec *r = &ws[i].recs[k];
      if (r->start_ms <= s.first_ok_after) continue;
      if (r->st != RESIL_OK) s.failures_after_recover++;
      else if (need_b && !r->on_b) s.ok_on_a_after_recover++;
    }
  return s;
}

/* One line for the log: what the run saw. signal names the failover signal
 * ("25006", "READONLY"), counted read_only times. Returns dep's stats. */
static resil_dep_stats print_run(const summary *s, uint64_t t_switch, const char *signal,
                      unsigned long long read_only, unsigned long long replays,
                      unsigned long long failovers, resil_dep *dep) {
  resil_dep_stats ds;
  resil_dep_get_stats(dep, &ds);
  print_message("# %d calls, %d failed; recovered %lld ms after the switch; %s seen %llu, "
                "replayed %llu, failovers %llu, evicted %llu, breaker opened %llu\n",
                s->calls, s->failures,
                s->first_ok_after == UINT64_MAX ? -1LL : (long long)(s->first_ok_after - t_switch),
                signal, read_only, replays, failovers,
                (unsigned long long)ds.pool.closed[RESIL_POOL_CLOSE_EVICTED],
                (unsigned long long)ds.breaker.transitions[RESIL_BREAKER_OPEN]);
  return ds;
}

static void free_writers(writer *ws) {
  for (int i = 0; i < WRITERS; i++) free(ws[i].recs);
}

static bool any_ok_since(writer *ws, uint64_t t, bool need_b) {
  for (int i = 0; i < WRITERS; i++) {
    size_t n = atomic_load(&ws[i].n); /* the records below it are complete */
    for (size_t k = n > 50 ? n - 50 : 0; k < n; k++) {
      rec *r = &ws[i].recs[k];
      if (r->start_ms >= t && r->st == RESIL_OK && (!need_b || r->on_b)) return true;
    }
  }
  return false;
}

/* ---- PostgreSQL --------------------------------------------------------------- */

static void quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static void pg_admin(const char *conninfo, const char *sql) {
  char ci[512];
  snprintf(ci, sizeof ci, "%s connect_timeout=5", conninfo);
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("admin connect: %s", PQerrorMessage(c));
  PQsetNoticeProcessor(c, quiet, NULL);
  PGresult *r = PQexec(c, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
    fail_msg("admin '%s': %s", sql, PQresultErrorMessage(r));
  PQclear(r);
  PQfinish(c);
}

static void pg_a_writable(bool on) {
  const char *a = need_env("RESIL_TEST_PG2_ADMIN_CONNINFO");
  pg_admin(a, on ? "ALTER SYSTEM RESET default_transaction_read_only"
                 : "ALTER SYSTEM SET default_transaction_read_only = on");
  pg_admin(a, "SELECT pg_reload_conf()");
}

static int pg_setup(void **state) {
  (void)state;
  run_script("RESIL_TEST_PG2_START");
  pg_a_writable(true); /* whatever an earlier run left */
  const char *sql = "CREATE TABLE IF NOT EXISTS resil_failover "
                    "(id bigserial PRIMARY KEY, who text, at timestamptz DEFAULT now())";
  char ci[512];
  snprintf(ci, sizeof ci, "%s", need_env("RESIL_TEST_PG2_ADMIN_CONNINFO"));
  pg_admin(ci, sql);
  pg_admin(ci, "GRANT ALL ON resil_failover, resil_failover_id_seq TO resil");
  pg_admin(need_env("RESIL_TEST_PG_ADMIN_CONNINFO"), sql);
  pg_admin(need_env("RESIL_TEST_PG_ADMIN_CONNINFO"),
           "GRANT ALL ON resil_failover, resil_failover_id_seq TO resil");
  snprintf(hosts, sizeof hosts, "%s/failover-hosts-%d", need_env("RESIL_TEST_TMPDIR"),
           (int)getpid());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  atomic_store(&stop_writers, true);
  resil_resolve_set_hosts_file(NULL, NULL);
  resil_resolve_set_ttl_ms(5000);
  unlink(hosts);
  return 0;
}

static int pg_teardown(void **state) {
  pg_a_writable(true);
  return teardown(state);
}

static resil_pg *make_pg(const char *name, const char *host) {
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  char ci[512];
  snprintf(ci, sizeof ci, "host=%s port=%s dbname=resil user=resil password=%s", host,
           need_env("RESIL_TEST_PG_PORT"), need_env("RESIL_TEST_PG_PASSWORD"));
  cfg.conninfo = ci;
  cfg.pool.max_size = 8;
  cfg.pool.min_idle = 6; /* idle connections to A that must not be used after the switch */
  cfg.pool.housekeeping_ms = 0;
  cfg.dep.probe_interval_ms = 0;
  resil_err err;
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  return pg;
}

static void pg_writes_move_to_the_new_writer_within_a_second(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(60000); /* far longer than the test: re-resolution must not wait */
  put_hosts("127.0.0.2 writer.failover.test\n");
  resil_err err;
  assert_int_equal(resil_resolve_set_hosts_file(hosts, &err), RESIL_OK);
  resil_pg *pg = make_pg("failover-db", "writer.failover.test");
  assert_int_equal(resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(5000), &err),
                   RESIL_OK);
  writer ws[WRITERS];
  start_writers(ws, pg, pg_writer);
  test_sleep_ms(300); /* steady writes on A (a lead-in, not a wait for a result) */

  /* The switch: the name moves and the old writer is demoted at once (the
   * name first: were it still on A, a re-resolution would find A again,
   * as during a DNS update's lag, when no write can succeed anywhere). */
  put_hosts("127.0.0.1 writer.failover.test\n");
  pg_a_writable(false);
  uint64_t t_switch = test_now_ms();
  bool recovered = TEST_WAIT_UNTIL(any_ok_since(ws, t_switch, true), 5000);
  test_sleep_ms(300); /* writes go on after recovery: none may fail or reach A */
  stop_all(ws);

  summary s = summarize(ws, t_switch, true);
  resil_pg_stats ps;
  resil_pg_get_stats(pg, &ps);
  resil_dep_stats ds = print_run(&s, t_switch, "25006", ps.read_only, ps.replays, ps.failovers, resil_pg_dep(pg));
  assert_true(recovered);
  assert_true(s.first_ok_after - t_switch <= test_upper_ms(RECOVER_MS));
  assert_true(ps.read_only >= 1);             /* the demotion was seen... */
  assert_true(ps.failovers >= 1);             /* ...as a failover */
  assert_true(ps.read_only <= WRITERS);       /* no idle A connection was used afterwards */
  assert_int_equal(s.failures_after_recover, 0);
  assert_int_equal(s.ok_on_a_after_recover, 0);
  /* A refused write was not executed and is replayed at once on the new
   * writer: no caller sees the failover (the name had moved already). */
  assert_int_equal(s.failures, 0);
  assert_int_equal(ds.breaker.transitions[RESIL_BREAKER_OPEN], 0);
  free_writers(ws);
  resil_pg_free(pg);
}

/* Without a name to move: a transaction on the demoted writer gets 25006 as
 * a dependency failure (not a caller error), its connection is closed, the
 * pool's idle connections are evicted with it, and the next write is not
 * sent on any of them. */
static void pg_read_only_is_a_failure_and_evicts_the_pool(void **state) {
  (void)state;
  resil_pg *pg = make_pg("readonly-db", need_env("RESIL_TEST_PG2_ADDR"));
  resil_err err;
  assert_int_equal(resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(5000), &err),
                   RESIL_OK);
  pg_a_writable(false);
  /* The reload reaches each backend at its next statement. */
  assert_true(TEST_WAIT_UNTIL(({
    PGresult *r = NULL;
    resil_pg_query(pg, resil_deadline_in_ms(1000), 0, "SHOW default_transaction_read_only", 0,
                   NULL, &r, &err);
    bool on = r && resil_pg_value(r, 0, 0) && strcmp(resil_pg_value(r, 0, 0), "on") == 0;
    PQclear(r);
    on;
  }), 5000));
  resil_pool_stats before;
  resil_pool_get_stats(resil_pg_pool(pg), &before);
  resil_pg_tx *tx = NULL;
  assert_int_equal(resil_pg_tx_begin(pg, resil_deadline_in_ms(2000), NULL, &tx, &err), RESIL_OK);
  PGresult *r = NULL;
  resil_status st = resil_pg_tx_query(tx, "INSERT INTO resil_failover (who) VALUES ('tx')", 0,
                                      NULL, &r, &err);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_string_equal(resil_pg_sqlstate(r), "25006");
  assert_non_null(strstr(err.msg, "25006"));
  PQclear(r);
  assert_int_equal(resil_pg_tx_rollback(tx, &err), RESIL_E_FAILURE);
  resil_pool_stats after;
  resil_pool_get_stats(resil_pg_pool(pg), &after);
  assert_int_equal(after.idle, 0); /* every idle connection evicted at once */
  /* (the transaction had taken one of them) */
  assert_int_equal(after.closed[RESIL_POOL_CLOSE_EVICTED] - before.closed[RESIL_POOL_CLOSE_EVICTED],
                   before.idle - 1);
  assert_int_equal(after.closed[RESIL_POOL_CLOSE_BROKEN] - before.closed[RESIL_POOL_CLOSE_BROKEN],
                   1); /* the transaction's own */
  resil_dep_stats ds;
  resil_dep_get_stats(resil_pg_dep(pg), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_FAILURE], 1);
  assert_int_equal(resil_pg_classify_sqlstate("25006", NULL), RESIL_E_FAILURE);
  resil_pg_free(pg);
}

/* ---- Redis ---------------------------------------------------------------------- */

static redisContext *redis_admin(const char *host, uint16_t port) {
  struct timeval tv = {.tv_sec = 5};
  redisContext *c = redisConnectWithTimeout(host, port, tv);
  if (!c || c->err) fail_msg("redis admin %s:%u: %s", host, port, c ? c->errstr : "oom");
  redisSetTimeout(c, tv);
  return c;
}

static void redis_do(redisContext *c, const char *cmd) {
  redisReply *r = redisCommand(c, cmd);
  if (!r || r->type == REDIS_REPLY_ERROR)
    fail_msg("redis admin '%s': %s", cmd, r ? r->str : c->errstr);
  freeReplyObject(r);
}

static int redis_setup(void **state) {
  (void)state;
  run_script("RESIL_TEST_REDIS2_START");
  redisContext *a = redis_admin(need_env("RESIL_TEST_REDIS2_ADDR"), need_port("RESIL_TEST_REDIS_PORT"));
  redis_do(a, "REPLICAOF NO ONE");
  redisFree(a);
  snprintf(hosts, sizeof hosts, "%s/failover-hosts-%d", need_env("RESIL_TEST_TMPDIR"),
           (int)getpid());
  return 0;
}

static int redis_teardown(void **state) {
  const char *addr = test_env("RESIL_TEST_REDIS2_ADDR");
  if (addr && test_env("RESIL_TEST_REDIS_PORT")) {
    redisContext *a = redis_admin(addr, need_port("RESIL_TEST_REDIS_PORT"));
    redis_do(a, "REPLICAOF NO ONE");
    redisFree(a);
  }
  return teardown(state);
}

static void redis_writes_move_to_the_new_primary_within_a_second(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(60000);
  put_hosts("127.0.0.2 primary.failover.test\n");
  resil_err err;
  assert_int_equal(resil_resolve_set_hosts_file(hosts, &err), RESIL_OK);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "failover-cache");
  cfg.host = "primary.failover.test";
  cfg.port = need_port("RESIL_TEST_REDIS_PORT");
  cfg.pool.max_size = 8;
  cfg.pool.min_idle = 6;
  cfg.pool.housekeeping_ms = 0;
  cfg.dep.probe_interval_ms = 0;
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  assert_int_equal(resil_pool_prewarm(resil_redis_pool(r), resil_deadline_in_ms(5000), &err),
                   RESIL_OK);
  writer ws[WRITERS];
  start_writers(ws, r, redis_writer);
  test_sleep_ms(300);

  char cmd[96];
  snprintf(cmd, sizeof cmd, "REPLICAOF 127.0.0.1 %s", need_env("RESIL_TEST_REDIS_PORT"));
  redisContext *a = redis_admin(need_env("RESIL_TEST_REDIS2_ADDR"), need_port("RESIL_TEST_REDIS_PORT"));
  put_hosts("127.0.0.1 primary.failover.test\n"); /* the name moves (see the pg case)... */
  redis_do(a, cmd); /* ...and the old primary is demoted: it refuses writes from now */
  uint64_t t_switch = test_now_ms();
  redisFree(a);
  /* A success of a call started after the demotion can only be on B. */
  bool recovered = TEST_WAIT_UNTIL(any_ok_since(ws, t_switch, false), 5000);
  test_sleep_ms(300);
  stop_all(ws);

  summary s = summarize(ws, t_switch, false);
  resil_redis_stats rs;
  resil_redis_get_stats(r, &rs);
  resil_dep_stats ds = print_run(&s, t_switch, "READONLY", rs.read_only, rs.replays,
                                 rs.failovers, resil_redis_dep(r));
  assert_true(recovered);
  assert_true(s.first_ok_after - t_switch <= test_upper_ms(RECOVER_MS));
  assert_true(rs.read_only >= 1);
  assert_true(rs.failovers >= 1);
  assert_true(rs.read_only <= WRITERS);
  assert_int_equal(s.failures_after_recover, 0);
  assert_int_equal(s.failures, 0); /* replayed, as for PostgreSQL */
  assert_int_equal(ds.breaker.transitions[RESIL_BREAKER_OPEN], 0);
  /* The writes after the switch are on B. */
  redisContext *b = redis_admin("127.0.0.1", need_port("RESIL_TEST_REDIS_PORT"));
  redisReply *rep = redisCommand(b, "EXISTS resil:failover:0");
  assert_non_null(rep);
  assert_int_equal(rep->integer, 1);
  freeReplyObject(rep);
  redis_do(b, "DEL resil:failover:0 resil:failover:1 resil:failover:2");
  redisFree(b);
  free_writers(ws);
  resil_redis_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(pg_writes_move_to_the_new_writer_within_a_second,
                                      pg_setup, pg_teardown),
      cmocka_unit_test_setup_teardown(pg_read_only_is_a_failure_and_evicts_the_pool, pg_setup,
                                      pg_teardown),
      cmocka_unit_test_setup_teardown(redis_writes_move_to_the_new_primary_within_a_second,
                                      redis_setup, redis_teardown),
  };
  return cmocka_run_group_tests_name("failover", tests, NULL, NULL);
}
