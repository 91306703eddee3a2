/* resil: exporting every registered dependency's metrics.
 *
 * Prometheus text exposition format 0.0.4 (for a /metrics endpoint) and a
 * JSON snapshot, both rendered from one consistent walk of the registry.
 * Metric names (all prefixed resil_), per dependency label `dependency`:
 *
 *   resil_calls_total{outcome}                counter  success|failure|timeout|overload|ignored
 *   resil_rejections_total{reason}            counter  breaker_open|concurrency_full|queue_timeout|
 *                                                      pool_timeout|deadline|draining|retry_budget
 *   resil_retries_total                       counter
 *   resil_in_flight                           gauge
 *   resil_concurrency_limit                   gauge
 *   resil_queue_waiters                       gauge
 *   resil_saturation_ratio                    gauge    >= 1 means callers are queueing
 *   resil_breaker_state{state}                gauge    1 for the current state, 0 for the others
 *   resil_breaker_transitions_total{to}       counter
 *   resil_call_duration_seconds               histogram
 *   resil_pool_max_connections                gauge    (dependencies with a pool)
 *   resil_pool_connections{state}             gauge    idle|in_use|connecting
 *   resil_pool_waiters                        gauge
 *   resil_pool_acquire_timeouts_total         counter
 *   resil_pool_connects_total{result}         counter  ok|failed|timeout
 *   resil_pool_closed_total{reason}           counter  lifetime|idle|broken|validation|drain
 *   resil_pool_acquire_duration_seconds       histogram
 *   resil_info{version,clock}                 gauge    always 1; carries extra labels;
 *                                                      clock: what the call path reads,
 *                                                      tsc|clock_gettime (README: fast clock)
 *
 * Thread safety: all functions are thread-safe.
 */
#ifndef RESIL_EXPORT_H
#define RESIL_EXPORT_H

#include "resil/dep.h"

RESIL_BEGIN_DECLS

/* Render every registered dependency as Prometheus text. On RESIL_OK *out is
 * a NUL-terminated malloc'd string (free() it) of *len bytes (len may be
 * NULL). Errors: RESIL_E_INVALID (NULL out), RESIL_E_NOMEM. */
RESIL_API resil_status resil_export_prometheus(char **out, size_t *len, resil_err *err);

/* Render every registered dependency as one JSON object:
 * {"version":..., "dependencies":[{"name":..., "breaker":{...}, ...}]}.
 * Same ownership and errors as resil_export_prometheus(). */
RESIL_API resil_status resil_export_json(char **out, size_t *len, resil_err *err);

/* Add a constant label to resil_info (e.g. "config_hash", "service").
 * Names must match [a-zA-Z_][a-zA-Z0-9_]* and not be "version" or "clock"
 * (resil's own); values are escaped. Setting a
 * name again replaces its value; at most 8 labels. Errors: RESIL_E_INVALID. */
RESIL_API resil_status resil_export_set_info_label(const char *name, const char *value,
                                                   resil_err *err);

RESIL_END_DECLS
#endif
