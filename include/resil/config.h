/* resil: per-dependency configuration from the environment (the way ECS
 * task definitions and Secrets Manager inject it), from a KEY=VALUE file, or
 * from C structs - all three meet in one validated configuration.
 *
 * Environment / file keys:
 *
 *   RESIL_DEPS=orders-db:pg,session-cache:redis,payments:http,legacy
 *       the dependencies, each `name[:kind]` (kind defaults to "core": a
 *       dependency with no adapter). Required.
 *   RESIL_DEP_<NAME>_<KEY>=value
 *       one setting of one dependency. <NAME> is the dependency's name in
 *       upper case with '-' and '.' as '_' (orders-db -> ORDERS_DB); <KEY> is
 *       the field's path in upper case with '.' as '_'
 *       (breaker.failure_rate_percent -> BREAKER_FAILURE_RATE_PERCENT).
 *       Two dependencies whose variables could collide are an error: when
 *       B's <NAME> is A's <NAME> + "_" + T and a key of A's kind is T + "_" +
 *       a key of B's kind (db:pg and db-connect:redis both claim
 *       RESIL_DEP_DB_CONNECT_TIMEOUT_MS), RESIL_DEPS is refused naming both
 *       and the variable, whether or not that variable is set.
 *   RESIL_SERVICE, RESIL_CONFIG_FILE and the other RESIL_* process keys
 *       listed in resil_service_config below.
 *
 * Every RESIL_* variable must be known: a typo in a task definition is an
 * error, not silently ignored. Values are strict: integers are plain decimal
 * digits; durations (keys ending in _ms) are an integer with an optional
 * unit ms, s, m or h ("250ms", "2s", "250" = 250 ms); booleans are
 * true/false/1/0/yes/no/on/off; no trailing garbage, no negative numbers.
 * Every problem found - malformed values, unknown keys, missing required
 * values, out-of-range or inconsistent settings - is reported at once, each
 * naming the variable (or file:line), so a bad deploy exits 1 with one clear
 * message instead of failing under load.
 *
 * Precedence: a value in the environment overrides the same key in the file,
 * which overrides the kind's defaults.
 *
 * Thread safety: loading is thread-safe (no global state is touched except
 * the kind registry's mutex); a loaded resil_config is immutable and may be
 * read from any thread.
 */
#ifndef RESIL_CONFIG_H
#define RESIL_CONFIG_H

#include "resil/dep.h"
#include "resil/pool.h"

RESIL_BEGIN_DECLS

/* A kind of dependency ("core", "redis", "pg", "http"): defined, with the
 * rest of the adapter-facing interface, in resil/adapter.h. */
typedef struct resil_config_kind resil_config_kind;

/* ---- Process-wide settings -------------------------------------------------- */

/* The loader validates these with resil_admin_config_validate() and
 * resil_emf_config_validate() on the structs resil_service_start() passes
 * to the admin endpoint and the EMF emitter (whether or not they are on),
 * reporting each problem under its variable. */
typedef struct resil_service_config {
  const char *service;          /* RESIL_SERVICE: name for metrics dimensions; default "service";
                                   1..255 bytes, no control characters */
  const char *admin_addr;       /* RESIL_ADMIN_ADDR: default "127.0.0.1"; numeric IPv4 or IPv6 */
  uint32_t admin_port;          /* RESIL_ADMIN_PORT: 0 = admin endpoint off (default) */
  const char *emf_namespace;    /* RESIL_EMF_NAMESPACE: default "resil" (see resil_emf_config) */
  uint32_t emf_interval_ms;     /* RESIL_EMF_INTERVAL_MS: default 60000; 1s..24h; 0 = EMF off */
  uint32_t drain_grace_ms;      /* RESIL_DRAIN_GRACE_MS: keep admitting after SIGTERM; default 5000 */
  uint32_t drain_timeout_ms;    /* RESIL_DRAIN_TIMEOUT_MS: wait for in-flight calls; default 20000 */
  uint32_t prewarm_timeout_ms;  /* RESIL_PREWARM_TIMEOUT_MS: bound on start-up pre-warm; default 10000 */
  const char *event_log;        /* RESIL_EVENT_LOG: json, text or off: one line per event
                                   (event.h) on stderr; default "json" */
} resil_service_config;

/* ---- Loading ------------------------------------------------------------- */

typedef struct resil_config resil_config;

/* Build a configuration from an environment block (NULL-terminated
 * "KEY=VALUE" strings, e.g. `environ`; NULL = none) and, if path is not NULL
 * or RESIL_CONFIG_FILE is set, a KEY=VALUE file (blank lines and lines
 * starting with # ignored; an optional `export ` prefix and surrounding
 * double quotes are accepted). Variables not starting with RESIL_ are
 * ignored. Each dependency's struct is initialised by its kind, overridden
 * key by key, then validated by the kind. On RESIL_OK *out is yours
 * (resil_config_free). On RESIL_E_INVALID err->msg is "N configuration
 * problems: " and as many whole problems as fit RESIL_ERR_MSG_MAX,
 * ';'-separated, then ";...and K more" if some did not fit; the full list,
 * one "VARIABLE: message" line per problem, is returned through `report`
 * if not NULL (a malloc'd string to free(); NULL on out of memory).
 * Errors: RESIL_E_INVALID,
 * RESIL_E_NOMEM, RESIL_E_SYSTEM (file unreadable). Thread-safe. */
RESIL_API resil_status resil_config_load(char *const *envp, const char *path, resil_config **out,
                                         char **report, resil_err *err);

/* Free a configuration (and every string it owns). NULL is a no-op. The
 * structs it handed out must no longer be used. */
RESIL_API void resil_config_free(resil_config *cfg);

/* Number of dependencies, in RESIL_DEPS order. */
RESIL_API size_t resil_config_count(const resil_config *cfg);

/* The i-th dependency's name, kind name, and config struct (of the kind's
 * type, e.g. resil_redis_config *), or NULL if i is out of range. */
RESIL_API const char *resil_config_name(const resil_config *cfg, size_t i);
RESIL_API const char *resil_config_kind_name(const resil_config *cfg, size_t i);
RESIL_API void *resil_config_get(const resil_config *cfg, size_t i);
RESIL_API const resil_config_kind *resil_config_kind_of(const resil_config *cfg, size_t i);

/* The config struct of the dependency called name, checking it has the
 * given kind (NULL: any). NULL if absent or of another kind. */
RESIL_API void *resil_config_find(const resil_config *cfg, const char *name, const char *kind);

/* The process-wide settings. Never NULL for a loaded config. */
RESIL_API const resil_service_config *resil_config_service(const resil_config *cfg);

/* The effective configuration, one KEY=VALUE line per setting (every key,
 * defaults included, in a stable order), secrets shown as <redacted>.
 * malloc'd; free() it. NULL on out of memory. */
RESIL_API char *resil_config_dump(const resil_config *cfg);

/* The same as a JSON object (for the admin endpoint's /config). */
RESIL_API char *resil_config_dump_json(const resil_config *cfg);

/* A short hash (16 hex digits, FNV-1a 64 of the redacted dump) identifying
 * the effective configuration, exported as the config_hash label of
 * resil_info so drift between tasks shows on a dashboard. Secrets do not
 * change it. */
RESIL_API const char *resil_config_hash(const resil_config *cfg);

/* The worst-case memory, in bytes, that resil can hold for the i-th
 * dependency with its configuration: its kind's memory_bound (e.g.
 * resil_redis_config_memory_bound(): the dependency object plus pool.max_size
 * x (connection + 2 x max_reply_bytes)), or for a kind without one the
 * dependency object alone (resil_dep_config_memory_bound()).
 * Replies and results a caller keeps after the call returned are the
 * caller's, not counted. resil-config prints it per dependency and in
 * total, for sizing a task's memory. 0 if i is out of range. Thread-safe. */
RESIL_API uint64_t resil_config_memory_bound(const resil_config *cfg, size_t i);

/* Documentation of a kind's keys (core, pool and its own) with their
 * defaults, as Markdown table rows "| `RESIL_DEP_<NAME>_KEY` | default |
 * help |", or of the process keys when kind_name is NULL. malloc'd (free
 * it); NULL for an unknown kind or out of memory. Thread-safe. */
RESIL_API char *resil_config_keys_markdown(const char *kind_name);

RESIL_END_DECLS
#endif
