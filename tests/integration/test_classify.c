/* Whose fault is it? How each adapter classifies what ends a call, against
 * the REAL Redis and PostgreSQL that scripts/test.sh starts, testhttpd
 * (RESIL_TESTHTTPD, set by meson) and a raw HTTP peer of the test's own;
 * slowness is injected by the loopback fault proxy. The rule is in
 * resil/status.h:
 *
 *  - the deadline running out while resil works with the dependency - its
 *    handshake (Redis AUTH, PostgreSQL start-up, TLS) or the validation of
 *    an idle connection included - is RESIL_E_TIMEOUT, counted by the
 *    breaker, so THRESHOLD such calls open it;
 *  - running out of a local resource (no file descriptor left) is
 *    RESIL_E_SYSTEM and never touches the breaker;
 *  - a peer sending a header line curl refuses to hold is RESIL_E_FAILURE,
 *    not an out-of-memory.
 *
 * The fd-exhaustion case runs in a forked child (setrlimit there only) and
 * comes first, before this process has any thread of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

#include <curl/curl.h> /* CURL_MAX_HTTP_HEADER */

#include "faultproxy.h"
#include "http/procs.h"
#include "resil/http.h"
#include "resil/pg.h"
#include "resil/redis.h"
#include "resil/testing.h" /* test hooks */
#include "testutil.h"

#define DEADLINE_MS 300
#define THRESHOLD 3     /* breaker.consecutive_failures */
#define OPEN_MS 60000   /* the breaker stays open for the rest of a test */
#define SLOW_MS 1000    /* FP_DELAY: far past the deadline */
#define TIMEOUT_MIN_MS 250

/* A call returns by its deadline + this (sanitizers slow everything). */
static int64_t slack_ms(void) {
  const char *b = test_env("RESIL_TEST_BUILD");
  return b && strcmp(b, "plain") != 0 ? 300 : 100;
}

/* Set in the fd-exhaustion child: a failure there must end the child, not
 * run cmocka's remaining tests in it. */
static bool in_child;

#define SETUP_FAIL(...)                      \
  do {                                       \
    if (in_child) {                          \
      fprintf(stderr, __VA_ARGS__);          \
      _exit(3);                              \
    }                                        \
    fail_msg(__VA_ARGS__);                   \
  } while (0)

static void common_dep(resil_dep_config *d) {
  d->timeout_ms = DEADLINE_MS;
  d->breaker.consecutive_failures = THRESHOLD;
  d->breaker.failure_rate_percent = 0;
  d->breaker.slow_call_rate_percent = 0;
  d->breaker.open_ms = OPEN_MS;
  d->breaker.open_max_ms = OPEN_MS;
  d->breaker.open_jitter_percent = 0;
  d->retry.max_attempts = 1;
}

static void common_pool(resil_pool_config *p) {
  p->max_size = THRESHOLD;
  p->housekeeping_ms = 0; /* no background connects */
}

static resil_dep_stats dep_stats(resil_dep *d) {
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  return s;
}

/* One call of an adapter under deadline dl. */
typedef resil_status (*call_fn)(void *cl, resil_deadline dl, resil_err *err);

/* THRESHOLD calls each return `want` within the deadline (+ slack) with a
 * message containing `phrase`; each is counted as `outcome`; the breaker
 * opens on the last one and the next call is rejected locally. */
static void expect_trip(const char *what, void *cl, resil_dep *dep, call_fn call,
                        resil_status want, resil_outcome outcome, const char *phrase) {
  resil_dep_stats d0 = dep_stats(dep);
  for (unsigned i = 0; i < THRESHOLD; i++) {
    resil_err err = {0};
    test_sched_watch watch;
    test_sched_watch_start(&watch);
    uint64_t t0 = test_now_us();
    resil_status st = call(cl, resil_deadline_in_ms(DEADLINE_MS), &err);
    int64_t took_ms = (int64_t)(test_now_us() - t0) / 1000;
    int64_t sched_ms = test_sched_watch_stop(&watch);
    print_message("# %s call %u: %s in %lld ms: %s\n", what, i + 1, resil_status_name(st),
                  (long long)took_ms, err.msg);
    if (st != want)
      fail_msg("%s call %u: expected %s, got %s (%s)", what, i + 1, resil_status_name(want),
               resil_status_name(st), err.msg);
    if (phrase && !strstr(err.msg, phrase))
      fail_msg("%s call %u: message '%s' does not say '%s'", what, i + 1, err.msg, phrase);
    if (took_ms > DEADLINE_MS + slack_ms() + sched_ms) /* + the machine's own delay */
      fail_msg("%s call %u: took %lld ms (deadline %d ms, machine's scheduling delay %lld ms)",
               what, i + 1, (long long)took_ms, DEADLINE_MS, (long long)sched_ms);
    if (want == RESIL_E_TIMEOUT && took_ms < TIMEOUT_MIN_MS)
      fail_msg("%s call %u: a timeout after only %lld ms", what, i + 1, (long long)took_ms);
    resil_dep_stats d = dep_stats(dep);
    assert_int_equal(d.calls[outcome] - d0.calls[outcome], i + 1);
    assert_int_equal(d.rejected_after_admit, d0.rejected_after_admit); /* not a rejection */
    assert_int_equal(d.calls[RESIL_OUTCOME_IGNORED], d0.calls[RESIL_OUTCOME_IGNORED]);
    if (i + 1 < THRESHOLD) assert_int_equal(d.breaker.state, RESIL_BREAKER_CLOSED);
  }
  resil_dep_stats d = dep_stats(dep);
  if (d.breaker.state != RESIL_BREAKER_OPEN)
    fail_msg("%s: breaker %s after %u %s", what, resil_breaker_state_name(d.breaker.state),
             THRESHOLD, resil_status_name(want));
  resil_err err = {0};
  assert_int_equal(call(cl, resil_deadline_in_ms(DEADLINE_MS), &err), RESIL_E_BREAKER_OPEN);
}

/* ---- Clients ------------------------------------------------------------ */

static resil_status redis_ping(void *cl, resil_deadline dl, resil_err *err) {
  redisReply *r = NULL;
  resil_status st = resil_redis_command(cl, dl, 0, &r, err, "PING");
  if (st == RESIL_OK && (!r || r->type != REDIS_REPLY_STATUS)) st = RESIL_E_INVALID;
  if (r) freeReplyObject(r);
  return st;
}

static resil_redis *redis_client(const char *name, const char *host, uint16_t port,
                                 const char *password, uint32_t database,
                                 void (*tweak)(resil_redis_config *)) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.host = host;
  cfg.port = port;
  cfg.password = password;
  cfg.database = database;
  cfg.connect_timeout_ms = 2000; /* the deadline is the bound */
  if (tweak) tweak(&cfg);
  resil_err err = {0};
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) SETUP_FAIL("resil_redis_new(%s): %s", name, err.msg);
  return r;
}

static resil_status pg_select(void *cl, resil_deadline dl, resil_err *err) {
  PGresult *res = NULL;
  resil_status st = resil_pg_query(cl, dl, 0, "SELECT 41 + 1", 0, NULL, &res, err);
  if (st == RESIL_OK && strcmp(resil_pg_value(res, 0, 0), "42") != 0) st = RESIL_E_INVALID;
  PQclear(res);
  return st;
}

static resil_pg *pg_client(const char *name, uint16_t port, void (*tweak)(resil_pg_config *)) {
  char ci[2048];
  const char *base = test_env("RESIL_TEST_PG_CONNINFO");
  if (!base) SETUP_FAIL("RESIL_TEST_PG_CONNINFO is not set");
  snprintf(ci, sizeof ci, "%s port=%u", base, (unsigned)port);
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.conninfo = ci;
  cfg.connect_timeout_ms = 2000;
  cfg.cancel_timeout_ms = 100;
  if (tweak) tweak(&cfg);
  resil_err err = {0};
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) SETUP_FAIL("resil_pg_new(%s): %s", name, err.msg);
  return pg;
}

static resil_status http_fast(void *cl, resil_deadline dl, resil_err *err) {
  resil_http_response r;
  resil_status st = resil_http_get(cl, dl, "/fast", &r, err);
  resil_http_response_free(&r);
  return st;
}

static resil_http *http_client(const char *name, const char *url) {
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.base_url = url;
  cfg.connect_timeout_ms = 2000;
  cfg.request_timeout_ms = 2000;
  cfg.tls_verify = false; /* the handshake never gets as far as a certificate */
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) SETUP_FAIL("resil_http_new(%s): %s", name, err.msg);
  return h;
}

static child httpd;
static uint16_t httpd_port;

static uint16_t need_httpd(void) {
  if (!httpd_port) fail_msg("testhttpd did not start (RESIL_TESTHTTPD)");
  return httpd_port;
}

static fp_proxy *proxy_to(uint16_t port) {
  fp_proxy *fp = fp_start("127.0.0.1", port);
  if (!fp) fail_msg("fp_start(127.0.0.1:%u): %s", (unsigned)port, strerror(errno));
  return fp;
}

/* ---- Local resource exhaustion ------------------------------------------ */

/* In a child: a Redis, a Redis by host name, a PostgreSQL and an HTTP
 * client against the real servers; RLIMIT_NOFILE 64 and every fd taken;
 * then THRESHOLD + 2 calls each must be RESIL_E_SYSTEM naming the fd limit,
 * counted as neither failure nor timeout, the breaker closed; with the fds
 * given back, the next call succeeds. Writes "ok" or the first problem. */
static int fd_child(int out, uint16_t rport, uint16_t pport, uint16_t hport) {
  char msg[1024] = "ok";
  struct rlimit rl = {64, 64};
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    snprintf(msg, sizeof msg, "setrlimit: %s", strerror(errno));
    goto done;
  }
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)hport);
  struct {
    const char *what;
    void *cl;
    resil_dep *dep;
    call_fn call;
  } c[4];
  c[0].what = "redis";
  c[0].cl = redis_client("fd-redis", "127.0.0.1", rport, NULL, 0, NULL);
  c[0].dep = resil_redis_dep(c[0].cl);
  c[0].call = redis_ping;
  c[1].what = "redis by name";
  c[1].cl = redis_client("fd-redis-name", "localhost", rport, NULL, 0, NULL);
  c[1].dep = resil_redis_dep(c[1].cl);
  c[1].call = redis_ping;
  c[2].what = "pg";
  c[2].cl = pg_client("fd-pg", pport, NULL);
  c[2].dep = resil_pg_dep(c[2].cl);
  c[2].call = pg_select;
  c[3].what = "http";
  c[3].cl = http_client("fd-http", url);
  c[3].dep = resil_http_dep(c[3].cl);
  c[3].call = http_fast;

  int taken[64], ntaken = 0, fd;
  while ((fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0) {
    if (ntaken == 64) {
      snprintf(msg, sizeof msg, "RLIMIT_NOFILE 64 did not hold");
      goto done;
    }
    taken[ntaken++] = fd;
  }
  if (errno != EMFILE) {
    snprintf(msg, sizeof msg, "exhausting fds: %s, not EMFILE", strerror(errno));
    goto done;
  }
  for (int k = 0; k < 4; k++) {
    for (int i = 0; i < THRESHOLD + 2; i++) {
      resil_err err = {0};
      resil_status st = c[k].call(c[k].cl, resil_deadline_in_ms(DEADLINE_MS), &err);
      if (i == 0) fprintf(stderr, "# %s with no fd left: %s: %s\n", c[k].what,
                          resil_status_name(st), err.msg);
      if (st != RESIL_E_SYSTEM) {
        snprintf(msg, sizeof msg, "%s call %d: expected system, got %s (%s)", c[k].what, i + 1,
                 resil_status_name(st), err.msg);
        goto done;
      }
      if (!strstr(err.msg, "Too many open files") || !strstr(err.msg, "local")) {
        snprintf(msg, sizeof msg, "%s: message does not name the local fd limit: %s",
                 c[k].what, err.msg);
        goto done;
      }
    }
    resil_dep_stats s = dep_stats(c[k].dep);
    if (s.breaker.state != RESIL_BREAKER_CLOSED || s.breaker.consecutive_failures != 0 ||
        s.calls[RESIL_OUTCOME_FAILURE] || s.calls[RESIL_OUTCOME_TIMEOUT] ||
        s.calls[RESIL_OUTCOME_IGNORED] != THRESHOLD + 2) {
      snprintf(msg, sizeof msg,
               "%s: breaker %s, %u consecutive failures, %llu failures, %llu timeouts, "
               "%llu ignored",
               c[k].what, resil_breaker_state_name(s.breaker.state),
               s.breaker.consecutive_failures,
               (unsigned long long)s.calls[RESIL_OUTCOME_FAILURE],
               (unsigned long long)s.calls[RESIL_OUTCOME_TIMEOUT],
               (unsigned long long)s.calls[RESIL_OUTCOME_IGNORED]);
      goto done;
    }
  }
  for (int i = 0; i < ntaken; i++) close(taken[i]);
  for (int k = 0; k < 4; k++) {
    resil_err err = {0};
    resil_status st = c[k].call(c[k].cl, resil_deadline_in_ms(2000), &err);
    if (st != RESIL_OK) {
      snprintf(msg, sizeof msg, "%s with fds back: %s (%s)", c[k].what, resil_status_name(st),
               err.msg);
      goto done;
    }
  }
  resil_redis_free(c[0].cl);
  resil_redis_free(c[1].cl);
  resil_pg_free(c[2].cl);
  resil_http_free(c[3].cl);
done:;
  ssize_t w = write(out, msg, strlen(msg));
  (void)w;
  return strcmp(msg, "ok") == 0 ? 0 : 1;
}

static void fd_exhaustion_is_local_and_never_trips_the_breaker(void **state) {
  (void)state;
  uint16_t rport = need_port("RESIL_TEST_REDIS_PORT");
  uint16_t pport = need_port("RESIL_TEST_PG_PORT");
  uint16_t hport = need_httpd();
  int p[2];
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    in_child = true;
    close(p[0]);
    _exit(fd_child(p[1], rport, pport, hport));
  }
  close(p[1]);
  char msg[1024] = "";
  size_t len = 0;
  uint64_t until = test_now_us() + 30000000u; /* 30 s: generous for ASan/TSan */
  for (;;) {
    int left = (int)((int64_t)(until - test_now_us()) / 1000);
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    if (left <= 0 || poll(&pf, 1, left) <= 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      close(p[0]);
      fail_msg("the fd-exhaustion child did not finish in 30 s");
    }
    ssize_t n = read(p[0], msg + len, sizeof msg - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
  }
  msg[len] = '\0';
  close(p[0]);
  int ws = 0;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || strcmp(msg, "ok") != 0)
    fail_msg("fd-exhaustion child (status 0x%x): %s", ws, msg[0] ? msg : "(no report)");
}

/* ---- Slow handshakes: a timeout, counted ------------------------------- */

/* Redis with AUTH and SELECT: the proxy holds every reply for SLOW_MS, so
 * each connect stalls in the handshake until the deadline. */
static void redis_slow_auth_handshake_times_out_and_trips(void **state) {
  (void)state;
  uint16_t port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  const char *pw = need_env("RESIL_TEST_REDIS_PASSWORD");
  fp_proxy *fp = proxy_to(port);
  /* Through the proxy, AUTH and SELECT work. */
  resil_redis *r = redis_client("slow-auth-ok", "127.0.0.1", fp_port(fp), pw, 1, NULL);
  resil_err err = {0};
  if (redis_ping(r, resil_deadline_in_ms(2000), &err) != RESIL_OK) fail_msg("%s", err.msg);
  resil_redis_free(r);
  r = redis_client("slow-auth", "127.0.0.1", fp_port(fp), pw, 1, NULL);
  fp_set_mode(fp, FP_DELAY, SLOW_MS);
  expect_trip("redis slow auth", r, resil_redis_dep(r), redis_ping, RESIL_E_TIMEOUT,
              RESIL_OUTCOME_TIMEOUT, "auth: timed out");
  resil_redis_free(r);
  fp_stop(fp);
}

/* PostgreSQL start-up (SSL request, SCRAM exchange, parameters) through a
 * link throttled to 200 bytes/s: some of it arrives, not all in time. */
static void pg_slow_startup_times_out_and_trips(void **state) {
  (void)state;
  fp_proxy *fp = proxy_to(need_port("RESIL_TEST_PG_PORT"));
  fp_set_mode(fp, FP_THROTTLE, 200);
  resil_pg *pg = pg_client("slow-startup", fp_port(fp), NULL);
  expect_trip("pg slow start-up", pg, resil_pg_dep(pg), pg_select, RESIL_E_TIMEOUT,
              RESIL_OUTCOME_TIMEOUT, "timed out");
  resil_pg_stats s;
  resil_pg_get_stats(pg, &s);
  assert_int_equal(s.connects_timed_out, THRESHOLD);
  assert_int_equal(s.connects_ok, 0);
  assert_true(fp_bytes_to_client(fp) > 0); /* the server did start answering */
  resil_pg_free(pg);
  fp_set_mode(fp, FP_PASS, 0);
  fp_stop(fp);
}

/* HTTPS: the TCP connect succeeds (the proxy accepts) but the proxy holds
 * the ClientHello (and whatever comes back), so curl is stuck in the TLS
 * handshake at the deadline. (curl 7.88 counts the handshake as part of
 * its connect and says "Connection timed out".) */
static void http_slow_tls_handshake_times_out_and_trips(void **state) {
  (void)state;
  fp_proxy *fp = proxy_to(need_httpd());
  fp_set_mode(fp, FP_DELAY, SLOW_MS);
  char url[64];
  snprintf(url, sizeof url, "https://127.0.0.1:%u", (unsigned)fp_port(fp));
  resil_http *h = http_client("slow-tls", url);
  expect_trip("https slow handshake", h, resil_http_dep(h), http_fast, RESIL_E_TIMEOUT,
              RESIL_OUTCOME_TIMEOUT, "timed out");
  assert_int_equal(fp_accepted(fp), THRESHOLD); /* each got past TCP into the handshake */
  resil_http_free(h);
  fp_stop(fp);
}

/* ---- A handshake that ends exactly as the deadline runs out ----------- */

/* The case CI met by chance (pg_throttle: "deadline passed before
 * sending"): the start-up through the dependency finishes, and the
 * deadline is gone before the query can be sent. To make it certain, the
 * process clock jumps 10 s forward right after the connect succeeded (the
 * first clock read after resil_pg's connects_ok grows): the start-up itself
 * is real, against the real server. */
static _Atomic(resil_pg *) jump_pg;
static _Atomic uint64_t jump_ns;

static uint64_t jumping_clock(void *ctx) {
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  resil_pg *pg = atomic_load(&jump_pg);
  if (pg) {
    resil_pg_stats s;
    resil_pg_get_stats(pg, &s); /* atomics only: no lock, no clock */
    resil_pg *expected = pg;
    if (s.connects_ok > 0 && atomic_compare_exchange_strong(&jump_pg, &expected, NULL))
      atomic_fetch_add(&jump_ns, 10000000000ull);
  }
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + atomic_load(&jump_ns);
}

static void pg_startup_that_ends_at_the_deadline_is_a_timeout(void **state) {
  (void)state;
  uint16_t port = need_port("RESIL_TEST_PG_PORT");
  atomic_store(&jump_ns, 0);
  resil_clock_set(jumping_clock, NULL);
  resil_pg *pg = pg_client("startup-at-deadline", port, NULL);
  atomic_store(&jump_pg, pg);
  resil_err err = {0};
  resil_status st = pg_select(pg, resil_deadline_in_ms(DEADLINE_MS), &err);
  print_message("# connect used the whole deadline: %s: %s\n", resil_status_name(st), err.msg);
  resil_dep_stats d = dep_stats(resil_pg_dep(pg));
  resil_pg_stats s;
  resil_pg_get_stats(pg, &s);
  assert_null(atomic_load(&jump_pg)); /* the clock did jump */
  assert_int_equal(s.connects_ok, 1);
  if (st != RESIL_E_TIMEOUT)
    fail_msg("expected timeout, got %s (%s)", resil_status_name(st), err.msg);
  assert_non_null(strstr(err.msg, "nothing was sent"));
  assert_int_equal(d.calls[RESIL_OUTCOME_TIMEOUT], 1);
  assert_int_equal(d.rejections[RESIL_REJECT_DEADLINE], 0);
  assert_int_equal(d.breaker.consecutive_failures, 1);
  /* The connection itself was fine: kept, and the next call uses it. */
  assert_int_equal(pg_select(pg, resil_deadline_in_ms(2000), &err), RESIL_OK);
  resil_pg_get_stats(pg, &s);
  assert_int_equal(s.connects_ok, 1);
  resil_pg_free(pg);
  resil_clock_set(NULL, NULL);
}

/* ---- Validation that uses the whole deadline --------------------------- */

/* THRESHOLD idle connections, each validated on borrow (validate_after_idle
 * 0, validate_timeout above the deadline); the dependency then answers
 * SLOW_MS late, so each call's validation takes the whole deadline. */
static void redis_validating(resil_redis_config *c) {
  c->pool.min_idle = THRESHOLD;
  c->pool.validate_after_idle_ms = 0;
  c->pool.validate_timeout_ms = 5000;
}

static void redis_validation_that_spends_the_deadline_trips(void **state) {
  (void)state;
  fp_proxy *fp = proxy_to(need_port("RESIL_TEST_REDIS_PORT"));
  resil_redis *r =
      redis_client("slow-validate", "127.0.0.1", fp_port(fp), NULL, 0, redis_validating);
  resil_err err = {0};
  assert_int_equal(resil_pool_prewarm(resil_redis_pool(r), resil_deadline_in_ms(3000), &err),
                   RESIL_OK);
  fp_set_mode(fp, FP_DELAY, SLOW_MS);
  expect_trip("redis slow validation", r, resil_redis_dep(r), redis_ping, RESIL_E_TIMEOUT,
              RESIL_OUTCOME_TIMEOUT, "validating connections used the whole deadline");
  resil_pool_stats ps;
  resil_pool_get_stats(resil_redis_pool(r), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_VALIDATION], THRESHOLD);
  assert_int_equal(ps.acquire_timeouts, 0);
  resil_redis_free(r);
  fp_stop(fp);
}

static void pg_validating(resil_pg_config *c) {
  c->pool.min_idle = THRESHOLD;
  c->pool.validate_after_idle_ms = 0;
  c->pool.validate_timeout_ms = 5000;
}

static void pg_validation_that_spends_the_deadline_trips(void **state) {
  (void)state;
  fp_proxy *fp = proxy_to(need_port("RESIL_TEST_PG_PORT"));
  resil_pg *pg = pg_client("slow-validate-pg", fp_port(fp), pg_validating);
  resil_err err = {0};
  assert_int_equal(resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(5000), &err),
                   RESIL_OK);
  fp_set_mode(fp, FP_DELAY, SLOW_MS);
  expect_trip("pg slow validation", pg, resil_pg_dep(pg), pg_select, RESIL_E_TIMEOUT,
              RESIL_OUTCOME_TIMEOUT, "validating connections used the whole deadline");
  resil_pool_stats ps;
  resil_pool_get_stats(resil_pg_pool(pg), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_VALIDATION], THRESHOLD);
  assert_int_equal(ps.acquire_timeouts, 0);
  fp_set_mode(fp, FP_PASS, 0); /* let the reaper's cancels through */
  resil_pg_free(pg);
  fp_stop(fp);
}

/* ---- A header line curl will not hold ----------------------------------- */

/* A raw HTTP peer: answers every request on its listener with a header
 * line of `line` bytes, then a 2-byte body. */
typedef struct header_peer {
  int lfd;
  size_t line;
  int served;
} header_peer;

static void *header_peer_main(void *arg) {
  header_peer *hp = arg;
  size_t cap = hp->line + 256;
  char *resp = malloc(cap);
  if (!resp) return NULL;
  size_t len = (size_t)snprintf(resp, cap, "HTTP/1.1 200 OK\r\nX-Huge: ");
  memset(resp + len, 'h', hp->line);
  len += hp->line;
  len += (size_t)snprintf(resp + len, cap - len, "\r\nContent-Length: 2\r\n\r\nok");
  for (;;) {
    int fd = accept(hp->lfd, NULL, NULL);
    if (fd < 0) break;
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) {
      ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
      if (n <= 0) break;
      got += (size_t)n;
      buf[got] = '\0';
      if (strstr(buf, "\r\n\r\n")) break;
    }
    for (size_t off = 0; off < len;) {
      ssize_t w = send(fd, resp + off, len - off, MSG_NOSIGNAL);
      if (w <= 0) break;
      off += (size_t)w;
    }
    hp->served++;
    close(fd);
  }
  free(resp);
  return NULL;
}

static uint16_t header_peer_start(header_peer *hp, pthread_t *th, size_t line) {
  hp->line = line;
  hp->served = 0;
  hp->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(hp->lfd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  assert_int_equal(bind(hp->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(hp->lfd, (struct sockaddr *)&a, &alen), 0);
  assert_int_equal(listen(hp->lfd, 8), 0);
  assert_int_equal(pthread_create(th, NULL, header_peer_main, hp), 0);
  return ntohs(a.sin_port);
}

static void header_peer_stop(header_peer *hp, pthread_t th) {
  shutdown(hp->lfd, SHUT_RDWR); /* accept() returns */
  pthread_join(th, NULL);
  close(hp->lfd);
}

static resil_status http_any(void *cl, resil_deadline dl, resil_err *err) {
  resil_http_response r;
  resil_status st = resil_http_get(cl, dl, "/", &r, err);
  if (st != RESIL_OK && st != RESIL_E_BREAKER_OPEN &&
      (r.phase != RESIL_HTTP_PHASE_RECEIVE || r.status != 0 || r.nheaders != 0))
    st = RESIL_E_INVALID; /* a refused response leaves nothing behind */
  resil_http_response_free(&r);
  return st;
}

static void http_oversized_header_line_is_a_dependency_failure(void **state) {
  (void)state;
  char url[64];
  header_peer hp;
  pthread_t th;
  /* Under curl's limit: an ordinary response. */
  snprintf(url, sizeof url, "http://127.0.0.1:%u",
           (unsigned)header_peer_start(&hp, &th, CURL_MAX_HTTP_HEADER - 1024));
  resil_http *h = http_client("big-header-ok", url);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/", &r, &err), RESIL_OK);
  assert_int_equal(strlen(resil_http_response_header(&r, "X-Huge")), CURL_MAX_HTTP_HEADER - 1024);
  resil_http_response_free(&r);
  resil_http_free(h);
  header_peer_stop(&hp, th);

  /* Twice the limit: the peer's failure, counted, and it trips. */
  snprintf(url, sizeof url, "http://127.0.0.1:%u",
           (unsigned)header_peer_start(&hp, &th, 2 * CURL_MAX_HTTP_HEADER));
  h = http_client("big-header", url);
  expect_trip("http huge header", h, resil_http_dep(h), http_any, RESIL_E_FAILURE,
              RESIL_OUTCOME_FAILURE, "receive: response header too large");
  assert_int_equal(hp.served, THRESHOLD); /* one request per call; none after the trip */
  resil_pool_stats ps;
  resil_pool_get_stats(resil_http_pool(h), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], THRESHOLD);
  resil_http_free(h);
  header_peer_stop(&hp, th);
}

/* ---- The group ---------------------------------------------------------- */

static int group_setup(void **state) {
  (void)state;
  const char *path = test_env("RESIL_TESTHTTPD");
  if (path) httpd_port = testhttpd_start(&httpd, path);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  if (httpd_port) child_stop(&httpd);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      /* First: fork before this process has started threads of its own. */
      cmocka_unit_test(fd_exhaustion_is_local_and_never_trips_the_breaker),
      cmocka_unit_test(redis_slow_auth_handshake_times_out_and_trips),
      cmocka_unit_test(pg_slow_startup_times_out_and_trips),
      cmocka_unit_test(http_slow_tls_handshake_times_out_and_trips),
      cmocka_unit_test(pg_startup_that_ends_at_the_deadline_is_a_timeout),
      cmocka_unit_test(redis_validation_that_spends_the_deadline_trips),
      cmocka_unit_test(pg_validation_that_spends_the_deadline_trips),
      cmocka_unit_test(http_oversized_header_line_is_a_dependency_failure),
  };
  return cmocka_run_group_tests_name("classify", tests, group_setup, group_teardown);
}
