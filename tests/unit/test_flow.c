/* The outbound rate limit (GCRA token bucket) and pauses after server
 * pushback (src/flow.c), and the memory gauge: the bucket math on a fake
 * clock, waiting only within the deadline and limit.max_wait_ms, rejections
 * counted under their reason and never as failures, pause events and
 * metrics, and a multithreaded test (run under TSan too) that concurrent
 * admits never exceed burst + rate x t. */
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
  resil_set_event_hook(NULL, NULL);
  return 0;
}

static resil_dep *mk(const char *name, uint32_t per_s, uint32_t burst, uint32_t max_wait_ms) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.limit.max_concurrent = 1000;
  c.limit.max_wait_ms = max_wait_ms;
  c.rate_limit.per_s = per_s;
  c.rate_limit.burst = burst;
  c.timeout_ms = 60000;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("resil_dep_new: %s", err.msg);
  return d;
}

/* Admit and end at once: the status of the admit. */
static resil_status call_once(resil_dep *d, resil_deadline dl, resil_err *err) {
  resil_permit p;
  resil_status st = resil_dep_admit(d, dl, &p, err);
  if (st == RESIL_OK) resil_dep_done(&p, RESIL_OK);
  return st;
}

static void assert_no_failure(resil_dep *d) {
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_TIMEOUT], 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_OVERLOAD], 0);
  assert_int_equal(st.breaker.window_failures, 0);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
}

static uint64_t rejected(resil_dep *d, resil_reject_reason r) {
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  return st.rejections[r];
}

/* ---- statuses ----------------------------------------------------------- */

static void new_statuses_are_rejections_with_names(void **state) {
  (void)state;
  assert_true(resil_status_is_rejection(RESIL_E_RATE_LIMITED));
  assert_true(resil_status_is_rejection(RESIL_E_PAUSED));
  assert_int_equal(resil_status_class_of(RESIL_E_RATE_LIMITED), RESIL_CLASS_REJECTED);
  assert_int_equal(resil_status_class_of(RESIL_E_PAUSED), RESIL_CLASS_REJECTED);
  assert_string_equal(resil_status_name(RESIL_E_RATE_LIMITED), "rate_limited");
  assert_string_equal(resil_status_name(RESIL_E_PAUSED), "paused");
  assert_string_equal(resil_reject_reason_name(RESIL_REJECT_RATE_LIMITED), "rate_limited");
  assert_string_equal(resil_reject_reason_name(RESIL_REJECT_PAUSED), "paused");
  /* Earlier values did not move, and the rest of the table still holds. */
  assert_int_equal(RESIL_E_CLOSED, 15);
  assert_int_equal(RESIL_REJECT_RETRY_BUDGET, 6);
  for (int s = 0; s < RESIL_STATUS_COUNT_; s++) {
    bool want = (s >= RESIL_E_BREAKER_OPEN && s <= RESIL_E_RETRY_BUDGET) ||
                s == RESIL_E_THROTTLED || s == RESIL_E_RATE_LIMITED || s == RESIL_E_PAUSED;
    assert_int_equal(resil_status_is_rejection((resil_status)s), want);
  }
  assert_false(resil_status_is_rejection(RESIL_STATUS_COUNT_));
}

/* ---- the bucket --------------------------------------------------------- */

static void bucket_gives_burst_then_one_token_per_interval(void **state) {
  (void)state;
  resil_dep *d = mk("bucket", 10, 3, 0); /* 100 ms per token, 3 at once, no waiting */
  resil_err err;
  for (int i = 0; i < 3; i++) assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, &err), RESIL_E_RATE_LIMITED);
  assert_non_null(strstr(err.msg, "bucket: rejected, outbound rate limit 10/s (burst 3)"));
  fake_clock_advance_ms(99);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_RATE_LIMITED);
  fake_clock_advance_ms(1); /* the 4th token */
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_RATE_LIMITED);
  /* A quiet spell refills the bucket up to the burst, not beyond. */
  fake_clock_advance_ms(5000);
  for (int i = 0; i < 3; i++) assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_RATE_LIMITED);
  /* Over 2 s at 10/s from a full bucket: exactly 3 + 20 calls pass. */
  fake_clock_advance_ms(5000);
  int ok = 0;
  for (int ms = 0; ms <= 2000; ms++) {
    while (call_once(d, RESIL_DEADLINE_UNSET, NULL) == RESIL_OK) ok++;
    fake_clock_advance_ms(1);
  }
  assert_int_equal(ok, 3 + 20);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 3 + 1 + 3 + 23);
  assert_int_equal(st.rejections[RESIL_REJECT_RATE_LIMITED], 1 + 1 + 1 + 1 + 2001);
  assert_int_equal(st.rate_limit_per_s, 10);
  assert_int_equal(st.rate_limit_burst, 3);
  assert_no_failure(d);
  resil_dep_free(d);
}

static void rate_limit_off_never_limits(void **state) {
  (void)state;
  resil_dep *d = mk("unlimited", 0, 1, 0);
  for (int i = 0; i < 10000; i++)
    assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rate_limit_per_s, 0);
  assert_int_equal(st.rejections[RESIL_REJECT_RATE_LIMITED], 0);
  resil_dep_free(d);
}

/* A thread that admits once (on the fake clock) and notes when it got its
 * answer. */
typedef struct waiter_arg {
  resil_dep *d;
  resil_deadline dl;
  resil_status st;
  uint64_t at;
  _Atomic int done;
} waiter_arg;

static void *admit_thread(void *p) {
  waiter_arg *a = p;
  resil_permit pm;
  a->st = resil_dep_admit(a->d, a->dl, &pm, NULL);
  a->at = fake_clock_now_ns();
  if (a->st == RESIL_OK) resil_dep_done(&pm, RESIL_OK);
  atomic_store(&a->done, 1);
  return NULL;
}

/* Start a thread admitting to d with deadline dl; advance the fake clock in
 * 10 ms steps (letting the thread see each) up to `advance_ms` or until it
 * answered. */
static void run_waiter(waiter_arg *a, resil_dep *d, resil_deadline dl, unsigned advance_ms) {
  memset(a, 0, sizeof *a);
  a->d = d;
  a->dl = dl;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, admit_thread, a), 0);
  for (unsigned ms = 0; ms < advance_ms && !atomic_load(&a->done); ms += 10) {
    test_sleep_ms(3);
    fake_clock_advance_ms(10);
  }
  assert_true(TEST_WAIT_UNTIL(atomic_load(&a->done), 5000));
  pthread_join(th, NULL);
}

static void a_call_waits_for_its_token_within_max_wait(void **state) {
  (void)state;
  resil_dep *d = mk("waits", 10, 1, 150); /* 100 ms per token; wait up to 150 ms */
  uint64_t t0 = fake_clock_now_ns();
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  waiter_arg a;
  run_waiter(&a, d, RESIL_DEADLINE_UNSET, 1000);
  assert_int_equal(a.st, RESIL_OK);
  assert_true(a.at >= t0 + 100 * MS); /* not before its token */
  assert_no_failure(d);
  resil_dep_free(d);

  /* With max_wait 50 ms, a call whose token is 100 ms away is rejected at
   * once (the clock did not move), leaving the bucket as it was; 50 ms
   * later the same wait is allowed. */
  d = mk("waits-less", 10, 1, 50);
  t0 = fake_clock_now_ns();
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_RATE_LIMITED);
  assert_int_equal(fake_clock_now_ns(), t0);
  fake_clock_advance_ms(50);
  run_waiter(&a, d, RESIL_DEADLINE_UNSET, 1000);
  assert_int_equal(a.st, RESIL_OK);
  assert_true(a.at >= t0 + 100 * MS);
  assert_int_equal(rejected(d, RESIL_REJECT_RATE_LIMITED), 1);
  assert_no_failure(d);
  resil_dep_free(d);
}

static void the_deadline_bounds_the_wait_for_a_token(void **state) {
  (void)state;
  resil_dep *d = mk("deadline-bound", 10, 1, 1000); /* max wait 1 s: the deadline binds */
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  uint64_t t0 = fake_clock_now_ns();
  /* The token is 100 ms away; a deadline in 50 ms cannot wait for it. */
  resil_err err;
  assert_int_equal(call_once(d, resil_deadline_in_ms(50), &err), RESIL_E_RATE_LIMITED);
  assert_int_equal(fake_clock_now_ns(), t0); /* at once */
  assert_int_equal(rejected(d, RESIL_REJECT_RATE_LIMITED), 1);
  /* A deadline in 150 ms can. */
  waiter_arg a;
  run_waiter(&a, d, resil_deadline_in_ms(150), 1000);
  assert_int_equal(a.st, RESIL_OK);
  assert_true(a.at >= t0 + 100 * MS);
  assert_no_failure(d);
  resil_dep_free(d);
}

/* ---- pauses -------------------------------------------------------------- */

typedef struct rec {
  pthread_mutex_t mu;
  int n;
  resil_event_type type[8];
  char reason[8][32];
  int64_t oldv[8], newv[8];
  char message[8][128];
} rec;

static void record(void *ctx, const resil_event *ev) {
  rec *r = ctx;
  pthread_mutex_lock(&r->mu);
  if (r->n < 8) {
    r->type[r->n] = ev->type;
    snprintf(r->reason[r->n], sizeof r->reason[0], "%s", ev->reason);
    snprintf(r->message[r->n], sizeof r->message[0], "%s", ev->message);
    r->oldv[r->n] = ev->old_value;
    r->newv[r->n] = ev->new_value;
    char line[1024];
    assert_true(resil_event_format(ev, true, line, sizeof line) > 0);
    assert_non_null(strstr(line, "\"type\":\"pause\""));
    r->n++;
  }
  pthread_mutex_unlock(&r->mu);
}

static void pause_rejects_every_call_until_it_ends_never_as_failure(void **state) {
  (void)state;
  static rec r = {.mu = PTHREAD_MUTEX_INITIALIZER};
  r.n = 0;
  resil_set_event_hook(record, &r);
  resil_dep *d = mk("paused", 0, 1, 0); /* no waiting: the clock stands still */
  assert_int_equal(resil_dep_pause(d, 2000, "retry_after", "HTTP 429, Retry-After: 2"), 2000);
  resil_err err;
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, &err), RESIL_E_PAUSED);
  assert_non_null(strstr(err.msg, "paused: rejected, paused after the dependency pushed back"));
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.pause_remaining_ms, 2000);
  assert_int_equal(st.pauses, 1);
  fake_clock_advance_ms(1500);
  assert_int_equal(resil_dep_pause_remaining_ms(d), 500);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_PAUSED);
  /* A shorter pause does not shorten it. */
  assert_int_equal(resil_dep_pause(d, 100, "retry_after", NULL), 0);
  assert_int_equal(resil_dep_pause_remaining_ms(d), 500);
  fake_clock_advance_ms(499);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_PAUSED);
  fake_clock_advance_ms(1);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.pause_remaining_ms, 0);
  assert_int_equal(st.rejections[RESIL_REJECT_PAUSED], 3);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 1);
  assert_no_failure(d);
  /* The events: the start with the server's words, then the end. */
  pthread_mutex_lock(&r.mu);
  assert_int_equal(r.n, 2);
  assert_int_equal(r.type[0], RESIL_EVENT_PAUSE);
  assert_string_equal(r.reason[0], "retry_after");
  assert_string_equal(r.message[0], "HTTP 429, Retry-After: 2");
  assert_int_equal(r.newv[0], 2000);
  assert_int_equal(r.type[1], RESIL_EVENT_PAUSE);
  assert_string_equal(r.reason[1], "pause_elapsed");
  assert_int_equal(r.oldv[1], 2000);
  assert_int_equal(r.newv[1], 0);
  pthread_mutex_unlock(&r.mu);
  /* Prometheus shows the pause and the rejections. */
  assert_int_equal(resil_dep_pause(d, 700, "retry_after", NULL), 700);
  char *text = NULL;
  assert_int_equal(resil_export_prometheus(&text, NULL, NULL), RESIL_OK);
  assert_non_null(strstr(text, "resil_pause_remaining_seconds{dependency=\"paused\"} 0.700"));
  assert_non_null(strstr(text, "resil_pauses_total{dependency=\"paused\"} 2"));
  assert_non_null(strstr(text, "resil_rejections_total{dependency=\"paused\",reason=\"paused\"} 3"));
  free(text);
  resil_dep_unpause(d);
  assert_int_equal(resil_dep_pause_remaining_ms(d), 0);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  pthread_mutex_lock(&r.mu);
  assert_int_equal(r.n, 4);
  assert_string_equal(r.reason[3], "operator");
  pthread_mutex_unlock(&r.mu);
  resil_set_event_hook(NULL, NULL);
  resil_dep_free(d);
}

static void pause_is_capped_and_pushback_without_time_is_opt_in(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "capped");
  assert_int_equal(c.pushback.max_pause_ms, 30000);
  assert_int_equal(c.pushback.pause_ms, 0);
  resil_dep *d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  /* Retry-After: 3600 is capped at pushback.max_pause_ms. */
  assert_int_equal(resil_dep_pause(d, 3600000, "retry_after", NULL), 30000);
  assert_int_equal(resil_dep_pause_remaining_ms(d), 30000);
  resil_dep_unpause(d);
  /* Pushback that names no time does nothing while pushback.pause_ms is 0. */
  assert_int_equal(resil_dep_pushback(d, "overload", "BUSY"), 0);
  assert_int_equal(resil_dep_pause_remaining_ms(d), 0);
  assert_int_equal(resil_dep_pause(d, 0, "retry_after", NULL), 0);
  resil_dep_free(d);

  c.name = "short-pushback";
  c.pushback.pause_ms = 250;
  d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  assert_int_equal(resil_dep_pushback(d, "overload", "LOADING"), 250);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_PAUSED);
  fake_clock_advance_ms(250);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  resil_dep_free(d);

  c.name = "ignores-pushback";
  c.pushback.pause_ms = 0;
  c.pushback.max_pause_ms = 0;
  d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  assert_int_equal(resil_dep_pause(d, 2000, "retry_after", NULL), 0);
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_OK);
  resil_dep_free(d);
}

static void a_call_waits_out_a_pause_ending_within_its_wait(void **state) {
  (void)state;
  resil_dep *d = mk("short-pause", 0, 1, 200);
  uint64_t t0 = fake_clock_now_ns();
  assert_int_equal(resil_dep_pause(d, 100, "retry_after", NULL), 100);
  waiter_arg a;
  run_waiter(&a, d, RESIL_DEADLINE_UNSET, 1000);
  assert_int_equal(a.st, RESIL_OK);
  assert_true(a.at >= t0 + 100 * MS);
  /* One ending after the allowed wait is rejected at once. */
  assert_int_equal(resil_dep_pause(d, 300, "retry_after", NULL), 300);
  uint64_t t1 = fake_clock_now_ns();
  assert_int_equal(call_once(d, RESIL_DEADLINE_UNSET, NULL), RESIL_E_PAUSED);
  assert_int_equal(fake_clock_now_ns(), t1);
  /* and so is one ending after the call's deadline */
  assert_int_equal(call_once(d, resil_deadline_in_ms(50), NULL), RESIL_E_PAUSED);
  assert_int_equal(rejected(d, RESIL_REJECT_PAUSED), 2);
  assert_no_failure(d);
  resil_dep_free(d);
}

/* ---- memory gauge and bound ------------------------------------------------ */

static void memory_gauge_and_bound_are_exported(void **state) {
  (void)state;
  resil_dep *d = mk("mem", 0, 1, 10);
  resil_dep_memory_add(d, 1000);
  resil_dep_memory_add(d, 500);
  resil_dep_memory_add(d, -400);
  resil_dep_set_memory_bound(d, 123456);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.memory_bytes, 1100);
  assert_int_equal(st.memory_bound_bytes, 123456);
  char *text = NULL;
  assert_int_equal(resil_export_prometheus(&text, NULL, NULL), RESIL_OK);
  assert_non_null(strstr(text, "resil_memory_bytes{dependency=\"mem\"} 1100\n"));
  assert_non_null(strstr(text, "resil_memory_bound_bytes{dependency=\"mem\"} 123456\n"));
  assert_non_null(strstr(text, "resil_memory_process_bytes 1100\n"));
  free(text);
  assert_int_equal(resil_export_json(&text, NULL, NULL), RESIL_OK);
  assert_non_null(strstr(text, "\"memory_bytes\":1100,\"memory_bound_bytes\":123456"));
  free(text);
  resil_dep_memory_add(d, -1100);
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.memory_bytes, 0);
  resil_dep_free(d);

  /* The core's bound grows with what the config lets it hold. */
  resil_dep_config c;
  resil_dep_config_init(&c, "b");
  uint64_t base = resil_dep_config_memory_bound(&c);
  assert_true(base > 1000);
  c.limit.max_waiters = 1000;
  assert_true(resil_dep_config_memory_bound(&c) > base);
  c.limit.max_waiters = 0;
  c.breaker.window_buckets = 100;
  assert_true(resil_dep_config_memory_bound(&c) > base);
}

/* ---- configuration ---------------------------------------------------------- */

static void config_keys_set_and_validate_the_limiter(void **state) {
  (void)state;
  char *const good[] = {(char *)"RESIL_DEPS=api", (char *)"RESIL_DEP_API_RATE_LIMIT_PER_S=100",
                  (char *)"RESIL_DEP_API_RATE_LIMIT_BURST=20", (char *)"RESIL_DEP_API_PUSHBACK_MAX_PAUSE_MS=10s",
                  (char *)"RESIL_DEP_API_PUSHBACK_PAUSE_MS=200ms", NULL};
  resil_config *cfg = NULL;
  resil_err err;
  assert_int_equal(resil_config_load(good, NULL, &cfg, NULL, &err), RESIL_OK);
  resil_dep_config *dc = resil_config_find(cfg, "api", NULL);
  assert_non_null(dc);
  assert_int_equal(dc->rate_limit.per_s, 100);
  assert_int_equal(dc->rate_limit.burst, 20);
  assert_int_equal(dc->pushback.max_pause_ms, 10000);
  assert_int_equal(dc->pushback.pause_ms, 200);
  assert_true(resil_config_memory_bound(cfg, 0) >= resil_dep_config_memory_bound(dc));
  resil_config_free(cfg);

  char *const bad[] = {(char *)"RESIL_DEPS=api", (char *)"RESIL_DEP_API_RATE_LIMIT_PER_S=100",
                 (char *)"RESIL_DEP_API_RATE_LIMIT_BURST=0", (char *)"RESIL_DEP_API_PUSHBACK_MAX_PAUSE_MS=1s",
                 (char *)"RESIL_DEP_API_PUSHBACK_PAUSE_MS=2s", NULL};
  char *report = NULL;
  assert_int_equal(resil_config_load(bad, NULL, &cfg, &report, &err), RESIL_E_INVALID);
  assert_non_null(report);
  assert_non_null(strstr(report, "RESIL_DEP_API_RATE_LIMIT_BURST: 0 is outside 1..1000000"));
  assert_non_null(strstr(report, "RESIL_DEP_API_PUSHBACK_PAUSE_MS: 2000 ms is above "
                                 "pushback.max_pause_ms 1000 ms"));
  free(report);
}

/* ---- concurrency (TSan) ------------------------------------------------------ */

typedef struct stress {
  resil_dep *d;
  uint64_t until_ns;
  _Atomic uint64_t ok, limited, other;
} stress;

static void *stress_thread(void *p) {
  stress *s = p;
  while (resil_now_ns() < s->until_ns) {
    resil_permit pm;
    resil_status st = resil_dep_admit(s->d, resil_deadline_in_ms(1000), &pm, NULL);
    if (st == RESIL_OK) {
      resil_dep_done(&pm, RESIL_OK);
      atomic_fetch_add(&s->ok, 1);
    } else if (st == RESIL_E_RATE_LIMITED) {
      atomic_fetch_add(&s->limited, 1);
    } else {
      atomic_fetch_add(&s->other, 1);
    }
  }
  return NULL;
}

/* Threads hammering one limiter, waiting (max_wait 20 ms) or not (0): the
 * calls admitted over the whole run never exceed burst + rate x elapsed,
 * every call is either admitted or rate_limited, and the counters agree. */
static void concurrent_admits_never_exceed_burst_plus_rate_times_t(void **state) {
  (void)state;
  const uint32_t rate = 2000, burst = 5;
  const uint32_t waits[] = {20, 0};
  for (size_t w = 0; w < 2; w++) {
    char name[32];
    snprintf(name, sizeof name, "stress-%u", waits[w]);
    resil_dep *d = mk(name, rate, burst, waits[w]);
    stress s = {.d = d};
    enum { NT = 4 };
    pthread_t th[NT];
    uint64_t t0 = resil_now_ns();
    s.until_ns = t0 + 300 * MS;
    for (int i = 0; i < NT; i++) assert_int_equal(pthread_create(&th[i], NULL, stress_thread, &s), 0);
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    uint64_t elapsed = resil_now_ns() - t0;
    uint64_t ok = atomic_load(&s.ok), limited = atomic_load(&s.limited);
    double cap = burst + (double)rate * (double)elapsed / 1e9;
    fprintf(stderr, "# max_wait %u ms: %llu admitted, %llu rate_limited in %.1f ms (cap %.1f)\n",
            waits[w], (unsigned long long)ok, (unsigned long long)limited, elapsed / 1e6, cap);
    assert_true((double)ok <= cap);
    assert_true(ok >= 50); /* the limiter lets calls through */
    assert_int_equal(atomic_load(&s.other), 0);
    if (waits[w] == 0) assert_true(limited > 0); /* 4 threads outrun 2000/s without waiting */
    resil_dep_stats st;
    resil_dep_get_stats(d, &st);
    assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], ok);
    assert_int_equal(st.rejections[RESIL_REJECT_RATE_LIMITED], limited);
    assert_no_failure(d);
    resil_dep_free(d);
  }
}

int main(void) {
#define F(f) cmocka_unit_test_setup_teardown(f, setup_fake, teardown_fake)
#define R(f) cmocka_unit_test(f)
  const struct CMUnitTest tests[] = {
      R(new_statuses_are_rejections_with_names),
      F(bucket_gives_burst_then_one_token_per_interval),
      F(rate_limit_off_never_limits),
      F(a_call_waits_for_its_token_within_max_wait),
      F(the_deadline_bounds_the_wait_for_a_token),
      F(pause_rejects_every_call_until_it_ends_never_as_failure),
      F(pause_is_capped_and_pushback_without_time_is_opt_in),
      F(a_call_waits_out_a_pause_ending_within_its_wait),
      R(memory_gauge_and_bound_are_exported),
      R(config_keys_set_and_validate_the_limiter),
      R(concurrent_admits_never_exceed_burst_plus_rate_times_t),
  };
  return cmocka_run_group_tests_name("flow", tests, NULL, NULL);
}
