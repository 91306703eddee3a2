/* Health, readiness, pre-warm, drain and the SIGTERM flag. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "resil/emf.h"
#include "resil/lifecycle.h"

#define UNSET_WAIT_MS 30000
#define DRAIN_RESERVE_MS 200

static _Atomic bool proc_draining;
/* The drain cutoff (process clock, ns; 0 = none). */
static _Atomic uint64_t drain_cut;

uint64_t resil__drain_cut_ns(void) { return atomic_load_explicit(&drain_cut, memory_order_relaxed); }

resil_deadline resil_drain_cutoff(void) {
  resil_deadline d = {resil__drain_cut_ns()};
  return d;
}

resil_deadline resil_drain_bound(resil_deadline d) {
  uint64_t cut = resil__drain_cut_ns();
  if (!cut) return d;
  resil_deadline c = {cut};
  return resil_deadline_is_set(d) ? resil_deadline_min(d, c) : c;
}

/* Set the cutoff, never later than one already set. */
static void drain_cut_set(uint64_t cut) {
  uint64_t old = atomic_load(&drain_cut);
  while ((old == 0 || cut < old) && !atomic_compare_exchange_weak(&drain_cut, &old, cut)) {
  }
}

/* d itself, or now + ms when d is unset. */
static resil_deadline or_in_ms(resil_deadline d, int64_t ms) {
  return resil_deadline_is_set(d) ? d : resil_deadline_in_ms(ms);
}

/* ---- health and readiness ------------------------------------------------- */

int resil_health(char *buf, size_t size) {
  if (buf && size) snprintf(buf, size, "{\"status\":\"ok\"}");
  return 200;
}

typedef struct ready_ctx {
  char reason[128];
  bool found;
  uint64_t now;
} ready_ctx;

static void check_ready(void *arg, resil_dep *d) {
  ready_ctx *c = arg;
  if (c->found) return;
  const resil_dep_config *cfg = resil_dep_get_config(d);
  if (!cfg || !cfg->critical) return;
  resil_breaker_stats bs;
  resil_breaker_get_stats(resil_dep_breaker(d), &bs);
  const char *why = NULL;
  if (bs.state == RESIL_BREAKER_FORCED_OPEN)
    why = "breaker forced open";
  else if (bs.state == RESIL_BREAKER_OPEN && (bs.open_until_ns == 0 || c->now < bs.open_until_ns))
    why = "breaker open";
  else if (resil_dep_pool(d) && !resil_dep_is_warm(d))
    why = "not warm (pool not pre-warmed)";
  if (why) {
    snprintf(c->reason, sizeof c->reason, "%s: %s", resil_dep_name(d), why);
    c->found = true;
  }
}

int resil_ready(char *buf, size_t size) {
  ready_ctx c = {.found = false, .now = resil_now_ns()};
  if (atomic_load(&proc_draining)) {
    snprintf(c.reason, sizeof c.reason, "draining");
    c.found = true;
  } else {
    resil_registry_foreach(check_ready, &c);
  }
  if (!c.found) {
    if (buf && size) snprintf(buf, size, "{\"ready\":true}");
    return 200;
  }
  /* Dependency names are [A-Za-z0-9_.-]: no JSON escaping needed. */
  if (buf && size) snprintf(buf, size, "{\"ready\":false,\"reason\":\"%s\"}", c.reason);
  return 503;
}

/* ---- a stable list of the registered dependencies ------------------------- */

typedef struct dep_list {
  resil_dep **v;
  size_t n, cap;
  bool oom;
} dep_list;

static void list_add(void *arg, resil_dep *d) {
  dep_list *l = arg;
  if (l->oom) return;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    resil_dep **nv = realloc(l->v, cap * sizeof *nv);
    if (!nv) {
      l->oom = true;
      return;
    }
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = d;
}

static resil_status list_deps(dep_list *l, const char *what, resil_err *err) {
  memset(l, 0, sizeof *l);
  resil_registry_foreach(list_add, l);
  if (l->oom) {
    free(l->v);
    l->v = NULL;
    return resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", what);
  }
  return RESIL_OK;
}

/* Sleep for up to ms of real time. */
static void nap_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- pre-warm ------------------------------------------------------------ */

typedef struct warm_job {
  resil_dep *dep;
  resil_pool *pool;
  resil_deadline deadline;
  resil_status st;
  resil_err err;
  pthread_t th;
  bool started;
} warm_job;

static void *warm_main(void *arg) {
  warm_job *j = arg;
  j->st = resil_pool_prewarm(j->pool, j->deadline, &j->err);
  return NULL;
}

resil_status resil_prewarm_all(resil_deadline deadline, resil_err *err) {
  resil_deadline until = or_in_ms(deadline, UNSET_WAIT_MS);
  dep_list l;
  resil_status st = list_deps(&l, "prewarm", err);
  if (st != RESIL_OK) return st;
  warm_job *jobs = calloc(l.n ? l.n : 1, sizeof *jobs);
  if (!jobs) {
    free(l.v);
    return resil_err_set(err, RESIL_E_NOMEM, "prewarm: out of memory");
  }
  size_t nj = 0;
  for (size_t i = 0; i < l.n; i++) {
    resil_pool *p = resil_dep_pool(l.v[i]);
    if (!p) continue;
    warm_job *j = &jobs[nj++];
    j->dep = l.v[i];
    j->pool = p;
    j->deadline = until;
    j->st = RESIL_OK;
    j->started = pthread_create(&j->th, NULL, warm_main, j) == 0;
    if (!j->started) warm_main(j); /* no thread: do it here, still bounded */
  }
  resil_problems pr;
  resil__problems_init(&pr, "");
  resil_status first = RESIL_OK;
  for (size_t i = 0; i < nj; i++) {
    warm_job *j = &jobs[i];
    if (j->started) pthread_join(j->th, NULL);
    resil_dep_set_warm(j->dep, j->st == RESIL_OK);
    if (j->st != RESIL_OK) {
      if (first == RESIL_OK) first = j->st;
      resil__problem(&pr, resil_dep_name(j->dep), "%s", j->err.msg[0] ? j->err.msg
                                                                     : resil_strerror(j->st));
    }
  }
  free(jobs);
  free(l.v);
  if (first == RESIL_OK) return RESIL_OK;
  resil_err all;
  resil__problems_finish(&pr, &all);
  return resil_err_set(err, first, "prewarm: %s", all.msg);
}

/* ---- drain --------------------------------------------------------------- */

bool resil_is_draining(void) { return atomic_load(&proc_draining); }

static void undrain_one(void *arg, resil_dep *d) {
  (void)arg;
  resil_dep_set_draining(d, false);
}

void resil_drain_reset(void) {
  atomic_store(&drain_cut, 0);
  atomic_store(&proc_draining, false);
  resil_registry_foreach(undrain_one, NULL);
}

/* Sleep until the process clock reaches t (or the deadline), in slices. */
static void sleep_until_ns(uint64_t t) {
  for (;;) {
    uint64_t now = resil_now_ns();
    if (now >= t) return;
    uint64_t left_ms = (t - now + 999999) / 1000000;
    nap_ms(left_ms > 10 ? 10 : (unsigned)left_ms);
  }
}

resil_status resil_drain(uint32_t grace_ms, resil_deadline deadline, resil_err *err) {
  resil_deadline until = or_in_ms(deadline, UNSET_WAIT_MS);
  /* A second drain (e.g. resil_service_stop() after the service drained by
   * itself) has had its grace already. */
  if (atomic_exchange(&proc_draining, true)) grace_ms = 0;

  /* 0. Calls in flight must end before the deadline: the adapters' I/O
   * waits honour the cutoff (resil_drain_bound), which leaves a reserve of
   * a fifth of the time, at most DRAIN_RESERVE_MS, for the cut calls to
   * return, the pools to close and EMF to flush. */
  uint64_t start = resil_now_ns();
  uint64_t total = until.at_ns > start ? until.at_ns - start : 0;
  uint64_t reserve = total / 5 < DRAIN_RESERVE_MS * 1000000ull ? total / 5
                                                                 : DRAIN_RESERVE_MS * 1000000ull;
  drain_cut_set(until.at_ns - reserve > 0 ? until.at_ns - reserve : 1);

  /* 1. Grace: keep admitting while the load balancer deregisters us. */
  uint64_t grace_end = resil_now_ns() + (uint64_t)grace_ms * 1000000ull;
  sleep_until_ns(grace_end < until.at_ns ? grace_end : until.at_ns);

  /* 2. Stop admitting. */
  dep_list l;
  resil_status st = list_deps(&l, "drain", err);
  if (st != RESIL_OK) return st;
  for (size_t i = 0; i < l.n; i++) resil_dep_set_draining(l.v[i], true);

  /* 3. Wait for in-flight calls to end. */
  unsigned slice = 1;
  uint64_t busy;
  resil_dep_stats *s = malloc(sizeof *s);
  if (!s) {
    free(l.v);
    return resil_err_set(err, RESIL_E_NOMEM, "drain: out of memory");
  }
  for (;;) {
    busy = 0;
    for (size_t i = 0; i < l.n; i++) {
      resil_dep_get_stats(l.v[i], s);
      busy += s->in_flight;
    }
    if (busy == 0 || resil_deadline_expired(until)) break;
    nap_ms(slice);
    if (slice < 10) slice *= 2;
  }
  char where[RESIL_ERR_MSG_MAX];
  size_t wl = 0;
  where[0] = 0;
  if (busy) {
    for (size_t i = 0; i < l.n; i++) {
      resil_dep_get_stats(l.v[i], s);
      if (s->in_flight && wl < sizeof where) {
        int n = snprintf(where + wl, sizeof where - wl, "%s%s %u", wl ? ", " : "", s->name,
                         s->in_flight);
        if (n > 0) wl += (size_t)n;
      }
    }
  }
  free(s);

  /* 4. Close pools with the time left (an expired deadline closes the idle
   * ones and leaves borrowed ones to be closed when they come back). */
  char pools[RESIL_ERR_MSG_MAX];
  size_t pl = 0;
  pools[0] = 0;
  for (size_t i = 0; i < l.n; i++) {
    resil_pool *p = resil_dep_pool(l.v[i]);
    if (!p) continue;
    /* Never pass an unset deadline down: an expired one means "now". */
    if (resil_pool_drain(p, until) != RESIL_OK && pl < sizeof pools) {
      int n = snprintf(pools + pl, sizeof pools - pl, "%s%s", pl ? ", " : "",
                       resil_dep_name(l.v[i]));
      if (n > 0) pl += (size_t)n;
    }
  }
  free(l.v);

  /* 5. Last EMF interval. */
  if (resil_emf_running()) resil_emf_flush(NULL);

  if (busy)
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "drain: %llu call%s still in flight at the deadline: %s%s%s",
                         (unsigned long long)busy, busy == 1 ? "" : "s", where,
                         pl ? "; pools with borrowed connections: " : "", pools);
  if (pl)
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "drain: pools still had borrowed connections at the deadline: %s",
                         pools);
  return RESIL_OK;
}

/* ---- SIGTERM ------------------------------------------------------------- */

static _Atomic int sig_flag;
static _Atomic int sig_wfd = -1, sig_rfd = -1;
static pthread_mutex_t sig_mu = PTHREAD_MUTEX_INITIALIZER;

#if ATOMIC_INT_LOCK_FREE != 2
#error "the SIGTERM handler needs lock-free atomic int"
#endif

static void on_sigterm(int sig) {
  (void)sig;
  int saved = errno;
  atomic_store(&sig_flag, 1);
  int fd = atomic_load(&sig_wfd);
  if (fd >= 0) {
    char c = 1;
    ssize_t r = write(fd, &c, 1); /* non-blocking: a full pipe is already readable */
    (void)r;
  }
  errno = saved;
}

resil_status resil_sigterm_install(resil_err *err) {
  pthread_mutex_lock(&sig_mu);
  if (atomic_load(&sig_rfd) >= 0) {
    pthread_mutex_unlock(&sig_mu);
    return RESIL_OK;
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    int e = errno;
    pthread_mutex_unlock(&sig_mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "sigterm: pipe2: %s", strerror(e));
  }
  atomic_store(&sig_wfd, fds[1]);
  atomic_store(&sig_rfd, fds[0]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(SIGTERM, &sa, NULL) != 0) {
    int e = errno;
    atomic_store(&sig_rfd, -1);
    atomic_store(&sig_wfd, -1);
    close(fds[0]);
    close(fds[1]);
    pthread_mutex_unlock(&sig_mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "sigterm: sigaction: %s", strerror(e));
  }
  pthread_mutex_unlock(&sig_mu);
  return RESIL_OK;
}

bool resil_sigterm_received(void) { return atomic_load(&sig_flag) != 0; }

int resil_sigterm_fd(void) { return atomic_load(&sig_rfd); }

bool resil_sigterm_wait(resil_deadline deadline) {
  resil_deadline until = or_in_ms(deadline, 1000);
  while (!resil_sigterm_received()) {
    int64_t left = resil_deadline_remaining_ms(until);
    if (left <= 0) break;
    int ms = left > 100 ? 100 : (int)left;
    int fd = atomic_load(&sig_rfd);
    if (fd >= 0) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, ms) < 0 && errno != EINTR) nap_ms((unsigned)ms);
    } else {
      nap_ms((unsigned)ms);
    }
  }
  return resil_sigterm_received();
}
