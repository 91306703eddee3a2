/* resil: one call to start an ECS-style service's resilience layer from its
 * environment, one to stop it.
 *
 *   resil_service *svc;
 *   char *report;
 *   if (resil_service_start(environ, &svc, &report, &err) != RESIL_OK) {
 *     fprintf(stderr, "%s\n", report ? report : err.msg);   // every problem, by variable
 *     return 1;                                              // a bad deploy exits 1
 *   }
 *   resil_redis *cache = resil_service_get(svc, "session-cache", "redis");
 *   ...serve until resil_service_wait(svc, deadline) says SIGTERM came...
 *   resil_service_stop(svc, &err);                           // drain, flush, free
 *
 * resil_service_start() loads the configuration (config.h: RESIL_DEPS,
 * RESIL_DEP_<NAME>_<KEY>, RESIL_CONFIG_FILE ...), creates every dependency
 * through its kind (adapters register theirs when linked), labels the
 * metrics with the config hash and service name, pre-warms the pools in the
 * background (readiness stays 503 until the critical ones are warm; failed
 * pre-warms are retried, each bounded by RESIL_PREWARM_TIMEOUT_MS), starts
 * the admin endpoint if RESIL_ADMIN_PORT is set, the EMF emitter if
 * RESIL_EMF_INTERVAL_MS is not 0, installs the SIGTERM handler, and -
 * unless RESIL_EVENT_LOG=off - installs the event hook (event.h) that writes
 * one line per event (json, or text) to stderr without ever blocking;
 * stop removes it. Adapters' recovery probes are installed by the adapters
 * themselves (resil_dep_set_probe()).
 *
 * Only one service may run per process (the admin endpoint, EMF emitter and
 * SIGTERM handler are process-wide).
 */
#ifndef RESIL_SERVICE_H
#define RESIL_SERVICE_H

#include "resil/config.h"

RESIL_BEGIN_DECLS

typedef struct resil_service resil_service;

/* Start everything described above. envp as for resil_config_load(). On
 * RESIL_E_INVALID, *report (if report is not NULL) is the full list of
 * configuration problems, one per line (free() it). Errors: RESIL_E_INVALID
 * (configuration; a service is already running), RESIL_E_NOMEM,
 * RESIL_E_SYSTEM (admin port in use: the message names RESIL_ADMIN_ADDR and
 * RESIL_ADMIN_PORT; thread creation), or a dependency's creation error. The
 * configuration is checked exactly as resil-config checks it (the admin and
 * EMF settings with their own validators), so a configuration resil-config
 * accepts fails here only for such system reasons. Nothing is left running
 * on failure. Thread-safe. */
RESIL_API resil_status resil_service_start(char *const *envp, resil_service **out, char **report,
                                           resil_err *err);

/* The handle of dependency `name` as its kind made it (resil_redis *,
 * resil_pg *, resil_http *, or resil_dep * for kind "core"), checking the
 * kind if not NULL. NULL if absent. Thread-safe. */
RESIL_API void *resil_service_get(const resil_service *svc, const char *name, const char *kind);

/* The resil_dep of dependency `name`, whatever its kind. NULL if absent. */
RESIL_API resil_dep *resil_service_dep(const resil_service *svc, const char *name);

/* The loaded configuration (for printing: resil_config_dump()). */
RESIL_API const resil_config *resil_service_get_config(const resil_service *svc);

/* The admin endpoint's port (0 if it is off). */
RESIL_API uint16_t resil_service_admin_port(const resil_service *svc);

/* Block until SIGTERM arrives (true) or the deadline passes (false). */
RESIL_API bool resil_service_wait(resil_service *svc, resil_deadline deadline);

/* Drain (readiness 503 at once; new calls still admitted for
 * RESIL_DRAIN_GRACE_MS; then rejected with RESIL_E_DRAINING; in-flight calls
 * finish within RESIL_DRAIN_TIMEOUT_MS), flush and stop EMF, stop the admin
 * endpoint, free every dependency and the configuration, and free svc.
 * Returns the drain's status (RESIL_E_TIMEOUT naming what was still in
 * flight); everything is freed either way. NULL is a no-op. */
RESIL_API resil_status resil_service_stop(resil_service *svc, resil_err *err);

RESIL_END_DECLS
#endif
