/* resil internals shared by the core's source files. Not installed. */
#ifndef RESIL_INTERNAL_H
#define RESIL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <time.h>

#include "resil/resil.h"

#define RESIL_CACHELINE 64
#define RESIL_STRIPES 8 /* power of two */

/* This thread's stripe, 0..RESIL_STRIPES-1, assigned round-robin on first
 * use so that two threads rarely share one. */
unsigned resil__stripe(void);

/* ---- Striped latency histogram ---------------------------------------- */
typedef struct resil_hist_stripe {
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t counts[RESIL_HIST_BOUNDS + 1];
  _Atomic uint64_t sum_ns;
} resil_hist_stripe;

typedef struct resil_hist {
  resil_hist_stripe s[RESIL_STRIPES];
} resil_hist;

void resil__hist_init(resil_hist *h);
/* Record one observation; lock-free, allocation-free. */
void resil__hist_observe(resil_hist *h, uint64_t ns);
void resil__hist_read(const resil_hist *h, resil_hist_snapshot *out);
/* Index of the bucket ns falls in (RESIL_HIST_BOUNDS for +Inf). */
unsigned resil__hist_bucket(uint64_t ns);

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

/* resil__now_coarse_ns() inlined, for the pool's hot paths. */
static inline uint64_t resil__now_coarse_inline_ns(void) {
  if (__builtin_expect(atomic_load_explicit(&resil__clock_fn, memory_order_relaxed) != NULL, 0))
    return resil_now_ns();
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
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
uint64_t resil__now_fast_ns(void);
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
  /* The last epoch computed and where its period starts, to skip a 64-bit
   * division on most adds (packed: start_ns can be recomputed from epoch). */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t hint_epoch;
} resil_window;

/* Allocate a window of nbuckets buckets covering window_ns. 0 or
 * RESIL_E_NOMEM. */
resil_status resil__window_init(resil_window *w, uint64_t window_ns, uint32_t nbuckets);
void resil__window_destroy(resil_window *w);
/* Add vals (RESIL_WINDOW_VALS entries) to the bucket holding now. Lock-free
 * (a bounded spin while another thread recycles the same bucket). */
void resil__window_add(resil_window *w, uint64_t now, const uint64_t *vals);
/* Sum of every bucket within the window ending at now. */
void resil__window_sum(const resil_window *w, uint64_t now, uint64_t *out);
/* Forget everything. Concurrent adds may survive; callers bump a
 * generation to keep stale ones out. */
void resil__window_reset(resil_window *w);

/* resil_breaker_record() with the current time supplied by the caller (0:
 * read the clock), so a dependency's done() reads the clock once. */
void resil__breaker_record_at(resil_breaker *b, resil_breaker_ticket t, resil_status outcome,
                              uint64_t latency_ns, uint64_t now);

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

/* Wake the probe threads (a breaker opened). */
void resil__probe_kick(void);
/* Remove dep's probe, waiting for a running one (resil_dep_free). */
void resil__probe_detach(resil_dep *d);
/* Count a probe result in dep's stats. */
void resil__dep_count_probe(resil_dep *d, resil_probe_result r);

/* The service layer's event log: lines it could not write (stderr full). */
uint64_t resil__event_log_dropped(void);

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

#endif
