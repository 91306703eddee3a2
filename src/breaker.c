/* The circuit breaker state machine.
 *
 * Hot path: the state and generation live in one atomic word. acquire() in
 * CLOSED is one atomic load; in OPEN it is two loads and a coarse clock read.
 * record() in CLOSED adds to the striped rolling window and, only for a
 * failure or a slow call, sums the window to check the trip conditions.
 * State changes (rare) take a mutex so that the generation, the break
 * duration and the trip streak move together; the transition hook runs after
 * the mutex is released.
 *
 * Half-open bookkeeping is one atomic word too: generation (high 32 bits),
 * probes in flight (16 bits) and probe successes (16 bits), so an outcome
 * from a probe of an older generation can never touch the current counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define W_CALLS 0
#define W_FAIL 1
#define W_SLOW 2

#define WORD(gen, st) RESIL__BREAKER_WORD(gen, st)
#define W_STATE(w) ((resil_breaker_state)((w)&0xff))
#define W_GEN(w) ((uint32_t)((w) >> 8))
#define H_GEN(h) ((uint32_t)((h) >> 32))
#define H_INFLIGHT(h) ((uint32_t)(((h) >> 16) & 0xffff))
#define H_OK(h) ((uint32_t)((h)&0xffff))
#define HALF(gen, inflight, ok) (((uint64_t)(gen) << 32) | ((uint64_t)(inflight) << 16) | (ok))

static const char *const state_names[RESIL_BREAKER_STATE_COUNT_] = {
    "closed", "open", "half_open", "forced_open", "disabled"};
static const char *const reason_names[RESIL_TRIP_REASON_COUNT_] = {
    "none", "consecutive_failures", "failure_rate", "slow_call_rate", "probe_failed", "forced",
    "recovery_probe"};

const char *resil_breaker_state_name(resil_breaker_state s) {
  return (unsigned)s < RESIL_BREAKER_STATE_COUNT_ ? state_names[s] : "unknown";
}

const char *resil_trip_reason_name(resil_trip_reason r) {
  return (unsigned)r < RESIL_TRIP_REASON_COUNT_ ? reason_names[r] : "unknown";
}

void resil_breaker_config_init(resil_breaker_config *c) {
  memset(c, 0, sizeof *c);
  c->consecutive_failures = 5;
  c->failure_rate_percent = 50;
  c->slow_call_rate_percent = 0;
  c->slow_call_ms = 1000;
  c->minimum_calls = 20;
  c->window_ms = 10000;
  c->window_buckets = 10;
  c->open_ms = 5000;
  c->open_multiplier = 2.0;
  c->open_max_ms = 60000;
  c->open_jitter_percent = 10;
  c->half_open_probes = 3;
}

resil_status resil_breaker_config_validate(const resil_breaker_config *c, const char *prefix,
                                           resil_err *err) {
  resil_problems p;
  resil__problems_init(&p, prefix);
  if (!c) {
    resil__problem(&p, "breaker", "config is NULL");
    return resil__problems_finish(&p, err);
  }
  if (c->consecutive_failures == 0 && c->failure_rate_percent == 0 &&
      c->slow_call_rate_percent == 0)
    resil__problem(&p, "breaker",
                   "every trip condition is 0 (set consecutive_failures, failure_rate_percent "
                   "or slow_call_rate_percent; use mode DISABLE to turn the breaker off)");
  resil__check_range(&p, "breaker.consecutive_failures", c->consecutive_failures, 0, 1000000);
  resil__check_range(&p, "breaker.failure_rate_percent", c->failure_rate_percent, 0, 100);
  resil__check_range(&p, "breaker.slow_call_rate_percent", c->slow_call_rate_percent, 0, 100);
  if (c->slow_call_rate_percent && c->slow_call_ms == 0)
    resil__problem(&p, "breaker.slow_call_ms", "must be > 0 when slow_call_rate_percent is set");
  resil__check_range(&p, "breaker.slow_call_ms", c->slow_call_ms, 0, 3600000);
  if (c->failure_rate_percent || c->slow_call_rate_percent)
    resil__check_range(&p, "breaker.minimum_calls", c->minimum_calls, 1, 1000000);
  resil__check_range(&p, "breaker.window_ms", c->window_ms, 10, 3600000);
  resil__check_range(&p, "breaker.window_buckets", c->window_buckets, 1, 120);
  if (c->window_buckets && c->window_ms && c->window_ms / c->window_buckets < 10)
    resil__problem(&p, "breaker.window_ms",
                   "%u ms is too short for %u buckets (each bucket must be >= 10 ms)",
                   c->window_ms, c->window_buckets);
  resil__check_range(&p, "breaker.open_ms", c->open_ms, 1, 86400000);
  resil__check_range_d(&p, "breaker.open_multiplier", c->open_multiplier, 1.0, 100.0);
  resil__check_range(&p, "breaker.open_max_ms", c->open_max_ms, 1, 86400000);
  if (c->open_max_ms < c->open_ms)
    resil__problem(&p, "breaker.open_max_ms", "%u is below breaker.open_ms %u", c->open_max_ms,
                   c->open_ms);
  resil__check_range(&p, "breaker.open_jitter_percent", c->open_jitter_percent, 0, 50);
  resil__check_range(&p, "breaker.half_open_probes", c->half_open_probes, 1, 1000);
  return resil__problems_finish(&p, err);
}

resil_breaker *resil_breaker_new(const resil_breaker_config *cfg, resil_err *err) {
  char prefix[80];
  snprintf(prefix, sizeof prefix, "%s%s", cfg && cfg->name ? cfg->name : "",
           cfg && cfg->name ? ": " : "");
  if (resil_breaker_config_validate(cfg, prefix, err) != RESIL_OK) return NULL;
  resil_breaker *b = aligned_alloc(RESIL_CACHELINE, sizeof *b);
  if (!b) {
    resil_err_set(err, RESIL_E_NOMEM, "breaker: out of memory");
    return NULL;
  }
  memset(b, 0, sizeof *b);
  b->cfg = *cfg;
  resil__strlcpy(b->name, cfg->name ? cfg->name : "breaker", sizeof b->name);
  b->cfg.name = b->name;
  b->slow_ns = (uint64_t)cfg->slow_call_ms * 1000000ull;
  if (resil__window_init(&b->window, (uint64_t)cfg->window_ms * 1000000ull,
                         cfg->window_buckets) != RESIL_OK) {
    free(b);
    resil_err_set(err, RESIL_E_NOMEM, "breaker: out of memory");
    return NULL;
  }
  pthread_mutex_init(&b->mu, NULL);
  atomic_init(&b->word, WORD(1, RESIL_BREAKER_CLOSED));
  atomic_init(&b->half, HALF(1, 0, 0));
  return b;
}

void resil_breaker_free(resil_breaker *b) {
  if (!b) return;
  resil__window_destroy(&b->window);
  pthread_mutex_destroy(&b->mu);
  free(b);
}

/* The break duration for the trip_streak-th trip in a row, with jitter. */
static uint64_t break_ns(const resil_breaker *b) {
  double ms = (double)b->cfg.open_ms;
  for (uint32_t i = 1; i < b->trip_streak && ms < (double)b->cfg.open_max_ms; i++)
    ms *= b->cfg.open_multiplier;
  if (ms > (double)b->cfg.open_max_ms) ms = (double)b->cfg.open_max_ms;
  if (b->cfg.open_jitter_percent) {
    double j = (double)b->cfg.open_jitter_percent / 100.0;
    double r = (double)(resil__rand() >> 11) / 9007199254740992.0; /* [0,1) */
    ms *= 1.0 + j * (2.0 * r - 1.0);
    if (ms > (double)b->cfg.open_max_ms) ms = (double)b->cfg.open_max_ms;
    if (ms < 1.0) ms = 1.0;
  }
  return (uint64_t)(ms * 1e6);
}

typedef struct transition {
  bool happened;
  resil_breaker_state from, to;
  resil_trip_reason reason;
} transition;

/* Move to state `to` with b->mu held, if the word still is `expect`. */
static bool move_locked(resil_breaker *b, uint64_t expect, resil_breaker_state to,
                        resil_trip_reason reason, uint64_t now, transition *t) {
  uint64_t cur = atomic_load_explicit(&b->word, memory_order_acquire);
  if (cur != expect) return false;
  resil_breaker_state from = W_STATE(cur);
  uint32_t gen = W_GEN(cur) + 1;
  if (gen == 0) gen = 1;
  if (to == RESIL_BREAKER_OPEN) {
    if (from == RESIL_BREAKER_HALF_OPEN ||
        (b->closed_at_ns && now - b->closed_at_ns < (uint64_t)b->cfg.window_ms * 1000000ull &&
         b->trip_streak > 0))
      b->trip_streak++;
    else
      b->trip_streak = 1;
    b->opened_at_ns = now;
    atomic_store_explicit(&b->open_until_ns, now + break_ns(b), memory_order_relaxed);
  }
  if (to == RESIL_BREAKER_HALF_OPEN)
    atomic_store_explicit(&b->half, HALF(gen, 0, 0), memory_order_relaxed);
  if (to == RESIL_BREAKER_CLOSED) {
    resil__window_reset(&b->window);
    atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    b->closed_at_ns = now;
  }
  if (to == RESIL_BREAKER_OPEN || to == RESIL_BREAKER_FORCED_OPEN) b->last_reason = reason;
  atomic_store_explicit(&b->word, WORD(gen, to), memory_order_release);
  atomic_fetch_add_explicit(&b->transitions[to], 1, memory_order_relaxed);
  t->happened = true;
  t->from = from;
  t->to = to;
  t->reason = reason;
  return true;
}

static void notify(resil_breaker *b, const transition *t) {
  if (t->happened && b->cfg.on_transition)
    b->cfg.on_transition(b->cfg.hook_ctx, b->name, t->from, t->to, t->reason);
}

static void move(resil_breaker *b, uint64_t expect, resil_breaker_state to,
                 resil_trip_reason reason, uint64_t now) {
  transition t = {0};
  pthread_mutex_lock(&b->mu);
  move_locked(b, expect, to, reason, now, &t);
  pthread_mutex_unlock(&b->mu);
  notify(b, &t);
}

/* Try to take a half-open probe slot in generation gen. */
static bool take_probe(resil_breaker *b, uint32_t gen) {
  uint64_t h = atomic_load_explicit(&b->half, memory_order_acquire);
  for (;;) {
    if (H_GEN(h) != gen || H_INFLIGHT(h) >= b->cfg.half_open_probes) return false;
    if (atomic_compare_exchange_weak_explicit(&b->half, &h, h + (1ull << 16),
                                              memory_order_acq_rel, memory_order_acquire))
      return true;
  }
}

resil_status resil_breaker_acquire(resil_breaker *b, resil_breaker_ticket *t) {
  for (;;) {
    uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
    switch (W_STATE(w)) {
      case RESIL_BREAKER_CLOSED:
        *t = (resil_breaker_ticket){.gen = W_GEN(w), .probe = 0, .counted = 1};
        return RESIL_OK;
      case RESIL_BREAKER_DISABLED:
        *t = (resil_breaker_ticket){.gen = W_GEN(w), .probe = 0, .counted = 0};
        return RESIL_OK;
      case RESIL_BREAKER_FORCED_OPEN:
        return RESIL_E_BREAKER_OPEN;
      case RESIL_BREAKER_OPEN: {
        uint64_t until = atomic_load_explicit(&b->open_until_ns, memory_order_relaxed);
        if (resil__now_coarse_inline_ns() < until) return RESIL_E_BREAKER_OPEN;
        uint64_t now = resil_now_ns();
        if (now < until) return RESIL_E_BREAKER_OPEN;
        move(b, w, RESIL_BREAKER_HALF_OPEN, RESIL_TRIP_NONE, now);
        continue; /* re-read: half-open now (or another thread moved it) */
      }
      case RESIL_BREAKER_HALF_OPEN:
        if (!take_probe(b, W_GEN(w))) {
          if (atomic_load_explicit(&b->word, memory_order_acquire) != w) continue;
          return RESIL_E_BREAKER_OPEN;
        }
        *t = (resil_breaker_ticket){.gen = W_GEN(w), .probe = 1, .counted = 1};
        return RESIL_OK;
      default:
        return RESIL_E_BREAKER_OPEN;
    }
  }
}

static void trip_check(resil_breaker *b, uint64_t w, uint64_t now, bool failed) {
  const resil_breaker_config *c = &b->cfg;
  resil_trip_reason why = RESIL_TRIP_NONE;
  uint64_t calls = 0, bad = 0;
  if (failed && c->consecutive_failures &&
      atomic_load_explicit(&b->consecutive, memory_order_relaxed) >= c->consecutive_failures) {
    why = RESIL_TRIP_CONSECUTIVE_FAILURES;
    calls = bad = c->consecutive_failures;
  }
  if (why == RESIL_TRIP_NONE && (c->failure_rate_percent || c->slow_call_rate_percent)) {
    uint64_t s[RESIL_WINDOW_VALS];
    resil__window_sum(&b->window, now, s);
    if (s[W_CALLS] >= c->minimum_calls && s[W_CALLS] > 0) {
      if (c->failure_rate_percent &&
          s[W_FAIL] * 100 >= (uint64_t)c->failure_rate_percent * s[W_CALLS]) {
        why = RESIL_TRIP_FAILURE_RATE;
        bad = s[W_FAIL];
      } else if (c->slow_call_rate_percent &&
                 s[W_SLOW] * 100 >= (uint64_t)c->slow_call_rate_percent * s[W_CALLS]) {
        why = RESIL_TRIP_SLOW_CALL_RATE;
        bad = s[W_SLOW];
      }
      calls = s[W_CALLS];
    }
  }
  if (why == RESIL_TRIP_NONE) return;
  transition t = {0};
  pthread_mutex_lock(&b->mu);
  if (move_locked(b, w, RESIL_BREAKER_OPEN, why, now, &t)) {
    b->trip_calls = calls;
    b->trip_bad = bad;
  }
  pthread_mutex_unlock(&b->mu);
  notify(b, &t);
}

static void record_half_open(resil_breaker *b, uint64_t w, resil_breaker_ticket t,
                             resil_status_class cls, bool slow, uint64_t now) {
  bool bad = cls == RESIL_CLASS_FAILURE || (cls == RESIL_CLASS_SUCCESS && slow &&
                                            b->cfg.slow_call_rate_percent);
  uint64_t h = atomic_load_explicit(&b->half, memory_order_acquire);
  for (;;) {
    if (H_GEN(h) != t.gen || H_INFLIGHT(h) == 0) return; /* stale probe */
    uint64_t nh = h - (1ull << 16);
    if (cls == RESIL_CLASS_SUCCESS && !bad) nh += 1;
    if (atomic_compare_exchange_weak_explicit(&b->half, &h, nh, memory_order_acq_rel,
                                              memory_order_acquire)) {
      h = nh;
      break;
    }
  }
  if (bad) {
    pthread_mutex_lock(&b->mu);
    transition tr = {0};
    if (move_locked(b, w, RESIL_BREAKER_OPEN, RESIL_TRIP_PROBE_FAILED, now, &tr)) {
      b->trip_calls = 1;
      b->trip_bad = 1;
    }
    pthread_mutex_unlock(&b->mu);
    notify(b, &tr);
  } else if (H_OK(h) >= b->cfg.half_open_probes) {
    move(b, w, RESIL_BREAKER_CLOSED, RESIL_TRIP_NONE, now);
  }
}

void resil_breaker_record(resil_breaker *b, resil_breaker_ticket t, resil_status outcome,
                          uint64_t latency_ns) {
  resil__breaker_record_at(b, t, outcome, latency_ns, 0);
}

void resil__breaker_record_at(resil_breaker *b, resil_breaker_ticket t, resil_status outcome,
                              uint64_t latency_ns, uint64_t now) {
  if (!t.counted) return;
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if (W_GEN(w) != t.gen) return; /* admitted under an older state */
  resil_status_class cls = resil_status_class_of(outcome);
  bool slow = latency_ns > b->slow_ns && b->slow_ns > 0;
  if (t.probe) {
    if (W_STATE(w) != RESIL_BREAKER_HALF_OPEN) return;
    /* Rejections and errors just give the probe slot back. */
    if (cls != RESIL_CLASS_SUCCESS && cls != RESIL_CLASS_FAILURE) cls = RESIL_CLASS_IGNORED;
    record_half_open(b, w, t, cls, slow, now ? now : resil_now_ns());
    return;
  }
  if (W_STATE(w) != RESIL_BREAKER_CLOSED) return;
  if (cls != RESIL_CLASS_SUCCESS && cls != RESIL_CLASS_FAILURE) return;
  bool failed = cls == RESIL_CLASS_FAILURE;
  if (!now) now = resil_now_ns();
  resil__window_count(&b->window, now, failed, slow);
  if (failed) {
    atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed);
  } else if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0) {
    atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
  }
  if (failed || slow) trip_check(b, w, now, failed);
}

bool resil_breaker_probe_succeeded(resil_breaker *b, uint32_t generation) {
  if (!b) return false;
  transition t = {0};
  pthread_mutex_lock(&b->mu);
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if (W_STATE(w) == RESIL_BREAKER_OPEN && (generation == 0 || W_GEN(w) == generation))
    move_locked(b, w, RESIL_BREAKER_HALF_OPEN, RESIL_TRIP_RECOVERY_PROBE, resil_now_ns(), &t);
  pthread_mutex_unlock(&b->mu);
  notify(b, &t);
  return t.happened;
}

bool resil__breaker_open_info(resil_breaker *b, uint32_t *gen, uint64_t *opened_at_ns,
                              uint64_t *open_until_ns) {
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if (W_STATE(w) != RESIL_BREAKER_OPEN) return false;
  pthread_mutex_lock(&b->mu);
  w = atomic_load_explicit(&b->word, memory_order_acquire);
  bool open = W_STATE(w) == RESIL_BREAKER_OPEN;
  if (open) {
    *gen = W_GEN(w);
    *opened_at_ns = b->opened_at_ns;
    *open_until_ns = atomic_load_explicit(&b->open_until_ns, memory_order_relaxed);
  }
  pthread_mutex_unlock(&b->mu);
  return open;
}

resil_breaker_state resil_breaker_get_state(const resil_breaker *b) {
  return W_STATE(atomic_load_explicit((_Atomic uint64_t *)&b->word, memory_order_acquire));
}

void resil_breaker_set_mode(resil_breaker *b, resil_breaker_mode mode) {
  transition t = {0};
  pthread_mutex_lock(&b->mu);
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  uint64_t now = resil_now_ns();
  b->mode = mode;
  switch (mode) {
    case RESIL_BREAKER_MODE_FORCE_OPEN:
      if (W_STATE(w) != RESIL_BREAKER_FORCED_OPEN)
        move_locked(b, w, RESIL_BREAKER_FORCED_OPEN, RESIL_TRIP_FORCED, now, &t);
      break;
    case RESIL_BREAKER_MODE_DISABLE:
      if (W_STATE(w) != RESIL_BREAKER_DISABLED)
        move_locked(b, w, RESIL_BREAKER_DISABLED, RESIL_TRIP_NONE, now, &t);
      break;
    default:
      if (W_STATE(w) == RESIL_BREAKER_FORCED_OPEN || W_STATE(w) == RESIL_BREAKER_DISABLED) {
        b->trip_streak = 0;
        move_locked(b, w, RESIL_BREAKER_CLOSED, RESIL_TRIP_NONE, now, &t);
      }
      break;
  }
  pthread_mutex_unlock(&b->mu);
  notify(b, &t);
}

void resil_breaker_get_stats(const resil_breaker *cb, resil_breaker_stats *out) {
  resil_breaker *b = (resil_breaker *)cb;
  memset(out, 0, sizeof *out);
  uint64_t now = resil_now_ns();
  pthread_mutex_lock(&b->mu);
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  out->state = W_STATE(w);
  out->generation = W_GEN(w);
  out->last_trip_reason = b->last_reason;
  out->trip_streak = b->trip_streak;
  out->opened_at_ns = b->opened_at_ns;
  if (out->state == RESIL_BREAKER_OPEN)
    out->open_until_ns = atomic_load_explicit(&b->open_until_ns, memory_order_relaxed);
  pthread_mutex_unlock(&b->mu);
  out->consecutive_failures = atomic_load_explicit(&b->consecutive, memory_order_relaxed);
  uint64_t s[RESIL_WINDOW_VALS];
  resil__window_sum(&b->window, now, s);
  out->window_calls = s[W_CALLS];
  out->window_failures = s[W_FAIL];
  out->window_slow = s[W_SLOW];
  for (int i = 0; i < RESIL_BREAKER_STATE_COUNT_; i++)
    out->transitions[i] = atomic_load_explicit(&b->transitions[i], memory_order_relaxed);
  uint64_t h = atomic_load_explicit(&b->half, memory_order_acquire);
  if (out->state == RESIL_BREAKER_HALF_OPEN && H_GEN(h) == out->generation) {
    out->probes_in_flight = H_INFLIGHT(h);
    out->probe_successes = H_OK(h);
  }
}

const char *resil_breaker_describe(const resil_breaker *cb, char *buf, size_t size) {
  resil_breaker *b = (resil_breaker *)cb;
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  uint64_t now = resil_now_ns();
  char why[160] = "";
  pthread_mutex_lock(&b->mu);
  uint64_t calls = b->trip_calls, bad = b->trip_bad;
  pthread_mutex_unlock(&b->mu);
  switch (st.last_trip_reason) {
    case RESIL_TRIP_CONSECUTIVE_FAILURES:
      snprintf(why, sizeof why, "%llu consecutive failures", (unsigned long long)bad);
      break;
    case RESIL_TRIP_FAILURE_RATE:
      snprintf(why, sizeof why, "failure rate %llu%% >= %u%% over %llu calls",
               (unsigned long long)(calls ? bad * 100 / calls : 0), b->cfg.failure_rate_percent,
               (unsigned long long)calls);
      break;
    case RESIL_TRIP_SLOW_CALL_RATE:
      snprintf(why, sizeof why, "slow-call rate %llu%% >= %u%% (> %u ms) over %llu calls",
               (unsigned long long)(calls ? bad * 100 / calls : 0),
               b->cfg.slow_call_rate_percent, b->cfg.slow_call_ms, (unsigned long long)calls);
      break;
    case RESIL_TRIP_PROBE_FAILED: snprintf(why, sizeof why, "a half-open probe failed"); break;
    case RESIL_TRIP_FORCED: snprintf(why, sizeof why, "forced open by an operator"); break;
    case RESIL_TRIP_RECOVERY_PROBE: snprintf(why, sizeof why, "a recovery probe"); break;
    default: break;
  }
  switch (st.state) {
    case RESIL_BREAKER_OPEN: {
      double left = st.open_until_ns > now ? (double)(st.open_until_ns - now) / 1e9 : 0.0;
      double since = (double)(now - st.opened_at_ns) / 1e9;
      snprintf(buf, size, "open for %.1fs (%.1fs more) after %s, trip %u in a row", since, left,
               why, st.trip_streak);
      break;
    }
    case RESIL_BREAKER_HALF_OPEN:
      snprintf(buf, size, "half-open: %u probes in flight, %u of %u successes needed",
               st.probes_in_flight, st.probe_successes, b->cfg.half_open_probes);
      break;
    case RESIL_BREAKER_FORCED_OPEN: snprintf(buf, size, "forced open by an operator"); break;
    case RESIL_BREAKER_DISABLED: snprintf(buf, size, "disabled by an operator"); break;
    default:
      snprintf(buf, size, "closed: %llu calls, %llu failures, %llu slow in the window",
               (unsigned long long)st.window_calls, (unsigned long long)st.window_failures,
               (unsigned long long)st.window_slow);
      break;
  }
  return buf;
}

/* ---- fork (see fork.c) ---------------------------------------------------- */

void resil__breaker_fork_lock(resil_breaker *b) { pthread_mutex_lock(&b->mu); }

void resil__breaker_fork_unlock(resil_breaker *b) { pthread_mutex_unlock(&b->mu); }

void resil__breaker_fork_child(resil_breaker *b) {
  /* Probes held by threads that do not exist here would never come back:
   * a new half-open generation starts with no probe in flight (a probe the
   * forking thread still holds is then stale and ignored). */
  uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  if (W_STATE(w) == RESIL_BREAKER_HALF_OPEN) {
    uint32_t gen = W_GEN(w) + 1;
    if (gen == 0) gen = 1;
    atomic_store_explicit(&b->half, HALF(gen, 0, 0), memory_order_relaxed);
    atomic_store_explicit(&b->word, WORD(gen, RESIL_BREAKER_HALF_OPEN), memory_order_release);
  }
  pthread_mutex_unlock(&b->mu);
}

uint64_t resil__breaker_memory_bound(const resil_breaker_config *c) {
  uint64_t buckets = c && c->window_buckets ? c->window_buckets : 10;
  return sizeof(resil_breaker) + RESIL_CACHELINE +
         buckets * (uint64_t)sizeof(resil_window_bucket) + RESIL_CACHELINE;
}
