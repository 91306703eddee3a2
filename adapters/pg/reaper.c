/* The reaper: cancel and close timed-out connections off the caller's
 * thread (see reaper.h). */
#include "reaper.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "resil/deadline.h"
#include "resil/pg.h"
#include "xutil.h"

/* One cancel request run on its own detached thread so that the reaper can
 * stop waiting for it. Freed by whichever of the two lets go last. */
typedef struct cancel_job {
  PGcancel *cancel;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int ok;
  _Atomic int refs;
} cancel_job;

static _Atomic int g_cancel_threads; /* cancel helper threads alive, process-wide */

static void cancel_job_unref(cancel_job *j) {
  if (atomic_fetch_sub(&j->refs, 1) == 1) {
    PQfreeCancel(j->cancel);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
  }
}

static void *cancel_main(void *arg) {
  cancel_job *j = arg;
  char buf[256];
  int ok = PQcancel(j->cancel, buf, (int)sizeof buf);
  pthread_mutex_lock(&j->mu);
  j->ok = ok;
  j->done = true;
  pthread_cond_signal(&j->cv);
  pthread_mutex_unlock(&j->mu);
  cancel_job_unref(j);
  atomic_fetch_sub(&g_cancel_threads, 1);
  return NULL;
}

static int cond_init_mono(pthread_cond_t *cv) {
  pthread_condattr_t a;
  int r = pthread_condattr_init(&a);
  if (r) return r;
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  r = pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
  return r;
}

static struct timespec mono_in_ms(uint64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* A cancel job for conn holding one reference for its thread and one for
 * the caller, or NULL (nothing left allocated). */
static cancel_job *cancel_job_new(PGconn *conn) {
  cancel_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  if (!(j->cancel = PQgetCancel(conn))) {
    free(j);
    return NULL;
  }
  if (pthread_mutex_init(&j->mu, NULL) != 0) {
    PQfreeCancel(j->cancel);
    free(j);
    return NULL;
  }
  if (cond_init_mono(&j->cv) != 0) {
    pthread_mutex_destroy(&j->mu);
    PQfreeCancel(j->cancel);
    free(j);
    return NULL;
  }
  atomic_init(&j->refs, 2);
  return j;
}

/* Run j on a detached thread; false (j freed) if none could be made. */
static bool cancel_job_run(cancel_job *j) {
  pthread_attr_t attr;
  pthread_t th;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int r = pthread_create(&th, &attr, cancel_main, j);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    atomic_store(&j->refs, 1);
    cancel_job_unref(j);
  }
  return r == 0;
}

/* Send a cancel request for conn's running statement, waiting at most
 * timeout_ms for it. */
static void cancel_bounded(pg_reaper *rp, PGconn *conn, uint64_t timeout_ms) {
  if (timeout_ms == 0 || PQstatus(conn) != CONNECTION_OK) {
    resil_x_bump(&rp->n.cancels_skipped);
    return;
  }
  cancel_job *j = NULL;
  if (atomic_fetch_add(&g_cancel_threads, 1) >= RESIL_PG_MAX_STUCK_CANCELS ||
      !(j = cancel_job_new(conn)) || !cancel_job_run(j)) {
    atomic_fetch_sub(&g_cancel_threads, 1);
    resil_x_bump(&rp->n.cancels_skipped);
    return;
  }
  struct timespec until = mono_in_ms(timeout_ms);
  pthread_mutex_lock(&j->mu);
  while (!j->done)
    if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT) break;
  bool done = j->done;
  int ok = j->ok;
  pthread_mutex_unlock(&j->mu);
  cancel_job_unref(j);
  if (!done)
    resil_x_bump(&rp->n.cancels_abandoned);
  else if (ok)
    resil_x_bump(&rp->n.cancels_sent);
  else
    resil_x_bump(&rp->n.cancels_failed);
}

static void *reaper_main(void *arg) {
  pg_reaper *rp = arg;
  uint64_t stop_until = 0; /* shared cancel budget once stopping */
  pthread_mutex_lock(&rp->mu);
  for (;;) {
    while (rp->len == 0 && !rp->stop) pthread_cond_wait(&rp->cv, &rp->mu);
    if (rp->len == 0) break; /* stopping and empty */
    PGconn *conn = rp->q[rp->head];
    rp->head = (rp->head + 1) % rp->cap;
    rp->len--;
    bool stopping = rp->stop;
    pthread_mutex_unlock(&rp->mu);

    uint64_t timeout = rp->cancel_timeout_ms;
    if (stopping) {
      uint64_t now = resil_now_ns();
      if (!stop_until) stop_until = now + timeout * 1000000ull;
      timeout = stop_until > now ? (stop_until - now + 999999ull) / 1000000ull : 0;
    }
    cancel_bounded(rp, conn, timeout);
    PQfinish(conn);
    resil_x_bump(&rp->n.reaped);
    pthread_mutex_lock(&rp->mu);
  }
  pthread_mutex_unlock(&rp->mu);
  return NULL;
}

resil_status pg_reaper_start(pg_reaper *rp, const char *name, size_t queue_max,
                             uint32_t cancel_timeout_ms, resil_err *err) {
  rp->cap = queue_max;
  rp->cancel_timeout_ms = cancel_timeout_ms;
  rp->q = calloc(rp->cap, sizeof *rp->q);
  if (!rp->q) return resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", name);
  const char *what = NULL;
  int r = 0;
  if (pthread_mutex_init(&rp->mu, NULL) != 0) {
    what = "pthread_mutex_init failed";
  } else if (pthread_cond_init(&rp->cv, NULL) != 0) {
    pthread_mutex_destroy(&rp->mu);
    what = "pthread_cond_init failed";
  } else if ((r = pthread_create(&rp->thread, NULL, reaper_main, rp)) != 0) {
    pthread_cond_destroy(&rp->cv);
    pthread_mutex_destroy(&rp->mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "%s: creating the reaper thread: %s", name,
                         strerror(r));
  }
  if (what) return resil_err_set(err, RESIL_E_SYSTEM, "%s: %s", name, what);
  rp->started = true;
  rp->pid = getpid();
  return RESIL_OK;
}

void pg_reaper_stop(pg_reaper *rp) {
  /* In a child of fork the reaper thread does not exist: joining it would
   * wait forever; the connections it was cancelling are the parent's and
   * stay allocated here. */
  if (rp->started && rp->pid == getpid()) {
    pthread_mutex_lock(&rp->mu);
    rp->stop = true;
    pthread_cond_signal(&rp->cv);
    pthread_mutex_unlock(&rp->mu);
    pthread_join(rp->thread, NULL);
    pthread_cond_destroy(&rp->cv);
    pthread_mutex_destroy(&rp->mu);
  }
  rp->started = false;
  free(rp->q);
  rp->q = NULL;
}

void pg_reaper_hand(pg_reaper *rp, PGconn *conn) {
  /* In a child of fork the thread does not exist (and its mutex may have
   * been held by it): close here, without a cancel request. */
  bool here = rp->started && rp->pid == getpid();
  if (here) pthread_mutex_lock(&rp->mu);
  if (here && !rp->stop && rp->len < rp->cap) {
    rp->q[(rp->head + rp->len) % rp->cap] = conn;
    rp->len++;
    pthread_cond_signal(&rp->cv);
    pthread_mutex_unlock(&rp->mu);
    return;
  }
  if (here) pthread_mutex_unlock(&rp->mu);
  resil_x_bump(&rp->n.cancels_skipped);
  PQfinish(conn);
  resil_x_bump(&rp->n.reaped);
}
