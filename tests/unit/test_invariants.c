/* The invariant checks (RESIL_INVARIANT, src/internal.h; issue #15) catch a
 * broken hand-off where it happens. Each case runs in a forked child whose
 * stderr goes to a pipe: a test hook (internal.h) corrupts a count or loses
 * a hand-off, the next locked change of the pool (or slot change of the
 * bulkhead) must abort, and the message must name the invariant, the
 * object and the values. A control child runs the same steps without the
 * corruption and must exit cleanly. The checks exist only in builds
 * configured with -Dinvariants=true (every build scripts/test.sh makes);
 * elsewhere these cases are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "resil/resil.h"

/* ---- A child with its stderr captured ------------------------------------- */

typedef struct child_result {
  int status;      /* waitpid's */
  char err[4096];  /* what it wrote to stderr */
} child_result;

/* Run body(arg) in a child; it exits 0 if body returns. */
static void run_child(void (*body)(int), int arg, child_result *r) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    close(fds[1]);
    body(arg);
    _exit(0);
  }
  close(fds[1]);
  size_t len = 0;
  ssize_t n;
  while ((n = read(fds[0], r->err + len, sizeof r->err - 1 - len)) > 0) len += (size_t)n;
  r->err[len] = '\0';
  close(fds[0]);
  assert_int_equal(waitpid(pid, &r->status, 0), pid);
}

static void expect_abort(const child_result *r, const char *const *needles) {
  if (!WIFSIGNALED(r->status) || WTERMSIG(r->status) != SIGABRT)
    fail_msg("the child was not aborted (status 0x%x); its stderr: %s", r->status, r->err);
  for (const char *const *s = needles; *s; s++)
    if (!strstr(r->err, *s)) fail_msg("'%s' is not in the message: %s", *s, r->err);
  print_message("caught: %s", r->err);
}

static void expect_clean(const child_result *r) {
  if (!WIFEXITED(r->status) || WEXITSTATUS(r->status) != 0)
    fail_msg("the control child failed (status 0x%x); its stderr: %s", r->status, r->err);
  assert_null(strstr(r->err, "invariant broken"));
}

/* Skip the case in a build without the checks. */
#define NEED_CHECKS()                                                        \
  do {                                                                       \
    if (!resil__invariants_enabled()) {                                      \
      print_message("built without -Dinvariants=true: no checks to test\n"); \
      skip();                                                                \
    }                                                                        \
  } while (0)

/* ---- The pool -------------------------------------------------------------- */

static _Atomic int next_conn;
static resil_status fake_connect(void *ctx, resil_deadline dl, void **conn, resil_err *err) {
  (void)ctx, (void)dl, (void)err;
  *conn = (void *)(intptr_t)(atomic_fetch_add(&next_conn, 1) + 1);
  return RESIL_OK;
}
static void fake_close(void *ctx, void *conn) { (void)ctx, (void)conn; }

static resil_pool *new_pool(const char *name, uint32_t max_size, uint32_t min_idle) {
  resil_pool_config c;
  resil_pool_config_init(&c);
  c.name = name;
  c.max_size = max_size;
  c.min_idle = min_idle;
  c.housekeeping_ms = 0;
  c.acquire_timeout_ms = 30000; /* the queued acquire below must not end by itself */
  resil_pool_connector cn = {.connect = fake_connect, .close = fake_close};
  resil_err err;
  resil_pool *p = resil_pool_new(&c, &cn, &err);
  if (!p) {
    fprintf(stderr, "test: %s\n", err.msg);
    _exit(3);
  }
  if (min_idle && resil_pool_prewarm(p, resil_deadline_in_ms(5000), &err) != RESIL_OK) {
    fprintf(stderr, "test: prewarm: %s\n", err.msg);
    _exit(3);
  }
  return p;
}

/* Two idle connections of two; corrupt: `open` one too high. */
static void pool_open_body(int corrupt) {
  resil_pool *p = new_pool("inv-open", 2, 2);
  if (corrupt) resil__pool_test_open_add(p, 1);
  resil_pool_conn *c;
  if (resil_pool_acquire(p, resil_deadline_in_ms(5000), &c, NULL) != RESIL_OK) _exit(4);
  resil_pool_release(p, c, RESIL_POOL_OK);
  if (!corrupt) resil_pool_free(p);
}

static void pool_open_count_above_max_aborts(void **state) {
  (void)state;
  NEED_CHECKS();
  child_result r;
  run_child(pool_open_body, 0, &r);
  expect_clean(&r);
  run_child(pool_open_body, 1, &r);
  /* the acquire right after the corruption is where it shows */
  const char *needles[] = {"resil: invariant broken at ", "pool.c:", "(acquire_quick)",
                           "pool 'inv-open': open + connecting <= max_size",
                           "(open 3, connecting 0, max_size 2)", NULL};
  expect_abort(&r, needles);
}

typedef struct queued {
  resil_pool *p;
  resil_status st;
} queued;

static void *queued_acquire(void *arg) {
  queued *q = arg;
  resil_pool_conn *c = NULL;
  q->st = resil_pool_acquire(q->p, resil_deadline_in_ms(20000), &c, NULL);
  if (c) resil_pool_release(q->p, c, RESIL_POOL_OK);
  return NULL;
}

static uint32_t waiters_of(resil_pool *p) {
  resil_pool_stats s;
  resil_pool_get_stats(p, &s);
  return s.waiters;
}

/* One connection, held; a second thread queues for it; the return of the
 * connection (with the hand-off lost when `lose`) must serve it. */
static void pool_handoff_body(int lose) {
  resil_pool *p = new_pool("inv-handoff", 1, 1);
  resil_pool_conn *c;
  if (resil_pool_acquire(p, resil_deadline_in_ms(5000), &c, NULL) != RESIL_OK) _exit(4);
  queued q = {.p = p};
  pthread_t t;
  if (pthread_create(&t, NULL, queued_acquire, &q) != 0) _exit(5);
  if (!TEST_WAIT_UNTIL(waiters_of(p) == 1, 5000)) _exit(6);
  if (lose) resil__pool_test_skip_dispatch(p);
  resil_pool_release(p, c, RESIL_POOL_OK);
  pthread_join(t, NULL);
  if (q.st != RESIL_OK) _exit(7);
  resil_pool_free(p);
}

static void pool_lost_handoff_aborts(void **state) {
  (void)state;
  NEED_CHECKS();
  child_result r;
  run_child(pool_handoff_body, 0, &r);
  expect_clean(&r);
  run_child(pool_handoff_body, 1, &r);
  /* caught in the release that lost it, not 30 s later as a pool timeout */
  const char *needles[] = {"resil: invariant broken at ", "(resil_pool_release)",
                           "pool 'inv-handoff': waiters queued => no idle connection",
                           "(1 waiting, 1 idle)", NULL};
  expect_abort(&r, needles);
}

/* ---- The bulkhead ---------------------------------------------------------- */

static resil_dep *new_dep(const char *name) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.limit.max_concurrent = 4;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) {
    fprintf(stderr, "test: %s\n", err.msg);
    _exit(3);
  }
  return d;
}

/* One call in flight; its count lost (delta -1: the slot was given back
 * already) or four too many (+4: five in flight under a ceiling of 4). */
static void bulkhead_body(int delta) {
  resil_dep *d = new_dep("inv-bulkhead");
  resil_permit pm;
  if (resil_dep_admit(d, RESIL_DEADLINE_UNSET, &pm, NULL) != RESIL_OK) _exit(4);
  if (delta) resil__dep_test_inflight_add(d, delta);
  resil_dep_done(&pm, RESIL_OK);
  if (!delta) resil_dep_free(d);
}

static void bulkhead_double_release_aborts(void **state) {
  (void)state;
  NEED_CHECKS();
  child_result r;
  run_child(bulkhead_body, 0, &r);
  expect_clean(&r);
  run_child(bulkhead_body, -1, &r);
  const char *needles[] = {"resil: invariant broken at ", "dep.c:", "(give_back)",
                           "bulkhead 'inv-bulkhead': a slot given back: 1 <= taken",
                           "(taken 0, limit 4, max_concurrent 4)", NULL};
  expect_abort(&r, needles);
}

static void bulkhead_in_flight_above_ceiling_aborts(void **state) {
  (void)state;
  NEED_CHECKS();
  child_result r;
  run_child(bulkhead_body, 4, &r);
  const char *needles[] = {"bulkhead 'inv-bulkhead': a slot given back: 1 <= taken",
                           "(taken 5, limit 4, max_concurrent 4)", NULL};
  expect_abort(&r, needles);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(pool_open_count_above_max_aborts),
      cmocka_unit_test(pool_lost_handoff_aborts),
      cmocka_unit_test(bulkhead_double_release_aborts),
      cmocka_unit_test(bulkhead_in_flight_above_ceiling_aborts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
