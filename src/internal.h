/* resil internals shared by the core's source files. Not installed. */
#ifndef RESIL_INTERNAL_H
#define RESIL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <time.h>

#include "resil/adapter.h"
#include "resil/testing.h"
#include "resil/resil.h"

/* The stats arrays have a fixed capacity (docs/abi.md): an enum may grow up
 * to it without moving any field of the stats structs. */
_Static_assert(RESIL_OUTCOME_COUNT_ <= RESIL_OUTCOME_SLOTS, "resil_dep_stats.calls[] is full");
_Static_assert(RESIL_REJECT_COUNT_ <= RESIL_REJECT_SLOTS, "resil_dep_stats.rejections[] is full");
_Static_assert(RESIL_PROBE_RESULT_COUNT_ <= RESIL_PROBE_RESULT_SLOTS,
               "resil_dep_stats.probes[] is full");
_Static_assert(RESIL_POOL_CLOSE_REASON_COUNT_ <= RESIL_POOL_CLOSE_REASON_SLOTS,
               "resil_pool_stats.closed[] is full");
_Static_assert(RESIL_BREAKER_STATE_COUNT_ <= RESIL_BREAKER_STATE_SLOTS,
               "resil_breaker_stats.transitions[] is full");

/* ---- Invariant checks (issue #15) --------------------------------------
 * RESIL_INVARIANT(cond, fmt, ...) checks a structural invariant where a
 * locked (or atomic) change could break it, as SQLite's
 * sqlite3PcachePageSanity() inside assert() does. Compiled in with
 * -DRESIL_INVARIANTS (meson -Dinvariants=true: the builds scripts/test.sh
 * makes, so the ASan and TSan runs stop at the line where a hand-off goes
 * wrong), compiled out otherwise (release and bench builds: no code, no
 * evaluation of the arguments). A broken one prints "resil: invariant broken
 * at FILE:LINE (FUNC): " and the message (name the object, the invariant as
 * written and the values) to stderr, then aborts. */
#ifdef RESIL_INVARIANTS
#define RESIL_INVARIANTS_ON 1
#define RESIL_INVARIANT_AT(file, line, func, cond, ...)                                     \
  (__builtin_expect(!!(cond), 1) ? (void)0                                                 \
                                 : resil__invariant_broken(file, line, func, __VA_ARGS__))
#else
#define RESIL_INVARIANTS_ON 0
#define RESIL_INVARIANT_AT(file, line, func, cond, ...) ((void)0)
#endif
#define RESIL_INVARIANT(cond, ...) \
  RESIL_INVARIANT_AT(__FILE__, __LINE__, __func__, cond, __VA_ARGS__)
/* RESIL_INVARIANT_AT: the same, reporting a given place (a check function
 * called from several places passes its caller's). */

/* Whether this library was built with the checks (for the tests). */
bool resil__invariants_enabled(void);
__attribute__((noreturn, cold, format(printf, 4, 5))) void resil__invariant_broken(
    const char *file, int line, const char *func, const char *fmt, ...);

/* resil_status_is_rejection() inline, for done() on every call: a set of
 * statuses named one by one (never a numeric range: statuses are only
 * appended, docs/abi.md), as a bit mask. */
_Static_assert(RESIL_STATUS_COUNT_ <= 64, "resil__rejections needs a wider mask");
#define RESIL__S(s) (1ull << (s))
#define RESIL__REJECTIONS                                                                   \
  (RESIL__S(RESIL_E_BREAKER_OPEN) | RESIL__S(RESIL_E_CONCURRENCY_FULL) |                    \
   RESIL__S(RESIL_E_QUEUE_TIMEOUT) | RESIL__S(RESIL_E_POOL_TIMEOUT) |                       \
   RESIL__S(RESIL_E_DEADLINE) | RESIL__S(RESIL_E_DRAINING) | RESIL__S(RESIL_E_RETRY_BUDGET) | \
   RESIL__S(RESIL_E_THROTTLED) | RESIL__S(RESIL_E_RATE_LIMITED) | RESIL__S(RESIL_E_PAUSED))
static inline bool resil__is_rejection(resil_status s) {
  return (unsigned)s < 64 && (RESIL__REJECTIONS >> (unsigned)s & 1);
}

#define RESIL_CACHELINE 64
#define RESIL_STRIPES 8 /* power of two */

/* Thread-local storage as the library uses it: initial-exec, so that a
 * reading is a plain %fs-relative load even inside the shared library. */
#define RESIL_TLS _Thread_local __attribute__((tls_model("initial-exec")))

/* This thread's stripe, 0..RESIL_STRIPES-1, assigned round-robin on first
 * use so that two threads rarely share one. Inline: done() asks three
 * times a call. */
extern RESIL_TLS unsigned resil__my_stripe; /* ~0u: not assigned yet */
unsigned resil__stripe_assign(void);
static inline unsigned resil__stripe(void) {
  unsigned s = resil__my_stripe;
  return __builtin_expect(s != ~0u, 1) ? s : resil__stripe_assign();
}

/* ---- Striped latency histogram ---------------------------------------- */
typedef struct resil_hist_stripe {
  /* sum_ns first: it shares its cache line with the low buckets, where the
   * calls of a fast dependency land */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t sum_ns;
  _Atomic uint64_t counts[RESIL_HIST_BOUNDS + 1];
} resil_hist_stripe;

typedef struct resil_hist {
  resil_hist_stripe s[RESIL_STRIPES];
} resil_hist;

void resil__hist_init(resil_hist *h);
void resil__hist_read(const resil_hist *h, resil_hist_snapshot *out);
/* Index of the bucket ns falls in (RESIL_HIST_BOUNDS for +Inf). */
unsigned resil__hist_bucket(uint64_t ns);
/* The first bound (100 us): resil_hist_bounds_ns()[0]. */
#define RESIL__HIST_BOUND0_NS 100000ull

/* Record one observation; lock-free, allocation-free. Inline, with the
 * first bucket decided by one comparison (the calls of a dependency
 * answering within 100 us; slower ones pay a binary search). */
static inline void resil__hist_observe(resil_hist *h, uint64_t ns) {
  resil_hist_stripe *s = &h->s[resil__stripe()];
  unsigned b = __builtin_expect(ns <= RESIL__HIST_BOUND0_NS, 1) ? 0 : resil__hist_bucket(ns);
  atomic_fetch_add_explicit(&s->counts[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->sum_ns, ns, memory_order_relaxed);
}

/* ---- Time and waiting ------------------------------------------------- */

/* Initialise a condition variable that waits on CLOCK_MONOTONIC. */
int resil__cond_init(pthread_cond_t *c);

/* Wait on c (m held) until signalled or deadline (on the process clock).
 * Returns 0 if signalled (or spurious), ETIMEDOUT if the deadline passed.
 * With a fake clock installed, sleeps in slices of at most 10 ms.
 * An unset deadline is a programming error and waits 1 s at most. */
int resil__cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, resil_deadline d);

/* Sleep until d or for at most max_ns, whichever is first (real clock,
 * sliced under a fake clock). */
void resil__sleep_until(resil_deadline d, uint64_t max_ns);

/* The process's drain cutoff on the process clock (ns), 0 when not
 * draining: see resil_drain_cutoff(). */
uint64_t resil__drain_cut_ns(void);

/* A fast per-thread pseudo-random number (xorshift), for jitter. */
uint64_t resil__rand(void);

/* ---- Building error messages with several problems -------------------- */
/* The public collector (status.h) under the names the core uses. */
#define resil__problems_init resil_problems_init
#define resil__problem resil_problem
#define resil__problems_merge resil_problems_merge
#define resil__problems_finish resil_problems_finish
#define resil__check_range resil_problems_check_range
void resil__check_range_d(resil_problems *p, const char *field, double v, double lo, double hi);

/* A problem sink: while one is installed on a thread, every resil_problem()
 * of that thread also hands it (prefix, field, message) - the field as the
 * validator named it ("breaker.window_ms", "admin.port") - so the config
 * loader names each problem of a kind's validator by its variable without
 * re-parsing text. resil_problems_merge() hands on (prefix, NULL, text)
 * only for text that no collector of this thread finished while the sink
 * was installed (those problems went to the sink one by one already): a
 * validator that reported with resil_err_set() alone is not lost. Sinks
 * nest (pop restores the previous one); fn must not install a sink. */
typedef void (*resil__problem_fn)(void *ctx, const char *prefix, const char *field,
                                  const char *msg);
#define RESIL__SINK_FINISHED 8
typedef struct resil__problem_sink {
  resil__problem_fn fn;
  void *ctx;
  /* err->msg of the last collectors finished while installed, and hashes
   * of their text (a buffer reused for other text does not match) */
  const char *finished[RESIL__SINK_FINISHED];
  uint64_t finished_hash[RESIL__SINK_FINISHED];
  unsigned nfinished;
  struct resil__problem_sink *prev;
} resil__problem_sink;
void resil__problem_sink_push(resil__problem_sink *s, resil__problem_fn fn, void *ctx);
void resil__problem_sink_pop(resil__problem_sink *s);

/* ---- The process settings' admin and EMF configs ----------------------- */
/* What resil_service_start() passes to resil_admin_start() and
 * resil_emf_start() for the RESIL_* process settings s. The config loader
 * validates these same structs (naming the variables), so a configuration
 * that resil-config accepts cannot fail their validation at start. */
struct resil_admin_config;
struct resil_emf_config;
void resil__service_admin_config(const resil_service_config *s, struct resil_admin_config *ac);
void resil__service_emf_config(const resil_service_config *s, struct resil_emf_config *ec);

/* Copy a string into a fixed buffer, always NUL-terminated. */
void resil__strlcpy(char *dst, const char *src, size_t size);


/* ---- A growable string ------------------------------------------------- */
typedef struct resil_sbuf {
  char *p;
  size_t len, cap;
  bool oom; /* sticky: set on the first failed allocation */
} resil_sbuf;

/* Append printf-style; on allocation failure sets oom and drops the text. */
void resil__sb_printf(resil_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string: quoted; quote, backslash and control bytes escaped. */
void resil__sb_json_string(resil_sbuf *b, const char *s);
/* Hand the string to *out (NUL-terminated, malloc'd) or fail with
 * RESIL_E_NOMEM (the buffer is freed either way on failure). */
resil_status resil__sb_finish(resil_sbuf *b, char **out, size_t *len, resil_err *err);


/* ---- Coarse clock ------------------------------------------------------ */

/* The process clock at coarse resolution (a few ms; ~3 ns to read) for
 * checks that tolerate it, like "has the break duration passed". Never ahead
 * of resil_now_ns(). With a fake clock installed, returns the fake time. */
uint64_t resil__now_coarse_ns(void);

/* The fake clock installed by resil_clock_set(), NULL if none (deadline.c). */
extern _Atomic(resil_clock_fn) resil__clock_fn;

/* clock_gettime() as the kernel's vDSO exports it, called directly rather
 * than through glibc's wrapper (~1-1.5 ns less per read); glibc's
 * clock_gettime where that is not possible (vdso.c). Set at load time. */
typedef int (*resil__gettime_fn)(clockid_t, struct timespec *);
extern resil__gettime_fn resil__vdso_gettime;
/* "vdso" or "libc": what resil__vdso_gettime is (tests). */
const char *resil__vdso_gettime_source(void);

/* resil__now_coarse_ns() inlined, for the pool's hot paths. */
static inline uint64_t resil__now_coarse_inline_ns(void) {
  if (__builtin_expect(atomic_load_explicit(&resil__clock_fn, memory_order_relaxed) != NULL, 0))
    return resil_now_ns();
  struct timespec ts;
  resil__vdso_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- Fast clock ---------------------------------------------------------- */

/* CLOCK_MONOTONIC as resil_now_ns() reads it, to within a few microseconds,
 * for the call path (admit/done, pool acquire/release): where the CPU has an
 * invariant TSC that the kernel uses or still offers (kvm-clock guests
 * included), extrapolated from RDTSC (~10 ns instead of 21-28) after a
 * 20 ms calibration and checked against CLOCK_MONOTONIC at every anchor;
 * elsewhere, with RESIL_CLOCK=portable, after a failed check, and with a
 * fake clock installed, resil_now_ns(). Lock-free and allocation-free.
 * fastclock.c explains the scheme. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RESIL__HAVE_TSC 1
#else
#define RESIL__HAVE_TSC 0
#endif
/* An anchor: ns = ns + ((TSC - tsc) * mult) >> 32 for a TSC within span
 * ticks after tsc. fastclock.c owns these; they are here for the inline
 * fast path. */
typedef struct resil__anchor {
  _Atomic uint64_t tsc, ns, mult, span;
} resil__anchor;
#define RESIL__ANCHORS 8u
#define RESIL__FC_TSC 3 /* resil__fc_mode: the TSC path is on */
extern _Atomic int resil__fc_mode;
extern _Atomic uint64_t resil__fc_idx; /* anchor in use: ring[idx % RESIL__ANCHORS] */
extern resil__anchor resil__fc_ring[RESIL__ANCHORS];
uint64_t resil__now_fast_slow(void);

#if RESIL__HAVE_TSC
/* A TSC reading with the anchor in use: idx, then (acquire) the anchor's
 * fields around an RDTSC. The reader re-reads resil__fc_idx afterwards to
 * know whether the slot was reused meanwhile. */
typedef struct resil__anchor_view {
  uint64_t idx, t, at, an, mult, span;
} resil__anchor_view;
static inline void resil__anchor_read(resil__anchor_view *v) {
  v->idx = atomic_load_explicit(&resil__fc_idx, memory_order_acquire);
  const resil__anchor *a = &resil__fc_ring[v->idx % RESIL__ANCHORS];
  v->t = __builtin_ia32_rdtsc();
  v->at = atomic_load_explicit(&a->tsc, memory_order_acquire);
  v->an = atomic_load_explicit(&a->ns, memory_order_acquire);
  v->mult = atomic_load_explicit(&a->mult, memory_order_acquire);
  v->span = atomic_load_explicit(&a->span, memory_order_acquire);
}
#endif

/* Inline, for the call path: the common case (TSC on, no fake clock, the
 * anchor unchanged during the reading and the TSC within the first half of
 * its span) is an RDTSC, five loads and a multiply; anything else is
 * resil__now_fast_slow(). */
static inline uint64_t resil__now_fast_ns(void) {
#if RESIL__HAVE_TSC
  if (__builtin_expect(
          atomic_load_explicit(&resil__fc_mode, memory_order_relaxed) == RESIL__FC_TSC &&
              atomic_load_explicit(&resil__clock_fn, memory_order_relaxed) == NULL,
          1)) {
    resil__anchor_view v;
    resil__anchor_read(&v);
    uint64_t d = v.t - v.at; /* huge if t < at: the slow path */
    if (__builtin_expect(atomic_load_explicit(&resil__fc_idx, memory_order_relaxed) == v.idx &&
                             d < v.span / 2,
                         1))
      return v.an + ((d * v.mult) >> 32);
  }
#endif
  return resil__now_fast_slow();
}
/* "tsc" or "clock_gettime": what resil__now_fast_ns() reads now (while it
 * calibrates, and after a fallback: clock_gettime). */
const char *resil__fast_clock_source(void);
/* "portable" (clock_gettime by choice), "calibrating", "tsc" or "failed"
 * (a check failed: clock_gettime; calibrating again after 60 s, 120 s,
 * 240 s; for good after the 4th failure). */
const char *resil__fast_clock_state(void);
/* Why: the choice made at first use, or what failed. Static storage. */
const char *resil__fast_clock_why(void);
/* How many anchors the fast clock has published, how many checks against
 * CLOCK_MONOTONIC passed, and the largest disagreement a check saw (tests,
 * benchmarks). */
uint64_t resil__fast_clock_anchors(void);
uint64_t resil__fast_clock_checks(void);
uint64_t resil__fast_clock_worst_ns(void);
/* How many checks failed (each sends the clock back to clock_gettime). */
uint64_t resil__fast_clock_failures(void);
/* The kernel's clocksource (current_clocksource), "" if unreadable; buf. */
const char *resil__kernel_clocksource(char *buf, size_t n);

/* RESIL_CLOCK: NULL or "" or "auto", "tsc", "portable"; -1 for anything else. */
enum { RESIL__CLOCK_AUTO = 0, RESIL__CLOCK_TSC, RESIL__CLOCK_PORTABLE };
int resil__clock_mode_parse(const char *s);
/* The decision made at first use, from RESIL_CLOCK's value (env, may be
 * NULL), what CPUID says (has_tsc: readable at all; invariant) and the
 * kernel's current and available clocksources (may be NULL). True: the TSC.
 * Writes a one-line reason into why. Pure: for tests. */
bool resil__fast_clock_choose(const char *env, bool has_tsc, bool invariant, const char *current,
                              const char *available, char *why, size_t whylen);

/* Test hooks (no concurrent readers while resetting): forget every decision
 * and anchor, so the next reading re-reads RESIL_CLOCK and calibrates again;
 * and inject a disagreement from now on: slope_ppm skews every rate the clock
 * measures (a wrong frequency), tsc_offset_ticks is added to the TSC values
 * the calibrating/re-anchoring thread samples (a CPU whose TSC is out of
 * step with the anchors' CPU, or a TSC that jumped). */
void resil__fast_clock_test_reset(void);
void resil__fast_clock_test_skew(int64_t slope_ppm, int64_t tsc_offset_ticks);
/* Test hook: the back-off before the first re-calibration after a failed
 * check (60 s; doubling for the next ones). */
void resil__fast_clock_test_retry(uint64_t first_retry_ns);

/* ---- Rolling window of striped counters -------------------------------- */

#define RESIL_WINDOW_VALS 3

typedef struct resil_window_cell {
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t v[RESIL_WINDOW_VALS];
} resil_window_cell;

typedef struct resil_window_bucket {
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t epoch; /* (bucket number << 1) | resetting */
  resil_window_cell cell[RESIL_STRIPES];
} resil_window_bucket;

typedef struct resil_window {
  uint64_t bucket_ns;
  uint32_t nbuckets;
  resil_window_bucket *b; /* nbuckets entries */
  /* The bucket of the last period an add saw: its epoch << 8 | its index in
   * b (nbuckets <= RESIL__WINDOW_MAX_BUCKETS), so that an add skips the
   * division by bucket_ns and the modulo by nbuckets while that period lasts
   * (its start is (epoch - 1) * bucket_ns). 0: none yet. */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t hint;
} resil_window;
#define RESIL__WINDOW_MAX_BUCKETS 255u

/* Allocate a window of nbuckets (1..RESIL__WINDOW_MAX_BUCKETS) buckets
 * covering window_ns. 0, RESIL_E_NOMEM, or RESIL_E_INVALID for a bucket
 * count out of range. */
resil_status resil__window_init(resil_window *w, uint64_t window_ns, uint32_t nbuckets);
void resil__window_destroy(resil_window *w);
/* Add vals (RESIL_WINDOW_VALS entries) to the bucket holding now. Lock-free
 * (a bounded spin while another thread recycles the same bucket). */
void resil__window_add(resil_window *w, uint64_t now, const uint64_t *vals);
/* Count one call in the bucket holding now: calls + 1, failures + failed,
 * slow calls + slow (resil__window_add with vals {1, failed, slow}). Inline
 * for the call path: while the period of the last add lasts and its bucket
 * is recycled, three loads and the adds; anything else (a new period, a
 * bucket being recycled) goes through resil__window_add. */
static inline void resil__window_count(resil_window *w, uint64_t now, bool failed, bool slow) {
  uint64_t h = atomic_load_explicit(&w->hint, memory_order_relaxed);
  uint64_t e = h >> 8;
  if (__builtin_expect(e != 0 && now - (e - 1) * w->bucket_ns < w->bucket_ns, 1)) {
    resil_window_bucket *b = &w->b[h & 0xff];
    if (__builtin_expect(atomic_load_explicit(&b->epoch, memory_order_acquire) == e << 1, 1)) {
      resil_window_cell *c = &b->cell[resil__stripe()];
      atomic_fetch_add_explicit(&c->v[0], 1, memory_order_relaxed);
      if (failed) atomic_fetch_add_explicit(&c->v[1], 1, memory_order_relaxed);
      if (slow) atomic_fetch_add_explicit(&c->v[2], 1, memory_order_relaxed);
      return;
    }
  }
  const uint64_t v[RESIL_WINDOW_VALS] = {1, failed, slow};
  resil__window_add(w, now, v);
}
/* Sum of every bucket within the window ending at now. */
void resil__window_sum(const resil_window *w, uint64_t now, uint64_t *out);
/* Forget everything. Concurrent adds may survive; callers bump a
 * generation to keep stale ones out. */
void resil__window_reset(resil_window *w);

/* ---- Circuit breaker (breaker.c) ----------------------------------------
 * Here rather than in breaker.c so that a dependency's admit and done take
 * the common case (closed; a success that was not slow) inline. */
struct resil_breaker {
  resil_breaker_config cfg;
  char name[64];
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t word; /* gen << 8 | state */
  _Atomic uint64_t open_until_ns;
  _Atomic uint64_t half; /* gen << 32 | probes_in_flight << 16 | successes */
  _Alignas(RESIL_CACHELINE) _Atomic uint32_t consecutive;
  resil_window window;
  uint64_t slow_ns;

  pthread_mutex_t mu; /* state changes only */
  resil_breaker_mode mode;
  uint32_t trip_streak;
  uint64_t closed_at_ns, opened_at_ns;
  resil_trip_reason last_reason;
  uint64_t trip_calls, trip_bad; /* window figures at the last trip */
  _Atomic uint64_t transitions[RESIL_BREAKER_STATE_COUNT_];
};

/* The state word: generation << 8 | state. */
#define RESIL__BREAKER_WORD(gen, st) (((uint64_t)(gen) << 8) | (uint64_t)(st))

/* resil_breaker_record() with the current time supplied by the caller (0:
 * read the clock), so a dependency's done() reads the clock once. */
void resil__breaker_record_at(resil_breaker *b, resil_breaker_ticket t, resil_status outcome,
                              uint64_t latency_ns, uint64_t now);

/* resil_breaker_acquire(), with CLOSED decided inline (one load). */
static inline resil_status resil__breaker_acquire(resil_breaker *b, resil_breaker_ticket *t) {
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if (__builtin_expect((w & 0xff) == RESIL_BREAKER_CLOSED, 1)) {
    *t = (resil_breaker_ticket){.gen = (uint32_t)(w >> 8), .probe = 0, .counted = 1};
    return RESIL_OK;
  }
  return resil_breaker_acquire(b, t);
}

/* resil__breaker_record_at() with a success in CLOSED that was not slow
 * recorded inline: the window's call count, and the run of consecutive
 * failures ended (written only when there was one). */
static inline void resil__breaker_record_now(resil_breaker *b, resil_breaker_ticket t,
                                             resil_status outcome, uint64_t latency_ns,
                                             uint64_t now) {
  if (__builtin_expect(outcome == RESIL_OK && t.counted && !t.probe &&
                           (latency_ns <= b->slow_ns || b->slow_ns == 0) &&
                           atomic_load_explicit(&b->word, memory_order_acquire) ==
                               RESIL__BREAKER_WORD(t.gen, RESIL_BREAKER_CLOSED),
                       1)) {
    resil__window_count(&b->window, now, false, false);
    if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0)
      atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    return;
  }
  resil__breaker_record_at(b, t, outcome, latency_ns, now);
}

/* Worst-case bytes of a breaker with config c (object and window). */
uint64_t resil__breaker_memory_bound(const resil_breaker_config *c);

/* If the breaker is OPEN: its generation, when it opened and when the break
 * ends, and true; else false. Takes the breaker's state mutex. */
bool resil__breaker_open_info(resil_breaker *b, uint32_t *gen, uint64_t *opened_at_ns,
                              uint64_t *open_until_ns);

/* ---- Events (event.c) and recovery probes (probe.c) ---------------------- */

/* A dependency's event rate limit (token bucket) and counters. */
typedef struct resil__ev_bucket {
  pthread_mutex_t mu;
  double tokens;
  uint64_t last_ns;
  uint32_t suppressed; /* dropped since the last delivered event */
  _Atomic uint64_t delivered, dropped;
} resil__ev_bucket;

void resil__ev_bucket_init(resil__ev_bucket *b);
void resil__ev_bucket_destroy(resil__ev_bucket *b);

/* The message of the call whose outcome is being recorded on this thread
 * (or of the recovery probe ending a break), for the event a transition
 * emits; NULL if none. */
extern _Thread_local const char *resil__call_msg;

/* Emit a breaker transition of dependency dep (rate-limited by bk) to the
 * event hook, if one is installed. */
void resil__event_breaker(const char *dep, resil__ev_bucket *bk, resil_breaker *b,
                          resil_breaker_state from, resil_breaker_state to,
                          resil_trip_reason reason);

/* Emit a pause start (start true, ms its length) or end (ms how long it
 * lasted) of dependency dep (rate-limited by bk) to the event hook. */
void resil__event_pause(const char *dep, resil__ev_bucket *bk, bool start, uint64_t ms,
                        const char *reason, const char *message, const char *detail);

/* ---- Outbound rate limit and pauses (flow.c) ----------------------------- */

/* A dependency's rate limiter (GCRA: one "theoretical arrival time") and
 * pause, plus the memory gauge. Embedded in struct resil_dep. */
typedef struct resil__flow {
  /* read on every admit: the gate (both 0 when off) */
  _Alignas(RESIL_CACHELINE) uint64_t interval_ns; /* 1e9 / per_s; 0 = no rate limit */
  _Atomic uint64_t pause_until;                   /* process clock ns; 0 = not paused */
  uint64_t tolerance_ns;                          /* (burst - 1) * interval_ns */
  uint64_t max_pause_ns, pause_ns;                /* pushback config */
  uint64_t max_wait_ns;                           /* limit.max_wait_ms */
  uint32_t per_s, burst;
  _Atomic uint64_t pause_start; /* when the pause in force began */
  _Atomic uint64_t pauses;      /* pauses started or grown */
  /* written on every admit while the limiter is on */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t tat;
  /* written by adapters as their buffers grow and shrink */
  _Alignas(RESIL_CACHELINE) _Atomic int64_t mem_bytes;
  _Atomic uint64_t mem_bound;
} resil__flow;

void resil__flow_init(resil__flow *f, const resil_dep_config *c);

/* True when admit must go through resil__flow_admit(): a rate limit is
 * configured or a pause has been set. One load of a read-mostly line. */
static inline bool resil__flow_gate(resil__flow *f) {
  return __builtin_expect(
      (f->interval_ns | atomic_load_explicit(&f->pause_until, memory_order_relaxed)) != 0, 0);
}

/* The pause, then the rate limit, at *now (updated after a wait).
 * RESIL_OK, RESIL_E_PAUSED or RESIL_E_RATE_LIMITED. May sleep, never past
 * the deadline or max_wait_ns. dep/ev name the dependency for events. */
resil_status resil__flow_admit(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                               resil_deadline deadline, uint64_t *now);
uint32_t resil__flow_pause(resil__flow *f, const char *dep, resil__ev_bucket *ev, uint64_t ms,
                           const char *reason, const char *message);
void resil__flow_unpause(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                         const char *reason);
/* The pause left at now (ns), ending it (with its event) if it has passed. */
uint64_t resil__flow_pause_left(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                                uint64_t now);

/* Wake the probe threads (a breaker opened). */
void resil__probe_kick(void);
/* Remove dep's probe, waiting for a running one (resil_dep_free). */
void resil__probe_detach(resil_dep *d);
/* Count a probe result in dep's stats. */
void resil__dep_count_probe(resil_dep *d, resil_probe_result r);

/* The service layer's event log: lines it could not write (stderr full). */
uint64_t resil__event_log_dropped(void);

/* ---- Adaptive concurrency limit and client-side throttling (adaptive.c) -- */

typedef struct resil__alimit resil__alimit;
typedef struct resil__throttle resil__throttle;

/* Allocate the state for dep's adaptive limit (cfg->adaptive on) and its
 * throttle (cfg->throttle.enabled); *alim / *thr stay NULL when off. The
 * first limit in force is written to *first_limit (max_concurrent when
 * off). RESIL_OK or RESIL_E_NOMEM (nothing left allocated). */
resil_status resil__adaptive_new(const resil_dep_config *cfg, uint64_t now, resil__alimit **alim,
                                 resil__throttle **thr, uint32_t *first_limit);
void resil__adaptive_free(resil__alimit *alim, resil__throttle *thr);
/* done(): a call admitted at start_ns ended with outcome after lat_ns, with
 * inflight calls in flight just before it ended (itself included; 0 if
 * unknown). May close the window and move dep's limit. Lock-free unless it
 * closes a window (then it may take the queue mutex to hand out slots). */
void resil__alimit_record(resil__alimit *a, resil_dep *dep, uint64_t start_ns,
                          resil_status outcome, uint64_t lat_ns, uint64_t now, uint32_t inflight);
/* The lowest and highest limit over the last 60 s, the current one included. */
void resil__alimit_range(resil__alimit *a, uint32_t cur, uint64_t now, uint32_t *lo,
                         uint32_t *hi);
/* admit(): RESIL_OK, or RESIL_E_THROTTLED with the current probability. */
resil_status resil__throttle_admit(resil__throttle *t, resil_dep *dep, uint64_t now);
/* done(): count a call sent to the dependency. */
void resil__throttle_record(resil__throttle *t, resil_dep *dep, resil_status outcome,
                            uint64_t now);
/* The rejection probability in force (0..1). */
double resil__throttle_probability(const resil__throttle *t);
/* err sentence for a throttled call. */
resil_status resil__throttle_reject_msg(resil__throttle *t, const char *dep, resil_err *err);
/* In a fork child: a window a thread of the parent was closing is free. */
void resil__adaptive_fork_child(resil__alimit *alim, resil__throttle *thr);

/* Set the limit in force (the adaptive limit's only writer, and tests).
 * A raised limit hands its new slots to queued callers at once; a lowered
 * one never cancels a call: admissions wait or are refused until fewer
 * calls than the new limit are in flight. Thread-safe. */
void resil__dep_set_limit(resil_dep *d, uint32_t limit);
/* Test hook (tests/unit/test_invariants.c): add delta to the in-flight count
 * of the bulkhead's slots word, bypassing every check: a corrupted count the
 * invariant checks must catch at the next slot change. */
void resil__dep_test_inflight_add(resil_dep *d, int32_t delta);
/* The next parking done() of d calls fn(arg) after deciding to park (no
 * waiter seen) and before parking (tests/unit/test_dep.c: a waiter queues
 * right then). Only in builds with -Dinvariants=true; a no-op otherwise. */
void resil__dep_test_before_park(resil_dep *d, void (*fn)(void *), void *arg);
/* The dependency's event rate limit (for adaptive.c's events). */
resil__ev_bucket *resil__dep_ev(resil_dep *d);

/* Emit a numeric state change (an adaptive limit that moved, throttling
 * that started or stopped) to the event hook, rate-limited by bk. */
void resil__event_value(const char *dep, resil__ev_bucket *bk, resil_event_type type,
                        const char *reason, const char *detail, int64_t old_value,
                        int64_t new_value);

/* ---- A snapshot of every registered dependency ------------------------- */
typedef struct resil_stats_vec {
  resil_dep_stats *v;
  size_t n, cap;
  bool oom;
} resil_stats_vec;

/* Fill *out (zeroed first) with every registered dependency's stats, in
 * registry order. RESIL_OK, or RESIL_E_NOMEM naming `what` (nothing to free
 * then). On success free(out->v). */
resil_status resil__stats_snapshot(resil_stats_vec *out, const char *what, resil_err *err);

/* ---- Fork safety (fork.c) ---------------------------------------------- */

/* Register the core's pthread_atfork handler once (idempotent, thread-safe).
 * Called by resil_dep_new() and resil_pool_new(). */
void resil__fork_init(void);
/* The handler's parts: dep.c and pool.c lock their registries and objects
 * before fork, unlock them after it, and reset them in the child. */
void resil__dep_fork_prepare(void);
void resil__dep_fork_parent(void);
void resil__dep_fork_child(void);
/* Test hooks (tests/unit/test_invariants.c), each bypassing the checks it
 * sets up a failure for: add delta to the pool's `open` count; and make the
 * next return of a connection leave it idle without handing it to a queued
 * waiter (the lost hand-off the invariant checks must catch). */
void resil__pool_test_open_add(resil_pool *p, int32_t delta);
void resil__pool_test_skip_dispatch(resil_pool *p);
/* The next parking release of p calls fn(arg) after deciding to park and
 * before parking (tests/unit/test_pool.c: a waiter queues right then).
 * Only in builds with -Dinvariants=true; a no-op otherwise. */
void resil__pool_test_before_park(resil_pool *p, void (*fn)(void *), void *arg);
void resil__pool_fork_prepare(void);
void resil__pool_fork_parent(void);
void resil__pool_fork_child(void);
void resil__probe_fork_prepare(void);
void resil__probe_fork_parent(void);
void resil__probe_fork_child(void);
void resil__event_fork_prepare(void);
void resil__event_fork_parent(void);
void resil__event_fork_child(void);
/* A dependency's breaker around fork: lock its mutex (prepare), unlock it
 * (parent), and in the child start a new half-open round if it was
 * half-open (probes held by vanished threads never come back) and unlock. */
void resil__breaker_fork_lock(resil_breaker *b);
void resil__breaker_fork_unlock(resil_breaker *b);
void resil__breaker_fork_child(resil_breaker *b);

/* ---- Several addresses behind one pool (endpoint.c) -------------------- */
/* A pool made by resil_pool_new_endpoints() is a "front" pool whose public
 * functions pool.c hands to the resil__group_* below; its members are
 * ordinary pools. */
struct resil__group;
/* The front: a resil_pool that holds no connection, with generation gen. */
resil_pool *resil__pool_new_front(const resil_pool_config *cfg, struct resil__group *g,
                                  uint64_t gen, resil_err *err);
/* The group of a front pool, NULL for an ordinary one. */
struct resil__group *resil__pool_group(const resil_pool *p);
/* Set a new pool's generation (before any use). */
void resil__pool_set_generation(resil_pool *p, uint64_t gen);
/* Close p's longest-idle connection (reason idle); false if none is idle. */
bool resil__pool_close_one_idle(resil_pool *p);
resil_status resil__group_acquire(struct resil__group *g, resil_deadline deadline,
                                  resil_pool_conn **out, resil_err *err);
void resil__group_release(struct resil__group *g, resil_pool_conn *c, resil_pool_return how);
resil_status resil__group_prewarm(struct resil__group *g, resil_deadline deadline, resil_err *err);
resil_status resil__group_drain(struct resil__group *g, resil_deadline deadline);
void resil__group_free(struct resil__group *g);
void resil__group_stats(const struct resil__group *g, resil_pool_stats *out);
bool resil__group_evict(struct resil__group *g, uint64_t generation);
void resil__group_fork_prepare(struct resil__group *g);
void resil__group_fork_parent(struct resil__group *g);
void resil__group_fork_child(struct resil__group *g);
/* resil_dep_done(), for a failed call on the dependency whose attached pool
 * is `attached`: true when the breaker must not count it (the endpoint rule
 * in resil/endpoint.h: the call's address failed and another address is
 * healthy). Reads and clears what the last release or failed acquire on
 * this thread recorded. */
bool resil__endpoints_failure_ignored(const resil_pool *attached);

#endif
