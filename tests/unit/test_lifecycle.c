/* Health, readiness, pre-warm, drain and SIGTERM, on the real clock.
 * Readiness transitions (not warm -> warm, breaker open/forced open ->
 * 503 naming the dependency, draining -> 503); drain with calls in flight
 * (none lost, every call gets a status, in-flight reaches 0, calls after the
 * grace are rejected as draining, a call outliving the deadline makes drain
 * return RESIL_E_TIMEOUT naming its dependency); the SIGTERM flag. Time
 * bounds are generous for a loaded 2-core machine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "testutil.h"

#include "resil/adapter.h"
#include "resil/resil.h"
#include "resil/testing.h" /* resil_drain_reset */

static resil_dep *mk(const char *name, bool critical) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.critical = critical;
  c.timeout_ms = 60000;
  c.breaker.open_jitter_percent = 0;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("%s", err.msg);
  return d;
}

static _Atomic int connects_fail;
static resil_status fake_connect(void *ctx, resil_deadline dl, void **conn, resil_err *err) {
  (void)ctx;
  (void)dl;
  if (atomic_load(&connects_fail))
    return resil_err_set(err, RESIL_E_FAILURE, "connection refused (fake)");
  *conn = malloc(1);
  return RESIL_OK;
}
static void fake_close(void *ctx, void *conn) {
  (void)ctx;
  free(conn);
}

static resil_pool *mkpool(const char *name, uint32_t min_idle) {
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = name;
  pc.min_idle = min_idle;
  pc.max_size = 4;
  pc.housekeeping_ms = 0;
  resil_pool_connector conn = {.connect = fake_connect, .close = fake_close};
  resil_err err;
  resil_pool *p = resil_pool_new(&pc, &conn, &err);
  if (!p) fail_msg("%s", err.msg);
  return p;
}

static int teardown(void **state) {
  (void)state;
  resil_drain_reset();
  atomic_store(&connects_fail, 0);
  return 0;
}

/* ---- health and readiness ---- */

static void health_is_always_200(void **state) {
  (void)state;
  char buf[64];
  assert_int_equal(resil_health(buf, sizeof buf), 200);
  assert_string_equal(buf, "{\"status\":\"ok\"}");
  assert_int_equal(resil_health(NULL, 0), 200);
  resil_dep *d = mk("health-crit", true);
  resil_breaker_set_mode(resil_dep_breaker(d), RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_int_equal(resil_drain(0, resil_deadline_in_ms(2000), NULL), RESIL_OK);
  assert_int_equal(resil_health(buf, sizeof buf), 200); /* draining, breaker open: still alive */
  resil_dep_free(d);
}

static void ready_waits_for_critical_pools_to_be_warm(void **state) {
  (void)state;
  char buf[256];
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  assert_string_equal(buf, "{\"ready\":true}");
  resil_dep *crit = mk("orders-db", true);
  resil_dep *other = mk("nice-to-have", false);
  resil_dep *nopool = mk("crit-no-pool", true);
  resil_pool *p1 = mkpool("orders-db", 2), *p2 = mkpool("nice-to-have", 1);
  resil_dep_attach_pool(crit, p1);
  resil_dep_attach_pool(other, p2);
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  assert_string_equal(buf, "{\"ready\":false,\"reason\":\"orders-db: not warm (pool not pre-warmed)\"}");
  assert_false(resil_dep_is_warm(crit));
  resil_err err;
  assert_int_equal(resil_prewarm_all(resil_deadline_in_ms(10000), &err), RESIL_OK);
  assert_true(resil_dep_is_warm(crit));
  assert_true(resil_dep_is_warm(other));
  resil_pool_stats ps;
  resil_pool_get_stats(p1, &ps);
  assert_int_equal(ps.idle, 2);
  resil_pool_get_stats(p2, &ps);
  assert_int_equal(ps.idle, 1);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  /* A non-critical dependency never affects readiness. */
  resil_dep_set_warm(other, false);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  resil_dep_set_warm(crit, false);
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  resil_dep_set_warm(crit, true);
  assert_int_equal(resil_ready(NULL, 0), 200);
  resil_dep_attach_pool(crit, NULL);
  resil_dep_attach_pool(other, NULL);
  resil_pool_free(p1);
  resil_pool_free(p2);
  resil_dep_free(crit);
  resil_dep_free(other);
  resil_dep_free(nopool);
}

static void prewarm_failure_names_the_dependency(void **state) {
  (void)state;
  resil_dep *d = mk("flaky-cache", true);
  resil_pool *p = mkpool("flaky-cache", 1);
  resil_dep_attach_pool(d, p);
  atomic_store(&connects_fail, 1);
  resil_err err;
  resil_status st = resil_prewarm_all(resil_deadline_in_ms(3000), &err);
  assert_int_not_equal(st, RESIL_OK);
  assert_non_null(strstr(err.msg, "flaky-cache"));
  assert_false(resil_dep_is_warm(d));
  char buf[256];
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  assert_non_null(strstr(buf, "flaky-cache: not warm"));
  atomic_store(&connects_fail, 0);
  assert_int_equal(resil_prewarm_all(resil_deadline_in_ms(3000), &err), RESIL_OK);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  resil_dep_attach_pool(d, NULL);
  resil_pool_free(p);
  resil_dep_free(d);
}

static void ready_is_503_naming_an_open_critical_breaker(void **state) {
  (void)state;
  char buf[256];
  resil_dep *d = mk("payments-api", true);
  resil_dep *nc = mk("analytics", false);
  resil_breaker_set_mode(resil_dep_breaker(nc), RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_int_equal(resil_ready(buf, sizeof buf), 200); /* not critical */
  resil_breaker_set_mode(resil_dep_breaker(d), RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  assert_string_equal(buf,
                      "{\"ready\":false,\"reason\":\"payments-api: breaker forced open\"}");
  resil_breaker_set_mode(resil_dep_breaker(d), RESIL_BREAKER_MODE_AUTO);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  resil_breaker_set_mode(resil_dep_breaker(d), RESIL_BREAKER_MODE_DISABLE);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  resil_dep_free(d);
  resil_dep_free(nc);

  /* A real trip: open for 1.5 s, then ready again once the break passed. */
  resil_dep_config c;
  resil_dep_config_init(&c, "tripping-db");
  c.critical = true;
  c.breaker.consecutive_failures = 2;
  c.breaker.open_ms = 1500;
  c.breaker.open_jitter_percent = 0;
  d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  for (int i = 0; i < 2; i++) {
    resil_permit p;
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
    resil_dep_done(&p, RESIL_E_FAILURE);
  }
  assert_int_equal(resil_breaker_get_state(resil_dep_breaker(d)), RESIL_BREAKER_OPEN);
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  assert_string_equal(buf, "{\"ready\":false,\"reason\":\"tripping-db: breaker open\"}");
  uint64_t t0 = test_now_ms();
  while (resil_ready(NULL, 0) == 503 && test_now_ms() - t0 < 10000) test_sleep_ms(20);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  assert_true(test_now_ms() - t0 >= 1000);
  resil_dep_free(d);
}

static void ready_is_503_while_draining(void **state) {
  (void)state;
  char buf[256];
  resil_dep *d = mk("drain-ready", true);
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  assert_false(resil_is_draining());
  assert_int_equal(resil_drain(0, resil_deadline_in_ms(2000), NULL), RESIL_OK);
  assert_true(resil_is_draining());
  assert_int_equal(resil_ready(buf, sizeof buf), 503);
  assert_string_equal(buf, "{\"ready\":false,\"reason\":\"draining\"}");
  assert_true(resil_dep_is_draining(d));
  resil_drain_reset();
  assert_false(resil_is_draining());
  assert_false(resil_dep_is_draining(d));
  assert_int_equal(resil_ready(buf, sizeof buf), 200);
  resil_dep_free(d);
}

/* ---- drain ---- */

typedef struct holder {
  resil_permit permit;
  unsigned hold_ms;
  resil_status outcome;
  _Atomic bool done;
  pthread_t th;
} holder;

static void *hold_main(void *arg) {
  holder *h = arg;
  test_sleep_ms(h->hold_ms);
  resil_dep_done(&h->permit, h->outcome);
  atomic_store(&h->done, true);
  return NULL;
}

static void start_holder(holder *h, resil_dep *d, unsigned hold_ms) {
  memset(h, 0, sizeof *h);
  h->hold_ms = hold_ms;
  h->outcome = RESIL_OK;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &h->permit, NULL), RESIL_OK);
  assert_int_equal(pthread_create(&h->th, NULL, hold_main, h), 0);
}

typedef struct drain_job {
  uint32_t grace_ms;
  unsigned deadline_ms;
  resil_status st;
  resil_err err;
  _Atomic bool finished;
  pthread_t th;
} drain_job;

static void *drain_main(void *arg) {
  drain_job *j = arg;
  j->st = resil_drain(j->grace_ms, resil_deadline_in_ms(j->deadline_ms), &j->err);
  atomic_store(&j->finished, true);
  return NULL;
}

static void drain_lets_in_flight_calls_finish_and_loses_none(void **state) {
  (void)state;
  resil_dep *d = mk("orders-db", true);
  resil_dep *e = mk("session-cache", false);
  resil_pool *pool = mkpool("orders-db", 2);
  resil_dep_attach_pool(d, pool);
  assert_int_equal(resil_prewarm_all(resil_deadline_in_ms(5000), NULL), RESIL_OK);
  enum { N = 6 };
  holder h[N];
  for (int i = 0; i < N; i++) start_holder(&h[i], i % 2 ? e : d, 600 + 50 * (unsigned)i);

  drain_job j = {.grace_ms = 300, .deadline_ms = 20000};
  uint64_t t0 = test_now_ms();
  assert_int_equal(pthread_create(&j.th, NULL, drain_main, &j), 0);
  /* Readiness flips at once. */
  while (!resil_is_draining()) test_sleep_ms(1);
  assert_int_equal(resil_ready(NULL, 0), 503);
  /* Within the grace period new calls are still admitted. */
  resil_permit p;
  unsigned grace_calls = 0;
  resil_status st = resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
  if (test_now_ms() - t0 < 250) assert_int_equal(st, RESIL_OK);
  if (st == RESIL_OK) { /* (on a very slow machine the grace may be over) */
    resil_dep_done(&p, RESIL_OK);
    grace_calls++;
  }
  /* After the grace: rejected with RESIL_E_DRAINING. */
  while (!resil_dep_is_draining(d) && test_now_ms() - t0 < 15000) test_sleep_ms(2);
  assert_true(test_now_ms() - t0 >= 250);
  resil_err err;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err), RESIL_E_DRAINING);
  assert_non_null(strstr(err.msg, "draining"));
  assert_int_equal(resil_dep_admit(e, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_E_DRAINING);
  pthread_join(j.th, NULL);
  if (j.st != RESIL_OK) fail_msg("drain: %s", j.err.msg);
  /* Drain returned only after every admitted call ended with its status
   * (read before joining the holders). */
  resil_dep_stats sd, se;
  resil_dep_get_stats(d, &sd);
  resil_dep_get_stats(e, &se);
  for (int i = 0; i < N; i++) pthread_join(h[i].th, NULL);
  assert_int_equal(sd.in_flight, 0);
  assert_int_equal(se.in_flight, 0);
  /* None lost: every admitted call ended with its own outcome. */
  assert_int_equal(sd.calls[RESIL_OUTCOME_SUCCESS], N / 2 + grace_calls);
  assert_int_equal(se.calls[RESIL_OUTCOME_SUCCESS], N / 2);
  assert_int_equal(sd.admitted, N / 2 + grace_calls);
  assert_int_equal(se.admitted, N / 2);
  assert_true(sd.rejections[RESIL_REJECT_DRAINING] >= 1);
  assert_true(se.rejections[RESIL_REJECT_DRAINING] >= 1);
  /* The pool was closed by the drain. */
  resil_pool_stats ps;
  resil_pool_get_stats(pool, &ps);
  assert_int_equal(ps.open, 0);
  assert_true(ps.closed[RESIL_POOL_CLOSE_DRAIN] >= 2);
  resil_pool_conn *pc;
  assert_int_equal(resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &pc, NULL), RESIL_E_CLOSED);
  resil_dep_attach_pool(d, NULL);
  resil_pool_free(pool);
  resil_dep_free(d);
  resil_dep_free(e);
}

static void drain_times_out_naming_the_dependency_with_a_call_in_flight(void **state) {
  (void)state;
  resil_dep *fast = mk("fast-dep", false);
  resil_dep *slow = mk("slow-dep", false);
  holder hs, hf;
  start_holder(&hf, fast, 50);
  start_holder(&hs, slow, 2500);
  uint64_t t0 = test_now_ms();
  resil_err err;
  assert_int_equal(resil_drain(0, resil_deadline_in_ms(400), &err), RESIL_E_TIMEOUT);
  uint64_t took = test_now_ms() - t0;
  assert_true(took >= 350);
  assert_true(took < 2400); /* did not wait for the slow call */
  assert_non_null(strstr(err.msg, "1 call still in flight"));
  assert_non_null(strstr(err.msg, "slow-dep 1"));
  assert_null(strstr(err.msg, "fast-dep"));
  assert_false(atomic_load(&hs.done));
  /* The slow call still ends with its own status. */
  pthread_join(hs.th, NULL);
  pthread_join(hf.th, NULL);
  assert_true(atomic_load(&hs.done));
  resil_dep_stats st;
  resil_dep_get_stats(slow, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 1);
  resil_dep_free(fast);
  resil_dep_free(slow);
}

/* A wait written the documented way: sleep (as a poll() would) at most RESIL_DRAIN_CHECK_MS
 * at a time, with the time left from resil_drain_bound(deadline) recomputed on every wake-up. */
static resil_status slow_work(void *ctx, resil_attempt *a) {
  (void)ctx;
  for (;;) {
    int64_t ms = resil_deadline_remaining_ms(resil_drain_bound(a->deadline));
    if (ms <= 0) return resil_err_set(a->err, RESIL_E_TIMEOUT, "slow work: timed out");
    test_sleep_ms(ms > RESIL_DRAIN_CHECK_MS ? RESIL_DRAIN_CHECK_MS : (unsigned)ms);
  }
}

typedef struct call_job {
  resil_dep *dep;
  resil_status st;
  resil_err err;
  uint64_t ended_ms;
  pthread_t th;
} call_job;

static void *call_main(void *arg) {
  call_job *j = arg;
  j->st = resil_dep_call(j->dep, resil_deadline_in_ms(10000), 0, slow_work, NULL, &j->err);
  j->ended_ms = test_now_ms();
  return NULL;
}

/* The drain's deadline bounds calls in flight: a 10 s call whose wait honours the cutoff
 * ends a little before the drain's deadline with RESIL_E_DRAINING (counted as a draining
 * rejection, not a timeout), so the drain returns RESIL_OK instead of timing out. */
static void drain_cuts_calls_in_flight_before_its_deadline(void **state) {
  (void)state;
  resil_dep *d = mk("cut-dep", false);
  assert_false(resil_deadline_is_set(resil_drain_cutoff()));
  resil_deadline far = resil_deadline_in_ms(60000);
  assert_true(resil_drain_bound(far).at_ns == far.at_ns); /* not draining: unchanged */
  call_job j = {.dep = d};
  assert_int_equal(pthread_create(&j.th, NULL, call_main, &j), 0);
  test_sleep_ms(100); /* the call is waiting, with no cutoff yet */
  uint64_t t0 = test_now_ms();
  resil_err err;
  resil_status st = resil_drain(100, resil_deadline_in_ms(1000), &err);
  uint64_t took = test_now_ms() - t0;
  pthread_join(j.th, NULL);
  if (st != RESIL_OK) fail_msg("drain: %s", err.msg);
  if (took > 1000 + 300) fail_msg("drain took %llu ms", (unsigned long long)took);
  assert_true(resil_deadline_is_set(resil_drain_cutoff()));
  assert_true(resil_drain_bound(far).at_ns == resil_drain_cutoff().at_ns);
  assert_true(resil_drain_bound(RESIL_DEADLINE_UNSET).at_ns == resil_drain_cutoff().at_ns);
  assert_int_equal(j.st, RESIL_E_DRAINING);
  assert_non_null(strstr(j.err.msg, "cut-dep: cut at the drain deadline (slow work: timed out)"));
  uint64_t ended = j.ended_ms - t0;
  if (ended < 600 || ended > 1000) fail_msg("cut after %llu ms, expected 800 (deadline 1000 - 200)",
                                            (unsigned long long)ended);
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.in_flight, 0);
  assert_int_equal(s.calls[RESIL_OUTCOME_TIMEOUT], 0);
  assert_int_equal(s.rejections[RESIL_REJECT_DRAINING], 1);
  assert_int_equal(s.admitted, 1);
  /* A second drain never moves the cutoff later. */
  resil_deadline cut = resil_drain_cutoff();
  assert_int_equal(resil_drain(0, resil_deadline_in_ms(5000), NULL), RESIL_OK);
  assert_true(resil_drain_cutoff().at_ns == cut.at_ns);
  resil_drain_reset();
  assert_false(resil_deadline_is_set(resil_drain_cutoff()));
  resil_dep_free(d);
}

static void drain_flushes_emf(void **state) {
  (void)state;
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC | O_NONBLOCK), 0);
  resil_dep *d = mk("emf-at-drain", false);
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.interval_ms = 3600000;
  c.fd = pfd[1];
  assert_int_equal(resil_emf_start(&c, NULL), RESIL_OK);
  resil_permit p;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
  resil_dep_done(&p, RESIL_OK);
  char buf[8192];
  assert_true(read(pfd[0], buf, sizeof buf) < 0); /* nothing yet */
  assert_int_equal(resil_drain(0, resil_deadline_in_ms(2000), NULL), RESIL_OK);
  ssize_t n = read(pfd[0], buf, sizeof buf - 1);
  assert_true(n > 0);
  buf[n] = 0;
  assert_non_null(strstr(buf, "\"Dependency\":\"emf-at-drain\""));
  assert_non_null(strstr(buf, "\"CallsSuccess\":1"));
  resil_emf_stop();
  close(pfd[0]);
  close(pfd[1]);
  resil_dep_free(d);
}

/* ---- SIGTERM ---- */

static void sigterm_sets_a_flag_and_does_not_kill(void **state) {
  (void)state;
  assert_int_equal(resil_sigterm_fd(), -1);
  assert_false(resil_sigterm_received());
  resil_err err;
  assert_int_equal(resil_sigterm_install(&err), RESIL_OK);
  assert_int_equal(resil_sigterm_install(&err), RESIL_OK); /* idempotent */
  int fd = resil_sigterm_fd();
  assert_true(fd >= 0);
  uint64_t t0 = test_now_ms();
  assert_false(resil_sigterm_wait(resil_deadline_in_ms(100)));
  assert_true(test_now_ms() - t0 >= 90);
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  assert_int_equal(poll(&pfd, 1, 0), 0);
  assert_int_equal(raise(SIGTERM), 0);
  /* Still alive. */
  assert_true(resil_sigterm_received());
  t0 = test_now_ms();
  assert_true(resil_sigterm_wait(resil_deadline_in_ms(10000)));
  assert_true(test_now_ms() - t0 < 5000);
  assert_int_equal(poll(&pfd, 1, 0), 1);
  assert_true(pfd.revents & POLLIN);
  /* A second signal is harmless. */
  assert_int_equal(raise(SIGTERM), 0);
  assert_true(resil_sigterm_received());
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(health_is_always_200, teardown),
      cmocka_unit_test_teardown(ready_waits_for_critical_pools_to_be_warm, teardown),
      cmocka_unit_test_teardown(prewarm_failure_names_the_dependency, teardown),
      cmocka_unit_test_teardown(ready_is_503_naming_an_open_critical_breaker, teardown),
      cmocka_unit_test_teardown(ready_is_503_while_draining, teardown),
      cmocka_unit_test_teardown(drain_lets_in_flight_calls_finish_and_loses_none, teardown),
      cmocka_unit_test_teardown(drain_times_out_naming_the_dependency_with_a_call_in_flight,
                                teardown),
      cmocka_unit_test_teardown(drain_cuts_calls_in_flight_before_its_deadline, teardown),
      cmocka_unit_test_teardown(drain_flushes_emf, teardown),
      cmocka_unit_test_teardown(sigterm_sets_a_flag_and_does_not_kill, teardown),
  };
  return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
