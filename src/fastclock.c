/* A cheap reading of the process clock for the call path (see internal.h).
 *
 * On x86-64 with a usable TSC, CLOCK_MONOTONIC is extrapolated from the TSC:
 * one RDTSC, a multiply and a shift (about 10 ns) instead of the vDSO's
 * fenced RDTSC plus seqlock (about 21 ns where the kernel's clocksource is
 * `tsc`, 28 ns on a Firecracker/Fargate guest reading kvm-clock's pvclock
 * page, hundreds where clock_gettime is a system call).
 *
 * Which clock (resil__fast_clock_choose(), decided once, at first use):
 *   RESIL_CLOCK=portable  clock_gettime, always.
 *   RESIL_CLOCK=tsc       the TSC whenever the CPU has one that user space may
 *                         read (x86-64, CPUID TSC bit, not disabled by
 *                         prctl(PR_SET_TSC)), whatever the kernel thinks.
 *   RESIL_CLOCK=auto      (default; an unknown value counts as auto) the TSC
 *                         when CPUID says it is invariant (constant rate, runs
 *                         in deep C-states: the kernel's constant_tsc and
 *                         nonstop_tsc) AND the kernel either reads it itself
 *                         (current_clocksource is `tsc`) or still offers it
 *                         (`tsc` is in available_clocksource: the kernel drops
 *                         it from that list when it marks the TSC unstable -
 *                         CPUs found out of sync at boot, the clocksource
 *                         watchdog seeing it drift). That is the kvm-clock case
 *                         of Firecracker and AWS Fargate: kvm-clock is chosen
 *                         by rating, yet the TSC is invariant and offered.
 *                         Otherwise clock_gettime.
 * The kernel's own signals we cannot see from user space (kvm-clock's
 * PVCLOCK_TSC_STABLE_BIT, the host's TSC scaling) are replaced by checking
 * the TSC against CLOCK_MONOTONIC ourselves, at start and at every anchor:
 *
 * Calibration (lazy, never blocking): the first reading takes a sample (a
 * TSC value bracketed by two clock_gettime calls; the narrowest bracket of
 * three, and none wider than SAMPLE_MAX_NS), 10 ms later a second one gives
 * a slope, and 10 ms after that a third must land where that slope predicts,
 * within AGREE_NS plus 500 ppm of the elapsed time. Until then every caller
 * reads clock_gettime (plus one relaxed load to see whether the next sample
 * is due); the three calls that take a sample cost about 200 ns each. The
 * first call also reads RESIL_CLOCK and two sysfs files (tens of us, once
 * per process).
 *
 * Anchors: ns = anchor_ns + ((tsc - anchor_tsc) * mult) >> 32, re-anchored to
 * clock_gettime(CLOCK_MONOTONIC) every ANCHOR_NS of TSC time by whichever
 * thread notices first; mult is recomputed each time over the whole span
 * since calibration began, so the reading follows the kernel's clock (NTP
 * slewing included) to within a few microseconds. Before publishing a new
 * anchor the re-anchoring thread checks what the previous anchor predicts
 * for its fresh sample against CLOCK_MONOTONIC (the same bound). This thread
 * runs on whichever CPU noticed first, so over time every CPU that calls
 * checks its TSC against the anchors of the others (vCPUs out of sync), and
 * a TSC that changed rate or jumped (a VM migrated or restored from a
 * snapshot onto another host) is caught within one anchor period, the error
 * seen by callers meanwhile staying within about the bound. On a
 * disagreement the fast clock falls back to clock_gettime and records why
 * (resil__fast_clock_why()); it calibrates again from scratch after a
 * back-off of 60 s, 120 s, 240 s (the cause may have been transient: chrony
 * slewing CLOCK_MONOTONIC faster than 500 ppm, a VM restored elsewhere) and
 * stays on clock_gettime for good after the 4th failure. Readings outside the current anchor's span (a thread
 * that slept for long, a TSC well below the anchor) take the slow path:
 * clock_gettime itself, and a re-anchor (validated over the gap).
 *
 * Anchors live in a ring of ANCHORS slots published by an index; a reader
 * re-checks the index after reading a slot and retries if the writer may have
 * reused that slot meanwhile (the slot's fields are written with release and
 * read with acquire, so a reader that saw a new field also sees the index
 * move). Everything is a plain load on x86; nothing here allocates or locks
 * (the first call's detection takes a mutex once).
 *
 * Anywhere else (other CPUs, RESIL_CLOCK=portable, a fake clock installed)
 * the fast clock is resil_now_ns().
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define HAVE_TSC RESIL__HAVE_TSC
#if HAVE_TSC
#include <cpuid.h>
#include <sys/prctl.h>
#include <x86intrin.h>
__extension__ typedef unsigned __int128 u128;
#endif

#define ANCHOR_NS 100000000ull  /* re-anchor every 100 ms of TSC time */
#define CAL_STEP_NS 10000000ull /* calibration: two legs of 10 ms */
#define SAMPLE_MAX_NS 20000ull  /* a wider TSC/clock_gettime bracket is retried later */
#define AGREE_NS 50000ull       /* validation bound: 50 us ... */
#define AGREE_PPM_DIV 2000ull   /* ... plus 500 ppm of the time since the last check */
#define ANCHORS RESIL__ANCHORS
#define RETRY_NS 60000000000ull /* after a failed check: calibrate again in 60 s, */
#define RETRIES 3u              /* then 120 s, 240 s; the 4th failure is final */

enum { FC_UNKNOWN = 0, FC_OFF, FC_CALIB, FC_TSC, FC_FAILED };
_Static_assert(FC_TSC == RESIL__FC_TSC, "the inline fast path's test of fc_mode");

typedef resil__anchor anchor;

/* Read by resil__now_fast_ns(), inline (internal.h). */
#define fc_mode resil__fc_mode
#define fc_idx resil__fc_idx
#define fc_ring resil__fc_ring
_Atomic int fc_mode;
_Atomic uint64_t fc_idx; /* anchor in use: ring[fc_idx % ANCHORS]; 0: none yet */
anchor fc_ring[ANCHORS];
static _Atomic int fc_busy;         /* a thread is calibrating or re-anchoring */
static _Atomic uint64_t fc_anchors; /* anchors published, for tests */
static _Atomic uint64_t fc_checks;  /* validations passed */
static _Atomic uint64_t fc_worst;   /* largest disagreement seen by a validation, ns */
static _Atomic uint64_t fc_cal_next; /* calibration: CLOCK_MONOTONIC when the next sample is due */
static pthread_mutex_t fc_detect_mu = PTHREAD_MUTEX_INITIALIZER;
/* Written before fc_mode leaves FC_UNKNOWN (choice, once) or enters
 * FC_FAILED (fail: the two buffers alternate, so a reader of the previous
 * failure's text is not overwritten), read after an acquire load of fc_mode. */
static char fc_why_choice[256], fc_why_fail[2][256];
static _Atomic unsigned fc_why_idx;   /* fc_why_fail[fc_why_idx]: the last failure */
static _Atomic uint64_t fc_retry_at;  /* FC_FAILED: when to calibrate again; 0: never */
static _Atomic unsigned fc_failures;  /* checks failed so far (written with fc_busy held) */

/* Owned by the thread holding fc_busy. */
static uint64_t cal_t0, cal_n0, cal_t1, cal_n1; /* calibration points (t0: also the slope's origin) */

static uint64_t fc_retry_ns = RETRY_NS;          /* first back-off (tests shorten it) */
static int64_t test_skew_ppm, test_tsc_offset;   /* test hooks, see internal.h */

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  resil__vdso_gettime(CLOCK_MONOTONIC, &ts); /* vdso.c */
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int resil__clock_mode_parse(const char *s) {
  if (!s || !*s || strcmp(s, "auto") == 0) return RESIL__CLOCK_AUTO;
  if (strcmp(s, "tsc") == 0) return RESIL__CLOCK_TSC;
  if (strcmp(s, "portable") == 0) return RESIL__CLOCK_PORTABLE;
  return -1;
}

/* Is `word` one of the space-separated words of `list`? */
static bool has_word(const char *list, const char *word) {
  size_t n = strlen(word);
  for (const char *p = list; p && *p;) {
    while (*p == ' ' || *p == '\n') p++;
    size_t l = strcspn(p, " \n");
    if (l == n && strncmp(p, word, n) == 0) return true;
    p += l;
  }
  return false;
}

bool resil__fast_clock_choose(const char *env, bool has_tsc, bool invariant, const char *current,
                              const char *available, char *why, size_t whylen) {
  char bad[96] = "";
  int m = resil__clock_mode_parse(env);
  if (m < 0) {
    snprintf(bad, sizeof bad, "RESIL_CLOCK='%.24s' is not auto, tsc or portable, using auto; ",
             env);
    m = RESIL__CLOCK_AUTO;
  }
  const char *cur = current && *current ? current : "unknown";
  bool tsc = false;
  const char *what;
  if (m == RESIL__CLOCK_PORTABLE) {
    what = "RESIL_CLOCK=portable";
  } else if (!has_tsc) {
    what = HAVE_TSC ? "no TSC readable from user space" : "not x86-64: no TSC";
  } else if (m == RESIL__CLOCK_TSC) {
    tsc = true;
    what = invariant ? "RESIL_CLOCK=tsc, invariant TSC" : "RESIL_CLOCK=tsc, TSC NOT invariant";
  } else if (!invariant) {
    what = "TSC not invariant (CPUID 80000007H EDX bit 8)";
  } else if (strcmp(cur, "tsc") == 0) {
    tsc = true;
    what = "invariant TSC, the kernel's clocksource";
  } else if (has_word(available, "tsc")) {
    tsc = true;
    what = "invariant TSC, offered by the kernel (in available_clocksource)";
  } else {
    what = "invariant TSC, but the kernel does not offer it (marked unstable or absent)";
  }
  if (why) snprintf(why, whylen, "%s%s; kernel clocksource %s", bad, what, cur);
  return tsc;
}

static void read_line(const char *path, char *buf, size_t n) {
  buf[0] = 0;
  FILE *f = fopen(path, "re");
  if (!f) return;
  if (!fgets(buf, (int)n, f)) buf[0] = 0;
  fclose(f);
  buf[strcspn(buf, "\n")] = 0;
}

const char *resil__kernel_clocksource(char *buf, size_t n) {
  read_line("/sys/devices/system/clocksource/clocksource0/current_clocksource", buf, n);
  return buf;
}

static bool take_busy(void) {
  int expected = 0;
  return atomic_compare_exchange_strong_explicit(&fc_busy, &expected, 1, memory_order_acquire,
                                                 memory_order_relaxed);
}
static void drop_busy(void) { atomic_store_explicit(&fc_busy, 0, memory_order_release); }

#if HAVE_TSC
/* A check failed at CLOCK_MONOTONIC ns (fc_busy held): clock_gettime from
 * now on; calibrate again after a back-off (RETRY_NS, doubling) unless this
 * was the RETRIES+1st failure. */
static void fail(uint64_t ns, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(uint64_t ns, const char *fmt, ...) {
  unsigned n = atomic_fetch_add_explicit(&fc_failures, 1, memory_order_relaxed) + 1;
  char *w = fc_why_fail[n % 2]; /* a reader may still hold the other one */
  va_list ap;
  va_start(ap, fmt);
  int l = vsnprintf(w, sizeof fc_why_fail[0], fmt, ap);
  va_end(ap);
  uint64_t after = n <= RETRIES ? fc_retry_ns << (n - 1) : 0;
  if (l > 0 && (size_t)l < sizeof fc_why_fail[0]) {
    if (after)
      snprintf(w + l, sizeof fc_why_fail[0] - (size_t)l,
               "; failure %u, calibrating again in %" PRIu64 " ms", n, (uint64_t)(after / 1000000));
    else
      snprintf(w + l, sizeof fc_why_fail[0] - (size_t)l, "; failure %u, clock_gettime for good", n);
  }
  atomic_store_explicit(&fc_why_idx, n % 2, memory_order_relaxed);
  atomic_store_explicit(&fc_retry_at, after ? ns + after : 0, memory_order_relaxed);
  atomic_store_explicit(&fc_mode, FC_FAILED, memory_order_release);
}

/* A TSC value and CLOCK_MONOTONIC at the same instant, to within half the
 * bracket: the narrowest of three brackets. False (with *ns set) when every
 * bracket was wider than SAMPLE_MAX_NS (the thread was preempted): try later. */
static bool sample(uint64_t *tsc, uint64_t *ns) {
  uint64_t best = UINT64_MAX;
  *tsc = *ns = 0;
  for (int i = 0; i < 3; i++) {
    uint64_t n0 = mono_ns();
    uint64_t t = __rdtsc();
    uint64_t n1 = mono_ns();
    if (n1 - n0 < best) {
      best = n1 - n0;
      *tsc = t + (uint64_t)test_tsc_offset;
      *ns = n0 + (n1 - n0) / 2;
    }
  }
  return best <= SAMPLE_MAX_NS;
}

/* ns per tick in Q32 over dt ticks and dn ns; 0 if absurd (no tick faster
 * than 1/256 ns or slower than 256 ns). */
static uint64_t slope(uint64_t dn, uint64_t dt) {
  if (dt == 0) return 0;
  u128 m = ((u128)dn << 32) / dt;
  if (test_skew_ppm > 0) m += m * (u128)test_skew_ppm / 1000000;
  if (test_skew_ppm < 0) m -= m * (u128)(-test_skew_ppm) / 1000000;
  if (m < ((u128)1 << 24) || m > ((u128)1 << 40)) return 0;
  return (uint64_t)m;
}

/* |what (at0, an0, mult) predicts for tsc - ns|, in ns. */
static uint64_t disagreement(uint64_t at0, uint64_t an0, uint64_t mult, uint64_t tsc,
                             uint64_t ns) {
  uint64_t pred;
  if (tsc >= at0) {
    pred = an0 + (uint64_t)(((u128)(tsc - at0) * mult) >> 32);
  } else {
    uint64_t back = (uint64_t)(((u128)(at0 - tsc) * mult) >> 32);
    pred = an0 > back ? an0 - back : 0;
  }
  uint64_t d = pred > ns ? pred - ns : ns - pred;
  uint64_t w = atomic_load_explicit(&fc_worst, memory_order_relaxed);
  if (d > w) atomic_store_explicit(&fc_worst, d, memory_order_relaxed);
  return d;
}

static uint64_t bound(uint64_t elapsed_ns) { return AGREE_NS + elapsed_ns / AGREE_PPM_DIV; }

static void publish(uint64_t tsc, uint64_t ns, uint64_t mult) {
  /* Ticks per ANCHOR_NS, doubled so that a reader slightly late to
   * re-anchor still has a valid span; bounded so (span * mult) fits. */
  uint64_t span = (uint64_t)(((u128)(2 * ANCHOR_NS) << 32) / mult);
  uint64_t idx = atomic_load_explicit(&fc_idx, memory_order_relaxed) + 1;
  anchor *a = &fc_ring[idx % ANCHORS];
  atomic_store_explicit(&a->tsc, tsc, memory_order_release);
  atomic_store_explicit(&a->ns, ns, memory_order_release);
  atomic_store_explicit(&a->mult, mult, memory_order_release);
  atomic_store_explicit(&a->span, span, memory_order_release);
  atomic_store_explicit(&fc_idx, idx, memory_order_release);
  atomic_fetch_add_explicit(&fc_anchors, 1, memory_order_relaxed);
}

/* One calibration step (fc_busy held, mode FC_CALIB). Returns CLOCK_MONOTONIC. */
static uint64_t calibrate(void) {
  uint64_t tsc, ns;
  if (!sample(&tsc, &ns)) return ns;
  if (cal_t0 == 0 || tsc <= cal_t0 || ns <= cal_n0 || (cal_t1 && (tsc <= cal_t1 || ns <= cal_n1))) {
    cal_t0 = tsc; /* start (or restart: the TSC went backwards) */
    cal_n0 = ns;
    cal_t1 = cal_n1 = 0;
    atomic_store_explicit(&fc_cal_next, ns + CAL_STEP_NS, memory_order_relaxed);
    return ns;
  }
  if (cal_t1 == 0) {
    if (ns - cal_n0 < CAL_STEP_NS) return ns;
    cal_t1 = tsc;
    cal_n1 = ns;
    atomic_store_explicit(&fc_cal_next, ns + CAL_STEP_NS, memory_order_relaxed);
    return ns;
  }
  if (ns - cal_n1 < CAL_STEP_NS) return ns;
  uint64_t m1 = slope(cal_n1 - cal_n0, cal_t1 - cal_t0);
  if (!m1) {
    fail(ns, "calibration: %" PRIu64 " TSC ticks in %" PRIu64 " ns is not a plausible rate",
         cal_t1 - cal_t0, cal_n1 - cal_n0);
    return ns;
  }
  uint64_t d = disagreement(cal_t1, cal_n1, m1, tsc, ns);
  if (d > bound(ns - cal_n1)) {
    fail(ns, "calibration: %" PRIu64 " us after the TSC's rate was measured over %" PRIu64
         " us, it was %" PRIu64 " us off CLOCK_MONOTONIC (bound %" PRIu64 " us)",
         (ns - cal_n1) / 1000, (cal_n1 - cal_n0) / 1000, d / 1000, bound(ns - cal_n1) / 1000);
    return ns;
  }
  atomic_fetch_add_explicit(&fc_checks, 1, memory_order_relaxed);
  publish(tsc, ns, slope(ns - cal_n0, tsc - cal_t0));
  atomic_store_explicit(&fc_mode, FC_TSC, memory_order_release);
  return ns;
}

/* Publish a new anchor from a fresh sample, after checking the current one
 * against it, unless another thread already replaced anchor `seen` (the
 * caller's view; then just read the clock). Returns CLOCK_MONOTONIC. Only
 * one thread at a time (fc_busy held, mode FC_TSC). */
static uint64_t reanchor(uint64_t seen) {
  if (atomic_load_explicit(&fc_idx, memory_order_relaxed) != seen) return mono_ns();
  uint64_t tsc, ns;
  if (!sample(&tsc, &ns)) return ns;
  const anchor *a = &fc_ring[seen % ANCHORS];
  uint64_t at = atomic_load_explicit(&a->tsc, memory_order_relaxed);
  uint64_t an = atomic_load_explicit(&a->ns, memory_order_relaxed);
  uint64_t am = atomic_load_explicit(&a->mult, memory_order_relaxed);
  uint64_t elapsed = ns > an ? ns - an : 0;
  uint64_t d = disagreement(at, an, am, tsc, ns);
  if (d > bound(elapsed)) {
    fail(ns, "validation: %" PRIu64 " ms after the last anchor the TSC was %" PRIu64
         " us off CLOCK_MONOTONIC (bound %" PRIu64 " us)",
         elapsed / 1000000, d / 1000, bound(elapsed) / 1000);
    return ns;
  }
  atomic_fetch_add_explicit(&fc_checks, 1, memory_order_relaxed);
  if (tsc <= cal_t0 || ns <= cal_n0) {
    fail(ns, "validation: the TSC went backwards past the calibration point");
    return ns;
  }
  uint64_t mult = slope(ns - cal_n0, tsc - cal_t0);
  if (!mult) {
    fail(ns, "validation: implausible TSC rate over the process's life");
    return ns;
  }
  publish(tsc, ns, mult);
  return ns;
}

/* A child forked while a parent thread was re-anchoring would otherwise
 * inherit fc_busy set and never re-anchor again (correct, but slow). */
static void after_fork_in_child(void) { atomic_store_explicit(&fc_busy, 0, memory_order_relaxed); }

static bool cpu_has_tsc(bool *invariant) {
  unsigned a, b, c, d;
  *invariant = __get_cpuid(0x80000007u, &a, &b, &c, &d) && (d & (1u << 8));
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(d & (1u << 4))) return false;
  int p = 0;
  if (prctl(PR_GET_TSC, &p, 0, 0, 0) == 0 && p == PR_TSC_SIGSEGV) return false;
  return true;
}
#endif

static int detect(void) {
  int m = atomic_load_explicit(&fc_mode, memory_order_acquire);
  if (m != FC_UNKNOWN) return m;
  pthread_mutex_lock(&fc_detect_mu);
  m = atomic_load_explicit(&fc_mode, memory_order_acquire);
  if (m == FC_UNKNOWN) {
    bool has = false, inv = false;
#if HAVE_TSC
    has = cpu_has_tsc(&inv);
#endif
    char cur[64], avail[256];
    resil__kernel_clocksource(cur, sizeof cur);
    read_line("/sys/devices/system/clocksource/clocksource0/available_clocksource", avail,
              sizeof avail);
    bool tsc = resil__fast_clock_choose(getenv("RESIL_CLOCK"), has, inv, cur, avail,
                                        fc_why_choice, sizeof fc_why_choice);
    m = tsc ? FC_CALIB : FC_OFF;
#if HAVE_TSC
    static bool atfork_done;
    if (tsc && !atfork_done) {
      atfork_done = true;
      pthread_atfork(NULL, NULL, after_fork_in_child);
    }
#endif
    atomic_store_explicit(&fc_mode, m, memory_order_release);
  }
  pthread_mutex_unlock(&fc_detect_mu);
  return m;
}

/* Everything but the fast path: first use, calibration, fallback, a
 * reading outside the anchor's span. */
static __attribute__((noinline)) uint64_t now_slow(uint64_t seen) {
  if (resil_clock_is_fake()) return resil_now_ns();
  int m = detect();
#if HAVE_TSC
  if (m == FC_CALIB) {
    uint64_t ns = mono_ns();
    if (ns < atomic_load_explicit(&fc_cal_next, memory_order_relaxed) || !take_busy()) return ns;
    if (atomic_load_explicit(&fc_mode, memory_order_relaxed) == FC_CALIB) ns = calibrate();
    drop_busy();
    return ns;
  }
  if (m == FC_FAILED) {
    uint64_t ns = mono_ns(), at = atomic_load_explicit(&fc_retry_at, memory_order_relaxed);
    if (at == 0 || ns < at || !take_busy()) return ns;
    if (atomic_load_explicit(&fc_mode, memory_order_relaxed) == FC_FAILED &&
        atomic_load_explicit(&fc_retry_at, memory_order_relaxed) == at) {
      cal_t0 = cal_n0 = cal_t1 = cal_n1 = 0; /* from scratch: new slope origin too */
      atomic_store_explicit(&fc_cal_next, 0, memory_order_relaxed);
      atomic_store_explicit(&fc_mode, FC_CALIB, memory_order_release);
    }
    drop_busy();
    return ns;
  }
  if (m == FC_TSC) {
    if (!take_busy()) return mono_ns();
    uint64_t ns = atomic_load_explicit(&fc_mode, memory_order_relaxed) == FC_TSC ? reanchor(seen)
                                                                                 : mono_ns();
    drop_busy();
    return ns;
  }
#else
  (void)m;
  (void)seen;
#endif
  return resil_now_ns();
}

/* resil__now_fast_ns() when its inline fast path does not apply: the same
 * fast path once more (a new anchor was published meanwhile), a reading
 * outside the anchor's span, the TSC off, calibrating or failed, a fake
 * clock. */
uint64_t resil__now_fast_slow(void) {
  int mode = atomic_load_explicit(&fc_mode, memory_order_relaxed);
  bool fake = atomic_load_explicit(&resil__clock_fn, memory_order_relaxed) != NULL;
  /* clock_gettime by choice or for good: no detour through now_slow() */
  if (mode == FC_OFF && !fake) return mono_ns();
#if HAVE_TSC
  if (__builtin_expect(mode == FC_TSC, 1) && !fake) {
    resil__anchor_view v;
    resil__anchor_read(&v);
    uint64_t idx = v.idx, t = v.t, at = v.at, an = v.an, mult = v.mult, span = v.span;
    uint64_t d = t - at; /* huge if t < at: slow path */
    /* The slot is ours unless the writer lapped the ring meanwhile. */
    if (__builtin_expect(atomic_load_explicit(&fc_idx, memory_order_relaxed) - idx < ANCHORS - 1,
                         1)) {
      if (__builtin_expect(d < span / 2, 1)) return an + ((d * mult) >> 32);
      /* A TSC a little behind the anchor's (another CPU, read just before
       * the anchor was taken): extrapolate backwards rather than take the
       * slow path, which would re-anchor again and again. */
      if (at - t < span / 2) return an - (((at - t) * mult) >> 32);
      if (d < span) { /* due for a new anchor: one thread does it, the rest go on */
        if (!take_busy()) return an + ((d * mult) >> 32);
        uint64_t ns = atomic_load_explicit(&fc_mode, memory_order_relaxed) == FC_TSC
                          ? reanchor(idx)
                          : mono_ns();
        drop_busy();
        return ns;
      }
    }
    return now_slow(idx);
  }
#endif
  return now_slow(0);
}

const char *resil__fast_clock_source(void) {
  return detect() == FC_TSC ? "tsc" : "clock_gettime";
}

const char *resil__fast_clock_state(void) {
  switch (detect()) {
    case FC_CALIB: return "calibrating";
    case FC_TSC: return "tsc";
    case FC_FAILED: return "failed";
    default: return "portable";
  }
}

const char *resil__fast_clock_why(void) {
  return detect() == FC_FAILED
             ? fc_why_fail[atomic_load_explicit(&fc_why_idx, memory_order_relaxed)]
             : fc_why_choice;
}

uint64_t resil__fast_clock_anchors(void) {
  return atomic_load_explicit(&fc_anchors, memory_order_relaxed);
}

uint64_t resil__fast_clock_checks(void) {
  return atomic_load_explicit(&fc_checks, memory_order_relaxed);
}

uint64_t resil__fast_clock_worst_ns(void) {
  return atomic_load_explicit(&fc_worst, memory_order_relaxed);
}

void resil__fast_clock_test_reset(void) {
  pthread_mutex_lock(&fc_detect_mu);
  atomic_store(&fc_mode, FC_UNKNOWN);
  atomic_store(&fc_idx, 0);
  for (unsigned i = 0; i < ANCHORS; i++) {
    atomic_store(&fc_ring[i].tsc, 0);
    atomic_store(&fc_ring[i].ns, 0);
    atomic_store(&fc_ring[i].mult, 0);
    atomic_store(&fc_ring[i].span, 0);
  }
  atomic_store(&fc_cal_next, 0);
  atomic_store(&fc_worst, 0);
  cal_t0 = cal_n0 = cal_t1 = cal_n1 = 0;
  test_skew_ppm = test_tsc_offset = 0;
  fc_why_choice[0] = fc_why_fail[0][0] = fc_why_fail[1][0] = 0;
  atomic_store(&fc_failures, 0);
  fc_retry_ns = RETRY_NS;
  atomic_store(&fc_retry_at, 0);
  atomic_store(&fc_why_idx, 0);
  pthread_mutex_unlock(&fc_detect_mu);
}

uint64_t resil__fast_clock_failures(void) {
  return atomic_load_explicit(&fc_failures, memory_order_relaxed);
}

void resil__fast_clock_test_retry(uint64_t first_retry_ns) {
  while (!take_busy()) sched_yield();
  fc_retry_ns = first_retry_ns;
  drop_busy();
}

void resil__fast_clock_test_skew(int64_t slope_ppm, int64_t tsc_offset_ticks) {
  while (!take_busy()) sched_yield();
  test_skew_ppm = slope_ppm;
  test_tsc_offset = tsc_offset_ticks;
  drop_busy();
}
