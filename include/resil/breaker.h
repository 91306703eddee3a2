/* resil: the circuit breaker, usable on its own (a resil_dep embeds one).
 *
 * States: CLOSED (calls flow, outcomes recorded), OPEN (calls rejected for a
 * break duration), HALF_OPEN (up to half_open_probes calls let through;
 * that many successes close it, one failure reopens it), plus two operator
 * overrides: FORCED_OPEN (reject everything) and DISABLED (admit everything,
 * record metrics, never trip).
 *
 * Trip conditions (any of them, each disabled by 0):
 *   - consecutive_failures failures in a row;
 *   - failure_rate_percent of calls failed over the rolling window, once at
 *     least minimum_calls calls ended in it;
 *   - slow_call_rate_percent of calls took longer than slow_call_ms over the
 *     rolling window (same minimum_calls). A call is measured when it ends,
 *     so a call still running past the threshold counts as slow when it ends,
 *     whatever its outcome.
 * Failures are RESIL_E_FAILURE, RESIL_E_TIMEOUT and RESIL_E_OVERLOAD.
 * RESIL_E_CALLER is ignored (neither success nor failure); local rejections
 * and programming errors are not outcomes at all.
 *
 * The break duration is open_ms on a first trip and grows by
 * open_multiplier on each trip that follows within one window of the last
 * close (or from HALF_OPEN), up to open_max_ms, with +/- open_jitter_percent
 * of random jitter so that a fleet does not probe in lockstep.
 *
 * Every state change bumps a generation number. A ticket remembers the
 * generation it was admitted under; an outcome from an older generation is
 * counted in the metrics but does not move the new state (a slow call
 * admitted before the breaker opened cannot close or reopen it).
 *
 * Thread safety: all functions are thread-safe. resil_breaker_acquire()
 * and resil_breaker_record() are lock-free and allocation-free; rejecting
 * while OPEN is a few atomic loads.
 */
#ifndef RESIL_BREAKER_H
#define RESIL_BREAKER_H

#include "resil/status.h"

RESIL_BEGIN_DECLS

typedef enum resil_breaker_state {
  RESIL_BREAKER_CLOSED = 0,
  RESIL_BREAKER_OPEN,
  RESIL_BREAKER_HALF_OPEN,
  RESIL_BREAKER_FORCED_OPEN,
  RESIL_BREAKER_DISABLED,
  RESIL_BREAKER_STATE_COUNT_
} resil_breaker_state;

/* Capacity of resil_breaker_stats.transitions[], fixed for the ABI (a new
 * state does not move the fields after it); entries from
 * RESIL_BREAKER_STATE_COUNT_ on are 0. */
#define RESIL_BREAKER_STATE_SLOTS 8

/* Why the breaker last left CLOSED or HALF_OPEN. */
typedef enum resil_trip_reason {
  RESIL_TRIP_NONE = 0,
  RESIL_TRIP_CONSECUTIVE_FAILURES,
  RESIL_TRIP_FAILURE_RATE,
  RESIL_TRIP_SLOW_CALL_RATE,
  RESIL_TRIP_PROBE_FAILED,
  RESIL_TRIP_FORCED,
  /* Not a trip: the reason given to the transition hook when a successful
   * recovery probe (resil_breaker_probe_succeeded) ended a break early. */
  RESIL_TRIP_RECOVERY_PROBE,
  RESIL_TRIP_REASON_COUNT_
} resil_trip_reason;

/* Operator override. */
typedef enum resil_breaker_mode {
  RESIL_BREAKER_MODE_AUTO = 0,    /* normal state machine */
  RESIL_BREAKER_MODE_FORCE_OPEN,  /* reject every call */
  RESIL_BREAKER_MODE_DISABLE      /* admit every call, never trip */
} resil_breaker_mode;

/* Called after a state change, by the thread that made it, outside any lock.
 * It must be quick and must not call back into the same breaker's
 * resil_breaker_force(). name is the breaker's name. */
typedef void (*resil_breaker_hook)(void *ctx, const char *name, resil_breaker_state from,
                                   resil_breaker_state to, resil_trip_reason reason);

typedef struct resil_breaker_config {
  const char *name;                /* copied; used in errors and the hook */
  uint32_t consecutive_failures;   /* default 5; 0 = off */
  uint32_t failure_rate_percent;   /* default 50; 0 = off; 1..100 */
  uint32_t slow_call_rate_percent; /* default 0 (off); 1..100 */
  uint32_t slow_call_ms;           /* default 1000; > 0 when slow rate is on */
  uint32_t minimum_calls;          /* default 20: rates are judged from this many calls */
  uint32_t window_ms;              /* default 10000: rolling window length */
  uint32_t window_buckets;         /* default 10; 1..120, each >= 10 ms long */
  uint32_t open_ms;                /* default 5000: first break duration */
  double open_multiplier;          /* default 2.0; 1.0..100 */
  uint32_t open_max_ms;            /* default 60000; >= open_ms */
  uint32_t open_jitter_percent;    /* default 10; 0..50 */
  uint32_t half_open_probes;       /* default 3; 1..1000 */
  resil_breaker_hook on_transition; /* optional */
  void *hook_ctx;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[48];
} resil_breaker_config;

/* Fill cfg with the defaults above (name NULL). Always call it first, then
 * set what you need: fields added later get safe defaults. Thread-safe. */
RESIL_API void resil_breaker_config_init(resil_breaker_config *cfg);

/* Check every field and report all problems at once in err->msg, each named
 * by its field ("breaker.window_buckets: ..."), separated by "; ". Returns
 * RESIL_OK or RESIL_E_INVALID. prefix (may be NULL) is prepended to field
 * names, e.g. "orders-db: ". Thread-safe. */
RESIL_API resil_status resil_breaker_config_validate(const resil_breaker_config *cfg,
                                                     const char *prefix, resil_err *err);

typedef struct resil_breaker resil_breaker;

/* Create a breaker in CLOSED. Errors: RESIL_E_INVALID (see validate),
 * RESIL_E_NOMEM. */
RESIL_API resil_breaker *resil_breaker_new(const resil_breaker_config *cfg, resil_err *err);

/* Free a breaker. No call may be using it. NULL is a no-op. */
RESIL_API void resil_breaker_free(resil_breaker *b);

/* A call's claim on the breaker, kept by value by the caller. */
typedef struct resil_breaker_ticket {
  uint32_t gen;   /* generation at admission */
  uint8_t probe;  /* 1 if admitted as a half-open probe */
  uint8_t counted; /* 1 if its outcome goes into the window */
} resil_breaker_ticket;

/* Ask to make a call. RESIL_OK fills *t; the caller must then pass it to
 * resil_breaker_record() exactly once. RESIL_E_BREAKER_OPEN when open,
 * forced open, or half-open with all probe slots taken. Moves OPEN to
 * HALF_OPEN when the break duration has passed. Lock-free. */
RESIL_API resil_status resil_breaker_acquire(resil_breaker *b, resil_breaker_ticket *t);

/* Report how an admitted call ended. outcome is a resil_status: RESIL_OK,
 * a failure (FAILURE/TIMEOUT/OVERLOAD), RESIL_E_CALLER (ignored), or anything
 * else (a local rejection after admission, e.g. pool_timeout: releases a probe
 * slot, counts nothing). latency_ns is how long the call took. Lock-free. */
RESIL_API void resil_breaker_record(resil_breaker *b, resil_breaker_ticket t,
                                    resil_status outcome, uint64_t latency_ns);

/* The current state. OPEN is reported until a call notices the break
 * duration has passed. Lock-free. */
RESIL_API resil_breaker_state resil_breaker_get_state(const resil_breaker *b);

/* Set the operator override. AUTO from FORCED_OPEN or DISABLED returns to
 * CLOSED with an empty window. Thread-safe. */
RESIL_API void resil_breaker_set_mode(resil_breaker *b, resil_breaker_mode mode);

typedef struct resil_breaker_stats {
  resil_breaker_state state;
  resil_trip_reason last_trip_reason;
  uint32_t generation;
  uint32_t consecutive_failures;
  uint64_t window_calls, window_failures, window_slow; /* current window */
  uint64_t transitions[RESIL_BREAKER_STATE_SLOTS];    /* entries into each state */
  uint64_t opened_at_ns;     /* when it last opened (0 never) */
  uint64_t open_until_ns;    /* when OPEN ends (0 unless OPEN) */
  uint32_t trip_streak;      /* consecutive trips feeding the backoff */
  uint32_t probes_in_flight, probe_successes;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[60];
} resil_breaker_stats;

/* A snapshot of the breaker's state and counters. Thread-safe. */
RESIL_API void resil_breaker_get_stats(const resil_breaker *b, resil_breaker_stats *out);

/* Write a one-line human explanation of the current state into buf, e.g.
 * "open for 2.1s more (failure rate 62% >= 50% over 40 calls), trip 2".
 * Returns buf. Thread-safe. */
RESIL_API const char *resil_breaker_describe(const resil_breaker *b, char *buf, size_t size);

/* End the break now because an out-of-band recovery probe found the
 * dependency healthy: OPEN moves to HALF_OPEN at once (the transition hook
 * gets RESIL_TRIP_RECOVERY_PROBE), and the usual half-open calls with real
 * traffic then close or reopen it. A no-op (returns false) unless the
 * breaker is OPEN and, when generation is not 0, still in that generation
 * (resil_breaker_stats.generation read when the probe started), so that a
 * probe's news never overrides a newer state; never moves FORCED_OPEN or
 * DISABLED. Neither the trip streak nor the break duration changes: a probe
 * can only shorten a break, never lengthen one. Returns true if it moved
 * the breaker. Thread-safe. */
RESIL_API bool resil_breaker_probe_succeeded(resil_breaker *b, uint32_t generation);

/* Names for enums: "closed", "open", "half_open", "forced_open", "disabled";
 * "consecutive_failures", "failure_rate", ..., "recovery_probe". Never NULL. */
RESIL_API const char *resil_breaker_state_name(resil_breaker_state s);
RESIL_API const char *resil_trip_reason_name(resil_trip_reason r);

RESIL_END_DECLS
#endif
