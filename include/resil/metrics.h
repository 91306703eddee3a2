/* resil: metric value types shared by the dependency, breaker and pool
 * snapshots, and the fixed latency buckets.
 *
 * Latency histograms use one fixed set of log-spaced bucket bounds
 * (1-2.5-5 steps from 100 us to 60 s), the same for every histogram so that
 * Prometheus can aggregate them across tasks.
 */
#ifndef RESIL_METRICS_H
#define RESIL_METRICS_H

#include "resil/common.h"

RESIL_BEGIN_DECLS

/* Number of finite bucket bounds; the snapshot has one more (+Inf). */
#define RESIL_HIST_BOUNDS 18

/* Upper bounds of the finite buckets, in nanoseconds, ascending:
 * 100us 250us 500us 1ms 2.5ms 5ms 10ms 25ms 50ms 100ms 250ms 500ms 1s 2.5s
 * 5s 10s 30s 60s. Returns a static array of RESIL_HIST_BOUNDS entries. */
RESIL_API const uint64_t *resil_hist_bounds_ns(void);

typedef struct resil_hist_snapshot {
  /* counts[i]: observations <= bound i and > bound i-1 (NOT cumulative);
   * counts[RESIL_HIST_BOUNDS]: above the last bound. */
  uint64_t counts[RESIL_HIST_BOUNDS + 1];
  uint64_t count;  /* sum of counts */
  uint64_t sum_ns; /* sum of observed values */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[24];
} resil_hist_snapshot;

/* The value at quantile q (0..1) estimated by linear interpolation inside
 * its bucket, in ns; 0 for an empty histogram. Pure function. */
RESIL_API uint64_t resil_hist_quantile_ns(const resil_hist_snapshot *h, double q);

RESIL_END_DECLS
#endif
