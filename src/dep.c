/* A dependency: breaker + concurrency limit (bulkhead with a FIFO queue) +
 * retry policy with a budget + metrics, and the process-wide registry.
 *
 * Fast path (closed breaker, free slot): one atomic load of the breaker word,
 * a slot taken, one clock read at admit and one at done, striped counter
 * and histogram adds. No lock, no allocation.
 *
 * Slots are counted in one word (taken, below), which an exact limit needs,
 * as any semaphore does; but a call does not write it in the common case.
 * Parking: done() with nobody queued and a limit in force of at least
 * PARK_MIN_LIMIT (and no adaptive limit, which needs the exact count at
 * each done and moves the limit) keeps the slot in its thread's stripe (one CAS on a line
 * the thread writes anyway) instead of giving it back, and the next admit
 * on that stripe takes it from there. A parked slot still counts as taken,
 * so "taken <= limit.max_concurrent" keeps in-flight calls under the
 * ceiling exactly; in flight = taken - parked. An admit that finds the
 * count full takes any stripe's parked slot before it queues or rejects,
 * and a parked slot is used only while taken is within the limit in force
 * (an adaptive limit lowered below it gives the slot back instead). A waiter
 * raises nwaiters before it looks at the parked slots, and a parking done()
 * reads nwaiters after parking (both seq_cst), so one of the two sees the
 * other: a parked slot is never left while someone waits for one.
 *
 * Slot hand-off: a call that finds the limit full and may queue takes the
 * queue mutex, re-tries and otherwise appends itself to a FIFO list
 * and sleeps on its own condition variable. done() decrements in-flight and,
 * only if someone is queued, takes the mutex and grants freed slots to the
 * oldest waiters. The seq_cst ordering of "in-flight--, then read nwaiters"
 * against "nwaiters++, then re-try in-flight" means a slot freed while a
 * waiter enqueues is never missed.
 *
 * The limit and the in-flight count share one 64-bit word (limit << 32 |
 * in flight), so one CAS admits a call only if in flight < the limit in
 * force at that instant, even while an adaptive limit (adaptive.c) moves:
 * no check-then-act window. A dependency without an adaptive limit or
 * throttling pays one predictable branch in admit and one in done.
 *
 * Fork (fork.c): in a child, slots and queue places held by threads of the
 * parent are given up (in_flight and the queue start empty) and fork_gen
 * moves on; a permit carries the fork_gen it was admitted under, and one
 * from before the fork ends in the child without giving back a slot it no
 * longer holds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PERMIT_LIVE 0x1u
#define PERMIT_GEN_SHIFT 1 /* the rest of flags_: the fork_gen admitted under */
#define FORK_GEN_MASK 0x7fffffffu

typedef struct waiter {
  struct waiter *next, *prev;
  pthread_cond_t cv;
  bool granted;
  bool closed;
} waiter;

typedef struct dep_stripe {
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t calls[RESIL_OUTCOME_COUNT_];
  _Atomic uint32_t parked; /* 1: a slot parked by a call of this stripe */
  _Atomic uint64_t rejections[RESIL_REJECT_COUNT_];
  _Atomic uint64_t retries;
  _Atomic uint64_t late_rejections;
} dep_stripe;

struct resil_dep {
  /* read-mostly */
  resil_dep_config cfg;
  char name[64];
  resil_breaker *breaker;
  _Atomic bool draining;
  _Atomic bool warm; /* resil_dep_set_warm() */
  _Atomic(resil_pool *) pool;
  uint32_t fork_gen; /* forks this dependency went through (mod 2^31); set only
                        by the atfork child handler, before the child has
                        other threads */

  /* opt-in policies (adaptive.c): NULL when off */
  resil__alimit *alim;
  resil__throttle *thr;
  bool features; /* alim || thr: done() has work for them */
  bool park;     /* !alim: done() may park its slot (see the top) */

  /* the concurrency limit: limit << 32 | taken (in flight + parked) */
  _Alignas(RESIL_CACHELINE) _Atomic uint64_t slots;
  _Alignas(RESIL_CACHELINE) _Atomic uint32_t nwaiters;
  pthread_mutex_t qmu;
  waiter *qhead, *qtail;

  /* retry budget: requests and retries over budget_window_ms */
  resil_window budget;

  dep_stripe stripe[RESIL_STRIPES];
  resil_hist latency;

  /* registry */
  resil_dep *reg_next, *reg_prev;

  /* events and recovery probes (probe.c, event.c) */
  resil_breaker_hook user_hook; /* cfg.breaker.on_transition, called after ours */
  void *user_hook_ctx;
  resil__ev_bucket ev;
  _Atomic uint64_t probe_results[RESIL_PROBE_RESULT_COUNT_];

  /* outbound rate limit, pauses, memory gauge (flow.c) */
  resil__flow flow;

  void (*_Atomic test_park_fn)(void *); /* resil__dep_test_before_park() */
  void *test_park_arg;
};

#define B_REQ 0
#define B_RETRY 1

/* ---- names ------------------------------------------------------------- */

static const char *const reject_names[] = {
    "breaker_open", "concurrency_full", "queue_timeout", "pool_timeout",
    "deadline",     "draining",         "retry_budget",  "throttled",
    "rate_limited", "paused"};
_Static_assert(sizeof reject_names / sizeof reject_names[0] == RESIL_REJECT_COUNT_,
               "one name per rejection reason");
static const char *const outcome_names[RESIL_OUTCOME_COUNT_] = {"success", "failure", "timeout",
                                                                "overload", "ignored"};

const char *resil_reject_reason_name(resil_reject_reason r) {
  return (unsigned)r < RESIL_REJECT_COUNT_ ? reject_names[r] : "unknown";
}
const char *resil_outcome_name(resil_outcome o) {
  return (unsigned)o < RESIL_OUTCOME_COUNT_ ? outcome_names[o] : "unknown";
}

static int reject_reason_of(resil_status s) {
  switch (s) {
    case RESIL_E_BREAKER_OPEN: return RESIL_REJECT_BREAKER_OPEN;
    case RESIL_E_CONCURRENCY_FULL: return RESIL_REJECT_CONCURRENCY_FULL;
    case RESIL_E_QUEUE_TIMEOUT: return RESIL_REJECT_QUEUE_TIMEOUT;
    case RESIL_E_POOL_TIMEOUT: return RESIL_REJECT_POOL_TIMEOUT;
    case RESIL_E_DEADLINE: return RESIL_REJECT_DEADLINE;
    case RESIL_E_DRAINING: return RESIL_REJECT_DRAINING;
    case RESIL_E_RETRY_BUDGET: return RESIL_REJECT_RETRY_BUDGET;
    case RESIL_E_THROTTLED: return RESIL_REJECT_THROTTLED;
    case RESIL_E_RATE_LIMITED: return RESIL_REJECT_RATE_LIMITED;
    case RESIL_E_PAUSED: return RESIL_REJECT_PAUSED;
    default: return -1;
  }
}

static resil_outcome outcome_of(resil_status s) {
  switch (s) {
    case RESIL_OK: return RESIL_OUTCOME_SUCCESS;
    case RESIL_E_FAILURE: return RESIL_OUTCOME_FAILURE;
    case RESIL_E_TIMEOUT: return RESIL_OUTCOME_TIMEOUT;
    case RESIL_E_OVERLOAD: return RESIL_OUTCOME_OVERLOAD;
    default: return RESIL_OUTCOME_IGNORED;
  }
}

/* ---- config ------------------------------------------------------------ */

void resil_dep_config_init(resil_dep_config *c, const char *name) {
  memset(c, 0, sizeof *c);
  c->name = name;
  c->timeout_ms = 1000;
  c->critical = false;
  resil_breaker_config_init(&c->breaker);
  c->limit.max_concurrent = 64;
  c->limit.max_waiters = 0;
  c->limit.max_wait_ms = 50;
  c->retry.max_attempts = 1;
  c->retry.base_backoff_ms = 25;
  c->retry.multiplier = 2.0;
  c->retry.max_backoff_ms = 1000;
  c->retry.budget_percent = 20;
  c->retry.budget_min_per_s = 3;
  c->retry.budget_window_ms = 10000;
  c->probe_interval_ms = 500;
  c->probe_timeout_ms = 0;
  c->adaptive.algorithm = "off";
  c->adaptive.min = 4;
  c->adaptive.window_ms = 250;
  c->adaptive.min_samples = 20;
  c->adaptive.tolerance = 1.5;
  c->adaptive.smoothing = 0.5;
  c->adaptive.baseline_ms = 60000;
  c->adaptive.backoff = 0.9;
  c->throttle.enabled = false;
  c->throttle.k = 2.0;
  c->throttle.window_ms = 10000;
  c->throttle.min_requests = 20;
  c->rate_limit.per_s = 0;
  c->rate_limit.burst = 1;
  c->pushback.max_pause_ms = 30000;
  c->pushback.pause_ms = 0;
}

static bool name_ok(const char *n) {
  size_t len = strlen(n);
  if (len == 0 || len > 63) return false;
  for (size_t i = 0; i < len; i++) {
    char ch = n[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '_' || ch == '-' || ch == '.'))
      return false;
  }
  return true;
}

/* The adaptive limit and throttling, named by their keys' paths. */
static void validate_adaptive(resil_problems *p, const resil_dep_config *c) {
  const resil_adaptive_limit_config *a = &c->adaptive;
  const char *alg = a->algorithm;
  bool on = alg && strcmp(alg, "off") != 0;
  if (on && strcmp(alg, "gradient") != 0 && strcmp(alg, "aimd") != 0)
    resil__problem(p, "limit.adaptive", "'%.40s' is not one of off, gradient, aimd", alg);
  if (on) {
    if (a->min < 1 || a->min > c->limit.max_concurrent)
      resil__problem(p, "limit.min", "%u is outside 1..%u (limit.max_concurrent, the ceiling)",
                     a->min, c->limit.max_concurrent);
    resil__check_range(p, "limit.window_ms", a->window_ms, 1, 3600000);
    resil__check_range(p, "limit.min_samples", a->min_samples, 1, 100000);
    resil__check_range_d(p, "limit.tolerance", a->tolerance, 1.0, 10.0);
    resil__check_range_d(p, "limit.smoothing", a->smoothing, 0.01, 1.0);
    resil__check_range(p, "limit.baseline_ms", a->baseline_ms, 1000, 3600000);
    resil__check_range_d(p, "limit.backoff", a->backoff, 0.5, 0.99);
  }
  const resil_throttle_config *t = &c->throttle;
  if (!t->enabled) return;
  resil__check_range_d(p, "throttle.k", t->k, 1.0, 10.0);
  resil__check_range(p, "throttle.window_ms", t->window_ms, 1000, 600000);
  resil__check_range(p, "throttle.min_requests", t->min_requests, 1, 1000000);
  /* The breaker must not open on the partial failure the throttle is there
   * to shed gracefully; it stays for total outages (README "Client-side
   * throttling"). */
  if (c->breaker.failure_rate_percent && c->breaker.failure_rate_percent < 90)
    resil__problem(p, "breaker.failure_rate_percent",
                   "%u would open the breaker on a partial failure that throttling sheds "
                   "gracefully: with throttle on it must be 0 or 90..100 (recommended 95)",
                   c->breaker.failure_rate_percent);
  if (c->breaker.consecutive_failures && c->breaker.consecutive_failures < 20)
    resil__problem(p, "breaker.consecutive_failures",
                   "%u would open the breaker on a partial failure that throttling sheds "
                   "gracefully: with throttle on it must be 0 or >= 20 (recommended 0)",
                   c->breaker.consecutive_failures);
}

resil_status resil_dep_config_validate(const resil_dep_config *c, resil_err *err) {
  resil_problems p;
  char prefix[80];
  if (!c) return resil_err_set(err, RESIL_E_INVALID, "dependency config is NULL");
  snprintf(prefix, sizeof prefix, "%.63s: ", c->name ? c->name : "(unnamed)");
  resil__problems_init(&p, prefix);
  if (!c->name)
    resil__problem(&p, "name", "is required");
  else if (!name_ok(c->name))
    resil__problem(&p, "name", "'%.63s' must be 1..63 characters of A-Z a-z 0-9 _ . -", c->name);
  if (c->timeout_ms == 0)
    resil__problem(&p, "timeout_ms", "must be > 0 (no call may wait forever)");
  else
    resil__check_range(&p, "timeout_ms", c->timeout_ms, 1, 3600000);
  resil__check_range(&p, "limit.max_concurrent", c->limit.max_concurrent, 1, 1000000);
  resil__check_range(&p, "limit.max_waiters", c->limit.max_waiters, 0, 1000000);
  if (c->limit.max_waiters) {
    if (c->limit.max_wait_ms == 0)
      resil__problem(&p, "limit.max_wait_ms", "must be > 0 when limit.max_waiters is set");
    else
      resil__check_range(&p, "limit.max_wait_ms", c->limit.max_wait_ms, 1, 3600000);
  }
  resil__check_range(&p, "retry.max_attempts", c->retry.max_attempts, 1, 10);
  if (c->retry.max_attempts > 1) {
    resil__check_range(&p, "retry.base_backoff_ms", c->retry.base_backoff_ms, 1, 60000);
    resil__check_range_d(&p, "retry.multiplier", c->retry.multiplier, 1.0, 10.0);
    resil__check_range(&p, "retry.max_backoff_ms", c->retry.max_backoff_ms, 1, 600000);
    if (c->retry.max_backoff_ms < c->retry.base_backoff_ms)
      resil__problem(&p, "retry.max_backoff_ms", "%u is below retry.base_backoff_ms %u",
                     c->retry.max_backoff_ms, c->retry.base_backoff_ms);
  }
  resil__check_range(&p, "retry.budget_percent", c->retry.budget_percent, 0, 100);
  resil__check_range(&p, "retry.budget_min_per_s", c->retry.budget_min_per_s, 0, 1000000);
  resil__check_range(&p, "retry.budget_window_ms", c->retry.budget_window_ms, 100, 3600000);
  if (c->probe_interval_ms)
    resil__check_range(&p, "probe_interval_ms", c->probe_interval_ms, 10, 3600000);
  if (c->probe_timeout_ms)
    resil__check_range(&p, "probe_timeout_ms", c->probe_timeout_ms, 1, 60000);
  validate_adaptive(&p, c);
  if (c->rate_limit.per_s) {
    resil__check_range(&p, "rate_limit.per_s", c->rate_limit.per_s, 1, 1000000000);
    resil__check_range(&p, "rate_limit.burst", c->rate_limit.burst, 1, 1000000);
  }
  resil__check_range(&p, "pushback.max_pause_ms", c->pushback.max_pause_ms, 0, 3600000);
  if (c->pushback.pause_ms && c->pushback.pause_ms > c->pushback.max_pause_ms)
    resil__problem(&p, "pushback.pause_ms", "%u ms is above pushback.max_pause_ms %u ms",
                   c->pushback.pause_ms, c->pushback.max_pause_ms);
  resil_err berr;
  if (resil_breaker_config_validate(&c->breaker, prefix, &berr) != RESIL_OK)
    resil__problems_merge(&p, berr.msg);
  return resil__problems_finish(&p, err);
}

/* ---- registry ---------------------------------------------------------- */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static resil_dep *reg_head, *reg_tail;

static resil_dep *find_locked(const char *name) {
  for (resil_dep *d = reg_head; d; d = d->reg_next)
    if (strcmp(d->name, name) == 0) return d;
  return NULL;
}

resil_dep *resil_registry_find(const char *name) {
  if (!name) return NULL;
  pthread_mutex_lock(&reg_mu);
  resil_dep *d = find_locked(name);
  pthread_mutex_unlock(&reg_mu);
  return d;
}

size_t resil_registry_foreach(resil_dep_visit_fn fn, void *ctx) {
  size_t n = 0;
  if (!fn) return 0;
  pthread_mutex_lock(&reg_mu);
  for (resil_dep *d = reg_head; d; d = d->reg_next, n++) fn(ctx, d);
  pthread_mutex_unlock(&reg_mu);
  return n;
}

/* ---- events and probes (the rest is in event.c and probe.c) ------------ */

static void dep_transition(void *ctx, const char *name, resil_breaker_state from,
                           resil_breaker_state to, resil_trip_reason reason) {
  resil_dep *d = ctx;
  if (to == RESIL_BREAKER_OPEN) resil__probe_kick();
  resil__event_breaker(d->name, &d->ev, d->breaker, from, to, reason);
  if (d->user_hook) d->user_hook(d->user_hook_ctx, name, from, to, reason);
}

void resil__dep_count_probe(resil_dep *d, resil_probe_result r) {
  if ((unsigned)r < RESIL_PROBE_RESULT_COUNT_)
    atomic_fetch_add_explicit(&d->probe_results[r], 1, memory_order_relaxed);
}

void resil_dep_done_err(resil_permit *p, resil_status outcome, const char *message) {
  resil__call_msg = message;
  resil_dep_done(p, outcome);
  resil__call_msg = NULL;
}

/* ---- lifecycle --------------------------------------------------------- */

/* Free what resil_dep_new() built (d is in no registry). */
static void dep_destroy(resil_dep *d) {
  resil__window_destroy(&d->budget);
  resil_breaker_free(d->breaker);
  pthread_mutex_destroy(&d->qmu);
  resil__ev_bucket_destroy(&d->ev);
  resil__adaptive_free(d->alim, d->thr);
  free(d);
}

/* A parked slot is kept only while the limit in force is at least this:
 * a stripe parks at most one, so at most RESIL_STRIPES of them are away
 * from the count (and taken back by an admit that finds it full). */
#define PARK_MIN_LIMIT 32u

resil_dep *resil_dep_new(const resil_dep_config *cfg, resil_err *err) {
  if (resil_dep_config_validate(cfg, err) != RESIL_OK) return NULL;
  resil__fork_init();
  resil_dep *d = aligned_alloc(RESIL_CACHELINE, sizeof *d);
  if (!d) {
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", cfg->name);
    return NULL;
  }
  memset(d, 0, sizeof *d);
  d->cfg = *cfg;
  resil__strlcpy(d->name, cfg->name, sizeof d->name);
  d->cfg.name = d->name;
  d->cfg.breaker.name = d->name;
  /* The breaker reports transitions to the dependency, which emits events,
   * wakes the probe threads and then calls the user's hook. */
  d->user_hook = cfg->breaker.on_transition;
  d->user_hook_ctx = cfg->breaker.hook_ctx;
  resil_breaker_config bc = d->cfg.breaker;
  bc.on_transition = dep_transition;
  bc.hook_ctx = d;
  resil__ev_bucket_init(&d->ev);
  d->breaker = resil_breaker_new(&bc, err);
  if (!d->breaker) {
    resil__ev_bucket_destroy(&d->ev);
    free(d);
    return NULL;
  }
  if (resil__window_init(&d->budget, (uint64_t)cfg->retry.budget_window_ms * 1000000ull, 10) !=
      RESIL_OK) {
    resil_breaker_free(d->breaker);
    resil__ev_bucket_destroy(&d->ev);
    free(d);
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", cfg->name);
    return NULL;
  }
  uint32_t first_limit = cfg->limit.max_concurrent;
  if (resil__adaptive_new(cfg, resil_now_ns(), &d->alim, &d->thr, &first_limit) != RESIL_OK) {
    resil__window_destroy(&d->budget);
    resil_breaker_free(d->breaker);
    resil__ev_bucket_destroy(&d->ev);
    free(d);
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", cfg->name);
    return NULL;
  }
  d->features = d->alim || d->thr;
  d->park = !d->alim;
  /* our own constant: the caller's string need not outlive the config */
  d->cfg.adaptive.algorithm = !d->alim ? "off"
                              : strcmp(cfg->adaptive.algorithm, "aimd") == 0 ? "aimd"
                                                                             : "gradient";
  atomic_init(&d->slots, (uint64_t)first_limit << 32);
  pthread_mutex_init(&d->qmu, NULL);
  resil__hist_init(&d->latency);
  resil__flow_init(&d->flow, &d->cfg);

  pthread_mutex_lock(&reg_mu);
  if (find_locked(d->name)) {
    pthread_mutex_unlock(&reg_mu);
    resil_err_set(err, RESIL_E_INVALID, "%s: a dependency with this name already exists",
                  d->name);
    dep_destroy(d);
    return NULL;
  }
  d->reg_prev = reg_tail;
  if (reg_tail)
    reg_tail->reg_next = d;
  else
    reg_head = d;
  reg_tail = d;
  pthread_mutex_unlock(&reg_mu);
  return d;
}

void resil_dep_free(resil_dep *d) {
  if (!d) return;
  resil__probe_detach(d);
  pthread_mutex_lock(&reg_mu);
  if (d->reg_prev)
    d->reg_prev->reg_next = d->reg_next;
  else
    reg_head = d->reg_next;
  if (d->reg_next)
    d->reg_next->reg_prev = d->reg_prev;
  else
    reg_tail = d->reg_prev;
  pthread_mutex_unlock(&reg_mu);
  dep_destroy(d);
}

const char *resil_dep_name(const resil_dep *d) { return d ? d->name : NULL; }
resil_breaker *resil_dep_breaker(resil_dep *d) { return d ? d->breaker : NULL; }
const resil_dep_config *resil_dep_get_config(const resil_dep *d) { return d ? &d->cfg : NULL; }

void resil_dep_set_draining(resil_dep *d, bool on) {
  if (d) atomic_store_explicit(&d->draining, on, memory_order_release);
}

void resil_dep_attach_pool(resil_dep *d, resil_pool *p) {
  if (d) atomic_store_explicit(&d->pool, p, memory_order_release);
}

resil_pool *resil_dep_pool(const resil_dep *d) {
  return d ? atomic_load_explicit((_Atomic(resil_pool *) *)&d->pool, memory_order_acquire) : NULL;
}

bool resil_dep_is_draining(const resil_dep *d) {
  return d && atomic_load_explicit((_Atomic bool *)&d->draining, memory_order_acquire);
}

void resil_dep_set_warm(resil_dep *d, bool warm) {
  if (d) atomic_store_explicit(&d->warm, warm, memory_order_release);
}

bool resil_dep_is_warm(const resil_dep *d) {
  return d && atomic_load_explicit((_Atomic bool *)&d->warm, memory_order_acquire);
}

/* ---- counting ---------------------------------------------------------- */

static inline dep_stripe *my_stripe(resil_dep *d) { return &d->stripe[resil__stripe()]; }

/* Calls in flight: slots taken less those parked (see the top). Two reads
 * that are not one snapshot: clamped. */
static uint32_t in_flight(resil_dep *d) {
  uint32_t taken = (uint32_t)atomic_load_explicit(&d->slots, memory_order_seq_cst), parked = 0;
  for (unsigned i = 0; i < RESIL_STRIPES; i++)
    parked += atomic_load_explicit(&d->stripe[i].parked, memory_order_relaxed);
  return taken > parked ? taken - parked : 0;
}

static void count_reject(resil_dep *d, resil_status s) {
  int r = reject_reason_of(s);
  if (r >= 0) atomic_fetch_add_explicit(&my_stripe(d)->rejections[r], 1, memory_order_relaxed);
}

static resil_status reject(resil_dep *d, resil_status s, resil_err *err) {
  count_reject(d, s);
  if (!err) return s;
  switch (s) {
    case RESIL_E_BREAKER_OPEN: {
      char why[200];
      return resil_err_set(err, s, "%s: rejected, circuit breaker %s", d->name,
                           resil_breaker_describe(d->breaker, why, sizeof why));
    }
    case RESIL_E_CONCURRENCY_FULL: {
      uint64_t w = atomic_load(&d->slots);
      return resil_err_set(err, s, "%s: rejected, %u calls in flight (%s %u) and %s", d->name,
                           in_flight(d), d->alim ? "adaptive limit" : "limit.max_concurrent",
                           (uint32_t)(w >> 32),
                           d->cfg.limit.max_waiters ? "the wait queue is full"
                                                    : "no queueing (limit.max_waiters 0)");
    }
    case RESIL_E_QUEUE_TIMEOUT:
      return resil_err_set(err, s,
                           "%s: rejected after waiting for a concurrency slot "
                           "(%s %u, waited up to limit.max_wait_ms %u or the deadline)",
                           d->name, d->alim ? "adaptive limit" : "limit.max_concurrent",
                           (uint32_t)(atomic_load(&d->slots) >> 32), d->cfg.limit.max_wait_ms);
    case RESIL_E_THROTTLED:
      return d->thr ? resil__throttle_reject_msg(d->thr, d->name, err)
                    : resil_err_set(err, s, "%s: %s", d->name, resil_strerror(s));
    case RESIL_E_DEADLINE:
      return resil_err_set(err, s, "%s: rejected, the caller's deadline had already passed",
                           d->name);
    case RESIL_E_DRAINING:
      return resil_err_set(err, s, "%s: rejected, the process is draining", d->name);
    case RESIL_E_RATE_LIMITED:
      return resil_err_set(err, s,
                           "%s: rejected, outbound rate limit %u/s (burst %u): no token within "
                           "the call's allowed wait (limit.max_wait_ms %u or the deadline)",
                           d->name, d->flow.per_s, d->flow.burst, d->cfg.limit.max_wait_ms);
    case RESIL_E_PAUSED:
      return resil_err_set(err, s,
                           "%s: rejected, paused after the dependency pushed back (%llu ms "
                           "more; waits only up to limit.max_wait_ms %u or the deadline)",
                           d->name,
                           (unsigned long long)resil_dep_pause_remaining_ms(d),
                           d->cfg.limit.max_wait_ms);
    default: return resil_err_set(err, s, "%s: %s", d->name, resil_strerror(s));
  }
}

/* ---- the concurrency limit --------------------------------------------- */

/* The bulkhead's invariants (RESIL_INVARIANT, internal.h) on a value of the
 * slots word that one atomic change produced: the limit in force is within
 * 1..limit.max_concurrent, and so is every in-flight count a slot was taken
 * or given back at (a lowered limit may leave more in flight than it allows,
 * never more than the ceiling). Nothing unless built with RESIL_INVARIANTS. */
static inline void slots_check(const resil_dep *d, uint64_t w, const char *what) {
  RESIL_INVARIANT((uint32_t)(w >> 32) >= 1 &&
                      (uint32_t)(w >> 32) <= d->cfg.limit.max_concurrent &&
                      (uint32_t)w <= d->cfg.limit.max_concurrent,
                  "bulkhead '%s': %s: 1 <= limit <= limit.max_concurrent and taken <= "
                  "limit.max_concurrent (limit %u, taken %u, max_concurrent %u)",
                  d->name, what, (uint32_t)(w >> 32), (uint32_t)w,
                  d->cfg.limit.max_concurrent);
  (void)d, (void)w, (void)what;
}

/* Take a slot from the count if fewer than the limit in force are taken:
 * one CAS on the word holding both. */
static inline bool try_slot(resil_dep *d) {
  uint64_t w = atomic_load_explicit(&d->slots, memory_order_relaxed);
  while ((uint32_t)w < (uint32_t)(w >> 32)) {
    if (atomic_compare_exchange_weak_explicit(&d->slots, &w, w + 1, memory_order_seq_cst,
                                              memory_order_relaxed)) {
      slots_check(d, w + 1, "slot taken");
      return true;
    }
  }
  return false;
}

static uint32_t give_back(resil_dep *d);

/* Take the slot parked in stripe s, if there is one. It is the caller's if
 * the slots taken are still within the limit in force; otherwise (an
 * adaptive limit went below them) it is given back and false returned. */
static inline bool take_parked(resil_dep *d, dep_stripe *s) {
  if (!atomic_load_explicit(&s->parked, memory_order_relaxed) ||
      !atomic_exchange_explicit(&s->parked, 0, memory_order_seq_cst))
    return false;
  uint64_t w = atomic_load_explicit(&d->slots, memory_order_relaxed);
  if (__builtin_expect((uint32_t)w <= (uint32_t)(w >> 32), 1)) return true;
  (void)give_back(d);
  return false;
}

/* Any stripe's parked slot (the count is full: slots may be parked
 * elsewhere). */
static bool take_any_parked(resil_dep *d) {
  for (unsigned i = 0; i < RESIL_STRIPES; i++)
    if (take_parked(d, &d->stripe[i])) return true;
  return false;
}

/* A slot, from the count or else from a stripe where one is parked. */
static bool try_slot_any(resil_dep *d) { return try_slot(d) || take_any_parked(d); }

static void q_remove(resil_dep *d, waiter *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    d->qhead = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    d->qtail = w->prev;
  w->next = w->prev = NULL;
}

/* Grant freed slots to the oldest waiters. qmu held. */
static void grant_locked(resil_dep *d) {
  while (d->qhead && try_slot_any(d)) {
    waiter *w = d->qhead;
    q_remove(d, w);
    atomic_fetch_sub_explicit(&d->nwaiters, 1, memory_order_seq_cst);
    w->granted = true;
    pthread_cond_signal(&w->cv);
  }
}

/* Wait for a slot until the earlier of the deadline and max_wait_ms. Out
 * of line: admit's common case stays small. */
static __attribute__((noinline)) resil_status wait_slot(resil_dep *d, resil_deadline deadline) {
  if (d->cfg.limit.max_waiters == 0) return RESIL_E_CONCURRENCY_FULL;
  resil_deadline until = resil_deadline_bound(deadline, d->cfg.limit.max_wait_ms);
  waiter w = {0};
  resil_status st = RESIL_OK;
  pthread_mutex_lock(&d->qmu);
  if (atomic_load_explicit(&d->nwaiters, memory_order_relaxed) >= d->cfg.limit.max_waiters) {
    pthread_mutex_unlock(&d->qmu);
    return RESIL_E_CONCURRENCY_FULL;
  }
  atomic_fetch_add_explicit(&d->nwaiters, 1, memory_order_seq_cst);
  if (!d->qhead && try_slot_any(d)) { /* freed while we came in */
    atomic_fetch_sub_explicit(&d->nwaiters, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&d->qmu);
    return RESIL_OK;
  }
  resil__cond_init(&w.cv);
  w.prev = d->qtail;
  if (d->qtail)
    d->qtail->next = &w;
  else
    d->qhead = &w;
  d->qtail = &w;
  grant_locked(d); /* a slot may have freed between the CAS and the enqueue */
  while (!w.granted) {
    if (resil__cond_wait_until(&w.cv, &d->qmu, until) == ETIMEDOUT && !w.granted) {
      q_remove(d, &w);
      atomic_fetch_sub_explicit(&d->nwaiters, 1, memory_order_seq_cst);
      st = resil_deadline_expired(deadline) ? RESIL_E_DEADLINE : RESIL_E_QUEUE_TIMEOUT;
      break;
    }
  }
  pthread_mutex_unlock(&d->qmu);
  pthread_cond_destroy(&w.cv);
  return st;
}

/* Give a slot back to the count (and to the oldest waiters); returns
 * how many were taken before. */
static uint32_t give_back(resil_dep *d) {
  uint64_t was = atomic_fetch_sub_explicit(&d->slots, 1, memory_order_seq_cst);
  RESIL_INVARIANT((uint32_t)was >= 1 && (uint32_t)was <= d->cfg.limit.max_concurrent,
                  "bulkhead '%s': a slot given back: 1 <= taken <= limit.max_concurrent "
                  "before it (taken %u, limit %u, max_concurrent %u)",
                  d->name, (uint32_t)was, (uint32_t)(was >> 32), d->cfg.limit.max_concurrent);
  slots_check(d, was - 1, "slot given back");
  if (atomic_load_explicit(&d->nwaiters, memory_order_seq_cst) > 0) {
    pthread_mutex_lock(&d->qmu);
    grant_locked(d);
    pthread_mutex_unlock(&d->qmu);
  }
  return (uint32_t)was;
}

/* The call of stripe s ended: park its slot there (see the top) or give it
 * back. Returns how many slots were taken before if it gave it back (with
 * an adaptive limit, which never parks: how many calls were in flight), 0
 * if it parked it. */
static uint32_t release_slot(resil_dep *d, dep_stripe *s) {
  uint64_t w = atomic_load_explicit(&d->slots, memory_order_relaxed);
  if (d->park && (uint32_t)(w >> 32) >= PARK_MIN_LIMIT && (uint32_t)w <= (uint32_t)(w >> 32) &&
      atomic_load_explicit(&d->nwaiters, memory_order_relaxed) == 0) {
    uint32_t none = 0;
#if RESIL_INVARIANTS_ON
    if (atomic_load_explicit(&d->test_park_fn, memory_order_relaxed)) {
      void (*hook)(void *) = atomic_exchange(&d->test_park_fn, NULL);
      if (hook) hook(d->test_park_arg);
    }
#endif
    if (atomic_compare_exchange_strong_explicit(&s->parked, &none, 1, memory_order_seq_cst,
                                                memory_order_relaxed)) {
      if (atomic_load_explicit(&d->nwaiters, memory_order_seq_cst) == 0) return 0;
      /* someone queued meanwhile: take it back (unless a call already
       * did) and hand it over */
      if (!atomic_exchange_explicit(&s->parked, 0, memory_order_seq_cst)) return 0;
    }
  }
  return give_back(d);
}

void resil__dep_set_limit(resil_dep *d, uint32_t limit) {
  uint64_t w = atomic_load_explicit(&d->slots, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(&d->slots, &w,
                                                (uint64_t)limit << 32 | (w & 0xffffffffu),
                                                memory_order_seq_cst, memory_order_relaxed)) {
  }
  slots_check(d, (uint64_t)limit << 32 | (w & 0xffffffffu), "limit set");
  if (limit > (uint32_t)(w >> 32) && atomic_load_explicit(&d->nwaiters, memory_order_seq_cst)) {
    pthread_mutex_lock(&d->qmu);
    grant_locked(d);
    pthread_mutex_unlock(&d->qmu);
  }
}

resil__ev_bucket *resil__dep_ev(resil_dep *d) { return &d->ev; }

void resil__dep_test_before_park(resil_dep *d, void (*fn)(void *), void *arg) {
#if RESIL_INVARIANTS_ON
  d->test_park_arg = arg;
  atomic_store(&d->test_park_fn, fn);
#else
  (void)d, (void)fn, (void)arg;
#endif
}

void resil__dep_test_inflight_add(resil_dep *d, int32_t delta) {
  atomic_fetch_add_explicit(&d->slots, (uint64_t)(int64_t)delta, memory_order_seq_cst);
}

/* done()'s share of the opt-in policies: out of line, so a dependency
 * without them pays one branch. */
static __attribute__((noinline)) void policies_done(resil_dep *d, const resil_permit *p,
                                                    resil_status outcome, uint64_t lat,
                                                    uint64_t now, uint32_t inflight) {
  if (d->alim) resil__alimit_record(d->alim, d, p->start_ns, outcome, lat, now, inflight);
  if (d->thr) resil__throttle_record(d->thr, d, outcome, now);
}

/* ---- admit / done ------------------------------------------------------ */

/* The opt-in gates of admit, in order: client-side throttling (not for a
 * half-open probe: those are the breaker's to limit), then a pause and the
 * outbound rate limit (flow.c), which may wait within the call's allowed
 * wait and then move *now. */
static __attribute__((noinline)) resil_status admit_gates(resil_dep *d, const resil_breaker_ticket *t,
                                resil_deadline deadline, uint64_t *now) {
  if (d->thr && !t->probe) {
    resil_status st = resil__throttle_admit(d->thr, d, *now);
    if (st != RESIL_OK) return st;
  }
  if (resil__flow_gate(&d->flow))
    return resil__flow_admit(&d->flow, d->name, &d->ev, deadline, now);
  return RESIL_OK;
}

/* Whether admit has a gate to pass (throttling on, a rate limit, a pause):
 * one test of three words or'ed together, a single branch predicted not
 * taken when none is on. */
static inline bool gated(resil_dep *d) {
  uint64_t any = (uint64_t)(uintptr_t)d->thr | d->flow.interval_ns |
                 atomic_load_explicit(&d->flow.pause_until, memory_order_relaxed);
  return __builtin_expect(any != 0, 0);
}

resil_status resil_dep_admit(resil_dep *d, resil_deadline deadline, resil_permit *p,
                             resil_err *err) {
  if (!d || !p)
    return resil_err_set(err, RESIL_E_INVALID, "resil_dep_admit: %s is NULL",
                         d ? "permit" : "dependency");
  p->flags_ = 0;
  if (atomic_load_explicit(&d->draining, memory_order_relaxed))
    return reject(d, RESIL_E_DRAINING, err);
  resil_breaker_ticket t;
  if (resil__breaker_acquire(d->breaker, &t) != RESIL_OK)
    return reject(d, RESIL_E_BREAKER_OPEN, err);
  uint64_t now = resil__now_fast_ns();
  if (deadline.at_ns && now >= deadline.at_ns) {
    resil_breaker_record(d->breaker, t, RESIL_E_DEADLINE, 0);
    return reject(d, RESIL_E_DEADLINE, err);
  }
  if (gated(d)) { /* throttling, a rate limit or a pause */
    resil_status st = admit_gates(d, &t, deadline, &now);
    if (st != RESIL_OK) {
      resil_breaker_record(d->breaker, t, st, 0);
      return reject(d, st, err);
    }
  }
  bool fast = atomic_load_explicit(&d->nwaiters, memory_order_relaxed) == 0 &&
              (take_parked(d, my_stripe(d)) || try_slot(d) || take_any_parked(d));
  if (!fast) {
    resil_status st = wait_slot(d, deadline);
    if (st != RESIL_OK) {
      resil_breaker_record(d->breaker, t, st, 0);
      return reject(d, st, err);
    }
    now = resil__now_fast_slow(); /* the same reading, out of line: we waited anyway */
  }
  uint64_t cap = now + (uint64_t)d->cfg.timeout_ms * 1000000ull;
  p->dep = d;
  p->deadline.at_ns = (deadline.at_ns && deadline.at_ns < cap) ? deadline.at_ns : cap;
  p->start_ns = now;
  p->ticket = t;
  p->flags_ = PERMIT_LIVE | d->fork_gen << PERMIT_GEN_SHIFT;
  return RESIL_OK; /* admitted is derived: ended calls + late rejections + in flight */
}

/* A call that timed out because the drain cut it (the process's drain
 * cutoff came before its own deadline, and has passed) is not the
 * dependency's fault: it ends as RESIL_E_DRAINING, a local rejection. */
static bool cut_by_drain(const resil_permit *p, resil_status st, uint64_t now) {
  if (st != RESIL_E_TIMEOUT && st != RESIL_E_DEADLINE) return false;
  uint64_t cut = resil__drain_cut_ns();
  return cut && (!p->deadline.at_ns || cut < p->deadline.at_ns) && now + 1000000 >= cut;
}

void resil_dep_done(resil_permit *p, resil_status outcome) {
  if (!p || !(p->flags_ & PERMIT_LIVE) || !p->dep) return;
  resil_dep *d = p->dep;
  /* Admitted before a fork (in this child): its slot is not counted here. */
  bool holds_slot = p->flags_ >> PERMIT_GEN_SHIFT == d->fork_gen;
  p->flags_ = 0;
  uint64_t now = resil__now_fast_ns();
  if (cut_by_drain(p, outcome, now)) outcome = RESIL_E_DRAINING;
  uint64_t lat = now > p->start_ns ? now - p->start_ns : 0;
  resil_status seen = outcome; /* what the breaker sees */
  /* Several addresses (endpoint.h): RESIL_E_CALLER is the class the breaker
   * ignores (neither success nor failure; a probe slot is given back). */
  if (__builtin_expect(outcome != RESIL_OK, 0) &&
      resil_status_class_of(outcome) == RESIL_CLASS_FAILURE &&
      resil__endpoints_failure_ignored(atomic_load_explicit(&d->pool, memory_order_relaxed)))
    seen = RESIL_E_CALLER;
  resil__breaker_record_now(d->breaker, p->ticket, seen, lat, now);
  dep_stripe *s = my_stripe(d);
  if (resil__is_rejection(outcome)) {
    atomic_fetch_add_explicit(&s->rejections[reject_reason_of(outcome)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->late_rejections, 1, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&s->calls[outcome_of(outcome)], 1, memory_order_relaxed);
    resil__hist_observe(&d->latency, lat);
  }
  uint32_t inflight = holds_slot ? release_slot(d, s) : 0;
  if (d->features) policies_done(d, p, outcome, lat, now, inflight);
}

/* ---- fork (see fork.c) ------------------------------------------------ */

void resil__dep_fork_prepare(void) {
  pthread_mutex_lock(&reg_mu);
  for (resil_dep *d = reg_head; d; d = d->reg_next) {
    pthread_mutex_lock(&d->qmu);
    resil__breaker_fork_lock(d->breaker);
  }
}

void resil__dep_fork_parent(void) {
  for (resil_dep *d = reg_head; d; d = d->reg_next) {
    resil__breaker_fork_unlock(d->breaker);
    pthread_mutex_unlock(&d->qmu);
  }
  pthread_mutex_unlock(&reg_mu);
}

void resil__dep_fork_child(void) {
  for (resil_dep *d = reg_head; d; d = d->reg_next) {
    /* Every slot and queue place belonged to a thread of the parent: the
     * forking thread's own permits are recognised by fork_gen in done().
     * Queued waiters live on the stacks of threads that do not exist here;
     * their condition variables are never touched again. */
    d->fork_gen = (d->fork_gen + 1) & FORK_GEN_MASK;
    atomic_store_explicit(&d->slots, atomic_load(&d->slots) & ~(uint64_t)0xffffffffu,
                          memory_order_relaxed); /* keep the limit, no call in flight */
    for (unsigned i = 0; i < RESIL_STRIPES; i++)
      atomic_store_explicit(&d->stripe[i].parked, 0, memory_order_relaxed);
    resil__adaptive_fork_child(d->alim, d->thr);
    atomic_store_explicit(&d->nwaiters, 0, memory_order_relaxed);
    d->qhead = d->qtail = NULL;
    pthread_mutex_unlock(&d->qmu);
    resil__breaker_fork_child(d->breaker);
  }
  pthread_mutex_unlock(&reg_mu);
}

/* ---- retries ----------------------------------------------------------- */

static bool budget_allows(resil_dep *d, uint64_t now) {
  uint64_t s[RESIL_WINDOW_VALS];
  resil__window_sum(&d->budget, now, s);
  const resil_retry_config *r = &d->cfg.retry;
  uint64_t floor = (uint64_t)r->budget_min_per_s * r->budget_window_ms / 1000;
  uint64_t by_rate = s[B_REQ] * r->budget_percent / 100;
  uint64_t allowed = floor > by_rate ? floor : by_rate;
  return s[B_RETRY] < allowed;
}

static void budget_add(resil_dep *d, uint64_t now, bool retry) {
  uint64_t v[RESIL_WINDOW_VALS] = {retry ? 0 : 1, retry ? 1 : 0, 0};
  resil__window_add(&d->budget, now, v);
}

/* Full-jitter backoff for attempt n (n >= 1 retries so far), in ns. */
static uint64_t backoff_ns(const resil_retry_config *r, uint32_t n) {
  double cap = (double)r->base_backoff_ms;
  for (uint32_t i = 1; i < n && cap < (double)r->max_backoff_ms; i++) cap *= r->multiplier;
  if (cap > (double)r->max_backoff_ms) cap = (double)r->max_backoff_ms;
  double u = (double)(resil__rand() >> 11) / 9007199254740992.0;
  return (uint64_t)(u * cap * 1e6);
}

resil_status resil_dep_call(resil_dep *d, resil_deadline deadline, unsigned flags,
                            resil_call_fn fn, void *ctx, resil_err *err) {
  if (!d || !fn)
    return resil_err_set(err, RESIL_E_INVALID, "resil_dep_call: %s is NULL",
                         d ? "fn" : "dependency");
  resil_err local;
  resil_err *e = err ? err : &local;
  /* The whole call, retries included, ends by the caller's deadline or, if
   * none, by the dependency's timeout from now; each attempt is also capped
   * by the timeout (admit does that). */
  resil_deadline overall =
      deadline.at_ns ? deadline : resil_deadline_bound(RESIL_DEADLINE_UNSET, d->cfg.timeout_ms);
  resil_status last = RESIL_OK;
  budget_add(d, resil_now_ns(), false);
  for (uint32_t n = 1;; n++) {
    resil_permit p;
    resil_status st = resil_dep_admit(d, overall, &p, e);
    if (st != RESIL_OK) return n == 1 ? st : last;
    resil_attempt a = {.deadline = p.deadline, .number = n, .retry = -1, .err = e};
    st = fn(ctx, &a);
    if (cut_by_drain(&p, st, resil_now_ns())) {
      char was[RESIL_ERR_MSG_MAX];
      resil__strlcpy(was, e->msg, sizeof was);
      st = resil_err_set(e, RESIL_E_DRAINING, "%s: cut at the drain deadline (%s)", d->name, was);
    }
    /* the message goes with the outcome into a breaker event, if it trips */
    resil_dep_done_err(&p, st, st != RESIL_OK && e->status == st && e->msg[0] ? e->msg : NULL);
    last = st;
    if (st == RESIL_OK) return st;
    bool retryable = a.retry == 1 || (a.retry == -1 && resil_status_class_of(st) ==
                                                            RESIL_CLASS_FAILURE);
    if (!(flags & RESIL_CALL_IDEMPOTENT) || !retryable || n >= d->cfg.retry.max_attempts)
      return st;
    uint64_t wait = backoff_ns(&d->cfg.retry, n);
    uint64_t ra = (uint64_t)a.retry_after_ms * 1000000ull;
    if (wait < ra) wait = ra;
    uint64_t now = resil_now_ns();
    if (now + wait >= overall.at_ns) return st; /* would not finish in time */
    if (!budget_allows(d, now)) {
      count_reject(d, RESIL_E_RETRY_BUDGET);
      return st;
    }
    budget_add(d, now, true);
    atomic_fetch_add_explicit(&my_stripe(d)->retries, 1, memory_order_relaxed);
    resil__sleep_until(overall, wait);
  }
}

/* ---- stats ------------------------------------------------------------- */

void resil_dep_get_stats(const resil_dep *cd, resil_dep_stats *o) {
  resil_dep *d = (resil_dep *)cd;
  memset(o, 0, sizeof *o);
  resil__strlcpy(o->name, d->name, sizeof o->name);
  o->critical = d->cfg.critical;
  o->draining = atomic_load(&d->draining);
  for (unsigned i = 0; i < RESIL_STRIPES; i++) {
    dep_stripe *s = &d->stripe[i];
    for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++)
      o->calls[k] += atomic_load_explicit(&s->calls[k], memory_order_relaxed);
    for (int k = 0; k < RESIL_REJECT_COUNT_; k++)
      o->rejections[k] += atomic_load_explicit(&s->rejections[k], memory_order_relaxed);
    o->retries += atomic_load_explicit(&s->retries, memory_order_relaxed);
    o->rejected_after_admit += atomic_load_explicit(&s->late_rejections, memory_order_relaxed);
  }
  uint64_t slots = atomic_load(&d->slots);
  o->in_flight = in_flight(d);
  o->admitted = o->rejected_after_admit + o->in_flight;
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) o->admitted += o->calls[k];
  o->limit = (uint32_t)(slots >> 32);
  o->limit_min = o->limit_max = o->limit;
  if (d->alim) resil__alimit_range(d->alim, o->limit, resil_now_ns(), &o->limit_min, &o->limit_max);
  o->throttle_probability = d->thr ? resil__throttle_probability(d->thr) : 0.0;
  o->waiters = atomic_load(&d->nwaiters);
  o->max_waiters = d->cfg.limit.max_waiters;
  resil__hist_read(&d->latency, &o->latency);
  resil_breaker_get_stats(d->breaker, &o->breaker);
  resil_pool *pool = atomic_load(&d->pool);
  double sat = o->limit ? (double)o->in_flight / (double)o->limit : 0.0;
  if (o->waiters && o->max_waiters) {
    double q = 1.0 + (double)o->waiters / (double)o->max_waiters;
    if (q > sat) sat = q;
  }
  if (pool) {
    o->has_pool = true;
    resil_pool_get_stats(pool, &o->pool);
    if (o->pool.max) {
      double u = (double)o->pool.in_use / (double)o->pool.max;
      if (u > sat) sat = u;
    }
    if (o->pool.waiters) {
      double q = 1.0 + (double)o->pool.waiters / (double)(o->pool.max ? o->pool.max : 1);
      if (q > sat) sat = q;
    }
  }
  o->saturation = sat;
  for (int k = 0; k < RESIL_PROBE_RESULT_COUNT_; k++)
    o->probes[k] = atomic_load_explicit(&d->probe_results[k], memory_order_relaxed);
  o->events = atomic_load_explicit(&d->ev.delivered, memory_order_relaxed);
  o->events_dropped = atomic_load_explicit(&d->ev.dropped, memory_order_relaxed);
  o->rate_limit_per_s = d->flow.per_s;
  o->rate_limit_burst = d->flow.per_s ? d->flow.burst : 0;
  o->pause_remaining_ms = resil_dep_pause_remaining_ms(d);
  o->pauses = atomic_load_explicit(&d->flow.pauses, memory_order_relaxed);
  int64_t mem = atomic_load_explicit(&d->flow.mem_bytes, memory_order_relaxed);
  o->memory_bytes = mem > 0 ? (uint64_t)mem : 0;
  o->memory_bound_bytes = atomic_load_explicit(&d->flow.mem_bound, memory_order_relaxed);
}

/* ---- pauses and memory (the rest is in flow.c) ------------------------- */

uint32_t resil_dep_pause(resil_dep *d, uint32_t ms, const char *reason, const char *message) {
  return d ? resil__flow_pause(&d->flow, d->name, &d->ev, ms, reason, message) : 0;
}

uint32_t resil_dep_pushback(resil_dep *d, const char *reason, const char *message) {
  if (!d || !d->flow.pause_ns) return 0;
  return resil__flow_pause(&d->flow, d->name, &d->ev, d->flow.pause_ns / 1000000ull,
                           reason ? reason : "overload", message);
}

void resil_dep_unpause(resil_dep *d) {
  if (d) resil__flow_unpause(&d->flow, d->name, &d->ev, "operator");
}

uint64_t resil_dep_pause_remaining_ms(const resil_dep *cd) {
  resil_dep *d = (resil_dep *)cd;
  if (!d) return 0;
  uint64_t left = resil__flow_pause_left(&d->flow, d->name, &d->ev, resil_now_ns());
  return (left + 999999) / 1000000;
}

void resil_dep_memory_add(resil_dep *d, int64_t delta) {
  if (d && delta) atomic_fetch_add_explicit(&d->flow.mem_bytes, delta, memory_order_relaxed);
}

void resil_dep_set_memory_bound(resil_dep *d, uint64_t bytes) {
  if (d) atomic_store_explicit(&d->flow.mem_bound, bytes, memory_order_relaxed);
}

uint64_t resil_dep_config_memory_bound(const resil_dep_config *c) {
  if (!c) return 0;
  uint64_t b = sizeof(struct resil_dep) + RESIL_CACHELINE;          /* the object, aligned */
  b += 10 * (uint64_t)sizeof(resil_window_bucket) + RESIL_CACHELINE; /* retry budget window */
  b += resil__breaker_memory_bound(&c->breaker);
  b += (uint64_t)c->limit.max_waiters * sizeof(waiter); /* queued callers (on their stacks) */
  return b;
}
