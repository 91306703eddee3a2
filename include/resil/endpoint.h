/* resil: several endpoints (addresses) behind one dependency, with
 * per-address health (Envoy-style outlier ejection).
 *
 * A Redis or PostgreSQL dependency may list several addresses - the
 * instances behind an Aurora or ElastiCache reader endpoint, one address per
 * AZ - with HOSTS=h1:p1,h2:p2 (resil_redis_config.hosts, resil_pg_config.hosts).
 * The adapter then builds its pool with resil_pool_new_endpoints(): to every
 * other part of resil (the dependency, pre-warm, drain, stats, metrics) it
 * is one resil_pool, made of one pool per address.
 *
 * Spreading calls: each resil_pool_acquire() picks an address by "power of
 * two choices" least outstanding: two distinct addresses at random among
 * those not ejected, the one with fewer connections lent out wins (ties: the
 * first drawn). A slow address accumulates outstanding calls and gets fewer
 * new ones without any timer.
 *
 * Total bound: pool.max_size is the bound over all addresses together. Each
 * address's pool may grow up to it, but a connect needs one unit of the
 * shared budget; when none is free, an idle connection of another address
 * is closed to make room, else the connect waits (for a connection anywhere
 * to close or go idle) until its deadline, then the acquire ends
 * RESIL_E_POOL_TIMEOUT (a local rejection). Pre-warm spreads min_idle over
 * the addresses (ceil(min_idle / n) each, within max_size in total).
 *
 * Health, per address, from what the pool sees (Envoy's "local origin"
 * errors): a connect that fails or times out, a validation that fails and a
 * connection handed back RESIL_POOL_BROKEN (timeout, reset, protocol error,
 * READONLY...) are failures; a connection handed back RESIL_POOL_OK is a
 * success (an SQL error or a Redis ERR reply is the caller's, so a success
 * for the address).
 *
 * Outlier ejection (resil_outlier_config), after Envoy:
 *   - consecutive_failures failures in a row eject the address for
 *     base_ejection_ms x times_ejected (times_ejected counts this ejection),
 *     capped at max_ejection_ms (or base_ejection_ms if larger). Its idle
 *     connections are closed at once and borrowed ones when they come back
 *     (the pool's generation is evicted), which frees budget for the others.
 *   - At most max_ejection_percent % of the addresses are ejected at once,
 *     rounded down: an ejection that would go beyond is skipped (counted in
 *     ejections_skipped). Unlike Envoy (which checks the percentage before
 *     adding the new one, so 2 of 3 at 50 %), this never exceeds the
 *     percentage: with 50 %, 1 of 2 or 3 addresses, 2 of 4 or 5.
 *     With one address nothing is ever ejected unless the percentage is 100.
 *   - When its time is up the address comes back on probation: its first
 *     call that fails ejects it again, for longer (times_ejected + 1); its
 *     first success ends the probation. times_ejected goes down by one for
 *     each interval_ms it spends un-ejected (Envoy's decay), so an address
 *     that heals for good starts again from base_ejection_ms.
 *   - Success rate (optional, success_rate_minimum_hosts > 0): every
 *     interval_ms, among the un-ejected addresses with at least
 *     success_rate_request_volume calls in the interval, if there are at
 *     least success_rate_minimum_hosts of them, an address whose success
 *     rate is below mean - success_rate_stdev_factor x stdev is ejected (as
 *     above: its time, the percentage).
 *   - If every address is ejected (max_ejection_percent 100), calls are
 *     spread over all of them (Envoy's panic mode).
 *
 * The dependency's breaker (the rule, applied in resil_dep_done()): a
 * failed call counts against the breaker unless, when it ends, another
 * address of the dependency is healthy - not ejected and its last call
 * succeeded; such a failure still counts in the dependency's metrics
 * (resil_calls_total{outcome="failure"}) and for its address, but the
 * breaker ignores it. So bad addresses beside a good one are left to
 * outlier ejection and never open the breaker; when every address fails
 * (their last calls all failed, or they are ejected) failures count and the
 * breaker opens by its usual rules.
 *
 * Cardinality: at most RESIL_ENDPOINTS_MAX (16) addresses per dependency,
 * so the per-address metrics (label endpoint="host:port") stay bounded.
 *
 * Thread safety: all functions are thread-safe unless stated.
 */
#ifndef RESIL_ENDPOINT_H
#define RESIL_ENDPOINT_H

#include "resil/pool.h"

RESIL_BEGIN_DECLS

/* Most addresses one dependency may have (bounds the metric labels). */
#define RESIL_ENDPOINTS_MAX 16
/* Longest "host:port" text with NUL (253-byte host, brackets, port). */
#define RESIL_ENDPOINT_TEXT_MAX 264

/* One address of a dependency, as parsed from a host list. Frozen for the
 * SONAME (no reserved tail): a new field would come with a new struct. */
typedef struct resil_endpoint {
  char host[256];                     /* name or numeric address, no brackets */
  uint32_t port;                      /* 1..65535 */
  char text[RESIL_ENDPOINT_TEXT_MAX]; /* "host:port", "[::1]:6379": the metric label */
} resil_endpoint;

/* Parse a host list "h1:p1,h2:p2" into out[0..*n-1] (at most max entries,
 * max <= RESIL_ENDPOINTS_MAX). An entry is host:port, [ipv6]:port, or host
 * alone (port default_port); spaces around entries are ignored. Errors
 * (RESIL_E_INVALID, err says what, without a prefix): an empty list, an
 * empty entry, a bad or missing port (no default), a host with characters
 * other than letters, digits and . - _ : % or longer than 253 bytes, an IPv6 address without
 * brackets, the same host:port twice (host compared case-insensitively),
 * more than max entries. out and n may be NULL to only check. */
RESIL_API resil_status resil_endpoints_parse(const char *list, uint32_t default_port,
                                             resil_endpoint *out, size_t max, size_t *n,
                                             resil_err *err);

/* Outlier detection (Envoy's outlier_detection). Keys OUTLIER_* of the
 * Redis and PostgreSQL kinds. Used only with several addresses. */
typedef struct resil_outlier_config {
  uint32_t consecutive_failures;   /* default 5; 0 = off; else 1..1000 */
  uint32_t base_ejection_ms;       /* default 30000; 1..3600000 */
  uint32_t max_ejection_ms;        /* default 300000; 1..86400000 */
  uint32_t max_ejection_percent;   /* default 50; 0..100 (0 = never eject) */
  uint32_t interval_ms;            /* default 10000: success-rate interval and
                                      times_ejected decay; 100..3600000 */
  uint32_t success_rate_minimum_hosts;  /* default 0: success-rate rule off;
                                           else 2..RESIL_ENDPOINTS_MAX (Envoy: 5) */
  uint32_t success_rate_request_volume; /* default 100; 1..1000000 */
  double success_rate_stdev_factor;     /* default 1.9; 0.1..100 */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[32];
} resil_outlier_config;

/* Fill c with the defaults above. */
RESIL_API void resil_outlier_config_init(resil_outlier_config *c);

/* Check every field and report all problems at once, each named
 * "<prefix>outlier.<field>" (prefix may be NULL). RESIL_OK or
 * RESIL_E_INVALID. Thread-safe. */
RESIL_API resil_status resil_outlier_config_validate(const resil_outlier_config *c,
                                                     const char *prefix, resil_err *err);

/* The adapter's connect to one address: as resil_pool_connector.connect,
 * to ep->host (resolved by the adapter) and ep->port. */
typedef resil_status (*resil_endpoint_connect_fn)(void *ctx, const resil_endpoint *ep,
                                                  resil_deadline deadline, void **conn,
                                                  resil_err *err);

/* Create a pool over the addresses of `hosts` (resil_endpoints_parse(),
 * default_port for entries without one): one pool per address, each with
 * cfg (max_size is the total over all of them; min_idle is spread), whose
 * connections are opened by connect_to(connector->ctx, address, ...) and
 * checked, closed and abandoned by connector's validate, close and abandon
 * (connector->connect is not used and may be NULL). The result is used
 * like any resil_pool (acquire picks the address, release reports its
 * health); resil_pool_free() frees everything. resil_pool_generation() of
 * it is a value resil_pool_evict() ignores; resil_pool_evict() with a
 * borrowed connection's generation evicts that connection's address only,
 * with RESIL_POOL_GEN_CURRENT every address. Errors: RESIL_E_INVALID (bad
 * list, config or connector), RESIL_E_NOMEM, RESIL_E_SYSTEM. */
RESIL_API resil_pool *resil_pool_new_endpoints(const resil_pool_config *cfg,
                                               const resil_pool_connector *connector,
                                               resil_endpoint_connect_fn connect_to,
                                               const char *hosts, uint32_t default_port,
                                               const resil_outlier_config *outlier,
                                               resil_err *err);

/* Per-address state and counters. */
typedef struct resil_endpoint_stats {
  char endpoint[RESIL_ENDPOINT_TEXT_MAX]; /* "host:port": the metric label */
  bool ejected;
  bool probation;              /* back from an ejection, no success yet */
  uint32_t outstanding;        /* connections lent out now (calls in progress) */
  uint32_t times_ejected;      /* the multiplier of the next ejection - 1, after decay */
  uint64_t ejected_remaining_ms; /* 0 unless ejected */
  uint64_t calls;              /* outcomes recorded (successes + failures) */
  uint64_t failures;
  uint64_t ejections;          /* ejections of this address */
  uint64_t ejections_skipped;  /* ejections refused by max_ejection_percent */
  uint32_t open, idle, in_use, connecting; /* its pool */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[64];
} resil_endpoint_stats;

/* Fill out[0..] with the state of p's addresses (at most max) and return
 * how many p has: 0 for a pool not made by resil_pool_new_endpoints() (or
 * NULL). Thread-safe. */
RESIL_API size_t resil_pool_endpoint_stats(const resil_pool *p, resil_endpoint_stats *out,
                                           size_t max);

/* An address to try a fresh connection to (the adapters' recovery probes):
 * the next not-ejected address in turn (any, if all are ejected). NULL for
 * a pool not made by resil_pool_new_endpoints(). Valid until
 * resil_pool_free(). */
RESIL_API const resil_endpoint *resil_pool_endpoint_next(resil_pool *p);

RESIL_END_DECLS
#endif
