/* Fixed log-spaced latency histogram, striped per thread. */
#include <string.h>

#include "internal.h"

static const uint64_t bounds[RESIL_HIST_BOUNDS] = {
    RESIL__HIST_BOUND0_NS, 250000ull,     500000ull,     1000000ull,    2500000ull,   5000000ull,
    10000000ull,   25000000ull,   50000000ull,   100000000ull,  250000000ull, 500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull, 30000000000ull, 60000000000ull,
};

const uint64_t *resil_hist_bounds_ns(void) { return bounds; }

unsigned resil__hist_bucket(uint64_t ns) {
  unsigned lo = 0, hi = RESIL_HIST_BOUNDS; /* first bound >= ns */
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if (bounds[mid] < ns)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

void resil__hist_init(resil_hist *h) { memset(h, 0, sizeof *h); }

void resil__hist_read(const resil_hist *h, resil_hist_snapshot *out) {
  memset(out, 0, sizeof *out);
  for (unsigned i = 0; i < RESIL_STRIPES; i++) {
    for (unsigned b = 0; b <= RESIL_HIST_BOUNDS; b++) {
      uint64_t c = atomic_load_explicit(
          (_Atomic uint64_t *)&h->s[i].counts[b], memory_order_relaxed);
      out->counts[b] += c;
      out->count += c;
    }
    out->sum_ns += atomic_load_explicit((_Atomic uint64_t *)&h->s[i].sum_ns, memory_order_relaxed);
  }
}

uint64_t resil_hist_quantile_ns(const resil_hist_snapshot *h, double q) {
  if (!h || h->count == 0) return 0;
  if (q < 0) q = 0;
  if (q > 1) q = 1;
  double rank = q * (double)h->count;
  uint64_t seen = 0;
  for (unsigned b = 0; b <= RESIL_HIST_BOUNDS; b++) {
    if (h->counts[b] == 0) continue;
    if ((double)(seen + h->counts[b]) >= rank) {
      uint64_t lo = b ? bounds[b - 1] : 0;
      if (b == RESIL_HIST_BOUNDS) return lo; /* +Inf bucket: report its floor */
      uint64_t hi = bounds[b];
      double frac = (rank - (double)seen) / (double)h->counts[b];
      return lo + (uint64_t)(frac * (double)(hi - lo));
    }
    seen += h->counts[b];
  }
  return bounds[RESIL_HIST_BOUNDS - 1];
}
