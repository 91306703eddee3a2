/* Opt-in policies of a dependency, fed by done()'s outcomes and latencies:
 * the adaptive concurrency limit (gradient or AIMD) and client-side
 * adaptive throttling. Both decide once per window or refresh period,
 * never per call (README "Adaptive concurrency limit", "Client-side
 * throttling").
 *
 * Per call (done): a few relaxed adds to this thread's stripe and one load
 * of the time the window may close. The thread whose done() finds the
 * window due claims it with a CAS (the closing time becomes UINT64_MAX), so
 * exactly one thread computes the next limit; the algorithm's own state is
 * touched only by that thread. Stripe counters are cumulative and the
 * closer keeps what it saw last time, so no one ever resets a counter
 * another thread is adding to.
 *
 * Throttling: admit reads one probability (an atomic, scaled to 2^32) and
 * draws a random number only when it is not 0; the probability is
 * recomputed from a rolling window every refresh period by one thread (same
 * claim scheme).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CLAIMED UINT64_MAX
#define BASELINE_SLOTS 6 /* the baseline's memory is kept in 6 sub-periods */
#define RANGE_SLOTS 6    /* limit_min/limit_max over 6 x 10 s */
#define RANGE_SLOT_NS 10000000000ull
#define EVENT_STEP 0.2 /* a limit event when the limit moved 20 % since the last */

enum { ALG_GRADIENT = 1, ALG_AIMD = 2 };

typedef struct alim_stripe {
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t n; /* latency samples */
  _Atomic uint64_t sum_ns;
  _Atomic uint64_t drops; /* timeouts and overload */
  _Atomic uint32_t peak;  /* most calls in flight seen at a done() this window */
} alim_stripe;

typedef struct range_slot {
  _Atomic uint64_t epoch; /* 10 s period number + 1; 0 unused */
  _Atomic uint32_t lo, hi;
} range_slot;

struct resil__alimit {
  int alg;
  uint32_t min, max, min_samples;
  uint64_t window_ns, baseline_slot_ns;
  double tol, smooth, backoff;

  /* only calls admitted at or after window_start count in the window */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t window_start;
  _Atomic uint64_t close_at; /* CLAIMED while a thread closes the window */
  alim_stripe st[RESIL_STRIPES];
  range_slot range[RANGE_SLOTS];

  /* the closing thread's own state */
  uint64_t seen_n, seen_sum, seen_drops;
  double lim;
  bool slow_start;
  uint32_t published, last_event;
  double bl[BASELINE_SLOTS];
  uint64_t bl_epoch[BASELINE_SLOTS]; /* sub-period number + 1 */
  uint32_t bl_conc[BASELINE_SLOTS];  /* peak in flight of the window kept */
  double base;                       /* the baseline (ns), 0 before the first */
  uint32_t base_conc;                /* peak in flight of its window */
};

struct resil__throttle {
  double k;
  uint32_t min_requests;
  uint32_t window_ms;
  uint64_t refresh_ns;
  resil_window win; /* [0] calls sent, [1] accepted */
  _Alignas(RESIL_CACHELINE) _Atomic uint32_t p32; /* probability x 2^32, saturated */
  _Atomic uint64_t next;                          /* CLAIMED while refreshing */
  /* last figures, for messages (relaxed; approximate is fine) */
  _Atomic uint64_t last_req, last_acc;
  /* the refreshing thread's own state */
  bool active;
  uint32_t last_pct;
};

static void range_note(resil__alimit *a, uint32_t v, uint64_t now);

/* ---- setup -------------------------------------------------------------- */

resil_status resil__adaptive_new(const resil_dep_config *cfg, uint64_t now, resil__alimit **alim,
                                 resil__throttle **thr, uint32_t *first_limit) {
  *alim = NULL;
  *thr = NULL;
  *first_limit = cfg->limit.max_concurrent;
  const resil_adaptive_limit_config *ac = &cfg->adaptive;
  if (ac->algorithm && strcmp(ac->algorithm, "off") != 0) {
    resil__alimit *a = aligned_alloc(RESIL_CACHELINE, sizeof *a);
    if (!a) return RESIL_E_NOMEM;
    memset(a, 0, sizeof *a);
    a->alg = strcmp(ac->algorithm, "aimd") == 0 ? ALG_AIMD : ALG_GRADIENT;
    a->min = ac->min;
    a->max = cfg->limit.max_concurrent;
    a->min_samples = ac->min_samples;
    a->window_ns = (uint64_t)ac->window_ms * 1000000ull;
    a->baseline_slot_ns = (uint64_t)ac->baseline_ms * 1000000ull / BASELINE_SLOTS;
    a->tol = ac->tolerance;
    a->smooth = ac->smoothing;
    a->backoff = ac->backoff;
    /* Start low and grow (slow start): the first windows then measure the
     * dependency without a queue of ours in front of it, which is what the
     * baseline must be. */
    a->lim = (double)a->min;
    a->slow_start = true;
    a->published = a->last_event = a->min;
    atomic_init(&a->window_start, now);
    atomic_init(&a->close_at, now + a->window_ns);
    range_note(a, a->min, now);
    *first_limit = a->min;
    *alim = a;
  }
  const resil_throttle_config *tc = &cfg->throttle;
  if (tc->enabled) {
    resil__throttle *t = aligned_alloc(RESIL_CACHELINE, sizeof *t);
    if (!t) {
      free(*alim);
      *alim = NULL;
      return RESIL_E_NOMEM;
    }
    memset(t, 0, sizeof *t);
    t->k = tc->k;
    t->min_requests = tc->min_requests;
    t->window_ms = tc->window_ms;
    uint64_t wns = (uint64_t)tc->window_ms * 1000000ull;
    t->refresh_ns = wns / 10 < 100000000ull ? wns / 10 : 100000000ull;
    if (resil__window_init(&t->win, wns, 10) != RESIL_OK) {
      free(t);
      free(*alim);
      *alim = NULL;
      return RESIL_E_NOMEM;
    }
    atomic_init(&t->next, now + t->refresh_ns);
    *thr = t;
  }
  return RESIL_OK;
}

void resil__adaptive_free(resil__alimit *alim, resil__throttle *thr) {
  free(alim);
  if (thr) {
    resil__window_destroy(&thr->win);
    free(thr);
  }
}

void resil__adaptive_fork_child(resil__alimit *a, resil__throttle *t) {
  /* A thread of the parent may have been closing a window: no one will
   * finish that here. */
  if (a && atomic_load(&a->close_at) == CLAIMED) atomic_store(&a->close_at, 0);
  if (t && atomic_load(&t->next) == CLAIMED) atomic_store(&t->next, 0);
}

/* ---- the limit's range over the last 60 s ------------------------------- */

static void range_note(resil__alimit *a, uint32_t v, uint64_t now) {
  uint64_t e = now / RANGE_SLOT_NS + 1;
  range_slot *r = &a->range[e % RANGE_SLOTS];
  if (atomic_load_explicit(&r->epoch, memory_order_relaxed) != e) {
    atomic_store_explicit(&r->epoch, 0, memory_order_release); /* readers skip it meanwhile */
    atomic_store_explicit(&r->lo, v, memory_order_relaxed);
    atomic_store_explicit(&r->hi, v, memory_order_relaxed);
    atomic_store_explicit(&r->epoch, e, memory_order_release);
    return;
  }
  if (v < atomic_load_explicit(&r->lo, memory_order_relaxed))
    atomic_store_explicit(&r->lo, v, memory_order_relaxed);
  if (v > atomic_load_explicit(&r->hi, memory_order_relaxed))
    atomic_store_explicit(&r->hi, v, memory_order_relaxed);
}

void resil__alimit_range(resil__alimit *a, uint32_t cur, uint64_t now, uint32_t *lo,
                         uint32_t *hi) {
  uint64_t e = now / RANGE_SLOT_NS + 1;
  *lo = *hi = cur;
  for (unsigned i = 0; i < RANGE_SLOTS; i++) {
    range_slot *r = &a->range[i];
    uint64_t re = atomic_load_explicit(&r->epoch, memory_order_acquire);
    if (re == 0 || re > e || e - re >= RANGE_SLOTS) continue;
    uint32_t l = atomic_load_explicit(&r->lo, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&r->hi, memory_order_relaxed);
    if (l < *lo) *lo = l;
    if (h > *hi) *hi = h;
  }
}

/* ---- the adaptive limit -------------------------------------------------- */

/* The gradient baseline: the lowest window latency on record over the
 * last baseline_ms, kept as the minimum of each of BASELINE_SLOTS
 * sub-periods, with the most calls in flight in that window.
 *
 * A window enters the record only if its latency is at or below the
 * baseline, or it ran no more calls at once than the baseline's window did
 * (or than LIMIT_MIN). So a limit that sits above the knee, where latency
 * is partly our own queue, never raises the baseline (no upward creep under
 * sustained overload, as with a moving average); while a dependency that
 * became slower for good, seen at the same or lower concurrency, replaces
 * the old minimum once it ages out. With no window on record the baseline
 * stays. It is never re-measured by pinning the limit low. */
static double baseline_note(resil__alimit *a, double lat, uint32_t peak, uint64_t now) {
  uint64_t e = now / a->baseline_slot_ns + 1;
  uint32_t conc_ok = a->base_conc > a->min ? a->base_conc : a->min;
  if (a->base == 0.0 || lat <= a->base || peak <= conc_ok) {
    unsigned i = (unsigned)(e % BASELINE_SLOTS);
    if (a->bl_epoch[i] != e || lat < a->bl[i]) {
      a->bl_epoch[i] = e;
      a->bl[i] = lat;
      a->bl_conc[i] = peak;
    }
  }
  double b = 0.0;
  uint32_t c = 0;
  for (unsigned k = 0; k < BASELINE_SLOTS; k++)
    if (a->bl_epoch[k] && a->bl_epoch[k] <= e && e - a->bl_epoch[k] < BASELINE_SLOTS &&
        (b == 0.0 || a->bl[k] < b)) {
      b = a->bl[k];
      c = a->bl_conc[k];
    }
  if (b > 0.0) {
    a->base = b;
    a->base_conc = c;
  }
  return a->base;
}

/* The limit after a window of dn calls (mean latency lat ns) and ddrops
 * drops with at most peak in flight, clamped to min..max; *base gets the
 * gradient's baseline (0 for AIMD). */
static double next_limit(resil__alimit *a, double lat, uint64_t dn, uint64_t ddrops,
                         uint32_t peak, uint64_t now, double *base_out) {
  /* App-limited: fewer than half the limit were ever in use in the window,
   * so the window says nothing about a larger limit: it does not grow. */
  bool app_limited = (double)peak * 2.0 < a->lim;
  double base = 0.0, g = 1.0, lim = a->lim;
  if (a->alg == ALG_GRADIENT) {
    if (dn) {
      base = baseline_note(a, lat, peak, now);
      if (lat > 0.0) g = a->tol * base / lat;
      if (g > 1.0) g = 1.0;
      if (g < 0.5) g = 0.5;
    }
    if (ddrops && g > a->backoff) g = a->backoff;
    double target;
    if (g < 1.0) {
      a->slow_start = false;
      target = lim * g;
    } else if (app_limited) {
      target = lim;
    } else {
      target = a->slow_start ? lim * 2.0 : lim + sqrt(lim);
    }
    lim = (1.0 - a->smooth) * lim + a->smooth * target;
  } else { /* AIMD */
    if (ddrops) {
      a->slow_start = false;
      lim *= a->backoff;
    } else if (!app_limited) {
      lim = a->slow_start ? lim * 2.0 : lim + 1.0;
    }
  }
  if (lim < (double)a->min) lim = (double)a->min;
  if (lim > (double)a->max) lim = (double)a->max;
  *base_out = base;
  return lim;
}

/* A RESIL_EVENT_LIMIT event when the published limit moved EVENT_STEP or
 * more since the last one. */
static void limit_event(resil__alimit *a, resil_dep *d, uint32_t pub, double old, double lim,
                        double lat, double base, uint64_t dn, uint64_t ddrops, uint32_t peak) {
  double moved = fabs((double)pub - (double)a->last_event);
  if (pub == a->last_event || moved < EVENT_STEP * (double)a->last_event) return;
  char detail[240];
  if (a->alg == ALG_GRADIENT)
    snprintf(detail, sizeof detail,
             "gradient: window latency %.2f ms over %llu calls vs baseline %.2f ms x tolerance "
             "%.2f, %llu drops, at most %u in flight; limit %.1f -> %.1f (%u..%u)",
             lat / 1e6, (unsigned long long)dn, base / 1e6, a->tol,
             (unsigned long long)ddrops, peak, old, lim, a->min, a->max);
  else
    snprintf(detail, sizeof detail,
             "aimd: %llu drops (timeouts, overload) in a window of %llu calls, at most %u in "
             "flight; limit %.1f -> %.1f (%u..%u)",
             (unsigned long long)ddrops, (unsigned long long)(dn + ddrops), peak, old, lim,
             a->min, a->max);
  resil__event_value(resil_dep_name(d), resil__dep_ev(d), RESIL_EVENT_LIMIT,
                     pub < a->last_event ? "decreased" : "increased", detail, a->last_event,
                     pub);
  a->last_event = pub;
}

static void close_window(resil__alimit *a, resil_dep *d, uint64_t at, uint64_t now) {
  uint64_t n = 0, sum = 0, drops = 0;
  for (unsigned i = 0; i < RESIL_STRIPES; i++) {
    n += atomic_load_explicit(&a->st[i].n, memory_order_relaxed);
    sum += atomic_load_explicit(&a->st[i].sum_ns, memory_order_relaxed);
    drops += atomic_load_explicit(&a->st[i].drops, memory_order_relaxed);
  }
  uint64_t dn = n - a->seen_n, dsum = sum - a->seen_sum, ddrops = drops - a->seen_drops;
  if (dn + ddrops < a->min_samples) {
    /* Not enough evidence yet: the window goes on (calls admitted in it
     * have yet to end, or traffic is light). Look again a little later. */
    uint64_t again = a->window_ns / 8 > 1000000 ? a->window_ns / 8 : 1000000;
    (void)at;
    atomic_store_explicit(&a->close_at, now + again, memory_order_release);
    return;
  }
  a->seen_n = n;
  a->seen_sum = sum;
  a->seen_drops = drops;
  uint32_t peak = 0;
  for (unsigned i = 0; i < RESIL_STRIPES; i++) {
    uint32_t p = atomic_exchange_explicit(&a->st[i].peak, 0, memory_order_relaxed);
    if (p > peak) peak = p;
  }
  double lat = dn ? (double)dsum / (double)dn : 0.0, base = 0.0, old = a->lim;
  double lim = next_limit(a, lat, dn, ddrops, peak, now, &base);
  a->lim = lim;
  uint32_t pub = (uint32_t)lim;
  if (pub < a->min) pub = a->min;
  uint32_t was = a->published;
  if (pub != was) {
    resil__dep_set_limit(d, pub);
    a->published = pub;
  }
  range_note(a, was, now); /* in force until now */
  range_note(a, pub, now);
  atomic_store_explicit(&a->window_start, now, memory_order_release);

  limit_event(a, d, pub, old, lim, lat, base, dn, ddrops, peak);
  /* last: the next window's closer may start once this one is done */
  atomic_store_explicit(&a->close_at, now + a->window_ns, memory_order_release);
}

void resil__alimit_record(resil__alimit *a, resil_dep *d, uint64_t start_ns, resil_status outcome,
                          uint64_t lat_ns, uint64_t now, uint32_t inflight) {
  alim_stripe *s = &a->st[resil__stripe()];
  if (inflight > atomic_load_explicit(&s->peak, memory_order_relaxed))
    atomic_store_explicit(&s->peak, inflight, memory_order_relaxed);
  /* A call admitted before the window began ran (partly) under an older
   * limit: its latency and its drop say nothing about this one. */
  if (start_ns >= atomic_load_explicit(&a->window_start, memory_order_acquire)) {
    switch (outcome) {
      case RESIL_OK:
        atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->sum_ns, lat_ns, memory_order_relaxed);
        break;
      case RESIL_E_TIMEOUT: /* a drop, and its time is a (low) latency sample */
        atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->sum_ns, lat_ns, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->drops, 1, memory_order_relaxed);
        break;
      case RESIL_E_OVERLOAD: atomic_fetch_add_explicit(&s->drops, 1, memory_order_relaxed); break;
      default: break; /* other failures, caller errors, rejections: no signal */
    }
  }
  uint64_t at = atomic_load_explicit(&a->close_at, memory_order_acquire);
  if (now < at) return;
  if (!atomic_compare_exchange_strong_explicit(&a->close_at, &at, CLAIMED, memory_order_acq_rel,
                                               memory_order_relaxed))
    return;
  close_window(a, d, at, now);
}

/* ---- client-side throttling ------------------------------------------------ */

static void throttle_refresh(resil__throttle *t, resil_dep *d, uint64_t now) {
  uint64_t at = atomic_load_explicit(&t->next, memory_order_acquire);
  if (now < at || !atomic_compare_exchange_strong_explicit(&t->next, &at, CLAIMED,
                                                           memory_order_acq_rel,
                                                           memory_order_relaxed))
    return;
  uint64_t s[RESIL_WINDOW_VALS];
  resil__window_sum(&t->win, now, s);
  uint64_t req = s[0], acc = s[1];
  double p = 0.0;
  if (req >= t->min_requests) {
    p = ((double)req - t->k * (double)acc) / ((double)req + 1.0);
    if (p < 0.0) p = 0.0;
  }
  double scaled = p * 4294967296.0;
  atomic_store_explicit(&t->p32, scaled >= 4294967295.0 ? 0xffffffffu : (uint32_t)scaled,
                        memory_order_relaxed);
  atomic_store_explicit(&t->last_req, req, memory_order_relaxed);
  atomic_store_explicit(&t->last_acc, acc, memory_order_relaxed);
  uint32_t pct = (uint32_t)(p * 100.0 + 0.5);
  bool start = !t->active && p >= 0.05, stop = t->active && p == 0.0;
  uint32_t was = t->last_pct;
  if (start) t->active = true;
  if (stop) t->active = false;
  t->last_pct = t->active ? pct : 0;
  atomic_store_explicit(&t->next, now + t->refresh_ns, memory_order_release);
  if (start || stop) {
    char detail[200];
    snprintf(detail, sizeof detail,
             "%llu of the last %llu calls sent in %u ms were accepted (K %.2f): shedding %u%% "
             "of calls",
             (unsigned long long)acc, (unsigned long long)req, t->window_ms, t->k, pct);
    resil__event_value(resil_dep_name(d), resil__dep_ev(d), RESIL_EVENT_THROTTLE,
                       start ? "started" : "stopped", detail, start ? 0 : was, pct);
  }
}

resil_status resil__throttle_admit(resil__throttle *t, resil_dep *d, uint64_t now) {
  if (now >= atomic_load_explicit(&t->next, memory_order_relaxed)) throttle_refresh(t, d, now);
  uint32_t p = atomic_load_explicit(&t->p32, memory_order_relaxed);
  if (p && (uint32_t)(resil__rand() >> 32) < p) return RESIL_E_THROTTLED;
  return RESIL_OK;
}

void resil__throttle_record(resil__throttle *t, resil_dep *d, resil_status outcome, uint64_t now) {
  /* Calls the dependency answered, one way or another; local rejections
   * after admission and local errors were never sent. */
  switch (outcome) {
    case RESIL_OK:
    case RESIL_E_CALLER: {
      uint64_t v[RESIL_WINDOW_VALS] = {1, 1, 0};
      resil__window_add(&t->win, now, v);
      break;
    }
    case RESIL_E_FAILURE:
    case RESIL_E_TIMEOUT:
    case RESIL_E_OVERLOAD: {
      uint64_t v[RESIL_WINDOW_VALS] = {1, 0, 0};
      resil__window_add(&t->win, now, v);
      break;
    }
    default: return;
  }
  if (now >= atomic_load_explicit(&t->next, memory_order_relaxed)) throttle_refresh(t, d, now);
}

double resil__throttle_probability(const resil__throttle *t) {
  return (double)atomic_load_explicit((_Atomic uint32_t *)&t->p32, memory_order_relaxed) /
         4294967296.0;
}

resil_status resil__throttle_reject_msg(resil__throttle *t, const char *dep, resil_err *err) {
  return resil_err_set(err, RESIL_E_THROTTLED,
                       "%s: rejected by client-side throttling: shedding %.0f%% of calls, since "
                       "only %llu of the last %llu calls sent in %u ms were accepted "
                       "(throttle.k %.2f)",
                       dep, resil__throttle_probability(t) * 100.0,
                       (unsigned long long)atomic_load_explicit(&t->last_acc, memory_order_relaxed),
                       (unsigned long long)atomic_load_explicit(&t->last_req, memory_order_relaxed),
                       t->window_ms, t->k);
}
