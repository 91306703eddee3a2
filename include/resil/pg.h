/* resil-pg: PostgreSQL (libpq) through a resil dependency.
 *
 *   resil_pg_config cfg;
 *   resil_pg_config_init(&cfg, "orders-db");
 *   cfg.conninfo = "host=orders.cluster-xyz.rds.amazonaws.com dbname=orders "
 *                  "user=app sslmode=verify-full";
 *   resil_pg *pg = resil_pg_new(&cfg, &err);
 *   PGresult *res = NULL;
 *   const char *params[] = {"42"};
 *   st = resil_pg_query(pg, resil_deadline_in_ms(300), RESIL_CALL_IDEMPOTENT,
 *                       "SELECT total FROM orders WHERE id = $1", 1, params, &res, &err);
 *   if (st == RESIL_OK) ... resil_pg_value(res, 0, 0) ...
 *   PQclear(res);
 *
 * Every call goes through the dependency (breaker, concurrency limit,
 * retries for RESIL_CALL_IDEMPOTENT work, metrics) and a bounded pool of
 * libpq connections attached to it. Nothing blocks past the call's
 * deadline:
 *
 *   - Connecting: the host name is resolved by resil_resolve() under the
 *     connect bound and passed to libpq as `hostaddr` (`host` is kept, so
 *     sslmode=verify-full still checks the certificate against the name);
 *     PQconnectStartParams/PQconnectPoll are driven by poll() until
 *     min(connect_timeout_ms, the deadline). Unix-socket hosts (starting
 *     with '/' or '@') and an explicit `hostaddr` skip resolution. A
 *     conninfo without `host` lets libpq pick its default (PGHOST or the
 *     local socket), which is not resolved by resil: always set `host`.
 *   - Querying: PQsendQueryParams on a non-blocking connection, then
 *     poll() + PQconsumeInput until the result is in or the deadline
 *     (bounded also by query_timeout_ms) passes. At the deadline the call
 *     returns RESIL_E_TIMEOUT at once; the connection is handed to a
 *     background reaper thread, which sends a cancel request (PQcancel,
 *     which blocks, bounded by cancel_timeout_ms - see below) and closes the
 *     connection. A timed-out connection is never reused.
 *   - Borrowing: before a statement is sent, one poll() (no round trip)
 *     checks the idle socket; a connection the server has closed (restart,
 *     fast failover, idle timeout) is dropped and another taken, so no
 *     caller pays for it. A peer gone silent is only noticed by the pool's
 *     validation (pool.validate_after_idle_ms: an empty query under
 *     pool.validate_timeout_ms), by tcp_user_timeout/keepalives, or by the
 *     deadline.
 *   - Returning connections: a connection goes back to the pool only when
 *     PQtransactionStatus() is PQTRANS_IDLE. A connection left inside a
 *     transaction (a "BEGIN" sent through resil_pg_query(), an unfinished
 *     resil_pg_tx) is rolled back within min(the deadline, now +
 *     rollback_timeout_ms), or closed if that fails or no time is left:
 *     the next caller never inherits an open transaction.
 *
 * Outcomes, by SQLSTATE (what the breaker sees):
 *   RESIL_OK            the statement succeeded;
 *   RESIL_E_FAILURE     class 08 (connection exception), 57P01/57P02/57P03
 *                       (shutdown, crash, cannot connect now), 25006
 *                       (read_only_sql_transaction: after an Aurora/RDS
 *                       failover the old writer answers writes so; the
 *                       connection is closed, see Failover), class 58
 *                       (system error) and XX (internal error), connect
 *                       failures (refused, auth failed, 53300
 *                       too_many_connections at start-up) and every
 *                       connection-level error (socket closed, protocol
 *                       error): the connection is closed;
 *   RESIL_E_OVERLOAD    other class 53 errors during a query (out of memory,
 *                       disk full);
 *   RESIL_E_TIMEOUT     our deadline passed while working with the server
 *                       - resolving, connecting, TLS, authentication and
 *                       start-up, validating an idle connection, or the
 *                       statement (then cancelled) - including a connect or
 *                       validation that left no time to send the statement;
 *                       or the server cancelled it (57014, e.g.
 *                       statement_timeout);
 *   RESIL_E_CALLER      a result larger than max_result_bytes (see the
 *                       config: the statement is cancelled, the connection
 *                       closed, no result handed back, not retried), and
 *                       everything else the server rejected: classes 22
 *                       (data), 23 (constraint), 42 (syntax/access) and any
 *                       other SQLSTATE. Never a breaker failure. The
 *                       message is "<name>: query: ERROR <SQLSTATE> <text>"
 *                       and the error PGresult is handed back so the caller
 *                       can read PQresultErrorField(). 40001
 *                       (serialization_failure) and 40P01 (deadlock) are
 *                       RESIL_E_CALLER too but are retried when the call is
 *                       RESIL_CALL_IDEMPOTENT;
 *   local rejections    RESIL_E_BREAKER_OPEN, RESIL_E_CONCURRENCY_FULL,
 *                       RESIL_E_QUEUE_TIMEOUT, RESIL_E_POOL_TIMEOUT,
 *                       RESIL_E_DEADLINE, RESIL_E_DRAINING, RESIL_E_CLOSED:
 *                       no statement was sent (RESIL_E_DEADLINE: the time
 *                       went before any work with the server began, e.g.
 *                       waiting for a pooled connection);
 *   RESIL_E_SYSTEM      libpq "could not create socket" (EMFILE, ENFILE...)
 *                       or a name lookup that could not run for lack of
 *                       fds: a local limit, never counted by the breaker.
 *
 * Failover. These signs mean the endpoint moved (a failover, a demotion, a
 * restart): 25006 on a statement; 57P01/57P02 or the connection lost
 * mid-call; an idle connection found closed by the server when borrowed
 * or validated; and, once this dependency has connected successfully, a
 * connect refused, reset, or answered 57P01/57P03. On any of them: the
 * connection is closed; every host name of the conninfo is resolved afresh
 * at the next connect (resil_resolve_invalidate: the cached answer is
 * dropped whatever its TTL, so a cluster endpoint that moved by DNS is
 * followed at once); and the pool's generation is evicted
 * (resil_pool_evict): idle connections close at once, borrowed ones when
 * they come back, so one sign, not one failed call per pooled connection,
 * ends the use of the old server. Many calls seeing the same failover
 * evict once. A plain query (resil_pg_query*, not a transaction) refused
 * with 25006 was not executed: it is sent again at once, once, on a fresh
 * connection within the same attempt, so when DNS already points at the
 * new writer the caller sees no error and the breaker one success. Counted
 * in resil_pg_stats (failovers, read_only, replays). Breaker: each failed
 * call during the switch counts once; with the defaults (5 consecutive
 * failures, or 50 % of at least 20 calls in 10 s) the few calls in flight
 * at the moment of a failover that heals within a second do not open it.
 *
 * Transaction-pooling proxies (pgbouncer pool_mode=transaction, RDS Proxy):
 * each resil_pg_query() may run on a different server session, so nothing
 * set by one call (SET, temporary tables, advisory locks, LISTEN, named
 * prepared statements) can be relied on by the next. resil_pg_query() uses
 * the unnamed statement (Parse/Bind/Execute in one round trip, like
 * PQexecParams), which works through such proxies; named prepared
 * statements (resil_pg_query_prepared) do not, and are for direct
 * connections only. To keep session state, hold one connection with the
 * transaction helper (resil_pg_tx_*), which keeps the same server session
 * from BEGIN to COMMIT/ROLLBACK even through a transaction pooler.
 * pgbouncer (1.18 as tested) refuses the `options` start-up parameter that
 * the statement_timeout option uses ("unsupported startup parameter:
 * options", a connect failure), or silently drops it if listed in its
 * ignore_startup_parameters: set statement_timeout = false there and set
 * the timeout on the role instead (ALTER ROLE app SET statement_timeout =
 * '5s').
 *
 * Cancellation caveat: libpq 15's PQcancel() has no timeout (it connects,
 * sends the request and waits for the server to close). The reaper runs it
 * on a short-lived helper thread and waits at most cancel_timeout_ms; a
 * cancel still blocked then (e.g. the server is SIGSTOPped or blackholed) is
 * abandoned on that detached thread, which exits when the request finally
 * completes or fails. At most RESIL_PG_MAX_STUCK_CANCELS cancel threads
 * exist per process; past that, and when the reaper's queue is full, the
 * connection is closed without a cancel request (set the server's
 * client_connection_check_interval so it notices the closed socket).
 *
 * fork(): see resil/pool.h. A child uses its own connections; the parent's
 * are freed without a Terminate message (their socket is pointed at
 * /dev/null first). The reaper thread does not exist in a child: there a
 * statement still running at its deadline is closed without a cancel
 * request, and resil_pg_free() does not wait for the parent's reaper.
 *
 * Thread safety: a resil_pg is used by any number of threads at once; a
 * resil_pg_tx belongs to one thread at a time.
 */
#ifndef RESIL_PG_H
#define RESIL_PG_H

#include <libpq-fe.h>

#include "resil/resil.h"
#include "resil/credentials.h"

RESIL_BEGIN_DECLS

/* Process-wide cap on cancel helper threads alive at once, including
 * those still blocked past cancel_timeout_ms (see the caveat above). */
#define RESIL_PG_MAX_STUCK_CANCELS 8

typedef struct resil_pg_config {
  /* The dependency: name (required), timeout_ms (cap on each attempt,
   * default 1000), breaker, limit and retry policy. */
  resil_dep_config dep;
  /* The connection pool. pool.name defaults to dep.name and
   * pool.connect_timeout_ms is replaced by connect_timeout_ms below. */
  resil_pool_config pool;
  /* Required: a key=value string or a postgresql:// URL. Parsed with
   * PQconninfoParse(); TLS settings (sslmode, sslrootcert, ...) are passed
   * to libpq untouched. Copied. */
  const char *conninfo;
  uint32_t connect_timeout_ms;  /* default 1000: bound on one connect; 1..600000 */
  uint32_t query_timeout_ms;    /* default 5000: bound on one statement's I/O,
                                   besides the call's deadline; 1..86400000 */
  /* Default NULL: the dependency's name, unless the conninfo sets one.
   * At most 63 bytes. Copied. */
  const char *application_name;
  /* Default true: start sessions with statement_timeout = query_timeout_ms
   * (via the `options` start-up parameter, appended to any the conninfo
   * gives), a second line of defence should a cancel be lost. Turn off
   * behind pgbouncer (see above). Ignored if the conninfo's options already
   * set statement_timeout. */
  bool statement_timeout;
  /* TCP settings applied unless the conninfo sets them: during an RDS
   * failover the old socket goes silent and only these notice.
   * tcp_user_timeout_ms default 10000 (0: leave the kernel's); keepalives
   * default true with idle 30 s, interval 10 s, count 3 (false: resil sets
   * none of the keepalive keywords and libpq's defaults apply - keepalives
   * on with the kernel's timings). Each applies unless the conninfo sets
   * that keyword. Note: libpq 15 applies tcp_user_timeout only while
   * keepalives are on, so keepalives=0 in the conninfo turns both off. */
  uint32_t tcp_user_timeout_ms;
  bool keepalives;
  uint32_t keepalives_idle_s;     /* 1..86400 */
  uint32_t keepalives_interval_s; /* 1..86400 */
  uint32_t keepalives_count;      /* 1..100 */
  /* How long the reaper waits for one cancel request; default 2000,
   * 1..60000. */
  uint32_t cancel_timeout_ms;
  /* Connections waiting for the reaper; default 64, 1..100000. When full, a
   * timed-out connection is closed at once without a cancel request. */
  uint32_t reaper_queue_max;
  /* Bound on the ROLLBACK sent to a connection returned inside a
   * transaction; default 500, 1..60000. */
  uint32_t rollback_timeout_ms;
  /* A borrowed connection is checked for a server-side close (one poll())
   * unless it was returned less than this long ago; default 500 (HikariCP's
   * aliveBypassWindowMs), 0 = always check, ..60000. A connection killed in
   * that window fails its call as a dependency failure (retried if
   * idempotent) instead of being skipped. */
  uint32_t alive_bypass_ms;
  /* Default RESIL_PG_DEFAULT_MAX_RESULT_BYTES (64 MiB); 1 KiB..4 GiB. The
   * most bytes one statement's results may bring from the server (protocol
   * bytes as received, checked after every read from the socket; the
   * PGresult built from them is about as large for wide values, up to ~2-3x
   * for many narrow rows). A larger result is RESIL_E_CALLER (the message
   * names max_result_bytes; the statement is cancelled and the connection
   * closed, never reused mid-result; not retried): libpq would otherwise
   * buffer all of it, whatever the deadline. Overshoot: one read, which is
   * small for ordinary rows but can be one whole row when a single value is
   * larger than the bound (libpq reads a DataRow into one buffer). Enforced
   * on TCP connections (Linux's byte counters); a Unix-socket connection is
   * bounded by the deadline only. */
  size_t max_result_bytes;
  /* The recovery probe's statement (see resil_dep_set_probe(): while the
   * breaker is open, a FRESH connection is made and this is run on it
   * through the simple protocol, all within dep.probe_timeout_ms); default
   * "SELECT 1"; copied; must not be empty. */
  const char *probe_sql;
  /* Rotating passwords (resil/credentials.h); at most one of the two, and
   * then the conninfo must hold no password. password_file: a file whose
   * first line is the password, read at start (missing, unreadable or
   * empty: a configuration error naming the file), checked again (one
   * stat()) at most every password_file_check_ms (default 2000, 100..3600000)
   * before new connections and at once when the server refuses the password
   * (28P01); a changed file is read again, and a connect refused with
   * 28P01 is retried once at once when the password changed. A file that
   * vanished later keeps the last good password (counted in
   * resil_pg_stats.password_errors). Copied. password_cb(password_ctx,
   * flags, buf, size): called for each new connection, e.g. an RDS IAM
   * token generator (see resil_password_fn). Connections already open are
   * kept. Default NULL. */
  const char *password_file;
  uint32_t password_file_check_ms;
  resil_password_fn password_cb;
  void *password_ctx;
  /* Several addresses behind this dependency (resil/endpoint.h), e.g. the
   * instances behind an Aurora reader endpoint: "h1:p1,h2:p2" (at most
   * RESIL_ENDPOINTS_MAX; an entry without a port uses 5432). When set, each
   * connect goes to one of them, with host, hostaddr and port of the
   * conninfo replaced by that address (the conninfo's other settings,
   * dbname, user, sslmode..., apply to all); each address gets its own pool
   * (pool.max_size bounds them all together), calls are spread over them
   * (power of two choices, least outstanding) and an address that keeps
   * failing is ejected by outlier detection (below). Default NULL: the
   * conninfo's hosts, tried in turn by libpq. Copied. */
  const char *hosts;
  resil_outlier_config outlier; /* with hosts or endpoints_from_dns; init()'s defaults */
  /* Every address the conninfo's host resolves to is an address of its
   * own, as with hosts (its pool, outlier ejection, calls spread), and the
   * set follows DNS: re-resolved when the resolver's cached answer expires
   * and at once on a failover sign; see "Endpoints from DNS" in
   * resil/endpoint.h. For an Aurora reader endpoint. The conninfo must name
   * one TCP host (no list, no hostaddr, no socket directory) and at most
   * one port (default 5432); each connect sets hostaddr to the address and
   * keeps host as the name (TLS verification). Default false: the host's
   * addresses are tried in order, as one endpoint. Not with hosts (a
   * config error). */
  bool endpoints_from_dns;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[191];
} resil_pg_config;

#define RESIL_PG_DEFAULT_MAX_RESULT_BYTES ((size_t)64 << 20)
#define RESIL_PG_MIN_MAX_RESULT_BYTES ((size_t)1 << 10)
#define RESIL_PG_MAX_MAX_RESULT_BYTES ((size_t)4 << 30)

/* Fill cfg with the defaults above, name the dependency (name may be NULL:
 * set cfg->dep.name later) and leave conninfo NULL. Call first, then change
 * what you need. Thread-safe. */
RESIL_API void resil_pg_config_init(resil_pg_config *cfg, const char *name);

/* Check every field (the dependency's, the pool's and the adapter's) and
 * report all problems at once in err->msg, each named by its field
 * ("orders-db: query_timeout_ms: 0 is outside 1..86400000"). A conninfo
 * libpq cannot parse is reported with libpq's message, with any quoted
 * fragment that is not a keyword replaced by "***" so a password never
 * reaches a log. RESIL_OK, RESIL_E_INVALID or RESIL_E_NOMEM. Thread-safe. */
RESIL_API resil_status resil_pg_config_validate(const resil_pg_config *cfg, resil_err *err);

/* The most memory a client with this config can hold at once, in bytes,
 * for sizing a task: the dependency object (resil_dep_config_memory_bound())
 * + pool.max_size x 256 KiB (PGconn, libpq buffers, TLS) +
 * min(pool.max_size, limit.max_concurrent) x 4 x max_result_bytes (libpq's
 * input buffer and the PGresult built from it). Results the caller keeps
 * after a call are the caller's. resil-config prints it. Thread-safe,
 * pure. */
RESIL_API uint64_t resil_pg_config_memory_bound(const resil_pg_config *cfg);

typedef struct resil_pg resil_pg;

/* Validate cfg, create the dependency (registered under dep.name), the pool
 * (attached to the dependency) and the reaper thread. Opens no connection:
 * call resil_pool_prewarm(resil_pg_pool(pg), ...) to pre-warm pool.min_idle.
 * Errors: RESIL_E_INVALID, RESIL_E_NOMEM, RESIL_E_SYSTEM. Thread-safe. */
RESIL_API resil_pg *resil_pg_new(const resil_pg_config *cfg, resil_err *err);

/* Close every pooled connection, let the reaper finish (cancel requests
 * then get one shared cancel_timeout_ms in all), join it, and free the
 * pool and the dependency. No call or transaction may be in progress.
 * NULL is a no-op. */
RESIL_API void resil_pg_free(resil_pg *pg);

/* The dependency (for stats, draining, the breaker) and the pool. Valid
 * until resil_pg_free(). Thread-safe. */
RESIL_API resil_dep *resil_pg_dep(resil_pg *pg);
RESIL_API resil_pool *resil_pg_pool(resil_pg *pg);

/* The "pg" configuration kind (config.h), so that RESIL_DEPS=name:pg with
 * RESIL_DEP_<NAME>_CONNINFO (a secret: redacted in dumps, not in the config
 * hash), _CONNECT_TIMEOUT_MS, _QUERY_TIMEOUT_MS, _APPLICATION_NAME,
 * _STATEMENT_TIMEOUT, _TCP_USER_TIMEOUT_MS, _KEEPALIVES, _KEEPALIVES_IDLE_S,
 * _KEEPALIVES_INTERVAL_S, _KEEPALIVES_COUNT, _CANCEL_TIMEOUT_MS,
 * _REAPER_QUEUE_MAX, _ROLLBACK_TIMEOUT_MS, _ALIVE_BYPASS_MS,
 * _MAX_RESULT_BYTES, _PROBE_SQL, _PASSWORD_FILE, _PASSWORD_FILE_CHECK_MS (plus the
 * core's and the pool's
 * keys) configure a resil_pg and resil_service builds it. Registered
 * automatically when libresil-pg is loaded, also in a static link of a
 * program that calls any resil_pg_* function; a program that only names the
 * kind in RESIL_DEPS calls resil_pg_register_kind() first. Thread-safe. */
RESIL_API const struct resil_config_kind *resil_pg_config_kind(void);
RESIL_API resil_status resil_pg_register_kind(resil_err *err);

/* ---- Queries ----------------------------------------------------------- */

/* A statement with its parameters, for resil_pg_query_ex(). Fields as for
 * PQsendQueryParams(): types, lengths and formats may be NULL (all text);
 * result_format 0 asks for text results, 1 for binary. */
typedef struct resil_pg_query_args {
  const char *sql; /* one statement; $1, $2... for parameters */
  int nparams;
  const Oid *types;
  const char *const *values; /* NULL entry = SQL NULL */
  const int *lengths;        /* byte lengths of binary parameters */
  const int *formats;        /* 0 text, 1 binary, per parameter */
  int result_format;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[44];
} resil_pg_query_args;

/* Run one statement with text parameters (values[i] NULL = SQL NULL) and
 * text results, under deadline (RESIL_DEADLINE_UNSET: the dependency's
 * timeout_ms) and flags (RESIL_CALL_IDEMPOTENT allows retries). On
 * RESIL_OK *res is the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK). When
 * the server rejected the statement (RESIL_E_CALLER, RESIL_E_OVERLOAD, or
 * RESIL_E_TIMEOUT from 57014) *res is the error result, so
 * PQresultErrorField() can be read. Otherwise *res is NULL. The caller
 * always owns *res: PQclear() it (PQclear(NULL) is harmless). res may be
 * NULL to discard the result. See the top of this file for the statuses.
 * Thread-safe. */
RESIL_API resil_status resil_pg_query(resil_pg *pg, resil_deadline deadline, unsigned flags,
                                      const char *sql, int nparams,
                                      const char *const *values, PGresult **res,
                                      resil_err *err);

/* resil_pg_query() with typed, binary or binary-result parameters. */
RESIL_API resil_status resil_pg_query_ex(resil_pg *pg, resil_deadline deadline, unsigned flags,
                                         const resil_pg_query_args *q, PGresult **res,
                                         resil_err *err);

/* Run a named prepared statement: q->sql is prepared as `name` (with
 * q->types) on each pooled connection the first time it runs there - one
 * extra round trip - and remembered for that connection; then executed
 * with q's parameters. The same name must always come with the same sql.
 * Saves the server's parse and plan work for hot statements on direct
 * connections. Do NOT use it through a transaction-pooling proxy
 * (pgbouncer in transaction mode before 1.21, RDS Proxy): the statement
 * lives in one server session and the next call may land on another,
 * failing with 26000 (the name is then forgotten for that connection, so a
 * retry prepares it again). Statuses and *res as for resil_pg_query().
 * Thread-safe. */
RESIL_API resil_status resil_pg_query_prepared(resil_pg *pg, resil_deadline deadline,
                                               unsigned flags, const char *name,
                                               const resil_pg_query_args *q, PGresult **res,
                                               resil_err *err);

/* ---- Transactions ------------------------------------------------------ */

/* One connection held from BEGIN to COMMIT or ROLLBACK, under one deadline.
 * It is one call for the dependency: one permit, one outcome, no retry. */
typedef struct resil_pg_tx resil_pg_tx;

/* Admit a call, borrow a connection and send begin_sql (NULL: "BEGIN"; e.g.
 * "BEGIN ISOLATION LEVEL SERIALIZABLE"). The whole transaction must end by
 * deadline (bounded by the dependency's timeout_ms). On RESIL_OK *tx must
 * be ended by exactly one resil_pg_tx_commit() or resil_pg_tx_rollback().
 * Otherwise *tx is NULL and the status is a rejection or failure as for
 * resil_pg_query(). Thread-safe. */
RESIL_API resil_status resil_pg_tx_begin(resil_pg *pg, resil_deadline deadline,
                                         const char *begin_sql, resil_pg_tx **tx,
                                         resil_err *err);

/* Run one statement inside the transaction; parameters, results and
 * statuses as for resil_pg_query(). After any error the transaction is
 * failed: later statements return RESIL_E_CALLER without being sent, and
 * only resil_pg_tx_rollback() (or a commit, which then rolls back) remains.
 * Not thread-safe for the same tx. */
RESIL_API resil_status resil_pg_tx_query(resil_pg_tx *tx, const char *sql, int nparams,
                                         const char *const *values, PGresult **res,
                                         resil_err *err);

/* resil_pg_tx_query() with resil_pg_query_args. */
RESIL_API resil_status resil_pg_tx_query_ex(resil_pg_tx *tx, const resil_pg_query_args *q,
                                            PGresult **res, resil_err *err);

/* The connection's backend process id (PQbackendPID), or 0 if it is gone.
 * Behind a transaction pooler this is the pooler's id, not the server's. */
RESIL_API int resil_pg_tx_backend_pid(const resil_pg_tx *tx);

/* The transaction's libpq connection, for what resil does not wrap (e.g.
 * reading socket options, PQescapeLiteral). It is non-blocking and owned by
 * resil: do not send statements on it, change its blocking mode, close it,
 * or keep it past the end of the transaction. NULL once the connection was
 * lost or abandoned. */
RESIL_API PGconn *resil_pg_tx_conn(resil_pg_tx *tx);

/* COMMIT and end the transaction; tx is freed in every case. RESIL_OK if
 * the transaction committed. A transaction failed earlier is rolled back
 * instead and RESIL_E_CALLER is returned (or the earlier failure's status);
 * 40001 at commit is RESIL_E_CALLER. The connection goes back to the pool
 * only if it is idle and healthy. NULL tx: RESIL_E_INVALID. */
RESIL_API resil_status resil_pg_tx_commit(resil_pg_tx *tx, resil_err *err);

/* ROLLBACK and end the transaction; tx is freed in every case. Returns the
 * transaction's outcome as recorded for the dependency: RESIL_OK when
 * nothing had failed, else the first error's status. A connection whose
 * rollback fails or times out is closed (the server then rolls back). NULL
 * tx: RESIL_E_INVALID. */
RESIL_API resil_status resil_pg_tx_rollback(resil_pg_tx *tx, resil_err *err);

/* The transaction body for resil_pg_transact(): run statements with
 * resil_pg_tx_query() and return RESIL_OK to commit, anything else to roll
 * back. Do not commit or roll back tx yourself. */
typedef resil_status (*resil_pg_tx_fn)(void *ctx, resil_pg_tx *tx);

/* Run fn inside BEGIN (begin_sql, NULL for "BEGIN") ... COMMIT through
 * resil_dep_call(): with RESIL_CALL_IDEMPOTENT in flags the whole
 * transaction is retried (fn called again) on failures and timeouts, and on
 * 40001/40P01, within the retry policy and the deadline. Returns the last
 * attempt's outcome. Thread-safe. */
RESIL_API resil_status resil_pg_transact(resil_pg *pg, resil_deadline deadline, unsigned flags,
                                         const char *begin_sql, resil_pg_tx_fn fn, void *ctx,
                                         resil_err *err);

/* ---- Results and classification --------------------------------------- */

/* The text of row, col, or NULL for SQL NULL, a NULL res or out-of-range
 * indices. Valid until PQclear(res). */
RESIL_API const char *resil_pg_value(const PGresult *res, int row, int col);

/* Parse row, col as a base-10 int64 (text results). RESIL_E_INVALID (with
 * a message) for NULL, out-of-range indices, or text that is not exactly an
 * integer in range. */
RESIL_API resil_status resil_pg_int64(const PGresult *res, int row, int col, int64_t *out,
                                      resil_err *err);

/* The SQLSTATE of an error result ("42601"), or NULL. */
RESIL_API const char *resil_pg_sqlstate(const PGresult *res);

/* How resil classifies a SQLSTATE (see the top of this file); *retryable
 * (may be NULL) is set for 40001 and 40P01. NULL or malformed sqlstate:
 * RESIL_E_FAILURE. Thread-safe. */
RESIL_API resil_status resil_pg_classify_sqlstate(const char *sqlstate, bool *retryable);

/* ---- Statistics -------------------------------------------------------- */

typedef struct resil_pg_stats {
  uint64_t connects_ok;        /* connections opened */
  uint64_t connects_failed;    /* refused, auth, start-up errors */
  uint64_t connects_timed_out; /* connect deadline hit */
  uint64_t timeouts;           /* statements abandoned at the deadline */
  uint64_t reaped;             /* connections closed by the reaper */
  uint64_t cancels_sent;       /* cancel requests that completed */
  uint64_t cancels_failed;     /* PQcancel() reported an error */
  uint64_t cancels_abandoned;  /* still blocked after cancel_timeout_ms */
  uint64_t cancels_skipped;    /* queue full, too many stuck, or shutdown */
  uint64_t rollbacks;          /* connections rolled back before reuse */
  uint64_t broken;             /* connections closed after an error */
  uint64_t failovers;          /* failover signs that evicted the pool (see above) */
  uint64_t read_only;          /* statements refused with 25006 */
  uint64_t replays;            /* 25006-refused statements sent again at once */
  uint64_t auth_failures;      /* connects refused with 28P01 */
  uint64_t password_changes;   /* password_file re-reads that found a new password */
  uint64_t password_errors;    /* password_file checks that failed (old one kept) */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[120];
} resil_pg_stats;

/* Counters of the adapter's own work (call outcomes are in the
 * dependency's stats). Thread-safe. */
RESIL_API void resil_pg_get_stats(const resil_pg *pg, resil_pg_stats *out);

RESIL_END_DECLS
#endif
