/* Internal to libresil-pg (not installed): the reaper, a thread that takes
 * connections whose statement is still running (a timeout, a result over
 * max_result_bytes), sends each a cancel request bounded by
 * cancel_timeout_ms (on a detached helper thread it can stop waiting for),
 * then closes it: the caller's thread never waits for the server.
 *
 * Thread-safe: pg_reaper_hand() from any thread; _start and _stop once
 * each, from the owner. A child of fork has no reaper thread: there
 * pg_reaper_hand() closes the connection itself, and pg_reaper_stop() only
 * frees memory. */
#ifndef RESIL_PG_REAPER_H
#define RESIL_PG_REAPER_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "resil/adapter.h"

/* What the reaper did (resil_pg_stats has the same names). */
typedef struct pg_reaper_counts {
  _Atomic uint64_t reaped, cancels_sent, cancels_failed, cancels_abandoned, cancels_skipped;
} pg_reaper_counts;

typedef struct pg_reaper {
  pthread_t thread;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  PGconn **q; /* ring of cap entries */
  size_t cap, head, len;
  bool stop;
  pid_t pid; /* the process the thread runs in: a child of fork has none */
  uint64_t cancel_timeout_ms;
  pg_reaper_counts n;
} pg_reaper;

/* Start the thread with a queue of queue_max connections. RESIL_OK, or
 * RESIL_E_NOMEM / RESIL_E_SYSTEM with err "<name>: ..."; on failure
 * nothing is left to stop (pg_reaper_stop is harmless). */
resil_status pg_reaper_start(pg_reaper *rp, const char *name, size_t queue_max,
                             uint32_t cancel_timeout_ms, resil_err *err);

/* Cancel (within one shared cancel_timeout_ms) and close what is queued,
 * join the thread, free the queue. */
void pg_reaper_stop(pg_reaper *rp);

/* Hand over conn, whose statement is still running. Never blocks: with the
 * queue full (or no reaper thread) it is closed here without a cancel
 * request (PQfinish on a non-blocking connection does not wait). */
void pg_reaper_hand(pg_reaper *rp, PGconn *conn);

#endif
