/* The call path's fast clock (src/fastclock.c) against CLOCK_MONOTONIC, on
 * the real clock. Each test picks its clock path itself (RESIL_CLOCK, then
 * resil__fast_clock_test_reset()), so both paths run on any x86-64 machine
 * whatever its kernel clocksource: the TSC path (forced) must agree with
 * resil_now_ns() to within microseconds across calibration and re-anchoring,
 * from several threads at once and after idle gaps, never step back by more
 * than that, and fall back to clock_gettime for good when its TSC stops
 * agreeing (injected); the portable path must be clock_gettime itself; both
 * follow a fake clock when one is set. And clock_gettime as the core calls
 * it, straight into the vDSO (src/vdso.c), must be the kernel's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <time.h>
#include <cmocka.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "fake_clock.h"
#include "internal.h"

/* Agreement bound. The mapping is re-anchored every 100 ms with a slope
 * measured over the process's whole life, so its error is a few hundred ns
 * on a quiet machine; 200 us leaves room for a preempted sampling thread
 * while still catching a wrong scale (1 ppm off is 100 ns per 100 ms; a
 * wrong shift or a stale anchor is off by milliseconds). */
#define AGREE_NS 200000ull
#define RUN_NS 450000000ull /* covers 4+ re-anchors */

#if defined(__x86_64__)
#define X86 1
#else
#define X86 0
#endif

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Start the fast clock afresh with RESIL_CLOCK=mode (NULL: unset). */
static void use_clock(const char *mode) {
  if (mode)
    setenv("RESIL_CLOCK", mode, 1);
  else
    unsetenv("RESIL_CLOCK");
  resil__fast_clock_test_reset();
}

/* Read the fast clock until it leaves "calibrating" (at most 5 s: a loaded
 * machine may refuse samples for a while); returns how long that took. */
static uint64_t calibrate(void) {
  uint64_t t0 = resil_now_ns();
  (void)resil__now_fast_ns();
  while (strcmp(resil__fast_clock_state(), "calibrating") == 0 &&
         resil_now_ns() - t0 < 5000000000ull) {
    (void)resil__now_fast_ns();
    sleep_ms(1);
  }
  return resil_now_ns() - t0;
}

/* The TSC path forced and calibrated; false (test skipped) only off x86-64,
 * where there is no TSC path. */
static bool force_tsc(void) {
  use_clock("tsc");
  if (!X86) {
    assert_string_equal(resil__fast_clock_state(), "portable");
    printf("# not x86-64: no TSC path to test (%s)\n", resil__fast_clock_why());
    return false;
  }
  calibrate();
  printf("# %s: %s\n", resil__fast_clock_state(), resil__fast_clock_why());
  assert_string_equal(resil__fast_clock_state(), "tsc");
  assert_string_equal(resil__fast_clock_source(), "tsc");
  return true;
}

/* m1 <= f <= m2 within AGREE_NS. */
static void assert_bracketed(void) {
  uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
  assert_true(f + AGREE_NS >= m1);
  assert_true(f <= m2 + AGREE_NS);
}

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

static void run_samplers(result *res, int n, uint64_t *anchors, uint64_t *took_ns) {
  pthread_t th[8];
  uint64_t anchors0 = resil__fast_clock_anchors(), t0 = resil_now_ns();
  for (int i = 0; i < n; i++) assert_int_equal(pthread_create(&th[i], NULL, sampler, &res[i]), 0);
  for (int i = 0; i < n; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  *anchors = resil__fast_clock_anchors() - anchors0;
  *took_ns = resil_now_ns() - t0; /* > RUN_NS when threads started late */
  for (int i = 0; i < n; i++) {
    printf("# %s thread %d: %llu samples (%llu retried), worst ahead %llu ns, behind %llu "
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

/* The decision taken at first use, for every kind of machine (pure). */
static void clock_choice_follows_cpu_kernel_and_env(void **state) {
  (void)state;
  char why[256];
  /* Firecracker / Fargate: kvm-clock chosen, invariant TSC still offered */
  assert_true(resil__fast_clock_choose(NULL, true, true, "kvm-clock", "kvm-clock tsc acpi_pm",
                                       why, sizeof why));
  assert_non_null(strstr(why, "kvm-clock"));
  assert_true(resil__fast_clock_choose("auto", true, true, "tsc", "tsc kvm-clock", why, sizeof why));
  assert_true(resil__fast_clock_choose("", true, true, "xen", "tsc xen", why, sizeof why));
  /* the kernel marked the TSC unstable (gone from the list), or it is not invariant */
  assert_false(resil__fast_clock_choose(NULL, true, true, "kvm-clock", "kvm-clock", why, sizeof why));
  assert_non_null(strstr(why, "does not offer"));
  assert_false(resil__fast_clock_choose(NULL, true, true, "kvm-clock", "kvm-clocktsc", why, sizeof why));
  assert_false(resil__fast_clock_choose(NULL, true, false, "kvm-clock", "kvm-clock tsc", why,
                                        sizeof why));
  assert_false(resil__fast_clock_choose(NULL, true, true, NULL, NULL, why, sizeof why));
  assert_non_null(strstr(why, "unknown"));
  /* forced: the TSC whenever there is one, the kernel's opinion aside */
  assert_true(resil__fast_clock_choose("tsc", true, false, "hpet", "hpet", why, sizeof why));
  assert_non_null(strstr(why, "NOT invariant"));
  assert_false(resil__fast_clock_choose("tsc", false, false, "hpet", "hpet", why, sizeof why));
  assert_false(resil__fast_clock_choose("portable", true, true, "tsc", "tsc", why, sizeof why));
  assert_string_equal(why, "RESIL_CLOCK=portable; kernel clocksource tsc");
  /* a value it does not know is named, and auto is used */
  assert_true(resil__fast_clock_choose("TSC", true, true, "tsc", "tsc", why, sizeof why));
  assert_non_null(strstr(why, "RESIL_CLOCK='TSC' is not auto, tsc or portable"));
  assert_int_equal(resil__clock_mode_parse("fast"), -1);
  assert_int_equal(resil__clock_mode_parse(NULL), RESIL__CLOCK_AUTO);
  assert_int_equal(resil__clock_mode_parse("portable"), RESIL__CLOCK_PORTABLE);
}

/* Forced TSC: calibration reads clock_gettime for about 20 ms without
 * blocking anyone, then the TSC takes over, checked once already. */
static void tsc_calibrates_in_about_20ms_reading_clock_gettime_meanwhile(void **state) {
  (void)state;
  use_clock("tsc");
  if (!X86) {
    skip();
  }
  uint64_t t0 = resil_now_ns();
  uint64_t worst_call = 0, calls = 0;
  while (strcmp(resil__fast_clock_state(), "calibrating") == 0 &&
         resil_now_ns() - t0 < 5000000000ull) {
    uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
    assert_true(f >= m1 && f <= m2); /* clock_gettime itself meanwhile */
    if (m2 - m1 > worst_call) worst_call = m2 - m1;
    calls++;
  }
  uint64_t took = resil_now_ns() - t0;
  printf("# calibrated in %llu us over %llu calls, slowest call %llu ns; %s\n",
         (unsigned long long)(took / 1000), (unsigned long long)calls,
         (unsigned long long)worst_call, resil__fast_clock_why());
  assert_string_equal(resil__fast_clock_state(), "tsc");
  assert_true(took >= 20000000ull);              /* two 10 ms legs */
  assert_true(took < 2000000000ull);             /* bounded, even loaded */
  assert_true(resil__fast_clock_checks() >= 1); /* the second leg checked the first */
  assert_bracketed();
}

static void tsc_agrees_with_monotonic_across_reanchors(void **state) {
  (void)state;
  if (!force_tsc()) skip();
  enum { T = 3 };
  result res[T];
  uint64_t anchors, took_ns, checks0 = resil__fast_clock_checks();
  run_samplers(res, T, &anchors, &took_ns);
  printf("# %llu anchors published in %llu ms, worst disagreement at a check %llu ns\n",
         (unsigned long long)anchors, (unsigned long long)(took_ns / 1000000),
         (unsigned long long)resil__fast_clock_worst_ns());
  /* One per 100 ms of readings: never a storm of re-anchors (each costs
   * six clock_gettime calls), some at all, each checked, none failed. */
  assert_true(anchors <= took_ns / 100000000 + 2);
  assert_true(anchors >= 2);
  assert_true(resil__fast_clock_checks() - checks0 >= anchors);
  assert_string_equal(resil__fast_clock_state(), "tsc");
}

/* After a long idle gap (no reading for longer than an anchor's span) the
 * first reading is still right: it takes the slow path rather than
 * extrapolating far from a stale anchor, and the check over the gap passes. */
static void tsc_is_right_after_an_idle_gap(void **state) {
  (void)state;
  if (!force_tsc()) skip();
  (void)resil__now_fast_ns();
  uint64_t checks0 = resil__fast_clock_checks();
  for (int i = 0; i < 3; i++) {
    sleep_ms(250 + 250 * i); /* > 2 x 100 ms span */
    assert_bracketed();
  }
  assert_string_equal(resil__fast_clock_state(), "tsc");
  assert_true(resil__fast_clock_checks() > checks0);
}

/* Read the fast clock (bracketed) until the state leaves "tsc"; at most 3 s. */
static void read_until_fallback(void) {
  uint64_t t0 = resil_now_ns();
  while (strcmp(resil__fast_clock_state(), "tsc") == 0 && resil_now_ns() - t0 < 3000000000ull) {
    (void)resil__now_fast_ns();
    sleep_ms(1);
  }
  printf("# %s after %llu ms: %s\n", resil__fast_clock_state(),
         (unsigned long long)((resil_now_ns() - t0) / 1000000), resil__fast_clock_why());
}

/* After the fallback: clock_gettime, exactly, even once the TSC is fine
 * again (until the back-off ends: 60 s). */
static void assert_fell_back(const char *why) {
  assert_string_equal(resil__fast_clock_state(), "failed");
  assert_string_equal(resil__fast_clock_source(), "clock_gettime");
  assert_non_null(strstr(resil__fast_clock_why(), why));
  resil__fast_clock_test_skew(0, 0); /* the TSC is fine again: no matter */
  uint64_t anchors0 = resil__fast_clock_anchors();
  for (int i = 0; i < 300; i++) {
    uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
    assert_true(f >= m1 && f <= m2);
    sleep_ms(1);
  }
  assert_int_equal(resil__fast_clock_anchors(), anchors0);
  assert_string_equal(resil__fast_clock_state(), "failed");
}

/* A CPU whose TSC is out of step with the anchors' (or a TSC that jumped:
 * a VM restored on another host) re-anchors: the check sees it and the
 * clock falls back to clock_gettime. */
static void tsc_out_of_step_falls_back_to_clock_gettime(void **state) {
  (void)state;
  if (!force_tsc()) skip();
  resil__fast_clock_test_skew(0, 100000000); /* 1e8 ticks: 20-100 ms at 1-5 GHz */
  read_until_fallback();
  assert_fell_back("validation");
}

/* A TSC whose rate changed (skewed slope: 2 %, i.e. 2 ms per 100 ms) after
 * calibration: the next anchor's check fails. */
static void tsc_rate_change_falls_back_to_clock_gettime(void **state) {
  (void)state;
  if (!force_tsc()) skip();
  uint64_t anchors0 = resil__fast_clock_anchors();
  resil__fast_clock_test_skew(20000, 0);
  read_until_fallback();
  assert_fell_back("validation");
  /* a wrong anchor was published, then caught at the very next check */
  assert_true(resil__fast_clock_anchors() - anchors0 <= 2);
}

/* A TSC that disagrees already during calibration never gets used. */
static void tsc_failing_calibration_is_never_used(void **state) {
  (void)state;
  use_clock("tsc");
  if (!X86) skip();
  resil__fast_clock_test_skew(50000, 0); /* 5 %: 500 us off after 10 ms */
  uint64_t anchors0 = resil__fast_clock_anchors();
  uint64_t t0 = resil_now_ns();
  while (strcmp(resil__fast_clock_state(), "calibrating") == 0 &&
         resil_now_ns() - t0 < 5000000000ull) {
    uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
    assert_true(f >= m1 && f <= m2);
    sleep_ms(1);
  }
  printf("# %s: %s\n", resil__fast_clock_state(), resil__fast_clock_why());
  assert_int_equal(resil__fast_clock_anchors(), anchors0);
  assert_fell_back("calibration");
}

/* After a failed check the TSC is calibrated again after a back-off (60 s,
 * shortened here to 150 ms), doubling each time; the 4th failure is final. */
static void failed_tsc_is_retried_after_a_doubling_backoff_then_given_up(void **state) {
  (void)state;
  if (!force_tsc()) skip();
  const uint64_t backoff = 150000000ull;
  resil__fast_clock_test_retry(backoff);
  uint64_t failures0 = resil__fast_clock_failures();
  for (unsigned k = 1; k <= 4; k++) {
    resil__fast_clock_test_skew(0, 100000000);
    read_until_fallback();
    resil__fast_clock_test_skew(0, 0); /* the TSC is fine again */
    uint64_t t_fail = resil_now_ns();
    assert_string_equal(resil__fast_clock_state(), "failed");
    assert_int_equal(resil__fast_clock_failures() - failures0, k);
    if (k == 4) {
      assert_non_null(strstr(resil__fast_clock_why(), "failure 4, clock_gettime for good"));
      uint64_t anchors0 = resil__fast_clock_anchors();
      while (resil_now_ns() - t_fail < 2 * (backoff << 3)) { /* past a 4th back-off */
        uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
        assert_true(f >= m1 && f <= m2);
        sleep_ms(1);
      }
      assert_string_equal(resil__fast_clock_state(), "failed");
      assert_int_equal(resil__fast_clock_anchors(), anchors0);
      break;
    }
    uint64_t wait = backoff << (k - 1);
    char want[64];
    snprintf(want, sizeof want, "failure %u, calibrating again in %llu ms", k,
             (unsigned long long)(wait / 1000000));
    assert_non_null(strstr(resil__fast_clock_why(), want));
    while (strcmp(resil__fast_clock_state(), "failed") == 0 &&
           resil_now_ns() - t_fail < wait + 5000000000ull) {
      uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
      assert_true(f >= m1 && f <= m2);
      sleep_ms(1);
    }
    uint64_t waited = resil_now_ns() - t_fail;
    printf("# failure %u: calibrating again after %llu ms\n", k,
           (unsigned long long)(waited / 1000000));
    assert_true(waited + 10000000ull >= wait); /* not before the back-off (fail came first) */
    calibrate();
    assert_string_equal(resil__fast_clock_state(), "tsc");
    assert_bracketed();
  }
}

/* RESIL_CLOCK=portable: clock_gettime itself, exactly, from every thread;
 * the TSC is never calibrated. */
static void portable_is_clock_gettime(void **state) {
  (void)state;
  use_clock("portable");
  uint64_t anchors0 = resil__fast_clock_anchors();
  assert_string_equal(resil__fast_clock_state(), "portable");
  assert_string_equal(resil__fast_clock_source(), "clock_gettime");
  assert_non_null(strstr(resil__fast_clock_why(), "RESIL_CLOCK=portable"));
  for (int i = 0; i < 100000; i++) {
    uint64_t m1 = resil_now_ns(), f = resil__now_fast_ns(), m2 = resil_now_ns();
    assert_true(f >= m1 && f <= m2);
  }
  result res[2];
  uint64_t anchors, took_ns;
  run_samplers(res, 2, &anchors, &took_ns);
  assert_int_equal(anchors, 0);
  for (int i = 0; i < 2; i++) assert_int_equal(res[i].worst_ahead + res[i].worst_behind, 0);
  assert_int_equal(resil__fast_clock_anchors(), anchors0);
  assert_string_equal(resil__fast_clock_state(), "portable");
}

static void fast_clock_follows_a_fake_clock(void **state) {
  (void)state;
  const char *modes[] = {"tsc", "portable"};
  for (int i = 0; i < 2; i++) {
    use_clock(modes[i]);
    if (i == 0 && X86) calibrate();
    fake_clock_install();
    assert_int_equal(resil__now_fast_ns(), fake_clock_now_ns());
    fake_clock_advance_ms(1500);
    assert_int_equal(resil__now_fast_ns(), fake_clock_now_ns());
    fake_clock_uninstall();
    assert_bracketed();
  }
}

/* Default (auto): the path the machine calls for, named as such. */
static void auto_names_its_source(void **state) {
  (void)state;
  use_clock(NULL);
  calibrate();
  const char *s = resil__fast_clock_source();
  printf("# auto: %s (%s): %s\n", s, resil__fast_clock_state(), resil__fast_clock_why());
  assert_true(strcmp(s, "tsc") == 0 || strcmp(s, "clock_gettime") == 0);
  char cur[64];
  resil__kernel_clocksource(cur, sizeof cur);
  assert_non_null(strstr(resil__fast_clock_why(), cur));
#if X86
  unsigned a, b, c, d;
  bool invariant = __get_cpuid(0x80000007u, &a, &b, &c, &d) && (d & (1u << 8));
  char avail[256] = {0};
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/available_clocksource", "r");
  if (f && !fgets(avail, sizeof avail, f)) avail[0] = 0;
  if (f) fclose(f);
  /* Where the kernel itself reads an invariant TSC, or offers it, so must
   * we (else no speed-up, e.g. on Fargate's kvm-clock). */
  if (invariant && (strcmp(cur, "tsc") == 0 || strstr(avail, "tsc"))) assert_string_equal(s, "tsc");
  if (!invariant) assert_string_equal(s, "clock_gettime");
#endif
  /* An unknown value is named in the reason and counts as auto. */
  use_clock("fastest");
  calibrate();
  assert_non_null(strstr(resil__fast_clock_why(), "RESIL_CLOCK='fastest'"));
  assert_string_equal(resil__fast_clock_source(), s);
}

/* The vDSO's clock_gettime, called directly (src/vdso.c), is found where
 * the process has a vDSO, and answers as glibc's clock_gettime does for
 * both clocks the core reads it for (resil_now_ns(), the coarse clock of
 * the pool and the windows). */
static void vdso_clock_gettime_is_found_and_agrees(void **state) {
  (void)state;
  if (getauxval(AT_SYSINFO_EHDR)) assert_string_equal(resil__vdso_gettime_source(), "vdso");
  static const clockid_t ids[] = {CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE};
  for (unsigned k = 0; k < 1000; k++) {
    clockid_t id = ids[k % 2];
    struct timespec a, b, c;
    assert_int_equal(clock_gettime(id, &a), 0);
    assert_int_equal(resil__vdso_gettime(id, &b), 0);
    assert_int_equal(clock_gettime(id, &c), 0);
    uint64_t na = (uint64_t)a.tv_sec * 1000000000ull + (uint64_t)a.tv_nsec;
    uint64_t nb = (uint64_t)b.tv_sec * 1000000000ull + (uint64_t)b.tv_nsec;
    uint64_t nc = (uint64_t)c.tv_sec * 1000000000ull + (uint64_t)c.tv_nsec;
    assert_true(na <= nb && nb <= nc); /* the same clock: read in order, never out of it */
  }
  /* the pool's coarse clock is it, within the kernel tick */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  uint64_t coarse = resil__now_coarse_ns();
  assert_true(coarse >= (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
  assert_true(coarse <= resil_now_ns());
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(vdso_clock_gettime_is_found_and_agrees),
      cmocka_unit_test(clock_choice_follows_cpu_kernel_and_env),
      cmocka_unit_test(tsc_calibrates_in_about_20ms_reading_clock_gettime_meanwhile),
      cmocka_unit_test(tsc_agrees_with_monotonic_across_reanchors),
      cmocka_unit_test(tsc_is_right_after_an_idle_gap),
      cmocka_unit_test(tsc_out_of_step_falls_back_to_clock_gettime),
      cmocka_unit_test(tsc_rate_change_falls_back_to_clock_gettime),
      cmocka_unit_test(tsc_failing_calibration_is_never_used),
      cmocka_unit_test(failed_tsc_is_retried_after_a_doubling_backoff_then_given_up),
      cmocka_unit_test(portable_is_clock_gettime),
      cmocka_unit_test(fast_clock_follows_a_fake_clock),
      cmocka_unit_test(auto_names_its_source),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
