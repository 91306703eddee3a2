/* Redis benchmark: GET through resil-redis versus raw hiredis on the same
 * local redis-server in the same run. Prints numbers; never passes or fails.
 *
 *   bench_redis [--port P] [--iters N] [--runs R] [--summary]
 *
 * The port comes from --port or RESIL_TEST_REDIS_PORT; the host is always
 * 127.0.0.1 (loopback only). Without a port it prints why and exits 0.
 *
 * Three scenarios, each run R times; each run is N GETs each way (bounded):
 *   sequential   one thread, one connection: raw = blocking redisCommand() on
 *                one redisContext; resil = resil_redis_command() with
 *                pool.max_size 1 and a 1 s deadline per call. Within a run,
 *                raw and resil alternate in chunks of 250 GETs so both see
 *                the same background load.
 *   8 thr/4 conn 8 threads share 4 connections: raw = 4 redisContexts in a
 *                pool as a user writes one (bench/rawpool.h: a mutex, a free
 *                stack and a condvar; unfair: the releasing thread may take
 *                its connection straight back); resil = one resil_redis with
 *                pool.max_size 4 (threads queue FIFO in the pool, which hands
 *                a returned connection to the longest waiter). Runs alternate
 *                raw and resil. ns/op is wall time / total GETs (inverse
 *                throughput).
 *   8 thr/8 conn the same with 8 connections (raw: the same pool of 8;
 *                resil: pool.max_size 8), so nobody queues: the adapter's own
 *                cost under concurrency, without the queueing policy.
 * Reported: ns/op median [min max] over the runs, and resil/raw of medians.
 * --summary adds a machine-readable line per scenario (for scripts/bench.sh):
 *   SUMMARY <name> <resil_ns> <raw_ns> <ratio> <resil_min> <resil_max> <raw_min> <raw_max>
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "resil/redis.h"
#include "rawpool.h"

#define THREADS 8
#define CONNS 4
#define KEY "resil:bench:key"

static long iters = 20000;
static int runs = 7;
static int port;
static int summary;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static redisContext *raw_connect(void) {
  struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (!c || c->err) {
    fprintf(stderr, "bench_redis: connect 127.0.0.1:%d: %s\n", port,
            c ? c->errstr : "out of memory");
    exit(0); /* never fail */
  }
  redisSetTimeout(c, tv);
  return c;
}

static resil_redis *resil_open(const char *name, uint32_t pool_max) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  cfg.port = (uint32_t)port;
  cfg.pool.max_size = pool_max;
  cfg.pool.acquire_timeout_ms = 5000;
  cfg.dep.limit.max_concurrent = 64;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) {
    fprintf(stderr, "bench_redis: %s\n", err.msg);
    exit(0);
  }
  return r;
}

static long errors;

static void raw_get(redisContext *c) {
  redisReply *rep = redisCommand(c, "GET %s", KEY);
  if (!rep || rep->type != REDIS_REPLY_STRING) __atomic_add_fetch(&errors, 1, __ATOMIC_RELAXED);
  if (rep) freeReplyObject(rep);
}

static void resil_get(resil_redis *r) {
  redisReply *rep = NULL;
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, NULL, "GET %s", KEY);
  if (st != RESIL_OK || rep->type != REDIS_REPLY_STRING)
    __atomic_add_fetch(&errors, 1, __ATOMIC_RELAXED);
  if (rep) freeReplyObject(rep);
}

/* ---- sequential ---------------------------------------------------------- */

/* One run: iters GETs each way, in chunks of CHUNK alternating raw and
 * resil, so that both see the same background load (a shared CI box is
 * noisy: alternating keeps the comparison paired). */
#define CHUNK 250

static void seq_run(redisContext *c, resil_redis *r, double *raw_ns, double *res_ns) {
  uint64_t traw = 0, tres = 0;
  for (long done = 0; done < iters; done += CHUNK) {
    long n = iters - done < CHUNK ? iters - done : CHUNK;
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) raw_get(c);
    uint64_t t1 = now_ns();
    for (long i = 0; i < n; i++) resil_get(r);
    uint64_t t2 = now_ns();
    traw += t1 - t0;
    tres += t2 - t1;
  }
  *raw_ns = (double)traw / (double)iters;
  *res_ns = (double)tres / (double)iters;
}

/* ---- 8 threads, 4 connections ------------------------------------------- */

typedef struct worker {
  rawpool *raw; /* or NULL: resil */
  resil_redis *r;
  long n;
} worker;

static void *work(void *arg) {
  worker *w = arg;
  for (long i = 0; i < w->n; i++) {
    if (w->raw) {
      redisContext *c = rawpool_get(w->raw);
      raw_get(c);
      rawpool_put(w->raw, c);
    } else {
      resil_get(w->r);
    }
  }
  return NULL;
}

static double threaded(rawpool *raw, resil_redis *r) {
  pthread_t th[THREADS];
  worker w[THREADS];
  long per = iters / THREADS;
  uint64_t t0 = now_ns();
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){.raw = raw, .r = r, .n = per};
    pthread_create(&th[i], NULL, work, &w[i]);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  return (double)(now_ns() - t0) / (double)(per * THREADS);
}

static void report(const char *key, const char *what, double *raw, double *res) {
  double mr = median(raw, runs), ms = median(res, runs);
  printf("%-24s %10.0f [%8.0f %8.0f]  %10.0f [%8.0f %8.0f]  %6.3f\n", what, mr, raw[0],
         raw[runs - 1], ms, res[0], res[runs - 1], ms / mr);
  if (summary)
    printf("SUMMARY %s %.0f %.0f %.3f %.0f %.0f %.0f %.0f\n", key, ms, mr, ms / mr, res[0],
           res[runs - 1], raw[0], raw[runs - 1]);
}

int main(int argc, char **argv) {
  const char *p = getenv("RESIL_TEST_REDIS_PORT");
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc) p = argv[++i];
    else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atol(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--summary")) summary = 1;
    else {
      fprintf(stderr, "usage: bench_redis [--port P] [--iters N] [--runs R] [--summary]\n");
      return 0;
    }
  }
  if (!p || !*p) {
    printf("bench_redis: skipped: no port (set RESIL_TEST_REDIS_PORT or pass --port)\n");
    return 0;
  }
  port = atoi(p);
  if (port < 1 || port > 65535) {
    printf("bench_redis: skipped: bad port '%s'\n", p);
    return 0;
  }
  if (iters < THREADS) iters = THREADS;
  if (iters > 10000000) iters = 10000000;
  if (runs < 1) runs = 1;
  if (runs > 50) runs = 50;

  redisContext *c = raw_connect();
  redisReply *rep = redisCommand(c, "SET %s %s", KEY, "a-short-cached-value-of-32-bytes");
  if (rep) freeReplyObject(rep);

  double *raw = calloc((size_t)runs, sizeof *raw), *res = calloc((size_t)runs, sizeof *res);
  if (!raw || !res) return 0;
  printf("GET on 127.0.0.1:%d, %ld GETs per run, %d runs; ns/op median [min max]\n", port,
         iters, runs);
  printf("%-24s %32s  %32s  %6s\n", "scenario", "raw hiredis", "resil-redis", "ratio");

  /* sequential, one connection */
  resil_redis *r1 = resil_open("bench-seq", 1);
  double w1, w2;
  seq_run(c, r1, &w1, &w2); /* warm-up, and connect outside the timing */
  for (int i = 0; i < runs; i++) seq_run(c, r1, &raw[i], &res[i]);
  report("redis.get.1thread_1conn", "sequential, 1 conn", raw, res);
  resil_redis_free(r1);

  /* 8 threads on 4 connections (queueing), then on 8 (none) */
  static const int nconns[2] = {CONNS, THREADS};
  static const char *names[2] = {"8 threads, 4 conns", "8 threads, 8 conns"};
  static const char *keys[2] = {"redis.get.8threads_4conns", "redis.get.8threads_8conns"};
  for (int k = 0; k < 2; k++) {
    int nc = nconns[k];
    redisContext *rc[THREADS];
    for (int i = 0; i < nc; i++) rc[i] = raw_connect();
    rawpool rawp;
    rawpool_init(&rawp, (void *const *)rc, nc);
    resil_redis *rp = resil_open(k ? "bench-par8" : "bench-par4", (uint32_t)nc);
    resil_pool *pool = resil_redis_pool(rp);
    /* open nc connections outside the timing */
    resil_pool_conn *pc[THREADS];
    for (int j = 0; j < nc; j++)
      if (resil_pool_acquire(pool, resil_deadline_in_ms(2000), &pc[j], NULL) != RESIL_OK)
        pc[j] = NULL;
    for (int j = 0; j < nc; j++)
      if (pc[j]) resil_pool_release(pool, pc[j], RESIL_POOL_OK);
    threaded(&rawp, NULL); /* warm-up */
    threaded(NULL, rp);
    for (int i = 0; i < runs; i++) {
      raw[i] = threaded(&rawp, NULL);
      res[i] = threaded(NULL, rp);
    }
    report(keys[k], names[k], raw, res);
    resil_redis_free(rp);
    for (int i = 0; i < nc; i++) redisFree(rc[i]);
    rawpool_destroy(&rawp);
  }
  redisFree(c);
  if (errors) printf("(%ld GETs failed during the runs: numbers are suspect)\n", errors);
  free(raw);
  free(res);
  return 0;
}
