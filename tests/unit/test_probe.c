/* Recovery probes and events, on the fake clock: the breaker's early end of
 * a break, the probe schedule (first probe one interval after the trip, no
 * growth of the break on a failed probe, one probe in flight, never on a
 * caller's thread, late success is a timeout, counters apart from calls),
 * the event hook (reasons, the tripping call's message, the rate limit) and
 * the line formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "minijson.h"
#include "testutil.h"
#include "resil/adapter.h"
#include "resil/resil.h"

#define MS 1000000ull

/* The fork test's child starts threads (TSan's default is to die there). */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) { return "die_after_fork=0"; }

static int setup_fake(void **state) {
  (void)state;
  fake_clock_install();
  return 0;
}
static int teardown_fake(void **state) {
  (void)state;
  resil_set_event_hook(NULL, NULL);
  fake_clock_uninstall();
  return 0;
}

/* ---- the breaker --------------------------------------------------------- */

typedef struct hook_log {
  int n;
  resil_breaker_state to[16];
  resil_trip_reason why[16];
} hook_log;

static void on_transition(void *ctx, const char *name, resil_breaker_state from,
                          resil_breaker_state to, resil_trip_reason why) {
  (void)name;
  (void)from;
  hook_log *l = ctx;
  if (l->n < 16) {
    l->to[l->n] = to;
    l->why[l->n] = why;
  }
  l->n++;
}

static resil_breaker *mk_breaker(hook_log *log) {
  resil_breaker_config c;
  resil_breaker_config_init(&c);
  c.name = "b";
  c.consecutive_failures = 1;
  c.open_ms = 10000;
  c.open_multiplier = 2.0;
  c.open_jitter_percent = 0;
  c.half_open_probes = 1;
  c.on_transition = on_transition;
  c.hook_ctx = log;
  resil_err err;
  resil_breaker *b = resil_breaker_new(&c, &err);
  if (!b) fail_msg("%s", err.msg);
  return b;
}

static void trip(resil_breaker *b) {
  resil_breaker_ticket t;
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_OK);
  resil_breaker_record(b, t, RESIL_E_FAILURE, 1000);
}

static void probe_success_ends_the_break_only_when_open(void **state) {
  (void)state;
  hook_log log = {0};
  resil_breaker *b = mk_breaker(&log);
  /* CLOSED: nothing to end. */
  assert_false(resil_breaker_probe_succeeded(b, 0));
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  trip(b);
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.state, RESIL_BREAKER_OPEN);
  uint32_t gen = st.generation;
  /* A probe of an older generation is stale. */
  assert_false(resil_breaker_probe_succeeded(b, gen - 1));
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_OPEN);
  /* The current one ends the break at once, long before the timer. */
  assert_true(resil_breaker_probe_succeeded(b, gen));
  resil_breaker_get_stats(b, &st);
  assert_int_equal(st.state, RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(st.trip_streak, 1);
  assert_int_equal(log.to[log.n - 1], RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(log.why[log.n - 1], RESIL_TRIP_RECOVERY_PROBE);
  /* HALF_OPEN: a no-op. */
  assert_false(resil_breaker_probe_succeeded(b, 0));
  /* Real traffic closes it. */
  resil_breaker_ticket t;
  assert_int_equal(resil_breaker_acquire(b, &t), RESIL_OK);
  resil_breaker_record(b, t, RESIL_OK, 1000);
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_CLOSED);
  /* Operator overrides are never moved. */
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_false(resil_breaker_probe_succeeded(b, 0));
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_FORCED_OPEN);
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_DISABLE);
  assert_false(resil_breaker_probe_succeeded(b, 0));
  assert_int_equal(resil_breaker_get_state(b), RESIL_BREAKER_DISABLED);
  assert_string_equal(resil_trip_reason_name(RESIL_TRIP_RECOVERY_PROBE), "recovery_probe");
  resil_breaker_free(b);
}

/* ---- the probe schedule -------------------------------------------------- */

typedef struct probe_ctx {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  int running, max_running;
  resil_status answer;
  bool has_next;            /* after the next call, answer becomes next_answer */
  resil_status next_answer;
  bool block;               /* hold the probe until released */
  uint64_t advance_ms;      /* move the fake clock by this much inside the probe */
  pthread_t caller;         /* the test's thread */
  bool on_caller;           /* a probe ran on it */
  uint64_t deadline_ns, started_ns;
} probe_ctx;

static resil_status probe_fn(void *vctx, resil_deadline deadline, resil_err *err) {
  probe_ctx *c = vctx;
  pthread_mutex_lock(&c->mu);
  c->calls++;
  c->running++;
  if (c->running > c->max_running) c->max_running = c->running;
  if (pthread_equal(pthread_self(), c->caller)) c->on_caller = true;
  c->deadline_ns = deadline.at_ns;
  c->started_ns = resil_now_ns();
  pthread_cond_broadcast(&c->cv);
  while (c->block) pthread_cond_wait(&c->cv, &c->mu);
  if (c->advance_ms) fake_clock_advance_ms(c->advance_ms);
  resil_status st = c->answer;
  if (c->has_next) {
    c->answer = c->next_answer;
    c->has_next = false;
  }
  c->running--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  if (st != RESIL_OK) resil_err_set(err, st, "probe said no");
  return st;
}

static void ctx_init(probe_ctx *c, resil_status answer) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->answer = answer;
  c->caller = pthread_self();
}

static int calls_of(probe_ctx *c) {
  pthread_mutex_lock(&c->mu);
  int n = c->calls;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* Wait (real time, at most 3 s) until the probe has been called n times
 * and is not running. */
static bool wait_calls(probe_ctx *c, int n) {
  uint64_t until = test_now_ms() + 3000;
  while (test_now_ms() < until) {
    pthread_mutex_lock(&c->mu);
    bool ok = c->calls >= n && c->running == 0;
    pthread_mutex_unlock(&c->mu);
    if (ok) return true;
    test_sleep_ms(2);
  }
  return false;
}

/* Wait until the probe counters of d add up to n (the probe thread counts
 * right after the function returns). */
static bool wait_counted(resil_dep *d, uint64_t n) {
  uint64_t until = test_now_ms() + 3000;
  while (test_now_ms() < until) {
    resil_dep_stats s;
    resil_dep_get_stats(d, &s);
    if (s.probes[0] + s.probes[1] + s.probes[2] >= n) return true;
    test_sleep_ms(2);
  }
  return false;
}

static resil_dep *mk_dep(const char *name, uint32_t interval_ms) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.breaker.consecutive_failures = 1;
  c.breaker.open_ms = 60000;
  c.breaker.open_max_ms = 600000;
  c.breaker.open_jitter_percent = 0;
  c.breaker.half_open_probes = 2;
  c.probe_interval_ms = interval_ms;
  c.timeout_ms = 300;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("resil_dep_new: %s", err.msg);
  return d;
}

static void call(resil_dep *d, resil_status outcome, resil_status expect_admit) {
  resil_permit p;
  resil_status st = resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL);
  assert_int_equal(st, expect_admit);
  if (st == RESIL_OK) resil_dep_done(&p, outcome);
}

static void failed_probes_never_grow_the_break_and_a_success_ends_it(void **state) {
  (void)state;
  probe_ctx pc;
  ctx_init(&pc, RESIL_E_FAILURE);
  resil_dep *d = mk_dep("probe-a", 100);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);

  /* CLOSED: never probed, however long. */
  fake_clock_advance_ms(1000);
  test_sleep_ms(60);
  assert_int_equal(calls_of(&pc), 0);

  call(d, RESIL_E_FAILURE, RESIL_OK);
  resil_dep_stats s0;
  resil_dep_get_stats(d, &s0);
  assert_int_equal(s0.breaker.state, RESIL_BREAKER_OPEN);
  uint64_t until0 = s0.breaker.open_until_ns;
  assert_true(until0 - s0.breaker.opened_at_ns >= 59000 * MS);

  /* Not before one interval (-20%) has passed since the trip. */
  fake_clock_advance_ms(70);
  test_sleep_ms(60);
  assert_int_equal(calls_of(&pc), 0);
  /* Past interval + 20%: probed. */
  fake_clock_advance_ms(60);
  assert_true(wait_calls(&pc, 1));
  assert_true(wait_counted(d, 1));
  assert_false(pc.on_caller);
  /* Its deadline is min(timeout_ms 300, 1 s) after its start. */
  assert_int_equal(pc.deadline_ns - pc.started_ns, 300 * MS);

  /* Failures, several: the breaker stays open and the break keeps its end. */
  for (int i = 2; i <= 4; i++) {
    fake_clock_advance_ms(130);
    assert_true(wait_calls(&pc, i));
  }
  assert_true(wait_counted(d, 4));
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  assert_int_equal(s.breaker.open_until_ns, until0);
  assert_int_equal(s.breaker.trip_streak, 1);
  assert_int_equal(s.breaker.generation, s0.breaker.generation);
  assert_int_equal(s.probes[RESIL_PROBE_FAILURE], 4);
  assert_int_equal(s.probes[RESIL_PROBE_SUCCESS], 0);
  /* Probes are not calls. */
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) assert_int_equal(s.calls[k], s0.calls[k]);
  assert_int_equal(s.admitted, s0.admitted);
  call(d, RESIL_OK, RESIL_E_BREAKER_OPEN);

  /* The dependency heals: the next probe ends the break. */
  pthread_mutex_lock(&pc.mu);
  pc.answer = RESIL_OK;
  pthread_mutex_unlock(&pc.mu);
  fake_clock_advance_ms(130);
  assert_true(wait_calls(&pc, 5));
  assert_true(wait_counted(d, 5));
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_HALF_OPEN);
  assert_int_equal(s.probes[RESIL_PROBE_SUCCESS], 1);
  assert_true(resil_now_ns() < until0 - 50000 * MS); /* long before the timer */
  /* Half-open: no more probes; real calls close it. */
  fake_clock_advance_ms(500);
  test_sleep_ms(60);
  assert_int_equal(calls_of(&pc), 5);
  call(d, RESIL_OK, RESIL_OK);
  call(d, RESIL_OK, RESIL_OK);
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], s0.calls[RESIL_OUTCOME_SUCCESS] + 2);
  resil_dep_free(d);
  assert_false(pc.on_caller);
}

/* Other probed dependencies (breakers closed), so that every probe thread
 * runs: a promise about one dependency must hold with several threads. */
static void add_bystanders(resil_dep **by, probe_ctx *pc) {
  for (int i = 0; i < RESIL_PROBE_THREADS - 1; i++) {
    char name[32];
    snprintf(name, sizeof name, "bystander-%d", i);
    by[i] = mk_dep(name, 50);
    assert_int_equal(resil_dep_set_probe(by[i], probe_fn, pc), RESIL_OK);
  }
}

static void free_bystanders(resil_dep **by) {
  for (int i = 0; i < RESIL_PROBE_THREADS - 1; i++) resil_dep_free(by[i]);
}

static void one_probe_in_flight_and_a_late_success_is_a_timeout(void **state) {
  (void)state;
  probe_ctx pc, idle;
  ctx_init(&pc, RESIL_OK);
  ctx_init(&idle, RESIL_OK);
  resil_dep *by[RESIL_PROBE_THREADS];
  add_bystanders(by, &idle);
  pc.block = true;
  resil_dep *d = mk_dep("probe-b", 50);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);
  call(d, RESIL_E_FAILURE, RESIL_OK);
  fake_clock_advance_ms(70);
  /* The probe is stuck; many intervals pass: still one call, one running. */
  uint64_t until = test_now_ms() + 3000;
  while (calls_of(&pc) < 1 && test_now_ms() < until) test_sleep_ms(2);
  for (int i = 0; i < 10; i++) {
    fake_clock_advance_ms(50);
    test_sleep_ms(15);
  }
  pthread_mutex_lock(&pc.mu);
  assert_int_equal(pc.calls, 1);
  assert_int_equal(pc.max_running, 1);
  /* It answers "healthy", but after its deadline (300 ms; the clock moved
   * 500 ms): a timeout, and the breaker stays open. */
  pc.block = false;
  pc.answer = RESIL_OK;
  pc.has_next = true; /* and the next probe says RESIL_E_TIMEOUT */
  pc.next_answer = RESIL_E_TIMEOUT;
  pthread_cond_broadcast(&pc.cv);
  pthread_mutex_unlock(&pc.mu);
  /* ...and the next one, due at once (the stuck one took longer than the
   * interval), says RESIL_E_TIMEOUT: a timeout too. */
  assert_true(wait_counted(d, 2));
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.probes[RESIL_PROBE_TIMEOUT], 2);
  assert_int_equal(s.probes[RESIL_PROBE_SUCCESS], 0);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  assert_int_equal(pc.max_running, 1);
  assert_false(pc.on_caller);
  resil_dep_free(d);
  free_bystanders(by);
  assert_int_equal(idle.calls, 0);
}

static void forced_open_is_never_probed_and_interval_zero_turns_probing_off(void **state) {
  (void)state;
  probe_ctx pc;
  ctx_init(&pc, RESIL_OK);
  resil_dep *d = mk_dep("probe-c", 50);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);
  resil_breaker_set_mode(resil_dep_breaker(d), RESIL_BREAKER_MODE_FORCE_OPEN);
  for (int i = 0; i < 5; i++) {
    fake_clock_advance_ms(100);
    test_sleep_ms(15);
  }
  assert_int_equal(calls_of(&pc), 0);
  resil_dep_free(d);

  resil_dep *off = mk_dep("probe-off", 0);
  assert_int_equal(resil_dep_set_probe(off, probe_fn, &pc), RESIL_OK);
  call(off, RESIL_E_FAILURE, RESIL_OK);
  for (int i = 0; i < 5; i++) {
    fake_clock_advance_ms(600);
    test_sleep_ms(15);
  }
  assert_int_equal(calls_of(&pc), 0);
  assert_int_equal(resil_breaker_get_state(resil_dep_breaker(off)), RESIL_BREAKER_OPEN);
  resil_dep_free(off);
  assert_int_equal(resil_dep_set_probe(NULL, probe_fn, &pc), RESIL_E_INVALID);
}

typedef struct remover {
  resil_dep *d;
  probe_ctx *pc;
  bool returned;
  int running_at_return; /* the probe's state when set_probe returned */
} remover;

static void *remove_probe(void *arg) {
  remover *r = arg;
  resil_dep_set_probe(r->d, NULL, NULL);
  pthread_mutex_lock(&r->pc->mu);
  r->returned = true;
  r->running_at_return = r->pc->running;
  pthread_mutex_unlock(&r->pc->mu);
  return NULL;
}

static void removing_a_probe_waits_for_the_running_one(void **state) {
  (void)state;
  probe_ctx pc, idle;
  ctx_init(&pc, RESIL_E_FAILURE);
  ctx_init(&idle, RESIL_OK);
  resil_dep *by[RESIL_PROBE_THREADS];
  add_bystanders(by, &idle); /* the threads go on: removal alone must wait */
  pc.block = true;
  resil_dep *d = mk_dep("probe-d", 50);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);
  call(d, RESIL_E_FAILURE, RESIL_OK);
  fake_clock_advance_ms(70);
  uint64_t until = test_now_ms() + 3000;
  while (calls_of(&pc) < 1 && test_now_ms() < until) test_sleep_ms(2);
  assert_int_equal(calls_of(&pc), 1);
  remover r = {.d = d, .pc = &pc};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, remove_probe, &r), 0);
  test_sleep_ms(100);
  pthread_mutex_lock(&pc.mu);
  assert_false(r.returned); /* still waiting for the probe */
  pc.block = false;
  pthread_cond_broadcast(&pc.cv);
  pthread_mutex_unlock(&pc.mu);
  pthread_join(th, NULL);
  assert_true(r.returned);
  assert_int_equal(r.running_at_return, 0); /* never while the probe still runs */
  fake_clock_advance_ms(500);
  test_sleep_ms(30);
  assert_int_equal(calls_of(&pc), 1); /* removed: never called again */
  resil_dep_free(d);
  free_bystanders(by);
}

/* fork() while a probe runs on the parent's probe thread: the child (whose
 * probe threads do not exist) can remove and replace the probe without
 * waiting for the vanished one, and its own open breaker is probed again by
 * threads started in the child: a success there moves it to HALF_OPEN. The
 * child reports by exit code; alarm() turns a hang into a failure. */
static void fork_child_probes_again_and_never_waits_for_the_parents_probe(void **state) {
  (void)state;
  probe_ctx pc;
  ctx_init(&pc, RESIL_E_FAILURE);
  pc.block = true;
  resil_dep *d = mk_dep("probe-fork", 50);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);
  call(d, RESIL_E_FAILURE, RESIL_OK);
  fake_clock_advance_ms(70);
  uint64_t until = test_now_ms() + 3000;
  while (calls_of(&pc) < 1 && test_now_ms() < until) test_sleep_ms(2);
  assert_int_equal(calls_of(&pc), 1); /* running, blocked, on the parent's probe thread */
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(10);
    resil_dep_set_probe(d, NULL, NULL); /* must not wait for the parent's probe */
    probe_ctx child;
    ctx_init(&child, RESIL_OK);
    /* Held until the state is checked: the new probe is due at once (one
     * interval after the break began has passed), and a probe thread that
     * ran first would have moved the breaker on before the check. */
    child.block = true;
    if (resil_dep_set_probe(d, probe_fn, &child) != RESIL_OK) _exit(2);
    if (resil_breaker_get_state(resil_dep_breaker(d)) != RESIL_BREAKER_OPEN) _exit(3);
    pthread_mutex_lock(&child.mu);
    child.block = false;
    pthread_cond_broadcast(&child.cv);
    pthread_mutex_unlock(&child.mu);
    fake_clock_advance_ms(70);
    if (!wait_calls(&child, 1)) _exit(4); /* a probe thread runs in the child */
    if (!wait_counted(d, 1)) _exit(5); /* the child's (the parent's never ended here) */
    if (resil_breaker_get_state(resil_dep_breaker(d)) != RESIL_BREAKER_HALF_OPEN) _exit(6);
    resil_dep_set_probe(d, NULL, NULL);
    _exit(0);
  }
  int status = 0;
  pid_t w = 0;
  until = test_now_ms() + 15000;
  while ((w = waitpid(pid, &status, WNOHANG)) == 0 && test_now_ms() < until) test_sleep_ms(5);
  if (w == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  pthread_mutex_lock(&pc.mu);
  pc.block = false;
  pthread_cond_broadcast(&pc.cv);
  pthread_mutex_unlock(&pc.mu);
  assert_true(wait_calls(&pc, 1));
  resil_dep_set_probe(d, NULL, NULL);
  resil_dep_free(d);
  if (WIFSIGNALED(status))
    fail_msg("the child was killed by signal %d (hung: SIGALRM is %d)", WTERMSIG(status), SIGALRM);
  assert_true(WIFEXITED(status));
  if (WEXITSTATUS(status) != 0) fail_msg("the child failed at step %d", WEXITSTATUS(status));
}

/* ---- events ---------------------------------------------------------------- */

typedef struct ev_rec {
  pthread_mutex_t mu;
  int n;
  char reason[64][48];
  char message[64][RESIL_ERR_MSG_MAX + 64];
  int from[64], to[64];
  uint32_t suppressed[64];
  uint64_t open_ms[64];
  char line[1024];
} ev_rec;

static void record_event(void *ctx, const resil_event *ev) {
  ev_rec *r = ctx;
  pthread_mutex_lock(&r->mu);
  if (r->n < 64) {
    snprintf(r->reason[r->n], sizeof r->reason[0], "%s", ev->reason);
    snprintf(r->message[r->n], sizeof r->message[0], "%s", ev->message);
    r->from[r->n] = ev->from;
    r->to[r->n] = ev->to;
    r->suppressed[r->n] = ev->suppressed;
    r->open_ms[r->n] = ev->open_ms;
    resil_event_format(ev, true, r->line, sizeof r->line);
  }
  r->n++;
  pthread_mutex_unlock(&r->mu);
}

static resil_status failing_call(void *ctx, resil_attempt *a) {
  (void)ctx;
  return resil_err_set(a->err, RESIL_E_FAILURE, "db: connect to 10.0.0.1:5432: Connection refused");
}

static void events_name_the_reason_and_the_tripping_calls_error(void **state) {
  (void)state;
  static ev_rec rec;
  memset(&rec, 0, sizeof rec);
  pthread_mutex_init(&rec.mu, NULL);
  resil_set_event_hook(record_event, &rec);
  probe_ctx pc;
  ctx_init(&pc, RESIL_OK);
  resil_dep *d = mk_dep("ev-a", 100);
  assert_int_equal(resil_dep_set_probe(d, probe_fn, &pc), RESIL_OK);
  resil_err err;
  assert_int_equal(resil_dep_call(d, RESIL_DEADLINE_UNSET, 0, failing_call, NULL, &err),
                   RESIL_E_FAILURE);
  assert_int_equal(rec.n, 1);
  assert_string_equal(rec.reason[0], "consecutive_failures");
  assert_string_equal(rec.message[0], "db: connect to 10.0.0.1:5432: Connection refused");
  assert_int_equal(rec.from[0], RESIL_BREAKER_CLOSED);
  assert_int_equal(rec.to[0], RESIL_BREAKER_OPEN);
  assert_int_equal(rec.open_ms[0], 60000);
  /* The line is one JSON object with every field. */
  mj *j = mj_parse(rec.line, strlen(rec.line) - 1);
  assert_non_null(j);
  assert_string_equal(mj_get(j, "dep")->str, "ev-a");
  assert_string_equal(mj_get(j, "type")->str, "breaker");
  assert_string_equal(mj_get(j, "from")->str, "closed");
  assert_string_equal(mj_get(j, "to")->str, "open");
  assert_string_equal(mj_get(j, "reason")->str, "consecutive_failures");
  assert_non_null(strstr(mj_get(j, "message")->str, "Connection refused"));
  assert_int_equal((int)mj_get(j, "open_ms")->num, 60000);
  assert_non_null(mj_get(j, "ts"));
  mj_free(j);

  /* The probe ends the break: an event with reason recovery_probe. */
  fake_clock_advance_ms(130);
  uint64_t until = test_now_ms() + 3000;
  while (test_now_ms() < until) {
    pthread_mutex_lock(&rec.mu);
    int n = rec.n;
    pthread_mutex_unlock(&rec.mu);
    if (n >= 2) break;
    test_sleep_ms(2);
  }
  pthread_mutex_lock(&rec.mu);
  assert_int_equal(rec.n, 2);
  assert_string_equal(rec.reason[1], "recovery_probe");
  assert_int_equal(rec.to[1], RESIL_BREAKER_HALF_OPEN);
  assert_non_null(strstr(rec.message[1], "recovery probe succeeded"));
  pthread_mutex_unlock(&rec.mu);
  call(d, RESIL_OK, RESIL_OK);
  call(d, RESIL_OK, RESIL_OK);
  assert_int_equal(rec.n, 3);
  assert_string_equal(rec.reason[2], "half_open_succeeded");
  assert_int_equal(rec.to[2], RESIL_BREAKER_CLOSED);

  /* Open again, and the break's timer ends it. */
  call(d, RESIL_E_FAILURE, RESIL_OK);
  resil_dep_set_probe(d, NULL, NULL);
  fake_clock_advance_ms(600001);
  call(d, RESIL_OK, RESIL_OK);
  assert_string_equal(rec.reason[4], "break_elapsed");
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.events, (uint64_t)rec.n);
  assert_int_equal(s.events_dropped, 0);
  resil_set_event_hook(NULL, NULL);
  resil_dep_free(d);
}

static void a_flapping_breaker_is_rate_limited_and_drops_are_counted(void **state) {
  (void)state;
  static ev_rec rec;
  memset(&rec, 0, sizeof rec);
  pthread_mutex_init(&rec.mu, NULL);
  resil_set_event_hook(record_event, &rec);
  resil_dep *d = mk_dep("ev-flap", 0);
  resil_breaker *b = resil_dep_breaker(d);
  /* 30 flaps, 60 changes, no time passing: the burst goes through. */
  for (int i = 0; i < 30; i++) {
    resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN);
    resil_breaker_set_mode(b, RESIL_BREAKER_MODE_AUTO);
  }
  assert_int_equal(rec.n, RESIL_EVENT_BURST);
  resil_dep_stats s;
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.events, RESIL_EVENT_BURST);
  assert_int_equal(s.events_dropped, 60 - RESIL_EVENT_BURST);
  assert_string_equal(rec.reason[0], "forced");
  assert_string_equal(rec.reason[1], "operator");
  /* A second later, RESIL_EVENT_RATE_PER_S more; the first says how many
   * were suppressed before it. */
  fake_clock_advance_ms(1000);
  for (int i = 0; i < 5; i++) {
    resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN);
    resil_breaker_set_mode(b, RESIL_BREAKER_MODE_AUTO);
  }
  assert_int_equal(rec.n, RESIL_EVENT_BURST + RESIL_EVENT_RATE_PER_S);
  assert_int_equal(rec.suppressed[RESIL_EVENT_BURST], 60 - RESIL_EVENT_BURST);
  assert_int_equal(rec.suppressed[RESIL_EVENT_BURST + 1], 0);
  resil_dep_get_stats(d, &s);
  assert_int_equal(s.events_dropped, 70 - RESIL_EVENT_BURST - RESIL_EVENT_RATE_PER_S);
  /* Another dependency has its own bucket. */
  resil_dep *d2 = mk_dep("ev-other", 0);
  resil_breaker_set_mode(resil_dep_breaker(d2), RESIL_BREAKER_MODE_FORCE_OPEN);
  assert_int_equal(rec.n, RESIL_EVENT_BURST + RESIL_EVENT_RATE_PER_S + 1);
  /* The metrics carry the counters. */
  char *text = NULL;
  assert_int_equal(resil_export_prometheus(&text, NULL, NULL), RESIL_OK);
  char want[128];
  snprintf(want, sizeof want, "resil_events_dropped_total{dependency=\"ev-flap\"} %d\n",
           70 - RESIL_EVENT_BURST - RESIL_EVENT_RATE_PER_S);
  assert_non_null(strstr(text, want));
  assert_non_null(strstr(text, "resil_probes_total{dependency=\"ev-flap\",result=\"timeout\"} 0\n"));
  free(text);
  resil_set_event_hook(NULL, NULL);
  resil_dep_free(d2);
  resil_dep_free(d);
}

static void lines_are_valid_json_whatever_the_message(void **state) {
  (void)state;
  char msg[3000];
  memset(msg, 'x', sizeof msg - 1);
  msg[sizeof msg - 1] = 0;
  static const char head[] = "quote \" backslash \\ newline \n tab \t bytes \xc3\xa9 ";
  memcpy(msg, head, sizeof head - 1);
  resil_event ev = {.type = RESIL_EVENT_BREAKER,
                    .dep = "orders-db",
                    .wall_ns = 1700000000123000000ull,
                    .from = RESIL_BREAKER_CLOSED,
                    .to = RESIL_BREAKER_OPEN,
                    .reason = "failure_rate",
                    .message = msg,
                    .detail = "open for 0.0s (5.0s more) after \"x\"",
                    .open_ms = 5000,
                    .trip_streak = 1};
  char line[1024];
  size_t n = resil_event_format(&ev, true, line, sizeof line);
  assert_true(n > 0 && n < sizeof line);
  assert_int_equal(line[n - 1], '\n');
  assert_null(memchr(line, '\n', n - 1)); /* one line */
  mj *j = mj_parse(line, n - 1);
  assert_non_null(j);
  assert_string_equal(mj_get(j, "ts")->str, "2023-11-14T22:13:20.123Z");
  assert_string_equal(mj_get(j, "dep")->str, "orders-db");
  assert_string_equal(mj_get(j, "reason")->str, "failure_rate");
  assert_int_equal(strncmp(mj_get(j, "message")->str, "quote \\\" backslash", 18) == 0 ||
                       strncmp(mj_get(j, "message")->str, "quote \" backslash", 17) == 0,
                   1);
  assert_int_equal((int)mj_get(j, "open_ms")->num, 5000);
  assert_int_equal((int)mj_get(j, "suppressed")->num, 0);
  mj_free(j);
  /* Text: one line too. */
  n = resil_event_format(&ev, false, line, sizeof line);
  assert_true(n > 0);
  assert_null(memchr(line, '\n', n - 1));
  assert_non_null(strstr(line, "dep=orders-db closed -> open reason=failure_rate"));
  /* Too small a buffer: nothing. */
  assert_int_equal(resil_event_format(&ev, true, line, 100), 0);
}

int main(void) {
#define F(f) cmocka_unit_test_setup_teardown(f, setup_fake, teardown_fake)
  const struct CMUnitTest tests[] = {
      F(probe_success_ends_the_break_only_when_open),
      F(failed_probes_never_grow_the_break_and_a_success_ends_it),
      F(one_probe_in_flight_and_a_late_success_is_a_timeout),
      F(forced_open_is_never_probed_and_interval_zero_turns_probing_off),
      F(removing_a_probe_waits_for_the_running_one),
      F(fork_child_probes_again_and_never_waits_for_the_parents_probe),
      F(events_name_the_reason_and_the_tripping_calls_error),
      F(a_flapping_breaker_is_rate_limited_and_drops_are_counted),
      F(lines_are_valid_json_whatever_the_message),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
