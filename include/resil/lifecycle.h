/* resil: health, readiness, pre-warm, drain and SIGTERM - the process's life
 * on ECS behind a load balancer.
 *
 * A typical service:
 *
 *   resil_sigterm_install(&err);
 *   resil_prewarm_all(resil_deadline_in_ms(10000), &err);   // readiness waits for it
 *   ... start serving; /health -> resil_health(), /ready -> resil_ready() ...
 *   while (!resil_sigterm_wait(resil_deadline_in_ms(1000))) { periodic work }
 *   resil_drain(5000, resil_deadline_in_ms(25000), &err);   // grace, then drain
 *
 * Health says "the process is alive and serving": always 200, never touches
 * a dependency, so a slow database never gets a healthy task killed.
 * Readiness says "send me traffic": 503 while draining, while a critical
 * dependency (resil_dep_config.critical) has an open or forced-open breaker,
 * or while a critical dependency with an attached pool is not yet warm
 * (resil_dep_is_warm(), set by resil_prewarm_all()). Half-open counts as
 * ready (probes need traffic), and so does an OPEN breaker whose break
 * duration has passed (the next call will probe; otherwise a task taken out
 * of rotation could never see the call that closes it). Dependencies that
 * are not critical never affect readiness.
 *
 * These functions act on every dependency in the registry; no dependency
 * may be freed while resil_prewarm_all() or resil_drain() runs.
 */
#ifndef RESIL_LIFECYCLE_H
#define RESIL_LIFECYCLE_H

#include "resil/dep.h"

RESIL_BEGIN_DECLS

/* Liveness: write {"status":"ok"} (NUL-terminated, truncated to size) into
 * buf (may be NULL when size is 0) and return 200. Never blocks, never
 * touches a dependency; still 200 while draining (the process serves until
 * it exits). Thread-safe, async-signal-unsafe. */
RESIL_API int resil_health(char *buf, size_t size);

/* Readiness: return 200 and write {"ready":true}, or return 503 and write
 * {"ready":false,"reason":"..."} naming the first reason found, e.g.
 * "draining", "orders-db: breaker open", "orders-db: breaker forced open",
 * "orders-db: not warm (pool not pre-warmed)". buf is NUL-terminated and
 * truncated to size (may be NULL when size is 0). Reads atomics and
 * snapshots only: no I/O, no dependency touched. Thread-safe. */
RESIL_API int resil_ready(char *buf, size_t size);

/* Pre-warm the attached pool (resil_dep_pool) of every registered
 * dependency in parallel, each opening its min_idle connections, all under
 * one deadline (unset: 30 s at most). Each dependency whose pool reached
 * min_idle is marked warm (resil_dep_set_warm); one without a pool needs
 * nothing. Returns RESIL_OK when every pool is warm, else the first failing
 * pool's status (RESIL_E_TIMEOUT, RESIL_E_FAILURE, ...) with err listing
 * every dependency that did not get warm and why. Thread-safe; blocks until
 * done or the deadline. */
RESIL_API resil_status resil_prewarm_all(resil_deadline deadline, resil_err *err);

/* Drain the process, as ECS needs it on SIGTERM:
 *   0. the drain cutoff is set (resil_drain_cutoff): a little before
 *      deadline - a fifth of the time left, at most 200 ms before it -
 *      every call in flight or admitted from now on is cut there. The
 *      adapters' I/O waits honour it (resil_drain_bound, re-checked at
 *      least every RESIL_DRAIN_CHECK_MS), so a slow query cannot hold
 *      the process past the drain's deadline;
 *      a call cut that way ends with RESIL_E_DRAINING ("<dep>: cut at the
 *      drain deadline (...)"), counted as a "draining" rejection, never as a
 *      failure of the dependency;
 *   1. readiness turns 503 at once (resil_is_draining() is true);
 *   2. for grace_ms (the load balancer's deregistration delay still sends
 *      traffic) new calls are still admitted;
 *   3. then every dependency is set draining: new calls get
 *      RESIL_E_DRAINING, counted under reason "draining";
 *   4. it waits, in short sleeps, until no dependency has a call in flight;
 *   5. drains every attached pool (resil_pool_drain) with the time left;
 *   6. emits a last EMF interval if the emitter runs (resil_emf_flush).
 * Every step ends at deadline (on the process clock; unset: 30 s at most),
 * so the grace period is cut short by an earlier deadline. Calls that end
 * before the cutoff are not touched: each gets its own status from its own
 * deadline. Code of your own that waits (resil_dep_call work functions,
 * the two-step admit/done) should bound its waits with resil_drain_bound()
 * too; resil_dep_call() and resil_dep_done() turn a RESIL_E_TIMEOUT or
 * RESIL_E_DEADLINE that ends at the cutoff into RESIL_E_DRAINING. Every
 * adapter's wait (an HTTP transfer's too) notices a cutoff set while it
 * waits within RESIL_DRAIN_CHECK_MS. Returns RESIL_OK, or
 * RESIL_E_TIMEOUT with err saying how
 * many calls were still in flight where ("drain: 2 calls still in flight at
 * the deadline: orders-db 2") or which pool still had borrowed
 * connections. Pools and dependencies stay allocated: free them after.
 * A second call while already draining skips the grace (it was had) and
 * never moves the cutoff later. Thread-safe; call it from one thread. */
RESIL_API resil_status resil_drain(uint32_t grace_ms, resil_deadline deadline, resil_err *err);

/* The drain cutoff: unset (at_ns 0) until resil_drain() starts, then the
 * time by which every call must end (see resil_drain step 0); unset again
 * after resil_drain_reset(). Thread-safe, lock-free (one atomic load). */
RESIL_API resil_deadline resil_drain_cutoff(void);

/* d bounded by the drain cutoff: min(d, resil_drain_cutoff()), or d itself
 * when not draining; an unset d becomes the cutoff while draining. For I/O
 * waits: while no cutoff is set, wait at most RESIL_DRAIN_CHECK_MS at a
 * time and recompute it on every wake-up, so that a wait that began before
 * the drain notices it (the cutoff is set when the drain starts, long
 * before it is reached). Thread-safe, lock-free. */
RESIL_API resil_deadline resil_drain_bound(resil_deadline d);

/* The longest an I/O wait should sleep without re-checking the drain
 * cutoff (resil_drain_bound). The cutoff is set when the drain starts, so a
 * wait that began before notices it within this period. */
#define RESIL_DRAIN_CHECK_MS 100

/* True once resil_drain() has started (until resil_drain_reset()).
 * Thread-safe, lock-free. */
RESIL_API bool resil_is_draining(void);

/* Install a SIGTERM handler that only sets a flag and writes one byte to a
 * non-blocking self-pipe (async-signal-safe; errno preserved). The process
 * is no longer killed by SIGTERM: the service must notice
 * (resil_sigterm_received / resil_sigterm_wait / resil_sigterm_fd) and exit
 * after draining. Installing twice is a no-op. Errors: RESIL_E_SYSTEM (pipe
 * or sigaction failed). Thread-safe. */
RESIL_API resil_status resil_sigterm_install(resil_err *err);

/* True once SIGTERM was received after resil_sigterm_install().
 * Thread-safe, lock-free, async-signal-safe. */
RESIL_API bool resil_sigterm_received(void);

/* Wait until SIGTERM arrives or deadline passes (unset: 1 s at most).
 * Returns resil_sigterm_received(). Does not consume anything: every waiter
 * wakes. Without resil_sigterm_install() it just waits. Thread-safe. */
RESIL_API bool resil_sigterm_wait(resil_deadline deadline);

/* A file descriptor that becomes readable when SIGTERM arrives, for an
 * event loop (poll/epoll); -1 before resil_sigterm_install(). Do not read
 * from it or close it. Thread-safe. */
RESIL_API int resil_sigterm_fd(void);

RESIL_END_DECLS
#endif
