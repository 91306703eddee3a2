/* resil internals shared by the core's source files. Not installed. */
#ifndef RESIL_INTERNAL_H
#define RESIL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>

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

/* ---- Fast clock ---------------------------------------------------------- */

/* CLOCK_MONOTONIC as resil_now_ns() reads it, to within a few microseconds,
 * for the call path (admit/done, pool acquire/release): where the kernel's
 * clocksource is an invariant TSC, extrapolated from RDTSC (~10 ns instead
 * of ~21); elsewhere, and with a fake clock installed, resil_now_ns().
 * Lock-free and allocation-free. fastclock.c explains the scheme. */
uint64_t resil__now_fast_ns(void);
/* "tsc" or "clock_gettime": what resil__now_fast_ns() reads. */
const char *resil__fast_clock_source(void);
/* How many anchors the fast clock has published so far (tests). */
uint64_t resil__fast_clock_anchors(void);

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

#endif
