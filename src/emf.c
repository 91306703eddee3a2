/* CloudWatch Embedded Metric Format: rendering and the background emitter.
 *
 * The renderer is a pure function of (config, current stats, previous
 * stats, timestamp). The emitter keeps the previous snapshot of every
 * dependency by name, so counters go out as deltas over the interval, and
 * writes each document with a single write() so that lines shorter than
 * PIPE_BUF never interleave with other writers of stdout. It never blocks:
 * a stdout nobody reads costs dropped lines (counted), not a stuck process.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "resil/emf.h"

#define DEFAULT_NAMESPACE "resil"

void resil_emf_config_init(resil_emf_config *cfg) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->metric_namespace = DEFAULT_NAMESPACE;
  cfg->service = NULL;
  cfg->interval_ms = 60000;
  cfg->fd = 1;
}

static bool namespace_char_ok(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '-' || c == '_' || c == '/' || c == '#' || c == ':' || c == ' ';
}

resil_status resil_emf_config_validate(const resil_emf_config *cfg, resil_err *err) {
  if (!cfg) return resil_err_set(err, RESIL_E_INVALID, "emf: config is NULL");
  resil_problems p;
  resil__problems_init(&p, "");
  const char *ns = cfg->metric_namespace ? cfg->metric_namespace : DEFAULT_NAMESPACE;
  size_t nslen = strlen(ns);
  if (nslen == 0 || nslen > 255) {
    resil__problem(&p, "emf.metric_namespace", "must be 1..255 characters (got %zu)", nslen);
  } else {
    for (size_t i = 0; i < nslen; i++)
      if (!namespace_char_ok(ns[i])) {
        resil__problem(&p, "emf.metric_namespace",
                       "'%.64s' has a character outside A-Z a-z 0-9 . - _ / # : and space", ns);
        break;
      }
    if (strncmp(ns, "AWS/", 4) == 0)
      resil__problem(&p, "emf.metric_namespace", "'%.64s' must not start with AWS/", ns);
  }
  if (cfg->service) {
    size_t sl = strlen(cfg->service);
    if (sl > 255) resil__problem(&p, "emf.service", "longer than 255 bytes (%zu)", sl);
    for (size_t i = 0; i < sl; i++) {
      unsigned char c = (unsigned char)cfg->service[i];
      if (c < 0x20 || c == 0x7f) {
        resil__problem(&p, "emf.service", "contains a control character at byte %zu", i);
        break;
      }
    }
  }
  if (cfg->interval_ms < 1000 || cfg->interval_ms > 86400000u)
    resil__problem(&p, "emf.interval_ms", "%u is outside 1000..86400000", cfg->interval_ms);
  if (cfg->fd < 0) resil__problem(&p, "emf.fd", "%d is not a file descriptor", cfg->fd);
  return resil__problems_finish(&p, err);
}

/* ---- rendering ------------------------------------------------------------ */

typedef enum { M_COUNT, M_GAUGE, M_DOUBLE, M_DIST } mkind;

typedef struct metric {
  const char *name;
  const char *unit;
  mkind kind;
  uint64_t u;
  double d;
  const resil_hist_snapshot *h; /* M_DIST: the interval's counts */
} metric;

#define MAX_METRICS_PER_DEP 64

static uint64_t delta(uint64_t cur, uint64_t prev) { return cur >= prev ? cur - prev : cur; }

/* The change of a histogram over the interval; a reset (any bucket went
 * down) restarts from the current counts. */
static void hist_delta(const resil_hist_snapshot *cur, const resil_hist_snapshot *prev,
                       resil_hist_snapshot *out) {
  *out = *cur;
  if (!prev) return;
  for (unsigned i = 0; i <= RESIL_HIST_BOUNDS; i++)
    if (cur->counts[i] < prev->counts[i]) return;
  out->count = 0;
  for (unsigned i = 0; i <= RESIL_HIST_BOUNDS; i++) {
    out->counts[i] = cur->counts[i] - prev->counts[i];
    out->count += out->counts[i];
  }
  out->sum_ns = delta(cur->sum_ns, prev->sum_ns);
}

/* Bucket i's representative value in ms: its midpoint; the overflow bucket
 * reports the last bound. */
static double bucket_value_ms(unsigned i) {
  const uint64_t *b = resil_hist_bounds_ns();
  if (i >= RESIL_HIST_BOUNDS) return (double)b[RESIL_HIST_BOUNDS - 1] / 1e6;
  uint64_t lo = i ? b[i - 1] : 0;
  return ((double)lo + (double)b[i]) / 2.0 / 1e6;
}

static void render_doc(resil_sbuf *b, const char *ns, const char *service, const char *dep,
                       int64_t ts, const metric *m, size_t n) {
  bool svc = service && *service;
  resil__sb_printf(b, "{\"_aws\":{\"Timestamp\":%lld,\"CloudWatchMetrics\":[{\"Namespace\":",
                   (long long)ts);
  resil__sb_json_string(b, ns);
  resil__sb_printf(b, ",\"Dimensions\":[[%s\"Dependency\"]],\"Metrics\":[",
                   svc ? "\"Service\"," : "");
  for (size_t i = 0; i < n; i++)
    resil__sb_printf(b, "%s{\"Name\":\"%s\",\"Unit\":\"%s\"}", i ? "," : "", m[i].name,
                     m[i].unit);
  resil__sb_printf(b, "]}]}");
  if (svc) {
    resil__sb_printf(b, ",\"Service\":");
    resil__sb_json_string(b, service);
  }
  resil__sb_printf(b, ",\"Dependency\":");
  resil__sb_json_string(b, dep);
  for (size_t i = 0; i < n; i++) {
    resil__sb_printf(b, ",\"%s\":", m[i].name);
    switch (m[i].kind) {
      case M_COUNT:
      case M_GAUGE: resil__sb_printf(b, "%llu", (unsigned long long)m[i].u); break;
      case M_DOUBLE: resil__sb_printf(b, "%.2f", m[i].d); break;
      case M_DIST: {
        const resil_hist_snapshot *h = m[i].h;
        resil__sb_printf(b, "{\"Values\":[");
        bool first = true;
        for (unsigned k = 0; k <= RESIL_HIST_BOUNDS; k++)
          if (h->counts[k]) {
            resil__sb_printf(b, "%s%.6g", first ? "" : ",", bucket_value_ms(k));
            first = false;
          }
        resil__sb_printf(b, "],\"Counts\":[");
        first = true;
        for (unsigned k = 0; k <= RESIL_HIST_BOUNDS; k++)
          if (h->counts[k]) {
            resil__sb_printf(b, "%s%llu", first ? "" : ",", (unsigned long long)h->counts[k]);
            first = false;
          }
        resil__sb_printf(b, "]}");
        break;
      }
    }
  }
  resil__sb_printf(b, "}\n");
}

static const char *const reject_metric[] = {
    "RejectedBreakerOpen", "RejectedConcurrencyFull", "RejectedQueueTimeout",
    "RejectedPoolTimeout", "RejectedDeadline",        "RejectedDraining",
    "RejectedRetryBudget", "RejectedThrottled",       "RejectedRateLimited",
    "RejectedPaused"};
_Static_assert(sizeof reject_metric / sizeof reject_metric[0] == RESIL_REJECT_COUNT_,
               "one EMF name per rejection reason");
static const char *const call_metric[RESIL_OUTCOME_COUNT_] = {
    "CallsSuccess", "CallsFailure", "CallsTimeout", "CallsOverload", "CallsIgnored"};

/* Append the dependency's documents to b. */
/* The pool's metrics of one dependency (cur->has_pool), appended at m[n];
 * returns the new count. acq holds the acquire-latency delta they point to. */
static size_t pool_metrics(metric *m, size_t n, const resil_dep_stats *cur,
                           const resil_dep_stats *pv, resil_hist_snapshot *acq) {
  static const resil_pool_stats zero_pool;
#define GAUGE(nm, val) m[n++] = (metric){.name = (nm), .unit = "Count", .kind = M_GAUGE, .u = (val)}
  const resil_pool_stats *pp = pv->has_pool ? &pv->pool : &zero_pool;
  uint64_t closed = 0, pclosed = 0;
  for (int k = 0; k < RESIL_POOL_CLOSE_REASON_COUNT_; k++) {
    closed += cur->pool.closed[k];
    pclosed += pp->closed[k];
  }
#define PCOUNT(nm, field) \
  m[n++] = (metric){.name = (nm), .unit = "Count", .kind = M_COUNT, \
                    .u = delta(cur->pool.field, pp->field)}
  PCOUNT("PoolAcquireTimeouts", acquire_timeouts);
  PCOUNT("PoolConnectsOk", connects_ok);
  PCOUNT("PoolConnectsFailed", connects_failed);
  PCOUNT("PoolConnectsTimedOut", connects_timed_out);
  m[n++] = (metric){.name = "PoolClosed", .unit = "Count", .kind = M_COUNT,
                    .u = delta(closed, pclosed)};
  GAUGE("PoolMax", cur->pool.max);
  GAUGE("PoolOpen", cur->pool.open);
  GAUGE("PoolInUse", cur->pool.in_use);
  GAUGE("PoolIdle", cur->pool.idle);
  GAUGE("PoolWaiters", cur->pool.waiters);
  hist_delta(&cur->pool.acquire_latency, pv->has_pool ? &pp->acquire_latency : NULL, acq);
  if (acq->count)
    m[n++] = (metric){.name = "PoolAcquireLatency", .unit = "Milliseconds", .kind = M_DIST,
                      .h = acq};
#undef PCOUNT
#undef GAUGE
  return n;
}

static void render_dep(resil_sbuf *b, const char *ns, const char *service,
                       const resil_dep_stats *cur, const resil_dep_stats *prev, int64_t ts,
                       unsigned max_metrics) {
  static const resil_dep_stats zero;
  const resil_dep_stats *pv = prev ? prev : &zero;
  metric m[MAX_METRICS_PER_DEP];
  size_t n = 0;
#define COUNT(nm, field) \
  m[n++] = (metric){.name = (nm), .unit = "Count", .kind = M_COUNT, .u = delta(cur->field, pv->field)}
#define GAUGE(nm, val) m[n++] = (metric){.name = (nm), .unit = "Count", .kind = M_GAUGE, .u = (val)}

  uint64_t calls = 0, pcalls = 0, rej = 0, prej = 0;
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) {
    calls += cur->calls[k];
    pcalls += pv->calls[k];
  }
  for (int k = 0; k < RESIL_REJECT_COUNT_; k++) {
    rej += cur->rejections[k];
    prej += pv->rejections[k];
  }
  m[n++] = (metric){.name = "Calls", .unit = "Count", .kind = M_COUNT, .u = delta(calls, pcalls)};
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) COUNT(call_metric[k], calls[k]);
  m[n++] = (metric){.name = "Rejections", .unit = "Count", .kind = M_COUNT, .u = delta(rej, prej)};
  for (int k = 0; k < RESIL_REJECT_COUNT_; k++) COUNT(reject_metric[k], rejections[k]);
  COUNT("Retries", retries);
  COUNT("BreakerOpened", breaker.transitions[RESIL_BREAKER_OPEN]);
  COUNT("ProbesSuccess", probes[RESIL_PROBE_SUCCESS]);
  COUNT("ProbesFailure", probes[RESIL_PROBE_FAILURE]);
  COUNT("ProbesTimeout", probes[RESIL_PROBE_TIMEOUT]);
  COUNT("EventsDropped", events_dropped);
  GAUGE("InFlight", cur->in_flight);
  GAUGE("ConcurrencyLimit", cur->limit);
  GAUGE("ConcurrencyLimitMin", cur->limit_min);
  GAUGE("ConcurrencyLimitMax", cur->limit_max);
  m[n++] = (metric){.name = "ThrottleProbability", .unit = "Percent", .kind = M_DOUBLE,
                    .d = cur->throttle_probability * 100.0};
  GAUGE("QueueWaiters", cur->waiters);
  m[n++] = (metric){.name = "PauseRemaining", .unit = "Milliseconds", .kind = M_GAUGE,
                    .u = cur->pause_remaining_ms};
  m[n++] = (metric){.name = "MemoryBytes", .unit = "Bytes", .kind = M_GAUGE,
                    .u = cur->memory_bytes};
  m[n++] = (metric){.name = "Saturation", .unit = "Percent", .kind = M_DOUBLE,
                    .d = cur->saturation * 100.0};
  m[n++] = (metric){.name = "BreakerState", .unit = "None", .kind = M_GAUGE,
                    .u = (uint64_t)cur->breaker.state};
  resil_hist_snapshot lat, acq;
  hist_delta(&cur->latency, prev ? &prev->latency : NULL, &lat);
  if (lat.count)
    m[n++] = (metric){.name = "Latency", .unit = "Milliseconds", .kind = M_DIST, .h = &lat};
  if (cur->has_pool) n = pool_metrics(m, n, cur, pv, &acq);
#undef COUNT
#undef GAUGE
  for (size_t i = 0; i < n; i += max_metrics)
    render_doc(b, ns, service, cur->name, ts, &m[i], n - i < max_metrics ? n - i : max_metrics);
}

resil_status resil_emf_render(const resil_emf_config *cfg, const resil_dep_stats *cur,
                              const resil_dep_stats *prev, int64_t timestamp_ms,
                              unsigned max_metrics, char **out, size_t *len, resil_err *err) {
  if (!cfg || !cur || !out)
    return resil_err_set(err, RESIL_E_INVALID, "emf: %s is NULL",
                         !cfg ? "config" : !cur ? "stats" : "out");
  resil_status st = resil_emf_config_validate(cfg, err);
  if (st != RESIL_OK) return st;
  if (max_metrics == 0 || max_metrics > RESIL_EMF_MAX_METRICS) max_metrics = RESIL_EMF_MAX_METRICS;
  resil_sbuf b = {0};
  render_dep(&b, cfg->metric_namespace ? cfg->metric_namespace : DEFAULT_NAMESPACE, cfg->service,
             cur, prev, timestamp_ms, max_metrics);
  return resil__sb_finish(&b, out, len, err);
}

/* ---- the emitter ------------------------------------------------------------ */

/* How the emitter writes to its fd without ever blocking, and without
 * changing the flags of the caller's fd (O_NONBLOCK lives in the open file
 * description, which dup() shares with every other writer of stdout):
 *   W_REOPEN  a pipe, FIFO or terminal: a private description of the same
 *             file, opened through /proc/self/fd/N with O_NONBLOCK;
 *   W_SEND    a socket: send(MSG_DONTWAIT);
 *   W_PLAIN   a regular file (or block device): write() never waits for a
 *             reader there;
 *   W_POLL    anything else, or /proc not mounted: poll(POLLOUT) before each
 *             write(); a write larger than the room left can still block
 *             (documented in emf.h). */
typedef enum { W_PLAIN, W_REOPEN, W_SEND, W_POLL } wmode;

static pthread_mutex_t emf_mu = PTHREAD_MUTEX_INITIALIZER; /* state; never held across I/O */
static _Atomic bool emf_on;
static bool emf_stop;
static pthread_t emf_thread;
static pthread_cond_t emf_cv;   /* wakes the emitter thread (stop) */
static pthread_cond_t emf_idle; /* signalled when the last writer is done */
static unsigned emf_writers;    /* emissions writing right now (without emf_mu) */
static resil_emf_config emf_cfg;
static char emf_ns[256], emf_service[256];
static resil_dep_stats *emf_prev; /* the last emission's snapshot */
static size_t emf_nprev;
static int emf_wfd = -1;          /* what is written to: emf_cfg.fd or a private reopen */
static wmode emf_wmode;
static bool emf_torn;             /* a line was cut short: start the next with '\n' */
static _Atomic uint64_t emf_dropped;

uint64_t resil_emf_dropped_lines(void) { return atomic_load(&emf_dropped); }

static int64_t realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Choose how to write to fd (see wmode); *wfd is the fd to write to. */
static wmode pick_writer(int fd, int *wfd) {
  struct stat st;
  *wfd = fd;
  if (fstat(fd, &st) != 0) return W_POLL;
  if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) return W_PLAIN;
  if (S_ISSOCK(st.st_mode)) return W_SEND;
  if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int r = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (r >= 0) {
      struct stat rs;
      if (fstat(r, &rs) == 0 && rs.st_dev == st.st_dev && rs.st_ino == st.st_ino) {
        *wfd = r;
        return W_REOPEN;
      }
      close(r);
    }
  }
  return W_POLL;
}

/* One non-blocking write attempt: bytes written, 0 for "no room now", -1 on
 * an error (errno). */
static ssize_t try_write(int fd, wmode m, const char *p, size_t n) {
  for (;;) {
    ssize_t w;
    if (m == W_SEND) {
      w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    } else if (m == W_POLL) {
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      int r = poll(&pfd, 1, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return -1;
      if (r == 0) return 0;
      if (pfd.revents & (POLLERR | POLLNVAL)) {
        errno = EIO;
        return -1;
      }
      w = write(fd, p, n);
    } else {
      w = write(fd, p, n);
    }
    if (w >= 0) return w;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return -1;
  }
}

/* Wait for room on fd until the monotonic time `until` (ns). true if there
 * may be room now. */
static bool wait_room(int fd, uint64_t until) {
  for (;;) {
    uint64_t now = mono_ns();
    if (now >= until) return false;
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int ms = (int)((until - now + 999999) / 1000000);
    int r = poll(&pfd, 1, ms);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

/* Write buf (whole lines) to fd, each line with as few writes as the fd
 * allows (one for a pipe line under PIPE_BUF, so lines never interleave
 * with other writers), never blocking: when the fd has no room the writer
 * waits for it until `until`, then drops the line and counts it. A line cut
 * short (only possible above PIPE_BUF) is ended with '\n' before the next,
 * so one bad line does not spoil another. No lock held. 0, or the errno of
 * a failed write (EAGAIN: lines were dropped for lack of room). */
static int write_lines(int fd, wmode m, const char *buf, size_t len, uint64_t until, bool *torn) {
  int result = 0;
  for (size_t off = 0; off < len;) {
    const char *nl = memchr(buf + off, '\n', len - off);
    size_t ll = nl ? (size_t)(nl - (buf + off)) + 1 : len - off;
    const char *p = buf + off;
    size_t left = ll;
    off += ll;
    if (*torn) { /* end the torn line first */
      ssize_t w = try_write(fd, m, "\n", 1);
      while (w == 0 && wait_room(fd, until)) w = try_write(fd, m, "\n", 1);
      if (w != 1) {
        atomic_fetch_add(&emf_dropped, 1);
        if (!result) result = w < 0 ? errno : EAGAIN;
        continue;
      }
      *torn = false;
    }
    while (left > 0) {
      ssize_t w = try_write(fd, m, p, left);
      if (w > 0) {
        p += w;
        left -= (size_t)w;
        continue;
      }
      int e = w < 0 ? errno : EAGAIN;
      if (w == 0 && wait_room(fd, until)) continue;
      atomic_fetch_add(&emf_dropped, 1);
      if (left < ll) *torn = true;
      if (!result) result = e;
      break;
    }
  }
  return result;
}

/* One interval: snapshot and render against the previous snapshot under
 * emf_mu, keep the snapshot, then write with no lock held (bounded by
 * RESIL_EMF_WRITE_BUDGET_MS). Called with emf_mu held; returns with it held. */
static resil_status emit_locked(resil_err *err) {
  resil_stats_vec cur;
  resil_status sst = resil__stats_snapshot(&cur, "emf", err);
  if (sst != RESIL_OK) return sst;
  int64_t ts = realtime_ms();
  resil_status st = RESIL_OK;
  resil_sbuf b = {0};
  for (size_t i = 0; i < cur.n; i++) {
    const resil_dep_stats *prev = NULL;
    for (size_t k = 0; k < emf_nprev; k++)
      if (strcmp(emf_prev[k].name, cur.v[i].name) == 0) {
        prev = &emf_prev[k];
        break;
      }
    render_dep(&b, emf_ns, emf_service[0] ? emf_service : NULL, &cur.v[i], prev, ts,
               RESIL_EMF_MAX_METRICS);
    if (b.oom) break;
  }
  free(emf_prev);
  emf_prev = cur.v;
  emf_nprev = cur.n;
  if (b.oom) {
    free(b.p);
    return resil_err_set(err, RESIL_E_NOMEM, "emf: out of memory");
  }
  int fd = emf_wfd, ufd = emf_cfg.fd;
  wmode m = emf_wmode;
  bool torn = emf_torn;
  emf_writers++;
  pthread_mutex_unlock(&emf_mu);

  uint64_t dropped0 = atomic_load(&emf_dropped);
  int e = b.len ? write_lines(fd, m, b.p, b.len,
                              mono_ns() + (uint64_t)RESIL_EMF_WRITE_BUDGET_MS * 1000000ull, &torn)
                : 0;
  uint64_t dropped = atomic_load(&emf_dropped) - dropped0;
  free(b.p);

  pthread_mutex_lock(&emf_mu);
  emf_torn = torn; /* concurrent emissions: the last word wins; at worst one torn line more */
  if (--emf_writers == 0) pthread_cond_broadcast(&emf_idle);
  if (e == EAGAIN)
    st = resil_err_set(err, RESIL_E_TIMEOUT,
                       "emf: fd %d had no room for %d ms: %llu line%s dropped "
                       "(resil_emf_dropped_lines_total)",
                       ufd, RESIL_EMF_WRITE_BUDGET_MS, (unsigned long long)dropped,
                       dropped == 1 ? "" : "s");
  else if (e)
    st = resil_err_set(err, RESIL_E_SYSTEM, "emf: write to fd %d failed: %s (%llu line%s dropped)",
                       ufd, strerror(e), (unsigned long long)dropped, dropped == 1 ? "" : "s");
  return st;
}

static void *emf_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&emf_mu);
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  while (!emf_stop) {
    uint64_t ns = (uint64_t)next.tv_nsec + (uint64_t)emf_cfg.interval_ms * 1000000ull;
    next.tv_sec += (time_t)(ns / 1000000000ull);
    next.tv_nsec = (long)(ns % 1000000000ull);
    int rc = 0;
    while (!emf_stop && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&emf_cv, &emf_mu, &next);
    if (emf_stop) break;
    emit_locked(NULL);
    /* If emitting fell behind, restart the schedule from now rather than
     * bursting to catch up. */
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec > next.tv_sec || (now.tv_sec == next.tv_sec && now.tv_nsec > next.tv_nsec))
      next = now;
  }
  pthread_mutex_unlock(&emf_mu);
  return NULL;
}

resil_status resil_emf_start(const resil_emf_config *cfg, resil_err *err) {
  resil_status st = resil_emf_config_validate(cfg, err);
  if (st != RESIL_OK) return st;
  pthread_mutex_lock(&emf_mu);
  if (atomic_load(&emf_on)) {
    pthread_mutex_unlock(&emf_mu);
    return resil_err_set(err, RESIL_E_INVALID, "emf: an emitter is already running");
  }
  emf_cfg = *cfg;
  resil__strlcpy(emf_ns, cfg->metric_namespace ? cfg->metric_namespace : DEFAULT_NAMESPACE,
                 sizeof emf_ns);
  resil__strlcpy(emf_service, cfg->service ? cfg->service : "", sizeof emf_service);
  emf_cfg.metric_namespace = emf_ns;
  emf_cfg.service = emf_service;
  /* Baseline: the first interval reports what happens from now on. */
  resil_stats_vec base;
  if (resil__stats_snapshot(&base, "emf", err) != RESIL_OK) {
    pthread_mutex_unlock(&emf_mu);
    return RESIL_E_NOMEM;
  }
  free(emf_prev);
  emf_prev = base.v;
  emf_nprev = base.n;
  emf_stop = false;
  emf_torn = false;
  if (resil__cond_init(&emf_cv) != 0) {
    pthread_mutex_unlock(&emf_mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "emf: cannot create a condition variable");
  }
  if (resil__cond_init(&emf_idle) != 0) {
    pthread_cond_destroy(&emf_cv);
    pthread_mutex_unlock(&emf_mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "emf: cannot create a condition variable");
  }
  emf_wmode = pick_writer(cfg->fd, &emf_wfd);
  int rc = pthread_create(&emf_thread, NULL, emf_main, NULL);
  if (rc != 0) {
    if (emf_wfd != cfg->fd) close(emf_wfd);
    emf_wfd = -1;
    pthread_cond_destroy(&emf_cv);
    pthread_cond_destroy(&emf_idle);
    pthread_mutex_unlock(&emf_mu);
    return resil_err_set(err, RESIL_E_SYSTEM, "emf: cannot start the emitter thread: %s",
                         strerror(rc));
  }
  atomic_store(&emf_on, true);
  pthread_mutex_unlock(&emf_mu);
  return RESIL_OK;
}

resil_status resil_emf_flush(resil_err *err) {
  pthread_mutex_lock(&emf_mu);
  if (!atomic_load(&emf_on) || emf_stop) {
    pthread_mutex_unlock(&emf_mu);
    return resil_err_set(err, RESIL_E_CLOSED, "emf: no emitter is running");
  }
  resil_status st = emit_locked(err);
  pthread_mutex_unlock(&emf_mu);
  return st;
}

void resil_emf_stop(void) {
  pthread_mutex_lock(&emf_mu);
  if (!atomic_load(&emf_on) || emf_stop) {
    pthread_mutex_unlock(&emf_mu);
    return;
  }
  emf_stop = true;
  pthread_cond_signal(&emf_cv);
  pthread_mutex_unlock(&emf_mu);
  pthread_join(emf_thread, NULL);
  pthread_mutex_lock(&emf_mu);
  /* A flush on another thread may still be writing (for at most the write
   * budget): the private fd stays open until it is done. */
  while (emf_writers) pthread_cond_wait(&emf_idle, &emf_mu);
  if (emf_wfd >= 0 && emf_wfd != emf_cfg.fd) close(emf_wfd);
  emf_wfd = -1;
  pthread_cond_destroy(&emf_cv);
  pthread_cond_destroy(&emf_idle);
  free(emf_prev);
  emf_prev = NULL;
  emf_nprev = 0;
  atomic_store(&emf_on, false);
  emf_stop = false;
  pthread_mutex_unlock(&emf_mu);
}

bool resil_emf_running(void) { return atomic_load(&emf_on); }
