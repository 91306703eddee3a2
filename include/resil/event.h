/* resil: events an operator can read - every state change of a dependency,
 * delivered through one process-wide hook.
 *
 * An event is emitted when:
 *   - a dependency's breaker changes state (RESIL_EVENT_BREAKER): a trip
 *     (with its reason and the error message of the call that tripped it),
 *     the end of a break (by its timer, or early because a recovery probe
 *     found the dependency healthy - see resil_dep_set_probe()), a close
 *     after successful half-open calls, an operator's override.
 *   - a dependency's adaptive concurrency limit (dep.h, adaptive) moved by
 *     20 % or more since its last RESIL_EVENT_LIMIT event (RESIL_EVENT_LIMIT:
 *     old_value/new_value are the limits, reason "decreased"/"increased").
 *   - client-side throttling (dep.h, throttle) started shedding calls (its
 *     rejection probability reached 5 %) or stopped (it fell back to 0)
 *     (RESIL_EVENT_THROTTLE: old_value/new_value are the probability in
 *     percent, reason "started"/"stopped").
 *   - a dependency is paused after server pushback (RESIL_EVENT_PAUSE, see
 *     resil_dep_pause()): at the start (reason as given: "retry_after",
 *     "overload", ...; new_value = the pause in ms, message = what the
 *     server said) and at the end (reason "pause_elapsed" or "operator";
 *     old_value = how long it lasted in ms, new_value 0).
 * Types other than RESIL_EVENT_BREAKER leave from/to -1. Later kinds of
 * state change will be added as new types: a hook should ignore types it
 * does not know.
 *
 * Rate limit: each dependency may emit RESIL_EVENT_BURST events at once and
 * RESIL_EVENT_RATE_PER_S per second after that (a token bucket), so a
 * flapping breaker cannot flood a log. Events over the limit are not
 * delivered; they are counted (resil_dep_stats.events_dropped, metric
 * resil_events_dropped_total) and the next delivered event of that
 * dependency says how many were suppressed before it.
 *
 * resil_service installs a hook that writes one line per event to stderr
 * (RESIL_EVENT_LOG=json|text|off; see README "Events").
 */
#ifndef RESIL_EVENT_H
#define RESIL_EVENT_H

#include "resil/status.h"

RESIL_BEGIN_DECLS

#define RESIL_EVENT_BURST 20    /* events a dependency may emit at once */
#define RESIL_EVENT_RATE_PER_S 2 /* and per second after the burst */

typedef enum resil_event_type {
  RESIL_EVENT_BREAKER = 0, /* a breaker state change */
  RESIL_EVENT_LIMIT,       /* the adaptive concurrency limit moved (>= 20 %) */
  RESIL_EVENT_THROTTLE,    /* client-side throttling started or stopped */
  RESIL_EVENT_PAUSE,       /* a pause after pushback started or ended */
  RESIL_EVENT_TYPE_COUNT_
} resil_event_type;

/* One state change. Every pointer is valid only during the hook call: copy
 * what you keep. */
typedef struct resil_event {
  resil_event_type type;
  const char *dep;        /* the dependency's name */
  uint64_t wall_ns;       /* CLOCK_REALTIME, ns since the epoch: for logs */
  uint64_t mono_ns;       /* resil_now_ns() at the change */
  int from, to;           /* RESIL_EVENT_BREAKER: resil_breaker_state values; else -1 */
  /* Why, as a short token: for a trip the resil_trip_reason name
   * ("consecutive_failures", "failure_rate", "slow_call_rate",
   * "probe_failed" - a half-open call failed); "forced" (operator forced
   * open); "recovery_probe" (a probe ended the break early);
   * "break_elapsed" (the break's timer ended it); "half_open_succeeded"
   * (enough half-open calls succeeded); "operator" (an override was set or
   * lifted). Never NULL. */
  const char *reason;
  /* For a trip: the error message of the call that tripped the breaker
   * (when the call went through resil_dep_call() or resil_dep_done_err());
   * for a recovery probe: what the probe said. "" if none. Never NULL. */
  const char *message;
  /* The breaker's own one-line explanation after the change
   * (resil_breaker_describe()). Never NULL. */
  const char *detail;
  uint64_t open_ms;       /* to == OPEN: how long this break lasts; else 0 */
  uint32_t trip_streak;   /* trips in a row feeding the break's growth */
  uint32_t suppressed;    /* this dependency's events dropped by the rate limit
                             since its previous delivered event */
  int64_t old_value, new_value; /* RESIL_EVENT_LIMIT: the limit before and after;
                                   RESIL_EVENT_THROTTLE: the rejection
                                   probability in percent; 0 for BREAKER */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[64];
} resil_event;

/* Receives events. Called by the thread that made the change (a caller's
 * thread for a trip, the probe thread for a recovery probe, an operator's
 * for an override), outside the breaker's locks, one call per event. It must
 * be quick and must not block (write to a bounded buffer, drop when full);
 * it must not call resil_set_event_hook(). */
typedef void (*resil_event_hook)(void *ctx, const resil_event *ev);

/* Install fn (with ctx) as the process-wide event hook, replacing any other;
 * NULL removes it. When this returns, no call of the previous hook is still
 * running, so its ctx may be freed. Thread-safe. */
RESIL_API void resil_set_event_hook(resil_event_hook fn, void *ctx);

/* "breaker", "limit", "throttle", "pause". Never NULL. */
RESIL_API const char *resil_event_type_name(resil_event_type t);

/* Format ev as one JSON object on one line, ending in '\n' (keys: ts, type,
 * dep, from, to, reason, message, detail, open_ms, trip_streak, suppressed,
 * and for types other than RESIL_EVENT_BREAKER also old_value, new_value),
 * or, with json false, as one human-readable line. Strings are escaped;
 * the line is cut (still valid JSON, message shortened) to fit size. Returns
 * the line's length (< size), 0 if size is below 256. Thread-safe. */
RESIL_API size_t resil_event_format(const resil_event *ev, bool json, char *buf, size_t size);

RESIL_END_DECLS
#endif
