/* The generic bounded connection pool, driven by a fake connector that
 * counts connects and closes and can be told to fail, time out, block, or
 * take time (on the fake clock). No network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"
#include "timed_tries.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "fake_clock.h"
#include "internal.h" /* resil__pool_test_before_park, resil__invariants_enabled */
#include "resil/adapter.h"
#include "resil/resil.h"

/* A child of a multi-threaded fork() starts threads (the pool's housekeeper):
 * tell ThreadSanitizer that this is intended. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) { return "die_after_fork=0"; }

/* ---- Fake connector ------------------------------------------------------ */

typedef struct fake {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool block_connect, block_validate; /* under mu */
  int blocked;                        /* callbacks parked on the gate, under mu */
  _Atomic int connects, closes, validations, next_id;
  _Atomic int abandons;       /* connector->abandon calls */
  _Atomic int parent_closes;  /* close() of a handle opened before the fork (ids <= fork_max_id) */
  _Atomic int fork_max_id;    /* set before fork(): the last id of the parent */
  _Atomic int fail_connects;    /* the next N connects fail (refused) */
  _Atomic int timeout_connects; /* the next N connects time out */
  _Atomic uint32_t take_ms;     /* each connect takes this long (fake clock) */
  _Atomic int local_connects;   /* the next N connects fail locally (the status below) */
  _Atomic int local_status;     /* RESIL_E_SYSTEM or RESIL_E_NOMEM */
  _Atomic uint32_t validate_ms; /* each validate takes this long (fake clock); one
                                   that would outlast its deadline ends there, false */
  _Atomic bool valid;           /* what validate answers */
  resil_pool *_Atomic probe;    /* if set, callbacks read its stats (lock check) */
} fake;

static fake F;
static resil_pool *P;

static void probe_lock_free(void) {
  resil_pool *p = atomic_load(&F.probe);
  if (p) {
    resil_pool_stats s;
    resil_pool_get_stats(p, &s); /* deadlocks if the pool lock is held */
  }
}

/* Park on the gate while *flag is set. */
static void gate_wait(bool *flag) {
  pthread_mutex_lock(&F.mu);
  if (*flag) {
    F.blocked++;
    pthread_cond_broadcast(&F.cv);
    while (*flag) pthread_cond_wait(&F.cv, &F.mu);
    F.blocked--;
  }
  pthread_mutex_unlock(&F.mu);
}

static void gate_set(bool *flag, bool on) {
  pthread_mutex_lock(&F.mu);
  *flag = on;
  pthread_cond_broadcast(&F.cv);
  pthread_mutex_unlock(&F.mu);
}

static int gate_blocked(void) {
  pthread_mutex_lock(&F.mu);
  int n = F.blocked;
  pthread_mutex_unlock(&F.mu);
  return n;
}

/* Take one unit of an atomic "next N" counter; true if there was one. */
static bool take_one(_Atomic int *n) {
  int v = atomic_load(n);
  while (v > 0)
    if (atomic_compare_exchange_weak(n, &v, v - 1)) return true;
  return false;
}

static resil_status fake_connect(void *ctx, resil_deadline d, void **conn, resil_err *err) {
  (void)ctx;
  probe_lock_free();
  gate_wait(&F.block_connect);
  uint32_t take = atomic_load(&F.take_ms);
  if (take) {
    int64_t left = resil_deadline_remaining_ns(d);
    if (left < (int64_t)take * 1000000) {
      fake_clock_advance_ns((uint64_t)left);
      return resil_err_set(err, RESIL_E_TIMEOUT, "connect timed out after %lld ms",
                           (long long)(left / 1000000));
    }
    fake_clock_advance_ms(take);
  }
  if (take_one(&F.fail_connects)) return resil_err_set(err, RESIL_E_FAILURE, "Connection refused");
  if (take_one(&F.local_connects))
    return resil_err_set(err, (resil_status)atomic_load(&F.local_status),
                         "cannot create a socket: Too many open files");
  if (take_one(&F.timeout_connects)) return resil_err_set(err, RESIL_E_TIMEOUT, "no answer");
  int *h = malloc(sizeof *h);
  if (!h) return resil_err_set(err, RESIL_E_FAILURE, "malloc");
  *h = atomic_fetch_add(&F.next_id, 1) + 1;
  *conn = h;
  atomic_fetch_add(&F.connects, 1);
  return RESIL_OK;
}

static bool fake_validate(void *ctx, void *conn, resil_deadline d) {
  (void)ctx;
  (void)conn;
  probe_lock_free();
  gate_wait(&F.block_validate);
  atomic_fetch_add(&F.validations, 1);
  uint32_t take = atomic_load(&F.validate_ms);
  if (take) {
    int64_t left = resil_deadline_remaining_ns(d);
    if (left < (int64_t)take * 1000000) {
      fake_clock_advance_ns((uint64_t)left); /* no answer before the deadline */
      return false;
    }
    fake_clock_advance_ms(take);
  }
  return atomic_load(&F.valid);
}

static void fake_close(void *ctx, void *conn) {
  (void)ctx;
  probe_lock_free();
  if (*(int *)conn <= atomic_load(&F.fork_max_id)) atomic_fetch_add(&F.parent_closes, 1);
  free(conn);
  atomic_fetch_add(&F.closes, 1);
}

static void fake_abandon(void *ctx, void *conn) {
  (void)ctx;
  probe_lock_free();
  free(conn);
  atomic_fetch_add(&F.abandons, 1);
}

static const resil_pool_connector CONNECTOR = {.connect = fake_connect,
                                               .validate = fake_validate,
                                               .close = fake_close,
                                               .abandon = fake_abandon};

/* ---- Helpers ------------------------------------------------------------- */

/* LATE_MS, timing_start/add/again/check: tests/support/timed_tries.h */


static void fake_reset(void) {
  pthread_mutex_init(&F.mu, NULL);
  pthread_cond_init(&F.cv, NULL);
  F.block_connect = F.block_validate = false;
  F.blocked = 0;
  atomic_store(&F.connects, 0);
  atomic_store(&F.closes, 0);
  atomic_store(&F.validations, 0);
  atomic_store(&F.next_id, 0);
  atomic_store(&F.abandons, 0);
  atomic_store(&F.parent_closes, 0);
  atomic_store(&F.fork_max_id, 0);
  atomic_store(&F.fail_connects, 0);
  atomic_store(&F.timeout_connects, 0);
  atomic_store(&F.take_ms, 0);
  atomic_store(&F.local_connects, 0);
  atomic_store(&F.local_status, RESIL_E_SYSTEM);
  atomic_store(&F.validate_ms, 0);
  atomic_store(&F.valid, true);
  atomic_store(&F.probe, NULL);
  P = NULL;
}

static int setup_real(void **state) {
  (void)state;
  fake_reset();
  return 0;
}

static int setup_fake(void **state) {
  fake_clock_install();
  return setup_real(state);
}

/* Free the pool, then check every connection opened was closed. */
static int teardown(void **state) {
  (void)state;
  atomic_store(&F.probe, NULL);
  resil_pool_free(P);
  P = NULL;
  fake_clock_uninstall();
  pthread_cond_destroy(&F.cv);
  pthread_mutex_destroy(&F.mu);
  return atomic_load(&F.connects) == atomic_load(&F.closes) ? 0 : -1;
}

/* A small pool with no housekeeper and no surprises; tests change fields. */
static resil_pool_config base_config(void) {
  resil_pool_config c;
  resil_pool_config_init(&c);
  c.name = "test";
  c.max_size = 2;
  c.housekeeping_ms = 0;
  c.lifetime_jitter_percent = 0;
  return c;
}

static resil_pool *make_pool(const resil_pool_config *c) {
  resil_err err = {0};
  P = resil_pool_new(c, &CONNECTOR, &err);
  if (!P) print_error("resil_pool_new: %s\n", err.msg);
  assert_non_null(P);
  return P;
}

static resil_pool_stats stats(void) {
  resil_pool_stats s;
  resil_pool_get_stats(P, &s);
  return s;
}

static int id_of(resil_pool_conn *c) { return *(int *)resil_pool_conn_handle(c); }

static resil_pool_conn *must_acquire(void) {
  resil_pool_conn *c = NULL;
  resil_err err = {0};
  resil_status st = resil_pool_acquire(P, resil_deadline_in_ms(5000), &c, &err);
  if (st != RESIL_OK) print_error("acquire: %s\n", err.msg);
  assert_int_equal(st, RESIL_OK);
  assert_non_null(c);
  return c;
}

static uint64_t real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Poll cond (real time) for up to 10 s, then assert it. */
#define WAIT_FOR(cond)                                              \
  do {                                                              \
    for (int i_ = 0; i_ < 10000 && !(cond); i_++) test_sleep_ms(1);      \
    assert_true(cond);                                              \
  } while (0)

/* Poll cond while moving the fake clock 10 ms per step, so that the
 * housekeeper (which sleeps on the fake clock) keeps ticking. */
#define WAIT_TICKING(cond)                                          \
  do {                                                              \
    for (int i_ = 0; i_ < 2000 && !(cond); i_++) {                  \
      fake_clock_advance_ms(10);                                    \
      test_sleep_ms(5);                                                  \
    }                                                               \
    assert_true(cond);                                              \
  } while (0)

/* An acquire on its own thread. */
typedef struct job {
  pthread_t t;
  int64_t deadline_ms; /* < 0: unset */
  bool release;        /* release at once (OK) after acquiring */
  resil_status st;
  int id;              /* handle id, if acquired */
  int order;           /* when it acquired, 0-based */
  resil_pool_conn *conn; /* kept if !release */
  uint64_t elapsed_ms;
  char msg[RESIL_ERR_MSG_MAX];
} job;

static _Atomic int order_seq;

static void *job_main(void *arg) {
  job *j = arg;
  resil_err err = {.status = RESIL_OK, .msg = ""};
  resil_deadline d =
      j->deadline_ms < 0 ? RESIL_DEADLINE_UNSET : resil_deadline_in_ms(j->deadline_ms);
  uint64_t t0 = real_ms();
  resil_pool_conn *c = NULL;
  j->st = resil_pool_acquire(P, d, &c, &err);
  j->elapsed_ms = real_ms() - t0;
  memcpy(j->msg, err.msg, sizeof j->msg);
  if (j->st == RESIL_OK) {
    j->id = id_of(c);
    j->order = atomic_fetch_add(&order_seq, 1);
    if (j->release)
      resil_pool_release(P, c, RESIL_POOL_OK);
    else
      j->conn = c;
  }
  return NULL;
}

static void job_start(job *j, int64_t deadline_ms, bool release) {
  memset(j, 0, sizeof *j);
  j->deadline_ms = deadline_ms;
  j->release = release;
  j->st = RESIL_STATUS_COUNT_;
  assert_int_equal(pthread_create(&j->t, NULL, job_main, j), 0);
}

static void job_join(job *j) { assert_int_equal(pthread_join(j->t, NULL), 0); }

/* ---- Configuration -------------------------------------------------------- */

static void config_defaults_are_documented_and_valid(void **state) {
  (void)state;
  resil_pool_config c;
  resil_pool_config_init(&c);
  assert_int_equal(c.max_size, 10);
  assert_int_equal(c.min_idle, 0);
  assert_int_equal(c.max_waiters, 64);
  assert_int_equal(c.acquire_timeout_ms, 1000);
  assert_int_equal(c.connect_timeout_ms, 1000);
  assert_int_equal(c.max_lifetime_ms, 1800000);
  assert_int_equal(c.lifetime_jitter_percent, 10);
  assert_int_equal(c.idle_timeout_ms, 600000);
  assert_int_equal(c.validate_after_idle_ms, 5000);
  assert_int_equal(c.validate_timeout_ms, 500);
  assert_int_equal(c.housekeeping_ms, 1000);
  c.name = "db";
  assert_int_equal(resil_pool_config_validate(&c, NULL, NULL), RESIL_OK);
}

static void config_validation_names_every_bad_field_at_once(void **state) {
  (void)state;
  resil_pool_config c;
  resil_pool_config_init(&c);
  c.name = NULL;
  c.max_size = 10;
  c.min_idle = 12;
  c.acquire_timeout_ms = 0;
  c.connect_timeout_ms = 0;
  c.lifetime_jitter_percent = 80;
  c.validate_timeout_ms = 0;
  c.housekeeping_ms = 5;
  resil_err err = {0};
  assert_int_equal(resil_pool_config_validate(&c, "cache: ", &err), RESIL_E_INVALID);
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "cache: pool.name: is required"));
  assert_non_null(strstr(err.msg, "cache: pool.min_idle: 12 is above pool.max_size 10"));
  assert_non_null(strstr(err.msg, "pool.acquire_timeout_ms: 0 is outside"));
  assert_non_null(strstr(err.msg, "pool.connect_timeout_ms: 0 is outside"));
  assert_non_null(strstr(err.msg, "pool.lifetime_jitter_percent: 80 is outside 0..50"));
  assert_non_null(strstr(err.msg, "pool.validate_timeout_ms: 0 is outside"));
  assert_non_null(strstr(err.msg, "pool.housekeeping_ms: 5 is outside"));

  resil_pool_config_init(&c);
  c.name = "x";
  c.max_size = 0;
  assert_int_equal(resil_pool_config_validate(&c, NULL, &err), RESIL_E_INVALID);
  assert_string_equal(err.msg, "pool.max_size: 0 is outside 1..10000");
  assert_int_equal(resil_pool_config_validate(NULL, NULL, &err), RESIL_E_INVALID);
}

static void new_rejects_bad_config_and_connector_together(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 20000;
  resil_pool_connector cn = {0};
  resil_err err = {0};
  assert_null(resil_pool_new(&c, &cn, &err));
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "pool.max_size: 20000"));
  assert_non_null(strstr(err.msg, "connector.connect: is required"));
  assert_non_null(strstr(err.msg, "connector.close: is required"));
  assert_null(resil_pool_new(&c, NULL, &err));
  assert_non_null(strstr(err.msg, "connector: is NULL"));
}

static void close_reasons_have_names(void **state) {
  (void)state;
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_LIFETIME), "lifetime");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_IDLE), "idle");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_BROKEN), "broken");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_VALIDATION), "validation");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_DRAIN), "drain");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_EVICTED), "evicted");
  assert_string_equal(resil_pool_close_reason_name(RESIL_POOL_CLOSE_REASON_COUNT_), "unknown");
}

/* ---- Borrowing ------------------------------------------------------------ */

static void new_opens_nothing_and_copies_name(void **state) {
  (void)state;
  char name[] = "cache";
  resil_pool_config c = base_config();
  c.name = name;
  make_pool(&c);
  name[0] = 'X';
  assert_string_equal(resil_pool_name(P), "cache");
  assert_int_equal(stats().open, 0);
  assert_int_equal(atomic_load(&F.connects), 0);
}

static void acquire_release_reuses_the_connection(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  int id = id_of(a);
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_conn *b = must_acquire();
  assert_int_equal(id_of(b), id);
  resil_pool_release(P, b, RESIL_POOL_OK);
  assert_int_equal(atomic_load(&F.connects), 1);
  assert_int_equal(atomic_load(&F.closes), 0);
  assert_int_equal(atomic_load(&F.validations), 0); /* idle < validate_after_idle_ms */
}

/* Acquires served at once from an idle connection (pool.c's quick path,
 * which reads no precise clock) are in the latency histogram too, in its
 * first bucket (<= 100 us); acquires that connected are timed as before. */
static void every_acquire_is_in_the_latency_histogram(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire(); /* connects */
  resil_pool_release(P, a, RESIL_POOL_OK);
  for (int i = 0; i < 200; i++) {
    resil_pool_conn *x = NULL;
    assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &x, NULL), RESIL_OK);
    resil_pool_release(P, x, RESIL_POOL_OK);
  }
  resil_pool_stats s = stats();
  assert_int_equal(s.acquired, 201);
  assert_int_equal(s.acquire_latency.count, 201);
  uint64_t sum = 0;
  for (unsigned b = 0; b <= RESIL_HIST_BOUNDS; b++) sum += s.acquire_latency.counts[b];
  assert_int_equal(sum, 201);
  assert_true(s.acquire_latency.counts[0] >= 200);
  assert_int_equal(atomic_load(&F.connects), 1);
}

static void expired_deadline_on_entry_is_deadline(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *out = NULL;
  resil_err err = {0};
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(0), &out, &err), RESIL_E_DEADLINE);
  assert_null(out);
  assert_non_null(strstr(err.msg, "pool 'test'"));
  resil_pool_stats s = stats();
  assert_int_equal(atomic_load(&F.connects), 0);
  assert_int_equal(s.acquire_timeouts, 0);
  assert_int_equal(s.acquire_latency.count, 0);
  assert_int_equal(resil_pool_acquire(NULL, RESIL_DEADLINE_UNSET, &out, &err), RESIL_E_INVALID);
  assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, NULL, &err), RESIL_E_INVALID);
  /* also with an idle connection there, and a deadline passed a moment ago
   * (within a tick of the coarse clock the quick path reads) */
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_deadline just_passed = {.at_ns = resil_now_ns() - 1000000};
  assert_int_equal(resil_pool_acquire(P, just_passed, &out, NULL), RESIL_E_DEADLINE);
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(0), &out, NULL), RESIL_E_DEADLINE);
  assert_null(out);
  assert_int_equal(stats().acquired, 1);
  assert_int_equal(stats().acquire_latency.count, 1);
}

static void stats_fields_are_exact(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 3;
  c.max_waiters = 0;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_stats s = stats();
  assert_int_equal(s.max, 3);
  assert_int_equal(s.open, 2);
  assert_int_equal(s.idle, 1);
  assert_int_equal(s.in_use, 1);
  assert_int_equal(s.connecting, 0);
  assert_int_equal(s.waiters, 0);
  assert_int_equal(s.acquired, 2);
  assert_int_equal(s.acquire_timeouts, 0);
  assert_int_equal(s.connects_ok, 2);
  assert_int_equal(s.connects_failed, 0);
  assert_int_equal(s.connects_timed_out, 0);
  for (int r = 0; r < RESIL_POOL_CLOSE_REASON_COUNT_; r++) assert_int_equal(s.closed[r], 0);
  assert_int_equal(s.acquire_latency.count, 2);

  resil_pool_release(P, b, RESIL_POOL_BROKEN);
  a = must_acquire(); /* the idle one */
  atomic_store(&F.fail_connects, 1);
  resil_pool_conn *x = NULL;
  assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &x, NULL), RESIL_E_FAILURE);
  atomic_store(&F.timeout_connects, 1);
  assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &x, NULL), RESIL_E_TIMEOUT);
  b = must_acquire();
  resil_pool_conn *d = must_acquire();
  assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &x, NULL), RESIL_E_POOL_TIMEOUT);

  s = stats();
  assert_int_equal(s.max, 3);
  assert_int_equal(s.open, 3);
  assert_int_equal(s.idle, 0);
  assert_int_equal(s.in_use, 3);
  assert_int_equal(s.connecting, 0);
  assert_int_equal(s.waiters, 0);
  assert_int_equal(s.acquired, 5);
  assert_int_equal(s.acquire_timeouts, 1);
  assert_int_equal(s.connects_ok, 4);
  assert_int_equal(s.connects_failed, 1);
  assert_int_equal(s.connects_timed_out, 1);
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_LIFETIME] + s.closed[RESIL_POOL_CLOSE_IDLE] +
                       s.closed[RESIL_POOL_CLOSE_VALIDATION] + s.closed[RESIL_POOL_CLOSE_DRAIN],
                   0);
  assert_int_equal(s.acquire_latency.count, 8);
  assert_int_equal(s.open, atomic_load(&F.connects) - atomic_load(&F.closes));
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_release(P, b, RESIL_POOL_OK);
  resil_pool_release(P, d, RESIL_POOL_OK);
  s = stats();
  assert_int_equal(s.idle, 3);
  assert_int_equal(s.in_use, 0);
}

/* ---- Bounds under contention ---------------------------------------------- */

#define STRESS_THREADS 8
#define STRESS_ITERS 1500

static _Atomic int borrowed, max_borrowed, stress_errors, stress_broken;

static void *stress_main(void *arg) {
  unsigned n = (unsigned)(uintptr_t)arg;
  for (int i = 0; i < STRESS_ITERS; i++) {
    resil_pool_conn *c = NULL;
    if (resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &c, NULL) != RESIL_OK) {
      atomic_fetch_add(&stress_errors, 1);
      continue;
    }
    int now = atomic_fetch_add(&borrowed, 1) + 1;
    int m = atomic_load(&max_borrowed);
    while (now > m && !atomic_compare_exchange_weak(&max_borrowed, &m, now)) {
    }
    if ((i + (int)n) % 16 == 0) sched_yield();
    atomic_fetch_sub(&borrowed, 1);
    bool broken = (i * 7 + (int)n) % 13 == 0;
    if (broken) atomic_fetch_add(&stress_broken, 1);
    resil_pool_release(P, c, broken ? RESIL_POOL_BROKEN : RESIL_POOL_OK);
  }
  return NULL;
}

static void max_size_is_never_exceeded_under_threads(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 3;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  atomic_store(&borrowed, 0);
  atomic_store(&max_borrowed, 0);
  atomic_store(&stress_errors, 0);
  atomic_store(&stress_broken, 0);
  pthread_t t[STRESS_THREADS];
  for (uintptr_t i = 0; i < STRESS_THREADS; i++)
    assert_int_equal(pthread_create(&t[i], NULL, stress_main, (void *)i), 0);
  for (int i = 0; i < STRESS_THREADS; i++) pthread_join(t[i], NULL);

  resil_pool_stats s = stats();
  assert_int_equal(atomic_load(&stress_errors), 0);
  assert_true(atomic_load(&max_borrowed) <= 3);
  assert_true(atomic_load(&max_borrowed) >= 1);
  assert_int_equal(s.open, atomic_load(&F.connects) - atomic_load(&F.closes));
  assert_true(s.open <= 3);
  assert_int_equal(s.idle, s.open);
  assert_int_equal(s.in_use, 0);
  assert_int_equal(s.connecting, 0);
  assert_int_equal(s.waiters, 0);
  assert_int_equal(s.acquired, STRESS_THREADS * STRESS_ITERS);
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_BROKEN], atomic_load(&stress_broken));
  assert_int_equal(s.connects_ok, atomic_load(&F.connects));
  assert_int_equal(s.acquire_latency.count, STRESS_THREADS * STRESS_ITERS);
}

/* ---- The waiter queue ------------------------------------------------------ */

static void waiters_are_served_in_arrival_order(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  atomic_store(&order_seq, 0);
  resil_pool_conn *held = must_acquire();
  enum { N = 5 };
  job j[N];
  for (int i = 0; i < N; i++) {
    job_start(&j[i], -1, true);
    WAIT_FOR(stats().waiters == (uint32_t)i + 1);
  }
  resil_pool_release(P, held, RESIL_POOL_OK);
  for (int i = 0; i < N; i++) job_join(&j[i]);
  for (int i = 0; i < N; i++) {
    assert_int_equal(j[i].st, RESIL_OK);
    assert_int_equal(j[i].order, i);
    assert_int_equal(j[i].id, 1); /* handed over, never reconnected */
  }
  assert_int_equal(atomic_load(&F.connects), 1);
  assert_int_equal(stats().waiters, 0);
}

static void newcomer_does_not_steal_from_a_waiter(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  atomic_store(&order_seq, 0);
  resil_pool_conn *held = must_acquire();
  job w;
  job_start(&w, -1, false);
  WAIT_FOR(stats().waiters == 1);
  resil_pool_release(P, held, RESIL_POOL_OK);
  /* The connection went straight to the waiter: nothing idle to take. */
  resil_pool_stats s = stats();
  assert_int_equal(s.idle, 0);
  assert_int_equal(s.in_use, 1);
  job_join(&w);
  assert_int_equal(w.st, RESIL_OK);
  resil_pool_release(P, w.conn, RESIL_POOL_OK);
}

static void waiter_leaves_at_its_deadline_with_pool_timeout(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  resil_pool_conn *held = must_acquire();
  timing t = timing_start(50);
  do {
    resil_pool_conn *x = NULL;
    resil_err err = {0};
    uint64_t t0 = real_ms();
    assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(50), &x, &err),
                     RESIL_E_POOL_TIMEOUT);
    timing_add(&t, real_ms() - t0);
    assert_null(x);
    assert_non_null(strstr(err.msg, "pool 'test': no connection free within"));
  } while (timing_again(&t));
  timing_check(&t);
  resil_pool_stats s = stats();
  assert_int_equal(s.acquire_timeouts, (uint64_t)t.tries);
  assert_int_equal(s.waiters, 0);
  resil_pool_release(P, held, RESIL_POOL_OK);
  assert_int_equal(stats().idle, 1);
}

static void waiter_leaves_at_acquire_timeout_without_deadline(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 50;
  make_pool(&c);
  resil_pool_conn *held = must_acquire();
  int jobs = 0;
  /* Its own deadline is far, or unset: acquire_timeout_ms wins either way. */
  static const int64_t deadlines[] = {60000, -1};
  for (int k = 0; k < 2; k++) {
    timing t = timing_start(50);
    do {
      job j;
      job_start(&j, deadlines[k], false);
      job_join(&j);
      jobs++;
      assert_int_equal(j.st, RESIL_E_POOL_TIMEOUT);
      timing_add(&t, j.elapsed_ms);
    } while (timing_again(&t));
    timing_check(&t);
  }
  assert_int_equal(stats().acquire_timeouts, (uint64_t)jobs);
  resil_pool_release(P, held, RESIL_POOL_OK);
}

static void full_queue_rejects_at_once(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.max_waiters = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  resil_pool_conn *held = must_acquire();
  job w;
  job_start(&w, -1, true);
  WAIT_FOR(stats().waiters == 1);
  resil_pool_conn *x = NULL;
  resil_err err = {0};
  uint64_t t0 = real_ms();
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(5000), &x, &err),
                   RESIL_E_POOL_TIMEOUT);
  assert_true(real_ms() - t0 < 1000);
  assert_non_null(strstr(err.msg, "pool 'test': waiter queue is full"));
  assert_int_equal(stats().acquire_timeouts, 1);
  resil_pool_release(P, held, RESIL_POOL_OK);
  job_join(&w);
  assert_int_equal(w.st, RESIL_OK);
}

static void zero_max_waiters_rejects_when_full(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.max_waiters = 0;
  make_pool(&c);
  resil_pool_conn *held = must_acquire();
  resil_pool_conn *x = NULL;
  resil_err err = {0};
  assert_int_equal(resil_pool_acquire(P, RESIL_DEADLINE_UNSET, &x, &err), RESIL_E_POOL_TIMEOUT);
  assert_non_null(strstr(err.msg, "queue is full"));
  resil_pool_release(P, held, RESIL_POOL_OK);
}

/* ---- Broken connections and connect errors --------------------------------- */

static void broken_release_closes_and_a_waiter_connects(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  atomic_store(&F.probe, P);
  resil_pool_conn *held = must_acquire();
  job w;
  job_start(&w, -1, true);
  WAIT_FOR(stats().waiters == 1);
  resil_pool_release(P, held, RESIL_POOL_BROKEN);
  assert_int_equal(atomic_load(&F.closes), 1); /* closed before release returns */
  job_join(&w);
  assert_int_equal(w.st, RESIL_OK);
  assert_int_equal(w.id, 2); /* a fresh connection */
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(s.connects_ok, 2);
  assert_int_equal(s.open, 1);
  assert_int_equal(s.idle, 1);
}

static void connect_failure_is_a_dependency_failure_named_by_pool(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.name = "cache";
  make_pool(&c);
  atomic_store(&F.fail_connects, 1);
  resil_pool_conn *x = NULL;
  resil_err err = {0};
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(1000), &x, &err), RESIL_E_FAILURE);
  assert_null(x);
  assert_int_equal(err.status, RESIL_E_FAILURE);
  assert_string_equal(err.msg, "pool 'cache': connect: Connection refused");
  resil_pool_stats s = stats();
  assert_int_equal(s.connects_failed, 1);
  assert_int_equal(s.open, 0);
  assert_int_equal(s.connecting, 0);
  assert_int_equal(s.acquired, 0);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK); /* the slot was freed */
}

static void connect_timeout_is_a_dependency_timeout(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.connect_timeout_ms = 200;
  make_pool(&c);
  atomic_store(&F.take_ms, 500); /* longer than connect_timeout_ms */
  resil_pool_conn *x = NULL;
  resil_err err = {0};
  uint64_t t0 = fake_clock_now_ns();
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(5000), &x, &err), RESIL_E_TIMEOUT);
  assert_int_equal(fake_clock_now_ns() - t0, 200000000ull); /* bounded by connect_timeout_ms */
  assert_string_equal(err.msg, "pool 'test': connect: connect timed out after 200 ms");
  resil_pool_stats s = stats();
  assert_int_equal(s.connects_timed_out, 1);
  assert_int_equal(s.connects_failed, 0);
  assert_int_equal(s.connecting, 0);
  atomic_store(&F.take_ms, 0);
  atomic_store(&F.timeout_connects, 1);
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(5000), &x, &err), RESIL_E_TIMEOUT);
  assert_string_equal(err.msg, "pool 'test': connect: no answer");
  assert_int_equal(stats().connects_timed_out, 2);
}

static void failed_connect_hands_its_slot_to_a_waiter(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  gate_set(&F.block_connect, true);
  job first, second;
  job_start(&first, -1, false);
  WAIT_FOR(gate_blocked() == 1); /* first holds the only slot, connecting */
  job_start(&second, -1, false);
  WAIT_FOR(stats().waiters == 1);
  assert_int_equal(stats().connecting, 1);
  atomic_store(&F.fail_connects, 1);
  gate_set(&F.block_connect, false);
  job_join(&first);
  job_join(&second);
  assert_int_equal(first.st, RESIL_E_FAILURE);
  assert_int_equal(second.st, RESIL_OK); /* woken to connect itself */
  resil_pool_release(P, second.conn, RESIL_POOL_OK);
  resil_pool_stats s = stats();
  assert_int_equal(s.connects_failed, 1);
  assert_int_equal(s.connects_ok, 1);
}

/* ---- No lock across callbacks --------------------------------------------- */

static void a_blocked_connect_does_not_stop_others(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 2;
  make_pool(&c);
  atomic_store(&F.probe, P);
  resil_pool_conn *a = must_acquire();
  int id = id_of(a);
  gate_set(&F.block_connect, true);
  job j;
  job_start(&j, 10000, false);
  WAIT_FOR(gate_blocked() == 1);
  /* While another thread sits in connect: release, acquire, release. */
  resil_pool_release(P, a, RESIL_POOL_OK);
  a = must_acquire();
  assert_int_equal(id_of(a), id);
  resil_pool_stats s = stats();
  assert_int_equal(s.connecting, 1);
  assert_int_equal(s.in_use, 1);
  resil_pool_release(P, a, RESIL_POOL_OK);
  gate_set(&F.block_connect, false);
  job_join(&j);
  assert_int_equal(j.st, RESIL_OK);
  resil_pool_release(P, j.conn, RESIL_POOL_OK);
  assert_int_equal(stats().idle, 2);
}

static void a_blocked_validate_does_not_stop_others(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 2;
  c.validate_after_idle_ms = 0; /* always */
  make_pool(&c);
  atomic_store(&F.probe, P);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK);
  gate_set(&F.block_validate, true);
  job j;
  job_start(&j, 10000, false);
  WAIT_FOR(gate_blocked() == 1);
  resil_pool_conn *b = must_acquire(); /* connects the second slot */
  assert_int_equal(id_of(b), 2);
  resil_pool_release(P, b, RESIL_POOL_BROKEN);
  gate_set(&F.block_validate, false);
  job_join(&j);
  assert_int_equal(j.st, RESIL_OK);
  assert_int_equal(j.id, 1);
  resil_pool_release(P, j.conn, RESIL_POOL_OK);
}

/* ---- Validation, lifetime, idle timeout (fake clock) ----------------------- */

static void idle_connection_is_validated_and_replaced_if_invalid(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.validate_after_idle_ms = 100;
  make_pool(&c);
  atomic_store(&F.probe, P);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK);
  fake_clock_advance_ms(99);
  resil_pool_conn *a = must_acquire();
  assert_int_equal(atomic_load(&F.validations), 0); /* not idle long enough */
  resil_pool_release(P, a, RESIL_POOL_OK);

  fake_clock_advance_ms(100);
  a = must_acquire();
  assert_int_equal(atomic_load(&F.validations), 1);
  assert_int_equal(id_of(a), 1); /* valid: reused */
  resil_pool_release(P, a, RESIL_POOL_OK);

  fake_clock_advance_ms(100);
  atomic_store(&F.valid, false);
  a = must_acquire();
  assert_int_equal(atomic_load(&F.validations), 2);
  assert_int_equal(id_of(a), 2); /* invalid: closed, fresh connect */
  assert_int_equal(atomic_load(&F.closes), 1);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_VALIDATION], 1);
  assert_int_equal(s.open, 1);
  assert_int_equal(s.in_use, 1);
  resil_pool_release(P, a, RESIL_POOL_OK);
}

static void invalid_connection_is_skipped_for_the_next_idle_one(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 3;
  c.validate_after_idle_ms = 100;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  fake_clock_advance_ms(150);
  resil_pool_release(P, b, RESIL_POOL_OK); /* b idle 0 ms, a idle 150 ms */
  fake_clock_advance_ms(60);
  atomic_store(&F.valid, false);
  /* MRU first: b (idle 60 ms) needs no check; then a (210 ms) fails. */
  a = must_acquire();
  assert_int_equal(id_of(a), 2);
  b = must_acquire();
  assert_int_equal(id_of(b), 3);
  assert_int_equal(atomic_load(&F.validations), 1);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_VALIDATION], 1);
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_release(P, b, RESIL_POOL_OK);
}

static void waiter_handed_an_invalid_connection_connects_itself(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 60000;
  c.validate_after_idle_ms = 0; /* always */
  make_pool(&c);
  resil_pool_conn *held = must_acquire(); /* fresh connects are not validated */
  assert_int_equal(atomic_load(&F.validations), 0);
  atomic_store(&F.valid, false);
  job w;
  job_start(&w, -1, false);
  WAIT_FOR(stats().waiters == 1);
  resil_pool_release(P, held, RESIL_POOL_OK); /* handed to the waiter... */
  job_join(&w);
  assert_int_equal(w.st, RESIL_OK); /* ...which found it invalid and reconnected */
  assert_int_equal(w.id, 2);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_VALIDATION], 1);
  assert_int_equal(s.open, 1);
  assert_int_equal(atomic_load(&F.validations), 1);
  resil_pool_release(P, w.conn, RESIL_POOL_OK);
}

/* Whose time: an acquire tells whether it did I/O against the dependency
 * (connected or validated) to lend a connection (resil/pool.h). */
static void acquire_tells_whether_it_connected_or_validated(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.validate_after_idle_ms = 100;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(); /* connected */
  assert_true(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
  a = must_acquire(); /* straight from the idle list */
  assert_int_equal(id_of(a), 1);
  assert_false(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
  fake_clock_advance_ms(100);
  a = must_acquire(); /* validated first */
  assert_int_equal(id_of(a), 1);
  assert_int_equal(atomic_load(&F.validations), 1);
  assert_true(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
  a = must_acquire(); /* idle again: the flag is per acquire */
  assert_false(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
  assert_false(resil_pool_conn_did_io(NULL));
}

/* A slow dependency that makes the validation of an idle connection use
 * the whole deadline is a dependency timeout, not a local pool timeout
 * (which the breaker would not count). */
static void validation_that_spends_the_deadline_is_a_timeout(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.validate_after_idle_ms = 0;    /* always */
  c.validate_timeout_ms = 10000; /* the deadline is the bound */
  make_pool(&c);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK);
  atomic_store(&F.validate_ms, 1000);
  resil_pool_conn *a = NULL;
  resil_err err = {0};
  resil_status st = resil_pool_acquire(P, resil_deadline_in_ms(300), &a, &err);
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_null(a);
  assert_non_null(strstr(err.msg, "validating connections used the whole deadline"));
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_VALIDATION], 1);
  assert_int_equal(s.acquire_timeouts, 0); /* not a pool_timeout */
  assert_int_equal(atomic_load(&F.connects), 1); /* no connect tried with no time left */
  assert_int_equal(s.open, 0);
  /* The same check with time to spare keeps the connection. */
  atomic_store(&F.validate_ms, 10);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK); /* connect 2 */
  st = resil_pool_acquire(P, resil_deadline_in_ms(300), &a, &err);
  assert_int_equal(st, RESIL_OK);
  assert_int_equal(id_of(a), 2);
  assert_true(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
}

/* A connector's local failure (no fd, no memory) comes back as it is,
 * never as a dependency failure, and is not counted as a failed connect. */
static void local_connect_errors_are_not_dependency_failures(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  const resil_status local[] = {RESIL_E_SYSTEM, RESIL_E_NOMEM};
  for (size_t i = 0; i < 2; i++) {
    atomic_store(&F.local_status, local[i]);
    atomic_store(&F.local_connects, 1);
    resil_pool_conn *a = NULL;
    resil_err err = {0};
    resil_status st = resil_pool_acquire(P, resil_deadline_in_ms(1000), &a, &err);
    assert_int_equal(st, local[i]);
    assert_int_equal(err.status, local[i]);
    assert_null(a);
    assert_non_null(strstr(err.msg, "pool 'test': connect: cannot create a socket"));
    resil_pool_stats s = stats();
    assert_int_equal(s.connects_failed, 0);
    assert_int_equal(s.connects_timed_out, 0);
    assert_int_equal(s.open + s.connecting, 0); /* the slot came back */
  }
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK);
}

static void lifetime_expiry_closes_on_release_and_on_acquire(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_lifetime_ms = 1000;
  c.idle_timeout_ms = 0;
  make_pool(&c);
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK);
  fake_clock_advance_ms(999);
  resil_pool_conn *a = must_acquire();
  assert_int_equal(id_of(a), 1);
  fake_clock_advance_ms(1);
  resil_pool_release(P, a, RESIL_POOL_OK); /* past its lifetime: closed */
  assert_int_equal(atomic_load(&F.closes), 1);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_LIFETIME], 1);
  assert_int_equal(s.open, 0);

  resil_pool_release(P, must_acquire(), RESIL_POOL_OK); /* conn 2 */
  fake_clock_advance_ms(1000);
  a = must_acquire(); /* conn 2 is expired in the idle list: skipped */
  assert_int_equal(id_of(a), 3);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_LIFETIME], 2);
  resil_pool_release(P, a, RESIL_POOL_OK);
}

static void lifetime_jitter_spreads_expiry(void **state) {
  (void)state;
  enum { N = 40 };
  resil_pool_config c = base_config();
  c.max_size = N;
  c.max_lifetime_ms = 1000;
  c.lifetime_jitter_percent = 50;
  c.idle_timeout_ms = 0;
  make_pool(&c);
  resil_pool_conn *h[N];
  for (int i = 0; i < N; i++) h[i] = must_acquire();
  for (int i = 0; i < N; i++) resil_pool_release(P, h[i], RESIL_POOL_OK);

  fake_clock_advance_ms(499); /* below the shortest possible lifetime (500) */
  for (int i = 0; i < N; i++) h[i] = must_acquire();
  for (int i = 0; i < N; i++) resil_pool_release(P, h[i], RESIL_POOL_OK);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_LIFETIME], 0);

  fake_clock_advance_ms(251); /* t = 750: about half have expired */
  for (int i = 0; i < N; i++) h[i] = must_acquire();
  uint64_t mid = stats().closed[RESIL_POOL_CLOSE_LIFETIME];
  assert_true(mid > 0); /* fails with probability 2^-40 */
  assert_true(mid < N);
  for (int i = 0; i < N; i++) resil_pool_release(P, h[i], RESIL_POOL_OK);
}

static void idle_timeout_closes_idle_connections_on_acquire(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.idle_timeout_ms = 500;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_release(P, b, RESIL_POOL_OK);
  fake_clock_advance_ms(500);
  a = must_acquire();
  assert_int_equal(id_of(a), 3);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_IDLE], 2);
  assert_int_equal(s.open, 1);
  assert_int_equal(atomic_load(&F.closes), 2);
  resil_pool_release(P, a, RESIL_POOL_OK);
}

static void idle_timeout_closes_on_release_from_the_tail(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.idle_timeout_ms = 500;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  fake_clock_advance_ms(600);
  resil_pool_release(P, b, RESIL_POOL_OK); /* a has been idle 600 ms: swept */
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_IDLE], 1);
  assert_int_equal(s.idle, 1);
}

static void idle_timeout_keeps_min_idle(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 3;
  c.min_idle = 1;
  c.idle_timeout_ms = 500;
  make_pool(&c);
  resil_pool_conn *h[3];
  for (int i = 0; i < 3; i++) h[i] = must_acquire();
  for (int i = 0; i < 3; i++) resil_pool_release(P, h[i], RESIL_POOL_OK);
  fake_clock_advance_ms(600);
  resil_pool_conn *a = must_acquire();
  assert_int_equal(id_of(a), 1); /* the last idle one is kept and lent */
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_IDLE], 2);
  assert_int_equal(s.connects_ok, 3);
  resil_pool_release(P, a, RESIL_POOL_OK);
}

static void housekeeper_evicts_in_the_background(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 4;
  c.min_idle = 1;
  c.idle_timeout_ms = 500;
  c.max_lifetime_ms = 10000;
  c.housekeeping_ms = 10;
  make_pool(&c);
  resil_pool_conn *h[3];
  for (int i = 0; i < 3; i++) h[i] = must_acquire();
  for (int i = 0; i < 3; i++) resil_pool_release(P, h[i], RESIL_POOL_OK);
  fake_clock_advance_ms(600);
  WAIT_TICKING(atomic_load(&F.closes) == 2); /* idle timeout, min_idle kept */
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_IDLE], 2);
  assert_int_equal(s.idle, 1);
  fake_clock_advance_ms(10000); /* now past its lifetime: closed, then refilled */
  WAIT_TICKING(atomic_load(&F.closes) == 3 && stats().idle == 1);
  s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_LIFETIME], 1);
  assert_int_equal(s.connects_ok, 4);
}

static void housekeeper_refills_min_idle(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 4;
  c.min_idle = 2;
  c.housekeeping_ms = 10;
  make_pool(&c);
  WAIT_TICKING(stats().idle == 2);
  assert_int_equal(atomic_load(&F.connects), 2);
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_BROKEN);
  WAIT_TICKING(stats().idle == 2 && atomic_load(&F.connects) == 3);
  resil_pool_stats s = stats();
  assert_int_equal(s.open, 2);
  assert_true(s.open <= 4);
}

/* ---- Prewarm -------------------------------------------------------------- */

static void prewarm_opens_min_idle(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 5;
  c.min_idle = 3;
  make_pool(&c);
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(1000), NULL), RESIL_OK);
  resil_pool_stats s = stats();
  assert_int_equal(s.open, 3);
  assert_int_equal(s.idle, 3);
  assert_int_equal(s.connects_ok, 3);
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(1000), NULL), RESIL_OK);
  assert_int_equal(stats().connects_ok, 3); /* already warm */
}

static void prewarm_times_out_with_a_slow_connector(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 5;
  c.min_idle = 3;
  make_pool(&c);
  atomic_store(&F.take_ms, 300);
  resil_err err = {0};
  uint64_t t0 = fake_clock_now_ns();
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(500), &err), RESIL_E_TIMEOUT);
  assert_int_equal(fake_clock_now_ns() - t0, 500000000ull); /* never past the deadline */
  assert_non_null(strstr(err.msg, "pool 'test': connect:"));
  resil_pool_stats s = stats();
  assert_int_equal(s.open, 1);
  assert_int_equal(s.connects_timed_out, 1);
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(0), &err), RESIL_E_TIMEOUT);
  assert_non_null(strstr(err.msg, "1 of 3 open"));
}

static void prewarm_returns_the_connect_failure(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.min_idle = 2;
  make_pool(&c);
  atomic_store(&F.fail_connects, 1);
  resil_err err = {0};
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(1000), &err), RESIL_E_FAILURE);
  assert_string_equal(err.msg, "pool 'test': connect: Connection refused");
}

/* ---- Drain ---------------------------------------------------------------- */

static void drain_closes_idle_and_then_refuses(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_release(P, b, RESIL_POOL_OK);
  assert_int_equal(resil_pool_drain(P, resil_deadline_in_ms(1000)), RESIL_OK);
  assert_int_equal(atomic_load(&F.closes), 2);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_DRAIN], 2);
  assert_int_equal(s.open, 0);
  resil_pool_conn *x = NULL;
  resil_err err = {0};
  assert_int_equal(resil_pool_acquire(P, resil_deadline_in_ms(1000), &x, &err), RESIL_E_CLOSED);
  assert_non_null(strstr(err.msg, "pool 'test'"));
  assert_int_equal(resil_pool_prewarm(P, resil_deadline_in_ms(1000), &err), RESIL_E_CLOSED);
  assert_int_equal(atomic_load(&F.connects), 2);
}

static void drain_wakes_waiters_and_times_out_on_borrowed(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.acquire_timeout_ms = 60000;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire();
  job w;
  job_start(&w, -1, false);
  WAIT_FOR(stats().waiters == 1);
  timing t = timing_start(50);
  do { /* drain again (the same wait) if a try was delayed */
    uint64_t t0 = real_ms();
    resil_status st = resil_pool_drain(P, resil_deadline_in_ms(50));
    uint64_t took = real_ms() - t0;
    if (t.tries == 0) job_join(&w);
    assert_int_equal(st, RESIL_E_TIMEOUT);
    timing_add(&t, took);
  } while (timing_again(&t));
  timing_check(&t);
  assert_int_equal(w.st, RESIL_E_CLOSED);
  assert_non_null(strstr(w.msg, "draining"));
  assert_int_equal(stats().waiters, 0);
  assert_int_equal(atomic_load(&F.closes), 0);

  resil_pool_release(P, a, RESIL_POOL_OK); /* closed on release */
  resil_pool_release(P, b, RESIL_POOL_BROKEN);
  assert_int_equal(atomic_load(&F.closes), 2);
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_DRAIN], 1);
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(s.open, 0);
  assert_int_equal(s.idle, 0);
  assert_int_equal(resil_pool_drain(P, resil_deadline_in_ms(10)), RESIL_OK);
}

static void *release_later(void *arg) {
  test_sleep_ms(20);
  resil_pool_release(P, arg, RESIL_POOL_OK);
  return NULL;
}

static void drain_returns_ok_when_borrowed_come_back(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, release_later, a), 0);
  uint64_t t0 = real_ms();
  assert_int_equal(resil_pool_drain(P, resil_deadline_in_ms(10000)), RESIL_OK);
  assert_true(real_ms() - t0 < 5000);
  pthread_join(t, NULL);
  assert_int_equal(atomic_load(&F.closes), 1);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_DRAIN], 1);
}

static void *advance_30s_later(void *arg) {
  (void)arg;
  /* The drain has taken its deadline once it has closed the idle
   * connection (it does so first): wait for that, not for a fixed time. */
  for (int i = 0; i < 10000 && atomic_load(&F.closes) < 1; i++) test_sleep_ms(1);
  fake_clock_advance_ms(29999);
  /* Time for a drain that wrongly gave up already to return (a check that
   * can only miss a bug, never fail a correct pool). */
  test_sleep_ms(30);
  fake_clock_advance_ms(1);
  return NULL;
}

static void drain_with_unset_deadline_waits_30_s_at_most(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, must_acquire(), RESIL_POOL_OK); /* one idle, closed by drain first */
  assert_int_equal(stats().idle, 1);
  uint64_t t0 = fake_clock_now_ns();
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, advance_30s_later, NULL), 0);
  resil_status st = resil_pool_drain(P, RESIL_DEADLINE_UNSET);
  uint64_t waited = fake_clock_now_ns() - t0;
  pthread_join(t, NULL);
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_int_equal(waited, 30000000000ull);
  resil_pool_release(P, a, RESIL_POOL_OK);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_DRAIN], 2);
}

static void *open_connect_gate_later(void *arg) {
  (void)arg;
  /* The drain has started once it has sent the queued waiter away (it does
   * so first): only then let the connect finish, not after a fixed time. */
  for (int i = 0; i < 10000 && stats().waiters != 0; i++) test_sleep_ms(1);
  gate_set(&F.block_connect, false);
  return NULL;
}

static void connect_finishing_during_drain_is_closed(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  make_pool(&c);
  gate_set(&F.block_connect, true);
  job j, w;
  job_start(&j, 10000, false);
  WAIT_FOR(gate_blocked() == 1);
  job_start(&w, 10000, false); /* queued behind the connect: drain's first act ends it */
  WAIT_FOR(stats().waiters == 1);
  /* The drain waits for the connect in flight; open the gate meanwhile. */
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, open_connect_gate_later, NULL), 0);
  assert_int_equal(resil_pool_drain(P, resil_deadline_in_ms(10000)), RESIL_OK);
  pthread_join(t, NULL);
  job_join(&j);
  job_join(&w);
  assert_int_equal(j.st, RESIL_E_CLOSED);
  assert_int_equal(w.st, RESIL_E_CLOSED);
  assert_int_equal(atomic_load(&F.connects), 1);
  assert_int_equal(atomic_load(&F.closes), 1);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_DRAIN], 1);
}

/* ---- fork() ---------------------------------------------------------------- */

/* In a child: report a failed check on stderr and exit 1 (cmocka's asserts
 * would unwind into the parent's copy of the test runner). */
#define CHILD_CHECK(cond)                                                             \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "child: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      _exit(1);                                                                       \
    }                                                                                 \
  } while (0)

/* Poll cond for up to 10 s in a child. */
#define CHILD_WAIT_FOR(cond)                                          \
  do {                                                                \
    for (int i_ = 0; i_ < 10000 && !(cond); i_++) test_sleep_ms(1); \
    CHILD_CHECK(cond);                                                \
  } while (0)

/* Fork, run body in the child (it must end with _exit), and assert that the
 * child exited 0 within 30 s (a hang is a failure, not a stuck test). */
static void run_child(void (*body)(void *), void *arg) {
  atomic_store(&F.fork_max_id, atomic_load(&F.next_id));
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    body(arg);
    _exit(0);
  }
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 3000 && (r = waitpid(pid, &status, WNOHANG)) == 0; i++) test_sleep_ms(10);
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("the child hung (killed after 30 s)");
  }
  assert_int_equal(r, pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("the child failed (status 0x%x): see its message above", status);
}

static resil_status child_acquire(resil_pool_conn **c, uint32_t ms) {
  *c = NULL;
  return resil_pool_acquire(P, resil_deadline_in_ms(ms), c, NULL);
}

typedef struct fork_idle_arg {
  resil_pool_conn *mine; /* borrowed by the forking thread before the fork */
} fork_idle_arg;

static void fork_idle_child(void *v) {
  fork_idle_arg *a = v;
  /* Nothing of the parent's is counted: one idle, one borrowed by the
   * forking thread, two by other threads. */
  resil_pool_stats s;
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 0 && s.idle == 0 && s.in_use == 0 && s.connecting == 0 &&
              s.waiters == 0);
  /* The first acquire abandons the idle one and opens a new one. */
  resil_pool_conn *c[4];
  CHILD_CHECK(child_acquire(&c[0], 2000) == RESIL_OK);
  CHILD_CHECK(atomic_load(&F.abandons) == 1);
  CHILD_CHECK(*(int *)resil_pool_conn_handle(c[0]) > atomic_load(&F.fork_max_id));
  /* The housekeeper was restarted: it refills min_idle (1) by itself. */
  CHILD_WAIT_FOR((resil_pool_get_stats(P, &s), s.idle == 1));
  for (int i = 1; i < 4; i++) {
    CHILD_CHECK(child_acquire(&c[i], 2000) == RESIL_OK);
    CHILD_CHECK(*(int *)resil_pool_conn_handle(c[i]) > atomic_load(&F.fork_max_id));
  }
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 4 && s.in_use == 4 && s.idle == 0);
  /* The connection borrowed before the fork comes back: abandoned, and the
   * counts do not move (no underflow, no slot freed that was not taken). */
  resil_pool_release(P, a->mine, RESIL_POOL_OK);
  CHILD_CHECK(atomic_load(&F.abandons) == 2);
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 4 && s.in_use == 4 && s.idle == 0);
  resil_pool_conn *extra;
  CHILD_CHECK(child_acquire(&extra, 50) == RESIL_E_POOL_TIMEOUT); /* max_size holds */
  for (int i = 0; i < 4; i++) resil_pool_release(P, c[i], RESIL_POOL_OK);
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 4 && s.idle == 4 && s.in_use == 0);
  resil_pool_free(P); /* never joins the parent's housekeeper */
  CHILD_CHECK(atomic_load(&F.parent_closes) == 0);
  CHILD_CHECK(atomic_load(&F.closes) == atomic_load(&F.connects) - atomic_load(&F.fork_max_id));
  _exit(0);
}

/* A child of fork() starts with a clean pool: the parent's idle connections
 * are abandoned (never closed, never lent), the one the forking thread had
 * borrowed is abandoned when released without moving any count, the child
 * opens its own up to max_size, and the housekeeper runs again. The parent
 * is unaffected. */
static void fork_child_gets_a_clean_pool_and_abandons_the_parents(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 4;
  c.min_idle = 1;
  c.housekeeping_ms = 20;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire(), *x = must_acquire();
  resil_pool_conn *y = must_acquire();
  resil_pool_release(P, x, RESIL_POOL_OK);
  resil_pool_release(P, y, RESIL_POOL_OK);
  job other; /* borrows y (the last released) on a thread that then exits */
  job_start(&other, 5000, false);
  job_join(&other);
  assert_int_equal(other.st, RESIL_OK);
  resil_pool_stats s = stats();
  assert_int_equal(s.open, 4);
  assert_int_equal(s.idle, 1);

  fork_idle_arg arg = {.mine = a};
  run_child(fork_idle_child, &arg);

  /* The parent: same connections, same counts, nothing abandoned. */
  s = stats();
  assert_int_equal(s.open, 4);
  assert_int_equal(s.in_use, 3);
  assert_int_equal(atomic_load(&F.abandons), 0);
  resil_pool_release(P, a, RESIL_POOL_OK);
  resil_pool_release(P, b, RESIL_POOL_OK);
  resil_pool_release(P, other.conn, RESIL_POOL_OK);
  assert_int_equal(stats().idle, 4);
  assert_int_equal(atomic_load(&F.connects), 4);
}

static void fork_waiter_child(void *v) {
  (void)v;
  resil_pool_stats s;
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 0 && s.in_use == 0 && s.waiters == 0);
  /* Both slots are free at once: no wait for the parent's threads. */
  resil_pool_conn *c[2], *extra;
  uint64_t t0 = real_ms();
  for (int i = 0; i < 2; i++) CHILD_CHECK(child_acquire(&c[i], 2000) == RESIL_OK);
  CHILD_CHECK(real_ms() - t0 < 1000);
  CHILD_CHECK(child_acquire(&extra, 50) == RESIL_E_POOL_TIMEOUT);
  resil_pool_release(P, c[0], RESIL_POOL_OK);
  CHILD_CHECK(child_acquire(&extra, 2000) == RESIL_OK); /* the queue still works */
  resil_pool_release(P, extra, RESIL_POOL_OK);
  resil_pool_release(P, c[1], RESIL_POOL_BROKEN);
  resil_pool_get_stats(P, &s);
  CHILD_CHECK(s.open == 1 && s.idle == 1 && s.in_use == 0 && s.waiters == 0);
  resil_pool_free(P);
  _exit(0);
}

/* Forked while the pool was full and another thread was queued in acquire
 * (holding the pool's condvars): the child can take max_size connections at
 * once and never hangs; the parent's waiter is still served. */
static void fork_with_a_full_pool_and_a_waiter_does_not_hang_the_child(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 2;
  c.acquire_timeout_ms = 20000;
  c.housekeeping_ms = 10; /* its thread sleeps on the pool's condvar */
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  job holder, waiter;
  job_start(&holder, 5000, false);
  job_join(&holder);
  assert_int_equal(holder.st, RESIL_OK);
  job_start(&waiter, 20000, true);
  WAIT_FOR(stats().waiters == 1);

  run_child(fork_waiter_child, NULL);

  resil_pool_release(P, a, RESIL_POOL_OK);
  job_join(&waiter);
  assert_int_equal(waiter.st, RESIL_OK);
  resil_pool_release(P, holder.conn, RESIL_POOL_OK);
  assert_int_equal(stats().in_use, 0);
  assert_int_equal(atomic_load(&F.abandons), 0);
}

/* ---- Eviction (failover) ---------------------------------------------------- */

static void evict_closes_idle_now_and_borrowed_on_release(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 4;
  make_pool(&c);
  resil_pool_conn *a = must_acquire(), *b = must_acquire(), *d = must_acquire();
  uint64_t g0 = resil_pool_generation(P);
  assert_int_equal(resil_pool_conn_generation(a), g0);
  resil_pool_release(P, b, RESIL_POOL_OK);
  resil_pool_release(P, d, RESIL_POOL_OK); /* two idle, one borrowed */
  assert_true(resil_pool_evict(P, resil_pool_conn_generation(a)));
  assert_int_equal(resil_pool_generation(P), g0 + 1);
  assert_int_equal(atomic_load(&F.closes), 2); /* the idle ones, at once */
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_EVICTED], 2);
  assert_int_equal(s.evictions, 1);
  assert_int_equal(s.idle, 0);
  /* Another caller that saw the same failover on an old connection: no
   * second eviction (it would close the new generation's connections). */
  resil_pool_conn *n = must_acquire(); /* a new connection, generation g0 + 1 */
  assert_int_equal(id_of(n), 4);
  assert_int_equal(resil_pool_conn_generation(n), g0 + 1);
  assert_false(resil_pool_evict(P, g0));
  assert_int_equal(stats().evictions, 1);
  /* The borrowed old one is closed when it comes back, even "OK". */
  resil_pool_release(P, a, RESIL_POOL_OK);
  assert_int_equal(atomic_load(&F.closes), 3);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_EVICTED], 3);
  resil_pool_release(P, n, RESIL_POOL_OK); /* the new one stays */
  assert_int_equal(stats().idle, 1);
  assert_int_equal(id_of(a = must_acquire()), 4);
  resil_pool_release(P, a, RESIL_POOL_OK);
  /* RESIL_POOL_GEN_CURRENT always evicts. */
  assert_true(resil_pool_evict(P, RESIL_POOL_GEN_CURRENT));
  assert_int_equal(stats().idle, 0);
  assert_int_equal(stats().evictions, 2);
}

static void eviction_hands_freed_slots_to_waiters(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  job w;
  job_start(&w, 10000, false);
  WAIT_FOR(stats().waiters == 1);
  assert_true(resil_pool_evict(P, RESIL_POOL_GEN_CURRENT));
  resil_pool_release(P, a, RESIL_POOL_OK); /* closed: the waiter connects anew */
  job_join(&w);
  assert_int_equal(w.st, RESIL_OK);
  assert_int_equal(w.id, 2);
  resil_pool_release(P, w.conn, RESIL_POOL_OK);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_EVICTED], 1);
}

static void a_connect_begun_before_an_eviction_is_lent_once_then_closed(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  gate_set(&F.block_connect, true);
  job j;
  job_start(&j, 10000, false);
  WAIT_FOR(gate_blocked() == 1);
  assert_true(resil_pool_evict(P, RESIL_POOL_GEN_CURRENT)); /* while it connects */
  gate_set(&F.block_connect, false);
  job_join(&j);
  assert_int_equal(j.st, RESIL_OK);
  resil_pool_release(P, j.conn, RESIL_POOL_OK);
  assert_int_equal(stats().idle, 0);
  assert_int_equal(stats().closed[RESIL_POOL_CLOSE_EVICTED], 1);
}

/* ---- Parking (pool.c: a release with nobody queued parks the connection
 * in the thread's slot; the next acquire of that thread takes it back) ---- */

/* A parked connection is idle to everyone: the stats show it idle, and
 * another thread gets it rather than a new connection. */
static void a_parked_connection_is_idle_to_other_threads(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 2;
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK); /* parked in this thread's slot */
  resil_pool_stats s = stats();
  assert_int_equal(s.open, 1);
  assert_int_equal(s.idle, 1);
  assert_int_equal(s.in_use, 0);
  job j;
  job_start(&j, 2000, true);
  job_join(&j);
  assert_int_equal(j.st, RESIL_OK);
  assert_int_equal(j.id, 1);                  /* the parked one... */
  assert_int_equal(atomic_load(&F.connects), 1); /* ...not a new connection */
  s = stats();
  assert_int_equal(s.acquired, 2);
  assert_int_equal(s.idle, 1);
  assert_int_equal(s.in_use, 0);
}

typedef struct churn {
  pthread_t t;
  int n, ok, timeouts;
} churn;

static void *churn_main(void *arg) {
  churn *c = arg;
  for (int i = 0; i < c->n; i++) {
    resil_pool_conn *x = NULL;
    resil_status st = resil_pool_acquire(P, resil_deadline_in_ms(10000), &x, NULL);
    if (st == RESIL_OK) {
      c->ok++;
      resil_pool_release(P, x, RESIL_POOL_OK);
    } else {
      c->timeouts++;
    }
  }
  return NULL;
}

/* One connection, four threads taking turns as fast as they can: every
 * release races a thread that is about to queue. A connection parked just
 * as a waiter queued and left there would strand that waiter until its
 * acquire timeout (300 ms here): none may time out, and the counts add up. */
static void no_waiter_is_stranded_by_a_parked_connection(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 300;
  make_pool(&c);
  enum { T = 4 };
  churn w[T];
  int per = test_build_mult() > 1 ? 2000 : 10000;
  for (int i = 0; i < T; i++) {
    w[i] = (churn){.n = per};
    assert_int_equal(pthread_create(&w[i].t, NULL, churn_main, &w[i]), 0);
  }
  int ok = 0, timeouts = 0;
  for (int i = 0; i < T; i++) {
    pthread_join(w[i].t, NULL);
    ok += w[i].ok;
    timeouts += w[i].timeouts;
  }
  resil_pool_stats s = stats();
  print_message("# %d acquires, %d timed out; %llu waited (not parked)\n", ok, timeouts,
                (unsigned long long)(s.acquire_latency.count - s.acquire_latency.counts[0]));
  assert_int_equal(timeouts, 0);
  assert_int_equal(ok, T * per);
  assert_int_equal(s.acquired, (uint64_t)(T * per));
  assert_int_equal(s.acquire_timeouts, 0);
  assert_int_equal(s.open, 1);
  assert_int_equal(s.idle, 1);
  assert_int_equal(s.in_use, 0);
  assert_int_equal(atomic_load(&F.connects), 1);
}

static job racing_waiter;

static void queue_a_waiter(void *arg) {
  (void)arg;
  job_start(&racing_waiter, 2000, true);
  WAIT_FOR(stats().waiters == 1);
}

/* The race itself, made to happen: a release decides to park (nobody is
 * queued), then a waiter queues and sweeps the slots (nothing parked yet),
 * then the release parks. It must see the waiter and hand the connection
 * over; parked, it would leave the waiter until its acquire timeout. */
static void a_waiter_that_queues_while_a_release_parks_is_served(void **state) {
  (void)state;
  if (!resil__invariants_enabled()) {
    print_message("built without -Dinvariants=true: no hook to make the race\n");
    skip();
  }
  resil_pool_config c = base_config();
  c.max_size = 1;
  c.acquire_timeout_ms = 2000;
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  resil__pool_test_before_park(P, queue_a_waiter, NULL);
  uint64_t t0 = real_ms();
  resil_pool_release(P, a, RESIL_POOL_OK);
  job_join(&racing_waiter);
  assert_int_equal(racing_waiter.st, RESIL_OK);
  assert_true(real_ms() - t0 < 1000); /* served on the release, not at its timeout */
  assert_int_equal(stats().acquire_timeouts, 0);
}

/* Drain and eviction reach parked connections at once. */
static void drain_and_evict_close_parked_connections(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK); /* parked */
  assert_true(resil_pool_evict(P, RESIL_POOL_GEN_CURRENT));
  resil_pool_stats s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_EVICTED], 1);
  assert_int_equal(s.open, 0);
  assert_int_equal(atomic_load(&F.closes), 1);
  a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK); /* parked again */
  assert_int_equal(resil_pool_drain(P, resil_deadline_in_ms(1000)), RESIL_OK);
  s = stats();
  assert_int_equal(s.closed[RESIL_POOL_CLOSE_DRAIN], 1);
  assert_int_equal(s.open, 0);
  assert_int_equal(atomic_load(&F.closes), 2);
}

/* A parked connection whose validation is due is validated like any idle
 * one (the full acquire vets it), and its take is not counted twice. */
static void a_parked_connection_due_for_validation_is_validated(void **state) {
  (void)state;
  resil_pool_config c = base_config();
  c.validate_after_idle_ms = 100;
  make_pool(&c);
  resil_pool_conn *a = must_acquire();
  resil_pool_release(P, a, RESIL_POOL_OK);
  fake_clock_advance_ms(150);
  a = must_acquire();
  assert_int_equal(id_of(a), 1);
  assert_int_equal(atomic_load(&F.validations), 1);
  assert_true(resil_pool_conn_did_io(a));
  resil_pool_release(P, a, RESIL_POOL_OK);
  assert_int_equal(stats().acquired, 2);
}

/* A test on the real clock, or on the fake clock. */
#define REAL(f) cmocka_unit_test_setup_teardown(f, setup_real, teardown)
#define FAKE(f) cmocka_unit_test_setup_teardown(f, setup_fake, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_defaults_are_documented_and_valid),
      cmocka_unit_test(config_validation_names_every_bad_field_at_once),
      cmocka_unit_test(new_rejects_bad_config_and_connector_together),
      cmocka_unit_test(close_reasons_have_names),
      REAL(new_opens_nothing_and_copies_name),
      REAL(acquire_release_reuses_the_connection),
      REAL(expired_deadline_on_entry_is_deadline),
      REAL(every_acquire_is_in_the_latency_histogram),
      FAKE(stats_fields_are_exact),
      REAL(max_size_is_never_exceeded_under_threads),
      REAL(waiters_are_served_in_arrival_order),
      REAL(newcomer_does_not_steal_from_a_waiter),
      REAL(waiter_leaves_at_its_deadline_with_pool_timeout),
      REAL(waiter_leaves_at_acquire_timeout_without_deadline),
      REAL(full_queue_rejects_at_once),
      REAL(zero_max_waiters_rejects_when_full),
      REAL(broken_release_closes_and_a_waiter_connects),
      REAL(connect_failure_is_a_dependency_failure_named_by_pool),
      FAKE(connect_timeout_is_a_dependency_timeout),
      REAL(failed_connect_hands_its_slot_to_a_waiter),
      REAL(a_blocked_connect_does_not_stop_others),
      REAL(a_blocked_validate_does_not_stop_others),
      FAKE(idle_connection_is_validated_and_replaced_if_invalid),
      FAKE(invalid_connection_is_skipped_for_the_next_idle_one),
      REAL(waiter_handed_an_invalid_connection_connects_itself),
      FAKE(acquire_tells_whether_it_connected_or_validated),
      FAKE(validation_that_spends_the_deadline_is_a_timeout),
      REAL(local_connect_errors_are_not_dependency_failures),
      FAKE(lifetime_expiry_closes_on_release_and_on_acquire),
      FAKE(lifetime_jitter_spreads_expiry),
      FAKE(idle_timeout_closes_idle_connections_on_acquire),
      FAKE(idle_timeout_closes_on_release_from_the_tail),
      FAKE(idle_timeout_keeps_min_idle),
      FAKE(housekeeper_evicts_in_the_background),
      FAKE(housekeeper_refills_min_idle),
      FAKE(prewarm_opens_min_idle),
      FAKE(prewarm_times_out_with_a_slow_connector),
      FAKE(prewarm_returns_the_connect_failure),
      REAL(drain_closes_idle_and_then_refuses),
      REAL(drain_wakes_waiters_and_times_out_on_borrowed),
      REAL(drain_returns_ok_when_borrowed_come_back),
      REAL(connect_finishing_during_drain_is_closed),
      FAKE(drain_with_unset_deadline_waits_30_s_at_most),
      REAL(fork_child_gets_a_clean_pool_and_abandons_the_parents),
      REAL(fork_with_a_full_pool_and_a_waiter_does_not_hang_the_child),
      REAL(evict_closes_idle_now_and_borrowed_on_release),
      REAL(eviction_hands_freed_slots_to_waiters),
      REAL(a_connect_begun_before_an_eviction_is_lent_once_then_closed),
      REAL(a_parked_connection_is_idle_to_other_threads),
      REAL(no_waiter_is_stranded_by_a_parked_connection),
      REAL(a_waiter_that_queues_while_a_release_parks_is_served),
      REAL(drain_and_evict_close_parked_connections),
      FAKE(a_parked_connection_due_for_validation_is_validated),
  };
  return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
