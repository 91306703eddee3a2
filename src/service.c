/* The start-up/shut-down glue for an ECS-style service: configuration,
 * dependencies, metric labels, background pre-warm, admin endpoint, EMF and
 * SIGTERM, in one call each way. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "resil/admin.h"
#include "resil/emf.h"
#include "resil/lifecycle.h"
#include "resil/service.h"
#include "internal.h"

typedef struct svc_dep {
  const char *name;
  const resil_config_kind *kind;
  void *handle;
  resil_dep *dep;
} svc_dep;

/* The event log: where and how to write. */
typedef struct evlog {
  bool json;
  int fd;      /* stderr, or our own non-blocking descriptor of its pipe */
  bool own_fd; /* fd is ours to close */
  bool sock;   /* stderr is a socket: send(MSG_DONTWAIT) */
  bool poll;   /* a pipe we could not reopen: write only when poll says so */
} evlog;

struct resil_service {
  resil_config *cfg;
  evlog log;
  bool log_on;
  svc_dep *deps;
  size_t n;
  bool admin, emf;
  pthread_t warm_thread;
  bool warm_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stopping;
};

static _Atomic bool running;

/* ---- the event log ----------------------------------------------------------
 * One line per event on stderr, never blocking the thread that made the
 * change (a caller's, on a trip). A pipe (the usual stderr of a container)
 * is reopened through /proc/self/fd/2 as a separate open file with
 * O_NONBLOCK - the process's own stderr stays as it was - and a line (at
 * most 1 KiB, below PIPE_BUF) is written whole or not at all; a socket gets
 * send(MSG_DONTWAIT); a file or terminal is written directly. A line that
 * cannot be written at once is dropped and counted
 * (resil_event_log_dropped_total). SIGPIPE is never raised. */
static _Atomic uint64_t evlog_dropped;

uint64_t resil__event_log_dropped(void) { return atomic_load(&evlog_dropped); }

static void evlog_open(evlog *l, bool json) {
  memset(l, 0, sizeof *l);
  l->json = json;
  l->fd = STDERR_FILENO;
  struct stat st;
  if (fstat(STDERR_FILENO, &st) != 0) return;
  if (S_ISFIFO(st.st_mode)) {
    int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
      l->fd = fd;
      l->own_fd = true;
    } else {
      l->poll = true;
    }
  } else if (S_ISSOCK(st.st_mode)) {
    l->sock = true;
  }
}

static void evlog_close(evlog *l) {
  if (l->own_fd) close(l->fd);
  l->own_fd = false;
}

/* Write one line in one go, or not at all (false). */
static bool evlog_write(const evlog *l, const char *buf, size_t len) {
  ssize_t n;
  if (l->sock) {
    n = send(l->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    return n == (ssize_t)len;
  }
  if (l->poll) {
    struct pollfd p = {.fd = l->fd, .events = POLLOUT, .revents = 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT)) return false;
  }
  /* A reader that went away gives EPIPE and a SIGPIPE: block it, and take
   * it back if we raised it. */
  sigset_t pipe_set, old, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
  do {
    n = write(l->fd, buf, len);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    sigtimedwait(&pipe_set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return n == (ssize_t)len;
}

static void evlog_hook(void *ctx, const resil_event *ev) {
  const evlog *l = ctx;
  char line[1024];
  size_t n = resil_event_format(ev, l->json, line, sizeof line);
  if (!n || !evlog_write(l, line, n)) atomic_fetch_add(&evlog_dropped, 1);
}

static resil_status admin_config_json(void *ctx, char **out) {
  *out = resil_config_dump_json(ctx);
  return *out ? RESIL_OK : RESIL_E_NOMEM;
}

/* Pre-warm in the background until every pool is warm or we stop: each
 * attempt is bounded by RESIL_PREWARM_TIMEOUT_MS, with a pause between. */
static void *warm_loop(void *arg) {
  resil_service *s = arg;
  uint32_t bound = resil_config_service(s->cfg)->prewarm_timeout_ms;
  for (;;) {
    resil_err err;
    resil_status st = resil_prewarm_all(resil_deadline_in_ms(bound), &err);
    pthread_mutex_lock(&s->mu);
    if (st == RESIL_OK || s->stopping) {
      pthread_mutex_unlock(&s->mu);
      return NULL;
    }
    resil_deadline pause = resil_deadline_in_ms(1000);
    while (!s->stopping && !resil_deadline_expired(pause))
      resil__cond_wait_until(&s->cv, &s->mu, pause);
    bool stop = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stop) return NULL;
  }
}

static void destroy_deps(resil_service *s) {
  for (size_t i = s->n; i-- > 0;)
    if (s->deps[i].handle && s->deps[i].kind->destroy) s->deps[i].kind->destroy(s->deps[i].handle);
  free(s->deps);
  s->deps = NULL;
  s->n = 0;
}

static void teardown(resil_service *s) {
  if (s->warm_started) {
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->warm_thread, NULL);
  }
  if (s->emf) resil_emf_stop();
  if (s->admin) resil_admin_stop();
  destroy_deps(s);
  if (s->log_on) {
    resil_set_event_hook(NULL, NULL); /* waits for a line being written */
    evlog_close(&s->log);
    s->log_on = false;
  }
  resil_config_free(s->cfg);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
  atomic_store(&running, false);
}

resil_status resil_service_start(char *const *envp, resil_service **out, char **report,
                                 resil_err *err) {
  if (report) *report = NULL;
  if (!out) return resil_err_set(err, RESIL_E_INVALID, "service: out is NULL");
  *out = NULL;
  bool expected = false;
  if (!atomic_compare_exchange_strong(&running, &expected, true))
    return resil_err_set(err, RESIL_E_INVALID, "service: one is already running in this process");
  resil_service *s = calloc(1, sizeof *s);
  if (!s) {
    atomic_store(&running, false);
    return resil_err_set(err, RESIL_E_NOMEM, "service: out of memory");
  }
  pthread_mutex_init(&s->mu, NULL);
  resil__cond_init(&s->cv);
  resil_drain_reset(); /* a previous service in this process may have drained */
  resil_status st = resil_config_load(envp, NULL, &s->cfg, report, err);
  if (st != RESIL_OK) {
    teardown(s);
    return st;
  }
  const resil_service_config *sc = resil_config_service(s->cfg);
  if (strcmp(sc->event_log, "off") != 0) {
    evlog_open(&s->log, strcmp(sc->event_log, "json") == 0);
    resil_set_event_hook(evlog_hook, &s->log);
    s->log_on = true;
  }
  /* The loader checked RESIL_SERVICE against the label's limits. */
  if ((st = resil_export_set_info_label("config_hash", resil_config_hash(s->cfg), err)) !=
          RESIL_OK ||
      (st = resil_export_set_info_label("service", sc->service, err)) != RESIL_OK) {
    teardown(s);
    return st;
  }

  size_t n = resil_config_count(s->cfg);
  s->deps = calloc(n ? n : 1, sizeof *s->deps);
  if (!s->deps) {
    teardown(s);
    return resil_err_set(err, RESIL_E_NOMEM, "service: out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    const resil_config_kind *k = resil_config_kind_of(s->cfg, i);
    svc_dep *d = &s->deps[i];
    d->name = resil_config_name(s->cfg, i);
    d->kind = k;
    if (!k->create || !k->dep_of) {
      teardown(s);
      return resil_err_set(err, RESIL_E_INVALID,
                           "service: kind '%s' of dependency %s cannot create dependencies",
                           k->name, resil_config_name(s->cfg, i));
    }
    d->handle = k->create(resil_config_get(s->cfg, i), err);
    if (!d->handle) {
      teardown(s);
      return err ? err->status : RESIL_E_INVALID;
    }
    s->n = i + 1;
    d->dep = k->dep_of(d->handle);
  }

  if (pthread_create(&s->warm_thread, NULL, warm_loop, s) != 0) {
    teardown(s);
    return resil_err_set(err, RESIL_E_SYSTEM, "service: cannot start the pre-warm thread");
  }
  s->warm_started = true;

  if (sc->admin_port) {
    resil_admin_config ac;
    resil__service_admin_config(sc, &ac); /* as validated by the loader */
    ac.config_json_fn = admin_config_json;
    ac.config_ctx = s->cfg;
    resil_err e;
    if ((st = resil_admin_start(&ac, &e)) != RESIL_OK) { /* e.g. the port is taken */
      resil_err_set(err, st, "RESIL_ADMIN_ADDR=%s RESIL_ADMIN_PORT=%u: %s", sc->admin_addr,
                    sc->admin_port, e.msg);
      teardown(s);
      return st;
    }
    s->admin = true;
  }
  if (sc->emf_interval_ms) {
    resil_emf_config ec;
    resil__service_emf_config(sc, &ec); /* as validated by the loader */
    if ((st = resil_emf_start(&ec, err)) != RESIL_OK) {
      teardown(s);
      return st;
    }
    s->emf = true;
  }
  if ((st = resil_sigterm_install(err)) != RESIL_OK) {
    teardown(s);
    return st;
  }
  *out = s;
  return RESIL_OK;
}

static const svc_dep *find(const resil_service *s, const char *name) {
  for (size_t i = 0; s && name && i < s->n; i++)
    if (strcmp(s->deps[i].name, name) == 0) return &s->deps[i];
  return NULL;
}

void *resil_service_get(const resil_service *s, const char *name, const char *kind) {
  const svc_dep *d = find(s, name);
  if (!d || (kind && strcmp(d->kind->name, kind) != 0)) return NULL;
  return d->handle;
}

resil_dep *resil_service_dep(const resil_service *s, const char *name) {
  const svc_dep *d = find(s, name);
  return d ? d->dep : NULL;
}

const resil_config *resil_service_get_config(const resil_service *s) { return s ? s->cfg : NULL; }

uint16_t resil_service_admin_port(const resil_service *s) {
  return s && s->admin ? resil_admin_port() : 0;
}

bool resil_service_wait(resil_service *s, resil_deadline deadline) {
  (void)s;
  return resil_sigterm_wait(deadline);
}

resil_status resil_service_stop(resil_service *s, resil_err *err) {
  if (!s) return RESIL_OK;
  const resil_service_config *sc = resil_config_service(s->cfg);
  resil_status st =
      resil_drain(sc->drain_grace_ms, resil_deadline_in_ms(sc->drain_timeout_ms), err);
  teardown(s);
  return st;
}
