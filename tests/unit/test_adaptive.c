/* The adaptive concurrency limit (gradient, AIMD) and client-side
 * throttling: algorithms driven through resil_dep_admit/done with the fake
 * clock against modelled dependencies; the limit invariant under threads
 * (real clock, exact counters, meant for TSan); events, metrics, config. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"
#include "resil/resil.h"
#include "testutil.h"

#define MS 1000000ull

static int setup_fake(void **state) {
  (void)state;
  fake_clock_install();
  return 0;
}
static int teardown_fake(void **state) {
  (void)state;
  fake_clock_uninstall();
  return 0;
}

static void base_cfg(resil_dep_config *c, const char *name, const char *alg, uint32_t min,
                     uint32_t max) {
  resil_dep_config_init(c, name);
  c->limit.max_concurrent = max;
  c->adaptive.algorithm = alg;
  c->adaptive.min = min;
  c->adaptive.window_ms = 50;
  c->adaptive.min_samples = 10;
  c->adaptive.baseline_ms = 5000;
  c->timeout_ms = 10000;
  c->breaker.consecutive_failures = 0;
  c->breaker.failure_rate_percent = 100;
  c->breaker.minimum_calls = 1000000;
}

static resil_dep *mk_cfg(const resil_dep_config *c) {
  resil_err err;
  resil_dep *d = resil_dep_new(c, &err);
  if (!d) fail_msg("resil_dep_new: %s", err.msg);
  return d;
}

static uint32_t limit_of(resil_dep *d) {
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  return st.limit;
}

/* A modelled dependency: `cap` calls served at once, each taking svc_ms;
 * more wait in its queue, so k calls at once take svc_ms * max(1, k/cap).
 * drop_over: calls beyond this many at once end as timeouts (0: none). */
typedef struct model {
  double cap, svc_ms;
  uint32_t drop_over;
} model;

/* One round: admit as many calls as the limit lets through (the client
 * always has more work than the limit: saturated), let them take their
 * modelled time, end them. Returns how many were admitted. */
static uint32_t round_trip(resil_dep *d, const model *m) {
  resil_permit p[1024];
  uint32_t k = 0;
  while (k < 1024 && resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[k], NULL) == RESIL_OK) k++;
  double q = (double)k / m->cap;
  double lat = m->svc_ms * (q > 1.0 ? q : 1.0);
  fake_clock_advance_ns((uint64_t)(lat * 1e6));
  for (uint32_t i = 0; i < k; i++)
    resil_dep_done(&p[i], m->drop_over && i >= m->drop_over ? RESIL_E_TIMEOUT : RESIL_OK);
  return k;
}

/* Run rounds for ms of fake time; min/max/mean of the limit seen. */
typedef struct seen {
  uint32_t lo, hi;
  double mean;
} seen;

static seen run_for(resil_dep *d, const model *m, uint64_t ms) {
  uint64_t end = fake_clock_now_ns() + ms * MS;
  seen s = {UINT32_MAX, 0, 0.0};
  double sum = 0;
  unsigned n = 0;
  while (fake_clock_now_ns() < end) {
    round_trip(d, m);
    uint32_t l = limit_of(d);
    if (l < s.lo) s.lo = l;
    if (l > s.hi) s.hi = l;
    sum += l;
    n++;
  }
  s.mean = n ? sum / n : 0;
  return s;
}

/* Gradient: from LIMIT_MIN the limit grows until latency passes tolerance x
 * the unloaded latency, i.e. to about cap x tolerance, and stays there. */
static void gradient_converges_to_the_knee(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "grad-conv", "gradient", 2, 200);
  resil_dep *d = mk_cfg(&c);
  model m = {.cap = 8, .svc_ms = 10};
  assert_int_equal(limit_of(d), 2); /* starts at the minimum */
  run_for(d, &m, 3000);
  seen s = run_for(d, &m, 5000);
  print_message("# gradient, capacity 8, tolerance 1.5: limit %u..%u, mean %.1f\n", s.lo, s.hi,
                s.mean);
  /* the knee is at 8; tolerance 1.5 allows up to 12 (+ its growth step) */
  assert_true(s.lo >= 8);
  assert_true(s.hi <= 17);
  resil_dep_free(d);
}

/* concurrency-limits #134: under sustained saturation a moving baseline
 * follows the queueing latency up and the limit creeps to the ceiling. Run
 * 60 baseline periods saturated: the limit must not drift up. */
static void gradient_no_creep_under_sustained_overload(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "grad-creep", "gradient", 2, 500);
  c.adaptive.baseline_ms = 2000;
  resil_dep *d = mk_cfg(&c);
  model m = {.cap = 8, .svc_ms = 10};
  run_for(d, &m, 4000);
  seen early = run_for(d, &m, 20000);
  seen late = {0};
  for (int i = 0; i < 5; i++) late = run_for(d, &m, 20000);
  print_message("# sustained overload, 120 s: limit early %u..%u (mean %.1f), late %u..%u "
                "(mean %.1f)\n",
                early.lo, early.hi, early.mean, late.lo, late.hi, late.mean);
  assert_true(late.hi <= 17);
  assert_true(late.mean <= early.mean + 1.0);
  resil_dep_free(d);
}

/* A dependency that slows down (not our queue) pulls the limit to the
 * minimum; when it recovers the limit grows back; and if it stays slow,
 * after LIMIT_BASELINE_MS the new latency is the baseline and the limit grows
 * again. */
static void gradient_follows_latency_down_and_back(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "grad-back", "gradient", 2, 64);
  resil_dep *d = mk_cfg(&c);
  model fast = {.cap = 8, .svc_ms = 10};
  run_for(d, &fast, 3000);
  assert_true(limit_of(d) >= 8);
  /* latency x4 whatever the concurrency */
  model slow = {.cap = 1000, .svc_ms = 40};
  seen s = run_for(d, &slow, 1500);
  print_message("# slowed x4: limit down to %u\n", s.lo);
  assert_true(s.lo <= 3);
  seen back = run_for(d, &fast, 2000);
  print_message("# recovered: limit back up to %u\n", back.hi);
  assert_true(back.hi >= 8);
  /* slow for good: within a baseline period (5 s) + a few windows the
   * limit grows past its minimum again (the dependency is not queueing) */
  run_for(d, &slow, 6000);
  seen later = run_for(d, &slow, 2000);
  print_message("# slow for good, after the baseline period: limit %u..%u\n", later.lo, later.hi);
  assert_true(later.hi >= 16);
  resil_dep_free(d);
}

/* AIMD: x backoff on a window with drops, +1 per window without; drops
 * when more than 10 are in flight. */
static void aimd_backs_off_on_drops_and_grows_back(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "aimd", "aimd", 2, 64);
  resil_dep *d = mk_cfg(&c);
  model m = {.cap = 1000, .svc_ms = 10, .drop_over = 10};
  run_for(d, &m, 3000);
  seen s = run_for(d, &m, 5000);
  print_message("# aimd, drops above 10 in flight: limit %u..%u, mean %.1f\n", s.lo, s.hi,
                s.mean);
  assert_true(s.hi <= 12);
  assert_true(s.lo >= 7);
  model ok = {.cap = 1000, .svc_ms = 10};
  seen up = run_for(d, &ok, 3000);
  assert_int_equal(up.hi, 64); /* grows to the ceiling, never past it */
  resil_dep_free(d);
}

/* A window decides only after LIMIT_WINDOW_MS and LIMIT_MIN_SAMPLES calls
 * admitted inside it; calls admitted before it began do not count (Envoy
 * #11579: samples from before a window skewing it). */
static void window_rules(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "window", "gradient", 4, 64);
  c.adaptive.smoothing = 1.0;
  resil_dep *d = mk_cfg(&c);
  resil_permit p[64];
  /* 4 at once (the whole limit: not app-limited), 8 samples (< 10) over a
   * long time: no decision */
  for (int r = 0; r < 2; r++) {
    for (int i = 0; i < 4; i++)
      assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
    fake_clock_advance_ms(100);
    for (int i = 0; i < 4; i++) resil_dep_done(&p[i], RESIL_OK);
  }
  assert_int_equal(limit_of(d), 4);
  /* 4 more: the window has its samples and is long enough: slow start
   * doubles the limit */
  for (int i = 0; i < 4; i++)
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
  fake_clock_advance_ms(10);
  for (int i = 0; i < 4; i++) {
    resil_dep_done(&p[i], RESIL_OK);
    fake_clock_advance_ms(7); /* a window short of samples is looked at again
                                 window_ms / 8 later */
  }
  assert_int_equal(limit_of(d), 8);
  /* settle: a baseline of 10 ms, limit well above 4 */
  model m = {.cap = 1000, .svc_ms = 10};
  run_for(d, &m, 500);
  uint32_t before = limit_of(d);
  assert_true(before >= 16);
  /* 4 calls admitted now, ending 2 s later, after windows of fresh 10 ms
   * calls: their 2 s must not count, so the limit does not fall */
  for (int i = 0; i < 4; i++)
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
  for (int r = 0; r < 200; r++) {
    resil_permit q;
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &q, NULL), RESIL_OK);
    fake_clock_advance_ms(10);
    resil_dep_done(&q, RESIL_OK);
  }
  for (int i = 0; i < 4; i++) resil_dep_done(&p[i], RESIL_OK);
  for (int r = 0; r < 10; r++) { /* the next window: fresh calls only */
    resil_permit q;
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &q, NULL), RESIL_OK);
    fake_clock_advance_ms(10);
    resil_dep_done(&q, RESIL_OK);
  }
  assert_true(limit_of(d) >= before);
  resil_dep_free(d);
}

/* A lowered limit never cancels running calls: admissions are refused
 * until fewer than the new limit are in flight. A raised limit hands its
 * slots to queued callers at once. */
typedef struct waiter_arg {
  resil_dep *d;
  resil_status st;
  resil_permit p;
} waiter_arg;

static void *queued_admit(void *arg) {
  waiter_arg *w = arg;
  w->st = resil_dep_admit(w->d, resil_deadline_in_ms(5000), &w->p, NULL);
  return NULL;
}

static void lowered_limit_waits_for_calls_to_end(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "lowered");
  c.limit.max_concurrent = 4;
  c.limit.max_waiters = 4;
  c.limit.max_wait_ms = 5000;
  resil_dep *d = mk_cfg(&c);
  resil_permit p[4], x;
  for (int i = 0; i < 4; i++)
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
  resil__dep_set_limit(d, 2);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 4); /* nothing cancelled */
  assert_int_equal(st.limit, 2);
  resil_dep_done(&p[0], RESIL_OK);
  resil_dep_done(&p[1], RESIL_OK); /* 2 in flight: still not below 2 */
  waiter_arg w = {.d = d};
  pthread_t th;
  pthread_create(&th, NULL, queued_admit, &w);
  TEST_WAIT_UNTIL((resil_dep_get_stats(d, &st), st.waiters == 1), 2000);
  /* raising the limit lets the queued caller in at once */
  resil__dep_set_limit(d, 3);
  pthread_join(th, NULL);
  assert_int_equal(w.st, RESIL_OK);
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &x, NULL) == RESIL_OK, false);
  resil_dep_done(&w.p, RESIL_OK);
  resil_dep_done(&p[2], RESIL_OK);
  resil_dep_done(&p[3], RESIL_OK);
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &x, NULL), RESIL_OK);
  resil_dep_done(&x, RESIL_OK);
  resil_dep_free(d);
}

/* ---- the invariant under threads (real clock; run it under TSan) -------- */

/* The test's own word: (sequence << 32) | limit. An odd sequence means
 * "changing"; the limit is valid while the sequence is even and the same
 * before and after an admission. */
static _Atomic uint64_t epoch_word;
static _Atomic uint32_t inside;
static _Atomic uint64_t checked, violations, admitted_n;
static _Atomic bool stop_flag;
static _Atomic uint32_t worst_over;

typedef struct hammer_arg {
  resil_dep *d;
} hammer_arg;

static void *hammer(void *arg) {
  hammer_arg *h = arg;
  while (!atomic_load(&stop_flag)) {
    uint64_t w1 = atomic_load(&epoch_word);
    resil_permit p;
    if (resil_dep_admit(h->d, RESIL_DEADLINE_UNSET, &p, NULL) != RESIL_OK) continue;
    uint32_t v = atomic_fetch_add(&inside, 1) + 1;
    uint64_t w2 = atomic_load(&epoch_word);
    atomic_fetch_add(&admitted_n, 1);
    if (w1 == w2 && !((w1 >> 32) & 1)) {
      atomic_fetch_add(&checked, 1);
      if (v > (uint32_t)w1) {
        atomic_fetch_add(&violations, 1);
        uint32_t over = v - (uint32_t)w1, cur = atomic_load(&worst_over);
        while (over > cur && !atomic_compare_exchange_weak(&worst_over, &cur, over)) {
        }
      }
    }
    for (volatile int i = 0; i < 50; i++) {
    }
    atomic_fetch_sub(&inside, 1);
    resil_dep_done(&p, RESIL_OK);
  }
  return NULL;
}

static void in_flight_never_exceeds_a_moving_limit(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "invariant");
  c.limit.max_concurrent = 8;
  resil_dep *d = mk_cfg(&c);
  atomic_store(&epoch_word, 8);
  atomic_store(&inside, 0);
  atomic_store(&checked, 0);
  atomic_store(&violations, 0);
  atomic_store(&admitted_n, 0);
  atomic_store(&stop_flag, false);
  enum { T = 6 };
  pthread_t th[T];
  hammer_arg h = {.d = d};
  for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, hammer, &h);
  uint64_t seq = 0, changes = 0, end = resil_now_ns() + 1500 * MS;
  uint32_t seed = 12345;
  while (resil_now_ns() < end) {
    seed = seed * 1103515245u + 12345u;
    uint32_t lim = 1 + (seed >> 16) % 6;
    atomic_store(&epoch_word, (++seq) << 32); /* changing */
    resil__dep_set_limit(d, lim);
    atomic_store(&epoch_word, (++seq) << 32 | lim);
    changes++;
    for (volatile int i = 0; i < 20000; i++) {
    }
  }
  atomic_store(&stop_flag, true);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  print_message("# %llu limit changes, %llu admissions, %llu checked against a stable limit, "
                "%llu over the limit (worst by %u)\n",
                (unsigned long long)changes, (unsigned long long)atomic_load(&admitted_n),
                (unsigned long long)atomic_load(&checked),
                (unsigned long long)atomic_load(&violations), atomic_load(&worst_over));
  assert_int_equal(atomic_load(&violations), 0);
  assert_true(atomic_load(&checked) >= 1000);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], atomic_load(&admitted_n));
  resil_dep_free(d);
}

/* The same with the real algorithm moving the limit (AIMD with drops). */
static _Atomic bool bad_phase;
static void *hammer_aimd(void *arg) {
  hammer_arg *h = arg;
  unsigned n = 0;
  while (!atomic_load(&stop_flag)) {
    resil_permit p;
    if (resil_dep_admit(h->d, RESIL_DEADLINE_UNSET, &p, NULL) != RESIL_OK) continue;
    resil_dep_stats st;
    if ((++n & 63) == 0) {
      resil_dep_get_stats(h->d, &st);
      if (st.in_flight > st.limit_max) atomic_fetch_add(&violations, 1);
    }
    /* drops only in the "bad" phases the main thread switches */
    resil_dep_done(&p, atomic_load(&bad_phase) && n % 3 == 0 ? RESIL_E_TIMEOUT : RESIL_OK);
  }
  return NULL;
}

static void algorithm_moves_limit_under_threads(void **state) {
  (void)state;
  resil_dep_config c;
  base_cfg(&c, "aimd-threads", "aimd", 1, 16);
  c.adaptive.window_ms = 1;
  c.adaptive.min_samples = 5;
  resil_dep *d = mk_cfg(&c);
  atomic_store(&violations, 0);
  atomic_store(&stop_flag, false);
  enum { T = 4 };
  pthread_t th[T];
  hammer_arg h = {.d = d};
  for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, hammer_aimd, &h);
  uint64_t end = resil_now_ns() + 500 * MS;
  for (int i = 0; resil_now_ns() < end; i++) {
    atomic_store(&bad_phase, (i / 5) % 2 == 1); /* 50 ms good, 50 ms bad */
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  atomic_store(&stop_flag, true);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  print_message("# aimd under 4 threads: limit now %u, %u..%u over 60 s\n", st.limit, st.limit_min,
                st.limit_max);
  assert_int_equal(st.in_flight, 0);
  assert_true(st.limit >= 1 && st.limit <= 16);
  assert_true(st.limit_min < st.limit_max); /* it did move */
  assert_int_equal(atomic_load(&violations), 0);
  resil_dep_free(d);
}

/* ---- events and metrics -------------------------------------------------- */

typedef struct evlog {
  int n;
  resil_event_type type[64];
  char reason[64][24];
  int64_t oldv[64], newv[64];
  char line[64][600];
} evlog;

static void ev_hook(void *ctx, const resil_event *ev) {
  evlog *l = ctx;
  if (l->n >= 64) return;
  l->type[l->n] = ev->type;
  snprintf(l->reason[l->n], sizeof l->reason[0], "%s", ev->reason);
  l->oldv[l->n] = ev->old_value;
  l->newv[l->n] = ev->new_value;
  resil_event_format(ev, true, l->line[l->n], sizeof l->line[0]);
  l->n++;
}

static void limit_events_and_metrics(void **state) {
  (void)state;
  evlog *l = calloc(1, sizeof *l);
  resil_set_event_hook(ev_hook, l);
  resil_dep_config c;
  base_cfg(&c, "limit-ev", "gradient", 2, 64);
  resil_dep *d = mk_cfg(&c);
  model m = {.cap = 8, .svc_ms = 10};
  run_for(d, &m, 3000);
  resil_set_event_hook(NULL, NULL);
  assert_true(l->n >= 2);
  int64_t prev = 2;
  for (int i = 0; i < l->n; i++) {
    assert_int_equal(l->type[i], RESIL_EVENT_LIMIT);
    assert_int_equal(l->oldv[i], prev); /* each event starts where the last ended */
    double moved = (double)(l->newv[i] - l->oldv[i]);
    if (moved < 0) moved = -moved;
    assert_true(moved >= 0.2 * (double)l->oldv[i]); /* only moves of 20 % or more */
    assert_string_equal(l->reason[i], l->newv[i] > l->oldv[i] ? "increased" : "decreased");
    prev = l->newv[i];
  }
  print_message("# %s", l->line[0]);
  assert_non_null(strstr(l->line[0], "\"type\":\"limit\""));
  assert_non_null(strstr(l->line[0], "\"old_value\":2,"));
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.limit_min, 2);
  assert_true(st.limit_max >= st.limit && st.limit >= 8);
  char *txt = NULL;
  assert_int_equal(resil_export_prometheus(&txt, NULL, NULL), RESIL_OK);
  assert_non_null(strstr(txt, "resil_concurrency_limit_min{dependency=\"limit-ev\"} 2\n"));
  char want[128];
  snprintf(want, sizeof want, "resil_concurrency_limit_max{dependency=\"limit-ev\"} %u\n",
           st.limit_max);
  assert_non_null(strstr(txt, want));
  free(txt);
  /* after 60 s with no change the range is the current limit only */
  fake_clock_advance_ms(61000);
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.limit_min, st.limit);
  assert_int_equal(st.limit_max, st.limit);
  resil_dep_free(d);
  free(l);
}

/* ---- throttling ------------------------------------------------------------ */

static void throttle_cfg(resil_dep_config *c, const char *name) {
  resil_dep_config_init(c, name);
  c->throttle.enabled = true;
  c->breaker.failure_rate_percent = 95;
  c->breaker.consecutive_failures = 0;
  c->breaker.minimum_calls = 20;
}

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* SRE-book throttling against a dependency failing 60 % of calls at random:
 * compared with a client that sends everything, resil keeps >= 0.75x the
 * successes while sending <= 0.85x the calls; throttled calls are never
 * failures (go-zero #5551: counting them as failures locks the throttle on)
 * and the breaker, at 95 %, stays closed. */
static void throttle_sheds_a_partial_failure_gracefully(void **state) {
  (void)state;
  evlog *l = calloc(1, sizeof *l);
  resil_set_event_hook(ev_hook, l);
  resil_dep_config c;
  throttle_cfg(&c, "partial");
  resil_dep *d = mk_cfg(&c);
  enum { N = 60000 }; /* 60 s at one call per ms */
  uint64_t naive_ok = 0, sent = 0, ok = 0, throttled = 0, failed = 0;
  for (int i = 0; i < N; i++) {
    if (urand() < 0.4) naive_ok++;
    resil_permit p;
    resil_status st = resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
    if (st == RESIL_E_THROTTLED) {
      throttled++;
    } else {
      assert_int_equal(st, RESIL_OK);
      sent++;
      bool good = urand() < 0.4;
      ok += good;
      failed += !good;
      resil_dep_done(&p, good ? RESIL_OK : RESIL_E_FAILURE);
    }
    fake_clock_advance_ms(1);
  }
  resil_set_event_hook(NULL, NULL);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  print_message("# 60 %% failing: naive sends %d, %llu succeed; resil sends %llu (%.2fx), %llu "
                "succeed (%.2fx), throttled %llu, probability now %.2f\n",
                N, (unsigned long long)naive_ok, (unsigned long long)sent, (double)sent / N,
                (unsigned long long)ok, (double)ok / (double)naive_ok,
                (unsigned long long)throttled, st.throttle_probability);
  assert_true((double)ok >= 0.75 * (double)naive_ok);
  assert_true((double)sent <= 0.85 * (double)N);
  assert_int_equal(st.rejections[RESIL_REJECT_THROTTLED], throttled);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], failed); /* never a failure */
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], ok);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(st.breaker.transitions[RESIL_BREAKER_OPEN], 0);
  assert_true(st.throttle_probability > 0.1 && st.throttle_probability < 0.3);
  /* a "started" event with the probability in percent */
  assert_true(l->n >= 1);
  assert_int_equal(l->type[0], RESIL_EVENT_THROTTLE);
  assert_string_equal(l->reason[0], "started");
  assert_true(l->newv[0] >= 5);
  /* the dependency recovers: within the window (10 s) shedding stops */
  l->n = 0;
  resil_set_event_hook(ev_hook, l);
  for (int i = 0; i < 12000; i++) {
    resil_permit p;
    if (resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL) == RESIL_OK)
      resil_dep_done(&p, RESIL_OK);
    fake_clock_advance_ms(1);
  }
  resil_set_event_hook(NULL, NULL);
  resil_dep_get_stats(d, &st);
  assert_true(st.throttle_probability == 0.0);
  int stopped = 0;
  for (int i = 0; i < l->n; i++)
    if (l->type[i] == RESIL_EVENT_THROTTLE && !strcmp(l->reason[i], "stopped")) stopped++;
  assert_int_equal(stopped, 1);
  resil_err err;
  resil_permit p;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err), RESIL_OK);
  resil_dep_done(&p, RESIL_OK);
  resil_dep_free(d);
  free(l);
}

/* A total outage still opens the breaker with throttling on. */
static void throttle_total_outage_opens_breaker(void **state) {
  (void)state;
  resil_dep_config c;
  throttle_cfg(&c, "outage");
  resil_dep *d = mk_cfg(&c);
  int sent = 0;
  for (int i = 0; i < 2000 && resil_breaker_get_state(resil_dep_breaker(d)) ==
                                   RESIL_BREAKER_CLOSED; i++) {
    resil_permit p;
    resil_err err;
    resil_status st = resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err);
    if (st == RESIL_OK) {
      sent++;
      resil_dep_done(&p, RESIL_E_FAILURE);
    } else {
      assert_int_equal(st, RESIL_E_THROTTLED);
      assert_non_null(strstr(err.msg, "outage: rejected by client-side throttling"));
    }
    fake_clock_advance_ms(1);
  }
  assert_int_equal(resil_breaker_get_state(resil_dep_breaker(d)), RESIL_BREAKER_OPEN);
  print_message("# total outage: breaker open after %d calls sent\n", sent);
  resil_dep_free(d);
}

/* ---- configuration, statuses ------------------------------------------------ */

static void config_is_validated_and_named(void **state) {
  (void)state;
  resil_dep_config c;
  resil_err err;
  resil_dep_config_init(&c, "v");
  c.throttle.enabled = true; /* with the default breaker (50 %, 5 in a row) */
  assert_int_equal(resil_dep_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "breaker.failure_rate_percent: 50 would open the breaker"));
  assert_non_null(strstr(err.msg, "breaker.consecutive_failures: 5 would open"));
  resil_dep_config_init(&c, "v");
  c.adaptive.algorithm = "vegas";
  assert_int_equal(resil_dep_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "limit.adaptive: 'vegas' is not one of off, gradient, aimd"));
  c.adaptive.algorithm = "gradient";
  c.adaptive.min = 65;
  assert_int_equal(resil_dep_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "limit.min: 65 is outside 1..64"));
  /* from the environment, each problem named by its variable */
  const char *env[] = {"RESIL_DEPS=db",
                       "RESIL_DEP_DB_LIMIT_ADAPTIVE=fast",
                       "RESIL_DEP_DB_THROTTLE=on",
                       "RESIL_DEP_DB_THROTTLE_K=0.5",
                       NULL};
  resil_config *cfg = NULL;
  char *report = NULL;
  assert_int_equal(resil_config_load((char **)env, NULL, &cfg, &report, &err), RESIL_E_INVALID);
  assert_non_null(report);
  print_message("# %s\n", report);
  assert_non_null(strstr(report, "RESIL_DEP_DB_LIMIT_ADAPTIVE: 'fast' is not one of"));
  assert_non_null(strstr(report, "RESIL_DEP_DB_THROTTLE_K: 0.5 is outside"));
  assert_non_null(strstr(report, "RESIL_DEP_DB_BREAKER_FAILURE_RATE_PERCENT: 50 would open"));
  free(report);
  resil_config_free(cfg);
  const char *good[] = {"RESIL_DEPS=db",
                        "RESIL_DEP_DB_LIMIT_ADAPTIVE=aimd",
                        "RESIL_DEP_DB_LIMIT_MIN=2",
                        "RESIL_DEP_DB_THROTTLE=on",
                        "RESIL_DEP_DB_BREAKER_FAILURE_RATE_PERCENT=95",
                        "RESIL_DEP_DB_BREAKER_CONSECUTIVE_FAILURES=0",
                        NULL};
  cfg = NULL;
  report = NULL;
  if (resil_config_load((char **)good, NULL, &cfg, &report, &err) != RESIL_OK)
    fail_msg("%s", report ? report : err.msg);
  free(report);
  resil_config_free(cfg);
}

static void throttled_status_keeps_existing_numbers(void **state) {
  (void)state;
  /* existing values never move */
  assert_int_equal(RESIL_E_BREAKER_OPEN, 5);
  assert_int_equal(RESIL_E_RETRY_BUDGET, 11);
  assert_int_equal(RESIL_E_INVALID, 12);
  assert_int_equal(RESIL_E_CLOSED, 15);
  assert_int_equal(RESIL_E_THROTTLED, 16);
  assert_true(resil_status_is_rejection(RESIL_E_THROTTLED));
  assert_int_equal(resil_status_class_of(RESIL_E_THROTTLED), RESIL_CLASS_REJECTED);
  assert_false(resil_status_is_rejection(RESIL_E_INVALID));
  assert_false(resil_status_is_rejection(RESIL_E_CLOSED));
  assert_string_equal(resil_status_name(RESIL_E_THROTTLED), "throttled");
  assert_string_equal(resil_reject_reason_name(RESIL_REJECT_THROTTLED), "throttled");
  assert_string_equal(resil_event_type_name(RESIL_EVENT_LIMIT), "limit");
  assert_string_equal(resil_event_type_name(RESIL_EVENT_THROTTLE), "throttle");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(gradient_converges_to_the_knee, setup_fake, teardown_fake),
      cmocka_unit_test_setup_teardown(gradient_no_creep_under_sustained_overload, setup_fake,
                                      teardown_fake),
      cmocka_unit_test_setup_teardown(gradient_follows_latency_down_and_back, setup_fake,
                                      teardown_fake),
      cmocka_unit_test_setup_teardown(aimd_backs_off_on_drops_and_grows_back, setup_fake,
                                      teardown_fake),
      cmocka_unit_test_setup_teardown(window_rules, setup_fake, teardown_fake),
      cmocka_unit_test(lowered_limit_waits_for_calls_to_end),
      cmocka_unit_test(in_flight_never_exceeds_a_moving_limit),
      cmocka_unit_test(algorithm_moves_limit_under_threads),
      cmocka_unit_test_setup_teardown(limit_events_and_metrics, setup_fake, teardown_fake),
      cmocka_unit_test_setup_teardown(throttle_sheds_a_partial_failure_gracefully, setup_fake,
                                      teardown_fake),
      cmocka_unit_test_setup_teardown(throttle_total_outage_opens_breaker, setup_fake,
                                      teardown_fake),
      cmocka_unit_test(config_is_validated_and_named),
      cmocka_unit_test(throttled_status_keeps_existing_numbers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
