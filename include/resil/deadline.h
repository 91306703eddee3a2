/* resil: absolute monotonic deadlines, the process clock, and the
 * grpc-timeout wire format for carrying a deadline across services.
 *
 * A deadline is a point on the process's monotonic clock (nanoseconds),
 * passed by value. Every blocking function in resil takes one and blocks no
 * longer than the earlier of it and the configured timeout of what it does.
 *
 * The zero deadline, RESIL_DEADLINE_UNSET, means "the caller has no deadline
 * of its own": the dependency's configured call timeout then applies. It
 * never means "wait forever" - nothing in resil does.
 */
#ifndef RESIL_DEADLINE_H
#define RESIL_DEADLINE_H

#include "resil/status.h"

RESIL_BEGIN_DECLS

typedef struct resil_deadline {
  uint64_t at_ns; /* monotonic ns; 0 = unset */
} resil_deadline;

/* A compound literal in C; C++ has none, so there it is a braced temporary
 * (valid C++11 and later, also under -pedantic-errors). */
#ifdef __cplusplus
#define RESIL_DEADLINE_UNSET (resil_deadline{0})
#else
#define RESIL_DEADLINE_UNSET ((resil_deadline){0})
#endif

/* ---- The clock --------------------------------------------------------- */

/* Current monotonic time in ns from the process clock (CLOCK_MONOTONIC
 * unless a test clock is installed). Thread-safe, lock-free. */
RESIL_API uint64_t resil_now_ns(void);

/* ---- Deadlines --------------------------------------------------------- */

/* A deadline ms milliseconds from now. ms <= 0 gives a deadline that has
 * already expired (not an unset one). Thread-safe. */
RESIL_API resil_deadline resil_deadline_in_ms(int64_t ms);

/* A deadline ns nanoseconds from now; ns <= 0 gives an expired deadline. */
RESIL_API resil_deadline resil_deadline_in_ns(int64_t ns);

/* True if d is set. */
static inline bool resil_deadline_is_set(resil_deadline d) { return d.at_ns != 0; }

/* Nanoseconds left before d (0 if expired). An unset deadline reports
 * INT64_MAX: callers must bound it with their own timeout, which
 * resil_deadline_bound() does. */
RESIL_API int64_t resil_deadline_remaining_ns(resil_deadline d);

/* Milliseconds left before d, rounded up so that 1 ns left reads as 1 ms
 * (a driver given 0 ms often means "no timeout"); 0 only when expired.
 * INT64_MAX for an unset deadline. */
RESIL_API int64_t resil_deadline_remaining_ms(resil_deadline d);

/* True if d is set and has passed. An unset deadline never expires. */
RESIL_API bool resil_deadline_expired(resil_deadline d);

/* The earlier of two deadlines; an unset one loses to a set one. */
RESIL_API resil_deadline resil_deadline_min(resil_deadline a, resil_deadline b);

/* min(d, now + timeout_ms): the deadline a blocking step must honour when it
 * has its own configured timeout. timeout_ms must be > 0; a value <= 0 is
 * treated as "already expired". The result is always set. */
RESIL_API resil_deadline resil_deadline_bound(resil_deadline d, int64_t timeout_ms);

/* ---- grpc-timeout propagation ------------------------------------------ */

/* Parse a grpc-timeout header value ("100m", "5S", "250000u"): 1 to 8 ASCII
 * digits followed by one unit of H (hours), M (minutes), S (seconds),
 * m (ms), u (us) or n (ns), nothing else (no spaces, sign or empty digits).
 * On success stores now + the timeout in *out. Errors: RESIL_E_INVALID with
 * a message quoting the bad value. Thread-safe. */
RESIL_API resil_status resil_grpc_timeout_parse(const char *value, size_t len,
                                                resil_deadline *out, resil_err *err);

/* Format the time remaining before d as a grpc-timeout value in buf (at
 * least 10 bytes: 8 digits, a unit, NUL), choosing the finest unit whose
 * value fits in 8 digits, rounding down. An expired deadline formats as "0n"
 * (the callee sees it is already late). Errors: RESIL_E_INVALID for an unset
 * deadline, NULL buf or size < 10. Thread-safe. */
RESIL_API resil_status resil_grpc_timeout_format(resil_deadline d, char *buf, size_t size,
                                                 resil_err *err);

RESIL_END_DECLS
#endif
