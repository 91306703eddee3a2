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
 *   http  (the default when built with resil-http) testhttpd, the project's
 *         HTTP/1.1 test server (tools/testhttpd), one child process per side
 *         on 127.0.0.1; the demo scripts its /work endpoint per phase (POST
 *         /scenario: latency, error rate - errors are 503s - and how many it
 *         serves at once). The resil side calls it with resil_http_get() and
 *         a per-request deadline; the naive side with one plain libcurl easy
 *         handle per worker thread, CURLOPT_TIMEOUT 30 s and curl's defaults
 *         otherwise.
 *   sim   simulated in-process (brownout_sim.c; the default without libcurl).
 * Both sit behind backend_ops (brownout.h); nothing else depends on which.
 *
 * At the end it prints one row per phase and side (print_table below), a
 * short summary computed from those numbers, and writes what resil exported
 * and the run's timeline for scripts/demo-plot.gp (brownout_report.c).
 * --with-servers then stalls real Redis and PostgreSQL servers and fails a
 * writer over (brownout_servers.c; scripts/demo.sh --with-servers starts the
 * servers with scripts/lib/servers.sh).
 *
 * Every wait is bounded. Naive calls may be "stuck" for seconds - that is
 * the point - but the dependency never holds a request for more than 0.4 s
 * (twice the resil deadline) past the end of the phase schedule: it then
 * shuts down, closing its connections, and the stuck calls fail. So the
 * program always ends, every thread is joined and every socket closed.
 *
 * Build: meson compile -C build examples/brownout tools/testhttpd; run:
 * build/examples/brownout --help
 */
#include "brownout.h"

#include <resil/adapter.h> /* resil_err_set */

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifdef BROWNOUT_HAVE_HTTP
#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <resil/http.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#endif

/* ---- The scenario -------------------------------------------------------- */

/* Default run (--phase-seconds 10): 6 + 8 + 12 + 12 + 22 + 20 = 80 s. The
 * outage lasts over 20 s so that the breaker's break has grown (5 -> 10 ->
 * 20 s) when the dependency heals: the recovery probes end it. */
const phase_spec PHASES[NPHASES] = {
    {"healthy", 500, 1500, 0.01, 0, 6, "latency ~1 ms, 1% errors", "~1 ms, 1% errors"},
    {"brownout", 2000000, 4000000, 0.0, 0, 8, "latency 2-4 s, no errors", "2-4 s"},
    {"saturated", 36000, 44000, 0.0, 2, 12,
     "serves 2 at once (~40 ms each, ~50/s), queues the rest", "2 at once, queue"},
    {"partial", 500, 1500, 0.60, 0, 12, "latency ~1 ms, 60% errors", "60% errors"},
    {"outage", 1000, 2000, 1.0, 0, 22, "answers in ~1 ms, every answer an error", "fast 503s"},
    {"recovery", 500, 1500, 0.01, 0, 20, "latency ~1 ms, 1% errors (healed)", "~1 ms"},
};

const char *const SIDE_NAME[NSIDES] = {"resil", "static", "naive"};

#ifdef BROWNOUT_HAVE_HTTP
/* ---- The HTTP dependency: testhttpd on loopback --------------------------- */

/* One testhttpd per side, a child process (killed if the demo dies). Its
 * /work answers as the last POST /scenario said: after a latency drawn in
 * [min_us, max_us], a 503 at the error rate, else 200; with serve_max it
 * serves that many at once and queues the rest, and a request it took keeps
 * its slot even if the caller left. At shutdown (SIGTERM) it cuts what it
 * still holds, closing the connections, and exits. */
typedef struct http_server {
  pid_t pid;
  int out_fd; /* its stdout: the PORT= line */
  unsigned port;
  char base_url[64];
  CURL *ctl; /* the main thread's, for POST /scenario */
} http_server;

static unsigned g_max_conns = 256; /* --max-conns: more than the clients ever open */

static size_t discard_body(char *p, size_t sz, size_t n, void *ud) {
  (void)p;
  (void)ud;
  return sz * n;
}

static void http_shutdown(void *b) { kill(((http_server *)b)->pid, SIGTERM); }

static void http_close(void *b) {
  http_server *s = b;
  if (!s) return;
  if (s->pid > 0) {
    kill(s->pid, SIGTERM); /* it waits up to 5 s for its connections; then it is killed */
    pid_t r = 0;
    for (int i = 0; i < 800 && (r = waitpid(s->pid, NULL, WNOHANG)) == 0; i++)
      sleep_until_ns(resil_now_ns() + 10000000ull);
    if (r == 0) {
      kill(s->pid, SIGKILL);
      waitpid(s->pid, NULL, 0);
    }
  }
  if (s->out_fd >= 0) close(s->out_fd);
  if (s->ctl) curl_easy_cleanup(s->ctl);
  free(s);
}

/* Start testhttpd --port 0 and read the port it prints (within 5 s). */
static bool http_spawn(http_server *s, resil_err *err) {
  const char *exe = getenv("RESIL_TESTHTTPD");
  if (!exe || !*exe) exe = BROWNOUT_TESTHTTPD;
  int pfd[2];
  if (access(exe, X_OK) != 0 || pipe2(pfd, O_CLOEXEC) != 0) {
    resil_err_set(err, RESIL_E_SYSTEM, "cannot run testhttpd %s: %s (build it: ninja -C BUILD "
                  "tools/testhttpd; or set RESIL_TESTHTTPD; or --backend sim)", exe, strerror(errno));
    return false;
  }
  char conns[16];
  snprintf(conns, sizeof conns, "%u", g_max_conns);
  pid_t parent = getpid();
  if ((s->pid = fork()) == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(pfd[1], STDOUT_FILENO);
    execl(exe, exe, "--port", "0", "--max-conns", conns, (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  s->out_fd = pfd[0];
  char line[64] = "";
  size_t len = 0;
  for (uint64_t until = resil_now_ns() + 5000000000ull; s->pid > 0 && !memchr(line, '\n', len);) {
    struct pollfd p = {.fd = s->out_fd, .events = POLLIN};
    uint64_t now = resil_now_ns();
    if (now >= until || poll(&p, 1, (int)((until - now) / 1000000 + 1)) <= 0) break;
    ssize_t r = read(s->out_fd, line + len, sizeof line - 1 - len);
    if (r <= 0) break;
    line[len += (size_t)r] = '\0';
  }
  if (s->pid > 0 && sscanf(line, "PORT=%u", &s->port) == 1) return true;
  resil_err_set(err, RESIL_E_SYSTEM, "testhttpd %s did not start (no PORT= line within 5 s)", exe);
  return false;
}

static void *http_open(const uint64_t *shutdown_ns, resil_err *err) {
  (void)shutdown_ns; /* main() calls http_shutdown() then */
  http_server *s = calloc(1, sizeof *s);
  if (!s) {
    resil_err_set(err, RESIL_E_NOMEM, "out of memory");
    return NULL;
  }
  s->out_fd = -1;
  if (!http_spawn(s, err)) {
    http_close(s);
    return NULL;
  }
  snprintf(s->base_url, sizeof s->base_url, "http://127.0.0.1:%u", s->port);
  if (!(s->ctl = curl_easy_init())) {
    resil_err_set(err, RESIL_E_NOMEM, "curl_easy_init failed");
    http_close(s);
    return NULL;
  }
  curl_easy_setopt(s->ctl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(s->ctl, CURLOPT_TIMEOUT_MS, 2000L);
  curl_easy_setopt(s->ctl, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(s->ctl, CURLOPT_WRITEFUNCTION, discard_body);
  return s;
}

static void http_set_phase(void *b, const phase_spec *ph) {
  http_server *s = b;
  char url[192];
  snprintf(url, sizeof url,
           "%s/scenario?min_us=%" PRIu64 "&max_us=%" PRIu64 "&error_pct=%d&serve_max=%u",
           s->base_url, ph->lat_min_us, ph->lat_max_us, (int)(ph->error_rate * 100.0 + 0.5),
           ph->serve_max);
  curl_easy_setopt(s->ctl, CURLOPT_URL, url);
  CURLcode rc = curl_easy_perform(s->ctl);
  long code = 0;
  curl_easy_getinfo(s->ctl, CURLINFO_RESPONSE_CODE, &code);
  if (rc != CURLE_OK || code != 200)
    fprintf(stderr, "brownout: POST %s: %s (HTTP %ld)\n", url, curl_easy_strerror(rc), code);
}

static void http_describe(void *b, char *buf, size_t n) {
  http_server *s = b;
  snprintf(buf, n, "testhttpd on 127.0.0.1:%u (pid %d)", s->port, (int)s->pid);
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
  hc.probe_path = "/work"; /* the recovery probe asks what the callers ask */
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
    .shutdown = http_shutdown,
    .close = http_close,
    .set_phase = http_set_phase,
    .describe = http_describe,
    .resil_open = http_resil_open,
    .resil_close = http_resil_close,
    .resil_request = http_resil_request,
    .naive_open = http_naive_open,
    .naive_close = http_naive_close,
    .naive_request = http_naive_request,
    .where = "testhttpd (tools/testhttpd) in a child process",
    .resil_desc = "resil_http_get() with the deadline, over a pool of reused connections",
    .naive_desc = "a libcurl easy handle per worker, CURLOPT_TIMEOUT 30 s, curl defaults otherwise",
};

const char *const DEFAULT_BACKEND = "http", *const BACKEND_NAMES = "http, sim",
                 *const BACKEND_NOTE = "";
#else
const char *const DEFAULT_BACKEND = "sim", *const BACKEND_NAMES = "sim",
                 *const BACKEND_NOTE = "; built without libcurl, so no http";
#endif

const backend_ops *find_backend(const char *name) {
  if (!strcmp(name, "sim")) return &SIM_BACKEND;
#ifdef BROWNOUT_HAVE_HTTP
  if (!strcmp(name, "http")) return &HTTP_BACKEND;
#endif
  return NULL;
}

/* ---- The workers ------------------------------------------------------------ */

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

    int ph = atomic_load(&s->cur_phase);
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


/* ---- The table -------------------------------------------------------------- */

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
  g_max_conns = d->opt.workers + 256; /* testhttpd: a thread per connection, up to this */
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

  resil_err err;
  rc = 1;
  resil_dep_config dcfg;
  make_resil_config(d, &dcfg);
  for (int k = 0; k < NSIDES; k++) {
    side_state *s = &d->side[k];
    for (int ph = 0; ph < NPHASES; ph++) atomic_init(&s->first_reject[ph], UINT64_MAX);
    s->backend = d->ops->open(&d->shutdown_ns, &err);
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

  /* Start a little ahead so every thread is up when the clock starts. Shut
   * the dependencies down a little after the schedule ends: later than any
   * resil call can last, so only calls stuck for seconds are cut. */
  d->t0 = resil_now_ns() + 100000000ull;
  atomic_init(&d->end_ns, d->t0 + total_ns);
  d->shutdown_ns = d->t0 + total_ns + 2 * DEADLINE_MS * 1000000ull;

  printf("resil %s brownout demo: one workload, with and without resil, side by side\n",
         resil_version());
  char where[NSIDES][128];
  for (int k = 0; k < NSIDES; k++)
    d->ops->describe(d->side[k].backend, where[k], sizeof where[k]);
  printf("  dependency: one copy per side, %s (--backend %s)\n", d->ops->where, d->ops->name);
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
    for (int k = 0; k < NSIDES; k++) {
      d->ops->set_phase(d->side[k].backend, &PHASES[ph]);
      atomic_store(&d->side[k].cur_phase, ph);
    }
    d->phase_start[ph] = resil_now_ns();
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
  /* Naive calls still stuck fail when the dependency shuts down. */
  if (d->ops->shutdown) {
    if (rc == 0) sleep_until_ns(d->shutdown_ns);
    for (int k = 0; k < NSIDES; k++)
      if (d->side[k].backend) d->ops->shutdown(d->side[k].backend);
  }
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
    if (!write_outputs(d)) rc = 1;
    if (d->opt.with_servers && run_servers_section(d->opt.phase_s) != 0) rc = 1;
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
