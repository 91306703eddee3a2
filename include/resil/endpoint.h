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
 * Endpoints from DNS (resil_pool_new_endpoints_dns(); the adapters' key
 * ENDPOINTS_FROM_DNS=true), like Envoy's STRICT_DNS cluster: every address
 * one name resolves to (resil_resolve(): DNS, or the RESIL_HOSTS_FILE
 * override) is an endpoint of its own, "10.0.0.5:6379" or "[fd00::5]:6379",
 * with its pool and health as above. The set follows the name:
 *   - Refresh: when the resolver's cached answer expires (its TTL,
 *     resil_resolve_set_ttl_ms(), default 5 s; at most every 100 ms; every
 *     1 s with the cache off) and at once after resil_resolve_invalidate()
 *     (which the adapters call on a failover sign) or resil_resolve_flush().
 *     It is driven by calls and never makes one wait: the first acquire
 *     that finds the refresh due starts the lookup in the background, and
 *     an acquire that finds it done applies the answer. (A dependency with
 *     no calls keeps its set until its next call.)
 *   - An address that appears gets a pool (and a clean health record). An
 *     address that disappears gets no new call; its idle connections close
 *     at once, borrowed ones when released, and its pool is freed when it
 *     has none left. It leaves resil_pool_endpoint_stats() (and so the
 *     per-address metrics) at once; its connections still count in the
 *     pool's stats and against pool.max_size until they close. The
 *     addresses that stay keep their health and ejection state.
 *   - Beyond RESIL_ENDPOINTS_MAX addresses (the first 32 of an answer are
 *     looked at): the addresses already in the set keep their place, new
 *     ones join in the resolver's order while there is room, the others
 *     are left out and counted (resil_endpoints_dns_stats.dropped, metric
 *     resil_endpoint_dns_dropped).
 *   - A refresh that fails (no answer, name not found, an unreadable hosts
 *     file) keeps the last good set (stats: stale, failures, last_error;
 *     metric resil_endpoint_dns_stale) and is tried again 1 s later.
 *   - Until a first answer, an acquire resolves the name itself under its
 *     deadline, as a single-address pool's connect does; when that fails
 *     the acquire fails (RESIL_E_FAILURE, RESIL_E_TIMEOUT...) with
 *     "<pool>: resolve <host>: <why>", counted by the breaker as before.
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

/* Create a pool whose addresses are every address `host` resolves to, all
 * on `port` (see "Endpoints from DNS" above), with the same connector
 * rules, budget and outlier detection as resil_pool_new_endpoints():
 * connect_to() gets an endpoint whose host is the numeric address. Nothing
 * is resolved here (the first acquire does). Errors: RESIL_E_INVALID (host
 * not a host name - letters, digits, . - _ :, at most 253 bytes -, port
 * not 1..65535, bad config or connector), RESIL_E_NOMEM, RESIL_E_SYSTEM. */
RESIL_API resil_pool *resil_pool_new_endpoints_dns(const resil_pool_config *cfg,
                                                   const resil_pool_connector *connector,
                                                   resil_endpoint_connect_fn connect_to,
                                                   const char *host, uint32_t port,
                                                   const resil_outlier_config *outlier,
                                                   resil_err *err);

/* The state of a pool's name (resil_pool_new_endpoints_dns). */
typedef struct resil_endpoints_dns_stats {
  char host[256];          /* the name followed */
  uint32_t port;
  uint32_t addresses;      /* in the set now */
  uint32_t draining;       /* removed, with connections not all closed yet */
  uint32_t dropped;        /* of the last answer, left out: beyond RESIL_ENDPOINTS_MAX */
  uint64_t refreshes;      /* answers applied (the first included) */
  uint64_t failures;       /* resolutions that failed (the set was kept) */
  uint64_t added, removed; /* addresses that joined / left the set */
  bool stale;              /* the last refresh failed: the set is the last good answer */
  char last_error[RESIL_ERR_MSG_MAX]; /* the last failure's message, "" if none */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[207];
} resil_endpoints_dns_stats;

/* Fill *out for a pool made by resil_pool_new_endpoints_dns(); false (out
 * untouched) for any other pool, NULL or out NULL. Thread-safe. */
RESIL_API bool resil_pool_endpoints_dns_stats(const resil_pool *p,
                                              resil_endpoints_dns_stats *out);

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
 * how many p has: 0 for a pool not made by resil_pool_new_endpoints() or
 * resil_pool_new_endpoints_dns() (or NULL). From DNS, the addresses in the
 * set now (not those removed and still draining), in no set order. out may
 * be NULL to count. Thread-safe. */
RESIL_API size_t resil_pool_endpoint_stats(const resil_pool *p, resil_endpoint_stats *out,
                                           size_t max);

/* An address to try a fresh connection to (the adapters' recovery probes):
 * the next not-ejected address in turn (any, if all are ejected). A copy,
 * valid until the next call on the same thread. NULL for a pool not made
 * by resil_pool_new_endpoints*(), or from DNS before the first answer (the
 * adapters then connect to the configured host). */
RESIL_API const resil_endpoint *resil_pool_endpoint_next(resil_pool *p);

RESIL_END_DECLS
#endif
