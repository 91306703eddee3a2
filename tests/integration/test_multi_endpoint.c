/* Several addresses behind one dependency (resil/endpoint.h), against real
 * servers: the test Redis (127.0.0.1), redis2 (127.0.0.2) and redis3
 * (127.0.0.3), all on the same port, started on demand by
 * scripts/lib/servers.sh, behind one dependency with HOSTS=...; and the
 * test PostgreSQL with pg2 (127.0.0.2).
 *
 * Promises checked, under load from several threads:
 *   - one SIGSTOPped address of three is ejected within N consecutive
 *     failures (counted on the address: at most N + the calls in flight on
 *     it), >= 99 % of reads succeed after that, the breaker stays closed,
 *     and after SIGCONT the address is re-admitted and serves calls again;
 *   - with two of three stopped and max_ejection_percent 50, never more
 *     than one is ejected (sampled throughout), the other's ejection is
 *     skipped, and the breaker still stays closed (one address is healthy);
 *   - with all three stopped, the breaker opens (the breaker is set to open
 *     at the first failure it counts, so "stays closed" above means it
 *     counted none of the stopped addresses' failures);
 *   - PostgreSQL over two addresses: calls are spread over both, an address
 *     whose server is stopped (pg_ctl stop) is ejected, and the one left
 *     serves every call; the restarted one is re-admitted;
 *   - ENDPOINTS_FROM_DNS, the name in a hosts file (resil_resolve_set_hosts_file,
 *     TTL 1 s) rewritten by rename: the three servers all serve; one
 *     dropped from the file leaves the set and the metrics within the TTL
 *     (+ slack), its connections close (its server's client count) and it
 *     gets no call (its GET count); written back, it serves again; one
 *     SIGSTOPped is ejected as with HOSTS; PostgreSQL the same over the
 *     test server and pg2 (spread, dropped, back);
 *   - HOSTS with ENDPOINTS_FROM_DNS (and Redis UNIX_PATH, a conninfo host
 *     list) are configuration errors naming the variables.
 * Every process stopped is resumed in the teardown, whatever happened. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
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

#define THREADS 4
#define N_CONSEC 3       /* OUTLIER_CONSECUTIVE_FAILURES */
#define BASE_EJECT_MS 400
#define MAX_EJECT_MS 1200
#define DEADLINE_MS 150

static void run_script(const char *var) {
  const char *script = need_env(var);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "'%s'", script);
  if (system(cmd) != 0) fail_msg("%s (%s) failed", var, script);
}

static pid_t pid_of(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s.pid", need_env("RESIL_TEST_TMPDIR"), name);
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("no pid file %s", path);
  long v = 0;
  if (fscanf(f, "%ld", &v) != 1) v = 0;
  fclose(f);
  if (v <= 1) fail_msg("bad pid in %s", path);
  return (pid_t)v;
}

/* ---- The three Redis servers ------------------------------------------------ */

static const char *const NAMES[3] = {"redis", "redis2", "redis3"};
static const char *ADDRS[3];
static pid_t PIDS[3];
static bool stopped[3];
static int PORT;

static void stop(int i) {
  assert_int_equal(kill(PIDS[i], SIGSTOP), 0);
  stopped[i] = true;
}

static void resume(int i) {
  if (stopped[i]) kill(PIDS[i], SIGCONT);
  stopped[i] = false;
}

static void redis_prepare(int i) {
  redisContext *c = redisConnectWithTimeout(ADDRS[i], PORT, (struct timeval){2, 0});
  if (!c || c->err) fail_msg("connect %s:%d: %s", ADDRS[i], PORT, c ? c->errstr : "oom");
  const char *cmds[] = {"REPLICAOF NO ONE", "SET resil:multi:key hello"};
  for (int k = 0; k < 2; k++) {
    redisReply *r = redisCommand(c, cmds[k]);
    if (!r || r->type == REDIS_REPLY_ERROR) fail_msg("%s on %s: %s", cmds[k], ADDRS[i], r ? r->str : c->errstr);
    freeReplyObject(r);
  }
  redisFree(c);
}

static int redis_setup(void **state) {
  (void)state;
  return 0;
}

static void redis_start_all(void) {
  run_script("RESIL_TEST_REDIS2_START");
  run_script("RESIL_TEST_REDIS3_START");
  PORT = need_port("RESIL_TEST_REDIS_PORT");
  ADDRS[0] = "127.0.0.1";
  ADDRS[1] = need_env("RESIL_TEST_REDIS2_ADDR");
  ADDRS[2] = need_env("RESIL_TEST_REDIS3_ADDR");
  for (int i = 0; i < 3; i++) {
    PIDS[i] = pid_of(NAMES[i]);
    redis_prepare(i);
  }
}

static int redis_teardown(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) resume(i);
  return 0;
}

/* Over the three servers: listed in HOSTS, or (dns_name not NULL) the
 * addresses dns_name resolves to (ENDPOINTS_FROM_DNS). */
static resil_redis *make_redis(const char *name, uint32_t max_percent, const char *dns_name) {
  char hosts[256];
  snprintf(hosts, sizeof hosts, "%s:%d,%s:%d,%s:%d", ADDRS[0], PORT, ADDRS[1], PORT, ADDRS[2],
           PORT);
  resil_redis_config rc;
  resil_redis_config_init(&rc, name);
  if (dns_name) {
    rc.host = dns_name;
    rc.port = (uint32_t)PORT;
    rc.endpoints_from_dns = true;
  } else {
    rc.hosts = hosts;
  }
  rc.connect_timeout_ms = DEADLINE_MS;
  rc.dep.timeout_ms = DEADLINE_MS;
  rc.dep.limit.max_concurrent = 64;
  rc.pool.max_size = 12;
  rc.pool.acquire_timeout_ms = DEADLINE_MS;
  rc.pool.validate_after_idle_ms = 60000;
  rc.outlier.consecutive_failures = N_CONSEC;
  rc.outlier.base_ejection_ms = BASE_EJECT_MS;
  rc.outlier.max_ejection_ms = MAX_EJECT_MS;
  rc.outlier.max_ejection_percent = max_percent;
  /* One failure the breaker counts opens it: so it stays closed only if it
   * counts none while an address is healthy (the rule in endpoint.h). */
  rc.dep.breaker.consecutive_failures = 1;
  resil_err err;
  resil_redis *r = resil_redis_new(&rc, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  return r;
}

/* ---- Load --------------------------------------------------------------------- */

typedef struct load {
  resil_redis *r;
  pthread_t t[THREADS];
  atomic_bool stop;
  _Atomic int phase;                 /* the readers count per phase */
  _Atomic uint64_t ok[4], fail[4];
} load;

static void *reader(void *arg) {
  load *l = arg;
  while (!atomic_load(&l->stop)) {
    int ph = atomic_load(&l->phase);
    redisReply *rep = NULL;
    resil_err err;
    resil_status st = resil_redis_command(l->r, resil_deadline_in_ms(DEADLINE_MS), 0, &rep, &err,
                                          "GET resil:multi:key");
    bool good = st == RESIL_OK && rep && rep->type == REDIS_REPLY_STRING &&
                strcmp(rep->str, "hello") == 0;
    if (rep) freeReplyObject(rep);
    atomic_fetch_add(good ? &l->ok[ph] : &l->fail[ph], 1);
  }
  return NULL;
}

static void load_start(load *l, resil_redis *r) {
  memset(l, 0, sizeof *l);
  l->r = r;
  for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&l->t[i], NULL, reader, l), 0);
}

static void load_stop(load *l) {
  atomic_store(&l->stop, true);
  for (int i = 0; i < THREADS; i++) pthread_join(l->t[i], NULL);
}

static void endpoint_stats(resil_redis *r, resil_endpoint_stats es[3]) {
  resil_endpoint_stats all[RESIL_ENDPOINTS_MAX];
  assert_int_equal(resil_pool_endpoint_stats(resil_redis_pool(r), all, RESIL_ENDPOINTS_MAX), 3);
  memcpy(es, all, 3 * sizeof *es);
}

static int ejected_count(resil_redis *r) {
  resil_endpoint_stats es[3];
  endpoint_stats(r, es);
  return es[0].ejected + es[1].ejected + es[2].ejected;
}

static resil_breaker_state breaker_state(resil_redis *r) {
  return resil_breaker_get_state(resil_dep_breaker(resil_redis_dep(r)));
}

/* Wait (sampling the ejection count, which must never pass `most`) until
 * cond holds, for at most ms. */
#define WAIT_SAMPLING(r, most, cond, ms)                                                 \
  __extension__({                                                                       \
    uint64_t until_ = test_now_ms() + (uint64_t)(ms) * test_build_mult();               \
    int ok_;                                                                            \
    while (!(ok_ = !!(cond)) && test_now_ms() < until_) {                               \
      int n_ = ejected_count(r);                                                        \
      if (n_ > (most)) fail_msg("%d addresses ejected at once (at most %d)", n_, most); \
      test_sleep_ms(2);                                                                 \
    }                                                                                   \
    ok_;                                                                                \
  })

/* The stats of server i's address in r's set (false if it is not in it).
 * From DNS the set's order is not the servers' order: found by address. */
static bool ep_of(resil_redis *r, int i, resil_endpoint_stats *out) {
  resil_endpoint_stats all[RESIL_ENDPOINTS_MAX];
  size_t n = resil_pool_endpoint_stats(resil_redis_pool(r), all, RESIL_ENDPOINTS_MAX);
  char want[64];
  snprintf(want, sizeof want, "%s:%d", ADDRS[i], PORT);
  for (size_t k = 0; k < n && k < RESIL_ENDPOINTS_MAX; k++)
    if (strcmp(all[k].endpoint, want) == 0) {
      if (out) *out = all[k];
      return true;
    }
  return false;
}

/* Each of the three has served more than `more` calls since `since`. */
static bool all_served(resil_redis *r, const uint64_t since[3], uint64_t more) {
  resil_endpoint_stats e;
  for (int i = 0; i < 3; i++)
    if (!ep_of(r, i, &e) || e.calls - e.failures <= since[i] + more) return false;
  return true;
}
static const uint64_t NONE[3] = {0, 0, 0};

/* Under l's load on r over the three servers: SIGSTOP server i (phase 1);
 * it is ejected within N consecutive failures (at most N + the calls in
 * flight on it); then (phase 2), for a few ejection periods (it comes
 * back on probation and is ejected again meanwhile), at most one address
 * is out, the breaker stays closed and >= 99 % of reads succeed; SIGCONT
 * (phase 3): re-admitted within its ejection time and serving again. */
static void stop_eject_resume(resil_redis *r, load *l, int i) {
  resil_endpoint_stats e;
  assert_true(ep_of(r, i, &e));
  assert_int_equal(e.failures, 0);
  atomic_store(&l->phase, 1);
  stop(i);
  uint64_t t_stop = test_now_ms();
  assert_true(WAIT_SAMPLING(r, 1, (ep_of(r, i, &e) && e.ejected), 5000));
  uint64_t t_ejected = test_now_ms();
  print_message("# %s ejected %llu ms after SIGSTOP, after %llu failures on it\n", ADDRS[i],
                (unsigned long long)(t_ejected - t_stop), (unsigned long long)e.failures);
  assert_true(e.failures >= N_CONSEC);
  assert_true(e.failures <= N_CONSEC + THREADS - 1);
  assert_int_equal(e.ejections, 1);
  atomic_store(&l->phase, 2);
  uint64_t until = test_now_ms() + 3 * MAX_EJECT_MS;
  while (test_now_ms() < until) {
    assert_true(ejected_count(r) <= 1);
    assert_int_equal(breaker_state(r), RESIL_BREAKER_CLOSED);
    test_sleep_ms(5);
  }
  assert_true(ep_of(r, i, &e));
  assert_true(e.ejections >= 2); /* re-ejected after coming back still stopped */
  uint64_t ok2 = atomic_load(&l->ok[2]), fail2 = atomic_load(&l->fail[2]);
  print_message("# after the ejection: %llu ok, %llu failed; ejections %llu\n",
                (unsigned long long)ok2, (unsigned long long)fail2,
                (unsigned long long)e.ejections);
  assert_true(ok2 > 200);
  assert_true(fail2 * 100 <= (ok2 + fail2) * 1); /* >= 99 % */
  uint64_t served_before = e.calls - e.failures;
  atomic_store(&l->phase, 3);
  resume(i);
  assert_true(WAIT_SAMPLING(
      r, 1, (ep_of(r, i, &e) && !e.ejected && e.calls - e.failures > served_before + 20),
      MAX_EJECT_MS + 3000));
}

/* ---- Tests ---------------------------------------------------------------------- */

static void one_stopped_of_three_is_ejected_and_readmitted(void **state) {
  (void)state;
  redis_start_all();
  resil_redis *r = make_redis("multi-redis", 50, NULL);
  load l;
  load_start(&l, r);
  assert_true(TEST_WAIT_UNTIL(all_served(r, NONE, 20), 5000)); /* warm: all have served */
  stop_eject_resume(r, &l, 2);
  load_stop(&l);
  assert_int_equal(breaker_state(r), RESIL_BREAKER_CLOSED);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_redis_dep(r), &ds);
  assert_int_equal(ds.breaker.transitions[RESIL_BREAKER_OPEN], 0);
  /* the dependency still counted what failed */
  assert_true(ds.calls[RESIL_OUTCOME_TIMEOUT] + ds.calls[RESIL_OUTCOME_FAILURE] >= N_CONSEC);
  assert_true(ds.pool.open <= ds.pool.max);
  resil_redis_free(r);
}

static void two_stopped_of_three_only_one_is_ejected(void **state) {
  (void)state;
  redis_start_all();
  resil_redis *r = make_redis("multi-redis-2", 50, NULL);
  load l;
  load_start(&l, r);
  resil_endpoint_stats es[3];
  assert_true(TEST_WAIT_UNTIL(all_served(r, NONE, 20), 5000)); /* warm: all have served */
  stop(1);
  stop(2);
  /* both keep failing: one is ejected, the other's ejection is skipped */
  assert_true(WAIT_SAMPLING(r, 1,
                            (endpoint_stats(r, es), es[1].ejected + es[2].ejected == 1 &&
                                                        es[1].ejections_skipped +
                                                                es[2].ejections_skipped >
                                                            0),
                            8000));
  uint64_t until = test_now_ms() + 2 * MAX_EJECT_MS;
  while (test_now_ms() < until) {
    assert_true(ejected_count(r) <= 1);
    assert_int_equal(breaker_state(r), RESIL_BREAKER_CLOSED); /* 127.0.0.1 is healthy */
    test_sleep_ms(5);
  }
  endpoint_stats(r, es);
  assert_false(es[0].ejected);
  resume(1);
  resume(2);
  load_stop(&l);
  resil_redis_free(r);
}

static void all_stopped_opens_the_breaker(void **state) {
  (void)state;
  redis_start_all();
  resil_redis *r = make_redis("multi-redis-all", 50, NULL);
  load l;
  load_start(&l, r);
  assert_true(TEST_WAIT_UNTIL(all_served(r, NONE, 20), 5000)); /* warm: all have served */
  for (int i = 0; i < 3; i++) stop(i);
  /* every call times out: once every address's last call failed the
   * failures count, and the breaker opens */
  assert_true(TEST_WAIT_UNTIL(breaker_state(r) == RESIL_BREAKER_OPEN, 10000));
  for (int i = 0; i < 3; i++) resume(i);
  load_stop(&l);
  resil_redis_free(r);
}

/* ---- PostgreSQL over two addresses ----------------------------------------------- */

static void pg2_stop(void) {
  pid_t pm = pid_of("pg2");
  kill(pm, SIGINT); /* fast shutdown: clients disconnected, new connects refused */
  assert_true(TEST_WAIT_UNTIL(kill(pm, 0) != 0, 10000));
}

/* Over the test server and pg2: listed in HOSTS, or (hosts NULL) the
 * addresses of the conninfo's host (ENDPOINTS_FROM_DNS). conninfo_head
 * goes before the database, user and password. */
static resil_pg *make_pg(const char *name, const char *conninfo_head, const char *hosts) {
  char conninfo[512];
  snprintf(conninfo, sizeof conninfo, "%s dbname=resil user=resil password=%s connect_timeout=5",
           conninfo_head, need_env("RESIL_TEST_PG_PASSWORD"));
  resil_pg_config pc;
  resil_pg_config_init(&pc, name);
  pc.conninfo = conninfo;
  pc.hosts = hosts;
  pc.endpoints_from_dns = !hosts;
  pc.connect_timeout_ms = 1000;
  pc.dep.timeout_ms = 2000;
  pc.pool.max_size = 4;
  pc.outlier.consecutive_failures = 2;
  pc.outlier.base_ejection_ms = 300;
  pc.outlier.max_ejection_ms = 600;
  pc.outlier.max_ejection_percent = 50;
  resil_err err;
  resil_pg *pg = resil_pg_new(&pc, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  return pg;
}

static void pg_two_addresses(void **state) {
  (void)state;
  run_script("RESIL_TEST_PG2_START");
  /* pg2 may have been left read-only by the failover test: reads only here */
  char hosts[128];
  int port = need_port("RESIL_TEST_PG_PORT");
  snprintf(hosts, sizeof hosts, "127.0.0.1:%d,%s:%d", port, need_env("RESIL_TEST_PG2_ADDR"), port);
  /* the conninfo's host and port are replaced by each address */
  resil_pg *pg = make_pg("multi-pg", "", hosts);
  resil_err err;
  int on[2] = {0, 0};
  for (int k = 0; k < 60; k++) {
    PGresult *res = NULL;
    assert_int_equal(resil_pg_query(pg, RESIL_DEADLINE_UNSET, 0,
                                    "SELECT host(inet_server_addr())", 0, NULL, &res, &err),
                     RESIL_OK);
    on[strcmp(resil_pg_value(res, 0, 0), "127.0.0.1") == 0 ? 0 : 1]++;
    PQclear(res);
  }
  print_message("# 127.0.0.1 served %d, pg2 %d\n", on[0], on[1]);
  assert_true(on[0] > 5 && on[1] > 5);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  assert_int_equal(resil_pool_endpoint_stats(resil_pg_pool(pg), es, RESIL_ENDPOINTS_MAX), 2);
  assert_int_equal(es[0].calls + es[1].calls, 60);
  pg2_stop();
  /* pg2 is refused (its pooled connections were closed by the shutdown):
   * at most 2 consecutive failures, then every call goes to 127.0.0.1 */
  int failed = 0;
  for (int k = 0; k < 100; k++) {
    PGresult *res = NULL;
    resil_status st = resil_pg_query(pg, RESIL_DEADLINE_UNSET, 0,
                                     "SELECT host(inet_server_addr())", 0, NULL, &res, &err);
    if (st != RESIL_OK) failed++;
    else assert_string_equal(resil_pg_value(res, 0, 0), "127.0.0.1");
    PQclear(res);
  }
  resil_pool_endpoint_stats(resil_pg_pool(pg), es, RESIL_ENDPOINTS_MAX);
  print_message("# pg2 stopped: %d calls failed; pg2 ejections %llu\n", failed,
                (unsigned long long)es[1].ejections);
  assert_true(es[1].ejections >= 1);
  assert_true(failed <= 2 * 2 + 2); /* the first ejection, and probation failures */
  assert_int_equal(resil_breaker_get_state(resil_dep_breaker(resil_pg_dep(pg))),
                   RESIL_BREAKER_CLOSED);
  run_script("RESIL_TEST_PG2_START");
  /* re-admitted: pg2 serves again within its ejection time (+ slack) */
  bool back = TEST_WAIT_UNTIL(
      ({
        PGresult *res = NULL;
        bool b = resil_pg_query(pg, RESIL_DEADLINE_UNSET, 0, "SELECT host(inet_server_addr())",
                                0, NULL, &res, &err) == RESIL_OK &&
                 strcmp(resil_pg_value(res, 0, 0), "127.0.0.1") != 0;
        PQclear(res);
        b;
      }),
      5000);
  assert_true(back);
  resil_pg_free(pg);
}

/* ---- Endpoints from DNS (ENDPOINTS_FROM_DNS) over a hosts file ------------------- */

/* resil_resolve_set_ttl_ms: the set follows the name when the cached
 * answer expires (resil/endpoint.h), so a change is seen within the TTL. */
#define DNS_TTL_MS 1000
#define REDIS_NAME "redis.resil-test"
#define PG_NAME "pg.resil-test"
static char dns_path[512];

/* Point name at addrs[0..n-1] (and nothing else in the file), atomically:
 * a new file renamed over the old one, as a config agent does. */
static void hosts_point(const char *name, const char *const *addrs, int n) {
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.new", dns_path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  for (int k = 0; k < n; k++) fprintf(f, "%s %s\n", addrs[k], name);
  assert_int_equal(fclose(f), 0);
  assert_int_equal(rename(tmp, dns_path), 0);
}

static int dns_setup(void **state) {
  (void)state;
  snprintf(dns_path, sizeof dns_path, "%s/multi-dns-hosts", need_env("RESIL_TEST_TMPDIR"));
  hosts_point("unused.resil-test", (const char *const[]){"127.0.0.1"}, 1);
  resil_err err;
  if (resil_resolve_set_hosts_file(dns_path, &err) != RESIL_OK) fail_msg("%s", err.msg);
  resil_resolve_set_ttl_ms(DNS_TTL_MS);
  return 0;
}

static int dns_teardown(void **state) {
  redis_teardown(state);
  resil_resolve_set_hosts_file(NULL, NULL);
  resil_resolve_set_ttl_ms(5000);
  unlink(dns_path);
  return 0;
}

/* "<prefix><number>" in server i's INFO <section> (connected_clients:,
 * cmdstat_get:calls=), 0 if absent. */
static unsigned long long redis_info(int i, const char *section, const char *prefix) {
  redisContext *c = redisConnectWithTimeout(ADDRS[i], PORT, (struct timeval){2, 0});
  if (!c || c->err) fail_msg("connect %s:%d: %s", ADDRS[i], PORT, c ? c->errstr : "oom");
  redisReply *rep = redisCommand(c, "INFO %s", section);
  if (!rep || rep->type != REDIS_REPLY_STRING) fail_msg("INFO %s on %s failed", section, ADDRS[i]);
  const char *at = strstr(rep->str, prefix);
  unsigned long long v = at ? strtoull(at + strlen(prefix), NULL, 10) : 0;
  freeReplyObject(rep);
  redisFree(c);
  return v;
}

/* Clients connected to server i, besides the one asking. */
static unsigned long long redis_clients(int i) {
  return redis_info(i, "clients", "connected_clients:") - 1;
}

/* Does the Prometheus text have a series of endpoint "<addr>:<port>"? */
static bool metrics_name(const char *addr, int port) {
  char *text = NULL, want[96];
  resil_err err;
  assert_int_equal(resil_export_prometheus(&text, NULL, &err), RESIL_OK);
  snprintf(want, sizeof want, "endpoint=\"%s:%d\"", addr, port);
  bool has = strstr(text, want) != NULL;
  free(text);
  return has;
}


/* The name resolves to the three servers (a hosts file, TTL 1 s): calls are
 * spread over all three; the file rewritten without one: within the TTL
 * (+ slack) it leaves the set and the metrics, its connections close and
 * it gets no call; written back: it serves again; one SIGSTOPped: ejected
 * as with HOSTS, reads keep succeeding. */
static void dns_redis_follows_the_name(void **state) {
  (void)state;
  redis_start_all();
  unsigned long long base3 = redis_clients(2);
  hosts_point(REDIS_NAME, ADDRS, 3);
  resil_redis *r = make_redis("multi-dns-redis", 50, REDIS_NAME);
  load l;
  load_start(&l, r);
  assert_true(TEST_WAIT_UNTIL(all_served(r, NONE, 20), 5000));
  resil_endpoints_dns_stats ds;
  assert_true(resil_pool_endpoints_dns_stats(resil_redis_pool(r), &ds));
  assert_int_equal(ds.addresses, 3);
  assert_true(metrics_name(ADDRS[2], PORT));
  /* drop 127.0.0.3 */
  hosts_point(REDIS_NAME, ADDRS, 2);
  uint64_t t0 = test_now_ms();
  assert_true(TEST_WAIT_UNTIL(!ep_of(r, 2, NULL), 10000));
  uint64_t took = test_now_ms() - t0;
  print_message("# 127.0.0.3 left the set %llu ms after the file changed (TTL %d)\n",
                (unsigned long long)took, DNS_TTL_MS);
  assert_true(took <= test_upper_ms(DNS_TTL_MS));
  assert_false(metrics_name(ADDRS[2], PORT));
  /* its connections close: idle ones at once, borrowed ones on release */
  assert_true(TEST_WAIT_UNTIL(redis_clients(2) == base3, DEADLINE_MS + test_slack_ms(DEADLINE_MS)));
  unsigned long long gets3 = redis_info(2, "commandstats", "cmdstat_get:calls=");
  resil_endpoint_stats e0, e1;
  assert_true(ep_of(r, 0, &e0) && ep_of(r, 1, &e1));
  uint64_t now_at[3] = {e0.calls - e0.failures, e1.calls - e1.failures, 0};
  assert_true(TEST_WAIT_UNTIL(ep_of(r, 0, &e0) && ep_of(r, 1, &e1) &&
                                  e0.calls - e0.failures > now_at[0] + 200 &&
                                  e1.calls - e1.failures > now_at[1] + 200,
                              5000));
  assert_int_equal(redis_info(2, "commandstats", "cmdstat_get:calls="), gets3); /* no call */
  assert_int_equal(redis_clients(2), base3);
  assert_true(resil_pool_endpoints_dns_stats(resil_redis_pool(r), &ds));
  assert_int_equal(ds.addresses, 2);
  assert_int_equal(ds.removed, 1);
  /* back: it serves again */
  hosts_point(REDIS_NAME, ADDRS, 3);
  t0 = test_now_ms();
  assert_true(TEST_WAIT_UNTIL(ep_of(r, 2, NULL), 10000));
  took = test_now_ms() - t0;
  print_message("# 127.0.0.3 back in the set %llu ms after the file changed\n",
                (unsigned long long)took);
  assert_true(took <= test_upper_ms(DNS_TTL_MS));
  assert_true(TEST_WAIT_UNTIL(all_served(r, NONE, 20), 5000));
  assert_true(redis_info(2, "commandstats", "cmdstat_get:calls=") > gets3);
  /* one stopped: ejected as with HOSTS */
  stop_eject_resume(r, &l, 1);
  load_stop(&l);
  assert_int_equal(breaker_state(r), RESIL_BREAKER_CLOSED);
  assert_true(resil_pool_endpoints_dns_stats(resil_redis_pool(r), &ds));
  assert_int_equal(ds.failures, 0);
  assert_false(ds.stale);
  assert_int_equal(ds.added, 4);
  resil_redis_free(r);
}

/* Which server answered: "127.0.0.1" or pg2's address (res NULL: failed). */
static bool pg_where(resil_pg *pg, char *out, size_t n) {
  PGresult *res = NULL;
  resil_err err;
  resil_status st = resil_pg_query(pg, RESIL_DEADLINE_UNSET, 0, "SELECT host(inet_server_addr())",
                                   0, NULL, &res, &err);
  if (st == RESIL_OK) snprintf(out, n, "%s", resil_pg_value(res, 0, 0));
  else print_message("# query failed: %s\n", err.msg);
  PQclear(res);
  return st == RESIL_OK;
}

/* PostgreSQL: the conninfo's host resolves to the test server and pg2;
 * calls go to both; pg2 dropped from the name: within the TTL every call
 * goes to 127.0.0.1; back: pg2 serves again. */
static void dns_pg_follows_the_name(void **state) {
  (void)state;
  run_script("RESIL_TEST_PG2_START");
  int port = need_port("RESIL_TEST_PG_PORT");
  const char *both[2] = {"127.0.0.1", need_env("RESIL_TEST_PG2_ADDR")};
  hosts_point(PG_NAME, both, 2);
  char head[128];
  snprintf(head, sizeof head, "host=" PG_NAME " port=%d", port);
  resil_pg *pg = make_pg("multi-dns-pg", head, NULL);
  int on[2] = {0, 0};
  char where[64];
  for (int k = 0; k < 60; k++) {
    assert_true(pg_where(pg, where, sizeof where));
    on[strcmp(where, "127.0.0.1") == 0 ? 0 : 1]++;
  }
  print_message("# 127.0.0.1 served %d, pg2 %d\n", on[0], on[1]);
  assert_true(on[0] > 5 && on[1] > 5);
  hosts_point(PG_NAME, both, 1);
  uint64_t t0 = test_now_ms();
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  assert_true(TEST_WAIT_UNTIL((pg_where(pg, where, sizeof where),
                               resil_pool_endpoint_stats(resil_pg_pool(pg), es, 2) == 1),
                              10000));
  uint64_t took = test_now_ms() - t0;
  print_message("# pg2 left the set %llu ms after the file changed\n", (unsigned long long)took);
  assert_true(took <= test_upper_ms(DNS_TTL_MS));
  for (int k = 0; k < 40; k++) {
    assert_true(pg_where(pg, where, sizeof where));
    assert_string_equal(where, "127.0.0.1");
  }
  hosts_point(PG_NAME, both, 2);
  assert_true(TEST_WAIT_UNTIL(pg_where(pg, where, sizeof where) && strcmp(where, both[1]) == 0,
                              test_upper_ms(DNS_TTL_MS) + 2000));
  resil_pg_free(pg);
}

/* A host list that is malformed, has a duplicate or is empty is a
 * configuration error naming the variable (no server needed). */
static void bad_host_lists_are_config_errors_naming_the_variable(void **state) {
  (void)state;
  resil_redis_register_kind(NULL);
  resil_pg_register_kind(NULL);
  struct {
    const char *redis, *pg, *want_redis, *want_pg;
  } cases[] = {
      {"RESIL_DEP_CACHE_HOSTS=a:1,b:x", "RESIL_DEP_DB_HOSTS=a:1,,b:2",
       "RESIL_DEP_CACHE_HOSTS: entry 2 'b:x': port is not a number 1..65535",
       "RESIL_DEP_DB_HOSTS: entry 2 is empty"},
      {"RESIL_DEP_CACHE_HOSTS=10.0.0.5:6379,10.0.0.5:6379", "RESIL_DEP_DB_HOSTS=Db:5432,db",
       "RESIL_DEP_CACHE_HOSTS: '10.0.0.5:6379' is listed twice",
       "RESIL_DEP_DB_HOSTS: 'db:5432' is listed twice"},
      {"RESIL_DEP_CACHE_HOSTS=", "RESIL_DEP_DB_HOSTS= ", "RESIL_DEP_CACHE_HOSTS: is empty",
       "RESIL_DEP_DB_HOSTS: is empty"},
      {"RESIL_DEP_CACHE_OUTLIER_MAX_EJECTION_PERCENT=101", "RESIL_DEP_DB_OUTLIER_BASE_EJECTION_MS=0",
       NULL, NULL},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg",
                   (char *)"RESIL_DEP_DB_CONNINFO=dbname=x user=x", (char *)cases[k].redis,
                   (char *)cases[k].pg, k == 3 ? (char *)"RESIL_DEP_CACHE_HOSTS=a:1,b:2" : NULL,
                   k == 3 ? (char *)"RESIL_DEP_DB_HOSTS=a:1,b:2" : NULL, NULL};
    resil_config *c = NULL;
    char *report = NULL;
    resil_err err;
    assert_int_equal(resil_config_load(env, NULL, &c, &report, &err), RESIL_E_INVALID);
    assert_non_null(report);
    const char *w1 = cases[k].want_redis ? cases[k].want_redis
                                         : "RESIL_DEP_CACHE_OUTLIER_MAX_EJECTION_PERCENT: 101";
    const char *w2 = cases[k].want_pg ? cases[k].want_pg
                                      : "RESIL_DEP_DB_OUTLIER_BASE_EJECTION_MS: 0";
    if (!strstr(report, w1) || !strstr(report, w2))
      fail_msg("case %zu: report lacks '%s' or '%s':\n%s", k, w1, w2, report);
    free(report);
  }
}

/* ENDPOINTS_FROM_DNS with HOSTS is a configuration error naming both
 * variables (Redis and PostgreSQL); with Redis UNIX_PATH, or a PostgreSQL
 * conninfo without one TCP host, one naming ENDPOINTS_FROM_DNS. */
static void endpoints_from_dns_conflicts_are_config_errors(void **state) {
  (void)state;
  resil_redis_register_kind(NULL);
  resil_pg_register_kind(NULL);
  struct {
    const char *env[5];
    const char *want[4];
  } cases[] = {
      {{"RESIL_DEP_CACHE_HOSTS=a:1,b:2", "RESIL_DEP_CACHE_ENDPOINTS_FROM_DNS=true",
        "RESIL_DEP_DB_HOSTS=a:1,b:2", "RESIL_DEP_DB_ENDPOINTS_FROM_DNS=true",
        "RESIL_DEP_DB_CONNINFO=host=db dbname=x user=x"},
       {"RESIL_DEP_CACHE_HOSTS: set together with endpoints_from_dns",
        "RESIL_DEP_CACHE_ENDPOINTS_FROM_DNS: set together with hosts",
        "RESIL_DEP_DB_HOSTS: set together with endpoints_from_dns",
        "RESIL_DEP_DB_ENDPOINTS_FROM_DNS: set together with hosts"}},
      {{"RESIL_DEP_CACHE_UNIX_PATH=/tmp/x.sock", "RESIL_DEP_CACHE_ENDPOINTS_FROM_DNS=true",
        "RESIL_DEP_DB_CONNINFO=host=a,b dbname=x user=x", "RESIL_DEP_DB_ENDPOINTS_FROM_DNS=true"},
       {"RESIL_DEP_CACHE_ENDPOINTS_FROM_DNS: set together with unix_path",
        "RESIL_DEP_DB_CONNINFO: endpoints_from_dns needs one host in the conninfo, not a list",
        "RESIL_DEP_CACHE_ENDPOINTS_FROM_DNS", "RESIL_DEP_DB_CONNINFO"}},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg", (char *)cases[k].env[0],
                   (char *)cases[k].env[1],         (char *)cases[k].env[2],
                   (char *)cases[k].env[3],         (char *)cases[k].env[4],
                   NULL};
    resil_config *c = NULL;
    char *report = NULL;
    resil_err err;
    assert_int_equal(resil_config_load(env, NULL, &c, &report, &err), RESIL_E_INVALID);
    assert_non_null(report);
    for (int w = 0; w < 4; w++)
      if (!strstr(report, cases[k].want[w]))
        fail_msg("case %zu: report lacks '%s':\n%s", k, cases[k].want[w], report);
    free(report);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(one_stopped_of_three_is_ejected_and_readmitted,
                                      redis_setup, redis_teardown),
      cmocka_unit_test_setup_teardown(two_stopped_of_three_only_one_is_ejected, redis_setup,
                                      redis_teardown),
      cmocka_unit_test_setup_teardown(all_stopped_opens_the_breaker, redis_setup,
                                      redis_teardown),
      cmocka_unit_test(pg_two_addresses),
      cmocka_unit_test(bad_host_lists_are_config_errors_naming_the_variable),
      cmocka_unit_test(endpoints_from_dns_conflicts_are_config_errors),
      cmocka_unit_test_setup_teardown(dns_redis_follows_the_name, dns_setup, dns_teardown),
      cmocka_unit_test_setup_teardown(dns_pg_follows_the_name, dns_setup, dns_teardown),
  };
  return cmocka_run_group_tests_name("multi_endpoint", tests, NULL, NULL);
}
