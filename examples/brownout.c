/* brownout: the same workload, side by side, with resil and without.
 *
 * A dependency goes through six phases - healthy (~1 ms), brownout (its
 * latency jumps to seconds), saturated (it serves 2 at once and queues the
 * rest), partial (60% of answers are errors), a 22 s outage (it answers
 * fast, but only with errors) and recovery - while three sets of worker
 * threads call three independent copies of it at the same offered rate:
 *
 *   resil   every request has a 200 ms deadline and goes through resil:
 *           circuit breaker with recovery probes, adaptive concurrency limit
 *           (gradient), client-side throttling, bounded connection pool,
 *           retries of idempotent work within a retry budget;
 *   static  the same with a static concurrency limit;
 *   naive   the request is sent with a driver's default-ish timeout (30 s)
 *           and nothing else.
 *
 * The dependency (--backend):
 *   http  (the default when built with resil-http) a real HTTP/1.1 server
 *         running in this process on 127.0.0.1, one per side, each a small
 *         pool of server threads; the scenario sets its latency and error
 *         rate per phase (errors are 503s). The resil side calls it with
 *         resil_http_get() and a per-request deadline; the naive side with
 *         one plain libcurl easy handle per worker thread, CURLOPT_TIMEOUT
 *         30 s and curl's defaults otherwise.
 *   sim   simulated in-process (the default without libcurl): a request "is
 *         served" by sleeping for the phase's latency and failing at its
 *         error rate; like a driver with a timeout it never sleeps past the
 *         deadline it is given. The resil side goes through resil_dep_call().
 * Both sit behind struct backend_ops below; nothing else depends on which.
 *
 * --with-servers (off by default) adds a section after the table: for Redis
 * and PostgreSQL 15, when the adapter is built and the server installed, a
 * throwaway server on 127.0.0.1 is stalled for real (SIGSTOP, then SIGCONT)
 * while resil and the raw driver (no timeout) call it (see
 * run_servers_section()); otherwise it says what it skips.
 *
 * At the end it prints one row per phase and side, a short summary computed
 * from those numbers, and writes what resil exported: the Prometheus text
 * and JSON snapshot (brownout-metrics.prom / .json) and the CloudWatch EMF
 * lines of each phase (brownout-metrics.emf) in --out-dir, and the run's
 * timeline per 100 ms (brownout-timeline.tsv, brownout-phases.tsv) that
 * scripts/demo-plot.gp draws as brownout.png.
 *
 * Every wait is bounded. Naive calls may be "stuck" for seconds - that is
 * the point - but the dependency never holds a request for more than 0.4 s
 * (twice the resil deadline) past the end of the phase schedule: it then
 * "shuts down", closing its connections, and the stuck calls fail. So the
 * program always ends, every thread is joined and every socket closed.
 *
 * Build: meson compile -C build brownout; run: build/examples/brownout --help
 */
#include <resil/adapter.h> /* resil_err_set: the simulated dependency fills resil_attempt.err */
#include <resil/resil.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef BROWNOUT_HAVE_HTTP
#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <resil/http.h>
#include <sys/socket.h>
#endif

#if defined(BROWNOUT_HAVE_REDIS) || defined(BROWNOUT_HAVE_PG)
#define BROWNOUT_HAVE_SERVERS 1 /* --with-servers has something to run */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#endif
#ifdef BROWNOUT_HAVE_REDIS
#include <hiredis/hiredis.h>
#include <resil/redis.h>
#endif
#ifdef BROWNOUT_HAVE_PG
#include <libpq-fe.h>
#include <pwd.h>
#include <resil/pg.h>
#endif

/* ---- The scenario -------------------------------------------------------- */

#define NPHASES 6
enum { PH_HEALTHY, PH_BROWNOUT, PH_SATURATED, PH_PARTIAL, PH_OUTAGE, PH_RECOVERY };

/* How the dependency behaves in one phase. */
typedef struct phase_spec {
  const char *name;
  uint64_t lat_min_us, lat_max_us; /* latency, uniform in [min, max] */
  double error_rate;               /* 0..1: share answered with an error */
  unsigned serve_max;              /* > 0: serves at most this many at once, queues the rest */
  unsigned tenths;                 /* length: tenths of --phase-seconds */
  const char *story;               /* one line for people */
  const char *brief;               /* a few words */
} phase_spec;

/* Default run (--phase-seconds 10): 6 + 8 + 12 + 12 + 22 + 20 = 80 s. The
 * outage lasts over 20 s so that the breaker's break has grown (5 -> 10 ->
 * 20 s) when the dependency heals: the recovery probes end it. */
static const phase_spec PHASES[NPHASES] = {
    {"healthy", 500, 1500, 0.01, 0, 6, "latency ~1 ms, 1% errors", "~1 ms, 1% errors"},
    {"brownout", 2000000, 4000000, 0.0, 0, 8, "latency 2-4 s, no errors", "2-4 s"},
    {"saturated", 36000, 44000, 0.0, 2, 12,
     "serves 2 at once (~40 ms each, ~50/s), queues the rest", "2 at once, queue"},
    {"partial", 500, 1500, 0.60, 0, 12, "latency ~1 ms, 60% errors", "60% errors"},
    {"outage", 1000, 2000, 1.0, 0, 22, "answers in ~1 ms, every answer an error", "fast 503s"},
    {"recovery", 500, 1500, 0.01, 0, 20, "latency ~1 ms, 1% errors (healed)", "~1 ms"},
};
#define TOTAL_TENTHS 80u

#define DEADLINE_MS 200u              /* resil side: per request */
#define NAIVE_DRIVER_TIMEOUT_MS 30000 /* naive side: a typical driver default */
#define STUCK_NS 1000000000ull        /* in one call for >= 1 s = stuck */
#define DEFAULT_PHASE_S 10
#define QUICK_PHASE_S 2
#define DEFAULT_WORKERS 16
#define DEFAULT_RATE 800 /* requests/s offered to each side */
#define MAX_TRANSITIONS 4096

/* resil with every feature on (adaptive limit, throttling, probes); the same
 * with a static limit; the naive client. */
enum { SIDE_RESIL, SIDE_STATIC, SIDE_NAIVE, NSIDES };
#define FR_BITS 6 /* bits of a status in first_reject */
_Static_assert(RESIL_STATUS_COUNT_ <= (1 << FR_BITS), "a status must fit in FR_BITS bits (first_reject)");
static const char *const SIDE_NAME[NSIDES] = {"resil", "static", "naive"};

/* ---- Small helpers ------------------------------------------------------- */

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Uniform in [0, 1). */
static double rand01(uint64_t *s) { return (double)(xorshift(s) >> 11) / 9007199254740992.0; }

/* Sleep until the monotonic instant at_ns (resil's clock is CLOCK_MONOTONIC). */
static void sleep_until_ns(uint64_t at_ns) {
  struct timespec ts = {.tv_sec = (time_t)(at_ns / 1000000000ull),
                        .tv_nsec = (long)(at_ns % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* "1.2 s", "201 ms", "3.4 ms", "87 us". */
static const char *fmt_dur(char *buf, size_t n, uint64_t ns) {
  double us = (double)ns / 1e3;
  if (us < 1000.0)
    snprintf(buf, n, "%.0f us", us);
  else if (us < 10000.0)
    snprintf(buf, n, "%.1f ms", us / 1e3);
  else if (us < 1e6)
    snprintf(buf, n, "%.0f ms", us / 1e3);
  else
    snprintf(buf, n, "%.1f s", us / 1e6);
  return buf;
}

/* 12345 -> "12,345". */
static const char *fmt_count(char *buf, size_t n, uint64_t v) {
  char tmp[32];
  int len = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
  size_t o = 0;
  for (int i = 0; i < len && o + 1 < n; i++) {
    if (i > 0 && (len - i) % 3 == 0 && o + 2 < n) buf[o++] = ',';
    buf[o++] = tmp[i];
  }
  buf[o] = '\0';
  return buf;
}

/* ---- A saturated dependency: at most N served at once ----------------------- */

/* The "saturated" phase: the dependency serves at most serve_max requests at
 * once and the rest wait their turn. A request served keeps its slot for its
 * whole service time even if the caller gave up meanwhile (the work is done
 * anyway), so a queue longer than the callers' deadline wastes the capacity
 * on answers nobody reads. */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned busy;
} gate;

static void gate_init(gate *g) {
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  g->busy = 0;
}

static void gate_destroy(gate *g) {
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
}

/* Take a slot, waiting until until_ns at most. false: none by then. */
static bool gate_enter(gate *g, unsigned max, uint64_t until_ns) {
  pthread_mutex_lock(&g->mu);
  for (;;) {
    if (g->busy < max) {
      g->busy++;
      pthread_mutex_unlock(&g->mu);
      return true;
    }
    if (resil_now_ns() >= until_ns) break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 5000000; /* look at the clock every 5 ms */
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&g->cv, &g->mu, &ts);
  }
  pthread_mutex_unlock(&g->mu);
  return false;
}

static void gate_leave(gate *g) {
  pthread_mutex_lock(&g->mu);
  g->busy--;
  pthread_cond_signal(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* ---- The dependency, behind an interface ---------------------------------- */

/* What the demo needs from a dependency: one copy of it per side (open),
 * told how to behave per phase (set_phase); a resil client over it, shared
 * by the resil side's workers; and a plain client per naive worker. The
 * requests must honour their deadline or timeout like a real driver. */
typedef struct backend_ops {
  const char *name; /* the --backend value */
  /* shutdown_ns: no request is held past this instant. */
  void *(*open)(uint64_t shutdown_ns, resil_err *err);
  /* Stops the dependency; no client may still be calling it. */
  void (*close)(void *b);
  void (*set_phase)(void *b, const phase_spec *ph);
  /* One line for the header about the copy b ("HTTP server on ..."). */
  void (*describe)(void *b, char *buf, size_t n);
  /* The resil side's client over b, configured by cfg; *dep gets the
   * resil_dep it goes through (for stats and breaker state). */
  void *(*resil_open)(void *b, const resil_dep_config *cfg, resil_dep **dep, resil_err *err);
  void (*resil_close)(void *client);
  /* One request through resil. *sent: attempts that went to the dependency
   * (retries included). rng is the calling thread's. */
  resil_status (*resil_request)(void *client, resil_deadline deadline, uint64_t *rng,
                                unsigned *sent, resil_err *err);
  /* A naive client for one worker thread, and one request with its timeout. */
  void *(*naive_open)(void *b, resil_err *err);
  void (*naive_close)(void *client);
  resil_status (*naive_request)(void *client, uint64_t *rng, resil_err *err);
  const char *resil_desc; /* how the resil side calls it */
  const char *naive_desc; /* how the naive side calls it */
} backend_ops;

/* ---- The simulated dependency ----------------------------------------------- */

typedef struct sim_backend {
  _Atomic(const phase_spec *) phase;
  uint64_t shutdown_ns;
  gate g;
} sim_backend;

static void *sim_open(uint64_t shutdown_ns, resil_err *err) {
  sim_backend *s = calloc(1, sizeof *s);
  if (!s) {
    resil_err_set(err, RESIL_E_NOMEM, "simulated dependency: out of memory");
    return NULL;
  }
  atomic_init(&s->phase, &PHASES[PH_HEALTHY]);
  s->shutdown_ns = shutdown_ns;
  gate_init(&s->g);
  return s;
}

static void sim_close(void *b) {
  sim_backend *s = b;
  gate_destroy(&s->g);
  free(s);
}

static void sim_set_phase(void *b, const phase_spec *ph) {
  atomic_store(&((sim_backend *)b)->phase, ph);
}

static void sim_describe(void *b, char *buf, size_t n) {
  (void)b;
  snprintf(buf, n, "simulated in this process");
}

static resil_status sim_request(void *b, resil_deadline deadline, uint64_t *rng, resil_err *err) {
  sim_backend *s = b;
  const phase_spec *ph = atomic_load(&s->phase);
  uint64_t start = resil_now_ns();
  double span = (double)(ph->lat_max_us - ph->lat_min_us);
  uint64_t lat_ns = (ph->lat_min_us + (uint64_t)(rand01(rng) * span)) * 1000ull;
  bool fail = rand01(rng) < ph->error_rate;
  /* Saturated: wait for a slot (a caller gives up at its deadline). */
  bool slot = false;
  if (ph->serve_max) {
    uint64_t until = min_u64(deadline.at_ns, s->shutdown_ns);
    if (!gate_enter(&s->g, ph->serve_max, until))
      return resil_err_set(err, resil_now_ns() >= s->shutdown_ns ? RESIL_E_FAILURE : RESIL_E_TIMEOUT,
                           "simulated dependency: still queued at the deadline");
    slot = true;
    start = resil_now_ns();
  }
  uint64_t end = start + lat_ns;
  /* A driver with a timeout gives up at the deadline. An unset deadline
   * would be "no timeout": the caller always passes one. */
  bool timed_out = resil_deadline_is_set(deadline) && deadline.at_ns < end;
  if (timed_out) end = deadline.at_ns;
  bool shut = end > s->shutdown_ns;
  if (shut) end = s->shutdown_ns;
  if (end > start) sleep_until_ns(end);
  if (slot) gate_leave(&s->g);
  if (shut)
    return resil_err_set(err, RESIL_E_FAILURE,
                         "simulated dependency: connection closed at shutdown");
  if (timed_out)
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "simulated dependency: no answer within %" PRIu64 " ms",
                         (end - start + 999999) / 1000000);
  if (fail)
    return resil_err_set(err, RESIL_E_FAILURE, "simulated dependency: 503 Service Unavailable");
  return RESIL_OK;
}

typedef struct sim_resil {
  sim_backend *s;
  resil_dep *dep;
  uint64_t probe_rng; /* the recovery probe's (one probe at a time) */
} sim_resil;

/* The recovery probe (resil_dep_set_probe): one request to the simulated
 * dependency while the breaker is open. The HTTP backend gets its probe
 * from the adapter (a GET of the base URL). */
static resil_status sim_probe(void *ctx, resil_deadline deadline, resil_err *err) {
  sim_resil *c = ctx;
  return sim_request(c->s, deadline, &c->probe_rng, err);
}

static void *sim_resil_open(void *b, const resil_dep_config *cfg, resil_dep **dep,
                            resil_err *err) {
  sim_resil *c = calloc(1, sizeof *c);
  if (!c) {
    resil_err_set(err, RESIL_E_NOMEM, "out of memory");
    return NULL;
  }
  c->s = b;
  if (!(c->dep = resil_dep_new(cfg, err))) {
    free(c);
    return NULL;
  }
  c->probe_rng = 0x9e3779b97f4a7c15ull;
  if (resil_dep_set_probe(c->dep, sim_probe, c) != RESIL_OK) {
    resil_err_set(err, RESIL_E_SYSTEM, "cannot start the recovery probe");
    resil_dep_free(c->dep);
    free(c);
    return NULL;
  }
  *dep = c->dep;
  return c;
}

static void sim_resil_close(void *client) {
  sim_resil *c = client;
  if (!c) return;
  resil_dep_free(c->dep);
  free(c);
}

typedef struct sim_attempt_ctx {
  sim_backend *s;
  uint64_t *rng;
  unsigned sent;
} sim_attempt_ctx;

/* One attempt through resil: the deadline is the permit's. */
static resil_status sim_attempt(void *ctx, resil_attempt *a) {
  sim_attempt_ctx *x = ctx;
  x->sent++;
  return sim_request(x->s, a->deadline, x->rng, a->err);
}

static resil_status sim_resil_request(void *client, resil_deadline deadline, uint64_t *rng,
                                      unsigned *sent, resil_err *err) {
  sim_resil *c = client;
  sim_attempt_ctx x = {c->s, rng, 0};
  resil_status st = resil_dep_call(c->dep, deadline, RESIL_CALL_IDEMPOTENT, sim_attempt, &x, err);
  *sent = x.sent;
  return st;
}

static void *sim_naive_open(void *b, resil_err *err) {
  (void)err;
  return b;
}

static void sim_naive_close(void *client) { (void)client; }

static resil_status sim_naive_request(void *client, uint64_t *rng, resil_err *err) {
  return sim_request(client, resil_deadline_in_ms(NAIVE_DRIVER_TIMEOUT_MS), rng, err);
}

static const backend_ops SIM_BACKEND = {
    .name = "sim",
    .open = sim_open,
    .close = sim_close,
    .set_phase = sim_set_phase,
    .describe = sim_describe,
    .resil_open = sim_resil_open,
    .resil_close = sim_resil_close,
    .resil_request = sim_resil_request,
    .naive_open = sim_naive_open,
    .naive_close = sim_naive_close,
    .naive_request = sim_naive_request,
    .resil_desc = "resil_dep_call() around the simulated request",
    .naive_desc = "a simulated driver call with a 30 s timeout",
};

#ifdef BROWNOUT_HAVE_HTTP
/* ---- The HTTP dependency: a real server on loopback ------------------------ */

/* A minimal HTTP/1.1 server: a fixed pool of threads, each taking one
 * connection from the shared listening socket and serving its requests
 * (keep-alive) until the client closes it, then taking the next. Any
 * request is answered after the phase's latency, with 200 "ok" or, at the
 * phase's error rate, 503. A request held past shutdown_ns is cut: the
 * connection closes without an answer, as a server that goes away does.
 * Every wait also watches a stop pipe, so close() ends every thread at once
 * and joins it. The server notices a client that hangs up mid-request
 * (POLLRDHUP) and drops the request, like most servers' I/O loops do. */

#define HTTP_MAX_HEAD 8192

typedef struct http_server {
  int lfd;
  int stop_pipe[2];
  unsigned port;
  uint64_t shutdown_ns;
  _Atomic(const phase_spec *) phase;
  _Atomic uint64_t seq; /* seeds each thread's rng */
  unsigned nthreads, started;
  pthread_t *threads;
  char base_url[64];
  gate g;
} http_server;

/* Server threads per copy: enough for every client connection at once
 * (resil's pool is smaller than the worker count, naive has one per
 * worker) plus some in transit while resil replaces a broken one. */
static unsigned g_server_threads = 24;

static bool srv_stopping(const http_server *s) {
  struct pollfd p = {.fd = s->stop_pipe[0], .events = POLLIN};
  return poll(&p, 1, 0) > 0;
}

/* Wait for events on fd for at most timeout_ms (-1: no limit). 1: ready;
 * 0: timed out; -1: the server is stopping, or an error. */
static int srv_wait(const http_server *s, int fd, short events, int timeout_ms) {
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = s->stop_pipe[0], .events = POLLIN}};
    int r = poll(p, 2, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[1].revents) return -1;
    return r > 0;
  }
}

/* Hold a request until at_ns. false: the client hung up, the server is
 * stopping, or at_ns is past the shutdown (then it waited until then). */
static bool srv_hold(const http_server *s, int fd, uint64_t at_ns) {
  bool shut = at_ns > s->shutdown_ns;
  if (shut) at_ns = s->shutdown_ns;
  for (;;) {
    uint64_t now = resil_now_ns();
    if (now >= at_ns) return !shut;
    uint64_t ms = (at_ns - now + 999999) / 1000000;
    struct pollfd p[2] = {{.fd = fd, .events = POLLRDHUP},
                          {.fd = s->stop_pipe[0], .events = POLLIN}};
    int r = poll(p, 2, ms > 60000 ? 60000 : (int)ms);
    if (r < 0 && errno == EINTR) continue;
    if (r != 0) return false; /* hang-up, stop or error */
  }
}

static bool srv_send(const http_server *s, int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
    if (w > 0) {
      buf += w;
      n -= (size_t)w;
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (srv_wait(s, fd, POLLOUT, 1000) != 1) return false;
    } else {
      return false;
    }
  }
  return true;
}

/* Serve one connection until it closes (or the server stops). */
static void srv_conn(http_server *s, int fd, uint64_t *rng) {
  char buf[HTTP_MAX_HEAD + 1];
  size_t len = 0;
  for (;;) {
    char *end;
    buf[len] = '\0';
    while (!(end = strstr(buf, "\r\n\r\n"))) {
      if (len == HTTP_MAX_HEAD) return; /* too large: hang up */
      ssize_t r = recv(fd, buf + len, HTTP_MAX_HEAD - len, 0);
      if (r > 0) {
        len += (size_t)r;
        buf[len] = '\0';
      } else if (r == 0) {
        return; /* the client closed it */
      } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (srv_wait(s, fd, POLLIN, -1) != 1) return;
      } else {
        return;
      }
    }
    size_t head = (size_t)(end - buf) + 4;
    /* Only GETs without a body are sent here; "Connection: close" ends it. */
    bool keep = strncmp(buf, "GET ", 4) == 0 && !strstr(buf, "\nConnection: close") &&
                !strstr(buf, "\nconnection: close");
    memmove(buf, buf + head, len - head);
    len -= head;
    if (!keep) {
      static const char bad[] =
          "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      srv_send(s, fd, bad, sizeof bad - 1);
      return;
    }
    const phase_spec *ph = atomic_load(&s->phase);
    double span = (double)(ph->lat_max_us - ph->lat_min_us);
    uint64_t lat_ns = (ph->lat_min_us + (uint64_t)(rand01(rng) * span)) * 1000ull;
    bool fail = rand01(rng) < ph->error_rate;
    if (ph->serve_max) {
      /* Queue for a slot, then do the work even if the client left. */
      if (!gate_enter(&s->g, ph->serve_max, s->shutdown_ns)) return;
      uint64_t until = min_u64(resil_now_ns() + lat_ns, s->shutdown_ns);
      sleep_until_ns(until);
      gate_leave(&s->g);
      if (until >= s->shutdown_ns) return;
    } else if (!srv_hold(s, fd, resil_now_ns() + lat_ns)) {
      return;
    }
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 3\r\n\r\nok\n";
    static const char unavail[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                  "Content-Type: text/plain\r\nContent-Length: 12\r\n\r\n"
                                  "unavailable\n";
    if (!(fail ? srv_send(s, fd, unavail, sizeof unavail - 1)
               : srv_send(s, fd, ok, sizeof ok - 1)))
      return;
  }
}

static void *srv_thread(void *arg) {
  http_server *s = arg;
  uint64_t rng = 0x2545F4914F6CDD1Dull ^ (atomic_fetch_add(&s->seq, 1) + 1) * 0x9E3779B97F4A7C15ull;
  for (;;) {
    if (srv_wait(s, s->lfd, POLLIN, -1) != 1) break;
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue; /* another thread took it, or a transient error */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    srv_conn(s, fd, &rng);
    close(fd);
    if (srv_stopping(s)) break;
  }
  return NULL;
}

static void http_close(void *b) {
  http_server *s = b;
  if (!s) return;
  if (s->stop_pipe[1] >= 0) {
    char c = 1;
    ssize_t w = write(s->stop_pipe[1], &c, 1);
    (void)w;
  }
  for (unsigned i = 0; i < s->started; i++) pthread_join(s->threads[i], NULL);
  if (s->lfd >= 0) close(s->lfd);
  if (s->stop_pipe[0] >= 0) close(s->stop_pipe[0]);
  if (s->stop_pipe[1] >= 0) close(s->stop_pipe[1]);
  free(s->threads);
  gate_destroy(&s->g);
  free(s);
}

static void *http_open(uint64_t shutdown_ns, resil_err *err) {
  http_server *s = calloc(1, sizeof *s);
  if (!s) {
    resil_err_set(err, RESIL_E_NOMEM, "HTTP server: out of memory");
    return NULL;
  }
  s->lfd = s->stop_pipe[0] = s->stop_pipe[1] = -1;
  s->shutdown_ns = shutdown_ns;
  gate_init(&s->g);
  atomic_init(&s->phase, &PHASES[PH_HEALTHY]);
  atomic_init(&s->seq, 0);
  if (pipe2(s->stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    resil_err_set(err, RESIL_E_SYSTEM, "HTTP server: pipe: %s", strerror(errno));
    goto fail;
  }
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(s->lfd, 256) != 0 || getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0) {
    resil_err_set(err, RESIL_E_SYSTEM, "HTTP server: listen on 127.0.0.1: %s", strerror(errno));
    goto fail;
  }
  s->port = ntohs(a.sin_port);
  snprintf(s->base_url, sizeof s->base_url, "http://127.0.0.1:%u", s->port);
  s->nthreads = g_server_threads;
  if (!(s->threads = calloc(s->nthreads, sizeof *s->threads))) {
    resil_err_set(err, RESIL_E_NOMEM, "HTTP server: out of memory");
    goto fail;
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (; s->started < s->nthreads; s->started++) {
    int e = pthread_create(&s->threads[s->started], &attr, srv_thread, s);
    if (e) {
      pthread_attr_destroy(&attr);
      resil_err_set(err, RESIL_E_SYSTEM, "HTTP server: cannot start a thread: %s", strerror(e));
      goto fail;
    }
  }
  pthread_attr_destroy(&attr);
  return s;
fail:
  http_close(s);
  return NULL;
}

static void http_set_phase(void *b, const phase_spec *ph) {
  atomic_store(&((http_server *)b)->phase, ph);
}

static void http_describe(void *b, char *buf, size_t n) {
  http_server *s = b;
  snprintf(buf, n, "HTTP/1.1 server on 127.0.0.1:%u (%u threads)", s->port, s->nthreads);
}

typedef struct http_resil {
  resil_http *h;
} http_resil;

static void *http_resil_open(void *b, const resil_dep_config *cfg, resil_dep **dep,
                             resil_err *err) {
  http_server *s = b;
  http_resil *c = calloc(1, sizeof *c);
  if (!c) {
    resil_err_set(err, RESIL_E_NOMEM, "out of memory");
    return NULL;
  }
  resil_http_config hc;
  resil_http_config_init(&hc, cfg->name);
  hc.dep = *cfg;
  hc.base_url = s->base_url;
  /* One connection per call the limit lets in: the pool is never what
   * rejects here, the breaker and the limit are. */
  hc.pool.max_size = cfg->limit.max_concurrent;
  hc.connect_timeout_ms = DEADLINE_MS;
  hc.request_timeout_ms = DEADLINE_MS;
  if (!(c->h = resil_http_new(&hc, err))) {
    free(c);
    return NULL;
  }
  *dep = resil_http_dep(c->h);
  return c;
}

static void http_resil_close(void *client) {
  http_resil *c = client;
  if (!c) return;
  resil_http_free(c->h);
  free(c);
}

static resil_status http_resil_request(void *client, resil_deadline deadline, uint64_t *rng,
                                       unsigned *sent, resil_err *err) {
  (void)rng;
  http_resil *c = client;
  resil_http_response resp;
  resil_status st = resil_http_get(c->h, deadline, "/work", &resp, err);
  *sent = resp.attempts;
  resil_http_response_free(&resp);
  return st;
}

/* The naive client: one easy handle per worker, its connection reused,
 * CURLOPT_TIMEOUT 30 s, everything else curl's default (a 300 s connect
 * timeout, no low-speed limit). */
typedef struct http_naive {
  CURL *e;
  char url[80];
} http_naive;

static size_t discard_body(char *p, size_t sz, size_t n, void *ud) {
  (void)p;
  (void)ud;
  return sz * n;
}

static void *http_naive_open(void *b, resil_err *err) {
  http_server *s = b;
  http_naive *c = calloc(1, sizeof *c);
  if (!c || !(c->e = curl_easy_init())) {
    free(c);
    resil_err_set(err, RESIL_E_NOMEM, "curl_easy_init failed");
    return NULL;
  }
  snprintf(c->url, sizeof c->url, "%s/work", s->base_url);
  curl_easy_setopt(c->e, CURLOPT_URL, c->url);
  curl_easy_setopt(c->e, CURLOPT_NOSIGNAL, 1L); /* required with threads */
  curl_easy_setopt(c->e, CURLOPT_TIMEOUT, (long)(NAIVE_DRIVER_TIMEOUT_MS / 1000));
  curl_easy_setopt(c->e, CURLOPT_WRITEFUNCTION, discard_body);
  return c;
}

static void http_naive_close(void *client) {
  http_naive *c = client;
  if (!c) return;
  curl_easy_cleanup(c->e);
  free(c);
}

static resil_status http_naive_request(void *client, uint64_t *rng, resil_err *err) {
  (void)rng;
  http_naive *c = client;
  CURLcode rc = curl_easy_perform(c->e);
  if (rc != CURLE_OK)
    return resil_err_set(err, rc == CURLE_OPERATION_TIMEDOUT ? RESIL_E_TIMEOUT : RESIL_E_FAILURE,
                         "GET %s: %s (curl %d)", c->url, curl_easy_strerror(rc), (int)rc);
  long code = 0;
  curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &code);
  if (code >= 200 && code < 300) return RESIL_OK;
  return resil_err_set(err, RESIL_E_FAILURE, "GET %s: HTTP %ld", c->url, code);
}

static const backend_ops HTTP_BACKEND = {
    .name = "http",
    .open = http_open,
    .close = http_close,
    .set_phase = http_set_phase,
    .describe = http_describe,
    .resil_open = http_resil_open,
    .resil_close = http_resil_close,
    .resil_request = http_resil_request,
    .naive_open = http_naive_open,
    .naive_close = http_naive_close,
    .naive_request = http_naive_request,
    .resil_desc = "resil_http_get() with the deadline, over a pool of reused connections",
    .naive_desc = "a libcurl easy handle per worker, CURLOPT_TIMEOUT 30 s, curl defaults otherwise",
};
#define DEFAULT_BACKEND "http"
#define BACKEND_NAMES "http, sim"
#define BACKEND_NOTE ""
#else
#define DEFAULT_BACKEND "sim"
#define BACKEND_NAMES "sim"
#define BACKEND_NOTE "; built without libcurl, so no http"
#endif

static const backend_ops *find_backend(const char *name) {
  if (!strcmp(name, "sim")) return &SIM_BACKEND;
#ifdef BROWNOUT_HAVE_HTTP
  if (!strcmp(name, "http")) return &HTTP_BACKEND;
#endif
  return NULL;
}

/* ---- Run state ------------------------------------------------------------ */

typedef struct options {
  unsigned phase_s;
  unsigned workers;
  unsigned rate;
  bool quick;
  const char *out_dir;
  const char *backend;
  bool summary; /* --summary: machine-readable lines too */
  bool with_servers; /* --with-servers: the Redis section after the table */
} options;

/* Latency histogram: 100 log-spaced buckets per decade from 1 us to 100 s
 * (bucket i holds [10^(i/100), 10^((i+1)/100)) us), so quantiles are within
 * about 2% and memory stays fixed however long or fast the run. */
#define LAT_BUCKETS 801

/* What one worker saw in one phase (requests attributed to the phase they started in). */
typedef struct cell {
  uint64_t done, ok, failed, rejected, sent;
  uint64_t max_ns;
  uint64_t hist[LAT_BUCKETS];
} cell;

struct demo;

typedef struct worker {
  struct demo *demo;
  int side;
  unsigned id;
  pthread_t thread;
  bool running;
  uint64_t rng;
  void *naive; /* this worker's naive client (naive side) */
  _Atomic uint64_t call_start_ns; /* 0 when not in a call */
  cell cells[NPHASES];
} worker;

typedef struct side_state {
  void *backend;
  void *client;   /* the resil client (resil side) */
  resil_dep *dep; /* NULL for naive */
  worker *workers;
  _Atomic uint64_t live_done;
  /* First local rejection per phase: (time << FR_BITS) | status, so that one
   * compare-and-swap keeps the pair consistent; UINT64_MAX: none yet. */
  _Atomic uint64_t first_reject[NPHASES];
  /* The end of the last local rejection by the breaker or the throttle (the
   * outage's rejections; a concurrency_full is a scheduling hiccup), 0: none. */
  _Atomic uint64_t last_reject[NPHASES];
  /* Taken by the main thread at each phase's end. */
  unsigned stuck[NPHASES];
  resil_breaker_state breaker[NPHASES];
  uint64_t rejections[NPHASES][RESIL_REJECT_COUNT_];
  uint64_t retries[NPHASES];
  uint64_t prev_rejections[RESIL_REJECT_COUNT_];
  uint64_t prev_retries;
  /* The dependency's stats at the start and at each phase's end, and the
   * wall-clock time of each (for the EMF lines). */
  resil_dep_stats snap[NPHASES + 1];
  int64_t snap_ms[NPHASES + 1];
} side_state;

/* The timeline (brownout-timeline.tsv, drawn by scripts/demo-plot.gp): per
 * 100 ms of start time and per side, the outcomes and a coarse latency
 * histogram (10 buckets per decade from 10 us to 100 s), and per resil side
 * the breaker state and the limit in force, sampled by the main thread. */
#define TL_NS 100000000ull
#define TL_HB 71
typedef struct tl_cell {
  _Atomic uint32_t ok, failed, rejected;
  _Atomic uint32_t hist[TL_HB];
} tl_cell;

typedef struct transition {
  uint64_t at_ns;
  resil_breaker_state to;
  resil_trip_reason reason;
} transition;

typedef struct demo {
  options opt;
  const backend_ops *ops;
  uint64_t t0, phase_ns, interval_ns;
  _Atomic uint64_t end_ns; /* workers start no request after it */
  /* The phase the dependencies are in, set by the main thread right after
   * it switches them; requests count in the phase they started in. */
  _Atomic int cur_phase;
  uint64_t phase_start[NPHASES + 1]; /* when each phase really began; [NPHASES]: the end */
  side_state side[NSIDES];
  transition log[MAX_TRANSITIONS];
  _Atomic unsigned nlog;
  resil_breaker_config bcfg; /* as used, for the header */
  uint32_t limit;
  uint64_t phase_len[NPHASES]; /* each phase's planned length */
  unsigned tl_n;               /* timeline buckets */
  tl_cell *tl;                 /* [tl_n][NSIDES] */
  int8_t *tl_breaker;          /* [tl_n][NSIDES]: state, -1 not sampled */
  uint16_t *tl_limit;          /* [tl_n][NSIDES] */
} demo;

/* The transition log is written by whichever thread moves the breaker (a
 * caller, or the recovery probe's background thread) and read by the main
 * thread while probes may still run: under this lock. */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_transition(void *ctx, const char *name, resil_breaker_state from,
                          resil_breaker_state to, resil_trip_reason reason) {
  (void)name;
  (void)from;
  demo *d = ctx;
  pthread_mutex_lock(&g_log_mu);
  unsigned i = atomic_fetch_add(&d->nlog, 1);
  if (i < MAX_TRANSITIONS) d->log[i] = (transition){resil_now_ns(), to, reason};
  pthread_mutex_unlock(&g_log_mu);
}

static void cell_add_latency(cell *c, uint64_t ns) {
  double us = (double)ns / 1e3;
  int i = us <= 1.0 ? 0 : (int)(log10(us) * 100.0);
  c->hist[i < LAT_BUCKETS ? i : LAT_BUCKETS - 1]++;
  if (ns > c->max_ns) c->max_ns = ns;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  demo *d = w->demo;
  side_state *s = &d->side[w->side];
  /* Spread the workers' first requests over one interval. */
  uint64_t next = d->t0 + (uint64_t)(rand01(&w->rng) * (double)d->interval_ns);
  for (;;) {
    uint64_t now = resil_now_ns();
    uint64_t end_ns = atomic_load(&d->end_ns);
    if (now >= end_ns) break;
    if (now < next) {
      sleep_until_ns(min_u64(next, end_ns));
      continue;
    }
    /* Paced: one request per interval; a worker that fell behind (stuck in
     * a slow call) goes on at once, and the missed slots are lost. */
    next += d->interval_ns;
    if (next < now) next = now;

    int ph = atomic_load(&d->cur_phase);
    cell *c = &w->cells[ph];
    resil_err err;
    resil_status st;
    atomic_store(&w->call_start_ns, now);
    if (w->side != SIDE_NAIVE) {
      unsigned sent = 0;
      st = d->ops->resil_request(s->client, resil_deadline_in_ms(DEADLINE_MS), &w->rng, &sent,
                                 &err);
      c->sent += sent;
    } else {
      c->sent++;
      st = d->ops->naive_request(w->naive, &w->rng, &err);
    }
    uint64_t end = resil_now_ns();
    atomic_store(&w->call_start_ns, 0);

    c->done++;
    cell_add_latency(c, end - now);
    uint64_t tb = (now > d->t0 ? now - d->t0 : 0) / TL_NS;
    tl_cell *tc = &d->tl[(tb < d->tl_n ? tb : d->tl_n - 1) * NSIDES + (unsigned)w->side];
    double lus = (double)(end - now) / 1e3;
    int hb = lus <= 10.0 ? 0 : (int)((log10(lus) - 1.0) * 10.0);
    atomic_fetch_add_explicit(&tc->hist[hb < TL_HB ? hb : TL_HB - 1], 1, memory_order_relaxed);
    if (st == RESIL_OK) {
      c->ok++;
      atomic_fetch_add_explicit(&tc->ok, 1, memory_order_relaxed);
    } else if (resil_status_is_rejection(st)) {
      c->rejected++;
      atomic_fetch_add_explicit(&tc->rejected, 1, memory_order_relaxed);
      uint64_t mine = end << FR_BITS | (uint64_t)st, cur = atomic_load(&s->first_reject[ph]);
      while (mine < cur && !atomic_compare_exchange_weak(&s->first_reject[ph], &cur, mine)) {
      }
      uint64_t last = atomic_load(&s->last_reject[ph]);
      while ((st == RESIL_E_BREAKER_OPEN || st == RESIL_E_THROTTLED) && end > last &&
             !atomic_compare_exchange_weak(&s->last_reject[ph], &last, end)) {
      }
    } else {
      c->failed++;
      atomic_fetch_add_explicit(&tc->failed, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&s->live_done, 1, memory_order_relaxed);
  }
  return NULL;
}


static unsigned count_stuck(const demo *d, int side, uint64_t now) {
  unsigned n = 0;
  for (unsigned i = 0; i < d->opt.workers; i++) {
    uint64_t cs = atomic_load(&d->side[side].workers[i].call_start_ns);
    if (cs && now > cs && now - cs >= STUCK_NS) n++;
  }
  return n;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void snapshot_phase(demo *d, int ph) {
  uint64_t now = resil_now_ns();
  for (int k = 0; k < NSIDES; k++) {
    side_state *s = &d->side[k];
    s->stuck[ph] = count_stuck(d, k, now);
    if (!s->dep) continue;
    resil_dep_stats st;
    resil_dep_get_stats(s->dep, &st);
    s->snap[ph + 1] = st;
    s->snap_ms[ph + 1] = wall_ms();
    s->breaker[ph] = st.breaker.state;
    for (int r = 0; r < RESIL_REJECT_COUNT_; r++) {
      s->rejections[ph][r] = st.rejections[r] - s->prev_rejections[r];
      s->prev_rejections[r] = st.rejections[r];
    }
    s->retries[ph] = st.retries - s->prev_retries;
    s->prev_retries = st.retries;
  }
}

static void progress(demo *d, int ph, bool tty) {
  if (!tty) return;
  uint64_t now = resil_now_ns();
  double in = now > d->phase_start[ph] ? (double)(now - d->phase_start[ph]) / 1e9 : 0.0;
  char a[32], b[32], line[256];
  const char *br =
      resil_breaker_state_name(resil_breaker_get_state(resil_dep_breaker(d->side[SIDE_RESIL].dep)));
  /* Most telling first: a narrow terminal cuts the end. */
  snprintf(
      line, sizeof line,
      "  %d/%d %s %.1f/%us | stuck: resil %u, naive %u | breaker %s | done: resil %s, naive %s",
      ph + 1, NPHASES, PHASES[ph].name, in, d->opt.phase_s, count_stuck(d, SIDE_RESIL, now),
      count_stuck(d, SIDE_NAIVE, now), br,
      fmt_count(a, sizeof a, atomic_load(&d->side[SIDE_RESIL].live_done)),
      fmt_count(b, sizeof b, atomic_load(&d->side[SIDE_NAIVE].live_done)));
  /* Never wrap, or the carriage return can no longer rewrite the line. */
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 && ws.ws_col <= sizeof line)
    line[ws.ws_col - 1] = '\0';
  printf("\r%s\033[K", line);
  fflush(stdout);
}

/* ---- Results ---------------------------------------------------------------- */

typedef struct row {
  uint64_t done, ok, failed, rejected, sent;
  uint64_t p50, p99, max;
  double rate;
} row;

/* The q-quantile of a histogram: the middle of the bucket holding it. */
static uint64_t hist_quantile(const uint64_t *h, uint64_t n, double q) {
  if (n == 0) return 0;
  uint64_t rank = (uint64_t)(q * (double)n + 0.999999), seen = 0;
  if (rank < 1) rank = 1;
  for (int i = 0; i < LAT_BUCKETS; i++) {
    seen += h[i];
    if (seen >= rank) return (uint64_t)(pow(10.0, ((double)i + 0.5) / 100.0) * 1e3);
  }
  return 0;
}

static void make_row(const demo *d, int side, int ph, row *r) {
  static uint64_t h[LAT_BUCKETS];
  memset(r, 0, sizeof *r);
  memset(h, 0, sizeof h);
  uint64_t n = 0;
  for (unsigned i = 0; i < d->opt.workers; i++) {
    const cell *c = &d->side[side].workers[i].cells[ph];
    r->done += c->done;
    r->ok += c->ok;
    r->failed += c->failed;
    r->rejected += c->rejected;
    r->sent += c->sent;
    if (c->max_ns > r->max) r->max = c->max_ns;
    for (int b = 0; b < LAT_BUCKETS; b++) {
      h[b] += c->hist[b];
      n += c->hist[b];
    }
  }
  r->p50 = min_u64(hist_quantile(h, n, 0.50), r->max);
  r->p99 = min_u64(hist_quantile(h, n, 0.99), r->max);
  uint64_t len = d->phase_start[ph + 1] - d->phase_start[ph];
  r->rate = len ? (double)r->done / ((double)len / 1e9) : 0.0;
}

static const char *short_reason(int r) {
  switch (r) {
  case RESIL_REJECT_BREAKER_OPEN: return "open";
  case RESIL_REJECT_CONCURRENCY_FULL: return "full";
  case RESIL_REJECT_QUEUE_TIMEOUT: return "queue";
  case RESIL_REJECT_POOL_TIMEOUT: return "pool";
  case RESIL_REJECT_DEADLINE: return "deadline";
  case RESIL_REJECT_DRAINING: return "draining";
  case RESIL_REJECT_RETRY_BUDGET: return "budget";
  case RESIL_REJECT_THROTTLED: return "throttled";
  default: return "?";
  }
}

/* First transition to `to` at or after `from_ns`, or NULL. */
/* An entry, once written, is never changed: the pointer stays valid. */
static const transition *find_transition(const demo *d, resil_breaker_state to, uint64_t from_ns) {
  pthread_mutex_lock(&g_log_mu);
  unsigned n = atomic_load(&d->nlog);
  if (n > MAX_TRANSITIONS) n = MAX_TRANSITIONS;
  const transition *best = NULL;
  for (unsigned i = 0; i < n; i++)
    if (d->log[i].to == to && d->log[i].at_ns >= from_ns &&
        (!best || d->log[i].at_ns < best->at_ns))
      best = &d->log[i];
  pthread_mutex_unlock(&g_log_mu);
  return best;
}

static unsigned count_trips(const demo *d, uint64_t from_ns, uint64_t to_ns) {
  pthread_mutex_lock(&g_log_mu);
  unsigned n = atomic_load(&d->nlog), c = 0;
  if (n > MAX_TRANSITIONS) n = MAX_TRANSITIONS;
  for (unsigned i = 0; i < n; i++)
    if (d->log[i].to == RESIL_BREAKER_OPEN && d->log[i].at_ns >= from_ns && d->log[i].at_ns < to_ns)
      c++;
  pthread_mutex_unlock(&g_log_mu);
  return c;
}

static void print_table(const demo *d, row rows[NPHASES][NSIDES]) {
  char b1[32], b2[32], b3[32], b4[32], b5[32], b6[64], b7[32];
  printf("%-9s %-6s %7s %6s %6s %7s %7s %7s %5s %-13s %6s %9s  %s\n", "phase", "side", "done", "ok",
         "req/s", "p50", "p99", "max", "stuck", "breaker", "sent", "fail-fast",
         "rejected, by reason");
  for (int ph = 0; ph < NPHASES; ph++) {
    uint64_t pstart = d->phase_start[ph];
    for (int k = 0; k < NSIDES; k++) {
      const row *r = &rows[ph][k];
      const side_state *s = &d->side[k];
      char okp[16];
      if (r->done)
        snprintf(okp, sizeof okp, "%.1f%%", 100.0 * (double)r->ok / (double)r->done);
      else
        snprintf(okp, sizeof okp, "-");
      char stuck[16];
      snprintf(stuck, sizeof stuck, "%u/%u", s->stuck[ph], d->opt.workers);
      char br[40];
      if (k == SIDE_RESIL)
        snprintf(br, sizeof br, "%s (%u)", resil_breaker_state_name(s->breaker[ph]),
                 count_trips(d, pstart, d->phase_start[ph + 1]));
      else if (s->dep)
        snprintf(br, sizeof br, "%s", resil_breaker_state_name(s->breaker[ph]));
      else
        snprintf(br, sizeof br, "none");
      char ff[32];
      uint64_t fr = atomic_load(&s->first_reject[ph]);
      if (fr == UINT64_MAX)
        snprintf(ff, sizeof ff, s->dep ? "-" : "never");
      else
        fmt_dur(ff, sizeof ff, (fr >> FR_BITS) > pstart ? (fr >> FR_BITS) - pstart : 0);
      char rej[160] = "";
      if (s->dep) {
        size_t o = 0;
        for (int x = 0; x < RESIL_REJECT_COUNT_; x++) {
          if (!s->rejections[ph][x]) continue;
          int m = snprintf(rej + o, sizeof rej - o, "%s%s %s", o ? ", " : "", short_reason(x),
                           fmt_count(b6, sizeof b6, s->rejections[ph][x]));
          if (m < 0 || (size_t)m >= sizeof rej - o) break;
          o += (size_t)m;
        }
        if (!o) snprintf(rej, sizeof rej, "-");
      } else {
        snprintf(rej, sizeof rej, "-");
      }
      printf("%-9s %-6s %7s %6s %6s %7s %7s %7s %5s %-13s %6s %9s  %s\n",
             k == 0 ? PHASES[ph].name : "", SIDE_NAME[k], fmt_count(b1, sizeof b1, r->done), okp,
             fmt_count(b7, sizeof b7, (uint64_t)(r->rate + 0.5)),
             r->done ? fmt_dur(b2, sizeof b2, r->p50) : "-",
             r->done ? fmt_dur(b3, sizeof b3, r->p99) : "-",
             r->done ? fmt_dur(b5, sizeof b5, r->max) : "-", stuck, br,
             fmt_count(b4, sizeof b4, r->sent), ff, rej);
    }
  }
  printf("\n");
  printf("  done: requests started in the phase, any outcome; ok: share answered successfully;\n"
         "  p50/p99/max: latency the caller saw, all outcomes; stuck: worker threads in one\n"
         "  call for over 1 s at the phase's end; breaker: state at the phase's end (times it\n"
         "  opened in the phase); sent: requests that reached the dependency, retries included;\n"
         "  fail-fast: from the phase's start to the first local rejection; rejected: open =\n"
         "  breaker_open, full = concurrency_full, budget = retry_budget, throttled (the\n"
         "  reason labels of resil_rejections_total). resil: adaptive limit and throttling;\n"
         "  static: the same with a static limit; naive: plain client.\n");
}

/* The paragraph at the end, from the numbers only. */
static void write_summary(FILE *o, const demo *d, row rows[NPHASES][NSIDES]) {
  char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
  const side_state *rs = &d->side[SIDE_RESIL];
  const row *rb = &rows[PH_BROWNOUT][SIDE_RESIL], *nb = &rows[PH_BROWNOUT][SIDE_NAIVE];
  const row *re = &rows[PH_OUTAGE][SIDE_RESIL], *ne = &rows[PH_OUTAGE][SIDE_NAIVE];
  const row *rr = &rows[PH_RECOVERY][SIDE_RESIL], *nr = &rows[PH_RECOVERY][SIDE_NAIVE];
  uint64_t bstart = d->phase_start[PH_BROWNOUT];
  uint64_t rstart = d->phase_start[PH_RECOVERY];

  /* Failing fast. */
  uint64_t first = UINT64_MAX;
  for (int ph = PH_BROWNOUT; ph < NPHASES; ph++) {
    uint64_t t = atomic_load(&rs->first_reject[ph]);
    if (t < first) first = t;
  }
  uint64_t ff = first == UINT64_MAX ? UINT64_MAX : first >> FR_BITS;
  int ffst = (int)(first & ((1u << FR_BITS) - 1));
  const transition *open = find_transition(d, RESIL_BREAKER_OPEN, bstart);
  if (ff != UINT64_MAX) {
    fprintf(o,
            "When the dependency's latency jumped to seconds, resil began rejecting calls locally "
            "%s into the brownout (first reason: %s)",
            fmt_dur(b1, sizeof b1, ff > bstart ? ff - bstart : 0),
            resil_status_name((resil_status)ffst));
    if (open && open->at_ns < d->phase_start[PH_BROWNOUT + 1])
      fprintf(o, " and its breaker opened after %s (%s)",
              fmt_dur(b2, sizeof b2, open->at_ns - bstart), resil_trip_reason_name(open->reason));
    fprintf(o, ". ");
  } else {
    fprintf(o, "resil never rejected a call locally after the brownout began (unexpected: see the "
               "table). ");
  }
  /* Latency and threads. */
  uint64_t rmax = 0;
  unsigned rstuck = 0;
  for (int ph = 0; ph < NPHASES; ph++) {
    if (rows[ph][SIDE_RESIL].max > rmax) rmax = rows[ph][SIDE_RESIL].max;
    if (rs->stuck[ph] > rstuck) rstuck = rs->stuck[ph];
  }
  unsigned nw = d->opt.workers;
  fprintf(o,
          "No resil request took longer than %s (deadline %u ms), %u of its %u worker thread%s "
          "stuck at any phase end, and it still completed %s requests/s in the brownout, "
          "%.0f%% of them as local rejections. The naive client's p99 in the brownout was %s, "
          "%u of its %u worker thread%s stuck at the brownout's end, and it finished %s "
          "requests/s of the %s/s offered",
          fmt_dur(b1, sizeof b1, rmax), DEADLINE_MS, rstuck, nw, nw == 1 ? " was" : "s were",
          fmt_count(b4, sizeof b4, (uint64_t)(rb->rate + 0.5)),
          rb->done ? 100.0 * (double)rb->rejected / (double)rb->done : 0.0,
          fmt_dur(b2, sizeof b2, nb->p99), d->side[SIDE_NAIVE].stuck[PH_BROWNOUT], nw,
          nw == 1 ? " was" : "s were", fmt_count(b5, sizeof b5, (uint64_t)(nb->rate + 0.5)),
          fmt_count(b6, sizeof b6, d->opt.rate));
  if (nb->ok > rb->ok)
    fprintf(o, " (%s slow success%s that resil gave up on at the deadline)",
            fmt_count(b3, sizeof b3, nb->ok - rb->ok), nb->ok - rb->ok == 1 ? "" : "es");
  fprintf(o, ". ");
  /* Saturation: goodput and p99. */
  {
    const row *sr = &rows[PH_SATURATED][SIDE_RESIL], *ss = &rows[PH_SATURATED][SIDE_STATIC],
              *sn = &rows[PH_SATURATED][SIDE_NAIVE];
    double len = (double)(d->phase_start[PH_SATURATED + 1] - d->phase_start[PH_SATURATED]) / 1e9;
    fprintf(o,
            "When the dependency could serve only %u requests at once and queued the rest, resil "
            "with its adaptive limit got %.0f successes/s with p99 %s; with a static limit of %u, "
            "%.0f/s with p99 %s; the naive client %.0f/s with p99 %s. ",
            PHASES[PH_SATURATED].serve_max, len > 0 ? (double)sr->ok / len : 0.0,
            fmt_dur(b1, sizeof b1, sr->p99), d->limit, len > 0 ? (double)ss->ok / len : 0.0,
            fmt_dur(b2, sizeof b2, ss->p99), len > 0 ? (double)sn->ok / len : 0.0,
            fmt_dur(b3, sizeof b3, sn->p99));
  }
  /* Partial failure: throttling. */
  {
    const row *pr = &rows[PH_PARTIAL][SIDE_RESIL], *pn = &rows[PH_PARTIAL][SIDE_NAIVE];
    fprintf(o,
            "When 60%% of requests failed, resil (throttling) got %s successes for %s requests "
            "sent, the naive client %s for %s (%.2fx the successes for %.2fx the requests). ",
            fmt_count(b1, sizeof b1, pr->ok), fmt_count(b2, sizeof b2, pr->sent),
            fmt_count(b3, sizeof b3, pn->ok), fmt_count(b4, sizeof b4, pn->sent),
            pn->ok ? (double)pr->ok / (double)pn->ok : 0.0,
            pn->sent ? (double)pr->sent / (double)pn->sent : 0.0);
  }
  /* Load on the failing dependency. */
  if (ne->sent > 0 && re->sent < ne->sent)
    fprintf(o,
            "During the %s outage resil sent the dependency %s requests against the naive "
            "client's %s (%.1f%% as many) and answered %s locally, half of them within %s. ",
            fmt_dur(b5, sizeof b5, d->phase_start[PH_OUTAGE + 1] - d->phase_start[PH_OUTAGE]),
            fmt_count(b1, sizeof b1, re->sent), fmt_count(b2, sizeof b2, ne->sent),
            100.0 * (double)re->sent / (double)ne->sent, fmt_count(b3, sizeof b3, re->rejected),
            fmt_dur(b4, sizeof b4, re->p50));
  else
    fprintf(o, "During the outage resil sent the dependency %s requests and the naive client %s. ",
            fmt_count(b1, sizeof b1, re->sent), fmt_count(b2, sizeof b2, ne->sent));
  /* Recovery. */
  uint64_t last = atomic_load(&rs->last_reject[PH_RECOVERY]);
  if (last)
    fprintf(o, "From the heal to resil's last local rejection by its breaker or throttle: %s "
               "(the break after a failed half-open call doubles up to %u ms; the recovery "
               "probes ended it)",
            fmt_dur(b1, sizeof b1, last > rstart ? last - rstart : 0), d->bcfg.open_max_ms);
  else
    fprintf(o, "After the heal resil rejected nothing locally");
  const transition *closed = find_transition(d, RESIL_BREAKER_CLOSED, rstart);
  if (closed)
    fprintf(o, "; its breaker closed %s after the heal",
            fmt_dur(b2, sizeof b2, closed->at_ns - rstart));
  fprintf(o, ". In recovery %.1f%% of resil's requests succeeded (naive: %.1f%%)",
          rr->done ? 100.0 * (double)rr->ok / (double)rr->done : 0.0,
          nr->done ? 100.0 * (double)nr->ok / (double)nr->done : 0.0);
  fprintf(o, ".");
  /* Retries while healthy, when they helped. */
  const row *rh = &rows[PH_HEALTHY][SIDE_RESIL], *nh = &rows[PH_HEALTHY][SIDE_NAIVE];
  double rh_ok = rh->done ? 100.0 * (double)rh->ok / (double)rh->done : 0.0;
  double nh_ok = nh->done ? 100.0 * (double)nh->ok / (double)nh->done : 0.0;
  if (rs->retries[PH_HEALTHY] && rh_ok > nh_ok)
    fprintf(o,
            " While the dependency was healthy, %s retr%s within the retry budget took resil's "
            "success rate to %.1f%% (naive: %.1f%%, the dependency's 1%% of errors passed on).",
            fmt_count(b1, sizeof b1, rs->retries[PH_HEALTHY]),
            rs->retries[PH_HEALTHY] == 1 ? "y" : "ies", rh_ok, nh_ok);
  /* A bulkhead that fills while the dependency answers in ~1 ms: either the
   * offered load needs that many calls in flight (Little's law) or the
   * threads were waiting for a CPU. Say which rather than let it puzzle. */
  uint64_t hfull = rs->rejections[PH_HEALTHY][RESIL_REJECT_CONCURRENCY_FULL] +
                   rs->rejections[PH_RECOVERY][RESIL_REJECT_CONCURRENCY_FULL];
  uint64_t hdone = rh->done + rr->done;
  uint64_t nslow = nh->max > nr->max ? nh->max : nr->max;
  if (hfull) {
    double mean_in_flight = (double)d->opt.rate * 1e-3; /* rate x ~1 ms */
    fprintf(o,
            " Note: while the dependency answered in ~1 ms (healthy and recovery) resil also "
            "rejected %s request%s (%.1f%%) as concurrency_full: %u calls were in flight at "
            "once. ",
            fmt_count(b1, sizeof b1, hfull), hfull == 1 ? "" : "s",
            hdone ? 100.0 * (double)hfull / (double)hdone : 0.0, d->limit);
    if (mean_in_flight >= 0.5 * (double)d->limit)
      fprintf(o,
              "The offered %s requests/s at ~1 ms each keep about %.0f in flight on average, too "
              "close to the limit of %u (3/4 of --workers): lower --rate.",
              fmt_count(b2, sizeof b2, d->opt.rate), mean_in_flight, d->limit);
    else
      fprintf(o,
              "At ~1 ms a call that happens when threads wait for a CPU, so this machine was "
              "probably busy (the slowest naive call in those phases took %s).",
              fmt_dur(b3, sizeof b3, nslow));
  }
}

/* Print text word-wrapped to the terminal's width (at most 100 columns),
 * indented by two spaces. */
static void print_wrapped(const char *text, bool tty) {
  size_t width = 100;
  struct winsize ws;
  if (tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20 && ws.ws_col - 1u < width)
    width = ws.ws_col - 1u;
  size_t col = 0;
  const char *p = text;
  while (*p) {
    while (*p == ' ') p++;
    size_t n = strcspn(p, " ");
    if (!n) break;
    /* Keep "200 ms" together: a number and the unit after it. */
    if (p[n] == ' ' && p[n - 1] >= '0' && p[n - 1] <= '9') {
      const char *u = p + n + 1;
      size_t ul = strcspn(u, " ");
      if ((!strncmp(u, "ms", 2) || !strncmp(u, "us", 2) || !strncmp(u, "s", 1)) &&
          (ul <= 2 || u[1 + (u[0] != 's')] < 'a'))
        n += 1 + ul;
    }
    if (col && col + 1 + n > width) {
      putchar('\n');
      col = 0;
    }
    if (col == 0) {
      fputs("  ", stdout);
      col = 2;
    } else {
      putchar(' ');
      col++;
    }
    fwrite(p, 1, n, stdout);
    col += n;
    p += n;
  }
  if (col) putchar('\n');
}

static void print_summary(const demo *d, row rows[NPHASES][NSIDES], bool tty) {
  char *text = NULL;
  size_t len = 0;
  FILE *o = open_memstream(&text, &len);
  printf("Summary:\n");
  if (!o) { /* unlikely; print it unwrapped */
    write_summary(stdout, d, rows);
    putchar('\n');
    return;
  }
  write_summary(o, d, rows);
  fclose(o);
  print_wrapped(text, tty);
  free(text);
}

/* The headline figures, one line each: SUMMARY-BROWNOUT <metric> <resil>
 * <naive>, numbers in the unit the metric's name ends with, or "never". */
static void print_machine_summary(const demo *d, row rows[NPHASES][NSIDES]) {
  const row *b[2] = {&rows[PH_BROWNOUT][SIDE_RESIL], &rows[PH_BROWNOUT][SIDE_NAIVE]};
  const row *e[2] = {&rows[PH_OUTAGE][SIDE_RESIL], &rows[PH_OUTAGE][SIDE_NAIVE]};
  const row *r[2] = {&rows[PH_RECOVERY][SIDE_RESIL], &rows[PH_RECOVERY][SIDE_NAIVE]};
  const int sides[2] = {SIDE_RESIL, SIDE_NAIVE};
  printf("SUMMARY-BROWNOUT brownout.completed_req_s %.0f %.0f\n", b[0]->rate, b[1]->rate);
  printf("SUMMARY-BROWNOUT brownout.p99_ms %.1f %.1f\n", (double)b[0]->p99 / 1e6,
         (double)b[1]->p99 / 1e6);
  printf("SUMMARY-BROWNOUT brownout.max_ms %.1f %.1f\n", (double)b[0]->max / 1e6,
         (double)b[1]->max / 1e6);
  char ff[2][32];
  for (int k = 0; k < 2; k++) {
    uint64_t fr = atomic_load(&d->side[sides[k]].first_reject[PH_BROWNOUT]);
    uint64_t ps = d->phase_start[PH_BROWNOUT];
    if (fr == UINT64_MAX)
      snprintf(ff[k], sizeof ff[k], "never");
    else
      snprintf(ff[k], sizeof ff[k], "%.1f", (double)((fr >> FR_BITS) > ps ? (fr >> FR_BITS) - ps : 0) / 1e6);
  }
  printf("SUMMARY-BROWNOUT brownout.first_fast_rejection_ms %s %s\n", ff[0], ff[1]);
  printf("SUMMARY-BROWNOUT brownout.threads_stuck_at_end %u %u\n",
         d->side[SIDE_RESIL].stuck[PH_BROWNOUT], d->side[SIDE_NAIVE].stuck[PH_BROWNOUT]);
  double slen = (double)(d->phase_start[PH_SATURATED + 1] - d->phase_start[PH_SATURATED]) / 1e9;
  printf("SUMMARY-BROWNOUT saturated.goodput_req_s %.0f %.0f\n",
         (double)rows[PH_SATURATED][SIDE_RESIL].ok / slen,
         (double)rows[PH_SATURATED][SIDE_NAIVE].ok / slen);
  printf("SUMMARY-BROWNOUT saturated.p99_ms %.1f %.1f\n",
         (double)rows[PH_SATURATED][SIDE_RESIL].p99 / 1e6,
         (double)rows[PH_SATURATED][SIDE_NAIVE].p99 / 1e6);
  printf("SUMMARY-BROWNOUT partial.successes %" PRIu64 " %" PRIu64 "\n",
         rows[PH_PARTIAL][SIDE_RESIL].ok, rows[PH_PARTIAL][SIDE_NAIVE].ok);
  printf("SUMMARY-BROWNOUT partial.requests_sent %" PRIu64 " %" PRIu64 "\n",
         rows[PH_PARTIAL][SIDE_RESIL].sent, rows[PH_PARTIAL][SIDE_NAIVE].sent);
  printf("SUMMARY-BROWNOUT errors.requests_sent %" PRIu64 " %" PRIu64 "\n", e[0]->sent, e[1]->sent);
  uint64_t last = atomic_load(&d->side[SIDE_RESIL].last_reject[PH_RECOVERY]);
  uint64_t rs = d->phase_start[PH_RECOVERY];
  if (last)
    printf("SUMMARY-BROWNOUT recovery.heal_to_last_rejection_ms %.1f never\n",
           last > rs ? (double)(last - rs) / 1e6 : 0.0);
  else
    printf("SUMMARY-BROWNOUT recovery.heal_to_last_rejection_ms never never\n");
  printf("SUMMARY-BROWNOUT recovery.ok_pct %.1f %.1f\n",
         r[0]->done ? 100.0 * (double)r[0]->ok / (double)r[0]->done : 0.0,
         r[1]->done ? 100.0 * (double)r[1]->ok / (double)r[1]->done : 0.0);
}

/* ---- Exports ---------------------------------------------------------------- */

static bool write_file(const char *dir, const char *name, const char *text, size_t len) {
  char path[4096];
  int n = snprintf(path, sizeof path, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof path) {
    fprintf(stderr, "brownout: path too long: %s/%s\n", dir, name);
    return false;
  }
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "brownout: cannot write %s: %s\n", path, strerror(errno));
    return false;
  }
  bool ok = fwrite(text, 1, len, f) == len;
  if (fclose(f) != 0) ok = false;
  if (!ok)
    fprintf(stderr, "brownout: writing %s failed: %s\n", path, strerror(errno));
  else
    printf("  wrote %s\n", path);
  return ok;
}

static bool write_exports(const char *dir) {
  resil_err err;
  char *text = NULL;
  size_t len = 0;
  bool ok = true;
  if (resil_export_prometheus(&text, &len, &err) != RESIL_OK) {
    fprintf(stderr, "brownout: Prometheus export failed: %s\n", err.msg);
    ok = false;
  } else {
    ok = write_file(dir, "brownout-metrics.prom", text, len) && ok;
    free(text);
  }
  text = NULL;
  if (resil_export_json(&text, &len, &err) != RESIL_OK) {
    fprintf(stderr, "brownout: JSON export failed: %s\n", err.msg);
    ok = false;
  } else {
    ok = write_file(dir, "brownout-metrics.json", text, len) && ok;
    free(text);
  }
  return ok;
}

/* The CloudWatch EMF lines of the run: one interval per phase, from the
 * resil dependency's stats at the phase's start to those at its end - what
 * an emitter with the phase length as interval would have written. */
static bool write_emf(const demo *d) {
  const side_state *s = &d->side[SIDE_RESIL];
  resil_emf_config cfg;
  resil_emf_config_init(&cfg);
  cfg.service = "brownout-demo";
  cfg.interval_ms = d->opt.phase_s * 1000u;
  char *all = NULL;
  size_t all_len = 0;
  FILE *o = open_memstream(&all, &all_len);
  if (!o) {
    fprintf(stderr, "brownout: EMF export: out of memory\n");
    return false;
  }
  bool ok = true;
  for (int ph = 0; ph < NPHASES && ok; ph++) {
    resil_err err;
    char *text = NULL;
    size_t len = 0;
    if (resil_emf_render(&cfg, &s->snap[ph + 1], &s->snap[ph], s->snap_ms[ph + 1], 0, &text, &len,
                         &err) != RESIL_OK) {
      fprintf(stderr, "brownout: EMF export failed: %s\n", err.msg);
      ok = false;
    } else {
      fwrite(text, 1, len, o);
      free(text);
    }
  }
  if (fclose(o) != 0) ok = false;
  if (ok) ok = write_file(d->opt.out_dir, "brownout-metrics.emf", all, all_len);
  free(all);
  return ok;
}

/* The breaker state and the limit in force of each resil side, into the
 * timeline bucket of now (main thread, every 100 ms). */
static void sample_timeline(demo *d, uint64_t now) {
  uint64_t b = (now > d->t0 ? now - d->t0 : 0) / TL_NS;
  if (b >= d->tl_n) return;
  for (int k = 0; k < NSIDES; k++) {
    resil_dep *dep = d->side[k].dep;
    if (!dep) continue;
    resil_dep_stats st;
    resil_dep_get_stats(dep, &st);
    d->tl_breaker[b * NSIDES + (unsigned)k] = (int8_t)st.breaker.state;
    d->tl_limit[b * NSIDES + (unsigned)k] = (uint16_t)(st.limit > 65535 ? 65535 : st.limit);
  }
}

static double tl_quantile(const tl_cell *c, uint32_t n, double q) {
  uint32_t rank = (uint32_t)(q * (double)n + 0.999999), seen = 0;
  if (rank < 1) rank = 1;
  for (int i = 0; i < TL_HB; i++) {
    seen += atomic_load_explicit(&c->hist[i], memory_order_relaxed);
    if (seen >= rank) return pow(10.0, 1.0 + ((double)i + 0.5) / 10.0) / 1e3; /* ms */
  }
  return 0.0;
}

/* brownout-timeline.tsv: one line per 100 ms of the run (by the requests'
 * start), and brownout-phases.tsv: each phase's start, end and name, both in
 * seconds from the start. scripts/demo-plot.gp draws them. */
static bool write_timeline(const demo *d) {
  char *all = NULL;
  size_t all_len = 0;
  FILE *o = open_memstream(&all, &all_len);
  if (!o) {
    fprintf(stderr, "brownout: timeline: out of memory\n");
    return false;
  }
  fprintf(o, "# t_s\tphase");
  for (int k = 0; k < NSIDES; k++)
    fprintf(o, "\t%s_p50_ms\t%s_p99_ms\t%s_ok_s\t%s_failed_s\t%s_rejected_s\t%s_breaker\t%s_limit",
            SIDE_NAME[k], SIDE_NAME[k], SIDE_NAME[k], SIDE_NAME[k], SIDE_NAME[k], SIDE_NAME[k],
            SIDE_NAME[k]);
  fputc('\n', o);
  uint64_t end = d->phase_start[NPHASES] > d->t0 ? d->phase_start[NPHASES] - d->t0 : 0;
  unsigned n = (unsigned)(end / TL_NS);
  if (n > d->tl_n) n = d->tl_n;
  int8_t last_br[NSIDES];
  uint16_t last_lim[NSIDES];
  for (int k = 0; k < NSIDES; k++) {
    last_br[k] = 0;
    last_lim[k] = (uint16_t)d->limit;
  }
  int ph = 0;
  for (unsigned b = 0; b < n; b++) {
    uint64_t at = d->t0 + b * TL_NS;
    while (ph + 1 < NPHASES && at >= d->phase_start[ph + 1]) ph++;
    fprintf(o, "%.1f\t%d", (double)b * TL_NS / 1e9, ph);
    for (int k = 0; k < NSIDES; k++) {
      const tl_cell *c = &d->tl[b * NSIDES + (unsigned)k];
      uint32_t ok = atomic_load(&c->ok), fail = atomic_load(&c->failed);
      uint32_t rej = atomic_load(&c->rejected), all_n = ok + fail + rej;
      if (all_n)
        fprintf(o, "\t%.3f\t%.3f", tl_quantile(c, all_n, 0.50), tl_quantile(c, all_n, 0.99));
      else
        fprintf(o, "\t-\t-");
      fprintf(o, "\t%u\t%u\t%u", ok * 10, fail * 10, rej * 10);
      if (d->side[k].dep) {
        int8_t br = d->tl_breaker[b * NSIDES + (unsigned)k];
        if (br >= 0) {
          last_br[k] = br;
          last_lim[k] = d->tl_limit[b * NSIDES + (unsigned)k];
        }
        fprintf(o, "\t%d\t%u", last_br[k], last_lim[k]);
      } else {
        fprintf(o, "\t-\t-");
      }
    }
    fputc('\n', o);
  }
  bool ok = fclose(o) == 0;
  if (ok) ok = write_file(d->opt.out_dir, "brownout-timeline.tsv", all, all_len);
  free(all);
  all = NULL;
  if (!ok) return false;
  if (!(o = open_memstream(&all, &all_len))) return false;
  fprintf(o, "# start_s\tend_s\tname\n");
  for (int p = 0; p < NPHASES; p++)
    fprintf(o, "%.2f\t%.2f\t%s\n", (double)(d->phase_start[p] - d->t0) / 1e9,
            (double)(d->phase_start[p + 1] - d->t0) / 1e9, PHASES[p].name);
  ok = fclose(o) == 0;
  if (ok) ok = write_file(d->opt.out_dir, "brownout-phases.tsv", all, all_len);
  free(all);
  return ok;
}

/* ---- --with-servers: real Redis / PostgreSQL on loopback, stalled ----------- */

/* Opt-in (--with-servers), after the main table: for each of Redis and
 * PostgreSQL 15 whose server is installed and whose adapter this build has,
 * start a throwaway server on 127.0.0.1 (a child process, a free port, a temp
 * dir, no persistence; PostgreSQL as the `postgres` user via runuser when run
 * as root) and run three short phases - healthy, stalled (every server
 * process is SIGSTOPped: connections stay open, nothing answers), resumed
 * (SIGCONT) - with calls through resil (resil_redis_command() /
 * resil_pg_query(), 200 ms deadline) on one side and the raw driver with no
 * timeout (blocking redisCommand() / PQexec()) on the other. Naive calls stuck
 * on the stopped server end when it is continued at the end of the stalled
 * phase, so every wait stays bounded. The server is always continued, shut
 * down (killed if it takes over 3 s) and its temp dir removed: on return, on
 * error paths and on SIGINT/SIGTERM/SIGHUP while the section runs. */

#define SRV_NPHASES 3
#define SRV_WORKERS 4             /* threads per side */
#define SRV_INTERVAL_NS 10000000u /* one call per 10 ms per worker: 400/s per side */
#define SRV_MAX_PHASE_S 5u
#define PG_BINDIR "/usr/lib/postgresql/15/bin"

#ifdef BROWNOUT_HAVE_SERVERS
enum { K_REDIS, K_PG };
static const char *const SRV_PHASE[SRV_NPHASES] = {"healthy", "stalled", "resumed"};

/* The one server child running at a time, for cleanup (also from a signal
 * handler): it leads its own process group. */
#define SRV_MAX_STOPPED 128
static volatile pid_t g_srv_pid = -1;
static volatile int g_srv_quit_sig = SIGTERM; /* how it shuts down fast */
static char g_srv_dir[64];                    /* removed with rm -rf */
static volatile pid_t g_srv_stopped[SRV_MAX_STOPPED];
static volatile int g_srv_nstopped;

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Wait at most ms for pid; true once reaped. Async-signal-safe. */
static bool reap_within(pid_t pid, long ms, int *status) {
  for (long t = 0;; t += 10) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (t >= ms) return false;
    nap_ms(10);
  }
}

static void srv_resume(void) {
  int n = g_srv_nstopped;
  for (int i = 0; i < n; i++) kill(g_srv_stopped[i], SIGCONT);
  g_srv_nstopped = 0;
}

/* Async-signal-safe: continue, shut down (or kill) and reap the server,
 * remove its temp dir. */
static void srv_child_cleanup(void) {
  srv_resume();
  pid_t pid = g_srv_pid;
  if (pid > 0) {
    kill(-pid, g_srv_quit_sig);
    if (!reap_within(pid, 3000, NULL)) {
      kill(-pid, SIGKILL);
      while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
      }
    }
    g_srv_pid = -1;
    /* runuser may exit before the postmaster: as a subreaper we inherit
     * it; reap what is left of the server (the demo has no other children). */
    for (long t = 0; t < 3000; t += 10) {
      pid_t r = waitpid(-1, NULL, WNOHANG);
      if (r < 0 && errno == ECHILD) break;
      if (r == 0) nap_ms(10);
    }
  }
  if (g_srv_dir[0]) {
    pid_t rm = fork();
    if (rm == 0) {
      execl("/bin/rm", "rm", "-rf", g_srv_dir, (char *)NULL);
      _exit(127);
    }
    if (rm > 0 && !reap_within(rm, 5000, NULL)) {
      kill(rm, SIGKILL);
      while (waitpid(rm, NULL, 0) < 0 && errno == EINTR) {
      }
    }
    g_srv_dir[0] = '\0';
  }
}

static void srv_on_signal(int sig) {
  srv_child_cleanup();
  signal(sig, SIG_DFL);
  raise(sig);
}

static const int SRV_SIGNALS[] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction g_srv_old_sa[3];

static void srv_signals_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = srv_on_signal;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; i++) sigaction(SRV_SIGNALS[i], &sa, &g_srv_old_sa[i]);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
}

static void srv_signals_restore(void) {
  for (int i = 0; i < 3; i++) sigaction(SRV_SIGNALS[i], &g_srv_old_sa[i], NULL);
}

/* The parent pid of pid from /proc, or -1. */
static pid_t proc_ppid(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  int ppid;
  if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1) return -1;
  return (pid_t)ppid;
}

/* Stall the server: SIGSTOP its process and every descendant (PostgreSQL's
 * backends run in sessions of their own, so a process group is not enough). */
static void srv_stall(void) {
  pid_t root = g_srv_pid;
  if (root <= 0) return;
  pid_t set[SRV_MAX_STOPPED];
  int n = 0;
  set[n++] = root;
  g_srv_stopped[0] = root;
  g_srv_nstopped = 1;
  kill(root, SIGSTOP);
  /* Three passes reach grandchildren (runuser -> postmaster -> backends). */
  for (int pass = 0; pass < 3; pass++) {
    DIR *d = opendir("/proc");
    if (!d) break;
    struct dirent *e;
    while ((e = readdir(d)) && n < SRV_MAX_STOPPED) {
      char *end;
      long v = strtol(e->d_name, &end, 10);
      if (*end || v <= 0) continue;
      pid_t pid = (pid_t)v, pp = proc_ppid(pid);
      bool parent_in = false, in = false;
      for (int i = 0; i < n; i++) {
        if (set[i] == pp) parent_in = true;
        if (set[i] == pid) in = true;
      }
      if (!parent_in || in) continue;
      set[n++] = pid;
      g_srv_stopped[g_srv_nstopped] = pid;
      g_srv_nstopped++;
      kill(pid, SIGSTOP);
    }
    closedir(d);
  }
}

/* The executable in PATH (or /usr/bin, /usr/sbin), or false. */
static bool find_exe(const char *name, char *out, size_t n) {
  const char *path = getenv("PATH");
  char buf[4096];
  snprintf(buf, sizeof buf, "%s:/usr/bin:/usr/sbin:/usr/local/bin", path ? path : "");
  for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
    if (!*dir) continue;
    int m = snprintf(out, n, "%s/%s", dir, name);
    if (m > 0 && (size_t)m < n && access(out, X_OK) == 0) return true;
  }
  return false;
}

/* A port free right now on 127.0.0.1 (the kernel's pick), or 0. */
static unsigned free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  unsigned port = 0;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* Start argv[0] (a full path) as a child leading its own process group,
 * output to /dev/null, killed if the demo dies. Returns the pid or -1. */
static pid_t spawn(const char *const *argv) {
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127);
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) {
    dup2(nul, STDIN_FILENO);
    dup2(nul, STDOUT_FILENO);
    dup2(nul, STDERR_FILENO);
  }
  execv(argv[0], (char *const *)argv);
  _exit(127);
}

static bool make_temp_dir(const char *kind, char *err, size_t errn) {
  snprintf(g_srv_dir, sizeof g_srv_dir, "/tmp/brownout-%s-XXXXXX", kind);
  if (mkdtemp(g_srv_dir)) return true;
  snprintf(err, errn, "mkdtemp: %s", strerror(errno));
  g_srv_dir[0] = '\0';
  return false;
}

#ifdef BROWNOUT_HAVE_REDIS
/* Start redis-server on a free port; wait (at most 5 s) until it answers.
 * Returns the port, or 0 with a message in err. */
static unsigned redis_start(const char *exe, char *err, size_t errn) {
  if (!make_temp_dir("redis", err, errn)) return 0;
  char logf[128];
  snprintf(logf, sizeof logf, "%s/redis.log", g_srv_dir);
  g_srv_quit_sig = SIGTERM; /* no persistence: exits at once */
  for (int attempt = 0; attempt < 3; attempt++) {
    unsigned port = free_port();
    if (!port) {
      snprintf(err, errn, "no free port on 127.0.0.1");
      return 0;
    }
    char ports[16];
    snprintf(ports, sizeof ports, "%u", port);
    const char *args[] = {exe, "--port", ports, "--bind", "127.0.0.1", "--dir", g_srv_dir,
                          "--logfile", logf, "--save", "", "--appendonly", "no",
                          "--enable-debug-command", "yes", "--daemonize", "no", NULL};
    pid_t pid = spawn(args);
    if (pid < 0) {
      snprintf(err, errn, "fork: %s", strerror(errno));
      return 0;
    }
    g_srv_pid = pid;
    uint64_t until = resil_now_ns() + 5000000000ull;
    while (resil_now_ns() < until) {
      if (waitpid(pid, NULL, WNOHANG) == pid) {
        g_srv_pid = -1;
        break;
      }
      struct timeval tv = {0, 200000};
      redisContext *c = redisConnectWithTimeout("127.0.0.1", (int)port, tv);
      if (c && !c->err && redisSetTimeout(c, tv) == REDIS_OK) {
        redisReply *r = redisCommand(c, "SET brownout:key %s", "hello");
        bool ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
        if (ok) {
          redisFree(c);
          return port;
        }
      }
      if (c) redisFree(c);
      nap_ms(50);
    }
    if (g_srv_pid > 0) {
      snprintf(err, errn, "redis-server did not answer within 5 s (log: %s)", logf);
      return 0; /* the caller's cleanup stops it */
    }
    snprintf(err, errn, "redis-server exited at start (port %u taken?)", port);
  }
  return 0;
}
#endif

#ifdef BROWNOUT_HAVE_PG
/* initdb and start PostgreSQL 15 on a free port (as `postgres` via runuser
 * when root); wait (at most 10 s) until it accepts a connection. Returns the
 * port, or 0 with a message in err. */
static unsigned pg_start(const char *runuser, char *err, size_t errn) {
  if (!make_temp_dir("pg", err, errn)) return 0;
  if (runuser) {
    struct passwd *pw = getpwnam("postgres");
    if (!pw || chown(g_srv_dir, pw->pw_uid, pw->pw_gid) != 0) {
      snprintf(err, errn, "cannot give %s to the postgres user", g_srv_dir);
      return 0;
    }
  }
  char data[128], ports[16];
  snprintf(data, sizeof data, "%s/data", g_srv_dir);
  const char *pre[] = {runuser, "-u", "postgres", "--"};
  int np = runuser ? 4 : 0;
  const char *args[32];
  int n = 0;
  for (int i = 0; i < np; i++) args[n++] = pre[i];
  args[n++] = PG_BINDIR "/initdb";
  const char *init_args[] = {"-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                             "-E", "UTF8", "--locale=C", NULL};
  for (int i = 0; init_args[i]; i++) args[n++] = init_args[i];
  args[n] = NULL;
  pid_t pid = spawn(args);
  int status = 0;
  if (pid < 0 || !reap_within(pid, 30000, &status)) {
    if (pid > 0) {
      kill(-pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
    snprintf(err, errn, "initdb did not finish within 30 s");
    return 0;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    snprintf(err, errn, "initdb failed (exit status %d)",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
  }
  g_srv_quit_sig = SIGQUIT; /* immediate shutdown */
  unsigned port = free_port();
  if (!port) {
    snprintf(err, errn, "no free port on 127.0.0.1");
    return 0;
  }
  snprintf(ports, sizeof ports, "%u", port);
  n = np;
  args[n++] = PG_BINDIR "/postgres";
  const char *run_args[] = {"-D", data, "-p", ports, "-k", g_srv_dir, "-c",
                            "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c",
                            "max_connections=40", NULL};
  for (int i = 0; run_args[i]; i++) args[n++] = run_args[i];
  args[n] = NULL;
  if ((pid = spawn(args)) < 0) {
    snprintf(err, errn, "fork: %s", strerror(errno));
    return 0;
  }
  g_srv_pid = pid;
  char ci[160];
  snprintf(ci, sizeof ci,
           "host=127.0.0.1 port=%u user=postgres dbname=postgres connect_timeout=1", port);
  uint64_t until = resil_now_ns() + 10000000000ull;
  while (resil_now_ns() < until) {
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      g_srv_pid = -1;
      snprintf(err, errn, "postgres exited at start");
      return 0;
    }
    PGconn *c = PQconnectdb(ci);
    bool ok = c && PQstatus(c) == CONNECTION_OK;
    PQfinish(c);
    if (ok) return port;
    nap_ms(100);
  }
  snprintf(err, errn, "postgres did not accept connections within 10 s");
  return 0;
}
#endif

#ifdef BROWNOUT_HAVE_PG
static void ignore_notice(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}
#endif

typedef struct srv_worker {
  struct srv_run *run;
  int side;
  pthread_t thread;
  bool running;
  void *naive; /* redisContext * or PGconn * */
  _Atomic uint64_t call_start_ns;
  cell cells[SRV_NPHASES];
} srv_worker;

typedef struct srv_run {
  int kind;
  void *client; /* resil_redis * or resil_pg * */
  resil_dep *dep;
  _Atomic int cur_phase;
  _Atomic uint64_t end_ns;
  uint64_t phase_start[SRV_NPHASES + 1];
  _Atomic uint64_t first_reject[SRV_NPHASES]; /* ns, UINT64_MAX: none */
  unsigned stuck[SRV_NPHASES][NSIDES];
  resil_breaker_state breaker[SRV_NPHASES];
  uint64_t trips[SRV_NPHASES];
  srv_worker w[NSIDES][SRV_WORKERS];
} srv_run;

static resil_status srv_call(srv_worker *w) {
  srv_run *run = w->run;
  resil_err err;
  resil_status st = RESIL_E_FAILURE;
#ifdef BROWNOUT_HAVE_REDIS
  if (run->kind == K_REDIS) {
    if (w->side == SIDE_RESIL) {
      redisReply *reply = NULL;
      st = resil_redis_command(run->client, resil_deadline_in_ms(DEADLINE_MS),
                               RESIL_CALL_IDEMPOTENT, &reply, &err, "GET %s", "brownout:key");
      if (reply) freeReplyObject(reply);
    } else {
      /* Plain hiredis: blocking, no timeout. */
      redisContext *c = w->naive;
      redisReply *reply = !c->err ? redisCommand(c, "GET %s", "brownout:key") : NULL;
      st = reply && reply->type != REDIS_REPLY_ERROR ? RESIL_OK : RESIL_E_FAILURE;
      if (reply) freeReplyObject(reply);
      if (c->err) redisReconnect(c);
    }
  }
#endif
#ifdef BROWNOUT_HAVE_PG
  if (run->kind == K_PG) {
    if (w->side == SIDE_RESIL) {
      PGresult *res = NULL;
      st = resil_pg_query(run->client, resil_deadline_in_ms(DEADLINE_MS), RESIL_CALL_IDEMPOTENT,
                          "SELECT 1", 0, NULL, &res, &err);
      if (res) PQclear(res);
    } else {
      /* Plain libpq: PQexec, no timeout. */
      PGconn *c = w->naive;
      PGresult *res = PQexec(c, "SELECT 1");
      st = PQresultStatus(res) == PGRES_TUPLES_OK ? RESIL_OK : RESIL_E_FAILURE;
      PQclear(res);
      if (PQstatus(c) != CONNECTION_OK) PQreset(c);
    }
  }
#endif
  (void)err;
  return st;
}

static void *srv_worker_main(void *arg) {
  srv_worker *w = arg;
  srv_run *run = w->run;
  uint64_t next = resil_now_ns();
  for (;;) {
    uint64_t now = resil_now_ns(), end_ns = atomic_load(&run->end_ns);
    if (now >= end_ns) break;
    if (now < next) {
      sleep_until_ns(min_u64(next, end_ns));
      continue;
    }
    next += SRV_INTERVAL_NS;
    if (next < now) next = now;
    int ph = atomic_load(&run->cur_phase);
    cell *c = &w->cells[ph];
    atomic_store(&w->call_start_ns, now);
    resil_status st = srv_call(w);
    uint64_t end = resil_now_ns();
    atomic_store(&w->call_start_ns, 0);
    c->done++;
    cell_add_latency(c, end - now);
    if (end - now > c->max_ns) c->max_ns = end - now;
    if (st == RESIL_OK) {
      c->ok++;
    } else if (resil_status_is_rejection(st)) {
      c->rejected++;
      uint64_t cur = atomic_load(&run->first_reject[ph]);
      while (end < cur && !atomic_compare_exchange_weak(&run->first_reject[ph], &cur, end)) {
      }
    } else {
      c->failed++;
    }
  }
  return NULL;
}

static void srv_take_phase_end(srv_run *run, int ph, uint64_t *prev_trips) {
  uint64_t now = resil_now_ns();
  for (int k = 0; k < NSIDES; k++) {
    if (k == SIDE_STATIC) continue; /* resil and naive only here */
    unsigned n = 0;
    for (int i = 0; i < SRV_WORKERS; i++) {
      uint64_t cs = atomic_load(&run->w[k][i].call_start_ns);
      if (cs && now > cs && now - cs >= STUCK_NS) n++;
    }
    run->stuck[ph][k] = n;
  }
  resil_dep_stats st;
  resil_dep_get_stats(run->dep, &st);
  run->breaker[ph] = st.breaker.state;
  run->trips[ph] = st.breaker.transitions[RESIL_BREAKER_OPEN] - *prev_trips;
  *prev_trips = st.breaker.transitions[RESIL_BREAKER_OPEN];
}

static void srv_print_table(const srv_run *run) {
  printf("  %-8s %-5s %6s %6s %7s %7s %7s %5s %-13s %9s\n", "phase", "side", "done", "ok", "p50",
         "p99", "max", "stuck", "breaker", "fail-fast");
  for (int ph = 0; ph < SRV_NPHASES; ph++) {
    for (int k = 0; k < NSIDES; k++) {
      if (k == SIDE_STATIC) continue;
      cell sum;
      memset(&sum, 0, sizeof sum);
      for (int i = 0; i < SRV_WORKERS; i++) {
        const cell *c = &run->w[k][i].cells[ph];
        sum.done += c->done;
        sum.ok += c->ok;
        if (c->max_ns > sum.max_ns) sum.max_ns = c->max_ns;
        for (int b = 0; b < LAT_BUCKETS; b++) sum.hist[b] += c->hist[b];
      }
      char b1[32], b2[32], b3[32], b4[32], okp[16], stuck[16], br[40], ff[32];
      if (sum.done)
        snprintf(okp, sizeof okp, "%.1f%%", 100.0 * (double)sum.ok / (double)sum.done);
      else
        snprintf(okp, sizeof okp, "-");
      snprintf(stuck, sizeof stuck, "%u/%u", run->stuck[ph][k], SRV_WORKERS);
      if (k == SIDE_RESIL) {
        snprintf(br, sizeof br, "%s (%" PRIu64 ")", resil_breaker_state_name(run->breaker[ph]),
                 run->trips[ph]);
        uint64_t fr = atomic_load(&run->first_reject[ph]);
        if (fr == UINT64_MAX)
          snprintf(ff, sizeof ff, "-");
        else
          fmt_dur(ff, sizeof ff, fr > run->phase_start[ph] ? fr - run->phase_start[ph] : 0);
      } else {
        snprintf(br, sizeof br, "none");
        snprintf(ff, sizeof ff, "never");
      }
      printf("  %-8s %-5s %6s %6s %7s %7s %7s %5s %-13s %9s\n", k == 0 ? SRV_PHASE[ph] : "",
             SIDE_NAME[k], fmt_count(b1, sizeof b1, sum.done), okp,
             sum.done ? fmt_dur(b2, sizeof b2,
                                min_u64(hist_quantile(sum.hist, sum.done, 0.50), sum.max_ns))
                      : "-",
             sum.done ? fmt_dur(b3, sizeof b3,
                                min_u64(hist_quantile(sum.hist, sum.done, 0.99), sum.max_ns))
                      : "-",
             sum.done ? fmt_dur(b4, sizeof b4, sum.max_ns) : "-", stuck, br, ff);
    }
  }
  printf("\n");
}

static void srv_dep_config(resil_dep_config *c, unsigned phase_s) {
  c->timeout_ms = DEADLINE_MS;
  uint32_t pms = phase_s * 1000u, open_ms = pms / 20 < 100 ? 100 : pms / 20 > 500 ? 500 : pms / 20;
  c->breaker.consecutive_failures = 5;
  c->breaker.failure_rate_percent = 50;
  c->breaker.minimum_calls = 20;
  c->breaker.window_ms = pms < 10000 ? pms : 10000;
  c->breaker.open_ms = open_ms;
  c->breaker.open_max_ms = 2 * open_ms;
  c->limit.max_concurrent = SRV_WORKERS;
  c->limit.max_waiters = 0;
  c->retry.max_attempts = 3;
  c->retry.base_backoff_ms = 5;
  c->retry.max_backoff_ms = 50;
  c->retry.budget_percent = 20;
}

static void srv_pool_config(resil_pool_config *p) {
  p->max_size = SRV_WORKERS;
  p->connect_timeout_ms = DEADLINE_MS;
  p->acquire_timeout_ms = DEADLINE_MS;
  p->validate_timeout_ms = DEADLINE_MS;
  p->housekeeping_ms = 0;
}

/* One server's run. exe: redis-server's path, or runuser's (NULL: run
 * PostgreSQL as this user). Returns 0, or 1 on a run-time error. The
 * server is started, and always stopped again, in here. */
static int run_server_section(int kind, unsigned phase_s, const char *exe) {
  static srv_run R; /* large (histograms); zeroed per use below */
  srv_run *run = &R;
  memset(run, 0, sizeof *run);
  run->kind = kind;
  const char *label = kind == K_REDIS ? "Redis" : "PostgreSQL";
  char emsg[256] = "";
  int rc = 1;
  unsigned port = 0;
  srv_signals_install();
#ifdef BROWNOUT_HAVE_REDIS
  if (kind == K_REDIS) port = redis_start(exe, emsg, sizeof emsg);
#endif
#ifdef BROWNOUT_HAVE_PG
  if (kind == K_PG) port = pg_start(exe, emsg, sizeof emsg);
#endif
  if (!port) {
    fprintf(stderr, "brownout: --with-servers: %s: %s\n", label, emsg);
    goto out;
  }
  if (kind == K_REDIS)
    printf("  Redis: %s on 127.0.0.1:%u (child pid %d, temp dir %s, no persistence)\n", exe,
           port, (int)g_srv_pid, g_srv_dir);
  else
    printf("  PostgreSQL: %s/postgres on 127.0.0.1:%u%s (child pid %d, temp dir %s)\n",
           PG_BINDIR, port, exe ? " as user postgres" : "", (int)g_srv_pid, g_srv_dir);
  printf("  phases: healthy -> stalled (server SIGSTOPped) -> resumed (SIGCONT), %u s each;\n"
         "  %d threads per side, %s at up to %u/s per side\n"
         "  resil: %s, %u ms deadline, breaker, pool of %d connections\n"
         "  naive: one connection per thread, blocking %s, no timeout\n\n",
         phase_s, SRV_WORKERS, kind == K_REDIS ? "GET" : "SELECT 1",
         (unsigned)(SRV_WORKERS * (1000000000u / SRV_INTERVAL_NS)),
         kind == K_REDIS ? "resil_redis_command()" : "resil_pg_query()", DEADLINE_MS,
         SRV_WORKERS, kind == K_REDIS ? "hiredis redisCommand()" : "libpq PQexec()");

  resil_err err;
#ifdef BROWNOUT_HAVE_REDIS
  if (kind == K_REDIS) {
    resil_redis_config c;
    resil_redis_config_init(&c, "brownout-redis");
    c.host = "127.0.0.1";
    c.port = port;
    c.connect_timeout_ms = DEADLINE_MS;
    srv_dep_config(&c.dep, phase_s);
    srv_pool_config(&c.pool);
    if (!(run->client = resil_redis_new(&c, &err))) goto client_failed;
    run->dep = resil_redis_dep(run->client);
    for (int i = 0; i < SRV_WORKERS; i++) {
      redisContext *rc_ = redisConnect("127.0.0.1", (int)port); /* no timeout: the naive way */
      if (!rc_ || rc_->err) {
        snprintf(err.msg, sizeof err.msg, "cannot connect: %s", rc_ ? rc_->errstr : "no memory");
        if (rc_) redisFree(rc_);
        goto client_failed;
      }
      run->w[SIDE_NAIVE][i].naive = rc_;
    }
  }
#endif
#ifdef BROWNOUT_HAVE_PG
  char ci[128];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%u user=postgres dbname=postgres", port);
  if (kind == K_PG) {
    resil_pg_config c;
    resil_pg_config_init(&c, "brownout-pg");
    c.conninfo = ci;
    c.connect_timeout_ms = DEADLINE_MS;
    c.cancel_timeout_ms = DEADLINE_MS;
    srv_dep_config(&c.dep, phase_s);
    srv_pool_config(&c.pool);
    if (!(run->client = resil_pg_new(&c, &err))) goto client_failed;
    run->dep = resil_pg_dep(run->client);
    for (int i = 0; i < SRV_WORKERS; i++) {
      PGconn *pc = PQconnectdb(ci); /* no connect_timeout: the naive way */
      if (!pc || PQstatus(pc) != CONNECTION_OK) {
        snprintf(err.msg, sizeof err.msg, "cannot connect: %s",
                 pc ? PQerrorMessage(pc) : "no memory");
        PQfinish(pc);
        goto client_failed;
      }
      PQsetNoticeProcessor(pc, ignore_notice, NULL);
      run->w[SIDE_NAIVE][i].naive = pc;
    }
  }
#endif

  for (int ph = 0; ph < SRV_NPHASES; ph++) atomic_init(&run->first_reject[ph], UINT64_MAX);
  uint64_t phase_ns = (uint64_t)phase_s * 1000000000ull;
  uint64_t t0 = resil_now_ns();
  atomic_store(&run->end_ns, t0 + SRV_NPHASES * phase_ns);
  atomic_store(&run->cur_phase, 0);
  run->phase_start[0] = t0;
  bool started_all = true;
  for (int k = 0; k < NSIDES && started_all; k++) {
    if (k == SIDE_STATIC) continue;
    for (int i = 0; i < SRV_WORKERS; i++) {
      srv_worker *w = &run->w[k][i];
      w->run = run;
      w->side = k;
      atomic_init(&w->call_start_ns, 0);
      int e = pthread_create(&w->thread, NULL, srv_worker_main, w);
      if (e) {
        fprintf(stderr, "brownout: cannot start a worker thread: %s\n", strerror(e));
        atomic_store(&run->end_ns, resil_now_ns());
        started_all = false;
        break;
      }
      w->running = true;
    }
  }
  if (started_all) {
    uint64_t prev_trips = 0;
    for (int ph = 0; ph < SRV_NPHASES; ph++) {
      uint64_t pend = t0 + (uint64_t)(ph + 1) * phase_ns;
      printf("  phase %d/%d: %s (%u s)\n", ph + 1, SRV_NPHASES, SRV_PHASE[ph], phase_s);
      sleep_until_ns(pend);
      srv_take_phase_end(run, ph, &prev_trips);
      run->phase_start[ph + 1] = resil_now_ns();
      if (ph + 1 < SRV_NPHASES) atomic_store(&run->cur_phase, ph + 1);
      /* Stall the server for phase 2, continue it after. */
      if (ph == 0) srv_stall();
      if (ph == 1) srv_resume();
    }
    rc = 0;
  }
  /* Never join with the server stopped: the naive calls would wait forever. */
  srv_resume();
  for (int k = 0; k < NSIDES; k++)
    for (int i = 0; i < SRV_WORKERS; i++)
      if (run->w[k][i].running) pthread_join(run->w[k][i].thread, NULL);
  if (rc == 0) {
    printf("\n");
    srv_print_table(run);
  }
  goto out;

client_failed:
  fprintf(stderr, "brownout: --with-servers: %s: %s\n", label, err.msg);
out:
  for (int i = 0; i < SRV_WORKERS; i++) {
    void *n = run->w[SIDE_NAIVE][i].naive;
    if (!n) continue;
#ifdef BROWNOUT_HAVE_REDIS
    if (kind == K_REDIS) redisFree(n);
#endif
#ifdef BROWNOUT_HAVE_PG
    if (kind == K_PG) PQfinish(n);
#endif
  }
  if (run->client) {
#ifdef BROWNOUT_HAVE_REDIS
    if (kind == K_REDIS) resil_redis_free(run->client);
#endif
#ifdef BROWNOUT_HAVE_PG
    if (kind == K_PG) resil_pg_free(run->client);
#endif
  }
  srv_child_cleanup();
  srv_signals_restore();
  return rc;
}
#endif /* BROWNOUT_HAVE_SERVERS */

/* --with-servers: Redis and PostgreSQL when possible; says what it skips.
 * Returns 0 or 1. */
static int run_servers_section(const options *o) {
  unsigned phase_s = o->phase_s < SRV_MAX_PHASE_S ? o->phase_s : SRV_MAX_PHASE_S;
  (void)phase_s;
  printf("---- --with-servers: real Redis / PostgreSQL servers, stalled with SIGSTOP ----\n");
  int rc = 0;
  bool ran = false;
#ifdef BROWNOUT_HAVE_REDIS
  char exe[512];
  if (!find_exe("redis-server", exe, sizeof exe))
    printf("  Redis: skipped (redis-server is not installed: apt-get install redis-server)\n\n");
  else if ((ran = true), run_server_section(K_REDIS, phase_s, exe) != 0)
    rc = 1;
#else
  printf("  Redis: skipped (this build has no resil-redis: hiredis was not found)\n\n");
#endif
#ifdef BROWNOUT_HAVE_PG
  char runuser[512];
  bool root = geteuid() == 0;
  if (access(PG_BINDIR "/initdb", X_OK) != 0 || access(PG_BINDIR "/postgres", X_OK) != 0)
    printf("  PostgreSQL: skipped (%s/initdb and postgres are not installed:\n"
           "  apt-get install postgresql-15)\n\n", PG_BINDIR);
  else if (root && (!getpwnam("postgres") || !find_exe("runuser", runuser, sizeof runuser)))
    printf("  PostgreSQL: skipped (running as root, but there is no `postgres` user or no\n"
           "  runuser to run it as)\n\n");
  else if ((ran = true), run_server_section(K_PG, phase_s, root ? runuser : NULL) != 0)
    rc = 1;
#else
  printf("  PostgreSQL: skipped (this build has no resil-pg: libpq was not found)\n\n");
#endif
  if (!ran) return rc;
  printf("  done: calls started in the phase that completed (any outcome); stuck: threads in\n"
         "  one call for over 1 s at the phase's end; breaker: state at the phase's end (times\n"
         "  it opened in the phase); fail-fast: phase start to the first local rejection.\n"
         "  Naive calls stuck on the stopped server end when it is continued (SIGCONT).\n\n");
  return rc;
}

/* ---- Command line --------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "Usage: brownout [options]\n"
          "\n"
          "Runs one workload three times at once against a dependency that goes healthy\n"
          "-> brownout (latency 2-4 s) -> saturated (serves 2 at once) -> partial (60%%\n"
          "errors) -> outage -> recovery: through resil (200 ms deadline, breaker with\n"
          "recovery probes, adaptive limit, throttling, retry budget), through resil with\n"
          "a static limit, and naively (30 s driver timeout, nothing else). Prints a table\n"
          "per phase and a summary, and writes the metrics resil exported and a timeline.\n"
          "\n"
          "Options:\n"
          "  --phase-seconds N  the time unit of the schedule, 1..600 (default %d): the\n"
          "                     phases last 0.6, 0.8, 1.2, 1.2, 2.2 and 2.0 times it\n"
          "  --quick            --phase-seconds %d (for tests); not with --phase-seconds\n"
          "  --workers N        worker threads per side, 1..512 (default %d)\n"
          "  --rate N           requests/s offered to each side, 1..100000 (default %d)\n"
          "  --backend KIND     the dependency: http = an HTTP/1.1 server in this process\n"
          "                     on 127.0.0.1, called through resil-http and plain libcurl;\n"
          "                     sim = simulated in-process\n"
          "                     (default: %s%s)\n"
          "  --out-dir DIR      where to write brownout-metrics.prom, .json and .emf and\n"
          "                     brownout-timeline.tsv / brownout-phases.tsv\n"
          "                     (default: the current directory; created if missing)\n"
          "  --summary          also print machine-readable lines after the summary:\n"
          "                     SUMMARY-BROWNOUT <metric> <resil> <naive> (for scripts/bench.sh)\n"
          "  --with-servers     afterwards, for Redis and PostgreSQL 15 if installed (and\n"
          "                     this build has resil-redis / resil-pg): start a throwaway\n"
          "                     server on 127.0.0.1 (PostgreSQL as user postgres when\n"
          "                     root), stall it with SIGSTOP for a phase and compare\n"
          "                     resil (200 ms deadline) with the raw driver (no timeout);\n"
          "                     each is skipped with a note otherwise. About 20 s more.\n"
          "                     Default: off (scripts/demo.sh passes it only if you do)\n"
          "  --help             this text\n"
          "\n"
          "Every wait is bounded: naive calls still stuck when the schedule ends fail 0.4 s\n"
          "later (the dependency shuts down and closes its connections), so it always\n"
          "exits and every thread is joined.\n"
          "Exit status: 0 done, 1 run-time error, 2 bad arguments.\n",
          DEFAULT_PHASE_S, QUICK_PHASE_S, DEFAULT_WORKERS, DEFAULT_RATE, DEFAULT_BACKEND,
          BACKEND_NOTE);
}

static int bad_arg(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

static int bad_arg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("brownout: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\nTry 'brownout --help'.\n", stderr);
  return 2;
}

static bool parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out) {
  if (!s || !*s || *s == '-' || *s == '+') return false;
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return false;
  *out = (unsigned)v;
  return true;
}

/* Returns -1 to go on, else an exit status. */
static int parse_args(int argc, char **argv, options *o) {
  *o = (options){DEFAULT_PHASE_S, DEFAULT_WORKERS, DEFAULT_RATE, false, ".", DEFAULT_BACKEND,
                 false, false};
  bool phase_set = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--quick")) {
      o->quick = true;
      continue;
    }
    if (!strcmp(a, "--summary")) {
      o->summary = true;
      continue;
    }
    if (!strcmp(a, "--with-servers")) {
      o->with_servers = true;
      continue;
    }
    /* --name VALUE or --name=VALUE */
    static const char *const names[] = {"--phase-seconds", "--workers", "--rate", "--out-dir",
                                        "--backend"};
    int which = -1;
    const char *val = NULL;
    for (int k = 0; k < 5 && which < 0; k++) {
      size_t n = strlen(names[k]);
      if (!strncmp(a, names[k], n) && (a[n] == '\0' || a[n] == '=')) {
        which = k;
        if (a[n] == '=')
          val = a + n + 1;
        else if (i + 1 < argc)
          val = argv[++i];
        else
          return bad_arg("%s needs a value", names[k]);
      }
    }
    switch (which) {
    case 0:
      if (!parse_uint(val, 1, 600, &o->phase_s))
        return bad_arg("--phase-seconds: '%s' is not a whole number of seconds in 1..600", val);
      phase_set = true;
      break;
    case 1:
      if (!parse_uint(val, 1, 512, &o->workers))
        return bad_arg("--workers: '%s' is not a whole number in 1..512", val);
      break;
    case 2:
      if (!parse_uint(val, 1, 100000, &o->rate))
        return bad_arg("--rate: '%s' is not a whole number of requests/s in 1..100000", val);
      break;
    case 3:
      if (!*val) return bad_arg("--out-dir: the directory name is empty");
      o->out_dir = val;
      break;
    case 4:
      if (!find_backend(val))
        return bad_arg("--backend: '%s' is not one of: %s%s", val, BACKEND_NAMES, BACKEND_NOTE);
      o->backend = val;
      break;
    default: return bad_arg("unknown option '%s'", a);
    }
  }
  if (o->quick && phase_set) return bad_arg("--quick and --phase-seconds do not go together");
  if (o->quick) o->phase_s = QUICK_PHASE_S;
  /* Check the output directory now, not after the run. */
  struct stat st;
  if (stat(o->out_dir, &st) != 0) {
    if (errno != ENOENT || mkdir(o->out_dir, 0777) != 0)
      return bad_arg("--out-dir: cannot use '%s': %s", o->out_dir, strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    return bad_arg("--out-dir: '%s' is not a directory", o->out_dir);
  }
  if (access(o->out_dir, W_OK) != 0)
    return bad_arg("--out-dir: '%s' is not writable: %s", o->out_dir, strerror(errno));
  return -1;
}

/* ---- main ------------------------------------------------------------------- */

static void make_resil_config(demo *d, resil_dep_config *cp) {
  resil_dep_config c;
  resil_dep_config_init(&c, "brownout-dependency");
  c.timeout_ms = DEADLINE_MS; /* cap per attempt */
  /* The library's break durations (5 s, doubling up to 60 s on a failed
   * half-open call): a long outage grows the break past the dependency's
   * healing, and the recovery probes (every 500 ms, on by default) end it. */
  uint32_t pms = d->opt.phase_s * 1000u;
  /* Throttling handles the partial failure, so the breaker is for the total
   * outage only (what config validation requires with THROTTLE=on). */
  c.breaker.consecutive_failures = 0;
  c.breaker.failure_rate_percent = 95;
  c.breaker.minimum_calls = 20;
  c.breaker.window_ms = pms < 10000 ? pms : 10000;
  c.breaker.on_transition = on_transition;
  c.breaker.hook_ctx = d;
  /* The ceiling: room for scheduling hiccups when healthy (~1 ms calls
   * rarely overlap), yet a brownout fills it within one deadline. */
  c.limit.max_concurrent = d->opt.workers * 3 / 4 ? d->opt.workers * 3 / 4 : 1;
  /* A short queue for a slot (LIMIT_MAX_WAITERS=8, LIMIT_MAX_WAIT_MS=20):
   * when the adaptive limit sits low, a burst of ~1 ms calls waits a moment
   * for a slot instead of being refused. */
  c.limit.max_waiters = 8;
  c.limit.max_wait_ms = 20;
  /* LIMIT_ADAPTIVE=gradient, LIMIT_TOLERANCE=1.2 (a latency goal). */
  c.adaptive.algorithm = "gradient";
  c.adaptive.tolerance = 1.2;
  if (c.adaptive.min > c.limit.max_concurrent) c.adaptive.min = c.limit.max_concurrent;
  /* THROTTLE=on, over a 2 s window (THROTTLE_WINDOW_MS=2000, default 10 s):
   * the failures of the outage leave the window within 2 s of the heal, so
   * the throttle does not go on shedding after the breaker closed. */
  c.throttle.enabled = true;
  c.throttle.window_ms = 2000;
  c.retry.max_attempts = 3;
  c.retry.base_backoff_ms = 5;
  c.retry.max_backoff_ms = 50;
  /* A small retry budget: retries of a dependency failing 60% would send
   * back what the throttle sheds (the partial phase). */
  c.retry.budget_percent = 2;
  d->bcfg = c.breaker;
  d->limit = c.limit.max_concurrent;
  *cp = c;
}

int main(int argc, char **argv) {
  static demo D; /* large (transition log); zeroed */
  demo *d = &D;
  int rc = parse_args(argc, argv, &d->opt);
  if (rc >= 0) return rc;
  setvbuf(stdout, NULL, _IOLBF, 0);
  bool tty = isatty(STDOUT_FILENO);

  d->ops = find_backend(d->opt.backend);
#ifdef BROWNOUT_HAVE_HTTP
  /* Every client connection at once, plus a few being replaced. */
  g_server_threads = d->opt.workers + 8;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "brownout: curl_global_init failed\n");
    return 1;
  }
#endif
  d->phase_ns = (uint64_t)d->opt.phase_s * 1000000000ull;
  uint64_t total_ns = 0;
  for (int ph = 0; ph < NPHASES; ph++) {
    d->phase_len[ph] = d->phase_ns * PHASES[ph].tenths / 10u;
    total_ns += d->phase_len[ph];
  }
  d->interval_ns = (uint64_t)d->opt.workers * 1000000000ull / d->opt.rate;
  d->tl_n = (unsigned)(total_ns / TL_NS) + 2;
  d->tl = calloc((size_t)d->tl_n * NSIDES, sizeof *d->tl);
  d->tl_breaker = malloc((size_t)d->tl_n * NSIDES);
  d->tl_limit = calloc((size_t)d->tl_n * NSIDES, sizeof *d->tl_limit);
  if (!d->tl || !d->tl_breaker || !d->tl_limit) {
    fprintf(stderr, "brownout: out of memory\n");
    return 1;
  }
  memset(d->tl_breaker, -1, (size_t)d->tl_n * NSIDES);
  /* Start a little ahead so every thread is up when the clock starts. */
  d->t0 = resil_now_ns() + 100000000ull;
  atomic_init(&d->end_ns, d->t0 + total_ns);

  resil_err err;
  rc = 1;
  resil_dep_config dcfg;
  make_resil_config(d, &dcfg);
  for (int k = 0; k < NSIDES; k++) {
    side_state *s = &d->side[k];
    for (int ph = 0; ph < NPHASES; ph++) atomic_init(&s->first_reject[ph], UINT64_MAX);
    /* Shut the dependency down a little after the schedule ends: later than
     * any resil call can last, so only calls stuck for seconds are cut. */
    s->backend = d->ops->open(atomic_load(&d->end_ns) + 2 * DEADLINE_MS * 1000000ull, &err);
    if (!s->backend) {
      fprintf(stderr, "brownout: %s\n", err.msg);
      goto out;
    }
    d->ops->set_phase(s->backend, &PHASES[0]);
    s->workers = calloc(d->opt.workers, sizeof *s->workers);
    if (!s->workers) {
      fprintf(stderr, "brownout: out of memory\n");
      goto out;
    }
    if (k != SIDE_NAIVE) {
      resil_dep_config c = dcfg;
      if (k == SIDE_STATIC) {
        c.name = "brownout-static-limit";
        c.adaptive.algorithm = "off";
        c.breaker.on_transition = NULL; /* the log is the resil side's */
      }
      s->client = d->ops->resil_open(s->backend, &c, &s->dep, &err);
      if (!s->client) {
        fprintf(stderr, "brownout: %s\n", err.msg);
        goto out;
      }
      resil_dep_get_stats(s->dep, &s->snap[0]);
      s->snap_ms[0] = wall_ms();
    } else {
      for (unsigned i = 0; i < d->opt.workers; i++) {
        if (!(s->workers[i].naive = d->ops->naive_open(s->backend, &err))) {
          fprintf(stderr, "brownout: %s\n", err.msg);
          goto out;
        }
      }
    }
  }

  printf("resil %s brownout demo: one workload, with and without resil, side by side\n",
         resil_version());
  char where[NSIDES][128];
  for (int k = 0; k < NSIDES; k++)
    d->ops->describe(d->side[k].backend, where[k], sizeof where[k]);
  printf("  dependency: one copy per side, %s (--backend %s)\n", d->ops->name[0] == 'h' ?
         "a real HTTP/1.1 server thread pool in this process" : "simulated in this process",
         d->ops->name);
  if (strcmp(where[0], where[1]))
    for (int k = 0; k < NSIDES; k++) printf("              %s side: %s\n", SIDE_NAME[k], where[k]);
  printf("  phases:");
  for (int ph = 0; ph < NPHASES; ph++)
    printf("%s %s (%s)", ph ? " ->" : "", PHASES[ph].name, PHASES[ph].brief);
  printf("\n  load:  %u worker threads and %u requests/s per side; %d phases, about %u s\n",
         d->opt.workers, d->opt.rate, NPHASES,
         (unsigned)((total_ns + 999999999ull) / 1000000000ull) + 1);
  printf("  resil: %s\n", d->ops->resil_desc);
  printf("         %u ms deadline per request; adaptive limit (gradient, tolerance 1.2) of\n"
         "         4..%u calls in flight (8 more may wait 20 ms for a slot); client-side\n"
         "         throttling (K 2, 2 s window); up to 3 attempts\n"
         "         within a 2%% retry budget; breaker opens on %u%% failures of %u+ calls,\n"
         "         for %u ms doubling up to %u ms, ended early by a recovery probe every\n"
         "         500 ms that succeeds\n",
         DEADLINE_MS, d->limit, d->bcfg.failure_rate_percent, d->bcfg.minimum_calls,
         d->bcfg.open_ms, d->bcfg.open_max_ms);
  printf("  static: the same resil configuration with a static limit of %u calls in flight\n",
         d->limit);
  printf("  naive: %s;\n         no breaker, no limit, no retries\n\n", d->ops->naive_desc);

  for (int k = 0; k < NSIDES; k++) {
    for (unsigned i = 0; i < d->opt.workers; i++) {
      worker *w = &d->side[k].workers[i];
      w->demo = d;
      w->side = k;
      w->id = i;
      w->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)(k * 1000 + (int)i + 1) * 0xBF58476D1CE4E5B9ull);
      atomic_init(&w->call_start_ns, 0);
      int e = pthread_create(&w->thread, NULL, worker_main, w);
      if (e) {
        fprintf(stderr, "brownout: cannot start a worker thread: %s\n", strerror(e));
        /* Threads already started end by end_ns; cut the schedule short. */
        atomic_store(&d->end_ns, resil_now_ns());
        goto join;
      }
      w->running = true;
    }
  }

  uint64_t pstart = d->t0;
  for (int ph = 0; ph < NPHASES; ph++) {
    uint64_t pend = pstart + d->phase_len[ph];
    sleep_until_ns(pstart);
    for (int k = 0; k < NSIDES; k++) d->ops->set_phase(d->side[k].backend, &PHASES[ph]);
    d->phase_start[ph] = resil_now_ns();
    atomic_store(&d->cur_phase, ph);
    if (!tty)
      printf("  phase %d/%d: %s - %s (%.1f s)\n", ph + 1, NPHASES, PHASES[ph].name,
             PHASES[ph].story, (double)d->phase_len[ph] / 1e9);
    unsigned tick = 0;
    for (;;) {
      if (tick++ % 3 == 0) progress(d, ph, tty);
      uint64_t now = resil_now_ns();
      sample_timeline(d, now);
      if (now >= pend) break;
      sleep_until_ns(min_u64(now + TL_NS, pend));
    }
    snapshot_phase(d, ph);
    pstart = pend;
  }
  d->phase_start[NPHASES] = resil_now_ns();
  printf(tty ? "\r\033[K" : "\n");
  rc = 0;

join:
  for (int k = 0; k < NSIDES; k++)
    for (unsigned i = 0; i < d->opt.workers; i++)
      if (d->side[k].workers && d->side[k].workers[i].running)
        pthread_join(d->side[k].workers[i].thread, NULL);

  if (rc == 0) {
    static row rows[NPHASES][NSIDES];
    for (int ph = 0; ph < NPHASES; ph++)
      for (int k = 0; k < NSIDES; k++) make_row(d, k, ph, &rows[ph][k]);
    print_table(d, rows);
    printf("\n");
    print_summary(d, rows, tty);
    printf("\n");
    if (d->opt.summary) {
      print_machine_summary(d, rows);
      printf("\n");
    }
    if (!write_exports(d->opt.out_dir)) rc = 1;
    if (!write_emf(d)) rc = 1;
    if (!write_timeline(d)) rc = 1;
    if (d->opt.with_servers && run_servers_section(&d->opt) != 0) rc = 1;
  }

out:
  /* Every worker is joined: close the clients, then stop the servers. */
  for (int k = 0; k < NSIDES; k++) {
    side_state *s = &d->side[k];
    if (s->client) d->ops->resil_close(s->client);
    if (s->workers)
      for (unsigned i = 0; i < d->opt.workers; i++)
        if (s->workers[i].naive) d->ops->naive_close(s->workers[i].naive);
    free(s->workers);
    if (s->backend) d->ops->close(s->backend);
  }
#ifdef BROWNOUT_HAVE_HTTP
  curl_global_cleanup();
#endif
  free(d->tl);
  free(d->tl_breaker);
  free(d->tl_limit);
  return rc;
}
