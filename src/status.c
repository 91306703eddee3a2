/* Status names and sentences. */
#include "internal.h"

static const struct {
  const char *name;
  const char *text;
} statuses[RESIL_STATUS_COUNT_] = {
    [RESIL_OK] = {"ok", "success"},
    [RESIL_E_FAILURE] = {"failure", "the dependency failed"},
    [RESIL_E_TIMEOUT] = {"timeout", "the call to the dependency timed out"},
    [RESIL_E_OVERLOAD] = {"overload", "the dependency reported it is overloaded"},
    [RESIL_E_CALLER] = {"caller_error", "the dependency rejected the request (caller error)"},
    [RESIL_E_BREAKER_OPEN] = {"breaker_open", "rejected: circuit breaker is open"},
    [RESIL_E_CONCURRENCY_FULL] = {"concurrency_full",
                                  "rejected: concurrency limit reached and queue full"},
    [RESIL_E_QUEUE_TIMEOUT] = {"queue_timeout",
                               "rejected: waited too long for a concurrency slot"},
    [RESIL_E_POOL_TIMEOUT] = {"pool_timeout", "rejected: no pooled connection became free in time"},
    [RESIL_E_DEADLINE] = {"deadline", "rejected: the deadline was already spent"},
    [RESIL_E_DRAINING] = {"draining", "rejected: the process is draining"},
    [RESIL_E_RETRY_BUDGET] = {"retry_budget", "rejected: retry budget exhausted"},
    [RESIL_E_INVALID] = {"invalid", "invalid argument or configuration"},
    [RESIL_E_NOMEM] = {"nomem", "out of memory"},
    [RESIL_E_SYSTEM] = {"system", "system call failed"},
    [RESIL_E_CLOSED] = {"closed", "the object is closed or draining"},
    [RESIL_E_THROTTLED] = {"throttled",
                           "rejected: client-side throttling shed the call (too few recent "
                           "calls to the dependency succeeded)"},
    [RESIL_E_RATE_LIMITED] = {"rate_limited",
                              "rejected: outbound rate limit reached (no token in time)"},
    [RESIL_E_PAUSED] = {"paused", "rejected: the dependency asked us to pause (pushback)"},
};

const char *resil_strerror(resil_status s) {
  if ((unsigned)s >= RESIL_STATUS_COUNT_) return "unknown status";
  return statuses[s].text;
}

const char *resil_status_name(resil_status s) {
  if ((unsigned)s >= RESIL_STATUS_COUNT_) return "unknown";
  return statuses[s].name;
}

/* A set of statuses named one by one (internal.h), not a numeric range:
 * statuses are only ever added at the end of the enum (docs/abi.md), so a
 * new rejection is listed there by name. */
bool resil_status_is_rejection(resil_status s) { return resil__is_rejection(s); }

resil_status_class resil_status_class_of(resil_status s) {
  switch (s) {
    case RESIL_OK: return RESIL_CLASS_SUCCESS;
    case RESIL_E_FAILURE:
    case RESIL_E_TIMEOUT:
    case RESIL_E_OVERLOAD: return RESIL_CLASS_FAILURE;
    case RESIL_E_CALLER: return RESIL_CLASS_IGNORED;
    default: return resil_status_is_rejection(s) ? RESIL_CLASS_REJECTED : RESIL_CLASS_ERROR;
  }
}
