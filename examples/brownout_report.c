/* brownout: what the demo does after the table (the summary paragraph, the
 * --summary lines, the exported metrics and the timeline), its small helpers
 * and its command line. See brownout.c for the scenario. */
#include "brownout.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- Small helpers ------------------------------------------------------- */

uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* Uniform in [0, 1). */
double rand01(uint64_t *s) { return (double)(xorshift(s) >> 11) / 9007199254740992.0; }

/* Sleep until the monotonic instant at_ns (resil's clock is CLOCK_MONOTONIC). */
void sleep_until_ns(uint64_t at_ns) {
  struct timespec ts = {.tv_sec = (time_t)(at_ns / 1000000000ull),
                        .tv_nsec = (long)(at_ns % 1000000000ull)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* "1.2 s", "201 ms", "3.4 ms", "87 us". */
const char *fmt_dur(char *buf, size_t n, uint64_t ns) {
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
const char *fmt_count(char *buf, size_t n, uint64_t v) {
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

void cell_add_latency(cell *c, uint64_t ns) {
  double us = (double)ns / 1e3;
  int i = us <= 1.0 ? 0 : (int)(log10(us) * 100.0);
  c->hist[i < LAT_BUCKETS ? i : LAT_BUCKETS - 1]++;
  if (ns > c->max_ns) c->max_ns = ns;
}

int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The q-quantile of a histogram: the middle of the bucket holding it. */
uint64_t hist_quantile(const uint64_t *h, uint64_t n, double q) {
  if (n == 0) return 0;
  uint64_t rank = (uint64_t)(q * (double)n + 0.999999), seen = 0;
  if (rank < 1) rank = 1;
  for (int i = 0; i < LAT_BUCKETS; i++) {
    seen += h[i];
    if (seen >= rank) return (uint64_t)(pow(10.0, ((double)i + 0.5) / 100.0) * 1e3);
  }
  return 0;
}

/* ---- The breaker transition log -------------------------------------------- */

/* The transition log is written by whichever thread moves the breaker (a
 * caller, or the recovery probe's background thread) and read by the main
 * thread while probes may still run: under this lock. */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void on_transition(void *ctx, const char *name, resil_breaker_state from,
                          resil_breaker_state to, resil_trip_reason reason) {
  (void)name;
  (void)from;
  demo *d = ctx;
  pthread_mutex_lock(&g_log_mu);
  unsigned i = atomic_fetch_add(&d->nlog, 1);
  if (i < MAX_TRANSITIONS) d->log[i] = (transition){resil_now_ns(), to, reason};
  pthread_mutex_unlock(&g_log_mu);
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

unsigned count_trips(const demo *d, uint64_t from_ns, uint64_t to_ns) {
  pthread_mutex_lock(&g_log_mu);
  unsigned n = atomic_load(&d->nlog), c = 0;
  if (n > MAX_TRANSITIONS) n = MAX_TRANSITIONS;
  for (unsigned i = 0; i < n; i++)
    if (d->log[i].to == RESIL_BREAKER_OPEN && d->log[i].at_ns >= from_ns && d->log[i].at_ns < to_ns)
      c++;
  pthread_mutex_unlock(&g_log_mu);
  return c;
}

/* ---- The summary ------------------------------------------------------------- */

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

void print_summary(const demo *d, row rows[NPHASES][NSIDES], bool tty) {
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
void print_machine_summary(const demo *d, row rows[NPHASES][NSIDES]) {
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
void sample_timeline(demo *d, uint64_t now) {
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

/* Everything resil exported, and the timeline, into --out-dir. */
bool write_outputs(const demo *d) {
  bool ok = write_exports(d->opt.out_dir);
  ok = write_emf(d) && ok;
  return write_timeline(d) && ok;
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
          "  --backend KIND     the dependency: http = testhttpd (tools/testhttpd, a real\n"
          "                     HTTP/1.1 server) on 127.0.0.1, a child process per side,\n"
          "                     called through resil-http and plain libcurl (its path:\n"
          "                     $RESIL_TESTHTTPD, else the one this build made);\n"
          "                     sim = simulated in-process\n"
          "                     (default: %s%s)\n"
          "  --out-dir DIR      where to write brownout-metrics.prom, .json and .emf and\n"
          "                     brownout-timeline.tsv / brownout-phases.tsv\n"
          "                     (default: the current directory; created if missing)\n"
          "  --summary          also print machine-readable lines after the summary:\n"
          "                     SUMMARY-BROWNOUT <metric> <resil> <naive> (for scripts/bench.sh)\n"
          "  --with-servers     afterwards, against the Redis and PostgreSQL 15 servers that\n"
          "                     scripts/lib/servers.sh started (its RESIL_TEST_* variables;\n"
          "                     scripts/demo.sh --with-servers starts them): stall each\n"
          "                     with SIGSTOP for a phase and compare resil (200 ms\n"
          "                     deadline) with the raw driver (no timeout); then a\n"
          "                     failover: the writer's name moves to another server while\n"
          "                     the old one turns read-only (PostgreSQL 25006, Redis\n"
          "                     READONLY). What is missing is skipped with a note.\n"
          "                     About a minute more (30 s with --quick). Default: off\n"
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
int parse_args(int argc, char **argv, options *o) {
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

