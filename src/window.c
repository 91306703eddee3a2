/* A rolling time window of striped counters, for the breaker's failure and
 * slow-call rates and for the retry budget.
 *
 * Each bucket covers bucket_ns and is tagged with the number of the period it
 * holds (its epoch). A writer whose period is newer than the bucket's epoch
 * recycles it: it claims the bucket by setting the low "resetting" bit with a
 * CAS, zeroes the counters and publishes the new epoch. Readers add up the
 * buckets whose epoch lies within the last nbuckets periods. Counters are
 * striped per thread so concurrent writers do not share a cache line.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uint64_t resil__now_coarse_ns(void) {
  if (resil_clock_is_fake()) return resil_now_ns();
  struct timespec ts;
  resil__vdso_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

resil_status resil__window_init(resil_window *w, uint64_t window_ns, uint32_t nbuckets) {
  if (nbuckets > RESIL__WINDOW_MAX_BUCKETS) return RESIL_E_INVALID;
  w->nbuckets = nbuckets ? nbuckets : 1;
  w->bucket_ns = window_ns / w->nbuckets;
  if (w->bucket_ns == 0) w->bucket_ns = 1;
  w->b = aligned_alloc(RESIL_CACHELINE, sizeof *w->b * w->nbuckets);
  if (!w->b) return RESIL_E_NOMEM;
  memset(w->b, 0, sizeof *w->b * w->nbuckets);
  return RESIL_OK;
}

void resil__window_destroy(resil_window *w) {
  free(w->b);
  w->b = NULL;
}

static void zero_bucket(resil_window_bucket *b) {
  for (unsigned s = 0; s < RESIL_STRIPES; s++)
    for (unsigned i = 0; i < RESIL_WINDOW_VALS; i++)
      atomic_store_explicit(&b->cell[s].v[i], 0, memory_order_relaxed);
}

/* now's epoch (+1: epoch 0 means "never used") and its bucket, usually
 * without dividing (the hint: see resil_window). */
static inline uint64_t epoch_of(resil_window *w, uint64_t now, uint32_t *idx) {
  uint64_t h = atomic_load_explicit(&w->hint, memory_order_relaxed);
  uint64_t e = h >> 8;
  if (e && now - (e - 1) * w->bucket_ns < w->bucket_ns) {
    *idx = (uint32_t)(h & 0xff);
    return e;
  }
  e = now / w->bucket_ns + 1;
  *idx = (uint32_t)(e % w->nbuckets);
  /* a thread with an older reading of the clock does not move it back */
  if (e > h >> 8) atomic_store_explicit(&w->hint, e << 8 | *idx, memory_order_relaxed);
  return e;
}

void resil__window_add(resil_window *w, uint64_t now, const uint64_t *vals) {
  uint32_t idx;
  uint64_t e = epoch_of(w, now, &idx);
  resil_window_bucket *b = &w->b[idx];
  uint64_t tag = atomic_load_explicit(&b->epoch, memory_order_acquire);
  for (unsigned spins = 0; (tag >> 1) != e || (tag & 1); spins++) {
    if ((tag >> 1) > e || spins > 1000) break; /* late writer or stuck: count anyway */
    if (!(tag & 1) && atomic_compare_exchange_weak_explicit(&b->epoch, &tag, (e << 1) | 1,
                                                            memory_order_acq_rel,
                                                            memory_order_acquire)) {
      zero_bucket(b);
      atomic_store_explicit(&b->epoch, e << 1, memory_order_release);
      break;
    }
    tag = atomic_load_explicit(&b->epoch, memory_order_acquire);
  }
  resil_window_cell *c = &b->cell[resil__stripe()];
  for (unsigned i = 0; i < RESIL_WINDOW_VALS; i++)
    if (vals[i]) atomic_fetch_add_explicit(&c->v[i], vals[i], memory_order_relaxed);
}

void resil__window_sum(const resil_window *w, uint64_t now, uint64_t *out) {
  uint64_t e = now / w->bucket_ns + 1;
  for (unsigned i = 0; i < RESIL_WINDOW_VALS; i++) out[i] = 0;
  for (uint32_t k = 0; k < w->nbuckets; k++) {
    const resil_window_bucket *b = &w->b[k];
    uint64_t be = atomic_load_explicit((_Atomic uint64_t *)&b->epoch, memory_order_acquire) >> 1;
    if (be == 0 || be > e || e - be >= w->nbuckets) continue;
    for (unsigned s = 0; s < RESIL_STRIPES; s++)
      for (unsigned i = 0; i < RESIL_WINDOW_VALS; i++)
        out[i] += atomic_load_explicit((_Atomic uint64_t *)&b->cell[s].v[i], memory_order_relaxed);
  }
}

void resil__window_reset(resil_window *w) {
  for (uint32_t k = 0; k < w->nbuckets; k++) {
    atomic_store_explicit(&w->b[k].epoch, 0, memory_order_release);
    zero_bucket(&w->b[k]);
  }
}
