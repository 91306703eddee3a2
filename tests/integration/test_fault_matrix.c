/* The fault matrix: every adapter (Redis, PostgreSQL, HTTP) x every fault of
 * the loopback fault proxy (tests/support/faultproxy.h), placed between resil
 * and a REAL server: the redis-server and PostgreSQL that scripts/test.sh
 * starts (RESIL_TEST_REDIS_PORT, RESIL_TEST_PG_CONNINFO / _PG_PORT), and a
 * testhttpd started here (RESIL_TESTHTTPD, set by meson; RESIL_TEST_HTTP_PORT
 * instead, once scripts/lib/servers.sh starts one).
 *
 * One test case per cell, named <adapter>_<fault> ("redis_blackhole"). The
 * cell logic is written once (run_cell) over a table of adapter operations
 * (make a client through the proxy / make one call / its dependency and
 * pool / destroy it) and a table of fault specs. Every cell:
 *
 *  0. warms up: one call through the proxy in FP_PASS succeeds with the
 *     right payload over exactly one proxied connection;
 *  1. switches the fault on and makes THRESHOLD (3) calls, each with a
 *     DEADLINE_MS deadline: each returns the adapter's documented status for
 *     that fault (timeout faults: RESIL_E_TIMEOUT; reset / close / refuse:
 *     RESIL_E_FAILURE, see the headers) within the deadline + slack
 *     (test_slack_ms: 100 ms, 300 ms under the sanitizers; CLOCK_MONOTONIC),
 *     and a timeout really waited for its timeout;
 *  2. each of them is counted by the dependency as that outcome (timeout vs
 *     failure counters; never ignored); the breaker is closed with 1, 2
 *     consecutive failures, then opens on the third (consecutive_failures
 *     trip), and the next call, made right after the trip (no wait in
 *     between, so it is well inside the OPEN_MS break however slow the
 *     machine), is rejected locally with RESIL_E_BREAKER_OPEN without a pool
 *     acquire, a connect, or a new connection at the proxy (fp_accepted grows
 *     by no more than the PostgreSQL reaper's own cancel requests, which run
 *     in the background meanwhile); its time is best-of-3 within
 *     FAST_REJECT_MS x the build's multiplier, well below any I/O timeout;
 *  3. the connections that saw the fault are destroyed: a call that failed
 *     on an established connection made the pool close exactly that one as
 *     broken (a call that failed while connecting closed at most one dead
 *     idle connection first; curl drops a connection that failed in its
 *     connect phase itself and hands the handle back clean), fp_active()
 *     drops to 0 while the fault is still on (PostgreSQL: cancel requests
 *     the reaper gave up on may still be open, at most cancels_abandoned of
 *     them), and the next successful call goes over a NEW proxied connection
 *     (fp_accepted grows); FP_REFUSE: no connection was ever accepted;
 *  4. with the fault cleared (FP_PASS) and the break duration (OPEN_MS, no
 *     jitter, multiplier 1) passed, the same client's next call is the
 *     half-open probe and succeeds, the breaker is closed again, and further
 *     calls succeed;
 *  5. after freeing the client and stopping the proxy the process has the
 *     same number of open file descriptors as before the cell (waiting up to
 *     FD_WAIT_MS for asynchronous closes such as a PostgreSQL cancel thread).
 *     Memory leaks are caught by the ASan build, which runs this same program.
 *
 * Each call's payload is ~64 KiB (a Redis value, a PostgreSQL text value, an
 * HTTP body), so that FP_THROTTLE at 2 KiB/s cannot deliver it in time and
 * FP_RESET_AFTER / FP_CLOSE_MID_REPLY cut a reply in the middle. Redis and
 * PostgreSQL replies also carry a per-call token, so a late reply answering a
 * later call would be caught. The first faulted call of a cell hits the
 * connection opened by the warm-up; the next ones open new connections, so
 * each fault is seen both on an established connection and while connecting.
 * A summary (status, worst time and overshoot past the deadline per cell) is
 * printed as TAP comments at the end.
 *
 * Missing RESIL_TEST_* variables: the cells of that adapter fail when CI is
 * set (the harness is broken) and skip otherwise. Only 127.0.0.1 is used. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "faultproxy.h"
#include "http/procs.h"
#include "resil/http.h"
#include "resil/pg.h"
#include "resil/redis.h"
#include "testutil.h"

#define DEADLINE_MS 300        /* every call's deadline, and dep.timeout_ms */
#define READ_TIMEOUT_MS 250    /* command_timeout_ms / query_timeout_ms / request_timeout_ms */
#define CONNECT_TIMEOUT_MS 300 /* each adapter's connect_timeout_ms */
#define SLACK_MS ((int)test_slack_ms(DEADLINE_MS)) /* a call returns by its deadline + this */
#define TIMEOUT_MIN_MS 200     /* a timeout must have waited at least this long */
#define THRESHOLD 3            /* breaker.consecutive_failures */
#define OPEN_MS 300            /* breaker.open_ms (no jitter, no growth) */
#define FAST_REJECT_MS 50      /* the fastest of up to REJECT_TRIES breaker-open rejections
                                  returns within this x test_build_mult() (it does no I/O:
                                  microseconds; the rest absorbs a loaded machine); still
                                  below READ_TIMEOUT_MS, so a rejection that waited for I/O
                                  would fail it */
#define REJECT_TRIES 3
#define CANCEL_TIMEOUT_MS 100  /* PostgreSQL reaper's wait for a cancel request */
#define PAYLOAD 65536          /* bytes of each call's reply payload */
#define ACTIVE_WAIT_MS 4000    /* for fp_active() to drop (FP_DELAY delays FINs too) */
#define FD_WAIT_MS 3000        /* for asynchronous closes after free + fp_stop */

static const char REDIS_KEY[] = "resil:fault_matrix:big";

/* ---- Environment and time ---------------------------------------------- */

/* Wait up to ms for fp_active(fp) <= n. */
static bool wait_active_at_most(const fp_proxy *fp, unsigned n, unsigned ms) {
  uint64_t until = test_now_us() + (uint64_t)ms * 1000u;
  for (;;) {
    if (fp_active(fp) <= n) return true;
    if (test_now_us() >= until) return false;
    test_sleep_ms(5);
  }
}

/* Wait up to ms for the open fd count to come back to n; the last count. */
static int wait_fds(int n, unsigned ms) {
  uint64_t until = test_now_us() + (uint64_t)ms * 1000u;
  for (;;) {
    int now = count_open_fds();
    if (now == n || test_now_us() >= until) return now;
    test_sleep_ms(10);
  }
}

/* The byte at offset i of every payload ('a' + i % 26, as testhttpd's /big). */
static bool payload_ok(const char *p, size_t len) {
  if (!p || len != PAYLOAD) return false;
  for (size_t i = 0; i < len; i++)
    if (p[i] != (char)('a' + i % 26)) return false;
  return true;
}

/* Settings every adapter's dependency gets: one attempt per call (so one
 * call is one outcome), a breaker that trips on THRESHOLD consecutive
 * failures only and stays open exactly OPEN_MS each time. */
static void common_dep(resil_dep_config *d) {
  d->timeout_ms = DEADLINE_MS;
  d->breaker.consecutive_failures = THRESHOLD;
  d->breaker.failure_rate_percent = 0;
  d->breaker.slow_call_rate_percent = 0;
  d->breaker.open_ms = OPEN_MS;
  d->breaker.open_max_ms = OPEN_MS;
  d->breaker.open_multiplier = 1.0;
  d->breaker.open_jitter_percent = 0;
  d->breaker.half_open_probes = 1;
  d->retry.max_attempts = 1;
}

static void common_pool(resil_pool_config *p) {
  p->max_size = 2;
  p->min_idle = 0;
  p->housekeeping_ms = 0; /* no background connects or evictions */
}

/* ---- The adapters ------------------------------------------------------ */

typedef struct adapter_ops {
  const char *name;
  /* The real server's port on 127.0.0.1 (skips or fails without it). */
  uint16_t (*upstream)(void);
  /* A client whose dependency is named name, talking to 127.0.0.1:port. */
  void *(*make)(const char *name, uint16_t port);
  /* One call under dl; *ok tells whether an RESIL_OK reply had the
   * expected payload (token seq included where the protocol allows), and
   * *in_connect whether a failure happened while connecting inside the
   * driver (HTTP: curl connects; Redis and PostgreSQL connect through the
   * pool, whose connect counters tell). */
  resil_status (*call)(void *cl, resil_deadline dl, unsigned seq, resil_err *err, bool *ok,
                       bool *in_connect);
  resil_dep *(*dep)(void *cl);
  resil_pool *(*pool)(void *cl);
  /* Wait until background work on timed-out connections is over (NULL:
   * there is none). */
  void (*quiesce)(void *cl);
  /* Connections of the adapter's own that may legitimately stay open
   * through the proxy after the faulted ones were closed (NULL: none). */
  unsigned (*stray)(void *cl);
  /* Connections the adapter has opened in the background so far (cancel
   * requests), which go through the proxy too (NULL: none). */
  uint64_t (*background)(void *cl);
  void (*destroy)(void *cl);
} adapter_ops;

/* Redis: a pipeline of ECHO <token> and GET of a 64 KiB value, one deadline. */

static uint16_t redis_upstream(void) { return need_port("RESIL_TEST_REDIS_PORT"); }

static void *redis_make(const char *name, uint16_t port) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.host = "127.0.0.1";
  cfg.port = port;
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  cfg.command_timeout_ms = READ_TIMEOUT_MS;
  resil_err err = {0};
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new(%s): %s", name, err.msg);
  /* The value every call reads (idempotent: same bytes every time). */
  char *v = malloc(PAYLOAD);
  assert_non_null(v);
  for (size_t i = 0; i < PAYLOAD; i++) v[i] = (char)('a' + i % 26);
  const char *argv[] = {"SET", REDIS_KEY, v};
  const size_t argvlen[] = {3, sizeof REDIS_KEY - 1, PAYLOAD};
  redisReply *rep = NULL;
  resil_status st = resil_redis_command_argv(r, resil_deadline_in_ms(2000), 0, 3, argv,
                                             argvlen, &rep, &err);
  free(v);
  if (rep) freeReplyObject(rep);
  if (st != RESIL_OK) {
    resil_redis_free(r);
    fail_msg("%s: SET %s: %s (%s)", name, REDIS_KEY, err.msg, resil_status_name(st));
  }
  return r;
}

static resil_status redis_call(void *cl, resil_deadline dl, unsigned seq, resil_err *err,
                               bool *ok, bool *in_connect) {
  *in_connect = false;
  char token[32];
  snprintf(token, sizeof token, "fm-%u", seq);
  const char *echo[] = {"ECHO", token};
  const char *get[] = {"GET", REDIS_KEY};
  resil_redis_cmd cmds[2] = {{2, echo, NULL}, {2, get, NULL}};
  redisReply *rep[2] = {NULL, NULL};
  resil_status st = resil_redis_pipeline(cl, dl, 0, 2, cmds, rep, err);
  *ok = st == RESIL_OK && rep[0] && rep[1] && rep[0]->type == REDIS_REPLY_STRING &&
        strcmp(rep[0]->str, token) == 0 && rep[1]->type == REDIS_REPLY_STRING &&
        payload_ok(rep[1]->str, rep[1]->len);
  for (int i = 0; i < 2; i++)
    if (rep[i]) freeReplyObject(rep[i]);
  return st;
}

static resil_dep *redis_dep(void *cl) { return resil_redis_dep(cl); }
static resil_pool *redis_pool(void *cl) { return resil_redis_pool(cl); }
static void redis_destroy(void *cl) { resil_redis_free(cl); }

/* PostgreSQL: SELECT <token> || a 64 KiB string, one row. */

static uint16_t pg_upstream(void) {
  need_env("RESIL_TEST_PG_CONNINFO");
  return need_port("RESIL_TEST_PG_PORT");
}

static void *pg_make(const char *name, uint16_t port) {
  char ci[2048];
  snprintf(ci, sizeof ci, "%s port=%u", need_env("RESIL_TEST_PG_CONNINFO"), (unsigned)port);
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.conninfo = ci; /* copied */
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  cfg.query_timeout_ms = READ_TIMEOUT_MS;
  cfg.cancel_timeout_ms = CANCEL_TIMEOUT_MS;
  resil_err err = {0};
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new(%s): %s", name, err.msg);
  return pg;
}

static resil_status pg_call(void *cl, resil_deadline dl, unsigned seq, resil_err *err,
                            bool *ok, bool *in_connect) {
  *in_connect = false;
  char token[32];
  snprintf(token, sizeof token, "fm-%u", seq);
  const char *vals[] = {token};
  PGresult *res = NULL;
  /* The value: the token, then PAYLOAD bytes 'a' + i % 26. */
  resil_status st = resil_pg_query(
      cl, dl, 0, "SELECT $1::text || left(repeat('abcdefghijklmnopqrstuvwxyz', 2521), 65536)",
      1, vals, &res, err);
  const char *v = st == RESIL_OK ? resil_pg_value(res, 0, 0) : NULL;
  size_t tl = strlen(token);
  *ok = v && strncmp(v, token, tl) == 0 && payload_ok(v + tl, strlen(v + tl));
  PQclear(res);
  return st;
}

static resil_dep *pg_dep(void *cl) { return resil_pg_dep(cl); }
static resil_pool *pg_pool(void *cl) { return resil_pg_pool(cl); }
static void pg_destroy(void *cl) { resil_pg_free(cl); }

static resil_pg_stats pg_stats(void *cl) {
  resil_pg_stats s;
  resil_pg_get_stats(cl, &s);
  return s;
}

/* A timed-out statement's connection goes to the reaper thread, which sends
 * a cancel request (a new connection through the proxy) and closes it. */
static void pg_quiesce(void *cl) {
  uint64_t until = test_now_us() + 2000000u;
  resil_pg_stats s = pg_stats(cl);
  while (s.reaped < s.timeouts && test_now_us() < until) {
    test_sleep_ms(2);
    s = pg_stats(cl);
  }
  if (s.reaped < s.timeouts)
    fail_msg("pg reaper still busy after 2 s: %llu timeouts, %llu reaped",
             (unsigned long long)s.timeouts, (unsigned long long)s.reaped);
}

/* A cancel request the reaper stopped waiting for (cancel_timeout_ms) stays
 * blocked in PQcancel() on its own thread, its connection open, until the
 * proxy lets it through or closes it. */
static unsigned pg_stray(void *cl) { return (unsigned)pg_stats(cl).cancels_abandoned; }

/* Cancel requests that connected or tried to (skipped ones open nothing). */
static uint64_t pg_background(void *cl) {
  resil_pg_stats s = pg_stats(cl);
  return s.cancels_sent + s.cancels_failed + s.cancels_abandoned;
}

/* HTTP: GET /big?bytes=65536 from testhttpd. */

static child httpd;
static uint16_t httpd_port;

static uint16_t http_upstream(void) {
  if (test_env("RESIL_TEST_HTTP_PORT")) return need_port("RESIL_TEST_HTTP_PORT");
  if (!httpd_port)
    fail_msg("no HTTP server: RESIL_TESTHTTPD (set by meson) is missing or did not start");
  return httpd_port;
}

static void *http_make(const char *name, uint16_t port) {
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)port);
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  common_dep(&cfg.dep);
  common_pool(&cfg.pool);
  cfg.base_url = url; /* copied */
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  cfg.request_timeout_ms = READ_TIMEOUT_MS;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new(%s): %s", name, err.msg);
  return h;
}

static resil_status http_call(void *cl, resil_deadline dl, unsigned seq, resil_err *err,
                              bool *ok, bool *in_connect) {
  (void)seq; /* curl never hands a reply to the wrong transfer */
  resil_http_response r;
  resil_status st = resil_http_get(cl, dl, "/big?bytes=65536", &r, err);
  /* curl drops a connection that failed while connecting itself; the
   * handle then holds none and goes back to the pool as clean. */
  *in_connect = r.phase == RESIL_HTTP_PHASE_CONNECT || r.phase == RESIL_HTTP_PHASE_DNS;
  *ok = st == RESIL_OK && r.status == 200 && payload_ok(r.body, r.body_len);
  if (st == RESIL_OK && !*ok) {
    print_message("# http: RESIL_OK but HTTP %ld, %zu body bytes, %zu headers, curl %d, reused %d\n",
                  r.status, r.body_len, r.nheaders, r.curl_code, (int)r.reused);
    for (size_t i = 0; i < r.nheaders; i++)
      print_message("#   %s: %s\n", r.headers[i].name, r.headers[i].value);
  }
  resil_http_response_free(&r);
  return st;
}

static resil_dep *http_dep(void *cl) { return resil_http_dep(cl); }
static resil_pool *http_pool(void *cl) { return resil_http_pool(cl); }
static void http_destroy(void *cl) { resil_http_free(cl); }

static const adapter_ops ADAPTERS[] = {
    {"redis", redis_upstream, redis_make, redis_call, redis_dep, redis_pool, NULL, NULL, NULL,
     redis_destroy},
    {"pg", pg_upstream, pg_make, pg_call, pg_dep, pg_pool, pg_quiesce, pg_stray, pg_background,
     pg_destroy},
    {"http", http_upstream, http_make, http_call, http_dep, http_pool, NULL, NULL, NULL,
     http_destroy},
};
#define N_ADAPTERS (sizeof ADAPTERS / sizeof ADAPTERS[0])

/* ---- The faults -------------------------------------------------------- */

typedef struct fault_spec {
  const char *name;
  fp_mode mode;
  uint64_t arg;
  resil_status expect;      /* what every adapter documents for it */
  bool kill_open;           /* also abort the connections already open */
} fault_spec;

static const fault_spec FAULTS[] = {
    /* Every chunk held 1 s, far past the read timeout and the deadline. */
    {"delay", FP_DELAY, 1000, RESIL_E_TIMEOUT, false},
    {"blackhole", FP_BLACKHOLE, 0, RESIL_E_TIMEOUT, false},
    /* Open connections are reset at once, new ones right after accept. */
    {"reset_at_once", FP_RESET_AFTER, 0, RESIL_E_FAILURE, false},
    /* 1000 bytes of a 64 KiB reply (or of a connect handshake), then RST. */
    {"reset_mid_reply", FP_RESET_AFTER, 1000, RESIL_E_FAILURE, false},
    {"close_mid_reply", FP_CLOSE_MID_REPLY, 0, RESIL_E_FAILURE, false},
    /* 2 KiB/s: a 64 KiB reply would need 32 s. A connect through it (the
     * PostgreSQL start-up) may end right at the deadline, leaving no time to
     * send: that is still the dependency's timeout, never `deadline`
     * (resil/status.h; test_classify.c forces that case every time). */
    {"throttle", FP_THROTTLE, 2048, RESIL_E_TIMEOUT, false},
    /* New connections refused; the open one is aborted so that every call
     * needs a new connection. */
    {"refuse", FP_REFUSE, 0, RESIL_E_FAILURE, true},
};
#define N_FAULTS (sizeof FAULTS / sizeof FAULTS[0])

/* ---- One cell ---------------------------------------------------------- */

typedef struct cell {
  const adapter_ops *a;
  const fault_spec *f;
  char name[48];
  /* live resources, released by the teardown if the test failed */
  fp_proxy *fp;
  void *cl;
  /* results for the summary */
  bool done;
  resil_status seen[THRESHOLD];
  uint64_t broken; /* connections the pool closed as broken during the faults */
  unsigned kept_clean; /* timeouts whose connect completed and went back clean */
  int64_t max_took_us, max_over_us, reject_us;
  double seconds;
} cell;

static cell CELLS[N_ADAPTERS * N_FAULTS];

static resil_dep_stats dep_stats(const cell *c) {
  resil_dep_stats s;
  resil_dep_get_stats(c->a->dep(c->cl), &s);
  return s;
}

static resil_pool_stats pool_stats(const cell *c) {
  resil_pool_stats s;
  resil_pool_get_stats(c->a->pool(c->cl), &s);
  return s;
}

static uint64_t connects(const resil_pool_stats *p) {
  return p->connects_ok + p->connects_failed + p->connects_timed_out;
}

static unsigned seq_next(void) {
  static unsigned seq;
  return ++seq;
}

/* One call that must succeed with the right payload. */
static void must_succeed(cell *c, const char *what) {
  resil_err err = {0};
  bool ok = false, in_connect = false;
  resil_status st =
      c->a->call(c->cl, resil_deadline_in_ms(2000), seq_next(), &err, &ok, &in_connect);
  if (st != RESIL_OK) fail_msg("%s: %s: %s (%s)", c->name, what, err.msg, resil_status_name(st));
  if (!ok) fail_msg("%s: %s: RESIL_OK with a wrong payload", c->name, what);
}

static resil_outcome outcome_of(resil_status st) {
  return st == RESIL_E_TIMEOUT ? RESIL_OUTCOME_TIMEOUT : RESIL_OUTCOME_FAILURE;
}

static void run_cell(void **state) {
  cell *c = *state;
  const adapter_ops *a = c->a;
  const fault_spec *f = c->f;
  uint16_t upstream = a->upstream(); /* skips (or fails under CI) first */
  uint64_t cell_start = test_now_us();
  int fds0 = count_open_fds();
  assert_true(fds0 > 0);

  c->fp = fp_start("127.0.0.1", upstream);
  if (!c->fp) fail_msg("fp_start(127.0.0.1:%u): %s", (unsigned)upstream, strerror(errno));
  fp_proxy *fp = c->fp;
  c->cl = a->make(c->name, fp_port(fp));

  /* 0. Through the proxy in FP_PASS everything works, on one connection. */
  must_succeed(c, "warm-up");
  assert_int_equal(fp_accepted(fp), 1);
  assert_int_equal(fp_active(fp), 1);

  resil_dep_stats d0 = dep_stats(c);
  resil_pool_stats p0 = pool_stats(c);
  assert_int_equal(d0.breaker.state, RESIL_BREAKER_CLOSED);
  unsigned acc0 = fp_accepted(fp);

  fp_set_mode(fp, f->mode, f->arg);
  if (f->kill_open) fp_kill_all(fp);

  /* 1 + 2. THRESHOLD faulted calls: status, time, outcome, breaker. */
  const resil_outcome want = outcome_of(f->expect);
  const resil_outcome other =
      want == RESIL_OUTCOME_TIMEOUT ? RESIL_OUTCOME_FAILURE : RESIL_OUTCOME_TIMEOUT;
  uint64_t tripped_at = 0;
  c->max_took_us = 0;
  c->broken = 0;
  c->kept_clean = 0;
  c->max_over_us = INT64_MIN;
  for (unsigned i = 0; i < THRESHOLD; i++) {
    resil_err err = {0};
    bool ok = false, in_connect = false;
    resil_pool_stats pb = pool_stats(c);
    test_sched_watch watch;
    test_sched_watch_start(&watch);
    uint64_t t0 = test_now_us();
    resil_status st =
        a->call(c->cl, resil_deadline_in_ms(DEADLINE_MS), seq_next(), &err, &ok, &in_connect);
    uint64_t t1 = test_now_us();
    unsigned sched_ms = test_sched_watch_stop(&watch);
    int64_t took = (int64_t)(t1 - t0);
    c->seen[i] = st;
    if (took > c->max_took_us) c->max_took_us = took;
    if (took - DEADLINE_MS * 1000 > c->max_over_us) c->max_over_us = took - DEADLINE_MS * 1000;
    print_message("# %s call %u: %s%s in %.1f ms: %s\n", c->name, i + 1, resil_status_name(st),
                  st == RESIL_OK ? (ok ? " (right payload)" : " (WRONG payload)") : "",
                  (double)took / 1000.0, err.msg);
    if (st != f->expect)
      fail_msg("%s call %u: expected %s, got %s (%s)", c->name, i + 1,
               resil_status_name(f->expect), resil_status_name(st), err.msg);
    /* The slack, plus the machine's own scheduling delay meanwhile. */
    if (took > (int64_t)(DEADLINE_MS + SLACK_MS + (int)sched_ms) * 1000)
      fail_msg("%s call %u: took %.1f ms, deadline %d ms + %d ms slack + %u ms the machine's "
               "scheduling delay",
               c->name, i + 1, (double)took / 1000.0, DEADLINE_MS, SLACK_MS, sched_ms);
    if (st == RESIL_E_TIMEOUT && took < (int64_t)TIMEOUT_MIN_MS * 1000)
      fail_msg("%s call %u: a timeout after only %.1f ms", c->name, i + 1,
               (double)took / 1000.0);
    /* 3. A call that failed on an established connection closed it as
     * broken (exactly that one); one that failed connecting may first have
     * dropped a dead idle connection (at most one). */
    resil_pool_stats pa = pool_stats(c);
    /* A timeout whose deadline went to a connect that did complete (the
     * throttled link) sent nothing: that fresh, clean connection may go back
     * to the pool (the timeout rule: resil/status.h), so it counts as a
     * failure while connecting. */
    bool connect_failed = in_connect || pa.connects_failed > pb.connects_failed ||
                          pa.connects_timed_out > pb.connects_timed_out ||
                          (st == RESIL_E_TIMEOUT && pa.connects_ok > pb.connects_ok);
    uint64_t broken =
        pa.closed[RESIL_POOL_CLOSE_BROKEN] - pb.closed[RESIL_POOL_CLOSE_BROKEN];
    if (connect_failed ? broken > 1 : broken != 1)
      fail_msg("%s call %u: failed %s, and %llu connections were closed as broken", c->name,
               i + 1, connect_failed ? "connecting" : "on an open connection",
               (unsigned long long)broken);
    assert_int_equal(pa.in_use, 0);
    print_message("#   pool: %llu broken, connects +%llu ok +%llu failed +%llu timed out%s\n",
                  (unsigned long long)broken,
                  (unsigned long long)(pa.connects_ok - pb.connects_ok),
                  (unsigned long long)(pa.connects_failed - pb.connects_failed),
                  (unsigned long long)(pa.connects_timed_out - pb.connects_timed_out),
                  in_connect ? ", failed in the driver's connect" : "");
    c->broken += broken;
    if (st == RESIL_E_TIMEOUT && pa.connects_ok > pb.connects_ok && broken == 0)
      c->kept_clean++;
    resil_dep_stats d = dep_stats(c);
    assert_int_equal(d.calls[want] - d0.calls[want], i + 1);
    assert_int_equal(d.calls[other], d0.calls[other]);
    assert_int_equal(d.calls[RESIL_OUTCOME_IGNORED], d0.calls[RESIL_OUTCOME_IGNORED]);
    assert_int_equal(d.calls[RESIL_OUTCOME_OVERLOAD], d0.calls[RESIL_OUTCOME_OVERLOAD]);
    assert_int_equal(d.calls[RESIL_OUTCOME_SUCCESS], d0.calls[RESIL_OUTCOME_SUCCESS]);
    assert_int_equal(d.rejected_after_admit, d0.rejected_after_admit);
    assert_int_equal(d.in_flight, 0);
    if (i + 1 < THRESHOLD) {
      assert_int_equal(d.breaker.state, RESIL_BREAKER_CLOSED);
      assert_int_equal(d.breaker.consecutive_failures, i + 1);
    } else {
      tripped_at = t1;
      if (d.breaker.state != RESIL_BREAKER_OPEN)
        fail_msg("%s: breaker %s after %u consecutive %s", c->name,
                 resil_breaker_state_name(d.breaker.state), THRESHOLD,
                 resil_outcome_name(want));
      assert_int_equal(d.breaker.last_trip_reason, RESIL_TRIP_CONSECUTIVE_FAILURES);
      assert_int_equal(d.breaker.transitions[RESIL_BREAKER_OPEN] -
                           d0.breaker.transitions[RESIL_BREAKER_OPEN],
                       1);
    }
  }

  /* 2. Open: rejected locally, fast, without touching the pool or proxy.
   * Checked right after the trip: waiting for the PostgreSQL reaper first
   * (up to cancel_timeout_ms and its thread's scheduling) could carry the
   * check past the break on a loaded machine. The reaper's cancel requests
   * connect through the proxy meanwhile; they are accounted for below. */
  resil_dep_stats d1 = dep_stats(c);
  resil_pool_stats p1 = pool_stats(c);
  unsigned acc1 = fp_accepted(fp);
  uint64_t bg1 = a->background ? a->background(c->cl) : 0;
  const int64_t reject_bound_us = (int64_t)FAST_REJECT_MS * test_build_mult() * 1000;
  unsigned rejections = 0;
  c->reject_us = INT64_MAX;
  do {
    resil_err err = {0};
    bool ok = false, in_connect = false;
    uint64_t t0 = test_now_us();
    resil_status st =
        a->call(c->cl, resil_deadline_in_ms(DEADLINE_MS), seq_next(), &err, &ok, &in_connect);
    int64_t took = (int64_t)(test_now_us() - t0);
    rejections++;
    if (took < c->reject_us) c->reject_us = took;
    if (t0 - tripped_at >= (uint64_t)OPEN_MS * 1000u)
      fail_msg("%s: the open check came %.0f ms after the trip, past the break (%d ms)",
               c->name, (double)(t0 - tripped_at) / 1000.0, OPEN_MS);
    if (st != RESIL_E_BREAKER_OPEN)
      fail_msg("%s: open breaker: expected breaker_open, got %s (%s)", c->name,
               resil_status_name(st), err.msg);
  } while (c->reject_us > reject_bound_us && rejections < REJECT_TRIES);
  if (c->reject_us > reject_bound_us)
    fail_msg("%s: the fastest of %u breaker_open rejections took %.2f ms (bound %.0f ms)",
             c->name, rejections, (double)c->reject_us / 1000.0,
             (double)reject_bound_us / 1000.0);
  resil_dep_stats d2 = dep_stats(c);
  resil_pool_stats p2 = pool_stats(c);
  assert_int_equal(p2.acquired, p1.acquired);
  assert_int_equal(connects(&p2), connects(&p1));
  assert_int_equal(d2.rejections[RESIL_REJECT_BREAKER_OPEN] -
                       d1.rejections[RESIL_REJECT_BREAKER_OPEN],
                   rejections);
  assert_int_equal(d2.admitted, d1.admitted);
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) assert_int_equal(d2.calls[k], d1.calls[k]);
  /* No background connect races the proxy check once the reaper is done. */
  if (a->quiesce) a->quiesce(c->cl);
  {
    unsigned acc = fp_accepted(fp);
    uint64_t bg = a->background ? a->background(c->cl) - bg1 : 0;
    if (acc - acc1 > bg)
      fail_msg("%s: %u connections reached the proxy while the breaker was open (%llu of "
               "them the adapter's background cancel requests)",
               c->name, acc - acc1, (unsigned long long)bg);
  }

  /* 3. The faulted connections are gone, while the fault is still on. A
   * connection whose connect used its call's whole deadline and sent
   * nothing went back to the pool clean (the timeout rule): it is idle, not
   * faulted, and may stay (seen in pg_throttle under ASan). */
  unsigned idle = pool_stats(c).idle;
  unsigned kept = idle < c->kept_clean ? idle : c->kept_clean;
  unsigned stray = (a->stray ? a->stray(c->cl) : 0) + kept;
  if (!wait_active_at_most(fp, stray, ACTIVE_WAIT_MS))
    fail_msg("%s: %u connections still open through the proxy %d ms after the faults "
             "(allowed %u: %u idle and clean)",
             c->name, fp_active(fp), ACTIVE_WAIT_MS, stray, kept);
  p2 = pool_stats(c);
  assert_int_equal(p2.in_use, 0);
  assert_int_equal(p2.waiters, 0);
  assert_int_equal(p2.closed[RESIL_POOL_CLOSE_BROKEN] - p0.closed[RESIL_POOL_CLOSE_BROKEN],
                   c->broken);
  if (f->mode == FP_REFUSE) assert_int_equal(fp_accepted(fp), acc0); /* nothing got in */

  /* 4. Fault cleared, break over: the probe succeeds on a NEW connection
   * and closes the breaker; the same client goes on working. */
  fp_set_mode(fp, FP_PASS, 0);
  uint64_t reopen = tripped_at + (uint64_t)(OPEN_MS + 30) * 1000u;
  uint64_t t = test_now_us();
  if (t < reopen) test_sleep_ms((unsigned)((reopen - t) / 1000u + 1));
  unsigned acc2 = fp_accepted(fp);
  resil_dep_stats d3 = dep_stats(c);
  must_succeed(c, "half-open probe");
  resil_dep_stats d4 = dep_stats(c);
  if (kept == 0 && fp_accepted(fp) <= acc2)
    fail_msg("%s: the first call after the fault reused a connection", c->name);
  if (d4.breaker.state != RESIL_BREAKER_CLOSED)
    fail_msg("%s: breaker %s after a successful probe", c->name,
             resil_breaker_state_name(d4.breaker.state));
  assert_int_equal(d4.breaker.transitions[RESIL_BREAKER_HALF_OPEN] -
                       d3.breaker.transitions[RESIL_BREAKER_HALF_OPEN],
                   1);
  assert_int_equal(d4.breaker.transitions[RESIL_BREAKER_CLOSED] -
                       d3.breaker.transitions[RESIL_BREAKER_CLOSED],
                   1);
  must_succeed(c, "after recovery (1)");
  must_succeed(c, "after recovery (2)");
  resil_dep_stats d5 = dep_stats(c);
  assert_int_equal(d5.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(d5.breaker.consecutive_failures, 0);
  assert_int_equal(d5.calls[RESIL_OUTCOME_SUCCESS] - d3.calls[RESIL_OUTCOME_SUCCESS], 3);
  assert_int_equal(d5.calls[RESIL_OUTCOME_IGNORED], d0.calls[RESIL_OUTCOME_IGNORED]);
  assert_int_equal(d5.rejections[RESIL_REJECT_BREAKER_OPEN] -
                       d0.rejections[RESIL_REJECT_BREAKER_OPEN],
                   rejections);
  assert_int_equal(d5.in_flight, 0);
  /* Every admitted call ended as exactly one outcome. */
  uint64_t ended = d5.rejected_after_admit;
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) ended += d5.calls[k];
  assert_int_equal(d5.admitted, ended);
  /* Recovery kept one connection (sequential calls), through the proxy;
   * a cancel request left from the fault finishes now that it passes. */
  if (!fp_wait_active(fp, 1, ACTIVE_WAIT_MS))
    fail_msg("%s: %u connections open through the proxy after recovery, expected 1", c->name,
             fp_active(fp));

  /* 5. No fd left behind once the client and the proxy are gone. */
  a->destroy(c->cl);
  c->cl = NULL;
  fp_stop(fp);
  c->fp = NULL;
  int fds1 = wait_fds(fds0, FD_WAIT_MS);
  if (fds1 != fds0) fail_msg("%s: %d fds before the cell, %d after", c->name, fds0, fds1);
  c->seconds = (double)(test_now_us() - cell_start) / 1e6;
  c->done = true;
}

static int cell_teardown(void **state) {
  cell *c = *state;
  if (c->fp) fp_set_mode(c->fp, FP_PASS, 0); /* unblock a stuck cancel */
  if (c->cl) c->a->destroy(c->cl);
  c->cl = NULL;
  if (c->fp) fp_stop(c->fp);
  c->fp = NULL;
  return 0;
}

/* ---- The group ---------------------------------------------------------- */

static int group_setup(void **state) {
  (void)state;
  const char *path = test_env("RESIL_TESTHTTPD");
  if (path && !test_env("RESIL_TEST_HTTP_PORT")) {
    httpd_port = testhttpd_start(&httpd, path);
    if (!httpd_port) {
      fprintf(stderr, "could not start %s\n", path);
      return -1;
    }
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  child_stop(&httpd);
  return 0;
}

static void print_summary(const char *only, double total_s) {
  printf("# fault matrix: deadline %d ms (read timeout %d ms, connect timeout %d ms), "
         "slack %d ms\n",
         DEADLINE_MS, READ_TIMEOUT_MS, CONNECT_TIMEOUT_MS, SLACK_MS);
  printf("# %-24s %-9s %-9s %8s %13s %10s %7s %7s\n", "cell", "expected", "observed", "max ms",
         "overshoot ms", "reject us", "broken", "cell s");
  for (size_t i = 0; i < N_ADAPTERS * N_FAULTS; i++) {
    const cell *c = &CELLS[i];
    if (only && !strstr(c->name, only)) continue;
    if (!c->done) {
      printf("# %-24s %-9s %s\n", c->name, resil_status_name(c->f->expect),
             "(not completed)");
      continue;
    }
    bool same = true;
    for (int k = 1; k < THRESHOLD; k++) same = same && c->seen[k] == c->seen[0];
    printf("# %-24s %-9s %-9s %8.1f %13.1f %10.0f %7llu %7.2f\n", c->name,
           resil_status_name(c->f->expect), same ? resil_status_name(c->seen[0]) : "mixed",
           (double)c->max_took_us / 1000.0, (double)c->max_over_us / 1000.0,
           (double)c->reject_us, (unsigned long long)c->broken, c->seconds);
  }
  printf("# total %.1f s\n", total_s);
  fflush(stdout);
}

int main(void) {
  /* SIGPIPE stays at its default (terminate): no adapter may raise it,
   * whatever the proxy does to a connection. */
  /* RESIL_FAULT_MATRIX_ONLY=substring runs only the cells whose name
   * contains it (for iterating by hand). */
  const char *only = test_env("RESIL_FAULT_MATRIX_ONLY");
  struct CMUnitTest tests[N_ADAPTERS * N_FAULTS];
  size_t n = 0;
  for (size_t a = 0; a < N_ADAPTERS; a++)
    for (size_t f = 0; f < N_FAULTS; f++) {
      cell *c = &CELLS[a * N_FAULTS + f];
      c->a = &ADAPTERS[a];
      c->f = &FAULTS[f];
      snprintf(c->name, sizeof c->name, "%s_%s", ADAPTERS[a].name, FAULTS[f].name);
      if (only && !strstr(c->name, only)) continue;
      tests[n++] = (struct CMUnitTest){
          .name = c->name,
          .test_func = run_cell,
          .setup_func = NULL,
          .teardown_func = cell_teardown,
          .initial_state = c,
      };
    }
  uint64_t t0 = test_now_us();
  int rc = _cmocka_run_group_tests("fault_matrix", tests, n, group_setup, group_teardown);
  print_summary(only, (double)(test_now_us() - t0) / 1e6);
  return rc;
}
