/* resil: a generic bounded connection pool driven by connector callbacks.
 *
 * Every adapter (Redis, PostgreSQL, HTTP) keeps its driver handles in one of
 * these. The pool never holds its lock across connect, validate, close or
 * any I/O. Waiters queue FIFO, bounded in number and in time (the earlier
 * of the acquire deadline and acquire_timeout_ms); a waiter is served when a
 * connection comes back or a slot frees.
 *
 * A connection handed back with RESIL_POOL_BROKEN (it timed out, errored
 * mid-call, or its protocol state is unknown) is closed, never lent again,
 * and its slot is freed for a new connect.
 *
 * Thread safety: all functions are thread-safe unless stated.
 *
 * fork(). A pool may be used in both the parent and a child of fork() (no
 * exec). The parent is unaffected: its connections, counts and housekeeper
 * stay as they were. The child never uses a connection opened before the
 * fork, as its session is shared with the parent (both would read each
 * other's replies); it starts with no connection, nothing in use, no waiter,
 * and opens its own connections on demand, up to max_size. The parent's
 * connections are abandoned in the child - freed through the connector's
 * `abandon` callback, which does no I/O on them, so no QUIT, Terminate or
 * TLS close_notify reaches the parent's sessions: the idle ones on the
 * child's first resil_pool_acquire(), resil_pool_prewarm() or
 * resil_pool_drain(), and one the forking thread had borrowed when it is
 * released in the child (it counts nowhere in the child; do not use it
 * there: its replies may go to the parent). Connections other threads had
 * borrowed or were opening stay allocated in the child (those threads do
 * not exist there). The housekeeper thread, if configured, is restarted by
 * the child's first acquire or prewarm. fork() waits until no other thread
 * is inside a pool's (or a dependency's) short critical section; detection
 * uses pthread_atfork(), so a raw clone() or syscall(SYS_fork) is not seen.
 */
#ifndef RESIL_POOL_H
#define RESIL_POOL_H

#include "resil/deadline.h"
#include "resil/metrics.h"

RESIL_BEGIN_DECLS

/* What the pool calls to make, check and close driver connections. Each
 * callback is invoked without any pool lock held, possibly from several
 * threads at once. */
typedef struct resil_pool_connector {
  /* Open a connection, never blocking past deadline. On success store the
   * driver handle in *conn and return RESIL_OK. On failure return, with err
   * filled:
   *   RESIL_E_TIMEOUT  the deadline ran out during DNS, connect, TLS or the
   *                    handshake (AUTH, SELECT, start-up): a dependency
   *                    failure;
   *   RESIL_E_FAILURE  refused, reset, auth failed...: a dependency failure;
   *   RESIL_E_SYSTEM   a local resource ran out (socket() failed with
   *                    EMFILE, ENFILE, ENOBUFS or ENOMEM...) or
   *   RESIL_E_NOMEM    out of memory: local errors, passed through as they
   *                    are, never counted as a dependency failure nor in
   *                    connects_failed.
   * Any other status is taken as RESIL_E_FAILURE. Required. */
  resil_status (*connect)(void *ctx, resil_deadline deadline, void **conn, resil_err *err);
  /* Cheap liveness check of an idle connection (e.g. PING), bounded by
   * deadline. Return true if usable. Optional (NULL: always usable). */
  bool (*validate)(void *ctx, void *conn, resil_deadline deadline);
  /* Close and free a connection. Must not block for long. Required. */
  void (*close)(void *ctx, void *conn);
  void *ctx;
  /* Free a connection inherited from the parent in a child of fork(),
   * without any I/O on its session (no goodbye message, no TLS shutdown,
   * no read: the parent still uses it; closing the child's copy of the
   * socket descriptor is fine). Called with no pool lock held, in the child
   * only. Optional: NULL leaves an inherited connection allocated and its
   * descriptor open in the child, since close() might end the parent's
   * session. */
  void (*abandon)(void *ctx, void *conn);
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[56];
} resil_pool_connector;

typedef struct resil_pool_config {
  const char *name;              /* copied; used in errors and metrics */
  uint32_t max_size;             /* default 10; 1..10000 */
  uint32_t min_idle;             /* default 0; <= max_size: kept open and pre-warmed */
  uint32_t max_waiters;          /* default 64: callers queued for a connection */
  uint32_t acquire_timeout_ms;   /* default 1000: longest wait in the queue */
  uint32_t connect_timeout_ms;   /* default 1000: bound on one connect */
  uint32_t max_lifetime_ms;      /* default 1800000 (30 min); 0 = no limit */
  uint32_t lifetime_jitter_percent; /* default 10: lifetime shortened by up to this */
  uint32_t idle_timeout_ms;      /* default 600000 (10 min); 0 = keep idle ones;
                                    never closes the last min_idle idle ones */
  uint32_t validate_after_idle_ms; /* default 5000: validate on borrow if idle longer; 0 = always */
  uint32_t validate_timeout_ms;  /* default 500 */
  uint32_t housekeeping_ms;      /* default 1000: background thread period for
                                    eviction and min_idle refill; 0 = no thread
                                    (eviction happens on acquire/release only) */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[76];
} resil_pool_config;

/* Fill cfg with the defaults above. Call first, then set fields. */
RESIL_API void resil_pool_config_init(resil_pool_config *cfg);

/* Check every field, reporting all problems at once (field names prefixed
 * by prefix, which may be NULL). RESIL_OK or RESIL_E_INVALID. */
RESIL_API resil_status resil_pool_config_validate(const resil_pool_config *cfg,
                                                  const char *prefix, resil_err *err);

typedef struct resil_pool resil_pool;
typedef struct resil_pool_conn resil_pool_conn;

/* Create a pool. Opens nothing: call resil_pool_prewarm() for min_idle.
 * Errors: RESIL_E_INVALID (config or connector), RESIL_E_NOMEM,
 * RESIL_E_SYSTEM (thread creation). */
RESIL_API resil_pool *resil_pool_new(const resil_pool_config *cfg,
                                     const resil_pool_connector *connector, resil_err *err);

/* Open connections until min_idle are idle, or until deadline. Returns
 * RESIL_OK when min_idle are open, else the last connect error
 * (RESIL_E_TIMEOUT when the deadline ran out). */
RESIL_API resil_status resil_pool_prewarm(resil_pool *p, resil_deadline deadline, resil_err *err);

/* Borrow a connection, waiting no longer than the earlier of deadline and
 * acquire_timeout_ms. An idle connection past its lifetime or idle timeout is
 * closed and skipped; one idle longer than validate_after_idle_ms is
 * validated first (a failed check closes it and tries the next). With no idle
 * connection and a free slot, connects (bounded by connect_timeout_ms and the
 * deadline).
 *
 * Whose time ran out: waiting (for a free connection or slot) is local;
 * connecting and validating are work against the dependency. So the
 * deadline running out before this acquire did any I/O is a local
 * rejection (RESIL_E_DEADLINE, RESIL_E_POOL_TIMEOUT), and after it connected
 * or validated it is RESIL_E_TIMEOUT, a dependency failure. A caller that
 * gets RESIL_OK and then finds the deadline passed before its own first
 * byte asks resil_pool_conn_did_io() which of the two it is. Returns:
 *   RESIL_OK            *out is yours until resil_pool_release();
 *   RESIL_E_POOL_TIMEOUT no connection in time, the waiter queue is full, or
 *                        the deadline passed before any connect or
 *                        validation (local rejection: not a dependency
 *                        failure);
 *   RESIL_E_DEADLINE     the deadline had passed on entry;
 *   RESIL_E_TIMEOUT      the connect timed out, or the deadline passed after
 *                        this acquire validated a connection (e.g. a slow
 *                        check failed and no time was left for another);
 *   RESIL_E_FAILURE      connect failed (dependency failure);
 *   RESIL_E_SYSTEM / RESIL_E_NOMEM  the connector hit a local resource
 *                        limit (not a dependency failure);
 *   RESIL_E_CLOSED       the pool is draining or closed. */
RESIL_API resil_status resil_pool_acquire(resil_pool *p, resil_deadline deadline,
                                          resil_pool_conn **out, resil_err *err);

/* The driver handle of a borrowed connection. */
RESIL_API void *resil_pool_conn_handle(const resil_pool_conn *c);

/* How a borrowed connection comes back. */
typedef enum resil_pool_return {
  RESIL_POOL_OK = 0, /* clean and reusable */
  RESIL_POOL_BROKEN  /* timed out, errored, or state unknown: close it */
} resil_pool_return;

/* Give a borrowed connection back. RESIL_POOL_BROKEN closes it (outside the
 * lock) and frees its slot; so does RESIL_POOL_OK on a connection past its
 * lifetime or on a draining pool. Wakes the first waiter. */
RESIL_API void resil_pool_release(resil_pool *p, resil_pool_conn *c, resil_pool_return how);

/* Stop lending (new acquires get RESIL_E_CLOSED, waiters are woken with
 * it), close idle connections, wait until borrowed ones come back or until
 * deadline, and close them as they do. RESIL_OK if all were closed,
 * RESIL_E_TIMEOUT if some were still borrowed at the deadline (they are
 * closed when released). An unset deadline waits 30 s at most. */
RESIL_API resil_status resil_pool_drain(resil_pool *p, resil_deadline deadline);

/* Drain with an immediate deadline if not done, stop the housekeeper and
 * free the pool. No connection may still be borrowed. NULL is a no-op. */
RESIL_API void resil_pool_free(resil_pool *p);

/* ---- Eviction (failover) ----------------------------------------------
 * Every connection belongs to the pool's generation current when its
 * connect began. resil_pool_evict() starts a new generation: idle
 * connections of older ones are closed at once, borrowed ones when they are
 * released (whatever `how` says) and, should any be left idle, when they
 * would be lent. A connection whose connect began before the eviction and
 * ended after it is lent once to the acquirer that made it, then closed on
 * release. Cost on acquire and release: one compare under the pool's lock.
 * Adapters evict when a connection shows that the endpoint moved (a
 * failover), so one sign closes every connection to the old address
 * instead of one failed call per connection. */

/* Pass to resil_pool_evict() to end the current generation whatever it is. */
#define RESIL_POOL_GEN_CURRENT UINT64_MAX

/* The current generation (starts at 0). Thread-safe (one atomic load). */
RESIL_API uint64_t resil_pool_generation(const resil_pool *p);

/* The generation of a borrowed connection. Valid until released. */
RESIL_API uint64_t resil_pool_conn_generation(const resil_pool_conn *c);

/* If generation is the current one (or RESIL_POOL_GEN_CURRENT): start a
 * new generation, close every idle connection now (reason "evicted"; the
 * connector's close runs on this thread, without the pool's lock) and every
 * borrowed one of an older generation when it comes back; return true.
 * Otherwise (an eviction since that generation already did it) do nothing
 * and return false, so many callers seeing the same failover evict once:
 * pass the generation of the connection (resil_pool_conn_generation) or the
 * one read before the connect (resil_pool_generation) that saw it.
 * Waiters are served with new connections on the freed slots. NULL p:
 * false. Thread-safe. */
RESIL_API bool resil_pool_evict(resil_pool *p, uint64_t generation);

/* Why the pool closed a connection. */
typedef enum resil_pool_close_reason {
  RESIL_POOL_CLOSE_LIFETIME = 0,
  RESIL_POOL_CLOSE_IDLE,
  RESIL_POOL_CLOSE_BROKEN,
  RESIL_POOL_CLOSE_VALIDATION,
  RESIL_POOL_CLOSE_DRAIN,
  RESIL_POOL_CLOSE_EVICTED, /* its generation was evicted (resil_pool_evict) */
  RESIL_POOL_CLOSE_REASON_COUNT_
} resil_pool_close_reason;

/* Capacity of resil_pool_stats.closed[], fixed for the ABI; entries from
 * RESIL_POOL_CLOSE_REASON_COUNT_ on are 0. */
#define RESIL_POOL_CLOSE_REASON_SLOTS 8

/* "lifetime", "idle", "broken", "validation", "drain", "evicted". */
RESIL_API const char *resil_pool_close_reason_name(resil_pool_close_reason r);

typedef struct resil_pool_stats {
  uint32_t max;            /* max_size */
  uint32_t open;           /* connections open (idle + in use) */
  uint32_t idle;
  uint32_t in_use;
  uint32_t connecting;     /* connects in progress (they hold a slot) */
  uint32_t waiters;        /* callers queued for a connection */
  uint64_t acquired;       /* successful acquires */
  uint64_t acquire_timeouts; /* RESIL_E_POOL_TIMEOUT returned */
  uint64_t connects_ok, connects_failed, connects_timed_out;
  uint64_t closed[RESIL_POOL_CLOSE_REASON_SLOTS]; /* by resil_pool_close_reason */
  /* Time spent in resil_pool_acquire, every attempt past the deadline
   * check. An acquire served at once (the lock free, nobody queued, an idle
   * connection needing no check) is counted in the first bucket (<= 100 us)
   * without reading a clock, and adds 0 to sum_ns. */
  resil_hist_snapshot acquire_latency;
  uint64_t evictions;      /* generations ended by resil_pool_evict() */
  uint64_t generation;     /* the current generation */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[176];
} resil_pool_stats;

/* A snapshot of the pool's gauges and counters. */
RESIL_API void resil_pool_get_stats(const resil_pool *p, resil_pool_stats *out);

/* The pool's name. */
RESIL_API const char *resil_pool_name(const resil_pool *p);

RESIL_END_DECLS
#endif
