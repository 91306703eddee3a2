/* resil: a dependency - breaker + concurrency limit + retry policy +
 * timeouts + metrics, under one name.
 *
 * One resil_dep per downstream ("orders-db", "session-cache", "payments-api").
 * Two ways through it:
 *
 *   1. Two steps, for code that makes its own call:
 *        resil_permit p;
 *        if (resil_dep_admit(dep, deadline, &p, &err) != RESIL_OK) fail fast;
 *        st = do_the_call(p.deadline);          // use p.deadline, not yours
 *        resil_dep_done(&p, st);                // exactly once per permit
 *
 *   2. One call, which also retries idempotent work within a budget:
 *        st = resil_dep_call(dep, deadline, RESIL_CALL_IDEMPOTENT, fn, ctx, &err);
 *
 * admit checks, in order: draining, the breaker, the deadline, client-side
 * throttling (when on), a pause (resil_dep_pause()), the outbound rate limit
 * (rate_limit), then a concurrency slot (waiting FIFO in a bounded queue for
 * no longer than the earlier of max_wait_ms and the deadline) below the
 * limit in force (max_concurrent, or the adaptive limit). Each refusal is a distinct
 * status and a distinct rejection counter, and never a dependency failure.
 *
 * Every dependency is listed in a process-wide registry from _new to _free,
 * which the exporters walk.
 */
#ifndef RESIL_DEP_H
#define RESIL_DEP_H

#include "resil/breaker.h"
#include "resil/deadline.h"
#include "resil/metrics.h"
#include "resil/pool.h"

RESIL_BEGIN_DECLS

/* Concurrency limit (bulkhead). */
typedef struct resil_limit_config {
  uint32_t max_concurrent; /* default 64; 1..1000000 */
  uint32_t max_waiters;    /* default 0: reject at once when full; else queue this many */
  uint32_t max_wait_ms;    /* default 50: longest time in the queue (> 0 when queueing) */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[84];
} resil_limit_config;

/* Retries with exponential backoff and full jitter, limited by a budget. */
typedef struct resil_retry_config {
  uint32_t max_attempts;     /* default 1 (no retry); 1..10, first attempt included */
  uint32_t base_backoff_ms;  /* default 25 */
  double multiplier;         /* default 2.0; 1.0..10 */
  uint32_t max_backoff_ms;   /* default 1000; >= base_backoff_ms */
  uint32_t budget_percent;   /* default 20: retries <= this % of calls in the window; 0..100 */
  uint32_t budget_min_per_s; /* default 3: retries always allowed at this rate */
  uint32_t budget_window_ms; /* default 10000 */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[32];
} resil_retry_config;

/* Adaptive concurrency limit (opt-in): the limit in force moves between
 * min and limit.max_concurrent (the ceiling), recomputed once per window
 * from the latencies of calls and their drops (timeouts, overload). See the
 * README "Adaptive concurrency limit" for the exact rules. */
typedef struct resil_adaptive_limit_config {
  /* "off" (default; NULL means the same), "gradient" (latency against a
   * baseline) or "aimd" (additive increase, multiplicative decrease on
   * drops). Not copied: resil_dep_new() keeps its own constant. */
  const char *algorithm;
  uint32_t min;         /* default 4: the lowest limit; 1..limit.max_concurrent
                           (the limit starts here and grows) */
  uint32_t window_ms;   /* default 250: a window lasts at least this long... */
  uint32_t min_samples; /* default 20: ...and until this many calls admitted in it
                           ended; 1..100000 */
  double tolerance;     /* gradient, default 1.5: latency up to tolerance x
                           baseline is not congestion; 1.0..10 */
  double smoothing;     /* default 0.5: weight of a window's verdict in the limit;
                           0.01..1 (1 = take it whole) */
  uint32_t baseline_ms; /* gradient, default 60000: the baseline is the lowest
                           window latency seen over this long; 1000..3600000 */
  double backoff;       /* default 0.9: a window with drops multiplies the limit
                           by at most this; 0.5..0.99 */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[40];
} resil_adaptive_limit_config;

/* Client-side adaptive throttling (opt-in; Google SRE book "Handling
 * Overload"): each admission is refused locally, as RESIL_E_THROTTLED, with
 * probability max(0, (requests - k * accepts) / (requests + 1)) over the
 * last window_ms, where requests are the calls sent to the dependency and
 * accepts those it answered (success or caller error). See the README
 * "Client-side throttling" for the exact rules and the breaker settings it
 * needs. */
typedef struct resil_throttle_config {
  bool enabled;          /* default false */
  double k;              /* default 2.0: shedding starts when fewer than 1/k of
                            the calls sent succeed; 1.0..10 */
  uint32_t window_ms;    /* default 10000: rolling window; 1000..600000 */
  uint32_t min_requests; /* default 20: no shedding until this many calls were
                            sent in the window; 1..1000000 */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[24];
} resil_throttle_config;

/* Outbound rate limit (opt-in): a token bucket, as the "generic cell rate
 * algorithm" (one atomic "theoretical arrival time", no lock). per_s tokens
 * a second, at most burst at once. A call that finds no token waits for
 * one only if it comes within the call's allowed wait - the earlier of its
 * deadline and limit.max_wait_ms - else it is rejected at once with
 * RESIL_E_RATE_LIMITED (reason "rate_limited", never a failure). */
typedef struct resil_rate_limit_config {
  uint32_t per_s; /* default 0: off; else 1..1000000000 calls per second */
  uint32_t burst; /* default 1 (calls evenly spaced); 1..1000000 when per_s is set */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[8];
} resil_rate_limit_config;

/* Server pushback: pause every new call to the dependency (see
 * resil_dep_pause() and resil_dep_pushback()). */
typedef struct resil_pushback_config {
  /* Longest pause a server can ask for (a Retry-After is capped to it).
   * Default 30000; 0 = ignore pushback (never pause); else 1..3600000. */
  uint32_t max_pause_ms;
  /* Pause on pushback that names no time (Redis BUSY/LOADING, PostgreSQL
   * 53300 too many connections, HTTP 429 without Retry-After). Default 0:
   * off (those are only counted as overload by the breaker); else
   * 1..max_pause_ms. */
  uint32_t pause_ms;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[8];
} resil_pushback_config;

typedef struct resil_dep_config {
  const char *name;        /* required; copied; [A-Za-z0-9_.-], 1..63 chars */
  uint32_t timeout_ms;     /* default 1000: cap on each attempt's deadline, and
                              the whole call's deadline when the caller gives none */
  bool critical;           /* default false: readiness depends on it */
  resil_breaker_config breaker;
  resil_limit_config limit;
  resil_retry_config retry;
  /* Recovery probes (see resil_dep_set_probe()): while the breaker is OPEN,
   * run the dependency's probe every probe_interval_ms (+/- 20% jitter).
   * Default 500; 0 turns probing off; else 10..3600000. */
  uint32_t probe_interval_ms;
  /* Bound on one probe. Default 0: the smaller of timeout_ms and 1000;
   * else 1..60000. */
  uint32_t probe_timeout_ms;
  /* Adaptive concurrency limit (keys LIMIT_ADAPTIVE, LIMIT_MIN, LIMIT_*);
   * off by default. */
  resil_adaptive_limit_config adaptive;
  /* Client-side throttling (keys THROTTLE, THROTTLE_*); off by default. */
  resil_throttle_config throttle;
  resil_rate_limit_config rate_limit; /* default off */
  resil_pushback_config pushback;     /* default: honour Retry-After up to 30 s */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[536];
} resil_dep_config;

/* Fill cfg with safe defaults and set its name (may be NULL; set it later).
 * Call first, then change what you need. Thread-safe. */
RESIL_API void resil_dep_config_init(resil_dep_config *cfg, const char *name);

/* Check every field and report all problems at once in err->msg, each
 * named by its path ("orders-db: breaker.failure_rate_percent: 140 is
 * outside 1..100"). RESIL_OK or RESIL_E_INVALID. Thread-safe. */
RESIL_API resil_status resil_dep_config_validate(const resil_dep_config *cfg, resil_err *err);

typedef struct resil_dep resil_dep;

/* Create a dependency and add it to the registry. Errors: RESIL_E_INVALID
 * (bad config, or the name is taken), RESIL_E_NOMEM. Thread-safe. */
RESIL_API resil_dep *resil_dep_new(const resil_dep_config *cfg, resil_err *err);

/* Remove from the registry and free. No permit may be outstanding and no
 * other thread may use dep. NULL is a no-op. The attached pool (if any) is
 * not freed. */
RESIL_API void resil_dep_free(resil_dep *dep);

/* The dependency's name. Thread-safe. */
RESIL_API const char *resil_dep_name(const resil_dep *dep);

/* The embedded breaker, e.g. for resil_breaker_set_mode(). Thread-safe. */
RESIL_API resil_breaker *resil_dep_breaker(resil_dep *dep);

/* The configuration the dependency was created with (name included). */
RESIL_API const resil_dep_config *resil_dep_get_config(const resil_dep *dep);

/* A call in progress. Fill by resil_dep_admit(); pass to resil_dep_done(). */
typedef struct resil_permit {
  resil_dep *dep;
  resil_deadline deadline; /* min(caller's deadline, now + timeout_ms): use this */
  uint64_t start_ns;
  resil_breaker_ticket ticket;
  uint32_t flags_; /* internal */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[28];
} resil_permit;

/* Ask to call the dependency. deadline may be RESIL_DEADLINE_UNSET (the
 * dependency's timeout_ms then applies). On RESIL_OK *permit is filled and
 * must be ended by exactly one resil_dep_done(). Otherwise the status is a
 * rejection - RESIL_E_DRAINING, RESIL_E_DEADLINE, RESIL_E_BREAKER_OPEN,
 * RESIL_E_THROTTLED (throttling on), RESIL_E_PAUSED, RESIL_E_RATE_LIMITED,
 * RESIL_E_CONCURRENCY_FULL, RESIL_E_QUEUE_TIMEOUT - counted under its reason,
 * or RESIL_E_INVALID for NULL arguments. err (optional) gets a sentence
 * naming the dependency and why. May block when the limit is full and
 * max_waiters > 0, and to wait for a rate-limit token or the end of a pause
 * that comes within the allowed wait; never past the deadline or
 * limit.max_wait_ms (each wait).
 * Thread-safe; lock-free and allocation-free unless it has to queue. */
RESIL_API resil_status resil_dep_admit(resil_dep *dep, resil_deadline deadline,
                                       resil_permit *permit, resil_err *err);

/* End an admitted call with how it went: RESIL_OK, RESIL_E_FAILURE,
 * RESIL_E_TIMEOUT, RESIL_E_OVERLOAD (dependency failures for the breaker),
 * RESIL_E_CALLER (ignored by the breaker), or a local rejection that happened
 * after admission such as RESIL_E_POOL_TIMEOUT or RESIL_E_DEADLINE (counted
 * under its reason, never a failure). Other statuses count as ignored.
 * Records latency, frees the concurrency slot (waking the first waiter) and
 * clears the permit. A second call with the same permit is a no-op.
 * Thread-safe; lock-free and allocation-free unless a waiter must be woken. */
RESIL_API void resil_dep_done(resil_permit *permit, resil_status outcome);

/* As resil_dep_done(), also giving the call's error message (may be NULL):
 * if this outcome trips the breaker, the breaker event (event.h) carries
 * it, so the log says what the failing call saw. resil_dep_call() does this
 * by itself. Thread-safe. */
RESIL_API void resil_dep_done_err(resil_permit *permit, resil_status outcome, const char *message);

/* ---- Recovery probes --------------------------------------------------- */

/* A cheap real operation against the dependency, e.g. a PING on a fresh
 * connection. Must finish by deadline (return RESIL_E_TIMEOUT when it
 * passes); RESIL_OK means healthy, any other status unhealthy. err (never
 * NULL) may get a sentence, shown in the event a successful probe emits. */
typedef resil_status (*resil_probe_fn)(void *ctx, resil_deadline deadline, resil_err *err);

/* Give the dependency a recovery probe (fn NULL removes it). While the
 * breaker is OPEN (not FORCED_OPEN), resil probes it out of band, on its own
 * background threads - never on a caller's thread - every
 * probe_interval_ms (+/- 20% jitter; the first one that long after the
 * breaker opened), at most one probe in flight per dependency, each bounded
 * by probe_timeout_ms (default the smaller of timeout_ms and 1 s). No probe
 * starts once the break's own timer has run out or would before the probe
 * is due (the next call ends the break then anyway), so a break shorter
 * than the interval is never probed.
 * A probe that succeeds in time ends the break at once
 * (resil_breaker_probe_succeeded(): OPEN -> HALF_OPEN, and the normal
 * half-open calls close it); one that fails or times out changes nothing -
 * the break still ends on its timer and does not grow - so probes only ever
 * shorten an outage. Probe results are counted in resil_dep_stats.probes
 * (metric resil_probes_total), never as calls.
 *
 * The adapters install their own probe in _new (Redis: PING on a fresh
 * connection after AUTH and SELECT; PostgreSQL: a fresh connection and
 * probe_sql; HTTP: a GET of probe_path); call this for a dependency without
 * an adapter. Probes run on a small pool of threads shared by every
 * dependency (one per probed dependency, at most RESIL_PROBE_THREADS), so a
 * probe that hangs until its timeout delays other dependencies' probes only
 * when more than RESIL_PROBE_THREADS probes are due at once, and then by at
 * most that timeout.
 *
 * ctx is not owned; it must stay valid until fn is removed. Removing or
 * replacing (and resil_dep_free) waits for a running probe of this
 * dependency to finish, at most its timeout, so afterwards ctx may be freed;
 * do not call it from inside fn. A no-op returning RESIL_OK when
 * probe_interval_ms is 0. Errors: RESIL_E_INVALID (dep NULL), RESIL_E_NOMEM,
 * RESIL_E_SYSTEM (no probe thread could be started). Thread-safe. */
RESIL_API resil_status resil_dep_set_probe(resil_dep *dep, resil_probe_fn fn, void *ctx);

#define RESIL_PROBE_THREADS 4 /* most probe threads in a process */

/* Results of recovery probes, in the order of the probes[] array. */
typedef enum resil_probe_result {
  RESIL_PROBE_SUCCESS = 0, /* answered healthy within its timeout */
  RESIL_PROBE_FAILURE,     /* answered unhealthy, or could not connect */
  RESIL_PROBE_TIMEOUT,     /* no answer within its timeout */
  RESIL_PROBE_RESULT_COUNT_
} resil_probe_result;

/* Capacity of resil_dep_stats.probes[], fixed for the ABI; entries from
 * RESIL_PROBE_RESULT_COUNT_ on are 0. */
#define RESIL_PROBE_RESULT_SLOTS 4

/* "success", "failure", "timeout". Never NULL. */
RESIL_API const char *resil_probe_result_name(resil_probe_result r);

/* ---- One-call wrapper with retries ------------------------------------- */

/* Flags for resil_dep_call(). */
#define RESIL_CALL_IDEMPOTENT 0x1u /* safe to retry */

/* What the wrapper tells an attempt, and what the attempt may tell back. */
typedef struct resil_attempt {
  resil_deadline deadline; /* in: this attempt's deadline (the permit's) */
  uint32_t number;         /* in: 1 for the first attempt */
  int retry;               /* out: -1 default (retry failures, timeouts and
                              overload), 0 never, 1 retry even this outcome
                              (e.g. a serialization failure reported as
                              RESIL_E_CALLER) */
  uint32_t retry_after_ms; /* out: the dependency asked to wait this long */
  resil_err *err;          /* in: where to put detail (never NULL) */
} resil_attempt;

/* One attempt: do the work under a->deadline and return its outcome as for
 * resil_dep_done(). */
typedef resil_status (*resil_call_fn)(void *ctx, resil_attempt *a);

/* Admit, run fn, record, and - if flags has RESIL_CALL_IDEMPOTENT, the
 * outcome is retryable, attempts remain, the retry budget allows it and the
 * backoff (full jitter, at least retry_after_ms) ends before the deadline -
 * sleep and try again. Returns the last attempt's outcome or the rejection
 * that stopped it (RESIL_E_RETRY_BUDGET is returned only when no attempt
 * has run; otherwise the last attempt's outcome is returned and the refused
 * retry is counted). err gets the detail of the last failure. Thread-safe. */
RESIL_API resil_status resil_dep_call(resil_dep *dep, resil_deadline deadline, unsigned flags,
                                      resil_call_fn fn, void *ctx, resil_err *err);

/* ---- Operations -------------------------------------------------------- */

/* Start (true) or stop (false) rejecting new calls with RESIL_E_DRAINING.
 * Calls already admitted go on. Thread-safe. */
RESIL_API void resil_dep_set_draining(resil_dep *dep, bool draining);

/* Report this pool's gauges with the dependency (snapshot and exporters).
 * NULL detaches. The pool must outlive the attachment. Thread-safe. */
RESIL_API void resil_dep_attach_pool(resil_dep *dep, resil_pool *pool);

/* The attached pool, or NULL. Thread-safe. */
RESIL_API resil_pool *resil_dep_pool(const resil_dep *dep);

/* True while resil_dep_set_draining(dep, true) is in force. Thread-safe. */
RESIL_API bool resil_dep_is_draining(const resil_dep *dep);

/* Mark the dependency's attached pool as pre-warmed (true) or not (false).
 * resil_prewarm_all() sets it when the pool reached min_idle; call it
 * yourself after your own successful resil_pool_prewarm(). Readiness
 * (resil_ready) waits for it on critical dependencies with a pool.
 * New dependencies start not warm. Thread-safe (an atomic flag). */
RESIL_API void resil_dep_set_warm(resil_dep *dep, bool warm);

/* The flag set by resil_dep_set_warm(); false for NULL. Thread-safe. */
RESIL_API bool resil_dep_is_warm(const resil_dep *dep);

/* ---- Server pushback: pausing a dependency ------------------------------ */

/* Pause every new call to dep for ms milliseconds from now, capped at
 * pushback.max_pause_ms: what a server asked for with "429 Too Many
 * Requests" or "503" and "Retry-After: N" (the HTTP adapter calls this
 * itself). During the pause admit rejects at once with RESIL_E_PAUSED
 * (reason "paused", never a failure) unless the pause ends within the
 * call's allowed wait (the earlier of its deadline and limit.max_wait_ms),
 * in which case the call waits for the end. A pause only ever grows: a
 * shorter one than the pause in force changes nothing. reason is a short
 * token for the event ("retry_after", "overload", "operator"; NULL:
 * "pushback"), message (may be NULL) what the server said; both are
 * copied into the pause event (event.h RESIL_EVENT_PAUSE), emitted when a
 * pause starts and (by the first call or stats read after it) when it
 * ends. Calls already admitted go on. ms 0, or pushback.max_pause_ms 0, is
 * a no-op. Returns the pause's length in ms (0: none started or grown).
 * Thread-safe, lock-free. */
RESIL_API uint32_t resil_dep_pause(resil_dep *dep, uint32_t ms, const char *reason,
                                   const char *message);

/* Pushback that names no duration (Redis BUSY/LOADING, PostgreSQL 53300
 * "too many connections", HTTP 429 without Retry-After): pause for
 * pushback.pause_ms (a no-op while it is 0, the default). As
 * resil_dep_pause() otherwise. Thread-safe. */
RESIL_API uint32_t resil_dep_pushback(resil_dep *dep, const char *reason, const char *message);

/* End a pause now (an operator's override). Thread-safe. */
RESIL_API void resil_dep_unpause(resil_dep *dep);

/* Milliseconds left of the pause in force (rounded up), 0 if none.
 * Thread-safe. */
RESIL_API uint64_t resil_dep_pause_remaining_ms(const resil_dep *dep);

/* ---- Memory held for calls ---------------------------------------------- */

/* Adapters (and users with their own buffers) report the bytes they hold
 * for this dependency's calls - reply and response buffers being filled,
 * results being read - as they grow (delta > 0) and release them (delta <
 * 0), so resil_dep_stats.memory_bytes (metric resil_memory_bytes) shows
 * what is held now. One relaxed atomic add. Thread-safe; NULL dep is a
 * no-op. */
RESIL_API void resil_dep_memory_add(resil_dep *dep, int64_t delta);

/* The most this dependency's calls can hold at once, as computed from its
 * configuration (resil_config_memory_bound()); adapters set it in _new, the
 * exporters show it as resil_memory_bound_bytes. Thread-safe. */
RESIL_API void resil_dep_set_memory_bound(resil_dep *dep, uint64_t bytes);

/* Worst-case bytes of the dependency object itself (counters, histogram,
 * breaker and retry windows, queue waiters), from its configuration.
 * Adapters add their connections and reply caps (resil_config_kind
 * .memory_bound). Thread-safe, pure. */
RESIL_API uint64_t resil_dep_config_memory_bound(const resil_dep_config *cfg);

/* Rejection reasons, in the order of the rejections[] array. */
typedef enum resil_reject_reason {
  RESIL_REJECT_BREAKER_OPEN = 0,
  RESIL_REJECT_CONCURRENCY_FULL,
  RESIL_REJECT_QUEUE_TIMEOUT,
  RESIL_REJECT_POOL_TIMEOUT,
  RESIL_REJECT_DEADLINE,
  RESIL_REJECT_DRAINING,
  RESIL_REJECT_RETRY_BUDGET,
  RESIL_REJECT_THROTTLED, /* client-side throttling (RESIL_E_THROTTLED) */
  RESIL_REJECT_RATE_LIMITED, /* appended: no earlier value changes */
  RESIL_REJECT_PAUSED,
  RESIL_REJECT_COUNT_
} resil_reject_reason;

/* Capacity of resil_dep_stats.rejections[], fixed for the ABI (a new reason
 * does not move the fields after it); entries from RESIL_REJECT_COUNT_ on
 * are 0. */
#define RESIL_REJECT_SLOTS 16

/* Call outcomes, in the order of the calls[] array. */
typedef enum resil_outcome {
  RESIL_OUTCOME_SUCCESS = 0,
  RESIL_OUTCOME_FAILURE,
  RESIL_OUTCOME_TIMEOUT,
  RESIL_OUTCOME_OVERLOAD,
  RESIL_OUTCOME_IGNORED,
  RESIL_OUTCOME_COUNT_
} resil_outcome;

/* Capacity of resil_dep_stats.calls[], fixed for the ABI; entries from
 * RESIL_OUTCOME_COUNT_ on are 0. */
#define RESIL_OUTCOME_SLOTS 8

/* "breaker_open", ...; "success", "failure", ... Never NULL. */
RESIL_API const char *resil_reject_reason_name(resil_reject_reason r);
RESIL_API const char *resil_outcome_name(resil_outcome o);

typedef struct resil_dep_stats {
  char name[64];
  bool critical;
  bool draining;
  uint64_t admitted;                        /* permits handed out */
  uint64_t calls[RESIL_OUTCOME_SLOTS];      /* admitted calls by outcome */
  uint64_t rejections[RESIL_REJECT_SLOTS];  /* by reason, before or after admission */
  uint64_t rejected_after_admit;            /* admitted calls ended by a local
                                               rejection (e.g. pool_timeout): once
                                               idle, admitted == sum(calls) + this */
  uint64_t retries;                         /* extra attempts made */
  uint32_t in_flight;                       /* admitted, not yet done */
  uint32_t limit;                           /* the limit in force: max_concurrent,
                                               or the adaptive limit */
  uint32_t waiters;                         /* queued for a slot */
  uint32_t max_waiters;
  resil_hist_snapshot latency;              /* admit -> done, admitted calls */
  resil_breaker_stats breaker;
  bool has_pool;
  resil_pool_stats pool;                    /* valid if has_pool */
  /* Headline: max(in_flight/limit, pool in_use/max); above 1.0 when callers
   * queue: 1 + waiters/max_waiters for the slot queue, 1 + waiters/max for
   * the pool's queue. Alert on >= 1. */
  double saturation;
  uint64_t probes[RESIL_PROBE_RESULT_SLOTS]; /* recovery probes by result */
  uint64_t events;                          /* events delivered (event.h) */
  uint64_t events_dropped;                  /* events dropped by the rate limit */
  /* The lowest and highest limit in force over the last 60 s (at least the
   * current one; both == limit when not adaptive). 60 s covers any scrape
   * or EMF interval up to a minute, so no swing between two reads is missed. */
  uint32_t limit_min, limit_max;
  /* Client-side throttling: the probability (0..1) that an admission is
   * refused now; 0 when throttling is off or not shedding. */
  double throttle_probability;
  uint32_t rate_limit_per_s;                /* rate_limit.per_s (0: off) */
  uint32_t rate_limit_burst;
  uint64_t pause_remaining_ms;              /* of the pause in force, 0 if none */
  uint64_t pauses;                          /* pauses started or grown */
  uint64_t memory_bytes;                    /* held for calls now (resil_dep_memory_add) */
  uint64_t memory_bound_bytes;              /* resil_dep_set_memory_bound(), 0 if unset */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[728];
} resil_dep_stats;

/* A snapshot of everything counted for dep. Counters are read one by one
 * without stopping writers, so a snapshot taken under load may be a few
 * calls apart between fields; each counter alone is exact. Thread-safe. */
RESIL_API void resil_dep_get_stats(const resil_dep *dep, resil_dep_stats *out);

/* ---- Registry ---------------------------------------------------------- */

typedef void (*resil_dep_visit_fn)(void *ctx, resil_dep *dep);

/* Call fn for every registered dependency, in creation order, with the
 * registry locked: fn must not create or free dependencies. Returns how many
 * were visited. Thread-safe. */
RESIL_API size_t resil_registry_foreach(resil_dep_visit_fn fn, void *ctx);

/* The dependency with this name, or NULL. Thread-safe; the result is valid
 * until that dependency is freed. */
RESIL_API resil_dep *resil_registry_find(const char *name);

RESIL_END_DECLS
#endif
