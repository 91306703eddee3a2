/* Drain loses nothing it accepted (README "Operations"; lifecycle.h
 * resil_drain): a service configured from the environment with Redis,
 * PostgreSQL and HTTP dependencies (the real servers of scripts/test.sh and
 * a testhttpd started here), WORKERS threads per adapter calling in a loop,
 * half of the calls slow (Redis BLPOP on an empty list for 0.3 s, PostgreSQL
 * pg_sleep(0.3), HTTP /slow?ms=300), the others fast and tagged (ECHO,
 * SELECT $1, POST /echo) so that each result is checked to be the call's
 * own. While most workers are inside a slow call, resil_drain() runs. Then:
 *   - drain returns RESIL_OK well before its deadline, and at that moment
 *     no dependency has a call in flight (it waited for them);
 *   - every call a worker had accepted (not rejected with draining)
 *     completed with RESIL_OK and its real result: none lost or cut;
 *   - every worker's next call is rejected with RESIL_E_DRAINING, as is a
 *     new call of each adapter;
 *   - each dependency's counters add up: admitted = successes = the calls
 *     the workers saw accepted; draining rejections = the rejected calls.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/procs.h"
#include "resil/http.h"
#include "resil/pg.h"
#include "resil/redis.h"
#include "resil/testing.h" /* test hooks */
#include "resil/resil.h"
#include "testutil.h"

#define WORKERS 4   /* per adapter */
#define SLOW_MS 300

enum { A_REDIS, A_PG, A_HTTP, A_COUNT };
static const char *const dep_names[A_COUNT] = {"cache", "db", "api"};

typedef struct worker {
  int adapter, id;
  resil_redis *redis;
  resil_pg *pg;
  resil_http *http;
  atomic_int calls;           /* calls begun */
  atomic_int in_call;         /* 1 while inside a call */
  long accepted;              /* calls that were not rejected with draining */
  long drained;               /* calls rejected with draining (the last one) */
  char problem[512];          /* the first wrong result, "" if none */
} worker;

static worker workers[A_COUNT * WORKERS];
static atomic_int stop_all;

static void problem(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(worker *w, const char *fmt, ...) {
  if (w->problem[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->problem, sizeof w->problem, fmt, ap);
  va_end(ap);
}

/* One call of w's adapter: its status; on RESIL_OK the result is checked. */
static resil_status one_call(worker *w, long n) {
  bool slow = n % 2 == 0;
  char tag[64];
  snprintf(tag, sizeof tag, "drain-%s-%d-%ld", dep_names[w->adapter], w->id, n);
  resil_err err = {0};
  resil_deadline dl = resil_deadline_in_ms(5000);
  resil_status st;
  uint64_t t0 = test_now_ms();
  switch (w->adapter) {
  case A_REDIS: {
    redisReply *r = NULL;
    if (slow)
      st = resil_redis_command(w->redis, dl, 0, &r, &err, "BLPOP %s %s", tag, "0.3");
    else
      st = resil_redis_command(w->redis, dl, 0, &r, &err, "ECHO %s", tag);
    if (st == RESIL_OK) {
      if (slow && (!r || r->type != REDIS_REPLY_NIL))
        problem(w, "%s: BLPOP on an empty list did not answer nil", tag);
      if (!slow && (!r || r->type != REDIS_REPLY_STRING || strcmp(r->str, tag) != 0))
        problem(w, "%s: ECHO answered %s", tag, r && r->str ? r->str : "(not a string)");
    }
    if (r) freeReplyObject(r);
    break;
  }
  case A_PG: {
    PGresult *res = NULL;
    const char *params[1] = {tag};
    st = resil_pg_query(w->pg, dl, 0,
                        slow ? "SELECT $1::text FROM pg_sleep(0.3)" : "SELECT $1::text", 1,
                        params, &res, &err);
    if (st == RESIL_OK &&
        (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), tag) != 0))
      problem(w, "%s: the query answered %s", tag,
              PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "no row");
    PQclear(res);
    break;
  }
  default: {
    resil_http_response resp;
    resil_http_request req = {.method = slow ? "GET" : "POST",
                              .path = slow ? "/slow" : "/echo",
                              .query = slow ? "ms=300" : NULL,
                              .body = slow ? NULL : tag,
                              .body_len = slow ? 0 : strlen(tag)};
    st = resil_http_request_do(w->http, dl, &req, &resp, &err);
    if (st == RESIL_OK) {
      const char *want = slow ? "ok" : tag;
      if (resp.status != 200 || !resp.body || strcmp(resp.body, want) != 0)
        problem(w, "%s: HTTP %ld answered %s", tag, resp.status, resp.body ? resp.body : "");
    }
    resil_http_response_free(&resp);
    break;
  }
  }
  if (st == RESIL_OK && slow && test_now_ms() - t0 < SLOW_MS - 20)
    problem(w, "%s: a slow call answered after %llu ms", tag,
            (unsigned long long)(test_now_ms() - t0));
  if (st != RESIL_OK && st != RESIL_E_DRAINING)
    problem(w, "%s: %s: %s", tag, resil_status_name(st), err.msg);
  if (st == RESIL_E_DRAINING && !strstr(err.msg, dep_names[w->adapter]))
    problem(w, "%s: the draining rejection does not name the dependency: %s", tag, err.msg);
  return st;
}

static void *worker_run(void *arg) {
  worker *w = arg;
  for (long n = 0; !atomic_load(&stop_all); n++) {
    atomic_store(&w->in_call, 1);
    atomic_fetch_add(&w->calls, 1);
    resil_status st = one_call(w, n);
    atomic_store(&w->in_call, 0);
    if (st == RESIL_E_DRAINING) {
      w->drained++;
      break; /* the service is going away: stop calling */
    }
    w->accepted++;
    if (st != RESIL_OK) break;
  }
  return NULL;
}

static uint32_t in_flight(resil_service *svc, int a) {
  resil_dep_stats st;
  resil_dep_get_stats(resil_service_dep(svc, dep_names[a]), &st);
  return st.in_flight;
}

static void drain_loses_nothing_across_all_adapters(void **state) {
  (void)state;
  uint16_t redis_port = need_port("RESIL_TEST_REDIS_PORT");
  const char *conninfo = need_env("RESIL_TEST_PG_CONNINFO");
  const char *httpd_path = need_env("RESIL_TESTHTTPD");
  resil_redis_register_kind(NULL); /* explicit: --as-needed may drop constructors */
  resil_pg_register_kind(NULL);
  resil_http_register_kind(NULL);
  child httpd;
  uint16_t http_port = testhttpd_start(&httpd, httpd_path);
  if (!http_port) fail_msg("could not start %s", httpd_path);

  char e_rport[64], e_pg[512], e_url[96];
  snprintf(e_rport, sizeof e_rport, "RESIL_DEP_CACHE_PORT=%u", (unsigned)redis_port);
  snprintf(e_pg, sizeof e_pg, "RESIL_DEP_DB_CONNINFO=%s", conninfo);
  snprintf(e_url, sizeof e_url, "RESIL_DEP_API_BASE_URL=http://127.0.0.1:%u", (unsigned)http_port);
  char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg,api:http",
                 (char *)"RESIL_SERVICE=drain-test",
                 (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0",
                 (char *)"RESIL_DRAIN_TIMEOUT_MS=15000",
                 (char *)"RESIL_DEP_CACHE_HOST=127.0.0.1",
                 e_rport, e_pg, e_url,
                 (char *)"RESIL_DEP_CACHE_TIMEOUT_MS=5000",
                 (char *)"RESIL_DEP_DB_TIMEOUT_MS=5000",
                 (char *)"RESIL_DEP_API_TIMEOUT_MS=5000",
                 (char *)"RESIL_DEP_API_REQUEST_TIMEOUT_MS=5000",
                 NULL};
  resil_service *svc;
  char *report = NULL;
  resil_err err;
  if (resil_service_start(env, &svc, &report, &err) != RESIL_OK)
    fail_msg("start: %s", report ? report : err.msg);

  pthread_t th[A_COUNT * WORKERS];
  atomic_store(&stop_all, 0);
  for (int a = 0; a < A_COUNT; a++)
    for (int i = 0; i < WORKERS; i++) {
      worker *w = &workers[a * WORKERS + i];
      memset(w, 0, sizeof *w);
      w->adapter = a;
      w->id = i;
      w->redis = resil_service_get(svc, "cache", "redis");
      w->pg = resil_service_get(svc, "db", "pg");
      w->http = resil_service_get(svc, "api", "http");
      assert_non_null(w->redis);
      assert_non_null(w->pg);
      assert_non_null(w->http);
      assert_int_equal(pthread_create(&th[a * WORKERS + i], NULL, worker_run, w), 0);
    }

  /* Let every worker complete a few calls, then wait for a moment when
   * each adapter has calls in flight. */
  uint64_t until = test_now_ms() + 20000;
  bool busy = false;
  while (test_now_ms() < until) {
    int min_calls = 1 << 30;
    for (int k = 0; k < A_COUNT * WORKERS; k++)
      if (atomic_load(&workers[k].calls) < min_calls) min_calls = atomic_load(&workers[k].calls);
    if (min_calls >= 4 && in_flight(svc, A_REDIS) >= 2 && in_flight(svc, A_PG) >= 2 &&
        in_flight(svc, A_HTTP) >= 2) {
      busy = true;
      break;
    }
    test_sleep_ms(2);
  }
  if (!busy) {
    atomic_store(&stop_all, 1);
    for (int k = 0; k < A_COUNT * WORKERS; k++) pthread_join(th[k], NULL);
    fail_msg("the workers never had calls in flight on every adapter at once");
  }
  uint32_t before[A_COUNT];
  for (int a = 0; a < A_COUNT; a++) before[a] = in_flight(svc, a);

  uint64_t t0 = test_now_ms();
  resil_status ds = resil_drain(0, resil_deadline_in_ms(15000), &err);
  uint64_t took = test_now_ms() - t0;
  uint32_t after[A_COUNT];
  for (int a = 0; a < A_COUNT; a++) after[a] = in_flight(svc, a);
  if (ds != RESIL_OK) fail_msg("drain: %s: %s", resil_status_name(ds), err.msg);
  for (int a = 0; a < A_COUNT; a++)
    if (after[a] != 0)
      fail_msg("drain returned with %u calls of %s still in flight (%u when it began)", after[a],
               dep_names[a], before[a]);
  if (took > 10000) fail_msg("drain took %llu ms", (unsigned long long)took);

  /* Every worker stops at its first draining rejection. */
  for (int k = 0; k < A_COUNT * WORKERS; k++) pthread_join(th[k], NULL);

  /* A new call of each adapter is rejected too. */
  worker probe = {.adapter = A_REDIS, .id = 99};
  probe.redis = resil_service_get(svc, "cache", "redis");
  probe.pg = resil_service_get(svc, "db", "pg");
  probe.http = resil_service_get(svc, "api", "http");
  for (int a = 0; a < A_COUNT; a++) {
    probe.adapter = a;
    resil_status st = one_call(&probe, 1);
    if (st != RESIL_E_DRAINING)
      fail_msg("a new %s call after the drain: %s (%s)", dep_names[a], resil_status_name(st),
               probe.problem);
  }

  long accepted[A_COUNT] = {0}, drained[A_COUNT] = {0};
  for (int k = 0; k < A_COUNT * WORKERS; k++) {
    worker *w = &workers[k];
    if (w->problem[0]) fail_msg("worker %s %d: %s", dep_names[w->adapter], w->id, w->problem);
    if (w->drained != 1)
      fail_msg("worker %s %d ended without a draining rejection", dep_names[w->adapter], w->id);
    accepted[w->adapter] += w->accepted;
    drained[w->adapter] += w->drained;
  }
  for (int a = 0; a < A_COUNT; a++) {
    resil_dep_stats st;
    resil_dep_get_stats(resil_service_dep(svc, dep_names[a]), &st);
    if (st.admitted != (uint64_t)accepted[a] || st.calls[RESIL_OUTCOME_SUCCESS] != st.admitted ||
        st.rejections[RESIL_REJECT_DRAINING] != (uint64_t)drained[a] + 1 || st.in_flight != 0 ||
        st.rejected_after_admit != 0)
      fail_msg("%s: admitted %llu, successes %llu, draining rejections %llu, in flight %u, "
               "rejected after admission %llu; the workers saw %ld accepted and %ld + 1 "
               "rejected",
               dep_names[a], (unsigned long long)st.admitted,
               (unsigned long long)st.calls[RESIL_OUTCOME_SUCCESS],
               (unsigned long long)st.rejections[RESIL_REJECT_DRAINING], st.in_flight,
               (unsigned long long)st.rejected_after_admit, accepted[a], drained[a]);
    if (accepted[a] < 4 * WORKERS) fail_msg("%s: only %ld calls were made", dep_names[a], accepted[a]);
  }
  print_message("drain: %llu ms with %u/%u/%u calls in flight; accepted %ld/%ld/%ld\n",
                (unsigned long long)took, before[0], before[1], before[2], accepted[0],
                accepted[1], accepted[2]);
  resil_service_stop(svc, &err);
  resil_drain_reset();
  child_stop(&httpd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(drain_loses_nothing_across_all_adapters),
  };
  return cmocka_run_group_tests_name("drain", tests, NULL, NULL);
}
