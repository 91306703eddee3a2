/* Outbound rate limit and pauses after server pushback.
 *
 * Rate limit: the generic cell rate algorithm (GCRA, "virtual scheduling"),
 * which is a token bucket kept as one number: the theoretical arrival time
 * (TAT) of the next call if calls came exactly every interval T = 1 s /
 * per_s. A call at time t conforms when t >= TAT - tau, tau = (burst - 1) T
 * (so `burst` calls may come at once after a quiet spell); it then moves TAT
 * to max(TAT, t) + T with one compare-and-swap. A call that does not
 * conform yet may reserve its place the same way and sleep until TAT - tau
 * when that is within its allowed wait (the earlier of its deadline and
 * limit.max_wait_ms); otherwise it leaves TAT alone and is rejected
 * (RESIL_E_RATE_LIMITED). No lock, no allocation; over any span of t
 * seconds at most burst + per_s * t calls pass (T is rounded up to whole
 * nanoseconds, so the rate is never exceeded).
 *
 * A token taken by a call that a later check then refuses (a full
 * concurrency limit) is not given back: the limiter errs on the side of
 * sending less than the rate, never more.
 *
 * Pause: pause_until is a time on the process clock (0: none). A server's
 * pushback sets it (only ever later), admit rejects (RESIL_E_PAUSED) or
 * waits when the end is within the allowed wait, and the first admit (or
 * stats read) after the end clears it with a CAS and emits the end event.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

void resil__flow_init(resil__flow *f, const resil_dep_config *c) {
  f->per_s = c->rate_limit.per_s;
  f->burst = c->rate_limit.burst ? c->rate_limit.burst : 1;
  f->interval_ns = f->per_s ? (1000000000ull + f->per_s - 1) / f->per_s : 0;
  f->tolerance_ns = (uint64_t)(f->burst - 1) * f->interval_ns;
  f->max_pause_ns = (uint64_t)c->pushback.max_pause_ms * 1000000ull;
  f->pause_ns = (uint64_t)c->pushback.pause_ms * 1000000ull;
  f->max_wait_ns = (uint64_t)c->limit.max_wait_ms * 1000000ull;
  atomic_init(&f->pause_until, 0);
  atomic_init(&f->pause_start, 0);
  atomic_init(&f->pauses, 0);
  atomic_init(&f->tat, 0);
  atomic_init(&f->mem_bytes, 0);
  atomic_init(&f->mem_bound, 0);
}

static uint64_t ms_up(uint64_t ns) { return (ns + 999999) / 1000000; }

static void end_event(resil__flow *f, const char *dep, resil__ev_bucket *ev, uint64_t until,
                      const char *reason) {
  uint64_t start = atomic_load_explicit(&f->pause_start, memory_order_relaxed);
  uint64_t lasted = until > start ? until - start : 0;
  char detail[120];
  snprintf(detail, sizeof detail, "pause over after %llu ms",
           (unsigned long long)ms_up(lasted));
  resil__event_pause(dep, ev, false, ms_up(lasted), reason, NULL, detail);
}

uint64_t resil__flow_pause_left(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                                uint64_t now) {
  uint64_t pu = atomic_load_explicit(&f->pause_until, memory_order_acquire);
  if (!pu) return 0;
  if (now < pu) return pu - now;
  if (atomic_compare_exchange_strong_explicit(&f->pause_until, &pu, 0, memory_order_acq_rel,
                                              memory_order_relaxed))
    end_event(f, dep, ev, pu, "pause_elapsed");
  return 0;
}

uint32_t resil__flow_pause(resil__flow *f, const char *dep, resil__ev_bucket *ev, uint64_t ms,
                           const char *reason, const char *message) {
  if (!f->max_pause_ns || !ms) return 0;
  uint64_t want = ms * 1000000ull;
  if (want > f->max_pause_ns || ms > f->max_pause_ns / 1000000ull) want = f->max_pause_ns;
  uint64_t now = resil_now_ns();
  uint64_t until = now + want;
  uint64_t cur = atomic_load_explicit(&f->pause_until, memory_order_acquire);
  do {
    if (cur >= until) return 0; /* a pause at least as long is in force */
  } while (!atomic_compare_exchange_weak_explicit(&f->pause_until, &cur, until,
                                                  memory_order_acq_rel, memory_order_acquire));
  bool fresh = cur == 0 || cur <= now;
  if (cur && cur <= now) end_event(f, dep, ev, cur, "pause_elapsed"); /* ended unseen */
  if (fresh) atomic_store_explicit(&f->pause_start, now, memory_order_relaxed);
  atomic_fetch_add_explicit(&f->pauses, 1, memory_order_relaxed);
  char detail[200];
  snprintf(detail, sizeof detail, "%s for %llu ms%s (asked %llu ms, pushback.max_pause_ms %llu)",
           fresh ? "paused" : "pause extended", (unsigned long long)ms_up(want),
           want < ms * 1000000ull ? " (capped)" : "", (unsigned long long)ms,
           (unsigned long long)(f->max_pause_ns / 1000000ull));
  resil__event_pause(dep, ev, true, ms_up(want), reason, message, detail);
  return (uint32_t)ms_up(want);
}

void resil__flow_unpause(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                         const char *reason) {
  uint64_t pu = atomic_exchange_explicit(&f->pause_until, 0, memory_order_acq_rel);
  if (!pu) return;
  uint64_t now = resil_now_ns();
  end_event(f, dep, ev, pu < now ? pu : now, pu <= now ? "pause_elapsed" : reason);
}

/* Sleep until `until` on the process clock; the fast clock's reading
 * afterwards, never before `until`. */
static uint64_t sleep_to(uint64_t now, uint64_t until) {
  resil__sleep_until((resil_deadline){.at_ns = until}, until - now);
  uint64_t t = resil__now_fast_ns();
  return t > until ? t : until;
}

resil_status resil__flow_admit(resil__flow *f, const char *dep, resil__ev_bucket *ev,
                               resil_deadline deadline, uint64_t *now) {
  uint64_t t = *now;
  /* The longest this call may wait here: max_wait_ms from now, and never
   * past its deadline. */
  uint64_t limit_at = t + f->max_wait_ns;
  if (deadline.at_ns && deadline.at_ns < limit_at) limit_at = deadline.at_ns;
  for (int rounds = 0; atomic_load_explicit(&f->pause_until, memory_order_relaxed); rounds++) {
    uint64_t left = resil__flow_pause_left(f, dep, ev, t);
    if (!left) break;
    if (t + left > limit_at || rounds > 8) return RESIL_E_PAUSED;
    t = sleep_to(t, t + left); /* and look again: the pause may have grown */
  }
  if (f->interval_ns) {
    uint64_t tat = atomic_load_explicit(&f->tat, memory_order_relaxed);
    for (;;) {
      uint64_t base = tat > t ? tat : t;
      uint64_t at = base > f->tolerance_ns ? base - f->tolerance_ns : 0; /* conforms from */
      if (at > limit_at) return RESIL_E_RATE_LIMITED;
      if (atomic_compare_exchange_weak_explicit(&f->tat, &tat, base + f->interval_ns,
                                                memory_order_relaxed, memory_order_relaxed)) {
        if (at > t) t = sleep_to(t, at);
        break;
      }
    }
  }
  *now = t;
  return RESIL_OK;
}
