/* ops_exports: the real /metrics and EMF output of a process whose
 * dependencies went through every kind of state the operator kit
 * (deploy/) alerts on or draws, written to two files for tests/ops/check_ops.py.
 *
 *   ops_exports PROMETHEUS_OUT EMF_OUT
 *
 * Not a test by itself: check_ops.py runs it and compares the metric and
 * label names (Prometheus) and the metric and dimension names (EMF) the
 * rules, dashboards and alarms use with what this output really contains.
 * It uses only the public API, on the real clock, with bounded waits; it
 * exits 1 with a message naming the step that did not happen.
 *
 * Dependencies (service "checkout", as resil_service_start() labels it):
 *   orders-db   a pool (connects ok / failed / timed out, a broken
 *               connection, acquire waits and an acquire timeout), calls of
 *               every outcome, rejections concurrency_full, queue_timeout,
 *               pool_timeout, deadline, draining, retry_budget, retries
 *   payments    breaker closed -> open (rejecting) -> recovery probes
 *               failure, timeout, success -> half_open -> closed, then
 *               tripped again: transitions, probes, events
 *   flags       forced open (operator), rejecting
 *   audit       breaker disabled
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "resil/adapter.h"
#include "resil/resil.h"

static void die(const char *step, const char *msg) {
  fprintf(stderr, "ops_exports: %s: %s\n", step, msg ? msg : "");
  exit(1);
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- a pool whose connector does what it is told -------------------------- */
static _Atomic int connect_mode; /* 0 ok, 1 refused, 2 timed out */
static resil_status conn_open(void *ctx, resil_deadline d, void **conn, resil_err *err) {
  (void)ctx;
  (void)d;
  switch (atomic_load(&connect_mode)) {
    case 1: return resil_err_set(err, RESIL_E_FAILURE, "orders-db: connect: refused");
    case 2: return resil_err_set(err, RESIL_E_TIMEOUT, "orders-db: connect: timed out");
    default: break;
  }
  *conn = malloc(1);
  return *conn ? RESIL_OK : resil_err_set(err, RESIL_E_NOMEM, "out of memory");
}
static void conn_close(void *ctx, void *conn) {
  (void)ctx;
  free(conn);
}

/* ---- a probe that answers failure, timeout, then success ----------------- */
static _Atomic int probe_n;
static resil_status probe(void *ctx, resil_deadline d, resil_err *err) {
  (void)ctx;
  (void)d;
  int n = atomic_fetch_add(&probe_n, 1);
  if (n == 0) return resil_err_set(err, RESIL_E_FAILURE, "payments: probe: 503");
  if (n == 1) return resil_err_set(err, RESIL_E_TIMEOUT, "payments: probe: timed out");
  return RESIL_OK;
}

static void on_event(void *ctx, const resil_event *ev) {
  (void)ev;
  atomic_fetch_add((_Atomic int *)ctx, 1);
}

static resil_dep *mkdep(const char *name, void (*tune)(resil_dep_config *)) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  if (tune) tune(&c);
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) die(name, err.msg);
  return d;
}

static void tune_db(resil_dep_config *c) {
  c->limit.max_concurrent = 2;
  c->limit.max_waiters = 1;
  c->limit.max_wait_ms = 10;
  c->retry.max_attempts = 3;
  c->retry.base_backoff_ms = 1;
  c->retry.max_backoff_ms = 2;
  c->retry.budget_percent = 0;
  c->retry.budget_min_per_s = 1; /* one retry in the window, then retry_budget */
  c->retry.budget_window_ms = 1000;
  c->breaker.consecutive_failures = 0; /* keep it closed: failures are for the counters */
  c->breaker.failure_rate_percent = 100;
  c->breaker.minimum_calls = 1000;
}
static void tune_payments(resil_dep_config *c) {
  c->breaker.consecutive_failures = 2;
  c->breaker.failure_rate_percent = 0;
  c->breaker.open_ms = 20000; /* ended by a probe, not by the timer */
  c->breaker.open_max_ms = 60000;
  c->breaker.open_jitter_percent = 0;
  c->breaker.half_open_probes = 1;
  c->probe_interval_ms = 10;
  c->probe_timeout_ms = 200;
}

static void call(resil_dep *d, resil_status outcome, unsigned ms) {
  resil_permit p;
  resil_err err;
  if (resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err) != RESIL_OK) die("admit", err.msg);
  if (ms) sleep_ms(ms);
  resil_dep_done(&p, outcome);
}

static void expect_reject(resil_dep *d, resil_deadline dl, resil_status want, const char *what) {
  resil_permit p;
  resil_err err;
  resil_status st = resil_dep_admit(d, dl, &p, &err);
  if (st == RESIL_OK) resil_dep_done(&p, RESIL_OK);
  if (st != want) die(what, resil_status_name(st));
}

static resil_status failing_attempt(void *ctx, resil_attempt *a) {
  (void)ctx;
  return resil_err_set(a->err, RESIL_E_FAILURE, "orders-db: failed");
}

static void write_file(const char *path, const char *data, size_t len) {
  FILE *f = fopen(path, "w");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) die("write", path);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PROMETHEUS_OUT EMF_OUT\n", argv[0]);
    return 2;
  }
  resil_err err;
  _Atomic int events = 0;
  resil_set_event_hook(on_event, &events);
  /* What resil_service_start() sets. */
  if (resil_export_set_info_label("config_hash", "0123abcd", &err) != RESIL_OK ||
      resil_export_set_info_label("service", "checkout", &err) != RESIL_OK)
    die("info labels", err.msg);

  resil_dep *db = mkdep("orders-db", tune_db);
  resil_dep *pay = mkdep("payments", tune_payments);
  resil_dep *flags = mkdep("flags", NULL);
  resil_dep *audit = mkdep("audit", NULL);

  /* EMF to a file, baseline now: the flush below reports what follows. */
  int efd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (efd < 0) die("open", argv[2]);
  resil_emf_config ec;
  resil_emf_config_init(&ec);
  ec.service = "checkout";
  ec.interval_ms = 3600000; /* only the explicit flush */
  ec.fd = efd;
  if (resil_emf_start(&ec, &err) != RESIL_OK) die("emf start", err.msg);

  /* orders-db: a pool, used, timed out, failing to connect. */
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = "orders-db";
  pc.max_size = 1;
  pc.max_waiters = 1;
  pc.acquire_timeout_ms = 10;
  pc.housekeeping_ms = 0;
  resil_pool_connector cn = {.connect = conn_open, .close = conn_close};
  resil_pool *pool = resil_pool_new(&pc, &cn, &err);
  if (!pool) die("pool", err.msg);
  resil_dep_attach_pool(db, pool);
  resil_pool_conn *c1, *c2;
  if (resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &c1, &err) != RESIL_OK) die("acquire", err.msg);
  if (resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &c2, &err) != RESIL_E_POOL_TIMEOUT)
    die("acquire timeout", "the second acquire did not time out");
  resil_pool_release(pool, c1, RESIL_POOL_BROKEN);
  for (int mode = 1; mode <= 2; mode++) {
    atomic_store(&connect_mode, mode);
    if (resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &c1, &err) == RESIL_OK)
      die("connect failure", "acquire succeeded");
  }
  atomic_store(&connect_mode, 0);
  if (resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &c1, &err) != RESIL_OK) die("acquire", err.msg);
  resil_pool_release(pool, c1, RESIL_POOL_OK);

  /* orders-db: every outcome, and rejections of every reason. */
  call(db, RESIL_OK, 1);
  call(db, RESIL_OK, 0);
  call(db, RESIL_E_FAILURE, 0);
  call(db, RESIL_E_TIMEOUT, 2);
  call(db, RESIL_E_OVERLOAD, 0);
  call(db, RESIL_E_CALLER, 0);
  call(db, RESIL_E_POOL_TIMEOUT, 0); /* the call's pool wait timed out */
  resil_permit a, b;
  if (resil_dep_admit(db, RESIL_DEADLINE_UNSET, &a, &err) != RESIL_OK ||
      resil_dep_admit(db, RESIL_DEADLINE_UNSET, &b, &err) != RESIL_OK)
    die("admit", err.msg);
  expect_reject(db, RESIL_DEADLINE_UNSET, RESIL_E_QUEUE_TIMEOUT, "queue_timeout");
  resil_dep_done(&a, RESIL_OK);
  resil_dep_done(&b, RESIL_OK);
  resil_deadline past = resil_deadline_in_ms(1);
  sleep_ms(3);
  expect_reject(db, past, RESIL_E_DEADLINE, "deadline");
  resil_dep_set_draining(db, true);
  expect_reject(db, RESIL_DEADLINE_UNSET, RESIL_E_DRAINING, "draining");
  resil_dep_set_draining(db, false);
  /* Retries until the budget (1/s, 0 %) says no. */
  for (int i = 0; i < 4; i++)
    resil_dep_call(db, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, failing_attempt, NULL, NULL);
  resil_dep_stats st;
  resil_dep_get_stats(db, &st);
  if (!st.retries) die("retries", "no retry was made");
  if (!st.rejections[RESIL_REJECT_RETRY_BUDGET]) die("retry_budget", "no rejection");

  /* concurrency_full: a dependency with no queue. */
  {
    /* flags has the default bulkhead (64, no queue): fill it. */
    resil_permit held[64];
    for (int i = 0; i < 64; i++)
      if (resil_dep_admit(flags, RESIL_DEADLINE_UNSET, &held[i], &err) != RESIL_OK)
        die("fill flags", err.msg);
    expect_reject(flags, RESIL_DEADLINE_UNSET, RESIL_E_CONCURRENCY_FULL, "concurrency_full");
    for (int i = 0; i < 64; i++) resil_dep_done(&held[i], RESIL_OK);
  }

  /* flags: forced open by an operator; audit: breaker disabled. */
  resil_breaker_set_mode(resil_dep_breaker(flags), RESIL_BREAKER_MODE_FORCE_OPEN);
  expect_reject(flags, RESIL_DEADLINE_UNSET, RESIL_E_BREAKER_OPEN, "forced open");
  resil_breaker_set_mode(resil_dep_breaker(audit), RESIL_BREAKER_MODE_DISABLE);
  call(audit, RESIL_E_FAILURE, 0);

  /* payments: trip, reject, probes failure / timeout / success, close, trip again. */
  if (resil_dep_set_probe(pay, probe, NULL) != RESIL_OK) die("set probe", "failed");
  call(pay, RESIL_OK, 1);
  call(pay, RESIL_E_FAILURE, 0);
  call(pay, RESIL_E_TIMEOUT, 0);
  expect_reject(pay, RESIL_DEADLINE_UNSET, RESIL_E_BREAKER_OPEN, "breaker_open");
  for (int i = 0; i < 1000; i++) { /* at most 10 s */
    if (resil_breaker_get_state(resil_dep_breaker(pay)) == RESIL_BREAKER_HALF_OPEN) break;
    sleep_ms(10);
  }
  if (resil_breaker_get_state(resil_dep_breaker(pay)) != RESIL_BREAKER_HALF_OPEN)
    die("probes", "no successful probe within 10 s");
  resil_set_event_hook(NULL, NULL); /* let the probes stop before more changes */
  call(pay, RESIL_OK, 0); /* half-open -> closed */
  if (resil_breaker_get_state(resil_dep_breaker(pay)) != RESIL_BREAKER_CLOSED)
    die("close", "the half-open call did not close the breaker");
  call(pay, RESIL_E_FAILURE, 0);
  call(pay, RESIL_E_FAILURE, 0);
  if (resil_breaker_get_state(resil_dep_breaker(pay)) != RESIL_BREAKER_OPEN)
    die("trip", "payments did not trip again");
  resil_dep_get_stats(pay, &st);
  for (int k = 0; k < RESIL_PROBE_RESULT_COUNT_; k++)
    if (!st.probes[k]) die("probes", resil_probe_result_name((resil_probe_result)k));
  if (!st.events) die("events", "no event counted");

  /* Export with orders-db busy: a call in flight holding the pool's only
   * connection (saturation 1). */
  resil_permit busy;
  if (resil_dep_admit(db, RESIL_DEADLINE_UNSET, &busy, &err) != RESIL_OK) die("admit", err.msg);
  if (resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &c1, &err) != RESIL_OK) die("acquire", err.msg);
  char *prom = NULL;
  size_t plen = 0;
  if (resil_export_prometheus(&prom, &plen, &err) != RESIL_OK) die("export", err.msg);
  write_file(argv[1], prom, plen);
  free(prom);
  if (resil_emf_flush(&err) != RESIL_OK) die("emf flush", err.msg);
  resil_pool_release(pool, c1, RESIL_POOL_OK);
  resil_dep_done(&busy, RESIL_OK);
  resil_emf_stop();
  close(efd);

  resil_dep_free(pay); /* waits for a running probe */
  resil_dep_free(flags);
  resil_dep_free(audit);
  resil_dep_free(db);
  resil_pool_free(pool);
  return 0;
}
