/* resil: CloudWatch Embedded Metric Format (EMF) lines on stdout.
 *
 * On ECS the awslogs (or FireLens) log driver ships stdout to CloudWatch
 * Logs, which turns every line that is an EMF document into metrics with no
 * agent. resil writes one JSON document per line, per dependency, per
 * interval:
 *
 *   {"_aws":{"Timestamp":1764076800000,"CloudWatchMetrics":[{
 *      "Namespace":"resil","Dimensions":[["Service","Dependency"]],
 *      "Metrics":[{"Name":"CallsSuccess","Unit":"Count"},...]}]},
 *    "Service":"checkout","Dependency":"orders-db",
 *    "CallsSuccess":120, ..., "Latency":{"Values":[0.75,3.75],"Counts":[100,20]}}
 *
 * Dimensions: [["Service","Dependency"]] when a service name is configured,
 * else [["Dependency"]]. Both values are set by the operator (the service
 * name) or the code (dependency names), never by traffic, so cardinality is
 * bounded by the number of dependencies.
 *
 * Metrics (unit), per dependency:
 *   counters, as DELTAS over the interval (what happened since the previous
 *   document for this dependency; a counter that went backwards - the
 *   dependency was freed and re-created - restarts from its new value):
 *     Calls, CallsSuccess, CallsFailure, CallsTimeout, CallsOverload,
 *     CallsIgnored, Rejections, RejectedBreakerOpen,
 *     RejectedConcurrencyFull, RejectedQueueTimeout, RejectedPoolTimeout,
 *     RejectedDeadline, RejectedDraining, RejectedRetryBudget, Retries,
 *     BreakerOpened (entries into OPEN)                             (Count)
 *     and, with a pool: PoolAcquireTimeouts, PoolConnectsOk,
 *     PoolConnectsFailed, PoolConnectsTimedOut, PoolClosed          (Count)
 *   gauges, the value at the end of the interval:
 *     InFlight, ConcurrencyLimit, QueueWaiters                     (Count)
 *     Saturation = 100 x resil_dep_stats.saturation (>= 100 means
 *       callers are queueing)                                     (Percent)
 *     BreakerState: 0 closed, 1 open, 2 half_open, 3 forced_open,
 *       4 disabled (the resil_breaker_state values)                  (None)
 *     and, with a pool: PoolMax, PoolOpen, PoolInUse, PoolIdle,
 *       PoolWaiters                                                 (Count)
 *   distributions, as EMF value/count arrays over the interval:
 *     Latency (admit to done of calls that ended in the interval) and,
 *     with a pool, PoolAcquireLatency                        (Milliseconds)
 *     Each non-empty histogram bucket becomes one value: the bucket's
 *     MIDPOINT in ms ((lower + upper) / 2; the first bucket 0..0.1 ms gives
 *     0.05), with its count. The overflow bucket (above 60 s) is reported
 *     as 60000 ms, a lower bound. CloudWatch percentiles are therefore
 *     accurate to within half a bucket. A distribution with no observation
 *     in the interval is omitted entirely (EMF requires a non-empty
 *     Values array).
 *
 * A document holds at most 100 metrics (an EMF limit); a dependency with
 * more is split over several lines, each complete with _aws and
 * dimensions. Today a dependency has at most 33.
 */
#ifndef RESIL_EMF_H
#define RESIL_EMF_H

#include "resil/dep.h"

RESIL_BEGIN_DECLS

/* The EMF limit on metrics in one document. */
#define RESIL_EMF_MAX_METRICS 100

/* How long one emission (every dependency's lines) may wait for room on a
 * full fd before its remaining lines are dropped and counted. */
#define RESIL_EMF_WRITE_BUDGET_MS 250

typedef struct resil_emf_config {
  const char *metric_namespace; /* default "resil"; 1..255 chars of A-Z a-z 0-9
                                   . - _ / # : and space, not starting "AWS/" */
  const char *service;          /* default NULL: the Service dimension's value;
                                   NULL or "" leaves the dimension out. At
                                   most 255 bytes, no control characters. */
  uint32_t interval_ms;         /* default 60000; 1000..86400000 */
  int fd;                       /* default 1 (stdout); not closed by resil */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[40];
} resil_emf_config;

/* Fill cfg with the defaults above. Thread-safe. */
RESIL_API void resil_emf_config_init(resil_emf_config *cfg);

/* Check every field, reporting all problems at once ("emf.interval_ms: ...").
 * RESIL_OK or RESIL_E_INVALID. Thread-safe. */
RESIL_API resil_status resil_emf_config_validate(const resil_emf_config *cfg, resil_err *err);

/* Render one interval of one dependency: the EMF document(s) for the change
 * from prev to cur, each terminated by '\n', at most max_metrics metrics per
 * document (0 means RESIL_EMF_MAX_METRICS; larger values are clamped to it).
 * prev may be NULL (counters are then reported as their full value, e.g.
 * the first interval of a dependency). timestamp_ms is milliseconds since
 * the epoch. Pure: reads only its arguments. On RESIL_OK *out is a
 * NUL-terminated malloc'd string (free() it) of *len bytes (len may be
 * NULL). Errors: RESIL_E_INVALID (bad config or NULL argument),
 * RESIL_E_NOMEM. Thread-safe. */
RESIL_API resil_status resil_emf_render(const resil_emf_config *cfg, const resil_dep_stats *cur,
                                        const resil_dep_stats *prev, int64_t timestamp_ms,
                                        unsigned max_metrics, char **out, size_t *len,
                                        resil_err *err);

/* Start the process's background emitter: every interval_ms it snapshots
 * every registered dependency and writes its documents to cfg->fd, one
 * write() per line (so lines shorter than PIPE_BUF are never interleaved
 * with other writers of a pipe; partial writes are completed and EINTR is
 * retried).
 *
 * Writing never blocks the process, whatever the fd: a stdout that nobody
 * reads (a stalled log driver) costs lines, never a stuck emitter, flush or
 * drain. An emission waits at most RESIL_EMF_WRITE_BUDGET_MS in total for
 * room; the lines that did not fit are dropped and counted
 * (resil_emf_dropped_lines(), exported as resil_emf_dropped_lines_total).
 * The caller's fd and its flags are never changed (O_NONBLOCK would be
 * shared with every other writer of the same stdout): at start the fd is
 * examined once, and a pipe, FIFO or terminal is reopened privately through
 * /proc/self/fd/N with O_NONBLOCK (closed by resil_emf_stop()); a socket
 * gets send(MSG_DONTWAIT); a regular file is written as is. Without /proc,
 * a pipe gets poll(POLLOUT) before each write, where a line longer than the
 * room left (above PIPE_BUF) could still block. A line cut short (only
 * possible above PIPE_BUF) is followed by a newline before the next, so only
 * that one is lost. No lock is held while writing.
 *
 * The baseline for the first interval's deltas is taken at start. The
 * config's strings are copied. Errors: RESIL_E_INVALID (bad config, or an
 * emitter is already running), RESIL_E_NOMEM, RESIL_E_SYSTEM (thread
 * creation). Thread-safe. */
RESIL_API resil_status resil_emf_start(const resil_emf_config *cfg, resil_err *err);

/* Emit one interval now (from the last emission to now) on the calling
 * thread, e.g. at drain so that the last seconds are not lost; the next
 * periodic interval starts from here. Returns within
 * RESIL_EMF_WRITE_BUDGET_MS (plus rendering) even when the fd is full.
 * Errors: RESIL_E_CLOSED (no emitter running), RESIL_E_NOMEM,
 * RESIL_E_TIMEOUT (the fd had no room: lines were dropped, how many in the
 * message), RESIL_E_SYSTEM (a write failed; errno in the message).
 * Thread-safe (snapshots are serialised with the background emitter). */
RESIL_API resil_status resil_emf_flush(resil_err *err);

/* Stop the background emitter and join its thread. Emits nothing: call
 * resil_emf_flush() first to keep the last interval. Waits for a flush in
 * progress on another thread (at most the write budget). No-op if not
 * running. Thread-safe; must not be called concurrently with
 * resil_emf_start(). */
RESIL_API void resil_emf_stop(void);

/* True while an emitter is running. Thread-safe. */
RESIL_API bool resil_emf_running(void);

/* EMF lines dropped since the process started because the fd had no room
 * within the write budget, or a write failed (exported as the Prometheus
 * counter resil_emf_dropped_lines_total). Thread-safe, lock-free. */
RESIL_API uint64_t resil_emf_dropped_lines(void);

RESIL_END_DECLS
#endif
