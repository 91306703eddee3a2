/* resil: one status enum for every function, and an error record with detail.
 *
 * A status says what happened in a word an operator can alert on; the
 * resil_err record adds the sentence (dependency name, phase, driver text).
 * Statuses double as call outcomes: an adapter ends a call with
 * resil_dep_done(&permit, status), and the status decides how the breaker
 * and the metrics count it (see resil_status_class()).
 *
 * Timeout or deadline? The rule every adapter follows:
 *   - The deadline running out while resil is working with the dependency
 *     is RESIL_E_TIMEOUT, a dependency failure the breaker counts. That
 *     work is name resolution, TCP connect, TLS, authentication and set-up
 *     (Redis AUTH/SELECT, the PostgreSQL start-up), validating an idle
 *     pooled connection, and the request or statement itself. A dependency
 *     that is slow to accept or to get through its handshake therefore
 *     trips its breaker like one that is slow to answer.
 *   - RESIL_E_DEADLINE is only for a deadline already spent before any work
 *     against the dependency began in the attempt: the caller's own time,
 *     or time waiting in the bulkhead queue or for a pooled connection
 *     without connecting (waiting for a pooled connection may also end as
 *     RESIL_E_POOL_TIMEOUT). It is a local rejection, never counted.
 * Local resources are never the dependency's fault: socket() failing with
 * EMFILE, ENFILE, ENOBUFS or ENOMEM (and the drivers' own words for it:
 * hiredis "Can't create socket", libpq "could not create socket", a curl
 * socket callback's errno) is RESIL_E_SYSTEM, running out of memory is
 * RESIL_E_NOMEM; both are ignored by the breaker. A peer that sends what
 * the driver refuses to hold (an HTTP header line over curl's limit, a
 * Redis reply over the adapter's bound) is the dependency's failure,
 * RESIL_E_FAILURE, not RESIL_E_NOMEM.
 */
#ifndef RESIL_STATUS_H
#define RESIL_STATUS_H

#include "resil/common.h"

RESIL_BEGIN_DECLS

/* Values never change (docs/abi.md): a new status is added just before
 * RESIL_STATUS_COUNT_, and tests/unit/test_abi.c pins every number. */
typedef enum resil_status {
  RESIL_OK = 0,

  /* -- The dependency's answer (counted as outcomes) ----------------------- */
  RESIL_E_FAILURE,  /* the dependency failed (I/O error, 5xx, server down...) */
  RESIL_E_TIMEOUT,  /* the deadline ran out while working with the dependency
                       (DNS, connect, TLS, AUTH/SELECT/start-up, validation,
                       the request itself) */
  RESIL_E_OVERLOAD, /* the dependency said it is overloaded (429, LOADING...) */
  RESIL_E_CALLER,   /* the dependency rejected the request itself (404, syntax
                       error, WRONGTYPE): the caller's fault, never trips the
                       breaker */

  /* -- Rejected locally, before or instead of talking to the dependency ---- */
  RESIL_E_BREAKER_OPEN,     /* breaker open or forced open */
  RESIL_E_CONCURRENCY_FULL, /* max concurrent calls reached, queue full */
  RESIL_E_QUEUE_TIMEOUT,    /* waited in the concurrency queue for max_wait */
  RESIL_E_POOL_TIMEOUT,     /* no pooled connection became free in time */
  RESIL_E_DEADLINE,         /* the deadline was spent before any work against
                               the dependency began (caller's time, bulkhead
                               queue, waiting for a pooled connection) */
  RESIL_E_DRAINING,         /* the process is draining (SIGTERM) */
  RESIL_E_RETRY_BUDGET,     /* a retry was refused by the retry budget */

  /* -- Programming, configuration and system errors ----------------------- */
  RESIL_E_INVALID, /* bad argument or configuration; the message names it */
  RESIL_E_NOMEM,   /* out of memory (here, not at the dependency) */
  RESIL_E_SYSTEM,  /* an OS call failed, e.g. no file descriptor left for a
                      socket (errno in the message); never the dependency's
                      fault */
  RESIL_E_CLOSED,  /* the object was closed/drained */

  /* -- Added later; numbered after the groups above so that no existing
   *    value ever changes. Check classes with resil_status_class_of() and
   *    resil_status_is_rejection(), never with numeric ranges. ------------- */
  RESIL_E_THROTTLED, /* a local rejection: client-side adaptive throttling
                        shed the call because too few recent calls to this
                        dependency succeeded (dep.h, throttle) */
  RESIL_E_RATE_LIMITED, /* local rejection: the dependency's outbound rate limit
                           (rate_limit.per_s) had no token within the call's
                           allowed wait */
  RESIL_E_PAUSED,       /* local rejection: the dependency is paused after it
                           pushed back (429/503 with Retry-After, ...; see
                           resil_dep_pause()) */

  RESIL_STATUS_COUNT_
} resil_status;

/* How a status counts. */
typedef enum resil_status_class {
  RESIL_CLASS_SUCCESS,   /* RESIL_OK */
  RESIL_CLASS_FAILURE,   /* FAILURE, TIMEOUT, OVERLOAD: counts against the breaker */
  RESIL_CLASS_IGNORED,   /* CALLER: counted, but neither success nor failure */
  RESIL_CLASS_REJECTED,  /* local rejection: never a dependency failure */
  RESIL_CLASS_ERROR      /* INVALID, NOMEM, SYSTEM, CLOSED: ignored by the breaker */
} resil_status_class;

/* A constant English sentence for a status, e.g. "rejected: circuit breaker
 * is open". Never NULL; unknown values give "unknown status". Thread-safe. */
RESIL_API const char *resil_strerror(resil_status s);

/* A short snake_case name usable as a metric label, e.g. "breaker_open",
 * "pool_timeout", "timeout". Never NULL. Thread-safe. */
RESIL_API const char *resil_status_name(resil_status s);

/* Which class a status belongs to (see resil_status_class). Thread-safe. */
RESIL_API resil_status_class resil_status_class_of(resil_status s);

/* True for the local rejections: BREAKER_OPEN, CONCURRENCY_FULL,
 * QUEUE_TIMEOUT, POOL_TIMEOUT, DEADLINE, DRAINING, RETRY_BUDGET, THROTTLED,
 * RATE_LIMITED, PAUSED, and any rejection added later (wherever it sits in
 * the enum). Thread-safe. */
RESIL_API bool resil_status_is_rejection(resil_status s);

/* Longest detail message kept in a resil_err, including the NUL. */
#define RESIL_ERR_MSG_MAX 512

/* Error detail. Every function that can fail takes an optional
 * `resil_err *err` (NULL is allowed); on failure it sets err->status to the
 * returned status and err->msg to one line naming what went wrong, e.g.
 * "dep 'orders-db': breaker.failure_rate_percent: 140 is outside 0..100".
 * On success err is left untouched. */
typedef struct resil_err {
  resil_status status;
  char msg[RESIL_ERR_MSG_MAX];
} resil_err;

RESIL_END_DECLS
#endif
