/* The outbound rate limit, the pause after server pushback, and the memory
 * gauge and bound, through the HTTP adapter against a real HTTP server on
 * 127.0.0.1 (testhttpd, started here on an ephemeral port).
 *
 *   - 1000 calls at 100/s (burst 1) from 8 threads take 9.99 s at least
 *     (the limiter's promise) and at most 10 s + slack, every call reaches
 *     the server exactly once. Under ASan/TSan the same check runs with 200
 *     calls (2 s) to keep the sanitizer builds' time down: the promise
 *     tested is the same, only the count differs.
 *   - A 429 with "Retry-After: 2" pauses every thread's calls for 2 s: none
 *     reaches the server in that time, each is rejected as "paused" (never
 *     a failure), and the pause shows in the metrics and the event log.
 *   - While a response is received, resil_memory_bytes shows its buffer;
 *     driven at its caps (pool 4, max_response_bytes 4 MiB, 4 threads
 *     fetching 4 MiB bodies), the process's peak RSS grows by less than the
 *     dependency's documented worst case (resil_http_config_memory_bound). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdbool.h>

#include "procs.h"
#include "resil/http.h"
#include "resil/resil.h"
#include "testutil.h"

/* httpd, port, base and the group set-up that starts testhttpd: procs.h */
TESTHTTPD_GROUP

static hstats server_stats(bool reset) {
  int fd = tcp_dial(port);
  assert_true(fd >= 0);
  hstats s;
  if (!stats_call(fd, reset, &s)) fail_msg("GET /stats failed");
  close(fd);
  return s;
}

static resil_http *client(resil_http_config *cfg) {
  resil_err err = {0};
  resil_http *h = resil_http_new(cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  return h;
}

/* ---- rate limit ------------------------------------------------------------ */

typedef struct rl_run {
  resil_http *h;
  _Atomic int next; /* calls handed out */
  int total;
  _Atomic int ok, limited, other;
} rl_run;

static void *rl_thread(void *p) {
  rl_run *r = p;
  while (atomic_fetch_add(&r->next, 1) < r->total) {
    resil_http_response resp;
    resil_err err;
    resil_status st = resil_http_get(r->h, resil_deadline_in_ms(5000), "/fast", &resp, &err);
    if (st == RESIL_OK && resp.status == 200)
      atomic_fetch_add(&r->ok, 1);
    else if (st == RESIL_E_RATE_LIMITED)
      atomic_fetch_add(&r->limited, 1);
    else {
      fprintf(stderr, "# unexpected: %s: %s\n", resil_status_name(st), err.msg);
      atomic_fetch_add(&r->other, 1);
    }
    resil_http_response_free(&resp);
  }
  return NULL;
}

static void calls_at_100_per_s_take_n_over_100_seconds(void **state) {
  (void)state;
  /* 1000 calls = 10 s in the plain build; 200 = 2 s under the sanitizers. */
  const int n = test_sanitized() ? 200 : 1000;
  const unsigned rate = 100;
  resil_http_config cfg;
  resil_http_config_init(&cfg, "rate-100");
  cfg.base_url = base;
  cfg.pool.max_size = 8;
  cfg.dep.rate_limit.per_s = rate;
  cfg.dep.rate_limit.burst = 1;
  /* 8 threads: a call waits for at most 8 reserved tokens (80 ms). */
  cfg.dep.limit.max_wait_ms = 1000;
  resil_http *h = client(&cfg);
  server_stats(true);
  rl_run r = {.h = h, .total = n};
  enum { NT = 8 };
  pthread_t th[NT];
  uint64_t t0 = test_now_us();
  for (int i = 0; i < NT; i++) assert_int_equal(pthread_create(&th[i], NULL, rl_thread, &r), 0);
  for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
  uint64_t took_ms = (test_now_us() - t0) / 1000;
  hstats s = server_stats(false);
  unsigned promise_ms = (unsigned)((n - 1) * 1000 / rate); /* burst 1: the first goes at once */
  fprintf(stderr, "# %d calls at %u/s from %d threads: %llu ms (promise >= %u ms)\n", n, rate,
          NT, (unsigned long long)took_ms, promise_ms);
  assert_int_equal(atomic_load(&r.ok), n);
  assert_int_equal(atomic_load(&r.limited), 0);
  assert_int_equal(atomic_load(&r.other), 0);
  assert_int_equal(s.requests, n); /* each call reached the server once */
  assert_true(took_ms >= promise_ms);
  assert_true(took_ms <= promise_ms + 1000 / rate + test_slack_ms(promise_ms));
  resil_dep_stats st;
  resil_dep_get_stats(resil_http_dep(h), &st);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], n);
  assert_int_equal(st.rejections[RESIL_REJECT_RATE_LIMITED], 0);
  resil_http_free(h);
}

static void calls_beyond_the_rate_without_wait_are_rejected_and_never_sent(void **state) {
  (void)state;
  resil_http_config cfg;
  resil_http_config_init(&cfg, "rate-nowait");
  cfg.base_url = base;
  cfg.pool.max_size = 4;
  cfg.dep.rate_limit.per_s = 50;
  cfg.dep.rate_limit.burst = 10;
  cfg.dep.limit.max_wait_ms = 0; /* never wait for a token */
  resil_http *h = client(&cfg);
  server_stats(true);
  rl_run r = {.h = h, .total = 400};
  enum { NT = 4 };
  pthread_t th[NT];
  uint64_t t0 = test_now_us();
  for (int i = 0; i < NT; i++) assert_int_equal(pthread_create(&th[i], NULL, rl_thread, &r), 0);
  for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
  double took_s = (double)(test_now_us() - t0) / 1e6;
  hstats s = server_stats(false);
  int ok = atomic_load(&r.ok), limited = atomic_load(&r.limited);
  fprintf(stderr, "# 400 calls, 50/s burst 10, no wait: %d sent, %d rate_limited in %.3f s\n", ok,
          limited, took_s);
  assert_int_equal(ok + limited, 400);
  assert_int_equal(atomic_load(&r.other), 0);
  assert_true(ok >= 10);
  assert_true((double)ok <= 10 + 50 * took_s);
  assert_int_equal(s.requests, ok); /* a rejected call never reaches the server */
  resil_dep_stats st;
  resil_dep_get_stats(resil_http_dep(h), &st);
  assert_int_equal(st.rejections[RESIL_REJECT_RATE_LIMITED], (uint64_t)limited);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  resil_http_free(h);
}

/* ---- pause after 429 Retry-After ---------------------------------------------- */

typedef struct ev_rec {
  pthread_mutex_t mu;
  int starts, ends;
  int64_t start_ms, end_ms;
  char start_reason[32], start_msg[256];
} ev_rec;

static void on_event(void *ctx, const resil_event *ev) {
  ev_rec *r = ctx;
  if (ev->type != RESIL_EVENT_PAUSE || strcmp(ev->dep, "pushback") != 0) return;
  pthread_mutex_lock(&r->mu);
  if (ev->new_value) {
    r->starts++;
    r->start_ms = ev->new_value;
    snprintf(r->start_reason, sizeof r->start_reason, "%s", ev->reason);
    snprintf(r->start_msg, sizeof r->start_msg, "%s", ev->message);
  } else {
    r->ends++;
    r->end_ms = ev->old_value;
  }
  pthread_mutex_unlock(&r->mu);
}

typedef struct pause_run {
  resil_http *h;
  uint64_t first_ok_us;
  int paused, other;
} pause_run;

/* Call /fast until one succeeds, counting "paused" rejections. */
static void *pause_thread(void *p) {
  pause_run *r = p;
  for (int i = 0; i < 100000; i++) {
    resil_http_response resp;
    resil_err err;
    resil_status st = resil_http_get(r->h, resil_deadline_in_ms(2000), "/fast", &resp, &err);
    resil_http_response_free(&resp);
    if (st == RESIL_OK) {
      r->first_ok_us = test_now_us();
      return NULL;
    }
    if (st == RESIL_E_PAUSED)
      r->paused++;
    else
      r->other++;
    test_sleep_ms(5);
  }
  return NULL;
}

static void retry_after_429_pauses_every_thread_for_its_time(void **state) {
  (void)state;
  static ev_rec rec = {.mu = PTHREAD_MUTEX_INITIALIZER};
  resil_set_event_hook(on_event, &rec);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "pushback");
  cfg.base_url = base;
  cfg.pool.max_size = 4;
  cfg.dep.limit.max_wait_ms = 10;
  resil_http *h = client(&cfg);
  resil_dep *d = resil_http_dep(h);

  uint64_t before = test_now_us();
  resil_http_response resp;
  resil_err err;
  assert_int_equal(resil_http_get(h, resil_deadline_in_ms(2000), "/retry-after?s=2&code=429",
                                  &resp, &err),
                   RESIL_E_OVERLOAD);
  assert_int_equal(resp.status, 429);
  resil_http_response_free(&resp);
  uint64_t after = test_now_us();
  server_stats(true);
  uint64_t left = resil_dep_pause_remaining_ms(d);
  assert_true(left > 1500 && left <= 2000);
  char *text = NULL;
  assert_int_equal(resil_export_prometheus(&text, NULL, NULL), RESIL_OK);
  const char *g = strstr(text, "resil_pause_remaining_seconds{dependency=\"pushback\"} ");
  assert_non_null(g);
  double secs = strtod(strchr(g, '}') + 2, NULL);
  assert_true(secs > 1.5 && secs <= 2.0);
  free(text);

  enum { NT = 4 };
  pause_run runs[NT];
  pthread_t th[NT];
  for (int i = 0; i < NT; i++) {
    runs[i] = (pause_run){.h = h};
    assert_int_equal(pthread_create(&th[i], NULL, pause_thread, &runs[i]), 0);
  }
  for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
  hstats s = server_stats(false);
  for (int i = 0; i < NT; i++) {
    fprintf(stderr, "# thread %d: first success %.0f ms after the 429, %d paused rejections\n", i,
            (double)(runs[i].first_ok_us - after) / 1e3, runs[i].paused);
    assert_true(runs[i].first_ok_us >= before + 2000000); /* not one call sooner */
    assert_true(runs[i].first_ok_us <= after + 1000 * (uint64_t)test_upper_ms(2000));
    assert_true(runs[i].paused > 0);
    assert_int_equal(runs[i].other, 0);
  }
  /* During the pause nothing reached the server: it saw only the calls
   * that succeeded afterwards. */
  assert_int_equal(s.requests, NT);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  uint64_t paused = 0;
  for (int i = 0; i < NT; i++) paused += (uint64_t)runs[i].paused;
  assert_int_equal(st.rejections[RESIL_REJECT_PAUSED], paused);
  assert_int_equal(st.calls[RESIL_OUTCOME_OVERLOAD], 1); /* the 429 */
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], NT);
  assert_int_equal(st.pauses, 1);
  assert_int_equal(st.pause_remaining_ms, 0);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  pthread_mutex_lock(&rec.mu);
  assert_int_equal(rec.starts, 1);
  assert_int_equal(rec.start_ms, 2000);
  assert_string_equal(rec.start_reason, "retry_after");
  assert_non_null(strstr(rec.start_msg, "HTTP 429"));
  assert_int_equal(rec.ends, 1);
  assert_true(rec.end_ms >= 2000);
  pthread_mutex_unlock(&rec.mu);
  resil_set_event_hook(NULL, NULL);
  resil_http_free(h);
}

/* ---- memory ----------------------------------------------------------------- */

typedef struct mem_call {
  resil_http *h;
  const char *path;
  resil_status st;
  size_t len;
  int rounds;
  _Atomic int done;
} mem_call;

static void *mem_thread(void *p) {
  mem_call *m = p;
  for (int i = 0; i < m->rounds; i++) {
    resil_http_response resp;
    m->st = resil_http_get(m->h, resil_deadline_in_ms(20000), m->path, &resp, NULL);
    m->len = resp.body_len;
    resil_http_response_free(&resp);
    if (m->st != RESIL_OK) break;
  }
  atomic_store(&m->done, 1);
  return NULL;
}

static uint64_t mem_now(resil_dep *d) {
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  return st.memory_bytes;
}

static void memory_gauge_shows_a_response_being_received(void **state) {
  (void)state;
  resil_http_config cfg;
  resil_http_config_init(&cfg, "mem-gauge");
  cfg.base_url = base;
  cfg.dep.timeout_ms = 20000;
  cfg.request_timeout_ms = 20000;
  resil_http *h = client(&cfg);
  resil_dep *d = resil_http_dep(h);
  assert_int_equal(mem_now(d), 0);
  /* 2000 bytes, one every 2 ms: 4 s in flight, the buffer sized from its
   * Content-Length at the first byte. */
  mem_call m = {.h = h, .path = "/drip?bytes=2000&ms=2", .rounds = 1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, mem_thread, &m), 0);
  assert_true(TEST_WAIT_UNTIL(mem_now(d) == 2001 || atomic_load(&m.done), 3000));
  assert_false(atomic_load(&m.done));
  assert_int_equal(mem_now(d), 2001);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.memory_bound_bytes, resil_http_config_memory_bound(&cfg));
  pthread_join(th, NULL);
  assert_int_equal(m.st, RESIL_OK);
  assert_int_equal(m.len, 2000);
  assert_int_equal(mem_now(d), 0); /* the response is the caller's now */
  resil_http_free(h);
}

static void driven_at_its_caps_it_stays_under_its_memory_bound(void **state) {
  (void)state;
  if (test_sanitized()) {
    /* ASan keeps freed memory in quarantine and both sanitizers add
     * shadow memory: RSS says nothing about the library there. */
    skip();
  }
  const size_t cap = 4u << 20;
  resil_http_config cfg;
  resil_http_config_init(&cfg, "mem-caps");
  cfg.base_url = base;
  cfg.dep.timeout_ms = 20000;
  cfg.request_timeout_ms = 20000;
  cfg.pool.max_size = 4;
  cfg.max_response_bytes = cap;
  uint64_t bound = resil_http_config_memory_bound(&cfg);
  int perturb = test_malloc_perturb_off();
  resil_http *h = client(&cfg);
  resil_dep *d = resil_http_dep(h);
  char path[64];
  snprintf(path, sizeof path, "/big?bytes=%zu", cap);
  long base_kb = test_peak_rss_reset();
  assert_true(base_kb > 0);
  enum { NT = 4 };
  mem_call m[NT];
  pthread_t th[NT];
  for (int i = 0; i < NT; i++) {
    m[i] = (mem_call){.h = h, .path = path, .rounds = 5};
    assert_int_equal(pthread_create(&th[i], NULL, mem_thread, &m[i]), 0);
  }
  uint64_t peak_gauge = 0;
  while (true) {
    bool all = true;
    for (int i = 0; i < NT; i++) all &= atomic_load(&m[i].done) != 0;
    uint64_t g = mem_now(d);
    if (g > peak_gauge) peak_gauge = g;
    if (all) break;
    test_sleep_ms(1);
  }
  for (int i = 0; i < NT; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(m[i].st, RESIL_OK);
    assert_int_equal(m[i].len, cap);
  }
  long grew_kb = test_status_kb("VmHWM") - base_kb;
  test_malloc_perturb_restore(perturb);
  fprintf(stderr,
          "# pool 4, max_response_bytes 4 MiB, 4 threads x 5 GETs of 4 MiB: peak RSS grew "
          "%ld KiB; bound %llu KiB; gauge peaked at %llu KiB\n",
          grew_kb, (unsigned long long)(bound >> 10), (unsigned long long)(peak_gauge >> 10));
  assert_true(peak_gauge <= (uint64_t)NT * (cap + 1));
  assert_true(peak_gauge > 0);
  /* A 4 MiB body alone is 4 MiB: the measurement sees the responses. */
  assert_true(grew_kb >= 4096);
  assert_true((uint64_t)grew_kb * 1024 < bound);
  assert_int_equal(mem_now(d), 0);
  resil_http_free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(calls_at_100_per_s_take_n_over_100_seconds),
      cmocka_unit_test(calls_beyond_the_rate_without_wait_are_rejected_and_never_sent),
      cmocka_unit_test(retry_after_429_pauses_every_thread_for_its_time),
      cmocka_unit_test(memory_gauge_shows_a_response_being_received),
      cmocka_unit_test(driven_at_its_caps_it_stays_under_its_memory_bound),
  };
  return cmocka_run_group_tests_name("http_flow", tests, group_setup, group_teardown);
}
