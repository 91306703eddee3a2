/* resil-redis: Redis (hiredis 0.14+) behind a resil dependency.
 *
 *   #include <resil/redis.h>      link: resil-redis (pkg-config), resil, hiredis
 *
 * One resil_redis per Redis endpoint ("session-cache"). It owns a resil_dep
 * (breaker, concurrency limit, retries, metrics) and a bounded resil_pool of
 * hiredis connections attached to it, so the dependency's stats carry the
 * pool's gauges.
 *
 * Every call is bounded by its deadline as a whole, never per system call:
 * name resolution (resil_resolve), connect, AUTH, SELECT, sending and
 * receiving all share it. Connections are non-blocking hiredis contexts
 * driven with poll(); after ANY transport error or timeout the connection is
 * destroyed (hiredis errors are sticky, and a late reply must never answer
 * the next command), and the next call gets a fresh one. TCP keepalive is on.
 * Sends use MSG_NOSIGNAL, so a connection the server reset never raises
 * SIGPIPE in the caller's process.
 *
 * How outcomes count (the returned status is also what the breaker sees):
 *   RESIL_OK          a reply that is not an error reply (nil, integer,
 *                     string, array... all count as success);
 *   RESIL_E_FAILURE   connect refused/reset, I/O error, EOF, protocol error,
 *                     AUTH/SELECT refused; a reply no sane server sends: an
 *                     array announcing more than 1M (1048576) elements
 *                     (refused before hiredis allocates it) or arrays
 *                     nested more than 7 deep; error replies MASTERDOWN,
 *                     OOM, READONLY, CLUSTERDOWN (the reply is still handed
 *                     back);
 *   RESIL_E_OVERLOAD  error replies LOADING, BUSY, TRYAGAIN: the server is up
 *                     but cannot serve now (a failure for the breaker,
 *                     retryable; the reply is handed back);
 *   RESIL_E_TIMEOUT   the deadline (or command_timeout_ms) passed while
 *                     working with Redis: resolving, connecting, in AUTH or
 *                     SELECT, validating an idle connection (PING), sending
 *                     or waiting for the reply - also when the connect or
 *                     validation left no time to send the command;
 *   RESIL_E_CALLER    any other error reply (ERR, WRONGTYPE, NOSCRIPT,
 *                     NOAUTH...): the caller's fault, handed back, never
 *                     counted against the breaker, connection reused;
 *                     also a reply larger than max_reply_bytes (see the
 *                     config): well-formed but bigger than this dependency
 *                     accepts, most likely a caller reading a huge value;
 *                     nothing is handed back, the connection is closed
 *                     (it is mid-reply), not retried;
 *   local rejections  RESIL_E_BREAKER_OPEN, RESIL_E_CONCURRENCY_FULL,
 *                     RESIL_E_QUEUE_TIMEOUT, RESIL_E_POOL_TIMEOUT,
 *                     RESIL_E_DEADLINE, RESIL_E_DRAINING: nothing was sent
 *                     (RESIL_E_DEADLINE: the time went before any work with
 *                     Redis began, e.g. waiting for a pooled connection);
 *   RESIL_E_SYSTEM    a local resource ran out: no fd for the socket
 *                     (EMFILE, ENFILE...), a name lookup that could not run
 *                     for the same reason; never counted by the breaker;
 *   RESIL_E_INVALID / RESIL_E_NOMEM / RESIL_E_CLOSED  bad arguments, out
 *                     of memory, pool closed.
 * A connection that saw a transport error, a timeout, a refused reply, or
 * READONLY / MASTERDOWN is closed; one that got any other reply goes back to
 * the pool.
 *
 * Failover (ElastiCache, Sentinel): READONLY ("You can't write against a
 * read only replica": a demoted primary) or MASTERDOWN, a connection reset
 * or closed by the server mid-call, and - once this dependency has
 * connected - a refused or reset connect mean the endpoint moved. Then the
 * host name is resolved afresh at the next connect whatever the cache's TTL
 * (resil_resolve_invalidate) and the pool's generation is evicted
 * (resil_pool_evict: idle connections close at once, borrowed ones when they
 * come back), once for many calls seeing the same failover. A single
 * command (not EVAL, EVALSHA or FCALL, not a pipeline) refused with
 * READONLY was not executed: it is sent again at once, once, on a fresh
 * connection within the same attempt, so when DNS already points at the
 * new primary the caller sees no error. Counted in resil_redis_stats.
 *
 * Error messages name the dependency and the phase (resolve, connect, auth,
 * select, send, receive) and carry hiredis's or the server's text, e.g.
 *   "session-cache: connect to 127.0.0.1:6379: Connection refused"
 *   "session-cache: receive: timed out after 200 ms (deadline)"
 *   "session-cache: auth: WRONGPASS invalid username-password pair ..."
 *
 * Retries: pass RESIL_CALL_IDEMPOTENT to let resil_dep_call retry failures,
 * timeouts and overload within the dependency's retry policy, budget and the
 * deadline. A refused AUTH or SELECT is never retried (no retry storm with a
 * wrong password), nor is a caller error or a local rejection.
 *
 * Replies are hiredis redisReply objects OWNED BY THE CALLER: free each
 * non-NULL one with freeReplyObject(). A reply is handed back whenever the
 * server answered (RESIL_OK, RESIL_E_CALLER, and the error replies counted as
 * RESIL_E_FAILURE / RESIL_E_OVERLOAD); otherwise *reply is NULL.
 *
 * Recovery probe: resil_redis_new() installs one (resil_dep_set_probe()):
 * while the breaker is open, every dep.probe_interval_ms, a PING on a FRESH
 * connection after AUTH and SELECT, within dep.probe_timeout_ms; a PONG
 * ends the break at once. Its connections are not the pool's and do not
 * appear in the pool's stats.
 *
 * Thread safety: resil_redis_command(), _command_argv(), _pipeline() and
 * the accessors may be called from any number of threads at once on the same
 * resil_redis. _new and _free are not concurrent with anything on that
 * object.
 */
#ifndef RESIL_REDIS_H
#define RESIL_REDIS_H

#include <stdarg.h>

#include <hiredis/hiredis.h>

#include "resil/credentials.h"
#include "resil/deadline.h"
#include "resil/dep.h"
#include "resil/endpoint.h"
#include "resil/pool.h"
#include "resil/status.h"

RESIL_BEGIN_DECLS

typedef struct resil_redis_config {
  /* The dependency: dep.name is required (it names the pool, the metrics and
   * every error). dep.timeout_ms (default 1000) caps each attempt, and the
   * whole call when the caller passes RESIL_DEADLINE_UNSET. */
  resil_dep_config dep;
  /* The connection pool. pool.name defaults to dep.name;
   * pool.connect_timeout_ms is overwritten with connect_timeout_ms below.
   * Defaults are resil_pool_config_init()'s (max_size 10, ...). */
  resil_pool_config pool;
  const char *host;            /* default "127.0.0.1"; name or numeric; copied */
  uint32_t port;               /* default 6379; 1..65535 */
  const char *unix_path;       /* default NULL; if set, host and port are unused; copied */
  const char *username;        /* default NULL; with password: "AUTH user pass" (Redis 6 ACL) */
  const char *password;        /* default NULL: no AUTH; copied, never printed */
  uint32_t database;           /* default 0 (no SELECT); 0..100000 */
  uint32_t connect_timeout_ms; /* default 500; 1..600000: resolve + connect + AUTH + SELECT */
  uint32_t command_timeout_ms; /* default 0: no cap beyond the attempt's deadline
                                  (dep.timeout_ms); else 1..600000 caps the
                                  send+receive of one attempt */
  /* Default RESIL_REDIS_DEFAULT_MAX_REPLY_BYTES (64 MiB); 1 KiB..4 GiB. The
   * most one call's replies may hold (a pipeline's n replies together): the
   * bytes of the redisReply objects built (with malloc's overhead: ~64 bytes
   * per element, plus a string's length) plus the bytes received and not
   * parsed yet. Checked at every read and every object, so a server that
   * announces a huge string and streams it, or sends millions of small
   * elements, is cut off at this bound (RESIL_E_CALLER, connection closed)
   * instead of growing the process. A GET of a value close to the bound
   * briefly needs twice its size while hiredis copies it out of its
   * buffer. */
  size_t max_reply_bytes;
  /* Rotating passwords (resil/credentials.h), instead of `password` (at
   * most one of the three). password_file: a file whose first line is the
   * AUTH password, read at start (missing, unreadable or empty: a
   * configuration error naming the file), checked again (one stat()) at
   * most every password_file_check_ms (default 2000, 100..3600000) before
   * new connections and at once when AUTH is refused (WRONGPASS, NOAUTH,
   * "invalid password"); when the password changed, AUTH is sent again at
   * once on the same connection. A file that vanished later keeps the
   * last good password (counted). Copied. password_cb(password_ctx, flags,
   * buf, size): called for each new connection (see resil_password_fn).
   * Connections already open stay authenticated. Default NULL. */
  const char *password_file;
  uint32_t password_file_check_ms;
  resil_password_fn password_cb;
  void *password_ctx;
  /* Several addresses behind this dependency (resil/endpoint.h), e.g. the
   * nodes of an ElastiCache reader endpoint: "h1:p1,h2:p2" (at most
   * RESIL_ENDPOINTS_MAX; an entry without a port uses `port`). When set,
   * host is not used, and unix_path must not be set; each address gets its
   * own pool (pool.max_size bounds them all together), calls are spread
   * over them (power of two choices, least outstanding) and an address that
   * keeps failing is ejected by outlier detection (below). Default NULL:
   * one address, `host`. Copied. */
  const char *hosts;
  resil_outlier_config outlier; /* with hosts or endpoints_from_dns; init()'s defaults */
  /* Every address `host` resolves to is an address of its own, as with
   * hosts (its pool, outlier ejection, calls spread), and the set follows
   * DNS: re-resolved when the resolver's cached answer expires and at once
   * on a failover sign; see "Endpoints from DNS" in resil/endpoint.h. For
   * an ElastiCache reader endpoint or an NLB with one address per AZ.
   * Default false: the addresses of host are tried in order, as one
   * endpoint. Not with hosts or unix_path (a config error). */
  bool endpoints_from_dns;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[207];
} resil_redis_config;

#define RESIL_REDIS_DEFAULT_MAX_REPLY_BYTES ((size_t)64 << 20)
#define RESIL_REDIS_MIN_MAX_REPLY_BYTES ((size_t)1 << 10)
#define RESIL_REDIS_MAX_MAX_REPLY_BYTES ((size_t)4 << 30)

/* Fill cfg with the defaults above and set cfg->dep.name to name (may be
 * NULL; set it later). Call first, then change what you need: fields added
 * later get safe defaults. Thread-safe. */
RESIL_API void resil_redis_config_init(resil_redis_config *cfg, const char *name);

/* Check every field (the dependency's, the pool's and the Redis ones) and
 * report all problems at once in err->msg, each prefixed by the dependency's
 * name and naming its field ("session-cache: port: 0 is outside 1..65535").
 * RESIL_OK or RESIL_E_INVALID. Thread-safe. */
RESIL_API resil_status resil_redis_config_validate(const resil_redis_config *cfg,
                                                   resil_err *err);

/* The most memory a client with this config can hold at once, in bytes,
 * for sizing a task: the dependency object (resil_dep_config_memory_bound())
 * + pool.max_size x 64 KiB (hiredis context and reader) +
 * min(pool.max_size, limit.max_concurrent) x 2 x max_reply_bytes (a call's
 * replies and unparsed bytes, and the instant copy of a bulk string).
 * Replies the caller keeps after a call are the caller's. resil-config
 * prints it. Thread-safe, pure. */
RESIL_API uint64_t resil_redis_config_memory_bound(const resil_redis_config *cfg);

typedef struct resil_redis resil_redis;

/* Validate cfg, create the dependency (registered under cfg->dep.name) and
 * its pool, and attach the pool to it. Opens no connection: call
 * resil_pool_prewarm(resil_redis_pool(r), ...) for pool.min_idle. All
 * strings are copied. Errors (NULL returned, err filled): RESIL_E_INVALID
 * (bad config or the name is taken), RESIL_E_NOMEM, RESIL_E_SYSTEM.
 * Thread-safe with respect to other objects. */
RESIL_API resil_redis *resil_redis_new(const resil_redis_config *cfg, resil_err *err);

/* Free the pool (closing its connections), the dependency and r. No call may
 * be in progress on r and no borrowed connection outstanding. NULL is a
 * no-op. For a graceful shutdown, first resil_dep_set_draining() and
 * resil_pool_drain() with a deadline. */
RESIL_API void resil_redis_free(resil_redis *r);

/* The dependency (for stats, draining, the breaker's mode). Valid until
 * resil_redis_free(). Thread-safe. */
RESIL_API resil_dep *resil_redis_dep(resil_redis *r);

/* The connection pool (for stats, prewarm, drain). Valid until
 * resil_redis_free(). Thread-safe. */
RESIL_API resil_pool *resil_redis_pool(resil_redis *r);

/* The "redis" configuration kind (config.h), so that RESIL_DEPS=name:redis
 * with RESIL_DEP_<NAME>_HOST, _PORT, _UNIX_PATH, _USERNAME, _PASSWORD,
 * _PASSWORD_FILE, _PASSWORD_FILE_CHECK_MS, _DATABASE, _CONNECT_TIMEOUT_MS,
 * _COMMAND_TIMEOUT_MS, _MAX_REPLY_BYTES, _HOSTS, _OUTLIER_*
 * (plus the core's and
 * the pool's keys) configure a resil_redis and resil_service builds it. It is
 * registered automatically when libresil-redis is loaded, also in a static
 * link of a program that calls any resil_redis_* function; a program that
 * only names the kind in RESIL_DEPS calls resil_redis_register_kind() first.
 * Thread-safe. */
RESIL_API const struct resil_config_kind *resil_redis_config_kind(void);
RESIL_API resil_status resil_redis_register_kind(resil_err *err);

/* Run one command given printf-style, as hiredis's redisCommand() ("%s" and
 * "%b" (pointer, size_t length) for arguments; arguments are split on
 * spaces in the format only). deadline may be RESIL_DEADLINE_UNSET
 * (dep.timeout_ms then bounds the call). flags: 0 or RESIL_CALL_IDEMPOTENT.
 * On return *reply holds the server's reply or NULL (see the header comment
 * for which statuses carry one; the caller frees it with freeReplyObject).
 * Returns the call's outcome as described above; err (optional) gets the
 * sentence. RESIL_E_INVALID for NULL r/reply/fmt or a format hiredis
 * rejects. Thread-safe. */
RESIL_API resil_status resil_redis_command(resil_redis *r, resil_deadline deadline,
                                           unsigned flags, redisReply **reply, resil_err *err,
                                           const char *fmt, ...);

/* As resil_redis_command() with a va_list. Thread-safe. */
RESIL_API resil_status resil_redis_vcommand(resil_redis *r, resil_deadline deadline,
                                            unsigned flags, redisReply **reply,
                                            resil_err *err, const char *fmt, va_list ap);

/* Run one command given as argc arguments, argv[i] of argvlen[i] bytes
 * (binary-safe: NULs allowed; argvlen NULL means strlen of each). Same
 * statuses and reply ownership as resil_redis_command(). argc must be >= 1.
 * Thread-safe. */
RESIL_API resil_status resil_redis_command_argv(resil_redis *r, resil_deadline deadline,
                                                unsigned flags, int argc, const char **argv,
                                                const size_t *argvlen, redisReply **reply,
                                                resil_err *err);

/* One command of a pipeline. argvlen NULL means strlen of each argument. */
typedef struct resil_redis_cmd {
  int argc;
  const char **argv;
  const size_t *argvlen;
} resil_redis_cmd;

/* Send n commands (1..100000) in one write on ONE connection and read their n
 * replies, all under one deadline (one admission, one attempt of the
 * dependency; RESIL_CALL_IDEMPOTENT retries the whole pipeline). On return
 * replies[0..n-1] hold the replies (caller frees each) when the server
 * answered them all, else all are NULL. The status is RESIL_OK if no reply
 * is an error reply; otherwise the status of the first error reply that
 * counts as a failure (RESIL_E_FAILURE / RESIL_E_OVERLOAD) if any, else
 * RESIL_E_CALLER (inspect each reply). Transport errors and timeouts return
 * as for a single command, with every replies[i] NULL. Not a transaction:
 * wrap in MULTI/EXEC for atomicity. Thread-safe. */
RESIL_API resil_status resil_redis_pipeline(resil_redis *r, resil_deadline deadline,
                                            unsigned flags, size_t n,
                                            const resil_redis_cmd *cmds, redisReply **replies,
                                            resil_err *err);

/* How the adapter counts a reply: RESIL_OK for a non-error reply,
 * RESIL_E_FAILURE / RESIL_E_OVERLOAD / RESIL_E_CALLER for an error reply by
 * its first word (see above), RESIL_E_INVALID for NULL. Thread-safe. */
RESIL_API resil_status resil_redis_classify_reply(const redisReply *reply);

typedef struct resil_redis_stats {
  uint64_t failovers;        /* failover signs that evicted the pool */
  uint64_t read_only;        /* READONLY replies */
  uint64_t replays;          /* READONLY-refused commands sent again at once */
  uint64_t auth_failures;    /* AUTH refused */
  uint64_t password_changes; /* password_file re-reads that found a new password */
  uint64_t password_errors;  /* password_file checks that failed (old one kept) */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[208];
} resil_redis_stats;

/* Counters of the adapter's own work (call outcomes are in the dependency's
 * stats). Thread-safe. */
RESIL_API void resil_redis_get_stats(const resil_redis *r, resil_redis_stats *out);

RESIL_END_DECLS
#endif
