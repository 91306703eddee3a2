/* bench_pg: `SELECT 1` through resil-pg versus raw libpq, same server, same
 * run. Prints numbers; never passes or fails (exit 0 unless misused).
 *
 *   bench_pg [--runs N] [--ops N] [--summary] [CONNINFO]
 *
 * CONNINFO defaults to $RESIL_TEST_PG_CONNINFO; with neither, it says so and
 * exits 0. Two scenarios:
 *   sequential  one thread, one connection (resil: pool of 1);
 *   threaded    8 threads sharing 4 connections (resil: pool of 4; raw: the
 *               4 connections in a pool as a user writes one, bench/rawpool.h:
 *               a mutex, a free stack and a condvar).
 * Raw rows: PQexec (simple protocol) and PQexecParams with no parameters
 * (the extended protocol resil_pg_query uses, so the fair baseline). Each
 * run is bounded by --ops and by 10 s of wall time. Output: median [min max]
 * ns/op over the runs, and the ratio of medians resil / raw.
 * --summary adds a machine-readable line per scenario, raw = PQexecParams
 * (for scripts/bench.sh):
 *   SUMMARY <name> <resil_ns> <raw_ns> <ratio> <resil_min> <resil_max> <raw_min> <raw_max>
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "resil/pg.h"
#include "rawpool.h"

#define THREADS 8
#define POOL 4
#define RUN_CAP_NS (10ull * 1000000000ull)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef enum mode { RAW_EXEC = 0, RAW_PARAMS, RESIL, MODE_COUNT } mode;
static const char *mode_name[MODE_COUNT] = {"raw PQexec", "raw PQexecParams", "resil_pg_query"};

static const char *conninfo;
static long ops_per_run = 2000;
static int summary;

/* ---- One operation ------------------------------------------------------ */

static int raw_op(PGconn *c, mode m) {
  PGresult *r = m == RAW_EXEC ? PQexec(c, "SELECT 1")
                              : PQexecParams(c, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
  PQclear(r);
  return ok;
}

static int resil_op(resil_pg *pg) {
  PGresult *r = NULL;
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(1000), 0, "SELECT 1", 0, NULL, &r, NULL);
  PQclear(r);
  return st == RESIL_OK;
}

/* ---- Threaded ---------------------------------------------------------- */

typedef struct shared {
  mode m;
  resil_pg *pg;
  rawpool raw; /* the connections */
  long ops_each;
  uint64_t stop_at;
  long failures;
  pthread_mutex_t fail_mu;
} shared;

typedef struct worker {
  shared *s;
  int id;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  shared *s = w->s;
  long fails = 0;
  for (long i = 0; i < s->ops_each; i++) {
    int ok;
    if (s->m == RESIL) {
      ok = resil_op(s->pg);
    } else {
      PGconn *c = rawpool_get(&s->raw);
      ok = raw_op(c, s->m);
      rawpool_put(&s->raw, c);
    }
    if (!ok) fails++;
    if ((i & 63) == 0 && now_ns() > s->stop_at) break;
  }
  pthread_mutex_lock(&s->fail_mu);
  s->failures += fails;
  pthread_mutex_unlock(&s->fail_mu);
  return NULL;
}

static resil_pg *make_pg(const char *name, uint32_t pool) {
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  cfg.conninfo = conninfo;
  cfg.statement_timeout = false; /* works through pgbouncer too */
  cfg.pool.max_size = pool;
  cfg.pool.min_idle = pool;
  cfg.dep.limit.max_concurrent = 64;
  resil_err err;
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) {
    fprintf(stderr, "bench_pg: %s\n", err.msg);
    return NULL;
  }
  if (resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(5000), &err) != RESIL_OK) {
    fprintf(stderr, "bench_pg: prewarm: %s\n", err.msg);
    resil_pg_free(pg);
    return NULL;
  }
  return pg;
}

/* ns/op of one run, or -1 on error. */
static double run_once(mode m, int threads, PGconn **conns, resil_pg *pg, long *failures) {
  shared s;
  memset(&s, 0, sizeof s);
  s.m = m;
  s.pg = pg;
  rawpool_init(&s.raw, (void *const *)conns, threads == 1 ? 1 : POOL);
  pthread_mutex_init(&s.fail_mu, NULL);
  s.ops_each = ops_per_run / threads;
  uint64_t t0 = now_ns();
  s.stop_at = t0 + RUN_CAP_NS;
  long total = 0;
  if (threads == 1) {
    worker w = {&s, 0};
    worker_main(&w);
    total = s.ops_each;
  } else {
    pthread_t th[THREADS];
    worker ws[THREADS];
    for (int i = 0; i < threads; i++) {
      ws[i].s = &s;
      ws[i].id = i;
      pthread_create(&th[i], NULL, worker_main, &ws[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    total = s.ops_each * threads;
  }
  uint64_t t = now_ns() - t0;
  rawpool_destroy(&s.raw);
  pthread_mutex_destroy(&s.fail_mu);
  *failures += s.failures;
  return total > 0 ? (double)t / (double)total : -1;
}

static void scenario(const char *key, const char *title, int threads, int runs, PGconn **conns,
                     resil_pg *pg) {
  double res[MODE_COUNT][64];
  long failures[MODE_COUNT] = {0};
  /* warm-up */
  for (int m = 0; m < MODE_COUNT; m++) {
    long keep = ops_per_run;
    ops_per_run = keep / 10 > threads ? keep / 10 : threads;
    long f = 0;
    run_once((mode)m, threads, conns, pg, &f);
    ops_per_run = keep;
  }
  for (int r = 0; r < runs; r++) /* interleaved so drift hits every mode alike */
    for (int m = 0; m < MODE_COUNT; m++)
      res[m][r] = run_once((mode)m, threads, conns, pg, &failures[m]);
  printf("\n%s (%ld ops per run, %d runs)\n", title, ops_per_run, runs);
  printf("  %-18s %12s %12s %12s %8s\n", "", "median ns/op", "min", "max", "failed");
  double med[MODE_COUNT];
  for (int m = 0; m < MODE_COUNT; m++) {
    qsort(res[m], (size_t)runs, sizeof(double), cmp_d);
    med[m] = res[m][runs / 2];
    printf("  %-18s %12.0f %12.0f %12.0f %8ld\n", mode_name[m], med[m], res[m][0],
           res[m][runs - 1], failures[m]);
  }
  printf("  ratio resil / raw PQexecParams: %.3f\n", med[RESIL] / med[RAW_PARAMS]);
  printf("  ratio resil / raw PQexec:       %.3f\n", med[RESIL] / med[RAW_EXEC]);
  if (summary)
    printf("SUMMARY %s %.0f %.0f %.3f %.0f %.0f %.0f %.0f\n", key, med[RESIL], med[RAW_PARAMS],
           med[RESIL] / med[RAW_PARAMS], res[RESIL][0], res[RESIL][runs - 1], res[RAW_PARAMS][0],
           res[RAW_PARAMS][runs - 1]);
}

int main(int argc, char **argv) {
  int runs = 5;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--ops") == 0 && i + 1 < argc) {
      ops_per_run = atol(argv[++i]);
    } else if (strcmp(argv[i], "--summary") == 0) {
      summary = 1;
    } else {
      conninfo = argv[i];
    }
  }
  if (runs < 1) runs = 1;
  if (runs > 64) runs = 64;
  if (ops_per_run < THREADS) ops_per_run = THREADS;
  if (!conninfo) conninfo = getenv("RESIL_TEST_PG_CONNINFO");
  if (!conninfo || !*conninfo) {
    printf("bench_pg: no conninfo (argument or RESIL_TEST_PG_CONNINFO): skipped\n");
    return 0;
  }
  PGconn *conns[POOL];
  for (int i = 0; i < POOL; i++) {
    conns[i] = PQconnectdb(conninfo);
    if (PQstatus(conns[i]) != CONNECTION_OK) {
      printf("bench_pg: cannot connect: %s", PQerrorMessage(conns[i]));
      for (int k = 0; k <= i; k++) PQfinish(conns[k]);
      return 0;
    }
  }
  printf("bench_pg: SELECT 1, resil-pg vs raw libpq %d\n", PQlibVersion());
  resil_pg *pg1 = make_pg("bench-seq", 1);
  if (pg1) {
    scenario("pg.select1.1thread_1conn", "sequential: 1 thread, 1 connection", 1, runs, conns,
             pg1);
    resil_pg_free(pg1);
  }
  resil_pg *pg4 = make_pg("bench-mt", POOL);
  if (pg4) {
    scenario("pg.select1.8threads_4conns", "threaded: 8 threads, 4 connections", THREADS, runs,
             conns, pg4);
    resil_pg_free(pg4);
  }
  for (int i = 0; i < POOL; i++) PQfinish(conns[i]);
  return 0;
}
