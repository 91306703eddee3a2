/* Fork safety for the core's pools and dependencies (see "fork" in
 * resil/pool.h and the README).
 *
 * One pthread_atfork() handler, registered the first time a dependency or a
 * pool is created:
 *   prepare  locks the event hook (write) and the recovery probes' list,
 *            then the dependency registry, every dependency's queue and
 *            breaker mutexes, then the pool registry and every pool's mutex,
 *            always in that order (no code path holds one of these and
 *            waits for an earlier one), so no other thread is inside a
 *            critical section when the process is copied;
 *   parent   unlocks them all;
 *   child    (one thread, every lock held by it) resets what belonged to
 *            threads that do not exist in the child - concurrency slots,
 *            queue waiters, pool counts, the housekeeper - bumps each
 *            object's fork generation (permits and connections from before
 *            the fork are recognised by it and never touch the new counts),
 *            re-initialises condition variables that may list waiters of
 *            vanished threads, forgets the probe threads (they start again
 *            on the child's next open breaker), and unlocks.
 * The child handler does no I/O and frees nothing: pre-fork connections are
 * abandoned lazily by the pool, outside the handler.
 */
#include "internal.h"

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void prepare(void) {
  resil__event_fork_prepare();
  resil__probe_fork_prepare();
  resil__dep_fork_prepare();
  resil__pool_fork_prepare();
}

static void parent(void) {
  resil__pool_fork_parent();
  resil__dep_fork_parent();
  resil__probe_fork_parent();
  resil__event_fork_parent();
}

static void child(void) {
  resil__pool_fork_child();
  resil__dep_fork_child();
  resil__probe_fork_child();
  resil__event_fork_child();
}

static void register_handlers(void) { pthread_atfork(prepare, parent, child); }

void resil__fork_init(void) { pthread_once(&fork_once, register_handlers); }
