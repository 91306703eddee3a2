/* The circuit breaker, driven by a fake clock: every transition, every trip
 * condition at and below its threshold, generations, backoff and overrides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "resil/resil.h"

#define MS 1000000ull

static int setup(void **state) {
  (void)state;
  fake_clock_install();
  return 0;
}
static int teardown(void **state) {
  (void)state;
  fake_clock_uninstall();
  return 0;
}

/* A config with one trip condition at a time and no jitter. */
static resil_breaker_config only(uint32_t consecutive, uint32_t rate, uint32_t slow_rate) {
  resil_breaker_config c;
  resil_breaker_config_init(&c);
  c.name = "t";
  c.consecutive_failures = consecutive;
  c.failure_rate_percent = rate;
  c.slow_call_rate_percent = slow_rate;
  c.minimum_calls = 10;
  c.window_ms = 10000;
  c.window_buckets = 10;
  c.open_ms = 1000;
  c.open_multiplier = 2.0;
  c.open_max_ms = 5000;
  c.open_jitter_percent = 0;
  c.half_open_probes = 2;
  return c;
}

static resil_breaker *mk(resil_breaker_config c) {
  resil_err err;
  resil_breaker *b = resil_breaker_new(&c, &err);
  assert_non_null(b);
  return b;
}

/* One whole call: acquire and record. Returns acquire's status. */
static resil_status call(resil_breaker *b, resil_status outcome, uint64_t latency_ns) {
  resil_breaker_ticket t;
  resil_status st = resil_breaker_acquire(b, &t);
  if (st == RESIL_OK) resil_breaker_record(b, t, outcome, latency_ns);
  return st;
}

static void trips_at_exactly_n_consecutive_failures(void **state) {
  (void)state;
  resil_breaker *b = mk(only(3, 0, 0));
  assert_int_equal(call(b, RESIL_E_FAILURE, MS), RESIL_OK);
  assert_int_equal(call(b, RESIL_E_TIMEOUT, MS), RESIL_OK);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  assert_int_equal(call(b, RESIL_E_OVERLOAD, MS), RESIL_OK);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.last_trip_reason, RESIL_TRIP_CONSECUTIVE_FAILURES);
  assert_int_equal(st.transitions[RESIL_BREAKER_OPEN], 1);
  resil_breaker_free(b);
}

static void success_resets_consecutive_failures(void **state) {
  (void)state;
  resil_breaker *b = mk(only(3, 0, 0));
  for (int i = 0; i < 10; i++) {
    call(b, RESIL_E_FAILURE, MS);
    call(b, RESIL_E_FAILURE, MS);
    call(b, RESIL_OK, MS);
  }
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  resil_breaker_free(b);
}

static void failure_rate_trips_exactly_at_threshold(void **state) {
  (void)state;
  resil_breaker *b = mk(only(0, 50, 0));
  for (int i = 0; i < 5; i++) call(b, RESIL_OK, MS);
  for (int i = 0; i < 4; i++) call(b, RESIL_E_FAILURE, MS);
  /* 9 calls: below minimum_calls (10) although 44% fail */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  call(b, RESIL_E_FAILURE, MS); /* 5/10 = 50% >= 50% */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.last_trip_reason, RESIL_TRIP_FAILURE_RATE);
  resil_breaker_free(b);
}

static void failure_rate_just_below_threshold_stays_closed(void **state) {
  (void)state;
  resil_breaker *b = mk(only(0, 50, 0));
  /* 6 successes, then 5 failures: 5/11 = 45% < 50% */
  for (int i = 0; i < 6; i++) call(b, RESIL_OK, MS);
  for (int i = 0; i < 5; i++) call(b, RESIL_E_FAILURE, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  resil_breaker_free(b);
}

static void below_minimum_calls_never_trips_on_rate(void **state) {
  (void)state;
  resil_breaker *b = mk(only(0, 10, 0));
  for (int i = 0; i < 9; i++) call(b, RESIL_E_FAILURE, MS); /* 100% of 9 */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  resil_breaker_free(b);
}

static void old_calls_roll_out_of_the_window(void **state) {
  (void)state;
  resil_breaker *b = mk(only(0, 50, 0));
  for (int i = 0; i < 9; i++) call(b, RESIL_E_FAILURE, MS);
  fake_clock_advance_ms(10000); /* a whole window later */
  call(b, RESIL_E_FAILURE, MS);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.window_calls, 1);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  /* calls spread across buckets within one window still add up */
  for (int i = 0; i < 8; i++) {
    fake_clock_advance_ms(1000);
    call(b, RESIL_E_FAILURE, MS);
  }
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.window_calls, 9);
  fake_clock_advance_ms(500);
  call(b, RESIL_E_FAILURE, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  resil_breaker_free(b);
}

static void slow_call_rate_trips_on_slow_successes(void **state) {
  (void)state;
  resil_breaker_config c = only(0, 0, 60);
  c.slow_call_ms = 100;
  resil_breaker *b = mk(c);
  for (int i = 0; i < 4; i++) call(b, RESIL_OK, 10 * MS);
  for (int i = 0; i < 5; i++) call(b, RESIL_OK, 101 * MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  call(b, RESIL_OK, 100 * MS); /* exactly at the threshold is not slow: 5/10 = 50% */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  call(b, RESIL_OK, 5000 * MS); /* 6/11 = 54.5% */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  call(b, RESIL_OK, 5000 * MS); /* 7/12 = 58% */
  call(b, RESIL_OK, 5000 * MS); /* 8/13 = 61.5% >= 60% */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.last_trip_reason, RESIL_TRIP_SLOW_CALL_RATE);
  resil_breaker_free(b);
}

static void call_still_running_past_slow_threshold_counts_slow_when_it_ends(void **state) {
  (void)state;
  resil_breaker_config c = only(0, 0, 100);
  c.slow_call_ms = 200;
  c.minimum_calls = 1;
  resil_breaker *b = mk(c);
  resil_breaker_ticket t;
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_OK);
  fake_clock_advance_ms(300); /* the call is still in flight */
  resil_breaker_record(b, t, RESIL_E_TIMEOUT, 300 * MS);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  assert_int_equal(st.last_trip_reason, RESIL_TRIP_SLOW_CALL_RATE);
  resil_breaker_free(b);
}

static void caller_errors_and_local_rejections_never_trip(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 1, 0));
  for (int i = 0; i < 1000; i++) {
    call(b, RESIL_E_CALLER, MS);
    call(b, RESIL_E_POOL_TIMEOUT, MS);
    call(b, RESIL_E_DEADLINE, MS);
    call(b, RESIL_E_INVALID, MS);
  }
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  assert_int_equal(st.window_calls, 0);
  assert_int_equal(st.consecutive_failures, 0);
  resil_breaker_free(b);
}

static void open_rejects_until_break_duration_then_half_opens(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 0, 0));
  call(b, RESIL_E_FAILURE, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  resil_breaker_ticket t;
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_E_BREAKER_OPEN);
  fake_clock_advance_ms(999);
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_E_BREAKER_OPEN);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  fake_clock_advance_ms(1);
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_OK);
  assert_int_equal(t.probe, 1);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_HALF_OPEN);
  resil_breaker_record(b, t, RESIL_OK, MS);
  resil_breaker_free(b);
}

static void half_open_admits_at_most_k_concurrent_probes(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 0, 0)); /* K = 2 */
  call(b, RESIL_E_FAILURE, MS);
  fake_clock_advance_ms(1000);
  resil_breaker_ticket t1, t2, t3;
  assert_int_equal(resil_breaker_acquire(b, &t1), RESIL_OK);
  assert_int_equal(resil_breaker_acquire(b, &t2), RESIL_OK);
  assert_int_equal(resil_breaker_acquire(b, &t3), RESIL_E_BREAKER_OPEN);
  /* a probe ended by a local rejection gives its slot back, changes nothing */
  resil_breaker_record(b, t1, RESIL_E_POOL_TIMEOUT, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(resil_breaker_acquire(b, &t3), RESIL_OK);
  resil_breaker_record(b, t2, RESIL_OK, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_HALF_OPEN);
  resil_breaker_record(b, t3, RESIL_OK, MS);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.transitions[RESIL_BREAKER_CLOSED], 1);
  assert_int_equal(st.transitions[RESIL_BREAKER_HALF_OPEN], 1);
  assert_int_equal(st.window_calls, 0); /* closing starts a fresh window */
  resil_breaker_free(b);
}

static void probe_failure_reopens_with_a_longer_break(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 0, 0));
  call(b, RESIL_E_FAILURE, MS);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.open_until_ns - st.opened_at_ns, 1000 * MS);
  fake_clock_advance_ms(1000);
  assert_int_equal(call(b, RESIL_E_TIMEOUT, MS), RESIL_OK); /* probe fails */
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.state, RESIL_BREAKER_OPEN);
  assert_int_equal(st.last_trip_reason, RESIL_TRIP_PROBE_FAILED);
  assert_int_equal(st.trip_streak, 2);
  assert_int_equal(st.open_until_ns - st.opened_at_ns, 2000 * MS);
  resil_breaker_free(b);
}

static void break_duration_grows_by_multiplier_up_to_cap(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 0, 0)); /* 1000, x2, cap 5000 */
  uint64_t expect[] = {1000, 2000, 4000, 5000, 5000};
  call(b, RESIL_E_FAILURE, MS);
  for (int i = 0; i < 5; i++) {
    resil_breaker_stats st;
    resil_breaker_get_stats(b, &st);
    assert_int_equal(st.state, RESIL_BREAKER_OPEN);
    assert_int_equal((st.open_until_ns - st.opened_at_ns) / MS, expect[i]);
    fake_clock_advance_ms(expect[i]);
    call(b, RESIL_E_FAILURE, MS); /* failed probe */
  }
  resil_breaker_free(b);
}

static void trip_streak_resets_after_a_healthy_window(void **state) {
  (void)state;
  resil_breaker_config c = only(1, 0, 0);
  c.half_open_probes = 1;
  resil_breaker *b = mk(c);
  call(b, RESIL_E_FAILURE, MS);
  fake_clock_advance_ms(1000);
  call(b, RESIL_OK, MS); /* probe closes it */
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  call(b, RESIL_E_FAILURE, MS); /* flapping: trips again within a window */
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.trip_streak, 2);
  assert_int_equal((st.open_until_ns - st.opened_at_ns) / MS, 2000);
  fake_clock_advance_ms(2000);
  call(b, RESIL_OK, MS);
  fake_clock_advance_ms(10001); /* healthy for a whole window */
  call(b, RESIL_E_FAILURE, MS);
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.trip_streak, 1);
  assert_int_equal((st.open_until_ns - st.opened_at_ns) / MS, 1000);
  resil_breaker_free(b);
}

static void jitter_stays_within_its_percentage(void **state) {
  (void)state;
  resil_breaker_config c = only(1, 0, 0);
  c.open_ms = 10000;
  c.open_max_ms = 10000;
  c.open_jitter_percent = 20;
  resil_breaker *b = mk(c);
  uint64_t lo = UINT64_MAX, hi = 0;
  call(b, RESIL_E_FAILURE, MS);
  for (int i = 0; i < 200; i++) {
    resil_breaker_stats st;
    resil_breaker_get_stats(b, &st);
    uint64_t d = st.open_until_ns - st.opened_at_ns;
    if (d < lo) lo = d;
    if (d > hi) hi = d;
    assert_true(d >= 8000 * MS && d <= 10000 * MS); /* capped at open_max_ms */
    fake_clock_advance_ns(d);
    call(b, RESIL_E_FAILURE, MS);
  }
  assert_true(hi - lo > 100 * MS); /* it does vary */
  resil_breaker_free(b);
}

static void outcome_from_an_older_generation_does_not_move_state(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 0, 0));
  resil_breaker_ticket old_ok, old_fail;
  assert_int_equal(resil_breaker_acquire(b, &old_ok), RESIL_OK);
  assert_int_equal(resil_breaker_acquire(b, &old_fail), RESIL_OK);
  call(b, RESIL_E_FAILURE, MS); /* trips */
  fake_clock_advance_ms(1000);
  resil_breaker_ticket probe;
  assert_int_equal(resil_breaker_acquire(b, &probe), RESIL_OK); /* half-open */
  /* Late results from before the trip: neither may close nor reopen it. */
  resil_breaker_record(b, old_ok, RESIL_OK, 2000 * MS);
  resil_breaker_record(b, old_ok, RESIL_OK, 2000 * MS);
  resil_breaker_record(b, old_fail, RESIL_E_FAILURE, 2000 * MS);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.state, RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(st.probes_in_flight, 1);
  assert_int_equal(st.probe_successes, 0);
  resil_breaker_record(b, probe, RESIL_OK, MS);
  resil_breaker_free(b);
}

static void forced_open_rejects_and_auto_restores_closed(void **state) {
  (void)state;
  resil_breaker *b = mk(only(5, 0, 0));
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN);
  resil_breaker_ticket t;
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_E_BREAKER_OPEN);
  fake_clock_advance_ms(3600000);
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_E_BREAKER_OPEN);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_FORCED_OPEN);
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_AUTO);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_OK);
  resil_breaker_record(b, t, RESIL_OK, MS);
  resil_breaker_free(b);
}

static void disabled_admits_everything_and_never_trips(void **state) {
  (void)state;
  resil_breaker *b = mk(only(1, 1, 0));
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_DISABLE);
  for (int i = 0; i < 100; i++) assert_int_equal(call(b, RESIL_E_FAILURE, MS), RESIL_OK);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_DISABLED);
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_AUTO);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  resil_breaker_free(b);
}

typedef struct hook_log {
  int n;
  resil_breaker_state from[8], to[8];
  resil_trip_reason why[8];
  resil_breaker *b;
} hook_log;

static void hook(void *ctx, const char *name, resil_breaker_state from, resil_breaker_state to,
                 resil_trip_reason why) {
  hook_log *l = ctx;
  assert_string_equal(name, "t");
  /* Called outside the breaker's lock: reading its stats must not deadlock. */
  resil_breaker_stats st;
  resil_breaker_get_stats(l->b, &st);
  assert_int_equal(st.state, to);
  if (l->n < 8) {
    l->from[l->n] = from;
    l->to[l->n] = to;
    l->why[l->n] = why;
  }
  l->n++;
}

static void hook_sees_every_transition_with_its_reason(void **state) {
  (void)state;
  hook_log log = {0};
  resil_breaker_config c = only(2, 0, 0);
  c.half_open_probes = 1;
  c.on_transition = hook;
  c.hook_ctx = &log;
  resil_breaker *b = mk(c);
  log.b = b;
  call(b, RESIL_E_FAILURE, MS);
  call(b, RESIL_E_FAILURE, MS);
  fake_clock_advance_ms(1000);
  call(b, RESIL_E_FAILURE, MS); /* probe fails */
  fake_clock_advance_ms(2000);
  call(b, RESIL_OK, MS); /* probe succeeds */
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_int_equal(log.n, 6);
  resil_breaker_state want_to[] = {RESIL_BREAKER_OPEN,      RESIL_BREAKER_HALF_OPEN,
                                   RESIL_BREAKER_OPEN,      RESIL_BREAKER_HALF_OPEN,
                                   RESIL_BREAKER_CLOSED,    RESIL_BREAKER_FORCED_OPEN};
  for (int i = 0; i < 6; i++) assert_int_equal(log.to[i], want_to[i]);
  assert_int_equal(log.from[0], RESIL_BREAKER_CLOSED);
  assert_int_equal(log.why[0], RESIL_TRIP_CONSECUTIVE_FAILURES);
  assert_int_equal(log.why[2], RESIL_TRIP_PROBE_FAILED);
  assert_int_equal(log.why[5], RESIL_TRIP_FORCED);
  resil_breaker_free(b);
}

static void config_validation_names_every_bad_field(void **state) {
  (void)state;
  resil_breaker_config c;
  resil_breaker_config_init(&c);
  assert_int_equal(resil_breaker_config_validate(&c, NULL, NULL), RESIL_OK);
  c.failure_rate_percent = 140;
  c.window_ms = 50;
  c.window_buckets = 10;
  c.open_ms = 0;
  c.half_open_probes = 0;
  c.open_multiplier = 0.5;
  resil_err err;
  assert_int_equal(resil_breaker_config_validate(&c, "orders: ", &err), RESIL_E_INVALID);
  const char *want[] = {"orders: breaker.failure_rate_percent: 140 is outside 0..100",
                        "breaker.window_ms: 50 ms is too short for 10 buckets",
                        "breaker.open_ms", "breaker.half_open_probes", "breaker.open_multiplier"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(err.msg, want[i])) fail_msg("missing '%s' in '%s'", want[i], err.msg);
  assert_null(resil_breaker_new(&c, &err));
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_null(resil_breaker_new(NULL, &err));
  resil_breaker_config_init(&c);
  c.consecutive_failures = c.failure_rate_percent = c.slow_call_rate_percent = 0;
  assert_int_equal(resil_breaker_config_validate(&c, NULL, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "every trip condition is 0"));
}

static void describe_says_why_it_is_open(void **state) {
  (void)state;
  resil_breaker *b = mk(only(0, 50, 0));
  char buf[200];
  for (int i = 0; i < 10; i++) call(b, RESIL_E_FAILURE, MS);
  resil_breaker_describe(b, buf, sizeof buf);
  assert_non_null(strstr(buf, "failure rate 100% >= 50% over 10 calls"));
  assert_non_null(strstr(buf, "open for"));
  resil_breaker_free(b);
  b = mk(only(3, 0, 0));
  call(b, RESIL_OK, MS);
  resil_breaker_describe(b, buf, sizeof buf);
  assert_non_null(strstr(buf, "closed: 1 calls"));
  assert_string_equal(resil_breaker_state_name(RESIL_BREAKER_HALF_OPEN), "half_open");
  assert_string_equal(resil_trip_reason_name(RESIL_TRIP_SLOW_CALL_RATE), "slow_call_rate");
  resil_breaker_free(b);
}

/* ---- concurrency ---- */

/* Callers that hold their permits: in every round all RACERS threads try
 * to acquire at once and keep what they got until every thread has tried
 * (a barrier), so the admitted count of a round is exactly the number of
 * permits the breaker handed out concurrently, whatever the scheduler does.
 * With half_open_probes = 3 and every slot free at the start of a round,
 * exactly 3 must be admitted; then the holders record an ignored outcome
 * (the breaker stays half-open, the slots come back) before the next round. */
#define RACERS 8
#define ROUNDS 300

typedef struct probe_race {
  resil_breaker *b;
  _Atomic int admitted; /* in the current round */
  int per_round[ROUNDS];
  pthread_barrier_t tried, checked, released;
} probe_race;

static void *probe_racer(void *arg) {
  probe_race *r = arg;
  for (int round = 0; round < ROUNDS; round++) {
    resil_breaker_ticket t;
    bool got = resil_breaker_acquire(r->b, &t) == RESIL_OK;
    if (got) atomic_fetch_add(&r->admitted, 1);
    /* Every thread has tried; the admitted ones still hold their slot. */
    if (pthread_barrier_wait(&r->tried) == PTHREAD_BARRIER_SERIAL_THREAD) {
      r->per_round[round] = atomic_exchange(&r->admitted, 0);
    }
    pthread_barrier_wait(&r->checked);
    if (got) resil_breaker_record(r->b, t, RESIL_E_CALLER, MS); /* ignored: stays half-open */
    pthread_barrier_wait(&r->released);
  }
  return NULL;
}

static void half_open_probe_limit_holds_under_concurrent_callers(void **state) {
  (void)state;
  resil_breaker_config c = only(1, 0, 0);
  c.half_open_probes = 3;
  resil_breaker *b = mk(c);
  call(b, RESIL_E_FAILURE, MS);
  fake_clock_advance_ms(1000);
  static probe_race r;
  memset(&r, 0, sizeof r);
  r.b = b;
  pthread_barrier_init(&r.tried, NULL, RACERS);
  pthread_barrier_init(&r.checked, NULL, RACERS);
  pthread_barrier_init(&r.released, NULL, RACERS);
  pthread_t th[RACERS];
  for (int i = 0; i < RACERS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, probe_racer, &r), 0);
  for (int i = 0; i < RACERS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&r.tried);
  pthread_barrier_destroy(&r.checked);
  pthread_barrier_destroy(&r.released);
  for (int round = 0; round < ROUNDS; round++)
    if (r.per_round[round] != 3)
      fail_msg("round %d: %d of %d concurrent callers admitted, half_open_probes is 3", round,
               r.per_round[round], RACERS);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.state, RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(st.probes_in_flight, 0);
  resil_breaker_free(b);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(trips_at_exactly_n_consecutive_failures),
      T(success_resets_consecutive_failures),
      T(failure_rate_trips_exactly_at_threshold),
      T(failure_rate_just_below_threshold_stays_closed),
      T(below_minimum_calls_never_trips_on_rate),
      T(old_calls_roll_out_of_the_window),
      T(slow_call_rate_trips_on_slow_successes),
      T(call_still_running_past_slow_threshold_counts_slow_when_it_ends),
      T(caller_errors_and_local_rejections_never_trip),
      T(open_rejects_until_break_duration_then_half_opens),
      T(half_open_admits_at_most_k_concurrent_probes),
      T(probe_failure_reopens_with_a_longer_break),
      T(break_duration_grows_by_multiplier_up_to_cap),
      T(trip_streak_resets_after_a_healthy_window),
      T(jitter_stays_within_its_percentage),
      T(outcome_from_an_older_generation_does_not_move_state),
      T(forced_open_rejects_and_auto_restores_closed),
      T(disabled_admits_everything_and_never_trips),
      T(hook_sees_every_transition_with_its_reason),
      T(config_validation_names_every_bad_field),
      T(describe_says_why_it_is_open),
      T(half_open_probe_limit_holds_under_concurrent_callers),
  };
  return cmocka_run_group_tests_name("breaker", tests, NULL, NULL);
}
