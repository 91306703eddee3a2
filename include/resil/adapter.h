/* resil: the interface for adapters - code that wraps a driver in a resil
 * dependency (resil-redis, resil-pg, resil-http, or your own) - kept apart
 * from the application API, as SQLite keeps sqlite3ext.h apart.
 *
 *   #include <resil/adapter.h>
 *
 * An application needs resil/resil.h and its adapters' headers only. Code
 * that implements a dependency itself - a resil_call_fn filling
 * resil_attempt.err, a resil_pool_connector, a configuration kind for
 * RESIL_DEPS - includes this header too. It declares:
 *   - resil_err_set() and the problem collector (resil_problems) that
 *     validators use to report every problem at once;
 *   - the configuration-kind SPI: key specs, resil_config_kind,
 *     resil_config_register_kind(), RESIL_DEFINE_CONFIG_KIND, the core's key
 *     tables, and the value parsers (resil_parse_*);
 *   - resil_pool_conn_did_io(), for classifying a deadline spent in acquire.
 * The same ABI rules apply (docs/abi.md).
 */
#ifndef RESIL_ADAPTER_H
#define RESIL_ADAPTER_H

#include <stddef.h>

#include "resil/config.h"
#include "resil/pool.h"
#include "resil/status.h"

/* RESIL_DEFINE_CONFIG_KIND hands a void * handle to the adapter's FREE_FN
 * and DEP_FN: implicit in C, through a converting wrapper in C++. */
#ifdef __cplusplus
struct resil_handle_ {
  void *p;
  template <typename T> operator T *() const { return static_cast<T *>(p); }
};
#define RESIL_HANDLE_(h) (resil_handle_{h})
#else
#define RESIL_HANDLE_(h) (h)
#endif

RESIL_BEGIN_DECLS

/* ---- Errors ---------------------------------------------------------------- */

/* Fill err (if not NULL) with status and a printf-style message; returns
 * status so callers can `return resil_err_set(err, RESIL_E_INVALID, ...)`.
 * Adapters use it; applications rarely need to. Thread-safe. */
RESIL_API resil_status resil_err_set(resil_err *err, resil_status status,
                                     const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- Collecting several problems (for config validators) -------------- */

/* Validators report every problem at once: "orders-db: port: 0 is outside
 * 1..65535; orders-db: host: is required". Adapters use this to do the
 * same. Not thread-safe (one collector per validation). */
typedef struct resil_problems {
  char buf[RESIL_ERR_MSG_MAX];
  size_t len;
  unsigned count;
  const char *prefix; /* put before each field, e.g. "orders-db: " */
} resil_problems;

/* Start an empty collection; prefix (may be NULL) is kept by pointer. */
RESIL_API void resil_problems_init(resil_problems *p, const char *prefix);

/* Add "<prefix><field>: <message>". Past RESIL_ERR_MSG_MAX the text ends
 * with "..." but every problem is still counted. */
RESIL_API void resil_problem(resil_problems *p, const char *field, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Add problems another validator already formatted ("; "-separated, each
 * with its own prefix), e.g. resil_dep_config_validate()'s err->msg. */
RESIL_API void resil_problems_merge(resil_problems *p, const char *formatted);

/* Add "<field>: <v> is outside <lo>..<hi>" unless lo <= v <= hi. */
RESIL_API void resil_problems_check_range(resil_problems *p, const char *field, uint64_t v,
                                          uint64_t lo, uint64_t hi);

/* RESIL_OK if nothing was added, else RESIL_E_INVALID with every problem in
 * err->msg. */
RESIL_API resil_status resil_problems_finish(const resil_problems *p, resil_err *err);

/* ---- Pool ------------------------------------------------------------------ */

/* True if the resil_pool_acquire() that lent c did I/O against the
 * dependency to do so: it opened c, or it validated c (or another
 * connection, closed for failing its check) first. False when c came
 * straight from the idle list, however long the acquire waited for it.
 * Adapters use it to classify a deadline found spent right after acquiring:
 * true means the dependency's own slowness spent it (RESIL_E_TIMEOUT),
 * false means the caller's or the queue's time did (RESIL_E_DEADLINE).
 * Valid until the connection is released; false for NULL. Thread-safe for
 * the borrower (c is not shared). */
RESIL_API bool resil_pool_conn_did_io(const resil_pool_conn *c);

/* ---- Schemas: how keys map onto config structs ---------------------------- */

typedef enum resil_key_type {
  RESIL_KEY_UINT,   /* uint32_t, decimal digits */
  RESIL_KEY_MS,     /* uint32_t milliseconds, optional unit */
  RESIL_KEY_BOOL,   /* bool */
  RESIL_KEY_DOUBLE, /* double, finite */
  RESIL_KEY_STRING, /* const char *, owned by the resil_config */
  RESIL_KEY_SECRET, /* like STRING, but redacted when printed */
  RESIL_KEY_SIZE    /* size_t, decimal digits, optional unit k, M, G (1024-based) */
} resil_key_type;

/* One settable field. `offset` is relative to the struct the key belongs to:
 * the kind's own struct, its embedded resil_dep_config, or its embedded
 * resil_pool_config (see resil_config_kind). */
typedef struct resil_key_spec {
  const char *key;    /* "breaker.failure_rate_percent" */
  resil_key_type type;
  size_t offset;
  uint32_t min, max;  /* inclusive range for UINT and MS (both 0: no check) */
  bool required;      /* must be given (strings: non-empty) */
  const char *help;   /* one line for documentation and --help output */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[16];
} resil_key_spec;

/* The key specs of outlier detection (resil/endpoint.h: OUTLIER_* variables)
 * for a kind whose config struct T has a resil_outlier_config field f, to
 * put in the kind's key table (the Redis and PostgreSQL kinds do). */
#define RESIL_OUTLIER_KEY_SPEC_(T, f, k, t, h) \
  {"outlier." #k, RESIL_KEY_##t, offsetof(T, f.k), 0, 0, false, h, {0}}
#define RESIL_OUTLIER_KEY_SPECS(T, f)                                                          \
  RESIL_OUTLIER_KEY_SPEC_(T, f, consecutive_failures, UINT,                                    \
                          "with HOSTS: eject an address after this many failures in a row "    \
                          "(0 = off)"),                                                        \
  RESIL_OUTLIER_KEY_SPEC_(T, f, base_ejection_ms, MS,                                          \
                          "an ejection lasts this x the times the address was ejected"),        \
  RESIL_OUTLIER_KEY_SPEC_(T, f, max_ejection_ms, MS, "longest ejection"),                      \
  RESIL_OUTLIER_KEY_SPEC_(T, f, max_ejection_percent, UINT,                                    \
                          "never more than this % of the addresses ejected at once (rounded "  \
                          "down)"),                                                            \
  RESIL_OUTLIER_KEY_SPEC_(T, f, interval_ms, MS,                                               \
                          "success-rate interval; times ejected decays by one per interval"),  \
  RESIL_OUTLIER_KEY_SPEC_(T, f, success_rate_minimum_hosts, UINT,                              \
                          "success-rate rule: needs this many addresses with enough calls "    \
                          "(0 = rule off)"),                                                   \
  RESIL_OUTLIER_KEY_SPEC_(T, f, success_rate_request_volume, UINT,                             \
                          "success-rate rule: calls an address needs in the interval"),         \
  RESIL_OUTLIER_KEY_SPEC_(T, f, success_rate_stdev_factor, DOUBLE,                             \
                          "success-rate rule: eject below mean - this x stdev")

/* A kind of dependency ("core", "redis", "pg", "http"). Adapters describe
 * theirs and register it; the core registers "core" itself. */
struct resil_config_kind {
  const char *name;
  size_t size; /* sizeof the kind's config struct */
  /* Fill defaults; name is the dependency's name (owned by the config). */
  void (*init)(void *cfg, const char *name);
  /* Report every problem at once (RESIL_OK or RESIL_E_INVALID), through a
   * resil_problems collector with each field named by its key's path
   * ("port", "breaker.window_ms"): resil_config_load() then names each
   * problem by its variable. A message set otherwise (resil_err_set) is
   * reported whole, under the dependency's name. */
  resil_status (*validate)(const void *cfg, resil_err *err);
  /* The embedded core config (required) and pool config (NULL if none). */
  resil_dep_config *(*dep_config)(void *cfg);
  resil_pool_config *(*pool_config)(void *cfg);
  const resil_key_spec *keys; /* the kind's own keys (may be NULL) */
  size_t nkeys;
  /* Optional, used by resil_service (service.h): build the dependency's
   * handle from a validated config (e.g. resil_redis_new), free it, and get
   * its resil_dep. The core kind's handle is the resil_dep itself. */
  void *(*create)(const void *cfg, resil_err *err);
  void (*destroy)(void *handle);
  resil_dep *(*dep_of)(void *handle);
  /* Optional: the most bytes a dependency of this kind can hold at once
   * with this config - resil_dep_config_memory_bound() of its embedded
   * core config plus its connections and call buffers (pool size x
   * per-connection buffers and reply caps). NULL: the core's part only. */
  uint64_t (*memory_bound)(const void *cfg);
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[64];
};

/* Register a kind so that RESIL_DEPS can name it. A kind with the same name
 * is replaced. The struct must outlive the process's use of it (static
 * storage). Errors: RESIL_E_INVALID (NULL fields), RESIL_E_NOMEM (more than
 * 16 kinds). Thread-safe. */
RESIL_API resil_status resil_config_register_kind(const resil_config_kind *kind, resil_err *err);

/* For adapters: define a static kind named NAME_kind for config struct
 * CFG_T (with members `dep` and `pool`) whose handles are made by NEW_FN,
 * freed by FREE_FN and give their resil_dep through DEP_FN; KEYS is a static
 * array of resil_key_spec with offsets into CFG_T. Also defines
 * NAME_kind_get() returning it. */
#define RESIL_DEFINE_CONFIG_KIND(NAME, CFG_T, INIT_FN, VALIDATE_FN, NEW_FN, FREE_FN, DEP_FN, \
                                 KEYS)                                                      \
  RESIL__CONFIG_KIND_(NAME, CFG_T, INIT_FN, VALIDATE_FN, NEW_FN, FREE_FN, DEP_FN, KEYS, NULL)

/* As RESIL_DEFINE_CONFIG_KIND, with MEM_FN (uint64_t MEM_FN(const CFG_T *))
 * as the kind's memory_bound. */
#define RESIL_DEFINE_CONFIG_KIND_MEM(NAME, CFG_T, INIT_FN, VALIDATE_FN, NEW_FN, FREE_FN,      \
                                     DEP_FN, KEYS, MEM_FN)                                   \
  static uint64_t NAME##_kind_mem(const void *c) { return MEM_FN((const CFG_T *)c); }       \
  RESIL__CONFIG_KIND_(NAME, CFG_T, INIT_FN, VALIDATE_FN, NEW_FN, FREE_FN, DEP_FN, KEYS,      \
                      NAME##_kind_mem)

#define RESIL__CONFIG_KIND_(NAME, CFG_T, INIT_FN, VALIDATE_FN, NEW_FN, FREE_FN, DEP_FN, KEYS,   \
                            MEM)                                                             \
  static void NAME##_kind_init(void *c, const char *n) { INIT_FN((CFG_T *)c, n); }          \
  static resil_status NAME##_kind_validate(const void *c, resil_err *e) {                    \
    return VALIDATE_FN((const CFG_T *)c, e);                                                 \
  }                                                                                          \
  static resil_dep_config *NAME##_kind_dep(void *c) { return &((CFG_T *)c)->dep; }         \
  static resil_pool_config *NAME##_kind_pool(void *c) { return &((CFG_T *)c)->pool; }      \
  static void *NAME##_kind_create(const void *c, resil_err *e) {                            \
    return NEW_FN((const CFG_T *)c, e);                                                      \
  }                                                                                          \
  static void NAME##_kind_destroy(void *h) { FREE_FN(RESIL_HANDLE_(h)); }                   \
  static resil_dep *NAME##_kind_dep_of(void *h) { return DEP_FN(RESIL_HANDLE_(h)); }        \
  /* Positional (C and C++17 alike), in the order of struct resil_config_kind. */            \
  static const resil_config_kind NAME##_kind = {                                            \
      #NAME,                                                                                 \
      sizeof(CFG_T),                                                                         \
      NAME##_kind_init,                                                                      \
      NAME##_kind_validate,                                                                  \
      NAME##_kind_dep,                                                                       \
      NAME##_kind_pool,                                                                      \
      KEYS,                                                                                  \
      sizeof(KEYS) / sizeof((KEYS)[0]),                                                      \
      NAME##_kind_create,                                                                    \
      NAME##_kind_destroy,                                                                   \
      NAME##_kind_dep_of,                                                                    \
      MEM,                                                                                   \
      {0},                                                                                   \
  }

/* The kind for plain dependencies: struct resil_dep_config, no pool. */
RESIL_API const resil_config_kind *resil_config_core_kind(void);

/* The core's key specs (relative to resil_dep_config and resil_pool_config),
 * for documentation generators and adapters. */
RESIL_API const resil_key_spec *resil_config_dep_keys(size_t *n);
RESIL_API const resil_key_spec *resil_config_pool_keys(size_t *n);

/* ---- Parsing values ------------------------------------------------------------ */

/* Parse helpers, exposed for adapters and tests. Each returns RESIL_OK or
 * RESIL_E_INVALID with a message naming `what` and quoting the value. */
RESIL_API resil_status resil_parse_uint(const char *what, const char *v, uint32_t *out,
                                        resil_err *err);
RESIL_API resil_status resil_parse_ms(const char *what, const char *v, uint32_t *out,
                                      resil_err *err);
RESIL_API resil_status resil_parse_bool(const char *what, const char *v, bool *out,
                                        resil_err *err);
RESIL_API resil_status resil_parse_size(const char *what, const char *v, size_t *out,
                                        resil_err *err);

RESIL_END_DECLS
#endif
