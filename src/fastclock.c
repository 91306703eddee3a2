/* A cheap reading of the process clock for the call path (see internal.h).
 *
 * On x86-64 with an invariant TSC that the kernel itself uses as its
 * clocksource, CLOCK_MONOTONIC is extrapolated from the TSC: one RDTSC, a
 * multiply and a shift (about 10 ns) instead of the vDSO's fenced RDTSC
 * plus seqlock (about 21 ns on the benchmark machine; far more where the
 * clocksource is a hypervisor clock or a system call).
 *
 * The mapping ns = anchor_ns + ((tsc - anchor_tsc) * mult) >> 32 is
 * re-anchored to clock_gettime(CLOCK_MONOTONIC) every ANCHOR_NS of TSC time
 * by whichever thread notices first, and mult is recomputed each time over
 * the whole span since the first anchor, so the reading follows the kernel's
 * clock (NTP slewing included) to within a few microseconds. Readings that
 * fall outside the current anchor's span (a thread that slept for long, a
 * TSC below the anchor) take the slow path: clock_gettime itself.
 *
 * Anchors live in a ring of ANCHORS slots published by an index; a reader
 * re-checks the index after reading a slot and retries if the writer may have
 * reused that slot meanwhile (the slot's fields are written with release and
 * read with acquire, so a reader that saw a new field also sees the index
 * move). Everything is a plain load on x86; nothing here allocates or locks.
 *
 * Anywhere else (other CPUs, no invariant TSC, clocksource not "tsc", a fake
 * clock installed) the fast clock is resil_now_ns().
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <x86intrin.h>
#define HAVE_TSC 1
__extension__ typedef unsigned __int128 u128;
#else
#define HAVE_TSC 0
#endif

#define ANCHOR_NS 100000000ull /* re-anchor every 100 ms of TSC time */
#define CALIBRATE_NS 20000000ull /* first mult after 20 ms */
#define ANCHORS 8u

enum { FC_UNKNOWN = 0, FC_OFF, FC_TSC };

typedef struct anchor {
  _Atomic uint64_t tsc, ns, mult, span; /* span: valid TSC ticks after tsc */
} anchor;

static _Atomic int fc_mode;
static _Atomic uint64_t fc_idx; /* anchor in use: ring[fc_idx % ANCHORS]; 0: none yet */
static anchor fc_ring[ANCHORS];
static _Atomic int fc_busy;           /* a thread is re-anchoring */
static _Atomic uint64_t fc_first_tsc; /* the first calibration point */
static _Atomic uint64_t fc_first_ns;
static _Atomic uint64_t fc_anchors; /* anchors published, for tests */

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#if HAVE_TSC
static bool tsc_usable(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0x80000007u, &a, &b, &c, &d) || !(d & (1u << 8))) return false;
  /* Follow the kernel's judgement: it stops using the TSC when it finds it
   * unstable or unsynchronised between CPUs. */
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
  if (!f) return false;
  char buf[32] = {0};
  bool ok = fgets(buf, sizeof buf, f) && strncmp(buf, "tsc\n", 4) == 0;
  fclose(f);
  return ok;
}

/* Read the TSC and CLOCK_MONOTONIC as close together as possible: the pair
 * with the shortest bracket out of three. */
static void sample(uint64_t *tsc, uint64_t *ns) {
  uint64_t best = UINT64_MAX;
  for (int i = 0; i < 3; i++) {
    uint64_t t0 = __rdtsc();
    uint64_t n = mono_ns();
    uint64_t t1 = __rdtsc();
    if (t1 >= t0 && t1 - t0 < best) {
      best = t1 - t0;
      *tsc = t0 + (t1 - t0) / 2;
      *ns = n;
    }
  }
  if (best == UINT64_MAX) { /* the TSC went backwards three times: give up */
    *tsc = 0;
    *ns = mono_ns();
  }
}

/* Publish a new anchor (or the first one) from a fresh sample, unless
 * another thread already replaced anchor `seen` (the caller's view; then
 * just read the clock). Returns CLOCK_MONOTONIC. Only one thread at a time
 * gets here. */
static uint64_t reanchor(uint64_t seen) {
  if (atomic_load_explicit(&fc_idx, memory_order_relaxed) != seen) return mono_ns();
  uint64_t tsc, ns;
  sample(&tsc, &ns);
  uint64_t t0 = atomic_load_explicit(&fc_first_tsc, memory_order_relaxed);
  uint64_t n0 = atomic_load_explicit(&fc_first_ns, memory_order_relaxed);
  if (tsc == 0) return ns;
  if (t0 == 0 || tsc <= t0 || ns <= n0) { /* start (or restart) calibrating */
    atomic_store_explicit(&fc_first_tsc, tsc, memory_order_relaxed);
    atomic_store_explicit(&fc_first_ns, ns, memory_order_relaxed);
    return ns;
  }
  if (ns - n0 < CALIBRATE_NS) return ns;
  /* mult = ns per tick in Q32, from the whole span since the first point. */
  uint64_t dt = tsc - t0, dn = ns - n0;
  u128 m = ((u128)dn << 32) / dt;
  if (m == 0 || m > ((u128)1 << 40)) return ns; /* absurd: keep the slow path */
  uint64_t mult = (uint64_t)m;
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
  return ns;
}

static uint64_t slow_path(uint64_t seen) {
  int expected = 0;
  if (atomic_compare_exchange_strong_explicit(&fc_busy, &expected, 1, memory_order_acquire,
                                              memory_order_relaxed)) {
    uint64_t ns = reanchor(seen);
    atomic_store_explicit(&fc_busy, 0, memory_order_release);
    return ns;
  }
  return mono_ns();
}
#endif

#if HAVE_TSC
/* A child forked while a parent thread was re-anchoring would otherwise
 * inherit fc_busy set and never re-anchor again (correct, but slow). */
static void after_fork_in_child(void) { atomic_store_explicit(&fc_busy, 0, memory_order_relaxed); }
#endif

static int detect(void) {
  int m = atomic_load_explicit(&fc_mode, memory_order_relaxed);
  if (m != FC_UNKNOWN) return m;
#if HAVE_TSC
  m = tsc_usable() ? FC_TSC : FC_OFF;
  static _Atomic int atfork_done;
  if (m == FC_TSC && !atomic_exchange_explicit(&atfork_done, 1, memory_order_relaxed))
    pthread_atfork(NULL, NULL, after_fork_in_child);
#else
  m = FC_OFF;
#endif
  atomic_store_explicit(&fc_mode, m, memory_order_relaxed);
  return m;
}

uint64_t resil__now_fast_ns(void) {
#if HAVE_TSC
  if (__builtin_expect(atomic_load_explicit(&fc_mode, memory_order_relaxed) == FC_TSC, 1) &&
      !resil_clock_is_fake()) {
    uint64_t idx = atomic_load_explicit(&fc_idx, memory_order_acquire);
    if (__builtin_expect(idx != 0, 1)) {
      const anchor *a = &fc_ring[idx % ANCHORS];
      uint64_t t = __rdtsc();
      uint64_t at = atomic_load_explicit(&a->tsc, memory_order_acquire);
      uint64_t an = atomic_load_explicit(&a->ns, memory_order_acquire);
      uint64_t mult = atomic_load_explicit(&a->mult, memory_order_acquire);
      uint64_t span = atomic_load_explicit(&a->span, memory_order_acquire);
      uint64_t d = t - at; /* huge if t < at: slow path */
      /* The slot is ours unless the writer lapped the ring meanwhile. */
      if (__builtin_expect(atomic_load_explicit(&fc_idx, memory_order_relaxed) - idx <
                               ANCHORS - 1,
                           1)) {
        if (__builtin_expect(d < span / 2, 1)) return an + ((d * mult) >> 32);
        /* A TSC a little behind the anchor's (another CPU, read just before
         * the anchor was taken): extrapolate backwards rather than take the
         * slow path, which would re-anchor again and again. */
        if (at - t < span / 2) return an - (((at - t) * mult) >> 32);
        if (d < span) { /* due for a new anchor: one thread does it, the rest go on */
          int expected = 0;
          if (!atomic_compare_exchange_strong_explicit(&fc_busy, &expected, 1,
                                                       memory_order_acquire,
                                                       memory_order_relaxed))
            return an + ((d * mult) >> 32);
          uint64_t ns = reanchor(idx);
          atomic_store_explicit(&fc_busy, 0, memory_order_release);
          return ns;
        }
      }
    }
    return slow_path(idx);
  }
  if (detect() == FC_TSC && !resil_clock_is_fake())
    return slow_path(atomic_load_explicit(&fc_idx, memory_order_relaxed));
#endif
  return resil_now_ns();
}

const char *resil__fast_clock_source(void) {
  return detect() == FC_TSC ? "tsc" : "clock_gettime";
}

uint64_t resil__fast_clock_anchors(void) {
  return atomic_load_explicit(&fc_anchors, memory_order_relaxed);
}
