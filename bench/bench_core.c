/* Core engine benchmark: admit+done and open rejection, in ns/op, against a
 * plain mutex-protected breaker measured in the same run (the two sides'
 * runs alternate, so both see the same load); pool
 * acquire+release against a mutex-protected free list; and the time to
 * render the Prometheus text and the JSON snapshot for 100 dependencies
 * (no baseline). Prints numbers; never passes or fails.
 *
 *   bench_core [--iters N] [--runs R] [--summary] [--call-path-only]
 *
 * The header names the clock resil's call path read (resil_info's clock
 * label: tsc or clock_gettime; RESIL_CLOCK=tsc|portable forces either) and
 * the kernel's clocksource, which decide most of admit+done's cost: figures
 * from different machines or clocks are not comparable. --call-path-only
 * leaves out the render rows (scripts/bench.sh runs this program once per
 * clock).
 *
 * --summary adds one machine-readable line per row after the table (read by
 * scripts/bench.sh):
 *   SUMMARY <name>@<clock> <resil_ns> <raw_ns> <ratio> <resil_min> <resil_max> <raw_min> <raw_max>
 * where raw is the one-mutex baseline and every ns figure a median over the
 * runs, and one line
 *   SUMMARY-CLOCK <clock> <kernel clocksource>
 *
 * Allocation counting (tests/support/alloc_count.h): malloc/calloc/realloc
 * are interposed (this binary's definitions win over libc's) and counted
 * while the measured loops run.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "resil/resil.h"

/* ---- allocation counter: tests/support/alloc_count.h (shared with the
 * test that asserts zero allocations, tests/unit/test_alloc.c) ---------- */
#include "alloc_count.h"

static long iters = 2000000;
static int runs = 7;
static int summary;
static int call_path_only;
static char clock_name[32] = "?"; /* resil_info's clock label */

/* Machine-readable rows, printed after the table with --summary. */
static char summary_buf[4096];
static size_t summary_len;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- baseline: the breaker people write first (one mutex) ---------------- */
typedef struct naive {
  pthread_mutex_t mu;
  int state; /* 0 closed, 1 open */
  uint64_t open_until, calls, failures, consecutive, in_flight, limit;
  uint64_t lat_sum;
} naive;

static int naive_admit(naive *n, uint64_t *start) {
  pthread_mutex_lock(&n->mu);
  uint64_t t = now_ns();
  if (n->state == 1 && t < n->open_until) {
    pthread_mutex_unlock(&n->mu);
    return -1;
  }
  if (n->in_flight >= n->limit) {
    pthread_mutex_unlock(&n->mu);
    return -2;
  }
  n->in_flight++;
  pthread_mutex_unlock(&n->mu);
  *start = t;
  return 0;
}

static void naive_done(naive *n, uint64_t start, int ok) {
  uint64_t t = now_ns();
  pthread_mutex_lock(&n->mu);
  n->in_flight--;
  n->calls++;
  n->lat_sum += t - start;
  if (ok)
    n->consecutive = 0;
  else if (++n->consecutive >= 5) {
    n->state = 1;
    n->open_until = t + 5000000000ull;
  }
  pthread_mutex_unlock(&n->mu);
}

/* ---- baseline: a connection pool as a mutex-protected free list ----------- */
typedef struct freelist {
  pthread_mutex_t mu;
  void *items[16];
  int n;
} freelist;

static void *fl_get(freelist *f) {
  pthread_mutex_lock(&f->mu);
  void *c = f->n ? f->items[--f->n] : NULL;
  pthread_mutex_unlock(&f->mu);
  return c;
}

static void fl_put(freelist *f, void *c) {
  pthread_mutex_lock(&f->mu);
  f->items[f->n++] = c;
  pthread_mutex_unlock(&f->mu);
}

/* A connector whose "connections" cost nothing: only the pool is measured. */
static char fake_conns[16];
static _Atomic int fake_next;
static resil_status fake_connect(void *ctx, resil_deadline dl, void **conn, resil_err *err) {
  (void)ctx;
  (void)dl;
  (void)err;
  *conn = &fake_conns[atomic_fetch_add(&fake_next, 1) % 16];
  return RESIL_OK;
}
static void fake_close(void *ctx, void *conn) {
  (void)ctx;
  (void)conn;
}

/* ---- workloads -------------------------------------------------------------- */
typedef struct work {
  int kind; /* 0 resil closed, 1 naive closed, 2 resil open, 3 naive open,
               4 resil pool, 5 free list, 6 Prometheus render, 7 JSON render */
  resil_dep *dep;
  naive *nv;
  resil_pool *pool;
  freelist *fl;
  long n;
  pthread_barrier_t *go;
} work;

static void *run_work(void *arg) {
  work *w = arg;
  if (w->go) pthread_barrier_wait(w->go);
  resil_deadline dl = RESIL_DEADLINE_UNSET;
  switch (w->kind) {
    case 0:
      for (long i = 0; i < w->n; i++) {
        resil_permit p;
        if (resil_dep_admit(w->dep, dl, &p, NULL) == RESIL_OK) resil_dep_done(&p, RESIL_OK);
      }
      break;
    case 1:
      for (long i = 0; i < w->n; i++) {
        uint64_t s;
        if (naive_admit(w->nv, &s) == 0) naive_done(w->nv, s, 1);
      }
      break;
    case 2:
      for (long i = 0; i < w->n; i++) {
        resil_permit p;
        if (resil_dep_admit(w->dep, dl, &p, NULL) == RESIL_OK) resil_dep_done(&p, RESIL_OK);
      }
      break;
    case 3:
      for (long i = 0; i < w->n; i++) {
        uint64_t s;
        if (naive_admit(w->nv, &s) == 0) naive_done(w->nv, s, 1);
      }
      break;
    case 4:
      for (long i = 0; i < w->n; i++) {
        resil_pool_conn *c;
        if (resil_pool_acquire(w->pool, dl, &c, NULL) == RESIL_OK)
          resil_pool_release(w->pool, c, RESIL_POOL_OK);
      }
      break;
    case 5:
      for (long i = 0; i < w->n; i++) {
        void *c = fl_get(w->fl);
        if (c) fl_put(w->fl, c);
      }
      break;
    case 6:
    case 7:
      for (long i = 0; i < w->n; i++) {
        char *text = NULL;
        size_t len = 0;
        if (w->kind == 6)
          resil_export_prometheus(&text, &len, NULL);
        else
          resil_export_json(&text, &len, NULL);
        free(text);
      }
      break;
    default: break;
  }
  return NULL;
}

/* ns per operation with `threads` threads each doing iters/threads ops. */
static resil_pool *g_pool; /* for kind 4 */
static freelist g_fl = {.mu = PTHREAD_MUTEX_INITIALIZER}; /* for kind 5 */
static long g_iters_override; /* > 0: ops per run instead of iters (slow kinds) */

static double measure(int kind, resil_dep *dep, naive *nv, int threads, long *alloc_out) {
  pthread_t th[8];
  work w[8];
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
  long per = (g_iters_override > 0 ? g_iters_override : iters) / threads;
  if (per < 1) per = 1;
  for (int i = 0; i < threads; i++) {
    w[i] = (work){.kind = kind, .dep = dep, .nv = nv, .pool = g_pool, .fl = &g_fl, .n = per,
                  .go = &go};
    pthread_create(&th[i], NULL, run_work, &w[i]);
  }
  alloc_count_start();
  uint64_t t0 = now_ns();
  pthread_barrier_wait(&go);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  uint64_t t1 = now_ns();
  long counted = alloc_count_stop();
  pthread_barrier_destroy(&go);
  if (alloc_out) *alloc_out += counted;
  /* wall time per op across all threads: throughput view */
  return (double)(t1 - t0) / (double)(per * threads);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct row {
  double med, min, max;
} row;

static row summarize(double *v);

static row repeat(int kind, resil_dep *dep, naive *nv, int threads, long *allocs_seen) {
  double v[32];
  for (int r = 0; r < runs; r++) v[r] = measure(kind, dep, nv, threads, allocs_seen);
  return summarize(v);
}

static row summarize(double *v) {
  qsort(v, (size_t)runs, sizeof v[0], cmp_d);
  return (row){v[runs / 2], v[0], v[runs - 1]};
}

/* resil's runs (kind, dep) and the baseline's (bkind, bdep or nv) alternate - b r,
 * r b, b r... - so that both see the same load on a shared machine (one
 * block after the other, a build starting in between moved the ratio by 2x). */
static void repeat_pair(int kind, resil_dep *dep, int bkind, resil_dep *bdep, naive *nv,
                        int threads, long *allocs_seen, row *r, row *b) {
  double v[32], w[32];
  for (int i = 0; i < runs; i++) {
    if (i & 1) {
      v[i] = measure(kind, dep, NULL, threads, allocs_seen);
      w[i] = measure(bkind, bdep, nv, threads, NULL);
    } else {
      w[i] = measure(bkind, bdep, nv, threads, NULL);
      v[i] = measure(kind, dep, NULL, threads, allocs_seen);
    }
  }
  *r = summarize(v);
  *b = summarize(w);
}

/* base.med <= 0: no baseline ("-"). */
static void print_row(const char *key, const char *name, row r, row base, long nallocs) {
  if (base.med > 0)
    printf("| %-44s | %8.1f | %8.1f | %8.1f | %8.1f | %6.2f | %6ld |\n", name, r.med, r.min,
           r.max, base.med, r.med / base.med, nallocs);
  else
    printf("| %-44s | %8.0f | %8.0f | %8.0f | %8s | %6s | %6ld |\n", name, r.med, r.min, r.max,
           "-", "-", nallocs);
  if (summary_len < sizeof summary_buf) {
    int n = base.med > 0
                ? snprintf(summary_buf + summary_len, sizeof summary_buf - summary_len,
                           "SUMMARY %s@%s %.1f %.1f %.3f %.1f %.1f %.1f %.1f\n", key,
                           clock_name, r.med, base.med, r.med / base.med, r.min, r.max, base.min,
                           base.max)
                : snprintf(summary_buf + summary_len, sizeof summary_buf - summary_len,
                           "SUMMARY %s@%s %.1f - - %.1f %.1f - -\n", key, clock_name, r.med,
                           r.min, r.max);
    if (n > 0) summary_len += (size_t)n;
  }
}

/* The clock label of resil_info: what resil's call path reads. */
static void read_clock_name(char *buf, size_t n) {
  char *text = NULL;
  snprintf(buf, n, "?");
  if (resil_export_prometheus(&text, NULL, NULL) != RESIL_OK) return;
  const char *p = strstr(text, "resil_info{");
  p = p ? strstr(p, "clock=\"") : NULL;
  if (p) {
    p += 7;
    size_t l = strcspn(p, "\"");
    snprintf(buf, n, "%.*s", (int)(l < n ? l : n - 1), p);
  }
  free(text);
}

static void kernel_clocksource(char *buf, size_t n) {
  snprintf(buf, n, "unknown");
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (!f) return;
  if (fgets(buf, (int)n, f)) buf[strcspn(buf, "\n")] = 0;
  fclose(f);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atol(argv[++i]);
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    if (!strcmp(argv[i], "--summary")) summary = 1;
    if (!strcmp(argv[i], "--call-path-only")) call_path_only = 1;
  }
  if (runs < 1) runs = 1;
  if (runs > 32) runs = 32;
  resil_dep_config c;
  resil_dep_config_init(&c, "bench");
  c.limit.max_concurrent = 1000;
  resil_err err;
  resil_dep *dep = resil_dep_new(&c, &err);
  if (!dep) {
    fprintf(stderr, "bench: %s\n", err.msg);
    return 1;
  }
  resil_dep_config_init(&c, "bench-open");
  resil_dep *open_dep = resil_dep_new(&c, &err);
  resil_breaker_set_mode(resil_dep_breaker(open_dep), RESIL_BREAKER_MODE_FORCE_OPEN);
  /* a really tripped breaker (not forced) for the OPEN path */
  resil_dep_config_init(&c, "bench-tripped");
  c.breaker.open_ms = 3600000;
  c.breaker.open_max_ms = 3600000;
  resil_dep *tripped = resil_dep_new(&c, &err);
  for (int i = 0; i < 5; i++) {
    resil_permit p;
    resil_dep_admit(tripped, RESIL_DEADLINE_UNSET, &p, NULL);
    resil_dep_done(&p, RESIL_E_FAILURE);
  }
  naive nv = {.mu = PTHREAD_MUTEX_INITIALIZER, .limit = 1000};
  naive nv_open = {.mu = PTHREAD_MUTEX_INITIALIZER, .limit = 1000, .state = 1,
                   .open_until = UINT64_MAX};

  /* Warm up for 100 ms of admit+done: the TSC clock calibrates for ~20 ms
   * at first use (reading clock_gettime meanwhile). */
  for (uint64_t w0 = now_ns(); now_ns() - w0 < 100000000ull;)
    run_work(&(work){.kind = 0, .dep = dep, .n = 10000});
  char ksrc[64];
  kernel_clocksource(ksrc, sizeof ksrc);
  read_clock_name(clock_name, sizeof clock_name);
  const char *env_clock = getenv("RESIL_CLOCK");
  printf("resil %s core benchmark: %ld ops per run, %d runs, median [min max] ns/op\n",
         resil_version(), iters, runs);
  printf("clock: resil's call path reads %s (RESIL_CLOCK=%s); kernel clocksource %s\n",
         clock_name, env_clock && *env_clock ? env_clock : "(unset: auto)", ksrc);
  printf("| %-44s | %8s | %8s | %8s | %8s | %6s | %6s |\n", "operation", "median", "min", "max",
         "mutex", "ratio", "allocs");
  printf("|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------------------------------",
         "----------", "----------", "----------", "----------", "--------", "--------");
  long a = 0;
  row base1, r1;
  repeat_pair(0, dep, 1, NULL, &nv, 1, &a, &r1, &base1);
  print_row("core.admit_done.1thread", "admit+done, breaker closed, 1 thread", r1, base1, a);
  a = 0;
  row base2, r2;
  repeat_pair(0, dep, 1, NULL, &nv, 2, &a, &r2, &base2);
  print_row("core.admit_done.2threads", "admit+done, breaker closed, 2 threads", r2, base2, a);
  a = 0;
  row base4, r4;
  repeat_pair(0, dep, 1, NULL, &nv, 4, &a, &r4, &base4);
  print_row("core.admit_done.4threads", "admit+done, breaker closed, 4 threads", r4, base4, a);
  /* the opt-in policies on (admit+done with 1 call in flight: the adaptive
   * limit is app-limited, so it stays at its minimum, never below 1 call) */
  resil_dep_config_init(&c, "bench-adaptive");
  c.limit.max_concurrent = 1000;
  c.adaptive.algorithm = "gradient";
  resil_dep *adaptive = resil_dep_new(&c, &err);
  resil_dep_config_init(&c, "bench-throttle");
  c.limit.max_concurrent = 1000;
  c.throttle.enabled = true;
  c.breaker.failure_rate_percent = 95;
  c.breaker.consecutive_failures = 0;
  resil_dep *throttled = resil_dep_new(&c, &err);
  if (!adaptive || !throttled) {
    fprintf(stderr, "bench: %s\n", err.msg);
    return 1;
  }
  a = 0;
  row ra = repeat(0, adaptive, NULL, 1, &a);
  print_row("core.admit_done_adaptive.1thread", "admit+done, adaptive limit on, 1 thread", ra,
            base1, a);
  a = 0;
  row ra2 = repeat(0, adaptive, NULL, 2, &a);
  print_row("core.admit_done_adaptive.2threads", "admit+done, adaptive limit on, 2 threads", ra2,
            base2, a);
  a = 0;
  row rt = repeat(0, throttled, NULL, 1, &a);
  print_row("core.admit_done_throttle.1thread", "admit+done, throttling on, 1 thread", rt, base1,
            a);
  a = 0;
  row bo, ro;
  repeat_pair(2, tripped, 3, NULL, &nv_open, 1, &a, &ro, &bo);
  print_row("core.reject_open.1thread", "rejection, breaker open (tripped), 1 thread", ro, bo, a);
  a = 0;
  row rf = repeat(2, open_dep, NULL, 1, &a);
  print_row("core.reject_forced_open.1thread", "rejection, breaker forced open, 1 thread", rf, bo,
            a);
  a = 0;
  row bo2, ro2;
  repeat_pair(2, tripped, 3, NULL, &nv_open, 2, &a, &ro2, &bo2);
  print_row("core.reject_open.2threads", "rejection, breaker open, 2 threads", ro2, bo2, a);
  /* the outbound rate limit on at a rate that never limits (1e9/s, burst
   * 1e6): the cost of the GCRA compare-and-swap, as a ratio to the same
   * admit+done with the limiter off (the rows above) */
  resil_dep_config_init(&c, "bench-rate");
  c.limit.max_concurrent = 1000;
  c.rate_limit.per_s = 1000000000;
  c.rate_limit.burst = 1000000;
  resil_dep *rated = resil_dep_new(&c, &err);
  a = 0;
  row rr1, off1;
  repeat_pair(0, rated, 0, dep, NULL, 1, &a, &rr1, &off1);
  print_row("core.admit_done_ratelimit.1thread", "admit+done, rate limit on (ratio: to off)", rr1,
            off1, a);
  a = 0;
  row rr2, off2;
  repeat_pair(0, rated, 0, dep, NULL, 2, &a, &rr2, &off2);
  print_row("core.admit_done_ratelimit.2threads", "  same, 2 threads (ratio: to off, 2 thr.)", rr2,
            off2, a);
  {
    resil_dep_stats rs;
    resil_dep_get_stats(rated, &rs);
    if (rs.rejections[RESIL_REJECT_RATE_LIMITED])
      printf("(rate limit rows: %llu calls were limited: the rate was not high enough)\n",
             (unsigned long long)rs.rejections[RESIL_REJECT_RATE_LIMITED]);
  }
  /* the concurrency limit under contention: 2 threads, 1 slot, FIFO queue */
  resil_dep_config_init(&c, "bench-limit");
  c.limit.max_concurrent = 1;
  c.limit.max_waiters = 4;
  c.limit.max_wait_ms = 1000;
  resil_dep *limited = resil_dep_new(&c, &err);
  naive nv_lim = {.mu = PTHREAD_MUTEX_INITIALIZER, .limit = 1};
  a = 0;
  row bl, rl;
  repeat_pair(0, limited, 1, NULL, &nv_lim, 2, &a, &rl, &bl);
  print_row("core.admit_done_limit1_queue.2threads", "admit+done, limit 1 + queue, 2 threads", rl,
            bl, a);
  printf("(limit row: resil queues FIFO and hands the slot over; the mutex baseline "
         "rejects when full instead of queueing)\n");
  resil_dep_free(limited);

  /* pool acquire+release, no waiting (4 connections, at most 4 borrowed) */
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = "bench-pool";
  pc.max_size = 4;
  pc.min_idle = 4;
  pc.housekeeping_ms = 0;
  resil_pool_connector conn = {.connect = fake_connect, .close = fake_close};
  g_pool = resil_pool_new(&pc, &conn, &err);
  if (!g_pool || resil_pool_prewarm(g_pool, resil_deadline_in_ms(1000), &err) != RESIL_OK) {
    fprintf(stderr, "bench: pool: %s\n", err.msg);
    return 1;
  }
  for (int i = 0; i < 4; i++) fl_put(&g_fl, &fake_conns[i]);
  a = 0;
  row bp1, rp1;
  repeat_pair(4, NULL, 5, NULL, NULL, 1, &a, &rp1, &bp1);
  print_row("core.pool_acquire_release.1thread", "pool acquire+release, 1 thread", rp1, bp1, a);
  a = 0;
  row bp2, rp2;
  repeat_pair(4, NULL, 5, NULL, NULL, 2, &a, &rp2, &bp2);
  print_row("core.pool_acquire_release.2threads", "pool acquire+release, 2 threads", rp2, bp2, a);
  a = 0;
  row bp4, rp4;
  repeat_pair(4, NULL, 5, NULL, NULL, 4, &a, &rp4, &bp4);
  print_row("core.pool_acquire_release.4threads", "pool acquire+release, 4 threads", rp4, bp4, a);
  resil_pool_free(g_pool);
  g_pool = NULL;

  if (call_path_only) goto done;
  /* rendering the metrics of 100 dependencies, each with some history */
  resil_dep *many[100];
  for (int i = 0; i < 100; i++) {
    char name[32];
    snprintf(name, sizeof name, "bench-render-%02d", i);
    resil_dep_config_init(&c, name);
    many[i] = resil_dep_new(&c, &err);
    if (!many[i]) {
      fprintf(stderr, "bench: %s\n", err.msg);
      return 1;
    }
    for (int k = 0; k < 50; k++) {
      resil_permit p;
      if (resil_dep_admit(many[i], RESIL_DEADLINE_UNSET, &p, NULL) == RESIL_OK)
        resil_dep_done(&p, k % 10 ? RESIL_OK : RESIL_E_TIMEOUT);
    }
  }
  /* 100 made here + the others still registered */
  row none = {0, 0, 0};
  g_iters_override = 200;
  a = 0;
  row rr = repeat(6, NULL, NULL, 1, &a);
  print_row("core.render_prometheus.100deps", "Prometheus text, 100+ deps (ns per render)", rr,
            none, a);
  a = 0;
  row rj = repeat(7, NULL, NULL, 1, &a);
  print_row("core.render_json.100deps", "JSON snapshot, 100+ deps (ns per render)", rj, none, a);
  g_iters_override = 0;
  for (int i = 0; i < 100; i++) resil_dep_free(many[i]);
done:
  printf("(pool rows: mutex = a mutex-protected free list of the same 4 connections; render rows:"
         " 200 renders per run, no baseline; allocs inside glibc, e.g. open_memstream, are not"
         " seen)\n");
  printf("mutex = the same workload through a one-mutex breaker written in the benchmark; "
         "ratio = resil/mutex; allocs = malloc calls during all measured resil runs\n");
  char clock_after[32];
  read_clock_name(clock_after, sizeof clock_after);
  if (strcmp(clock_after, clock_name) != 0)
    printf("warning: the call path's clock changed during the run: %s, then %s\n", clock_name,
           clock_after);
  if (summary) {
    fputs(summary_buf, stdout);
    printf("SUMMARY-CLOCK %s %s\n", clock_name, ksrc);
  }
  resil_dep_stats st;
  resil_dep_get_stats(tripped, &st);
  if (st.breaker.state != RESIL_BREAKER_OPEN) printf("warning: tripped breaker not open\n");
  resil_dep_free(dep);
  resil_dep_free(open_dep);
  resil_dep_free(tripped);
  return 0;
}
