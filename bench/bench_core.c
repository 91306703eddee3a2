/* Core engine benchmark: admit+done and open rejection, in ns/op, against a
 * plain mutex-protected breaker measured in the same run. Prints numbers;
 * never passes or fails.
 *
 *   bench_core [--iters N] [--runs R]
 *
 * Allocation counting: malloc/calloc/realloc are interposed (this binary's
 * definitions win over libc's) and counted while the measured loops run.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "resil/resil.h"

/* ---- allocation counter --------------------------------------------------- */
static _Atomic long allocs;
static _Atomic int counting;
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

void *malloc(size_t n) {
  if (atomic_load_explicit(&counting, memory_order_relaxed)) atomic_fetch_add(&allocs, 1);
  return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
  if (atomic_load_explicit(&counting, memory_order_relaxed)) atomic_fetch_add(&allocs, 1);
  return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
  if (atomic_load_explicit(&counting, memory_order_relaxed)) atomic_fetch_add(&allocs, 1);
  return __libc_realloc(p, n);
}

static long iters = 2000000;
static int runs = 7;

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

/* ---- workloads -------------------------------------------------------------- */
typedef struct work {
  int kind; /* 0 resil closed, 1 naive closed, 2 resil open, 3 naive open */
  resil_dep *dep;
  naive *nv;
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
    default: break;
  }
  return NULL;
}

/* ns per operation with `threads` threads each doing iters/threads ops. */
static double measure(int kind, resil_dep *dep, naive *nv, int threads, long *alloc_out) {
  pthread_t th[8];
  work w[8];
  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
  long per = iters / threads;
  for (int i = 0; i < threads; i++) {
    w[i] = (work){.kind = kind, .dep = dep, .nv = nv, .n = per, .go = &go};
    pthread_create(&th[i], NULL, run_work, &w[i]);
  }
  atomic_store(&allocs, 0);
  atomic_store(&counting, 1);
  uint64_t t0 = now_ns();
  pthread_barrier_wait(&go);
  for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
  uint64_t t1 = now_ns();
  atomic_store(&counting, 0);
  pthread_barrier_destroy(&go);
  if (alloc_out) *alloc_out += atomic_load(&allocs);
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

static row repeat(int kind, resil_dep *dep, naive *nv, int threads, long *allocs_seen) {
  double v[32];
  for (int r = 0; r < runs; r++) v[r] = measure(kind, dep, nv, threads, allocs_seen);
  qsort(v, (size_t)runs, sizeof v[0], cmp_d);
  return (row){v[runs / 2], v[0], v[runs - 1]};
}

static void print_row(const char *name, row r, row base, long nallocs) {
  printf("| %-44s | %8.1f | %8.1f | %8.1f | %8.1f | %6.2f | %6ld |\n", name, r.med, r.min, r.max,
         base.med, r.med / base.med, nallocs);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atol(argv[++i]);
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
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

  printf("resil %s core benchmark: %ld ops per run, %d runs, median [min max] ns/op\n",
         resil_version(), iters, runs);
  printf("| %-44s | %8s | %8s | %8s | %8s | %6s | %6s |\n", "operation", "median", "min", "max",
         "mutex", "ratio", "allocs");
  printf("|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------------------------------",
         "----------", "----------", "----------", "----------", "--------", "--------");
  long a = 0;
  run_work(&(work){.kind = 0, .dep = dep, .n = 100000}); /* warm up */
  row base1 = repeat(1, NULL, &nv, 1, NULL);
  row r1 = repeat(0, dep, NULL, 1, &a);
  print_row("admit+done, breaker closed, 1 thread", r1, base1, a);
  a = 0;
  row base2 = repeat(1, NULL, &nv, 2, NULL);
  row r2 = repeat(0, dep, NULL, 2, &a);
  print_row("admit+done, breaker closed, 2 threads", r2, base2, a);
  a = 0;
  row bo = repeat(3, NULL, &nv_open, 1, NULL);
  row ro = repeat(2, tripped, NULL, 1, &a);
  print_row("rejection, breaker open (tripped), 1 thread", ro, bo, a);
  a = 0;
  row rf = repeat(2, open_dep, NULL, 1, &a);
  print_row("rejection, breaker forced open, 1 thread", rf, bo, a);
  a = 0;
  row bo2 = repeat(3, NULL, &nv_open, 2, NULL);
  row ro2 = repeat(2, tripped, NULL, 2, &a);
  print_row("rejection, breaker open, 2 threads", ro2, bo2, a);
  /* the concurrency limit under contention: 2 threads, 1 slot, FIFO queue */
  resil_dep_config_init(&c, "bench-limit");
  c.limit.max_concurrent = 1;
  c.limit.max_waiters = 4;
  c.limit.max_wait_ms = 1000;
  resil_dep *limited = resil_dep_new(&c, &err);
  naive nv_lim = {.mu = PTHREAD_MUTEX_INITIALIZER, .limit = 1};
  a = 0;
  row bl = repeat(1, NULL, &nv_lim, 2, NULL);
  row rl = repeat(0, limited, NULL, 2, &a);
  print_row("admit+done, limit 1 + queue, 2 threads", rl, bl, a);
  printf("(limit row: resil queues FIFO and hands the slot over; the mutex baseline "
         "rejects when full instead of queueing)\n");
  resil_dep_free(limited);
  printf("mutex = the same workload through a one-mutex breaker written in the benchmark; "
         "ratio = resil/mutex; allocs = malloc calls during all measured resil runs\n");
  resil_dep_stats st;
  resil_dep_get_stats(tripped, &st);
  if (st.breaker.state != RESIL_BREAKER_OPEN) printf("warning: tripped breaker not open\n");
  resil_dep_free(dep);
  resil_dep_free(open_dep);
  resil_dep_free(tripped);
  return 0;
}
