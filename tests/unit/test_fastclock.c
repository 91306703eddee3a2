/* The call path's fast clock (src/fastclock.c) against CLOCK_MONOTONIC, on
 * the real clock: it must agree with resil_now_ns() to within microseconds
 * across calibration and re-anchoring, from several threads at once, never
 * step back by more than that, and follow a fake clock when one is set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h"

/* Agreement bound. The mapping is re-anchored every 100 ms with a slope
 * measured over the process's whole life, so its error is a few hundred ns
 * on a quiet machine; 200 us leaves room for a preempted sampling thread
 * while still catching a wrong scale (1 ppm off is 100 ns per 100 ms; a
 * wrong shift or a stale anchor is off by milliseconds). */
#define AGREE_NS 200000ull
#define RUN_NS 450000000ull /* covers calibration (20 ms) and 4+ re-anchors */

typedef struct result {
  uint64_t samples, worst_ahead, worst_behind, worst_step_back, retries;
} result;

/* Bracket each fast reading between two CLOCK_MONOTONIC readings; a bracket
 * wider than 50 us (the thread was preempted) proves nothing and is retried. */
static void *sampler(void *arg) {
  result *r = arg;
  memset(r, 0, sizeof *r);
  uint64_t start = resil_now_ns(), prev = 0;
  for (;;) {
    uint64_t m1 = resil_now_ns();
    uint64_t f = resil__now_fast_ns();
    uint64_t m2 = resil_now_ns();
    if (m1 - start > RUN_NS) break;
    if (prev && f < prev && prev - f > r->worst_step_back) r->worst_step_back = prev - f;
    prev = f;
    if (m2 - m1 > 50000) {
      r->retries++;
      continue;
    }
    r->samples++;
    if (f > m2 && f - m2 > r->worst_ahead) r->worst_ahead = f - m2;
    if (f < m1 && m1 - f > r->worst_behind) r->worst_behind = m1 - f;
  }
  return NULL;
}

static void fast_clock_agrees_with_monotonic_across_reanchors(void **state) {
  (void)state;
  enum { T = 3 };
  pthread_t th[T];
  result res[T];
  uint64_t anchors0 = resil__fast_clock_anchors(), t0 = resil_now_ns();
  for (int i = 0; i < T; i++) assert_int_equal(pthread_create(&th[i], NULL, sampler, &res[i]), 0);
  for (int i = 0; i < T; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  uint64_t anchors = resil__fast_clock_anchors() - anchors0;
  uint64_t took_ns = resil_now_ns() - t0; /* > RUN_NS when threads started late */
  printf("# %llu anchors published in %llu ms\n", (unsigned long long)anchors,
         (unsigned long long)(took_ns / 1000000));
  /* One per 100 ms of readings: never a storm of re-anchors (each costs
   * three clock_gettime calls), and some at all where the TSC is used. */
  assert_true(anchors <= took_ns / 100000000 + 2);
  if (strcmp(resil__fast_clock_source(), "tsc") == 0) assert_true(anchors >= 2);
  for (int i = 0; i < T; i++) {
    printf("# source %s thread %d: %llu samples (%llu retried), worst ahead %llu ns, behind %llu "
           "ns, step back %llu ns\n",
           resil__fast_clock_source(), i, (unsigned long long)res[i].samples,
           (unsigned long long)res[i].retries, (unsigned long long)res[i].worst_ahead,
           (unsigned long long)res[i].worst_behind, (unsigned long long)res[i].worst_step_back);
    assert_true(res[i].samples > 1000);
    assert_true(res[i].worst_ahead <= AGREE_NS);
    assert_true(res[i].worst_behind <= AGREE_NS);
    assert_true(res[i].worst_step_back <= AGREE_NS);
  }
}

/* After a long idle gap (no reading for longer than an anchor's span) the
 * first reading is still right: it takes the slow path rather than
 * extrapolating far from a stale anchor. */
static void fast_clock_is_right_after_an_idle_gap(void **state) {
  (void)state;
  (void)resil__now_fast_ns();
  struct timespec ts = {0, 250000000}; /* > 2 x 100 ms span */
  nanosleep(&ts, NULL);
  uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
  assert_true(f + AGREE_NS >= m1);
  assert_true(f <= m2 + AGREE_NS);
}

static void fast_clock_follows_a_fake_clock(void **state) {
  (void)state;
  fake_clock_install();
  assert_int_equal(resil__now_fast_ns(), fake_clock_now_ns());
  fake_clock_advance_ms(1500);
  assert_int_equal(resil__now_fast_ns(), fake_clock_now_ns());
  fake_clock_uninstall();
  uint64_t m = resil_now_ns();
  assert_true(resil__now_fast_ns() + AGREE_NS >= m);
}

static void fast_clock_names_its_source(void **state) {
  (void)state;
  const char *s = resil__fast_clock_source();
  assert_true(strcmp(s, "tsc") == 0 || strcmp(s, "clock_gettime") == 0);
#if defined(__x86_64__)
  /* Where the kernel itself reads the TSC, so must we (else no speed-up). */
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  char buf[32] = {0};
  if (f && fgets(buf, sizeof buf, f) && strcmp(buf, "tsc\n") == 0) assert_string_equal(s, "tsc");
  if (f) fclose(f);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fast_clock_agrees_with_monotonic_across_reanchors),
      cmocka_unit_test(fast_clock_is_right_after_an_idle_gap),
      cmocka_unit_test(fast_clock_follows_a_fake_clock),
      cmocka_unit_test(fast_clock_names_its_source),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
