/* Recovery probes: while a dependency's breaker is OPEN, run its probe out
 * of band and end the break as soon as one succeeds.
 *
 * Threads: up to RESIL_PROBE_THREADS, one per probed dependency, started as
 * dependencies get a probe and stopped (joined) when the last one goes.
 * Every thread runs the same loop over one list under one mutex: pick the
 * entry whose probe is due soonest (breaker OPEN, not already running),
 * mark it running, run it unlocked, record. So at most one probe per
 * dependency is in flight, and a probe hanging until its timeout holds up
 * only its own thread: another dependency's due probe waits only when every
 * thread is busy, and then for at most one probe timeout.
 *
 * Schedule: the first probe probe_interval_ms (+/- 20%) after the breaker
 * opened (the call that tripped it just failed: no point asking at once);
 * then one per interval from the start of the last, or right after it when
 * it took longer than that (a hanging dependency always has one probe
 * waiting on it, which answers the moment it heals). No probe is started
 * once the break's timer has run out, nor when it would run out before the
 * probe is due: the next call moves the breaker to HALF_OPEN then anyway.
 *
 * The threads learn that a breaker opened from the dependency's transition
 * hook (resil__probe_kick) and otherwise sleep until the next due probe, at
 * most 1 s.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct probe_entry {
  struct probe_entry *next;
  resil_dep *dep;
  resil_probe_fn fn;
  void *ctx;
  uint64_t interval_ns, timeout_ns;
  uint32_t gen;     /* breaker generation next_at was planned for (0: none) */
  uint64_t next_at; /* when the next probe is due */
  bool running;
} probe_entry;

static pthread_mutex_t life_mu = PTHREAD_MUTEX_INITIALIZER; /* serialises set_probe */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv, done_cv;
static pthread_once_t cv_once = PTHREAD_ONCE_INIT;
static probe_entry *entries;
static size_t nentries;
static pthread_t threads[RESIL_PROBE_THREADS];
static unsigned nthreads;
static bool stopping;

static const char *const result_names[RESIL_PROBE_RESULT_COUNT_] = {"success", "failure",
                                                                    "timeout"};

const char *resil_probe_result_name(resil_probe_result r) {
  return (unsigned)r < RESIL_PROBE_RESULT_COUNT_ ? result_names[r] : "unknown";
}

static void init_cvs(void) {
  resil__cond_init(&work_cv);
  resil__cond_init(&done_cv);
}

static void *probe_main(void *arg);

/* Start threads until there is one per probed dependency (at most
 * RESIL_PROBE_THREADS). mu held. Returns the pthread_create error of the
 * first thread that could not start, 0 if none failed. */
static int start_threads(void) {
  size_t want = nentries < RESIL_PROBE_THREADS ? nentries : RESIL_PROBE_THREADS;
  while (nthreads < want) {
    int rc = pthread_create(&threads[nthreads], NULL, probe_main, NULL);
    if (rc != 0) return rc;
    nthreads++;
  }
  return 0;
}

void resil__probe_kick(void) {
  pthread_once(&cv_once, init_cvs);
  pthread_mutex_lock(&mu);
  if (nentries) {
    (void)start_threads(); /* none after a fork(): the child's first open breaker starts them */
    pthread_cond_broadcast(&work_cv);
  }
  pthread_mutex_unlock(&mu);
}

/* interval +/- 20% */
static uint64_t jittered(uint64_t interval_ns) {
  double r = (double)(resil__rand() >> 11) / 9007199254740992.0; /* [0,1) */
  return (uint64_t)((double)interval_ns * (0.8 + 0.4 * r));
}

static void run_one(probe_entry *e, uint32_t gen) {
  resil_dep *d = e->dep;
  resil_err err;
  memset(&err, 0, sizeof err);
  uint64_t start = resil_now_ns();
  resil_deadline dl = {.at_ns = start + e->timeout_ns};
  resil_status st = e->fn(e->ctx, dl, &err);
  uint64_t end = resil_now_ns();
  resil_probe_result r;
  if (st == RESIL_OK)
    r = end <= dl.at_ns ? RESIL_PROBE_SUCCESS : RESIL_PROBE_TIMEOUT; /* late is not healthy */
  else
    r = st == RESIL_E_TIMEOUT || end > dl.at_ns ? RESIL_PROBE_TIMEOUT : RESIL_PROBE_FAILURE;
  if (r == RESIL_PROBE_SUCCESS) {
    char msg[RESIL_ERR_MSG_MAX + 64];
    snprintf(msg, sizeof msg, "recovery probe succeeded in %llu ms%s%s",
             (unsigned long long)((end - start) / 1000000), err.msg[0] ? ": " : "", err.msg);
    resil__call_msg = msg;
    resil_breaker_probe_succeeded(resil_dep_breaker(d), gen);
    resil__call_msg = NULL;
  }
  resil__dep_count_probe(d, r); /* after the move: a counted success has moved it */
  uint64_t next = start + jittered(e->interval_ns);
  pthread_mutex_lock(&mu);
  e->next_at = next > end ? next : end;
  e->running = false;
  pthread_cond_broadcast(&done_cv);
  pthread_mutex_unlock(&mu);
}

static void *probe_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&mu);
  while (!stopping) {
    uint64_t now = resil_now_ns();
    uint64_t wake = now + 1000000000ull;
    probe_entry *due = NULL;
    for (probe_entry *e = entries; e; e = e->next) {
      if (e->running) continue;
      uint32_t gen;
      uint64_t opened, until;
      if (!resil__breaker_open_info(resil_dep_breaker(e->dep), &gen, &opened, &until)) {
        e->gen = 0;
        continue;
      }
      if (gen != e->gen) { /* a new break: first probe one interval after it began */
        e->gen = gen;
        e->next_at = opened + jittered(e->interval_ns);
      }
      /* A probe due when the timer has ended the break anyway (or would
       * before the probe is due) is useless: the next call goes half-open. */
      if (now >= until || e->next_at >= until) continue;
      if (e->next_at <= now) {
        if (!due || e->next_at < due->next_at) due = e;
      } else if (e->next_at < wake) {
        wake = e->next_at;
      }
    }
    if (!due) {
      resil__cond_wait_until(&work_cv, &mu, (resil_deadline){.at_ns = wake});
      continue;
    }
    due->running = true;
    uint32_t gen = due->gen;
    pthread_mutex_unlock(&mu);
    run_one(due, gen);
    pthread_mutex_lock(&mu);
  }
  pthread_mutex_unlock(&mu);
  return NULL;
}

static probe_entry **find(resil_dep *d) {
  probe_entry **pp = &entries;
  while (*pp && (*pp)->dep != d) pp = &(*pp)->next;
  return pp;
}

/* Stop and join every thread. life_mu held, mu not. */
static void stop_threads(void) {
  pthread_mutex_lock(&mu);
  stopping = true;
  pthread_cond_broadcast(&work_cv);
  unsigned n = nthreads;
  pthread_mutex_unlock(&mu);
  for (unsigned i = 0; i < n; i++) pthread_join(threads[i], NULL);
  pthread_mutex_lock(&mu);
  nthreads = 0;
  stopping = false;
  pthread_mutex_unlock(&mu);
}

static resil_status set_probe(resil_dep *d, resil_probe_fn fn, void *ctx, resil_err *err) {
  pthread_once(&cv_once, init_cvs);
  const resil_dep_config *c = resil_dep_get_config(d);
  pthread_mutex_lock(&life_mu);
  pthread_mutex_lock(&mu);
  probe_entry **pp = find(d);
  probe_entry *e = *pp;
  while (e && e->running) pthread_cond_wait(&done_cv, &mu);
  if (e && !fn) { /* remove */
    *pp = e->next;
    nentries--;
    free(e);
    e = NULL;
  } else if (e) { /* replace */
    e->fn = fn;
    e->ctx = ctx;
  } else if (fn && c->probe_interval_ms) { /* add */
    e = calloc(1, sizeof *e);
    if (!e) {
      pthread_mutex_unlock(&mu);
      pthread_mutex_unlock(&life_mu);
      return resil_err_set(err, RESIL_E_NOMEM, "%s: probe: out of memory", resil_dep_name(d));
    }
    uint32_t to = c->probe_timeout_ms;
    if (!to) to = c->timeout_ms < 1000 ? c->timeout_ms : 1000;
    e->dep = d;
    e->fn = fn;
    e->ctx = ctx;
    e->interval_ns = (uint64_t)c->probe_interval_ms * 1000000ull;
    e->timeout_ns = (uint64_t)to * 1000000ull;
    e->next = entries;
    entries = e;
    nentries++;
  }
  resil_status st = RESIL_OK;
  int rc = start_threads();
  if (rc != 0 && nthreads == 0 && e && fn) { /* nobody could run it: undo */
    *find(d) = e->next;
    nentries--;
    free(e);
    st = resil_err_set(err, RESIL_E_SYSTEM, "%s: probe: cannot start a thread: %s",
                       resil_dep_name(d), strerror(rc));
  }
  pthread_cond_broadcast(&work_cv); /* the new entry's breaker may be open already */
  bool idle = nentries == 0 && nthreads > 0;
  pthread_mutex_unlock(&mu);
  if (idle) stop_threads();
  pthread_mutex_unlock(&life_mu);
  return st;
}

resil_status resil_dep_set_probe(resil_dep *d, resil_probe_fn fn, void *ctx) {
  if (!d) return RESIL_E_INVALID;
  return set_probe(d, fn, ctx, NULL);
}

void resil__probe_detach(resil_dep *d) {
  pthread_mutex_lock(&mu);
  bool has = *find(d) != NULL;
  pthread_mutex_unlock(&mu);
  if (has) set_probe(d, NULL, NULL, NULL);
}

/* ---- fork (see fork.c) ------------------------------------------------ */

/* Before fork: no probe thread is inside the list; a probe running
 * unlocked is the parent's business (its thread does not exist in the
 * child). */
void resil__probe_fork_prepare(void) { pthread_mutex_lock(&mu); }

void resil__probe_fork_parent(void) { pthread_mutex_unlock(&mu); }

/* In the child: no probe thread exists, none is running, and set_probe()
 * (serialised by life_mu, which a vanished thread may hold) must not wait
 * for one. Threads start again on the next open breaker or set_probe(). */
void resil__probe_fork_child(void) {
  for (probe_entry *e = entries; e; e = e->next) {
    e->running = false;
    e->gen = 0;
  }
  nthreads = 0;
  stopping = false;
  pthread_mutex_init(&life_mu, NULL);
  resil__cond_init(&work_cv);
  resil__cond_init(&done_cv);
  pthread_mutex_unlock(&mu);
}
