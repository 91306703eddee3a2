/* The HTTP adapter against a real HTTP server on 127.0.0.1: testhttpd
 * (started here on an ephemeral port, path in RESIL_TESTHTTPD) and, for
 * TLS, `openssl s_server` with a self-signed certificate made at test time.
 * Each test states one behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>

#include "procs.h"
#ifdef HAVE_FAULTPROXY
#include "faultproxy.h"
#endif
#include "resil/http.h"
#include "resil/lifecycle.h"
#include "resil/testing.h" /* resil_drain_reset */
#include "testutil.h"
#include "probe_heal.h"

/* httpd, port, base and the group set-up that starts testhttpd: procs.h */
TESTHTTPD_GROUP

/* The fork test's child starts threads after a multi-threaded fork (the
 * pool's housekeeper): tell ThreadSanitizer that this is intended. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) { return "die_after_fork=0"; }

/* A client for this test: name unique per test, tweak adjusts the config. */
static resil_http *client(const char *name, void (*tweak)(resil_http_config *)) {
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = base;
  cfg.dep.timeout_ms = 5000;
  cfg.dep.breaker.open_jitter_percent = 0;
  if (tweak) tweak(&cfg);
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  return h;
}

static int stats_open(void) {
  int fd = tcp_dial(port);
  assert_true(fd >= 0);
  return fd;
}

static hstats stats(int fd, bool reset) {
  hstats s;
  if (!stats_call(fd, reset, &s)) fail_msg("GET /stats failed");
  return s;
}

/* ---- basics ------------------------------------------------------------ */

static void get_fast_returns_200_with_body_and_headers(void **state) {
  (void)state;
  resil_http *h = client("fast", NULL);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err), RESIL_OK);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, 2);
  assert_memory_equal(r.body, "ok", 3); /* NUL-terminated */
  assert_string_equal(resil_http_response_header(&r, "content-length"), "2");
  assert_int_equal(r.attempts, 1);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_NONE);
  resil_http_response_free(&r);
  resil_http_response_free(&r); /* twice is fine */
  resil_http_free(h);
}

static void post_sends_body_and_headers(void **state) {
  (void)state;
  static const resil_http_header defaults[] = {{"X-Service", "checkout"}};
  resil_http_config cfg;
  resil_http_config_init(&cfg, "post");
  cfg.base_url = base;
  cfg.headers = defaults;
  cfg.nheaders = 1;
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  resil_http_header hdr[] = {{"X-Request-Id", "abc-123"}};
  resil_http_request req = {.method = "POST", .path = "echo", .headers = hdr, .nheaders = 1,
                            .body = "hello, world", .body_len = 12};
  resil_http_response r;
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(1000), &req, &r, NULL),
                   RESIL_OK);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, 12);
  assert_memory_equal(r.body, "hello, world", 12);
  assert_string_equal(resil_http_response_header(&r, "X-Echo-Method"), "POST");
  assert_string_equal(resil_http_response_header(&r, "X-Echo-X-Service"), "checkout");
  assert_string_equal(resil_http_response_header(&r, "X-Echo-X-Request-Id"), "abc-123");
  assert_null(resil_http_response_header(&r, "X-Echo-Expect"));
  resil_http_response_free(&r);

  /* A HEAD then a GET on the same handle: the method is reset each time. */
  req = (resil_http_request){.method = "HEAD", .path = "/echo"};
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(1000), &req, &r, NULL),
                   RESIL_OK);
  assert_string_equal(resil_http_response_header(&r, "X-Echo-Method"), "HEAD");
  assert_int_equal(r.body_len, 0);
  resil_http_response_free(&r);
  req = (resil_http_request){.method = "DELETE", .path = "/echo", .query = "a=1&b=2"};
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(1000), &req, &r, NULL),
                   RESIL_OK);
  assert_string_equal(resil_http_response_header(&r, "X-Echo-Method"), "DELETE");
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void invalid_config_reports_every_problem(void **state) {
  (void)state;
  resil_http_config cfg;
  resil_http_config_init(&cfg, "bad");
  cfg.base_url = "ftp://127.0.0.1/x";
  cfg.connect_timeout_ms = 0;
  cfg.failure_statuses[0] = 200;
  cfg.deadline_header = "bad header";
  resil_err err = {0};
  assert_null(resil_http_new(&cfg, &err));
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "base_url"));
  assert_non_null(strstr(err.msg, "connect_timeout_ms"));
  assert_non_null(strstr(err.msg, "failure_statuses[0]"));
  assert_non_null(strstr(err.msg, "deadline_header"));
  cfg.base_url = NULL;
  assert_int_equal(resil_http_config_validate(&cfg, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "base_url: is required"));
}

/* A base_url with user info is refused, and the error never repeats the
 * password, whatever else is wrong with the URL. */
static void base_url_user_info_is_refused_without_echoing_it(void **state) {
  (void)state;
  static const char *const urls[] = {
      "http://u:hTtP-SeCrEt@127.0.0.1/x",     "https://hTtP-SeCrEt@127.0.0.1:8443",
      "ftp://u:hTtP-SeCrEt@127.0.0.1/x",      "http://u:hTtP-SeCrEt@/x",
      "http://u:hTtP-SeCrEt@127.0.0.1/x?q=1", "u:hTtP-SeCrEt@127.0.0.1/x",
      "http://u:hTtP-SeCrEt@[::1/x",          "http://u:hTtP SeCrEt@127.0.0.1/x",
  };
  for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
    resil_http_config cfg;
    resil_http_config_init(&cfg, "api");
    cfg.base_url = urls[i];
    resil_err err = {0};
    assert_int_equal(resil_http_config_validate(&cfg, &err), RESIL_E_INVALID);
    if (!strstr(err.msg, "base_url")) fail_msg("%s: the error names no base_url: %s", urls[i], err.msg);
    if (strstr(err.msg, "SeCrEt")) fail_msg("the password is in the error: %s", err.msg);
  }
}

static void bad_request_is_rejected_before_any_io(void **state) {
  (void)state;
  resil_http *h = client("badreq", NULL);
  resil_http_header hdr[] = {{"X-Evil", "a\r\nInjected: 1"}};
  resil_http_request req = {.path = "/fast", .headers = hdr, .nheaders = 1};
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_request_do(h, RESIL_DEADLINE_UNSET, &req, &r, &err),
                   RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "X-Evil"));
  req = (resil_http_request){.path = "/has space"};
  assert_int_equal(resil_http_request_do(h, RESIL_DEADLINE_UNSET, &req, &r, &err),
                   RESIL_E_INVALID);
  resil_http_response_free(&r);
  resil_dep_stats st;
  resil_dep_get_stats(resil_http_dep(h), &st);
  assert_int_equal(st.admitted, 0);
  resil_http_free(h);
}

static void base_with_prefix(resil_http_config *c) {
  static char b[128];
  snprintf(b, sizeof b, "%s/v1", base);
  c->base_url = b;
}

/* "../x" joined to http://h/v1 would reach http://h/x (curl resolves dot segments): a path
 * with a "." or ".." segment, also percent-encoded, is refused before any I/O. */
static void dot_segments_cannot_leave_the_base_path(void **state) {
  (void)state;
  resil_http *h = client("dotseg", base_with_prefix);
  static const char *const bad[] = {"../fast", "/../fast", "a/../../fast", "./fast", "a/.",
                                    "..", "%2e%2e/fast", "%2E%2e/fast", ".%2e/fast",
                                    "%2e./fast", "a/%2E", "..%2ffast", "..\\fast",
                                    "a/..?q=1", "%2e%2E%5cfast"};
  resil_http_response r;
  resil_err err = {0};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    resil_status st = resil_http_get(h, RESIL_DEADLINE_UNSET, bad[i], &r, &err);
    if (st != RESIL_E_INVALID)
      fail_msg("%s: %s (HTTP %ld), expected invalid", bad[i], resil_status_name(st), r.status);
    assert_non_null(strstr(err.msg, "segment"));
    assert_non_null(strstr(err.msg, "dotseg"));
    resil_http_response_free(&r);
  }
  resil_dep_stats st;
  resil_dep_get_stats(resil_http_dep(h), &st);
  assert_int_equal(st.admitted, 0); /* none was sent */
  /* dots inside a segment, and in the query, are fine (testhttpd answers 404 for these) */
  static const char *const ok[] = {"a..b", "..a", ".well-known/x", "x.json", "a/...",
                                   "fast?next=../x"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    resil_status s2 = resil_http_get(h, RESIL_DEADLINE_UNSET, ok[i], &r, &err);
    if (s2 != RESIL_E_CALLER || r.status != 404)
      fail_msg("%s: %s (HTTP %ld), expected the server's 404", ok[i], resil_status_name(s2), r.status);
    resil_http_response_free(&r);
  }
  resil_http_free(h);
}

/* ---- time -------------------------------------------------------------- */

static void slow_endpoint_times_out_within_deadline(void **state) {
  (void)state;
  resil_http *h = client("slow", NULL);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  resil_status st = resil_http_get(h, resil_deadline_in_ms(200), "/slow?ms=3000", &r, &err);
  double took = t_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_true(took >= 190 && took <= test_upper_ms(200));
  assert_int_equal(r.status, 0);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
  assert_non_null(strstr(err.msg, "'slow'"));
  assert_non_null(strstr(err.msg, "receive"));
  resil_http_response_free(&r);
  /* The timed-out handle was closed, not put back. */
  resil_pool_stats ps;
  resil_pool_get_stats(resil_http_pool(h), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(ps.open, 0);
  resil_http_free(h);
}

static void short_request_timeout(resil_http_config *c) { c->request_timeout_ms = 150; }

static void request_timeout_caps_a_long_deadline(void **state) {
  (void)state;
  resil_http *h = client("reqtimeout", short_request_timeout);
  resil_http_response r;
  double t0 = t_now_ms();
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(3000), "/slow?ms=2000", &r, NULL),
                   RESIL_E_TIMEOUT);
  double took = t_now_ms() - t0;
  assert_true(took >= 140 && took <= test_upper_ms(150));
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void dripped_body_times_out_at_deadline(void **state) {
  (void)state;
  resil_http *h = client("drip", NULL);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  resil_status st =
      resil_http_get(h, resil_deadline_in_ms(300), "/drip?bytes=100&ms=50", &r, &err);
  double took = t_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_true(took >= 290 && took <= test_upper_ms(300));
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
  resil_http_response_free(&r);
  resil_http_free(h);
}

/* A drain that starts while a transfer waits for its answer cuts it at the
 * drain cutoff: resil's own wait between curl's steps re-reads the cutoff
 * at least every RESIL_DRAIN_CHECK_MS and then sleeps only until it. (It
 * used to be noticed only when curl woke up for its own reasons, up to a
 * second later; the same wait is what ends every transfer at its deadline
 * even if curl's timeout timer does not fire.) */
typedef struct drain_call {
  resil_http *h;
  resil_status st;
  double ended_ms;
  resil_err err;
} drain_call;

static void *slow_call(void *arg) {
  drain_call *c = arg;
  resil_http_response r;
  c->st = resil_http_get(c->h, resil_deadline_in_ms(5000), "/slow?ms=4000", &r, &c->err);
  c->ended_ms = t_now_ms();
  resil_http_response_free(&r);
  return NULL;
}

static uint32_t in_flight(resil_http *h) {
  resil_dep_stats s;
  resil_dep_get_stats(resil_http_dep(h), &s);
  return s.in_flight;
}

static void transfer_in_flight_is_cut_at_the_drain_cutoff(void **state) {
  (void)state;
  drain_call c = {.h = client("drain-cut", NULL)};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, slow_call, &c), 0);
  assert_true(TEST_WAIT_UNTIL(in_flight(c.h) == 1, 2000));
  t_sleep_ms(50); /* the request is out, curl waits for the answer */
  test_sched_watch w;
  test_sched_watch_start(&w);
  double t0 = t_now_ms();
  resil_err err = {0};
  resil_status st = resil_drain(0, resil_deadline_in_ms(400), &err);
  pthread_join(th, NULL);
  unsigned late = test_sched_watch_stop(&w);
  double took = c.ended_ms - t0;
  resil_drain_reset();
  assert_int_equal(st, RESIL_OK);
  assert_int_equal(c.st, RESIL_E_DRAINING);
  assert_non_null(strstr(c.err.msg, "drain"));
  /* The cutoff: 400 ms - a fifth of it = 320 ms after the drain began. */
  if (took < 300 || took > test_upper_ms(320) + late)
    fail_msg("cut %.0f ms after the drain began; want 300..%u (scheduling delay %u ms): %s",
             took, test_upper_ms(320) + late, late, c.err.msg);
  resil_http_free(c.h);
}

static void deadline_is_sent_as_grpc_timeout(void **state) {
  (void)state;
  resil_http *h = client("propagate", NULL);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(500), "/echo", &r, NULL), RESIL_OK);
  const char *v = resil_http_response_header(&r, "X-Echo-grpc-timeout");
  assert_non_null(v);
  resil_deadline d;
  resil_err err = {0};
  assert_int_equal(resil_grpc_timeout_parse(v, strlen(v), &d, &err), RESIL_OK);
  int64_t left = resil_deadline_remaining_ms(d);
  assert_true(left > 500 - (int64_t)test_slack_ms(0) && left <= 500);
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void rename_deadline_header(resil_http_config *c) { c->deadline_header = "X-Deadline"; }
static void no_deadline_header(resil_http_config *c) { c->deadline_header = ""; }

static void deadline_header_name_is_configurable_and_can_be_off(void **state) {
  (void)state;
  resil_http *h = client("propagate2", rename_deadline_header);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(500), "/echo", &r, NULL), RESIL_OK);
  assert_non_null(resil_http_response_header(&r, "X-Echo-X-Deadline"));
  assert_null(resil_http_response_header(&r, "X-Echo-grpc-timeout"));
  resil_http_response_free(&r);
  resil_http_free(h);
  h = client("propagate3", no_deadline_header);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(500), "/echo", &r, NULL), RESIL_OK);
  assert_null(resil_http_response_header(&r, "X-Echo-grpc-timeout"));
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void expired_deadline_is_rejected_without_a_transfer(void **state) {
  (void)state;
  resil_http *h = client("expired", NULL);
  int s = stats_open();
  stats(s, true);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(0), "/fast", &r, NULL),
                   RESIL_E_DEADLINE);
  resil_http_response_free(&r);
  assert_int_equal(stats(s, false).requests, 0);
  close(s);
  resil_http_free(h);
}

static void low_speed_guard(resil_http_config *c) {
  c->low_speed_bytes_per_s = 1000;
  c->low_speed_time_s = 1;
}

static void low_speed_guard_aborts_a_trickle(void **state) {
  (void)state;
  resil_http *h = client("lowspeed", low_speed_guard);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  /* 20 bytes/s for 5 s, with 4 s of deadline: the guard ends it after ~1 s. */
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(4000), "/drip?bytes=100&ms=50", &r, &err),
                   RESIL_E_TIMEOUT);
  double took = t_now_ms() - t0;
  if (took < 900 || took > 2500) fail_msg("took %.0f ms: %s", took, err.msg);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void get_by_name(bool with_resil) {
  char url[64];
  snprintf(url, sizeof url, "http://localhost:%u/", port);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "byname");
  cfg.base_url = url;
  cfg.resolve_with_resil = with_resil;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("%s", err.msg);
  for (int i = 0; i < 3; i++) {
    resil_http_response r;
    resil_status st = resil_http_get(h, resil_deadline_in_ms(1000), "fast", &r, &err);
    if (st != RESIL_OK) fail_msg("%s", err.msg);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.reused, i > 0);
    resil_http_response_free(&r);
  }
  resil_http_free(h);
}

static void host_names_are_resolved_by_curl(void **state) {
  (void)state;
  get_by_name(false);
}

static void host_names_can_be_resolved_by_resil(void **state) {
  (void)state;
  get_by_name(true);
}

/* ---- connections ------------------------------------------------------- */

static void connections_are_reused(void **state) {
  (void)state;
  resil_http *h = client("reuse", NULL);
  int s = stats_open();
  stats(s, true);
  for (int i = 0; i < 50; i++) {
    resil_http_response r;
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, NULL), RESIL_OK);
    assert_int_equal(r.reused, i > 0);
    resil_http_response_free(&r);
  }
  hstats hs = stats(s, false);
  assert_int_equal(hs.requests, 50);
  assert_int_equal(hs.accepted, 1);
  close(s);
  resil_http_free(h);
}

typedef struct load {
  resil_http *h;
  int calls;
  _Atomic int ok, other;
  _Atomic bool stop;
  long max_seen_open;
  int stats_fd;
} load;

static void *caller(void *arg) {
  load *l = arg;
  for (int i = 0; i < l->calls; i++) {
    resil_http_response r;
    resil_status st = resil_http_get(l->h, resil_deadline_in_ms(3000), "/slow?ms=5", &r, NULL);
    if (st == RESIL_OK && r.status == 200)
      l->ok++;
    else
      l->other++;
    resil_http_response_free(&r);
  }
  return NULL;
}

static void *watcher(void *arg) {
  load *l = arg;
  while (!l->stop) {
    hstats hs;
    if (!stats_call(l->stats_fd, false, &hs)) break;
    if (hs.open - 1 > l->max_seen_open) l->max_seen_open = hs.open - 1; /* minus our own */
    t_sleep_ms(1);
  }
  return NULL;
}

static void four_connections(resil_http_config *c) {
  c->pool.max_size = 4;
  c->pool.max_waiters = 64;
  c->pool.acquire_timeout_ms = 3000;
}

static void sixteen_callers_never_open_more_than_four_connections(void **state) {
  (void)state;
  /* A server of its own, so that no earlier test's connection is counted. */
  child own;
  uint16_t own_port = testhttpd_start(&own, test_env("RESIL_TESTHTTPD"));
  assert_true(own_port != 0);
  char own_base[64];
  snprintf(own_base, sizeof own_base, "http://127.0.0.1:%u", own_port);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "bounded");
  cfg.base_url = own_base;
  four_connections(&cfg);
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  load l = {.h = h, .calls = 20, .stats_fd = tcp_dial(own_port)};
  assert_true(l.stats_fd >= 0);
  stats(l.stats_fd, true);
  pthread_t w, t[16];
  assert_int_equal(pthread_create(&w, NULL, watcher, &l), 0);
  for (int i = 0; i < 16; i++) assert_int_equal(pthread_create(&t[i], NULL, caller, &l), 0);
  for (int i = 0; i < 16; i++) pthread_join(t[i], NULL);
  l.stop = true;
  pthread_join(w, NULL);
  hstats hs = stats(l.stats_fd, false);
  assert_int_equal(l.ok, 16 * 20);
  assert_int_equal(l.other, 0);
  if (l.max_seen_open < 1 || l.max_seen_open > 4 || hs.max_open - 1 > 4)
    fail_msg("open connections: watcher saw %ld, server max %ld (minus ours), accepted %ld",
             l.max_seen_open, hs.max_open - 1, hs.accepted);
  assert_true(hs.accepted >= 1 && hs.accepted <= 4);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_true(ds.has_pool);
  assert_int_equal(ds.pool.max, 4);
  assert_true(ds.pool.open <= 4);
  close(l.stats_fd);
  resil_http_free(h);
  child_stop(&own);
}

/* Connections open at testhttpd on port p, besides the one asking (-1 if
 * the question failed). */
static long server_open_connections(unsigned p) {
  int fd = tcp_dial((uint16_t)p);
  if (fd < 0) return -1;
  hstats hs;
  bool ok = stats_call(fd, false, &hs);
  close(fd);
  return ok ? hs.open - 1 : -1;
}

/* The server closes an idle keep-alive connection; the next call notices
 * (curl checks a cached connection before reusing it) and connects again
 * instead of failing. */
static void connection_closed_by_the_server_while_idle_is_replaced(void **state) {
  (void)state;
  child own;
  const char *path = test_env("RESIL_TESTHTTPD");
  const char *argv[] = {path, "--port", "0", "--idle-ms", "100", NULL};
  assert_int_equal(child_spawn(&own, argv, true, false), 0);
  char line[64];
  unsigned p = 0;
  assert_true(child_wait_line(&own, "PORT=", line, sizeof line, 10000));
  assert_int_equal(sscanf(line, "PORT=%u", &p), 1);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", p);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "stale");
  cfg.base_url = url;
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  for (int i = 0; i < 3; i++) {
    resil_http_response r;
    resil_err err = {0};
    resil_status st = resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err);
    if (st != RESIL_OK) fail_msg("call %d: %s", i, err.msg);
    assert_false(r.reused);
    resil_http_response_free(&r);
    /* The server closes the idle connection after 100 ms: wait until it
     * has (only the /stats connection of the check itself is left open). */
    if (!TEST_WAIT_UNTIL(server_open_connections(p) == 0, 5000))
      fail_msg("call %d: the server kept the idle connection open", i);
  }
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_SUCCESS], 3);
  resil_http_free(h);
  child_stop(&own);
}

/* fork() with a warm handle: the child gets a connection of its own (it
 * frees the parent's handle without touching its socket), and the parent
 * goes on over the very same connection. */
static void one_connection(resil_http_config *c) { c->pool.max_size = 1; }

static void fork_child_uses_its_own_connection_and_leaves_the_parents(void **state) {
  (void)state;
  resil_http *h = client("fork", one_connection);
  int sfd = stats_open();
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/fast", &r, NULL), RESIL_OK);
  resil_http_response_free(&r);
  hstats before = stats(sfd, false);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    resil_http_response cr;
    resil_status st = resil_http_get(h, resil_deadline_in_ms(2000), "/fast", &cr, NULL);
    bool own = st == RESIL_OK && cr.status == 200 && !cr.reused;
    resil_http_response_free(&cr);
    resil_http_free(h);
    _exit(own ? 0 : 1);
  }
  int ws = 0;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/fast", &r, NULL), RESIL_OK);
  assert_int_equal(r.status, 200);
  assert_true(r.reused); /* the parent's connection still works */
  resil_http_response_free(&r);
  hstats after = stats(sfd, false);
  assert_int_equal(after.accepted, before.accepted + 1); /* the child's one connection */
  close(sfd);
  resil_http_free(h);
}

static void one_connection_short_wait(resil_http_config *c) {
  c->pool.max_size = 1;
  c->pool.acquire_timeout_ms = 50;
}

static void *hold_the_only_connection(void *arg) {
  resil_http_response r;
  /* Held far longer than the 50 ms pool wait, even on a slow machine. */
  resil_http_get(arg, resil_deadline_in_ms(5000), "/slow?ms=1500", &r, NULL);
  resil_http_response_free(&r);
  return NULL;
}

static void busy_pool_rejects_with_pool_timeout(void **state) {
  (void)state;
  resil_http *h = client("busy", one_connection_short_wait);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, hold_the_only_connection, h), 0);
  /* Wait until the holder has the connection (not a fixed sleep). */
  resil_pool_stats ps;
  if (!TEST_WAIT_UNTIL((resil_pool_get_stats(resil_http_pool(h), &ps), ps.in_use == 1), 5000))
    fail_msg("the holder never got the connection");
  resil_http_response r;
  double t0 = t_now_ms();
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, NULL),
                   RESIL_E_POOL_TIMEOUT);
  double took = t_now_ms() - t0;
  assert_true(took >= 45 && took <= test_upper_ms(50));
  resil_http_response_free(&r);
  pthread_join(t, NULL);
  resil_http_free(h);
}

static void cut_body_fails_and_its_connection_is_not_reused(void **state) {
  (void)state;
  resil_http *h = client("cut", NULL);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, NULL), RESIL_OK);
  resil_http_response_free(&r);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/cut?bytes=1000", &r, &err),
                   RESIL_E_FAILURE);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
  assert_int_equal(r.status, 0);
  assert_non_null(strstr(err.msg, "receive"));
  assert_non_null(strstr(err.msg, "curl 18")); /* CURLE_PARTIAL_FILE */
  resil_http_response_free(&r);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_http_pool(h), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, NULL), RESIL_OK);
  assert_false(r.reused); /* a fresh handle, a fresh connection */
  resil_http_response_free(&r);
  resil_http_free(h);
}

/* A peer that answers every connection with a status line and one header,
 * then closes before the blank line ending the headers. curl 7.88 reports
 * that as CURLE_OK (status 200, no body); the adapter must not. */
static void *cut_headers_peer(void *arg) {
  int lfd = *(int *)arg;
  for (int i = 0; i < 2; i++) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) break;
    char buf[4096];
    size_t len = 0;
    while (len < sizeof buf - 1) { /* read the request head */
      ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
      if (n <= 0) break;
      len += (size_t)n;
      buf[len] = '\0';
      if (strstr(buf, "\r\n\r\n")) break;
    }
    static const char part[] = "HTTP/1.1 200 OK\r\nServer: cut\r\nContent-Le";
    ssize_t w = write(fd, part, sizeof part - 1);
    (void)w;
    close(fd);
  }
  return NULL;
}

static void response_cut_inside_its_headers_is_a_failure(void **state) {
  (void)state;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(lfd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
  assert_int_equal(listen(lfd, 4), 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, cut_headers_peer, &lfd), 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)ntohs(a.sin_port));
  resil_http_config cfg;
  resil_http_config_init(&cfg, "cut-headers");
  cfg.base_url = url;
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  for (int i = 0; i < 2; i++) {
    resil_http_response r;
    resil_err err = {0};
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/x", &r, &err),
                     RESIL_E_FAILURE);
    assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.nheaders, 0);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strstr(err.msg, "receive: connection closed inside the response headers"));
    resil_http_response_free(&r);
  }
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_FAILURE], 2);
  assert_int_equal(ds.calls[RESIL_OUTCOME_SUCCESS], 0);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_http_pool(h), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 2);
  resil_http_free(h);
  pthread_join(th, NULL);
  close(lfd);
}

static void nothing_listening_fails_fast_in_connect(void **state) {
  (void)state;
  uint16_t dead;
  int hold = refused_port(&dead);
  assert_true(hold >= 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", dead);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "nobody");
  cfg.base_url = url;
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err),
                   RESIL_E_FAILURE);
  assert_true(t_now_ms() - t0 <= test_upper_ms(0));
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_CONNECT);
  assert_int_equal(r.curl_code, 7); /* CURLE_COULDNT_CONNECT */
  assert_non_null(strstr(err.msg, "'nobody'"));
  assert_non_null(strstr(err.msg, ": connect: "));
  resil_http_response_free(&r);
  resil_http_free(h);
  close(hold);
}

/* A listener whose accept queue is full and never drained: the kernel drops
 * further SYNs, so a connect hangs until the client gives up. */
static void connect_that_hangs_times_out_in_connect(void **state) {
  (void)state;
  int fds[3];
  uint16_t p = unanswered_listener(fds);
  assert_true(p > 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", p);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "hang");
  cfg.base_url = url;
  cfg.connect_timeout_ms = 150;
  resil_http *h = resil_http_new(&cfg, NULL);
  assert_non_null(h);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  resil_status st = resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err);
  double took = t_now_ms() - t0;
  if (st != RESIL_E_TIMEOUT || r.phase != RESIL_HTTP_PHASE_CONNECT || took < 140 ||
      took > test_upper_ms(150))
    fail_msg("status %s, phase %s, %.0f ms: %s", resil_status_name(st),
             resil_http_phase_name(r.phase), took, err.msg);
  resil_http_response_free(&r);
  resil_http_free(h);
  unanswered_close(fds);
}

#ifdef HAVE_FAULTPROXY
/* ---- faults on the wire (tests/support/faultproxy) --------------------- */

static resil_http *proxied_client(const char *name, fp_proxy *fp) {
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", fp_port(fp));
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = url;
  cfg.dep.timeout_ms = 5000;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  return h;
}

static void reset_mid_body_fails_in_receive_and_drops_the_connection(void **state) {
  (void)state;
  fp_proxy *fp = fp_start("127.0.0.1", port);
  assert_non_null(fp);
  resil_http *h = proxied_client("reset", fp);
  fp_set_mode(fp, FP_RESET_AFTER, 5000);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/big?bytes=200000", &r, &err),
                   RESIL_E_FAILURE);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_RECEIVE);
  assert_int_equal(r.body_len, 0); /* nothing half-received is handed out */
  resil_http_response_free(&r);
  fp_set_mode(fp, FP_PASS, 0);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/fast", &r, &err), RESIL_OK);
  assert_false(r.reused);
  resil_http_response_free(&r);
  assert_int_equal(fp_accepted(fp), 2);
  resil_http_free(h);
  fp_stop(fp);
}

typedef struct upstream {
  fp_proxy *fp;
  resil_http *h;
} upstream;

static void heal_upstream(void *u) { fp_set_mode(((upstream *)u)->fp, FP_PASS, 0); }

/* One GET /fast under a 300 ms deadline. */
static resil_status get_fast(void *u) {
  resil_http_response r;
  resil_err err;
  resil_status st = resil_http_get(((upstream *)u)->h, resil_deadline_in_ms(300), "/fast", &r, &err);
  resil_http_response_free(&r);
  return st;
}

static void recovery_probe_ends_a_long_break_soon_after_the_upstream_heals(void **state) {
  (void)state;
  fp_proxy *fp = fp_start("127.0.0.1", port);
  assert_non_null(fp);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", fp_port(fp));
  resil_http_config cfg;
  resil_http_config_init(&cfg, "probe-api");
  cfg.base_url = url;
  cfg.probe_path = "/fast";
  cfg.dep.timeout_ms = 300; /* probe timeout: min(300, 1000) */
  cfg.dep.breaker.consecutive_failures = 2;
  cfg.dep.breaker.failure_rate_percent = 0;
  cfg.dep.breaker.open_ms = 30000; /* a long break, as after several trips */
  cfg.dep.breaker.open_max_ms = 60000;
  cfg.dep.breaker.open_jitter_percent = 0;
  cfg.dep.breaker.half_open_probes = 1;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err), RESIL_OK);
  resil_http_response_free(&r);
  fp_set_mode(fp, FP_BLACKHOLE, 0); /* the upstream hangs */
  for (int i = 0; i < 2; i++) {
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(200), "/fast", &r, &err),
                     RESIL_E_TIMEOUT);
    resil_http_response_free(&r);
  }
  resil_dep_stats s0;
  resil_dep_get_stats(resil_http_dep(h), &s0);
  assert_int_equal(s0.breaker.state, RESIL_BREAKER_OPEN);
  resil_dep_stats s = probe_outage_holds(resil_http_dep(h), &s0);
  upstream u = {fp, h};
  probe_heal_within_bound(resil_http_dep(h), &s, heal_upstream, get_fast, &u);
  resil_http_free(h);
  fp_stop(fp);
}

static void blackholed_connection_times_out_and_is_closed(void **state) {
  (void)state;
  fp_proxy *fp = fp_start("127.0.0.1", port);
  assert_non_null(fp);
  resil_http *h = proxied_client("blackhole", fp);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err), RESIL_OK);
  resil_http_response_free(&r);
  fp_set_mode(fp, FP_BLACKHOLE, 0);
  double t0 = t_now_ms();
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(200), "/fast", &r, &err),
                   RESIL_E_TIMEOUT);
  double took = t_now_ms() - t0;
  if (took < 190 || took > test_upper_ms(200)) fail_msg("took %.0f ms", took);
  resil_http_response_free(&r);
  /* The timed-out connection was closed by us, not kept for reuse. */
  assert_true(fp_wait_active(fp, 0, 2000));
  fp_set_mode(fp, FP_PASS, 0);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err), RESIL_OK);
  resil_http_response_free(&r);
  resil_http_free(h);
  fp_stop(fp);
}
#endif

/* ---- recovery probes: what counts as healthy ---------------------------- */

static resil_http *probing_client(const char *name, const char *probe_path) {
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = base;
  cfg.probe_path = probe_path;
  cfg.dep.probe_interval_ms = 100;
  cfg.dep.breaker.consecutive_failures = 2;
  cfg.dep.breaker.failure_rate_percent = 0;
  cfg.dep.breaker.open_ms = 30000;
  cfg.dep.breaker.open_jitter_percent = 0;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  for (int i = 0; i < 2; i++) { /* trip it */
    resil_http_response r;
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/status/500", &r, &err),
                     RESIL_E_FAILURE);
    resil_http_response_free(&r);
  }
  return h;
}

/* Wait (at most 3 s) until the client's probes add up to n. */
static resil_dep_stats wait_probes(resil_http *h, uint64_t n) {
  resil_dep_stats s;
  uint64_t until = test_now_ms() + 3000;
  do {
    resil_dep_get_stats(resil_http_dep(h), &s);
    if (s.probes[0] + s.probes[1] + s.probes[2] >= n) break;
    test_sleep_ms(10);
  } while (test_now_ms() < until);
  return s;
}

static void probe_counts_any_answer_but_5xx_and_429_as_healthy(void **state) {
  (void)state;
  resil_http *h503 = probing_client("probe-503", "/status/503");
  resil_http *h429 = probing_client("probe-429", "status/429");
  resil_http *h404 = probing_client("probe-404", "/status/404");
  resil_dep_stats s = wait_probes(h503, 3);
  assert_int_equal(s.probes[RESIL_PROBE_FAILURE], 3);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  s = wait_probes(h429, 3);
  assert_int_equal(s.probes[RESIL_PROBE_FAILURE], 3);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  s = wait_probes(h404, 1); /* a 404 proves the server answers */
  assert_int_equal(s.probes[RESIL_PROBE_SUCCESS], 1);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_HALF_OPEN);
  /* A probe is not a call. */
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 2);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 0);
  resil_http_free(h503);
  resil_http_free(h429);
  resil_http_free(h404);
}

/* ---- classification and the breaker ----------------------------------- */

static void trip_after_five(resil_http_config *c) {
  c->dep.breaker.consecutive_failures = 5;
  c->dep.breaker.failure_rate_percent = 0;
  c->dep.breaker.open_ms = 60000;
}

static void not_found_never_trips_the_breaker(void **state) {
  (void)state;
  resil_http *h = client("notfound", trip_after_five);
  for (int i = 0; i < 30; i++) {
    resil_http_response r;
    resil_err err = {0};
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/status/404", &r, &err),
                     RESIL_E_CALLER);
    assert_int_equal(r.status, 404);
    assert_non_null(r.body);
    assert_non_null(strstr(err.msg, "HTTP 404"));
    resil_http_response_free(&r);
  }
  resil_dep_stats st;
  resil_dep_get_stats(resil_http_dep(h), &st);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(st.calls[RESIL_OUTCOME_IGNORED], 30);
  resil_http_free(h);
}

static void five_xx_trip_the_breaker(void **state) {
  (void)state;
  resil_http *h = client("fivexx", trip_after_five);
  static const char *const paths[] = {"/status/500", "/status/502", "/status/503",
                                      "/status/504", "/status/500"};
  for (int i = 0; i < 5; i++) {
    resil_http_response r;
    assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), paths[i], &r, NULL),
                     RESIL_E_FAILURE);
    resil_http_response_free(&r);
  }
  int s = stats_open();
  stats(s, true);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, &err),
                   RESIL_E_BREAKER_OPEN);
  assert_int_equal(r.attempts, 0);
  resil_http_response_free(&r);
  assert_int_equal(stats(s, false).requests, 0); /* rejected without touching the server */
  close(s);
  resil_http_free(h);
}

static void only_500_fails(resil_http_config *c) {
  c->failure_statuses[0] = 500;
  c->nfailure_statuses = 1;
}

static void failure_status_set_is_configurable(void **state) {
  (void)state;
  resil_http *h = client("failset", only_500_fails);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/status/502", &r, NULL),
                   RESIL_E_CALLER);
  resil_http_response_free(&r);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/status/500", &r, NULL),
                   RESIL_E_FAILURE);
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void three_attempts(resil_http_config *c) {
  c->dep.retry.max_attempts = 3;
  c->dep.retry.base_backoff_ms = 1;
  c->dep.retry.max_backoff_ms = 5;
  c->dep.breaker.consecutive_failures = 1000;
  c->dep.breaker.failure_rate_percent = 0;
}

static void only_idempotent_requests_are_retried(void **state) {
  (void)state;
  resil_http *h = client("retries", three_attempts);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/status/503", &r, NULL),
                   RESIL_E_FAILURE);
  assert_int_equal(r.attempts, 3);
  assert_int_equal(r.status, 503);
  resil_http_response_free(&r);
  resil_http_request req = {.method = "POST", .path = "/status/503", .body = "x", .body_len = 1};
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(2000), &req, &r, NULL),
                   RESIL_E_FAILURE);
  assert_int_equal(r.attempts, 1);
  resil_http_response_free(&r);
  req.flags = RESIL_HTTP_IDEMPOTENT;
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(2000), &req, &r, NULL),
                   RESIL_E_FAILURE);
  assert_int_equal(r.attempts, 3);
  resil_http_response_free(&r);
  req = (resil_http_request){.path = "/status/503", .flags = RESIL_HTTP_NO_RETRY};
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(2000), &req, &r, NULL),
                   RESIL_E_FAILURE);
  assert_int_equal(r.attempts, 1);
  resil_http_response_free(&r);
  /* A caller error is never retried. */
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/status/404", &r, NULL),
                   RESIL_E_CALLER);
  assert_int_equal(r.attempts, 1);
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void two_attempts(resil_http_config *c) {
  c->dep.retry.max_attempts = 2;
  c->dep.retry.base_backoff_ms = 1;
  c->dep.retry.max_backoff_ms = 5;
}

static void retry_after_is_honoured(void **state) {
  (void)state;
  resil_http *h = client("retryafter", two_attempts);
  int s = stats_open();
  stats(s, true);
  resil_http_response r;
  resil_err err = {0};
  double t0 = t_now_ms();
  resil_status st =
      resil_http_get(h, resil_deadline_in_ms(3000), "/retry-after?s=1&code=429", &r, &err);
  double took = t_now_ms() - t0;
  assert_int_equal(st, RESIL_E_OVERLOAD);
  assert_int_equal(r.attempts, 2);
  assert_int_equal(r.status, 429);
  assert_int_equal(r.retry_after_ms, 1000);
  /* the second attempt waited for the hint */
  assert_true(took >= 1000 && took <= test_upper_ms(1000));
  assert_non_null(strstr(err.msg, "Retry-After 1000 ms"));
  resil_http_response_free(&r);
  assert_int_equal(stats(s, false).requests, 2);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_OVERLOAD], 2);
  close(s);
  resil_http_free(h);
}

static void retry_after_past_the_deadline_is_not_retried(void **state) {
  (void)state;
  resil_http *h = client("retryafter2", two_attempts);
  resil_http_response r;
  double t0 = t_now_ms();
  assert_int_equal(
      resil_http_get(h, resil_deadline_in_ms(1000), "/retry-after?s=5&code=503", &r, NULL),
      RESIL_E_OVERLOAD);
  assert_true(t_now_ms() - t0 <= test_upper_ms(100)); /* not the 5 s wait */
  assert_int_equal(r.attempts, 1);
  assert_int_equal(r.status, 503);
  assert_int_equal(r.retry_after_ms, 5000);
  resil_http_response_free(&r);
  resil_http_free(h);
}

/* ---- sizes ------------------------------------------------------------- */

static void small_limit(resil_http_config *c) { c->max_response_bytes = 1000; }

static void oversize_body_is_rejected_naming_the_limit(void **state) {
  (void)state;
  resil_http *h = client("oversize", small_limit);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/big?bytes=1000", &r, &err),
                   RESIL_OK);
  assert_int_equal(r.body_len, 1000);
  assert_int_equal(r.body[999], 'a' + 999 % 26);
  resil_http_response_free(&r);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(1000), "/big?bytes=5000", &r, &err),
                   RESIL_E_FAILURE);
  assert_non_null(strstr(err.msg, "max_response_bytes (1000 bytes)"));
  assert_int_equal(r.status, 0);
  resil_http_response_free(&r);
  /* A HEAD reads no body: a large Content-Length is fine. (A body without a
   * Content-Length is counted as it arrives: see the TLS test.) */
  resil_http_request head = {.method = "HEAD", .path = "/big", .query = "bytes=5000"};
  assert_int_equal(resil_http_request_do(h, resil_deadline_in_ms(1000), &head, &r, &err),
                   RESIL_OK);
  assert_string_equal(resil_http_response_header(&r, "Content-Length"), "5000");
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void large_body_arrives_whole(void **state) {
  (void)state;
  resil_http *h = client("large", NULL);
  resil_http_response r;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(3000), "/big?bytes=3000000", &r, NULL),
                   RESIL_OK);
  assert_int_equal(r.body_len, 3000000);
  for (size_t i = 0; i < r.body_len; i += 4099) assert_int_equal(r.body[i], 'a' + i % 26);
  resil_http_response_free(&r);
  resil_http_free(h);
}

/* ---- TLS --------------------------------------------------------------- */

static char tls_dir[64];
static child tls_server;
static uint16_t tls_port;

static bool tls_up(void) {
  if (tls_port) return true;
  snprintf(tls_dir, sizeof tls_dir, "/tmp/resil-http-tls-XXXXXX");
  if (!mkdtemp(tls_dir)) return false;
  char cert[128], key[128];
  snprintf(cert, sizeof cert, "%s/cert.pem", tls_dir);
  snprintf(key, sizeof key, "%s/key.pem", tls_dir);
  const char *gen[] = {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1", NULL};
  if (run_quiet(gen) != 0) return false;
  for (int tries = 0; tries < 5 && !tls_port; tries++) {
    uint16_t p = free_port();
    char accept[32];
    snprintf(accept, sizeof accept, "127.0.0.1:%u", p);
    const char *srv[] = {"openssl", "s_server", "-accept", accept, "-cert", cert, "-key", key,
                   "-www", "-quiet", NULL};
    if (child_spawn(&tls_server, srv, false, true) != 0) return false;
    /* Ready when it accepts a connection. */
    for (int i = 0; i < 200; i++) {
      int fd = tcp_dial(p);
      if (fd >= 0) {
        close(fd);
        tls_port = p;
        break;
      }
      if (waitpid(tls_server.pid, NULL, WNOHANG) == tls_server.pid) break; /* port taken */
      t_sleep_ms(10);
    }
    if (!tls_port) child_stop(&tls_server);
  }
  return tls_port != 0;
}

static void tls_down(void) {
  if (tls_port) child_stop(&tls_server);
  tls_port = 0;
  if (tls_dir[0]) {
    char p[160];
    snprintf(p, sizeof p, "%s/cert.pem", tls_dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/key.pem", tls_dir);
    unlink(p);
    rmdir(tls_dir);
    tls_dir[0] = '\0';
  }
}

static resil_http *tls_client(const char *name, bool with_ca, size_t max_body) {
  char url[64], ca[128];
  snprintf(url, sizeof url, "https://127.0.0.1:%u", tls_port);
  snprintf(ca, sizeof ca, "%s/cert.pem", tls_dir);
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = url;
  cfg.connect_timeout_ms = 2000;
  cfg.request_timeout_ms = 3000;
  cfg.dep.timeout_ms = 3000;
  if (with_ca) cfg.ca_file = ca;
  if (max_body) cfg.max_response_bytes = max_body;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  return h;
}

static void tls_verification_fails_on_a_self_signed_cert(void **state) {
  (void)state;
  if (!tls_up()) fail_msg("could not start openssl s_server");
  resil_http *h = tls_client("tls-default", false, 0);
  resil_http_response r;
  resil_err err = {0};
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(3000), "/", &r, &err), RESIL_E_FAILURE);
  assert_int_equal(r.phase, RESIL_HTTP_PHASE_TLS);
  if (!strstr(err.msg, ": tls: ") || !strstr(err.msg, "certificate")) fail_msg("%s", err.msg);
  assert_int_equal(r.attempts, 1);
  resil_http_response_free(&r);
  resil_http_free(h);
}

static void tls_succeeds_with_the_ca_configured(void **state) {
  (void)state;
  if (!tls_up()) fail_msg("could not start openssl s_server");
  resil_http *h = tls_client("tls-ca", true, 0);
  resil_http_response r;
  resil_err err = {0};
  resil_status st = resil_http_get(h, resil_deadline_in_ms(3000), "/", &r, &err);
  if (st != RESIL_OK) fail_msg("%s", err.msg);
  assert_int_equal(r.status, 200);
  assert_true(r.body_len > 200);
  resil_http_response_free(&r);
  resil_http_free(h);
  /* s_server's page comes without Content-Length (HTTP/1.0, ends at close):
   * the limit is enforced on the bytes as they arrive. */
  h = tls_client("tls-ca-small", true, 200);
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(3000), "/", &r, &err), RESIL_E_FAILURE);
  assert_non_null(strstr(err.msg, "max_response_bytes (200 bytes)"));
  resil_http_response_free(&r);
  resil_http_free(h);
}

/* ---- hygiene ----------------------------------------------------------- */

static void no_fd_leaks_after_free(void **state) {
  (void)state;
  int before = count_open_fds();
  for (int round = 0; round < 3; round++) {
    resil_http *h = client("fds", four_connections);
    for (int i = 0; i < 10; i++) {
      resil_http_response r;
      resil_http_get(h, resil_deadline_in_ms(1000), i % 3 ? "/fast" : "/cut?bytes=100", &r,
                     NULL);
      resil_http_response_free(&r);
    }
    resil_http_free(h);
  }
  assert_int_equal(count_open_fds(), before);
}

static void minimal_example_runs(void **state) {
  (void)state;
  const char *ex = test_env("RESIL_HTTP_EXAMPLE");
  if (!ex) fail_msg("RESIL_HTTP_EXAMPLE is not set (meson sets it)");
  const char *argv[] = {ex, base, NULL};
  assert_int_equal(run_quiet(argv), 0);
  uint16_t dead;
  int hold = refused_port(&dead);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", dead);
  const char *argv2[] = {ex, url, NULL};
  assert_int_not_equal(run_quiet(argv2), 0); /* nothing listens there */
  close(hold);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(get_fast_returns_200_with_body_and_headers),
      cmocka_unit_test(post_sends_body_and_headers),
      cmocka_unit_test(invalid_config_reports_every_problem),
      cmocka_unit_test(base_url_user_info_is_refused_without_echoing_it),
      cmocka_unit_test(bad_request_is_rejected_before_any_io),
      cmocka_unit_test(dot_segments_cannot_leave_the_base_path),
      cmocka_unit_test(slow_endpoint_times_out_within_deadline),
      cmocka_unit_test(request_timeout_caps_a_long_deadline),
      cmocka_unit_test(dripped_body_times_out_at_deadline),
      cmocka_unit_test(transfer_in_flight_is_cut_at_the_drain_cutoff),
      cmocka_unit_test(deadline_is_sent_as_grpc_timeout),
      cmocka_unit_test(deadline_header_name_is_configurable_and_can_be_off),
      cmocka_unit_test(expired_deadline_is_rejected_without_a_transfer),
      cmocka_unit_test(low_speed_guard_aborts_a_trickle),
      cmocka_unit_test(host_names_are_resolved_by_curl),
      cmocka_unit_test(host_names_can_be_resolved_by_resil),
      cmocka_unit_test(connections_are_reused),
      cmocka_unit_test(sixteen_callers_never_open_more_than_four_connections),
      cmocka_unit_test(connection_closed_by_the_server_while_idle_is_replaced),
      cmocka_unit_test(busy_pool_rejects_with_pool_timeout),
      cmocka_unit_test(fork_child_uses_its_own_connection_and_leaves_the_parents),
      cmocka_unit_test(cut_body_fails_and_its_connection_is_not_reused),
      cmocka_unit_test(response_cut_inside_its_headers_is_a_failure),
      cmocka_unit_test(nothing_listening_fails_fast_in_connect),
      cmocka_unit_test(connect_that_hangs_times_out_in_connect),
#ifdef HAVE_FAULTPROXY
      cmocka_unit_test(reset_mid_body_fails_in_receive_and_drops_the_connection),
      cmocka_unit_test(blackholed_connection_times_out_and_is_closed),
      cmocka_unit_test(recovery_probe_ends_a_long_break_soon_after_the_upstream_heals),
#endif
      cmocka_unit_test(probe_counts_any_answer_but_5xx_and_429_as_healthy),
      cmocka_unit_test(not_found_never_trips_the_breaker),
      cmocka_unit_test(five_xx_trip_the_breaker),
      cmocka_unit_test(failure_status_set_is_configurable),
      cmocka_unit_test(only_idempotent_requests_are_retried),
      cmocka_unit_test(retry_after_is_honoured),
      cmocka_unit_test(retry_after_past_the_deadline_is_not_retried),
      cmocka_unit_test(oversize_body_is_rejected_naming_the_limit),
      cmocka_unit_test(large_body_arrives_whole),
      cmocka_unit_test(tls_verification_fails_on_a_self_signed_cert),
      cmocka_unit_test(tls_succeeds_with_the_ca_configured),
      cmocka_unit_test(no_fd_leaks_after_free),
      cmocka_unit_test(minimal_example_runs),
  };
  int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
  tls_down();
  return rc;
}
