/* A dependency: admission order and rejection reasons, the concurrency limit
 * and its FIFO queue, retries with backoff and budget, the registry, stats,
 * and a multithreaded stress test whose invariants are checked exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "internal.h" /* resil__dep_test_before_park, resil__invariants_enabled */
#include "resil/adapter.h"
#include "resil/resil.h"
#include "testutil.h"

#define MS 1000000ull

static int setup_fake(void **state) {
  (void)state;
  fake_clock_install();
  return 0;
}
static int teardown_fake(void **state) {
  (void)state;
  fake_clock_uninstall();
  return 0;
}

static resil_dep *mk(const char *name, uint32_t limit, uint32_t waiters, uint32_t wait_ms) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.limit.max_concurrent = limit;
  c.limit.max_waiters = waiters;
  c.limit.max_wait_ms = wait_ms;
  c.breaker.open_jitter_percent = 0;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("resil_dep_new: %s", err.msg);
  return d;
}

static void admit_and_done_count_each_outcome(void **state) {
  (void)state;
  resil_dep *d = mk("outcomes", 4, 0, 50);
  resil_status outs[] = {RESIL_OK, RESIL_OK, RESIL_E_FAILURE, RESIL_E_TIMEOUT, RESIL_E_OVERLOAD,
                         RESIL_E_CALLER};
  for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
    resil_permit p;
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
    fake_clock_advance_ms(3);
    resil_dep_done(&p, outs[i]);
  }
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_string_equal(st.name, "outcomes");
  assert_int_equal(st.admitted, 6);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 2);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], 1);
  assert_int_equal(st.calls[RESIL_OUTCOME_TIMEOUT], 1);
  assert_int_equal(st.calls[RESIL_OUTCOME_OVERLOAD], 1);
  assert_int_equal(st.calls[RESIL_OUTCOME_IGNORED], 1);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.latency.count, 6);
  assert_int_equal(st.latency.sum_ns, 18 * MS);
  assert_int_equal(st.latency.counts[5], 6); /* 3 ms lands in (2.5 ms, 5 ms] */
  resil_dep_free(d);
}

static void permit_deadline_is_the_earlier_of_caller_and_timeout(void **state) {
  (void)state;
  resil_dep *d = mk("deadlines", 4, 0, 50); /* timeout_ms 1000 */
  resil_permit p;
  resil_dep_admit(d, resil_deadline_in_ms(200), &p, NULL);
  assert_int_equal(p.deadline.at_ns, fake_clock_now_ns() + 200 * MS);
  resil_dep_done(&p, RESIL_OK);
  resil_dep_admit(d, resil_deadline_in_ms(5000), &p, NULL);
  assert_int_equal(p.deadline.at_ns, fake_clock_now_ns() + 1000 * MS);
  resil_dep_done(&p, RESIL_OK);
  resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
  assert_int_equal(p.deadline.at_ns, fake_clock_now_ns() + 1000 * MS);
  resil_dep_done(&p, RESIL_OK);
  resil_dep_free(d);
}

static void spent_deadline_is_rejected_and_not_a_failure(void **state) {
  (void)state;
  resil_dep *d = mk("spent", 4, 0, 50);
  resil_deadline past = resil_deadline_in_ms(1);
  fake_clock_advance_ms(2);
  resil_permit p;
  resil_err err;
  for (int i = 0; i < 50; i++)
    assert_int_equal(resil_dep_admit(d, past, &p, &err), RESIL_E_DEADLINE);
  assert_non_null(strstr(err.msg, "spent: rejected, the caller's deadline had already passed"));
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rejections[RESIL_REJECT_DEADLINE], 50);
  assert_int_equal(st.admitted, 0);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(st.breaker.window_calls, 0);
  resil_dep_free(d);
}

static void draining_rejects_new_calls_but_lets_admitted_finish(void **state) {
  (void)state;
  resil_dep *d = mk("drain", 4, 0, 50);
  resil_permit in, p;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &in, NULL), RESIL_OK);
  resil_dep_set_draining(d, true);
  resil_err err;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err), RESIL_E_DRAINING);
  assert_non_null(strstr(err.msg, "drain: rejected, the process is draining"));
  resil_dep_done(&in, RESIL_OK);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_true(st.draining);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 1);
  assert_int_equal(st.rejections[RESIL_REJECT_DRAINING], 1);
  resil_dep_set_draining(d, false);
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
  resil_dep_done(&p, RESIL_OK);
  resil_dep_free(d);
}

static void open_breaker_rejects_with_reason_in_message(void **state) {
  (void)state;
  resil_dep *d = mk("payments", 4, 0, 50);
  for (int i = 0; i < 5; i++) {
    resil_permit p;
    resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
    resil_dep_done(&p, RESIL_E_FAILURE);
  }
  resil_permit p;
  resil_err err;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, &err), RESIL_E_BREAKER_OPEN);
  assert_int_equal(err.status, RESIL_E_BREAKER_OPEN);
  assert_non_null(strstr(err.msg, "payments: rejected, circuit breaker open"));
  assert_non_null(strstr(err.msg, "5 consecutive failures"));
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rejections[RESIL_REJECT_BREAKER_OPEN], 1);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], 5);
  resil_dep_free(d);
}

static void full_limit_without_queue_rejects_at_once(void **state) {
  (void)state;
  resil_dep *d = mk("full", 2, 0, 50);
  resil_permit a, b, c;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &a, NULL), RESIL_OK);
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &b, NULL), RESIL_OK);
  resil_err err;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &c, &err), RESIL_E_CONCURRENCY_FULL);
  assert_non_null(strstr(err.msg, "2 calls in flight (limit.max_concurrent 2)"));
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 2);
  assert_true(st.saturation >= 1.0);
  resil_dep_done(&a, RESIL_OK);
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &c, NULL), RESIL_OK);
  resil_dep_done(&b, RESIL_OK);
  resil_dep_done(&c, RESIL_OK);
  resil_dep_done(&c, RESIL_OK); /* second done is a no-op */
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 3);
  assert_int_equal(st.rejections[RESIL_REJECT_CONCURRENCY_FULL], 1);
  resil_dep_free(d);
}

static void rejection_after_admit_is_counted_not_failed(void **state) {
  (void)state;
  resil_dep *d = mk("late", 2, 0, 50);
  resil_permit p;
  resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
  resil_dep_done(&p, RESIL_E_POOL_TIMEOUT);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rejections[RESIL_REJECT_POOL_TIMEOUT], 1);
  assert_int_equal(st.rejected_after_admit, 1);
  assert_int_equal(st.admitted, 1);
  assert_int_equal(st.breaker.window_calls, 0);
  assert_int_equal(st.in_flight, 0);
  resil_dep_free(d);
}

/* ---- the FIFO queue (real clock, short bounded waits) ---- */

typedef struct queued {
  resil_dep *d;
  int id;
  resil_deadline deadline;
  resil_status st;
  uint64_t waited_ns;
  int *order;
  _Atomic int *next;
} queued;

static void *queue_one(void *arg) {
  queued *q = arg;
  resil_permit p;
  uint64_t t0 = resil_now_ns();
  q->st = resil_dep_admit(q->d, q->deadline, &p, NULL);
  q->waited_ns = resil_now_ns() - t0;
  if (q->st == RESIL_OK) {
    if (q->order) q->order[atomic_fetch_add(q->next, 1)] = q->id;
    resil_dep_done(&p, RESIL_OK);
  }
  return NULL;
}

static void wait_for_waiters(resil_dep *d, uint32_t n) {
  for (int i = 0; i < 5000; i++) {
    resil_dep_stats st;
    resil_dep_get_stats(d, &st);
    if (st.waiters == n) return;
    usleep(1000);
  }
  fail_msg("never saw %u waiters", n);
}

static void queued_callers_are_served_in_arrival_order(void **state) {
  (void)state;
  resil_dep *d = mk("fifo", 1, 8, 10000);
  resil_permit hold;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &hold, NULL), RESIL_OK);
  enum { N = 5 };
  pthread_t th[N];
  queued q[N];
  int order[N];
  _Atomic int next = 0;
  for (int i = 0; i < N; i++) {
    q[i] = (queued){.d = d, .id = i, .deadline = resil_deadline_in_ms(10000), .order = order,
                    .next = &next};
    pthread_create(&th[i], NULL, queue_one, &q[i]);
    wait_for_waiters(d, (uint32_t)i + 1); /* arrival order is known */
  }
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_true(st.saturation > 1.0); /* callers are queueing */
  resil_dep_done(&hold, RESIL_OK); /* each one, on finishing, frees the slot for the next */
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < N; i++) {
    assert_int_equal(q[i].st, RESIL_OK);
    assert_int_equal(order[i], i);
  }
  resil_dep_free(d);
}

static void waiter_leaves_at_max_wait_with_queue_timeout(void **state) {
  (void)state;
  resil_dep *d = mk("qtimeout", 1, 4, 80);
  resil_permit hold;
  resil_dep_admit(d, RESIL_DEADLINE_UNSET, &hold, NULL);
  queued q = {.d = d, .deadline = resil_deadline_in_ms(5000)};
  queue_one(&q);
  assert_int_equal(q.st, RESIL_E_QUEUE_TIMEOUT);
  assert_true(q.waited_ns >= 75 * MS);
  assert_true(q.waited_ns <= test_upper_ms(80) * MS);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rejections[RESIL_REJECT_QUEUE_TIMEOUT], 1);
  assert_int_equal(st.waiters, 0);
  resil_dep_done(&hold, RESIL_OK);
  resil_dep_free(d);
}

static void waiter_leaves_at_its_deadline_with_deadline(void **state) {
  (void)state;
  resil_dep *d = mk("qdeadline", 1, 4, 5000);
  resil_permit hold;
  resil_dep_admit(d, RESIL_DEADLINE_UNSET, &hold, NULL);
  queued q = {.d = d, .deadline = resil_deadline_in_ms(60)};
  queue_one(&q);
  assert_int_equal(q.st, RESIL_E_DEADLINE);
  assert_true(q.waited_ns <= test_upper_ms(60) * MS);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.rejections[RESIL_REJECT_DEADLINE], 1);
  resil_dep_done(&hold, RESIL_OK);
  resil_dep_free(d);
}

static void full_queue_rejects_with_concurrency_full(void **state) {
  (void)state;
  resil_dep *d = mk("qfull", 1, 1, 10000);
  resil_permit hold;
  resil_dep_admit(d, RESIL_DEADLINE_UNSET, &hold, NULL);
  pthread_t th;
  queued q1 = {.d = d, .deadline = resil_deadline_in_ms(10000)};
  pthread_create(&th, NULL, queue_one, &q1);
  wait_for_waiters(d, 1);
  queued q2 = {.d = d, .deadline = resil_deadline_in_ms(10000)};
  queue_one(&q2);
  assert_int_equal(q2.st, RESIL_E_CONCURRENCY_FULL);
  assert_true(q2.waited_ns <= test_upper_ms(0) * MS); /* at once, not after a wait */
  resil_dep_done(&hold, RESIL_OK);
  pthread_join(th, NULL);
  assert_int_equal(q1.st, RESIL_OK);
  resil_dep_free(d);
}

/* ---- retries ---- */

typedef struct script {
  resil_status outs[10];
  int n, calls;
  int retry_hint;
  uint32_t retry_after_ms;
  uint64_t at_ns[10];
} script;

static resil_status scripted(void *ctx, resil_attempt *a) {
  script *s = ctx;
  assert_int_equal(a->number, (uint32_t)s->calls + 1);
  assert_true(resil_deadline_is_set(a->deadline));
  s->at_ns[s->calls] = resil_now_ns();
  resil_status st = s->outs[s->calls < s->n ? s->calls : s->n - 1];
  s->calls++;
  a->retry = s->retry_hint;
  a->retry_after_ms = s->retry_after_ms;
  if (st != RESIL_OK) resil_err_set(a->err, st, "attempt %d failed", s->calls);
  return st;
}

static resil_dep *mk_retry(const char *name, uint32_t attempts) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.timeout_ms = 10000;
  c.retry.max_attempts = attempts;
  c.retry.base_backoff_ms = 10;
  c.retry.max_backoff_ms = 40;
  c.breaker.consecutive_failures = 100;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("%s", err.msg);
  return d;
}

static void idempotent_failures_are_retried_until_success(void **state) {
  (void)state;
  resil_dep *d = mk_retry("retry-ok", 3);
  script s = {.outs = {RESIL_E_FAILURE, RESIL_E_TIMEOUT, RESIL_OK}, .n = 3, .retry_hint = -1};
  resil_err err;
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &s,
                                  &err),
                   RESIL_OK);
  assert_int_equal(s.calls, 3);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.retries, 2);
  assert_int_equal(st.admitted, 3);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 1);
  resil_dep_free(d);
}

static void attempts_stop_at_max_attempts_with_last_error(void **state) {
  (void)state;
  resil_dep *d = mk_retry("retry-max", 3);
  script s = {.outs = {RESIL_E_FAILURE}, .n = 1, .retry_hint = -1};
  resil_err err;
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &s,
                                  &err),
                   RESIL_E_FAILURE);
  assert_int_equal(s.calls, 3);
  assert_string_equal(err.msg, "attempt 3 failed");
  resil_dep_free(d);
}

static void non_idempotent_and_caller_errors_are_not_retried(void **state) {
  (void)state;
  resil_dep *d = mk_retry("retry-no", 5);
  script s = {.outs = {RESIL_E_FAILURE}, .n = 1, .retry_hint = -1};
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, 0, scripted, &s, NULL),
                   RESIL_E_FAILURE);
  assert_int_equal(s.calls, 1);
  script c = {.outs = {RESIL_E_CALLER}, .n = 1, .retry_hint = -1};
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &c,
                                  NULL),
                   RESIL_E_CALLER);
  assert_int_equal(c.calls, 1);
  /* ... unless the attempt says this one is retryable (e.g. a serialization failure) */
  script r = {.outs = {RESIL_E_CALLER, RESIL_OK}, .n = 2, .retry_hint = 1};
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &r,
                                  NULL),
                   RESIL_OK);
  assert_int_equal(r.calls, 2);
  /* ... and an attempt may forbid it */
  script f = {.outs = {RESIL_E_FAILURE}, .n = 1, .retry_hint = 0};
  resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &f, NULL);
  assert_int_equal(f.calls, 1);
  resil_dep_free(d);
}

static void backoff_never_sleeps_past_the_deadline(void **state) {
  (void)state;
  resil_dep *d = mk_retry("retry-deadline", 10);
  /* retry-after 5 s cannot fit in a 1 s deadline: give up at once, not
   * after sleeping to the deadline (or past it) */
  script s = {.outs = {RESIL_E_OVERLOAD}, .n = 1, .retry_hint = -1, .retry_after_ms = 5000};
  uint64_t t0 = resil_now_ns();
  assert_int_equal(resil_dep_call(d, resil_deadline_in_ms(1000), RESIL_CALL_IDEMPOTENT, scripted,
                                  &s, NULL),
                   RESIL_E_OVERLOAD);
  assert_int_equal(s.calls, 1);
  assert_true(resil_now_ns() - t0 <= test_upper_ms(0) * MS);
  resil_dep_free(d);
}

static void retry_after_is_honoured(void **state) {
  (void)state;
  resil_dep *d = mk_retry("retry-after", 2);
  script s = {.outs = {RESIL_E_OVERLOAD, RESIL_OK}, .n = 2, .retry_hint = -1,
              .retry_after_ms = 50};
  assert_int_equal(resil_dep_call(d, resil_deadline_in_ms(2000), RESIL_CALL_IDEMPOTENT, scripted,
                                  &s, NULL),
                   RESIL_OK);
  assert_true(s.at_ns[1] - s.at_ns[0] >= 50 * MS);
  resil_dep_free(d);
}

static void retry_budget_caps_retries_and_counts_refusals(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "budget");
  c.retry.max_attempts = 3;
  c.retry.base_backoff_ms = 1;
  c.retry.max_backoff_ms = 1;
  c.retry.budget_percent = 10;
  c.retry.budget_min_per_s = 0;
  c.breaker.consecutive_failures = 0; /* keep the breaker out of the way */
  c.breaker.failure_rate_percent = 0;
  c.breaker.slow_call_rate_percent = 100;
  c.breaker.slow_call_ms = 60000;
  resil_dep *d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  /* 100 failing calls may retry at most 10% of requests in the window. */
  for (int i = 0; i < 100; i++) {
    script s = {.outs = {RESIL_E_FAILURE}, .n = 1, .retry_hint = -1};
    resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &s, NULL);
  }
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_true(st.retries <= 10);
  assert_true(st.retries >= 9);
  assert_true(st.rejections[RESIL_REJECT_RETRY_BUDGET] >= 90);
  assert_int_equal(st.admitted, 100 + st.retries);
  resil_dep_free(d);
}

static void retry_budget_floor_allows_a_few_retries(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "budget-floor");
  c.retry.max_attempts = 2;
  c.retry.base_backoff_ms = 1;
  c.retry.max_backoff_ms = 1;
  c.retry.budget_percent = 0;
  c.retry.budget_min_per_s = 1;
  c.retry.budget_window_ms = 3000; /* floor: 3 retries per window */
  c.breaker.consecutive_failures = 1000;
  resil_dep *d = resil_dep_new(&c, NULL);
  for (int i = 0; i < 10; i++) {
    script s = {.outs = {RESIL_E_FAILURE}, .n = 1, .retry_hint = -1};
    resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &s, NULL);
  }
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.retries, 3);
  assert_int_equal(st.rejections[RESIL_REJECT_RETRY_BUDGET], 7);
  resil_dep_free(d);
}

static void rejection_stops_the_call_without_running_fn(void **state) {
  (void)state;
  resil_dep *d = mk_retry("call-reject", 3);
  resil_dep_set_draining(d, true);
  script s = {.outs = {RESIL_OK}, .n = 1, .retry_hint = -1};
  resil_err err;
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, RESIL_CALL_IDEMPOTENT, scripted, &s,
                                  &err),
                   RESIL_E_DRAINING);
  assert_int_equal(s.calls, 0);
  assert_int_equal(resil_dep_call(NULL, RESIL_DEADLINE_UNSET, 0, scripted, &s, &err),
                   RESIL_E_INVALID);
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, 0, NULL, &s, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "fn is NULL"));
  resil_dep_free(d);
}

/* ---- registry and config ---- */

static void count_visit(void *ctx, resil_dep *d) {
  char *names = ctx;
  strcat(names, resil_dep_name(d));
  strcat(names, ",");
}

static void registry_lists_dependencies_and_refuses_duplicates(void **state) {
  (void)state;
  resil_dep *a = mk("reg-a", 1, 0, 50), *b = mk("reg-b", 1, 0, 50);
  char names[256] = "";
  assert_int_equal(resil_registry_foreach(count_visit, names), 2);
  assert_string_equal(names, "reg-a,reg-b,");
  assert_ptr_equal(resil_registry_find("reg-b"), b);
  assert_null(resil_registry_find("reg-c"));
  resil_dep_config c;
  resil_dep_config_init(&c, "reg-a");
  resil_err err;
  assert_null(resil_dep_new(&c, &err));
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "reg-a: a dependency with this name already exists"));
  resil_dep_free(a);
  assert_null(resil_registry_find("reg-a"));
  names[0] = 0;
  assert_int_equal(resil_registry_foreach(count_visit, names), 1);
  resil_dep_free(b);
  assert_int_equal(resil_registry_foreach(count_visit, names), 0);
}

static void config_validation_reports_every_problem_by_name(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "orders db");
  c.timeout_ms = 0;
  c.limit.max_concurrent = 0;
  c.limit.max_waiters = 10;
  c.limit.max_wait_ms = 0;
  c.retry.max_attempts = 11;
  c.breaker.failure_rate_percent = 101;
  resil_err err;
  assert_int_equal(resil_dep_config_validate(&c, &err), RESIL_E_INVALID);
  const char *want[] = {"name: 'orders db' must be 1..63 characters",
                        "timeout_ms: must be > 0",
                        "limit.max_concurrent: 0 is outside 1..1000000",
                        "limit.max_wait_ms: must be > 0 when limit.max_waiters is set",
                        "retry.max_attempts: 11 is outside 1..10",
                        "breaker.failure_rate_percent: 101 is outside 0..100"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(err.msg, want[i])) fail_msg("missing '%s' in '%s'", want[i], err.msg);
  assert_null(resil_dep_new(&c, NULL));
  assert_int_equal(resil_dep_config_validate(NULL, &err), RESIL_E_INVALID);
  resil_dep_config_init(&c, NULL);
  assert_int_equal(resil_dep_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "name: is required"));
  resil_permit p;
  assert_int_equal(resil_dep_admit(NULL, RESIL_DEADLINE_UNSET, &p, &err), RESIL_E_INVALID);
  resil_dep_done(NULL, RESIL_OK); /* harmless */
}

/* ---- stress: invariants checked exactly under ThreadSanitizer ---- */

/* Calls inside (between admit and done) across all the workers. */
static _Atomic int s_inside, s_max_inside;

typedef struct stress {
  resil_dep *d;
  _Atomic uint64_t ok, rejected, outcomes[RESIL_OUTCOME_COUNT_];
  int seed;
} stress;

static void *stress_worker(void *arg) {
  stress *s = arg;
  unsigned r = (unsigned)s->seed;
  for (int i = 0; i < 3000; i++) {
    resil_permit p;
    r = r * 1103515245u + 12345u;
    resil_status st = resil_dep_admit(s->d, resil_deadline_in_ms(200), &p, NULL);
    if (st != RESIL_OK) {
      atomic_fetch_add(&s->rejected, 1);
      continue;
    }
    int now = atomic_fetch_add(&s_inside, 1) + 1;
    int m = atomic_load(&s_max_inside);
    while (now > m && !atomic_compare_exchange_weak(&s_max_inside, &m, now)) {
    }
    if ((r >> 8) % 4 == 0) sched_yield();
    atomic_fetch_sub(&s_inside, 1);
    resil_status outs[] = {RESIL_OK, RESIL_OK, RESIL_OK, RESIL_E_CALLER, RESIL_E_FAILURE};
    resil_status o = outs[(r >> 16) % 5];
    atomic_fetch_add(&s->outcomes[o == RESIL_OK ? 0 : o == RESIL_E_CALLER ? 4 : 1], 1);
    resil_dep_done(&p, o);
  }
  return NULL;
}

static void stress_limit_and_counters_hold_exactly(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "stress");
  c.limit.max_concurrent = 3;
  c.limit.max_waiters = 4;
  c.limit.max_wait_ms = 20;
  c.breaker.consecutive_failures = 0;
  c.breaker.failure_rate_percent = 90; /* 20% failures: never trips */
  resil_dep *d = resil_dep_new(&c, NULL);
  assert_non_null(d);
  enum { T = 8 };
  atomic_store(&s_inside, 0);
  atomic_store(&s_max_inside, 0);
  pthread_t th[T];
  stress per[T];
  for (int i = 0; i < T; i++) {
    per[i] = (stress){.d = d, .seed = i + 1};
    pthread_create(&th[i], NULL, stress_worker, &per[i]);
  }
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  uint64_t ok = 0, rej = 0, outs[RESIL_OUTCOME_COUNT_] = {0};
  for (int i = 0; i < T; i++) {
    rej += per[i].rejected;
    for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) outs[k] += per[i].outcomes[k];
  }
  /* Never more than max_concurrent (3) inside at once, across all threads. */
  int max_inside = atomic_load(&s_max_inside);
  print_message("# at most %d calls inside at once (limit 3)\n", max_inside);
  if (max_inside > 3) fail_msg("%d calls inside at once, max_concurrent is 3", max_inside);
  assert_true(max_inside >= 2); /* the workers did overlap */
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  ok = outs[0] + outs[1] + outs[4];
  assert_int_equal(ok + rej, (uint64_t)T * 3000);
  assert_int_equal(st.admitted, ok);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], outs[0]);
  assert_int_equal(st.calls[RESIL_OUTCOME_FAILURE], outs[1]);
  assert_int_equal(st.calls[RESIL_OUTCOME_IGNORED], outs[4]);
  uint64_t rsum = 0;
  for (int k = 0; k < RESIL_REJECT_COUNT_; k++) rsum += st.rejections[k];
  assert_int_equal(rsum, rej);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.waiters, 0);
  assert_int_equal(st.latency.count, ok);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  resil_dep_free(d);
}

/* Each thread checks the limit itself; the shared max is per-run. */
static _Atomic int g_inside, g_max;

static void *limit_worker(void *arg) {
  resil_dep *d = arg;
  for (int i = 0; i < 3000; i++) {
    resil_permit p;
    if (resil_dep_admit(d, resil_deadline_in_ms(500), &p, NULL) != RESIL_OK) continue;
    int now = atomic_fetch_add(&g_inside, 1) + 1;
    int m = atomic_load(&g_max);
    while (now > m && !atomic_compare_exchange_weak(&g_max, &m, now)) {
    }
    sched_yield();
    atomic_fetch_sub(&g_inside, 1);
    resil_dep_done(&p, RESIL_OK);
  }
  return NULL;
}

static void stress_in_flight_never_exceeds_the_limit(void **state) {
  (void)state;
  resil_dep *d = mk("limit-stress", 2, 8, 200);
  atomic_store(&g_inside, 0);
  atomic_store(&g_max, 0);
  pthread_t th[6];
  for (int i = 0; i < 6; i++) pthread_create(&th[i], NULL, limit_worker, d);
  for (int i = 0; i < 6; i++) pthread_join(th[i], NULL);
  assert_true(atomic_load(&g_max) <= 2);
  assert_int_equal(atomic_load(&g_max), 2); /* and it was actually reached */
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.waiters, 0);
  assert_int_equal(st.admitted, st.calls[RESIL_OUTCOME_SUCCESS]);
  resil_dep_free(d);
}

/* ---- parked slots (src/dep.c, top) ------------------------------------ */

static void *admit_done_once(void *arg) {
  resil_permit p;
  if (resil_dep_admit(arg, RESIL_DEADLINE_UNSET, &p, NULL) == RESIL_OK)
    resil_dep_done(&p, RESIL_OK);
  return NULL;
}

/* With a limit of 32 a finished call parks its slot in its thread's stripe.
 * Parked slots are not in flight, and they are not lost: one thread can
 * still hold all 32 (its own stripe's, the count's, then the other
 * stripes'), and the 33rd call is refused as full. */
static void parked_slots_are_free_and_the_limit_stays_exact(void **state) {
  (void)state;
  resil_dep *d = mk("park-exact", 32, 0, 0);
  for (int i = 0; i < 8; i++) { /* threads in turn: several stripes park one */
    pthread_t t;
    pthread_create(&t, NULL, admit_done_once, d);
    pthread_join(t, NULL);
  }
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.admitted, 8);
  resil_permit p[33];
  for (int i = 0; i < 32; i++)
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
  resil_err err;
  assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[32], &err),
                   RESIL_E_CONCURRENCY_FULL);
  assert_non_null(strstr(err.msg, "32 calls in flight (limit.max_concurrent 32)"));
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 32);
  for (int i = 0; i < 32; i++) resil_dep_done(&p[i], RESIL_OK);
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.admitted, 40);
  assert_int_equal(st.calls[RESIL_OUTCOME_SUCCESS], 40);
  resil_dep_free(d);
}

/* More threads than a parking limit: never more than 32 calls inside, and
 * the limit is reached. */
static void stress_in_flight_never_exceeds_a_parking_limit(void **state) {
  (void)state;
  resil_dep *d = mk("park-stress", 32, 16, 200);
  atomic_store(&g_inside, 0);
  atomic_store(&g_max, 0);
  enum { T = 40 };
  pthread_t th[T];
  for (int i = 0; i < T; i++) pthread_create(&th[i], NULL, limit_worker, d);
  for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
  assert_true(atomic_load(&g_max) <= 32);
  assert_true(atomic_load(&g_max) >= 24); /* the threads did crowd in */
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.waiters, 0);
  assert_int_equal(st.admitted, st.calls[RESIL_OUTCOME_SUCCESS]);
  resil_dep_free(d);
}

static queued park_waiter;
static pthread_t park_waiter_thread;

static void queue_a_waiter(void *arg) {
  park_waiter = (queued){.d = arg, .deadline = resil_deadline_in_ms(10000)};
  pthread_create(&park_waiter_thread, NULL, queue_one, &park_waiter);
  wait_for_waiters(arg, 1);
}

/* The race parking must not lose: a done() decides to park (nobody queued),
 * and a caller queues before the slot is parked. The done() sees the waiter
 * after parking and hands the slot over; without that check the waiter
 * would sit until limit.max_wait_ms (5 s). */
static void a_waiter_that_queues_as_a_slot_parks_gets_it(void **state) {
  (void)state;
  if (!resil__invariants_enabled()) skip(); /* the hook is in invariant builds */
  resil_dep *d = mk("park-race", 32, 4, 5000);
  resil_permit p[32];
  for (int i = 0; i < 32; i++)
    assert_int_equal(resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p[i], NULL), RESIL_OK);
  resil__dep_test_before_park(d, queue_a_waiter, d);
  resil_dep_done(&p[0], RESIL_OK); /* parks, with the waiter queued meanwhile */
  pthread_join(park_waiter_thread, NULL);
  assert_int_equal(park_waiter.st, RESIL_OK);
  assert_true(park_waiter.waited_ns < 2000 * MS);
  for (int i = 1; i < 32; i++) resil_dep_done(&p[i], RESIL_OK);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.waiters, 0);
  resil_dep_free(d);
}

/* ---- fork() ---------------------------------------------------------- */

/* In a child: report a failed check on stderr and exit 1. */
#define CHILD_CHECK(cond)                                                             \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      fprintf(stderr, "child: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      _exit(1);                                                                       \
    }                                                                                 \
  } while (0)

/* Fork, run body(arg) in the child, assert it exited 0 within 30 s. */
static void run_child(void (*body)(void *), void *arg) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    body(arg);
    _exit(0);
  }
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 3000 && (r = waitpid(pid, &status, WNOHANG)) == 0; i++) {
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("the child hung (killed after 30 s)");
  }
  assert_int_equal(r, pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("the child failed (status 0x%x): see its message above", status);
}

typedef struct fork_arg {
  resil_dep *limit, *brk;
  resil_permit mine; /* admitted by the forking thread before the fork */
} fork_arg;

/* Admit on a thread that keeps the permit and exits. */
static void *admit_main(void *v) {
  void **a = v;
  resil_status st = resil_dep_admit(a[0], RESIL_DEADLINE_UNSET, a[1], NULL);
  a[2] = (void *)(intptr_t)st;
  return NULL;
}

static resil_status admit_on_thread(resil_dep *d, resil_permit *p) {
  void *a[3] = {d, p, NULL};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, admit_main, a), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  return (resil_status)(intptr_t)a[2];
}

static void fork_child(void *v) {
  fork_arg *a = v;
  resil_dep_stats st;
  resil_dep_get_stats(a->limit, &st);
  CHILD_CHECK(st.in_flight == 0 && st.waiters == 0);
  resil_permit q[3];
  CHILD_CHECK(resil_dep_admit(a->limit, RESIL_DEADLINE_UNSET, &q[0], NULL) == RESIL_OK);
  CHILD_CHECK(resil_dep_admit(a->limit, RESIL_DEADLINE_UNSET, &q[1], NULL) == RESIL_OK);
  CHILD_CHECK(resil_dep_admit(a->limit, RESIL_DEADLINE_UNSET, &q[2], NULL) ==
              RESIL_E_CONCURRENCY_FULL); /* the limit still holds */
  /* The permit admitted before the fork ends here: no slot given back that
   * this child does not count. */
  resil_dep_done(&a->mine, RESIL_OK);
  resil_dep_get_stats(a->limit, &st);
  CHILD_CHECK(st.in_flight == 2);
  CHILD_CHECK(resil_dep_admit(a->limit, RESIL_DEADLINE_UNSET, &q[2], NULL) ==
              RESIL_E_CONCURRENCY_FULL);
  resil_dep_done(&q[0], RESIL_OK);
  resil_dep_done(&q[1], RESIL_OK);
  resil_dep_get_stats(a->limit, &st);
  CHILD_CHECK(st.in_flight == 0);
  /* The half-open probe held by a thread of the parent never comes back:
   * the child gets a probe of its own, and its success closes the breaker. */
  resil_permit probe;
  CHILD_CHECK(resil_dep_admit(a->brk, RESIL_DEADLINE_UNSET, &probe, NULL) == RESIL_OK);
  resil_dep_done(&probe, RESIL_OK);
  resil_dep_get_stats(a->brk, &st);
  CHILD_CHECK(st.breaker.state == RESIL_BREAKER_CLOSED);
  _exit(0);
}

/* A child of fork(): concurrency slots and half-open probes held by threads
 * of the parent are free in the child; a permit admitted before the fork
 * and ended in the child does not corrupt the count. The parent keeps its
 * own counts. */
static void fork_child_gets_free_slots_and_a_fresh_half_open_round(void **state) {
  (void)state;
  fork_arg a;
  a.limit = mk("forked", 2, 0, 50);
  resil_dep_config c;
  resil_dep_config_init(&c, "forked-breaker");
  c.breaker.open_jitter_percent = 0;
  c.breaker.half_open_probes = 1;
  resil_err err;
  a.brk = resil_dep_new(&c, &err);
  assert_non_null(a.brk);
  /* Trip it, wait out the break, and let another thread take the probe. */
  for (uint32_t i = 0; i < c.breaker.consecutive_failures; i++) {
    resil_permit p;
    assert_int_equal(resil_dep_admit(a.brk, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
    resil_dep_done(&p, RESIL_E_FAILURE);
  }
  fake_clock_advance_ms(c.breaker.open_ms + 1);
  resil_permit held_probe, held_slot;
  assert_int_equal(admit_on_thread(a.brk, &held_probe), RESIL_OK);
  assert_int_equal(resil_dep_admit(a.brk, RESIL_DEADLINE_UNSET, &held_slot, NULL),
                   RESIL_E_BREAKER_OPEN); /* the only probe is taken */
  /* Both slots of the limit taken: one by this thread, one by another. */
  assert_int_equal(resil_dep_admit(a.limit, RESIL_DEADLINE_UNSET, &a.mine, NULL), RESIL_OK);
  assert_int_equal(admit_on_thread(a.limit, &held_slot), RESIL_OK);

  run_child(fork_child, &a);

  resil_dep_stats st;
  resil_dep_get_stats(a.limit, &st);
  assert_int_equal(st.in_flight, 2);
  resil_dep_done(&a.mine, RESIL_OK);
  resil_dep_done(&held_slot, RESIL_OK);
  resil_dep_get_stats(a.limit, &st);
  assert_int_equal(st.in_flight, 0);
  resil_dep_get_stats(a.brk, &st);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_HALF_OPEN);
  resil_dep_done(&held_probe, RESIL_OK);
  resil_dep_get_stats(a.brk, &st);
  assert_int_equal(st.breaker.state, RESIL_BREAKER_CLOSED);
  resil_dep_free(a.limit);
  resil_dep_free(a.brk);
}

int main(void) {
#define F(f) cmocka_unit_test_setup_teardown(f, setup_fake, teardown_fake)
#define R(f) cmocka_unit_test(f)
  const struct CMUnitTest tests[] = {
      F(admit_and_done_count_each_outcome),
      F(permit_deadline_is_the_earlier_of_caller_and_timeout),
      F(spent_deadline_is_rejected_and_not_a_failure),
      F(draining_rejects_new_calls_but_lets_admitted_finish),
      F(open_breaker_rejects_with_reason_in_message),
      F(full_limit_without_queue_rejects_at_once),
      F(rejection_after_admit_is_counted_not_failed),
      R(queued_callers_are_served_in_arrival_order),
      R(waiter_leaves_at_max_wait_with_queue_timeout),
      R(waiter_leaves_at_its_deadline_with_deadline),
      R(full_queue_rejects_with_concurrency_full),
      R(idempotent_failures_are_retried_until_success),
      R(attempts_stop_at_max_attempts_with_last_error),
      R(non_idempotent_and_caller_errors_are_not_retried),
      R(backoff_never_sleeps_past_the_deadline),
      R(retry_after_is_honoured),
      R(retry_budget_caps_retries_and_counts_refusals),
      R(retry_budget_floor_allows_a_few_retries),
      R(rejection_stops_the_call_without_running_fn),
      R(registry_lists_dependencies_and_refuses_duplicates),
      R(config_validation_reports_every_problem_by_name),
      R(stress_limit_and_counters_hold_exactly),
      R(stress_in_flight_never_exceeds_the_limit),
      R(parked_slots_are_free_and_the_limit_stays_exact),
      R(stress_in_flight_never_exceeds_a_parking_limit),
      R(a_waiter_that_queues_as_a_slot_parks_gets_it),
      F(fork_child_gets_free_slots_and_a_fresh_half_open_round),
  };
  return cmocka_run_group_tests_name("dep", tests, NULL, NULL);
}
