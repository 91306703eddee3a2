/* The Redis adapter against a real redis-server on 127.0.0.1, with real
 * faults: a slow command, a stopped (SIGSTOP) server, a killed and restarted
 * server, a full pool, a blackholing proxy, a port with nothing listening.
 *
 * Needs the RESIL_TEST_REDIS_* variables that scripts/test.sh exports. Without
 * them each test fails under CI (the harness is broken) and skips elsewhere.
 * Every test that stops the server resumes it in its teardown, whatever
 * happened. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "resil/redis.h"
#include "testutil.h"
#include "probe_heal.h"
#ifdef HAVE_FAULTPROXY
#include "faultproxy.h"
#endif

/* deadline asserts: deadline + this (100 ms, 300 ms under the sanitizers) */
#define SLACK_MS test_slack_ms(0)

/* ---- Environment ------------------------------------------------------- */

/* The current pid of a test server: the restart scripts rewrite the pid
 * files in $RESIL_TEST_TMPDIR; the variable holds the first pid. */
static pid_t server_pid(const char *file, const char *var) {
  const char *tmp = test_env("RESIL_TEST_TMPDIR");
  if (tmp) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", tmp, file);
    FILE *f = fopen(path, "r");
    if (f) {
      long pid = 0;
      int ok = fscanf(f, "%ld", &pid);
      fclose(f);
      if (ok == 1 && pid > 1) return (pid_t)pid;
    }
  }
  const char *v = need_env(var);
  long pid = strtol(v, NULL, 10);
  if (pid <= 1) fail_msg("%s=%s is not a pid", var, v);
  return (pid_t)pid;
}

static pid_t redis_pid(void) { return server_pid("redis.pid", "RESIL_TEST_REDIS_PID"); }

/* ---- Fixtures ---------------------------------------------------------- */

/* A stopped server is always resumed: by the test's teardown, and at exit. */
static volatile pid_t stopped_pid = 0;

static void resume_server(void) {
  if (stopped_pid > 0) kill(stopped_pid, SIGCONT);
  stopped_pid = 0;
}

static int teardown_resume(void **state) {
  (void)state;
  resume_server();
  return 0;
}

typedef void (*tweak_fn)(resil_redis_config *cfg);

/* Defaults for tests: fast breaker, small pool. */
static resil_redis *make_redis_at(const char *name, uint32_t port, tweak_fn tweak) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  cfg.host = "127.0.0.1";
  cfg.port = port;
  cfg.dep.breaker.open_ms = 300;
  cfg.dep.breaker.open_jitter_percent = 0;
  cfg.dep.breaker.half_open_probes = 2;
  cfg.pool.max_size = 2;
  cfg.pool.housekeeping_ms = 0;
  if (tweak) tweak(&cfg);
  resil_err err;
  memset(&err, 0, sizeof err);
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new(%s): %s", name, err.msg);
  return r;
}

static resil_redis *make_redis(const char *name, tweak_fn tweak) {
  return make_redis_at(name, need_port("RESIL_TEST_REDIS_PORT"), tweak);
}

static resil_pool_stats pool_stats(resil_redis *r) {
  resil_pool_stats s;
  resil_pool_get_stats(resil_redis_pool(r), &s);
  return s;
}

static uint64_t connects(resil_redis *r) {
  resil_pool_stats s = pool_stats(r);
  return s.connects_ok + s.connects_failed + s.connects_timed_out;
}

static resil_dep_stats dep_stats(resil_redis *r) {
  resil_dep_stats s;
  resil_dep_get_stats(resil_redis_dep(r), &s);
  return s;
}

/* Run a command that must succeed; return its reply (caller frees). No
 * printf format attribute: hiredis formats also take %b (pointer, length). */
static redisReply *must_cmd(resil_redis *r, const char *fmt, ...) {
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  va_list ap;
  va_start(ap, fmt);
  resil_status st = resil_redis_vcommand(r, resil_deadline_in_ms(2000), 0, &rep, &e, fmt, ap);
  va_end(ap);
  if (st != RESIL_OK) fail_msg("%s: %s (%s)", fmt, e.msg, resil_status_name(st));
  return rep;
}
#define MUST(r, ...) must_cmd((r), __VA_ARGS__)
#define must_ok(r, ...) freeReplyObject(must_cmd((r), __VA_ARGS__))

/* A TCP port on 127.0.0.1 with nothing listening (bound, then closed). */
static uint32_t dead_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  socklen_t len = sizeof sa;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

static int fds_at_start = -1;

/* ---- Configuration ----------------------------------------------------- */

static void config_reports_every_problem(void **state) {
  (void)state;
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "bad-cache");
  cfg.port = 0;
  cfg.database = 1000001;
  cfg.connect_timeout_ms = 0;
  cfg.username = "app";
  cfg.pool.max_size = 0;
  cfg.max_reply_bytes = 512;
  resil_err err;
  memset(&err, 0, sizeof err);
  assert_null(resil_redis_new(&cfg, &err));
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "bad-cache: port"));
  assert_non_null(strstr(err.msg, "database"));
  assert_non_null(strstr(err.msg, "connect_timeout_ms"));
  assert_non_null(strstr(err.msg, "username"));
  assert_non_null(strstr(err.msg, "bad-cache: pool.max_size: 0"));
  assert_non_null(strstr(err.msg, "bad-cache: max_reply_bytes: 512"));

  resil_redis_config_init(&cfg, "good-cache");
  assert_int_equal(resil_redis_config_validate(&cfg, &err), RESIL_OK);
  assert_int_equal(cfg.connect_timeout_ms, 500);
  assert_int_equal(cfg.command_timeout_ms, 0);
  assert_int_equal(cfg.max_reply_bytes, 64u << 20);
  cfg.max_reply_bytes = ((size_t)4 << 30) + 1;
  assert_int_equal(resil_redis_config_validate(&cfg, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "max_reply_bytes"));
}

static void bad_arguments_are_invalid_and_touch_nothing(void **state) {
  (void)state;
  /* No server needed: nothing is sent. */
  resil_redis *r = make_redis_at("args-cache", dead_port(), NULL);
  redisReply *rep = (redisReply *)&rep; /* must be reset to NULL */
  resil_err e;
  assert_int_equal(resil_redis_command(NULL, RESIL_DEADLINE_UNSET, 0, &rep, &e, "PING"),
                   RESIL_E_INVALID);
  assert_null(rep);
  assert_int_equal(resil_redis_command(r, RESIL_DEADLINE_UNSET, 0, NULL, &e, "PING"),
                   RESIL_E_INVALID);
  const char *argv[1] = {"PING"};
  assert_int_equal(resil_redis_command_argv(r, RESIL_DEADLINE_UNSET, 0, 0, argv, NULL, &rep, &e),
                   RESIL_E_INVALID);
  assert_non_null(strstr(e.msg, "argc"));
  redisReply *replies[1];
  resil_redis_cmd empty = {.argc = 0, .argv = argv};
  assert_int_equal(resil_redis_pipeline(r, RESIL_DEADLINE_UNSET, 0, 0, &empty, replies, &e),
                   RESIL_E_INVALID);
  assert_int_equal(resil_redis_pipeline(r, RESIL_DEADLINE_UNSET, 0, 1, &empty, replies, &e),
                   RESIL_E_INVALID);
  assert_null(replies[0]);
  assert_int_equal(connects(r), 0);
  assert_int_equal(dep_stats(r).admitted, 0);
  /* an expired deadline is a local rejection, not a failure */
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(0), 0, &rep, &e, "PING"),
                   RESIL_E_DEADLINE);
  assert_int_equal(connects(r), 0);
  assert_null(resil_redis_dep(NULL));
  assert_null(resil_redis_pool(NULL));
  assert_string_equal(resil_dep_name(resil_redis_dep(r)), "args-cache");
  assert_string_equal(resil_pool_name(resil_redis_pool(r)), "args-cache");
  resil_redis_free(r);
  resil_redis_free(NULL);
}

/* ---- Commands ---------------------------------------------------------- */

static void set_get_round_trip(void **state) {
  (void)state;
  resil_redis *r = make_redis("rt-cache", NULL);
  must_ok(r, "SET %s %s", "resil:rt", "hello world");
  redisReply *rep = MUST(r, "GET %s", "resil:rt");
  assert_int_equal(rep->type, REDIS_REPLY_STRING);
  assert_string_equal(rep->str, "hello world");
  freeReplyObject(rep);
  rep = MUST(r, "GET %s", "resil:rt:missing");
  assert_int_equal(rep->type, REDIS_REPLY_NIL);
  freeReplyObject(rep);

  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 3);
  assert_true(s.has_pool);
  assert_int_equal(s.pool.connects_ok, 1); /* one connection, reused */
  assert_int_equal(s.pool.idle, 1);
  resil_redis_free(r);
}

static void by_name(resil_redis_config *cfg) { cfg->host = "localhost"; }

static void host_name_is_resolved_and_connected_by_address(void **state) {
  (void)state;
  /* "localhost" goes through resil_resolve() (a resolver thread, under the
   * connect deadline) and is connected by its numeric address; on a host
   * where it also maps to ::1, which the server does not listen on, the
   * next address is tried. Loopback only. */
  resil_redis *r = make_redis("name-cache", by_name);
  redisReply *rep = MUST(r, "PING");
  assert_string_equal(rep->str, "PONG");
  freeReplyObject(rep);
  resil_redis_free(r);
}

static void binary_safe_values(void **state) {
  (void)state;
  resil_redis *r = make_redis("bin-cache", NULL);
  static const char small[] = "a\0b\r\n\0c";
  size_t big_len = 1024 * 1024;
  char *big = malloc(big_len);
  assert_non_null(big);
  for (size_t i = 0; i < big_len; i++) big[i] = (char)(i * 131u + 7u);
  big[0] = '\0';
  big[big_len / 2] = '\0';

  const char *vals[2] = {small, big};
  size_t lens[2] = {sizeof small - 1, big_len};
  for (int k = 0; k < 2; k++) {
    const char *set[3] = {"SET", "resil:bin\0key", vals[k]};
    size_t setl[3] = {3, 13, lens[k]};
    redisReply *rep = NULL;
    resil_err e;
    assert_int_equal(resil_redis_command_argv(r, resil_deadline_in_ms(3000), 0, 3, set, setl,
                                              &rep, &e),
                     RESIL_OK);
    freeReplyObject(rep);
    const char *get[2] = {"GET", "resil:bin\0key"};
    size_t getl[2] = {3, 13};
    assert_int_equal(resil_redis_command_argv(r, resil_deadline_in_ms(3000),
                                              RESIL_CALL_IDEMPOTENT, 2, get, getl, &rep, &e),
                     RESIL_OK);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, lens[k]);
    assert_memory_equal(rep->str, vals[k], lens[k]);
    freeReplyObject(rep);
  }
  /* printf-style %b is binary-safe too */
  redisReply *rep = MUST(r, "SET %s %b", "resil:bin2", small, sizeof small - 1);
  freeReplyObject(rep);
  rep = MUST(r, "STRLEN %s", "resil:bin2");
  assert_int_equal(rep->integer, (long long)(sizeof small - 1));
  freeReplyObject(rep);
  free(big);
  resil_redis_free(r);
}

static void pipeline_of_n_commands(void **state) {
  (void)state;
  resil_redis *r = make_redis("pipe-cache", NULL);
  must_ok(r, "DEL %s %s", "resil:pipe", "resil:pipe:x");
  enum { N = 500 };
  resil_redis_cmd cmds[N];
  redisReply *replies[N];
  static const char *incr[2] = {"INCR", "resil:pipe"};
  for (int i = 0; i < N; i++) cmds[i] = (resil_redis_cmd){.argc = 2, .argv = incr};
  resil_err e;
  memset(&e, 0, sizeof e);
  assert_int_equal(resil_redis_pipeline(r, resil_deadline_in_ms(3000), 0, N, cmds, replies, &e),
                   RESIL_OK);
  for (int i = 0; i < N; i++) {
    assert_non_null(replies[i]);
    assert_int_equal(replies[i]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(replies[i]->integer, i + 1);
    freeReplyObject(replies[i]);
  }
  /* One caller error inside a pipeline: every reply handed back, status
   * RESIL_E_CALLER, the breaker unaffected, the connection reused. */
  static const char *set[3] = {"SET", "resil:pipe:x", "str"};
  static const char *lpush[3] = {"LPUSH", "resil:pipe:x", "v"};
  static const char *get[2] = {"GET", "resil:pipe:x"};
  resil_redis_cmd mixed[3] = {{3, set, NULL}, {3, lpush, NULL}, {2, get, NULL}};
  assert_int_equal(resil_redis_pipeline(r, resil_deadline_in_ms(3000), 0, 3, mixed, replies, &e),
                   RESIL_E_CALLER);
  assert_non_null(strstr(e.msg, "WRONGTYPE"));
  assert_int_equal(replies[0]->type, REDIS_REPLY_STATUS);
  assert_int_equal(replies[1]->type, REDIS_REPLY_ERROR);
  assert_string_equal(replies[2]->str, "str");
  for (int i = 0; i < 3; i++) freeReplyObject(replies[i]);
  assert_int_equal(pool_stats(r).connects_ok, 1);
  assert_int_equal(dep_stats(r).breaker.window_failures, 0);
  resil_redis_free(r);
}

static void wrongtype_is_a_caller_error(void **state) {
  (void)state;
  resil_redis *r = make_redis("wt-cache", NULL);
  must_ok(r, "SET %s %s", "resil:wt", "string");
  for (int i = 0; i < 10; i++) { /* more than consecutive_failures (5) */
    redisReply *rep = NULL;
    resil_err e;
    memset(&e, 0, sizeof e);
    assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(1000), RESIL_CALL_IDEMPOTENT,
                                         &rep, &e, "LPUSH %s %s", "resil:wt", "x"),
                     RESIL_E_CALLER);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(e.msg, "wt-cache"));
    assert_non_null(strstr(e.msg, "WRONGTYPE"));
    freeReplyObject(rep);
  }
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(s.breaker.consecutive_failures, 0);
  assert_int_equal(s.breaker.window_failures, 0);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 10);
  assert_int_equal(s.retries, 0);
  assert_int_equal(s.pool.connects_ok, 1); /* reused, never destroyed */
  assert_int_equal(s.pool.closed[RESIL_POOL_CLOSE_BROKEN], 0);
  resil_redis_free(r);
}

static void small_reply_bound(resil_redis_config *cfg) {
  cfg->max_reply_bytes = 1 << 20;
  cfg->pool.max_size = 1;
}

/* A GET of a value larger than max_reply_bytes, from the real server: a
 * caller error naming the bound (never a breaker failure, never retried),
 * the connection closed mid-reply, and the next call served on a fresh one. */
static void value_larger_than_max_reply_bytes_is_a_caller_error(void **state) {
  (void)state;
  resil_redis *r = make_redis("big-cache", small_reply_bound);
  size_t n = 3u << 20;
  char *big = malloc(n);
  assert_non_null(big);
  memset(big, 'v', n);
  must_ok(r, "SET %s %b", "resil:big", big, n);
  free(big);
  for (int i = 0; i < 6; i++) { /* more than consecutive_failures (5) */
    redisReply *rep = NULL;
    resil_err e;
    memset(&e, 0, sizeof e);
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(2000), RESIL_CALL_IDEMPOTENT,
                                          &rep, &e, "GET %s", "resil:big");
    if (st != RESIL_E_CALLER || !strstr(e.msg, "big-cache: receive: reply larger than "
                                                "max_reply_bytes 1048576"))
      fail_msg("%s: %s", resil_status_name(st), e.msg);
    assert_null(rep);
  }
  redisReply *ok = MUST(r, "STRLEN %s", "resil:big");
  assert_int_equal(ok->integer, (long long)n);
  freeReplyObject(ok);
  must_ok(r, "DEL %s", "resil:big");
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_CLOSED);
  assert_int_equal(s.breaker.window_failures, 0);
  assert_int_equal(s.calls[RESIL_OUTCOME_IGNORED], 6);
  assert_int_equal(s.retries, 0);
  assert_int_equal(s.pool.closed[RESIL_POOL_CLOSE_BROKEN], 6); /* each one mid-reply */
  resil_redis_free(r);
}

static void error_replies_are_classified_by_their_first_word(void **state) {
  (void)state;
  static const struct {
    const char *text;
    resil_status want;
  } cases[] = {
      {"LOADING Redis is loading the dataset in memory", RESIL_E_OVERLOAD},
      {"BUSY Redis is busy running a script.", RESIL_E_OVERLOAD},
      {"TRYAGAIN Multiple keys request during rehashing of slot", RESIL_E_OVERLOAD},
      {"MASTERDOWN Link with MASTER is down", RESIL_E_FAILURE},
      {"OOM command not allowed when used memory > 'maxmemory'.", RESIL_E_FAILURE},
      {"READONLY You can't write against a read only replica.", RESIL_E_FAILURE},
      {"CLUSTERDOWN The cluster is down", RESIL_E_FAILURE},
      {"ERR unknown command 'FOO'", RESIL_E_CALLER},
      {"WRONGTYPE Operation against a key holding the wrong kind of value", RESIL_E_CALLER},
      {"NOSCRIPT No matching script.", RESIL_E_CALLER},
      {"BUSYKEY Target key name already exists.", RESIL_E_CALLER}, /* not BUSY */
      {"LOADINGX", RESIL_E_CALLER},
      {"OOM", RESIL_E_FAILURE},
      {"", RESIL_E_CALLER},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    redisReply rep;
    memset(&rep, 0, sizeof rep);
    rep.type = REDIS_REPLY_ERROR;
    rep.str = (char *)(uintptr_t)cases[i].text;
    rep.len = strlen(cases[i].text);
    if (resil_redis_classify_reply(&rep) != cases[i].want)
      fail_msg("'%s': got %s, want %s", cases[i].text,
               resil_status_name(resil_redis_classify_reply(&rep)),
               resil_status_name(cases[i].want));
  }
  redisReply ok;
  memset(&ok, 0, sizeof ok);
  ok.type = REDIS_REPLY_NIL;
  assert_int_equal(resil_redis_classify_reply(&ok), RESIL_OK);
  assert_int_equal(resil_redis_classify_reply(NULL), RESIL_E_INVALID);
}

/* A busy Lua script makes the server answer BUSY: overload, reply handed
 * back. The teardown kills the script and restores the threshold whatever
 * happened. */
static void kill_script_and_restore(void) {
  const char *v = test_env("RESIL_TEST_REDIS_PORT");
  if (!v) return;
  struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", atoi(v), tv);
  if (!c) return;
  if (!c->err) {
    redisSetTimeout(c, tv);
    for (int i = 0; i < 50; i++) {
      redisReply *rep = redisCommand(c, "SCRIPT KILL");
      /* OK means "being killed": repeat until NOTBUSY says it is gone. */
      bool done = !rep || (rep->type == REDIS_REPLY_ERROR && strstr(rep->str, "NOTBUSY"));
      if (rep) freeReplyObject(rep);
      if (done) break;
      test_sleep_ms(20);
    }
    redisReply *rep = redisCommand(c, "CONFIG SET busy-reply-threshold 5000");
    if (rep) freeReplyObject(rep);
  }
  redisFree(c);
}

static int teardown_script(void **state) {
  (void)state;
  kill_script_and_restore();
  return 0;
}

static void *run_busy_script(void *arg) {
  resil_redis *r = arg;
  redisReply *rep = NULL;
  resil_err e;
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1500), 0, &rep, &e, "EVAL %s 0",
                                        "while true do end");
  if (rep) freeReplyObject(rep);
  return (void *)(uintptr_t)st;
}

static void busy_server_is_overload_and_the_reply_is_handed_back(void **state) {
  (void)state;
  resil_redis *r = make_redis("busy-cache", NULL);
  redisReply *rep = MUST(r, "CONFIG SET %s %s", "busy-reply-threshold", "50");
  freeReplyObject(rep);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, run_busy_script, r), 0);
  /* Once the script has run past the 50 ms threshold, commands get BUSY. */
  resil_err e;
  memset(&e, 0, sizeof e);
  resil_status st = RESIL_OK;
  int ok_before = 0;
  for (uint64_t t0 = test_now_ms(); test_now_ms() - t0 < 1200;) {
    st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "GET %s", "resil:busy");
    if (st != RESIL_OK) break;
    freeReplyObject(rep);
    ok_before++;
    test_sleep_ms(20);
  }
  void *script_st = NULL;
  pthread_join(th, &script_st);
  assert_int_equal((resil_status)(uintptr_t)script_st, RESIL_E_TIMEOUT);
  print_message("# %s\n", e.msg);
  assert_int_equal(st, RESIL_E_OVERLOAD);
  assert_non_null(rep);
  assert_int_equal(rep->type, REDIS_REPLY_ERROR);
  assert_memory_equal(rep->str, "BUSY", 4);
  freeReplyObject(rep);
  assert_non_null(strstr(e.msg, "busy-cache: reply: BUSY"));
  kill_script_and_restore();
  rep = MUST(r, "PING");
  freeReplyObject(rep);
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.calls[RESIL_OUTCOME_OVERLOAD], 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_TIMEOUT], 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], 2 + ok_before); /* CONFIG SET, PING */
  resil_redis_free(r);
}

/* ---- AUTH and SELECT --------------------------------------------------- */

static const char *auth_password;

static void use_password(resil_redis_config *cfg) {
  cfg->password = auth_password;
  cfg->database = 3;
}

static void auth_and_select_succeed(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  auth_password = need_env("RESIL_TEST_REDIS_PASSWORD");
  resil_redis *r = make_redis_at("auth-cache", port, use_password);
  redisReply *rep = MUST(r, "CLIENT INFO");
  assert_int_equal(rep->type, REDIS_REPLY_STRING);
  assert_non_null(strstr(rep->str, " db=3 "));
  freeReplyObject(rep);
  resil_redis_free(r);
}

static void wrong_pw(resil_redis_config *cfg) {
  cfg->password = "definitely-not-the-password";
  cfg->dep.retry.max_attempts = 5;
  cfg->dep.retry.base_backoff_ms = 1;
  cfg->dep.breaker.consecutive_failures = 100;
}

static void wrong_password_is_a_clear_failure_without_retries(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  resil_redis *r = make_redis_at("badauth-cache", port, wrong_pw);
  for (int i = 0; i < 3; i++) {
    redisReply *rep = NULL;
    resil_err e;
    memset(&e, 0, sizeof e);
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), RESIL_CALL_IDEMPOTENT,
                                          &rep, &e, "PING");
    assert_int_equal(st, RESIL_E_FAILURE);
    assert_null(rep);
    if (i == 0) print_message("# %s\n", e.msg);
    assert_non_null(strstr(e.msg, "badauth-cache: auth: "));
    assert_true(strstr(e.msg, "WRONGPASS") || strstr(e.msg, "invalid password"));
    assert_null(strstr(e.msg, "definitely-not")); /* never print the secret */
  }
  /* one connect per call: a refused AUTH is not retried */
  assert_int_equal(connects(r), 3);
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.retries, 0);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 3);
  assert_int_equal(s.pool.open, 0);
  resil_redis_free(r);
}

static void auth_slow(resil_redis_config *cfg) {
  cfg->password = auth_password;
  cfg->connect_timeout_ms = 150;
}

static void stopped_server_during_auth_times_out_at_connect_timeout(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  auth_password = need_env("RESIL_TEST_REDIS_PASSWORD");
  pid_t pid = server_pid("redis-auth.pid", "RESIL_TEST_REDIS_AUTH_PID");
  resil_redis *r = make_redis_at("authstop-cache", port, auth_slow);
  stopped_pid = pid;
  assert_int_equal(kill(pid, SIGSTOP), 0);
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "PING");
  uint64_t took = test_now_ms() - t0;
  resume_server();
  print_message("# %s\n", e.msg);
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_null(rep);
  assert_true(took <= 150 + SLACK_MS);
  assert_non_null(strstr(e.msg, "authstop-cache: auth: timed out after"));
  assert_non_null(strstr(e.msg, "(connect_timeout_ms)"));
  resil_pool_stats ps = pool_stats(r);
  assert_int_equal(ps.connects_timed_out, 1);
  assert_int_equal(ps.open, 0);
  /* resumed: the next call connects and authenticates */
  rep = MUST(r, "PING");
  freeReplyObject(rep);
  resil_redis_free(r);
}

/* ---- Deadlines --------------------------------------------------------- */

static void one_conn(resil_redis_config *cfg) { cfg->pool.max_size = 1; }

static void slow_command_times_out_and_next_call_gets_a_fresh_connection(void **state) {
  (void)state;
  resil_redis *r = make_redis("slow-cache", one_conn);
  must_ok(r, "SET %s %s", "resil:slow", "v1");
  assert_int_equal(connects(r), 1);

  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  resil_status st =
      resil_redis_command(r, resil_deadline_in_ms(200), 0, &rep, &e, "DEBUG SLEEP %s", "1");
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_null(rep);
  assert_true(took >= 190);
  assert_true(took <= 200 + SLACK_MS);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "slow-cache: receive: timed out after"));
  assert_non_null(strstr(e.msg, "(deadline)"));
  assert_int_equal(pool_stats(r).closed[RESIL_POOL_CLOSE_BROKEN], 1);
  assert_int_equal(pool_stats(r).open, 0);

  /* The late "+OK" of DEBUG SLEEP must never answer this GET. */
  rep = MUST(r, "GET %s", "resil:slow");
  assert_int_equal(rep->type, REDIS_REPLY_STRING);
  assert_string_equal(rep->str, "v1");
  freeReplyObject(rep);
  rep = MUST(r, "SET %s %s", "resil:slow", "v2");
  freeReplyObject(rep);
  rep = MUST(r, "GET %s", "resil:slow");
  assert_string_equal(rep->str, "v2");
  freeReplyObject(rep);
  assert_int_equal(connects(r), 2); /* exactly one fresh connection */
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.calls[RESIL_OUTCOME_TIMEOUT], 1);
  resil_redis_free(r);
}

/* Wait (up to 5 s) until the test server answers a PING again, e.g. after
 * a DEBUG SLEEP whose caller timed out: a blocking hiredis connection of
 * its own, so the wait ends as soon as the server is back. */
static void wait_server_awake(void) {
  struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", need_port("RESIL_TEST_REDIS_PORT"), tv);
  if (!c || c->err) fail_msg("connect to the test Redis: %s", c ? c->errstr : "no memory");
  redisSetTimeout(c, tv);
  redisReply *rep = redisCommand(c, "PING");
  if (!rep) fail_msg("the test Redis did not answer a PING within 5 s: %s", c->errstr);
  freeReplyObject(rep);
  redisFree(c);
}

static void cmd_timeout(resil_redis_config *cfg) {
  cfg->command_timeout_ms = 150;
  cfg->pool.max_size = 1;
}

static void command_timeout_caps_a_longer_deadline(void **state) {
  (void)state;
  resil_redis *r = make_redis("cmdto-cache", cmd_timeout);
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  resil_status st =
      resil_redis_command(r, resil_deadline_in_ms(900), 0, &rep, &e, "DEBUG SLEEP %s", "0.5");
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_TIMEOUT);
  assert_true(took <= 150 + SLACK_MS);
  assert_non_null(strstr(e.msg, "(command_timeout_ms)"));
  wait_server_awake(); /* before the next test */
  resil_redis_free(r);
}

static void nothing_listening_fails_fast(void **state) {
  (void)state;
  uint32_t port = dead_port();
  resil_redis *r = make_redis_at("dead-cache", port, NULL);
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "PING");
  uint64_t took = test_now_ms() - t0;
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_true(took < 100);
  char want[80];
  snprintf(want, sizeof want, "dead-cache: connect to 127.0.0.1:%u: ", (unsigned)port);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, want));
  assert_non_null(strstr(e.msg, "refused"));
  assert_int_equal(pool_stats(r).connects_failed, 1);
  resil_redis_free(r);
}

static void write_to_a_connection_the_server_closed_is_a_failure_not_sigpipe(void **state) {
  (void)state;
  assert_true(signal(SIGPIPE, SIG_DFL) != SIG_ERR); /* a SIGPIPE would kill us */
  resil_redis *r = make_redis("pipe-cache2", one_conn);
  resil_redis *admin = make_redis("admin-cache", NULL);
  redisReply *rep = MUST(r, "CLIENT ID");
  long long id = rep->integer;
  freeReplyObject(rep);
  rep = MUST(admin, "CLIENT KILL ID %lld", id);
  assert_int_equal(rep->integer, 1);
  freeReplyObject(rep);
  test_sleep_ms(50); /* the FIN arrives; the idle connection looks fine */

  size_t big_len = 4u << 20; /* far more than the socket buffers */
  char *big = calloc(1, big_len);
  assert_non_null(big);
  const char *argv[3] = {"SET", "resil:sigpipe", big};
  size_t argvlen[3] = {3, 13, big_len};
  resil_err e;
  memset(&e, 0, sizeof e);
  resil_status st =
      resil_redis_command_argv(r, resil_deadline_in_ms(2000), 0, 3, argv, argvlen, &rep, &e);
  print_message("# %s\n", e.msg);
  assert_int_equal(st, RESIL_E_FAILURE);
  assert_null(rep);
  assert_non_null(strstr(e.msg, "pipe-cache2: "));
  assert_int_equal(pool_stats(r).closed[RESIL_POOL_CLOSE_BROKEN], 1);
  /* the next call gets a fresh connection */
  rep = MUST(r, "PING");
  freeReplyObject(rep);
  free(big);
  resil_redis_free(admin);
  resil_redis_free(r);
}

static void two_attempts(resil_redis_config *cfg) {
  cfg->pool.max_size = 1;
  cfg->dep.retry.max_attempts = 2;
  cfg->dep.retry.base_backoff_ms = 5;
}

static void idempotent_call_is_retried_on_a_fresh_connection(void **state) {
  (void)state;
  resil_redis *r = make_redis("retry-cache", two_attempts);
  resil_redis *admin = make_redis("admin-cache2", NULL);
  must_ok(r, "SET %s %s", "resil:retry", "v");
  for (int idempotent = 0; idempotent < 2; idempotent++) {
    redisReply *rep = MUST(r, "CLIENT ID");
    long long id = rep->integer;
    freeReplyObject(rep);
    rep = MUST(admin, "CLIENT KILL ID %lld", id); /* the server drops our idle connection */
    freeReplyObject(rep);
    test_sleep_ms(20);
    resil_err e;
    memset(&e, 0, sizeof e);
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000),
                                          idempotent ? RESIL_CALL_IDEMPOTENT : 0, &rep, &e,
                                          "GET %s", "resil:retry");
    if (idempotent) {
      assert_int_equal(st, RESIL_OK);
      assert_string_equal(rep->str, "v");
      freeReplyObject(rep);
      assert_int_equal(dep_stats(r).retries, 1);
    } else {
      print_message("# %s\n", e.msg);
      assert_int_equal(st, RESIL_E_FAILURE);
      assert_null(rep);
      assert_non_null(strstr(e.msg, "retry-cache: receive: "));
      assert_int_equal(dep_stats(r).retries, 0);
    }
  }
  assert_int_equal(pool_stats(r).closed[RESIL_POOL_CLOSE_BROKEN], 2);
  resil_redis_free(admin);
  resil_redis_free(r);
}

/* Many threads, few connections: every caller gets its own reply. */
typedef struct racer {
  resil_redis *r;
  int id;
  int bad;
} racer;

static void *race(void *arg) {
  racer *rc = arg;
  char key[32], val[32];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "resil:race:%d", rc->id);
    snprintf(val, sizeof val, "%d-%d", rc->id, i);
    redisReply *rep = NULL;
    resil_err e;
    if (resil_redis_command(rc->r, resil_deadline_in_ms(3000), 0, &rep, &e, "SET %s %s", key,
                            val) != RESIL_OK)
      rc->bad++;
    if (rep) freeReplyObject(rep);
    rep = NULL;
    if (resil_redis_command(rc->r, resil_deadline_in_ms(3000), RESIL_CALL_IDEMPOTENT, &rep, &e,
                            "GET %s", key) != RESIL_OK ||
        rep->type != REDIS_REPLY_STRING || strcmp(rep->str, val) != 0)
      rc->bad++;
    if (rep) freeReplyObject(rep);
  }
  return NULL;
}

static void many_threads(resil_redis_config *cfg) {
  cfg->pool.max_size = 3;
  cfg->pool.acquire_timeout_ms = 3000;
}

static void concurrent_callers_each_get_their_own_reply(void **state) {
  (void)state;
  resil_redis *r = make_redis("race-cache", many_threads);
  enum { T = 8 };
  racer rc[T];
  pthread_t th[T];
  for (int i = 0; i < T; i++) {
    rc[i] = (racer){.r = r, .id = i};
    assert_int_equal(pthread_create(&th[i], NULL, race, &rc[i]), 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(rc[i].bad, 0);
  }
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.calls[RESIL_OUTCOME_SUCCESS], T * 400);
  assert_true(s.pool.connects_ok <= 3);
  assert_int_equal(s.pool.in_use, 0);
  resil_redis_free(r);
}

/* ---- A stopped server -------------------------------------------------- */

static void stop_conf(resil_redis_config *cfg) {
  cfg->dep.breaker.consecutive_failures = 3;
  cfg->dep.breaker.open_ms = 300;
  cfg->pool.max_size = 2;
}

static void stopped_server_times_out_opens_breaker_then_recovers(void **state) {
  (void)state;
  resil_redis *r = make_redis("stop-cache", stop_conf);
  redisReply *rep = MUST(r, "PING");
  freeReplyObject(rep);

  pid_t pid = redis_pid();
  stopped_pid = pid;
  assert_int_equal(kill(pid, SIGSTOP), 0);

  for (int i = 0; i < 3; i++) {
    resil_err e;
    memset(&e, 0, sizeof e);
    uint64_t t0 = test_now_ms();
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(150), 0, &rep, &e, "PING");
    uint64_t took = test_now_ms() - t0;
    assert_int_equal(st, RESIL_E_TIMEOUT);
    assert_null(rep);
    assert_true(took <= 150 + SLACK_MS);
  }
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);

  /* Open: rejected at once, without touching the network. */
  uint64_t c0 = connects(r);
  uint64_t t0 = test_now_us();
  for (int i = 0; i < 100; i++) {
    resil_err e;
    assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(150), RESIL_CALL_IDEMPOTENT,
                                         &rep, &e, "PING"),
                     RESIL_E_BREAKER_OPEN);
    assert_null(rep);
    if (i == 0) print_message("# %s\n", e.msg);
  }
  uint64_t per_call_us = (test_now_us() - t0) / 100;
  print_message("# rejection while open: %llu us per call\n", (unsigned long long)per_call_us);
  assert_true(per_call_us < 1000);
  assert_int_equal(connects(r), c0);
  assert_int_equal(pool_stats(r).in_use, 0);
  assert_true(dep_stats(r).rejections[RESIL_REJECT_BREAKER_OPEN] >= 100);

  resume_server();
  test_sleep_ms(350); /* open_ms 300, no jitter */
  for (int i = 0; i < 2; i++) { /* half_open_probes */
    rep = MUST(r, "PING");
    freeReplyObject(rep);
  }
  s = dep_stats(r);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_CLOSED);
  assert_true(s.breaker.transitions[RESIL_BREAKER_HALF_OPEN] >= 1);
  resil_redis_free(r);
}

/* ---- Recovery probes ------------------------------------------------------ */

static void probe_conf(resil_redis_config *cfg) {
  cfg->dep.breaker.consecutive_failures = 2;
  cfg->dep.breaker.failure_rate_percent = 0;
  cfg->dep.breaker.open_ms = 30000; /* a long break, as after several trips */
  cfg->dep.breaker.open_max_ms = 60000;
  cfg->dep.breaker.half_open_probes = 1;
  cfg->dep.timeout_ms = 300; /* probe timeout: min(300, 1000) */
  cfg->pool.max_size = 2;
  /* probe_interval_ms: the default, 500 */
}

static void heal_redis(void *ctx) {
  (void)ctx;
  resume_server();
}

/* One PING under a 300 ms deadline. */
static resil_status ping(void *r) {
  redisReply *rep = NULL;
  resil_err e;
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(300), 0, &rep, &e, "PING");
  if (rep) freeReplyObject(rep);
  return st;
}

static void recovery_probe_ends_a_long_break_soon_after_the_server_heals(void **state) {
  (void)state;
  resil_redis *r = make_redis("probe-cache", probe_conf);
  assert_int_equal(resil_dep_get_config(resil_redis_dep(r))->probe_interval_ms, 500);
  must_ok(r, "PING");
  pid_t pid = redis_pid();
  stopped_pid = pid;
  assert_int_equal(kill(pid, SIGSTOP), 0);
  redisReply *rep = NULL;
  for (int i = 0; i < 2; i++) {
    resil_err e;
    assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(150), 0, &rep, &e, "PING"),
                     RESIL_E_TIMEOUT);
  }
  resil_dep_stats s0 = dep_stats(r);
  assert_int_equal(s0.breaker.state, RESIL_BREAKER_OPEN);

  resil_dep_stats s = probe_outage_holds(resil_redis_dep(r), &s0);
  assert_int_equal(s.breaker.generation, s0.breaker.generation);
  resil_err e;
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(150), 0, &rep, &e, "PING"),
                   RESIL_E_BREAKER_OPEN);
  probe_heal_within_bound(resil_redis_dep(r), &s, heal_redis, ping, r);
  resil_redis_free(r);
}

/* ---- A killed and restarted server ------------------------------------- */

static void kill_conf(resil_redis_config *cfg) {
  cfg->pool.max_size = 3;
  cfg->pool.min_idle = 3;
  cfg->pool.validate_after_idle_ms = 60000; /* stale ones are found by use */
  cfg->dep.breaker.consecutive_failures = 20;
}

typedef struct caller {
  resil_redis *r;
  resil_status st;
  uint64_t took_ms;
  char msg[RESIL_ERR_MSG_MAX];
} caller;

static void *ping_once(void *arg) {
  caller *c = arg;
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  c->st = resil_redis_command(c->r, resil_deadline_in_ms(500), 0, &rep, &e, "PING");
  c->took_ms = test_now_ms() - t0;
  memcpy(c->msg, e.msg, sizeof c->msg);
  if (rep) freeReplyObject(rep);
  return NULL;
}

static void killed_server_connections_are_replaced_and_nobody_hangs(void **state) {
  (void)state;
  const char *restart = need_env("RESIL_TEST_REDIS_RESTART");
  resil_redis *r = make_redis("kill-cache", kill_conf);
  assert_int_equal(resil_pool_prewarm(resil_redis_pool(r), resil_deadline_in_ms(2000), NULL),
                   RESIL_OK);
  assert_int_equal(pool_stats(r).idle, 3);

  pid_t pid = redis_pid();
  assert_int_equal(kill(pid, SIGKILL), 0);
  for (int i = 0; i < 200 && kill(pid, 0) == 0; i++) test_sleep_ms(10);

  /* Down: callers fail within their deadline, none hangs. */
  caller c[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    c[i] = (caller){.r = r};
    assert_int_equal(pthread_create(&th[i], NULL, ping_once, &c[i]), 0);
  }
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    assert_int_not_equal(c[i].st, RESIL_OK);
    assert_true(c[i].took_ms <= 500 + SLACK_MS);
  }

  char cmd[4200];
  snprintf(cmd, sizeof cmd, "'%s'", restart);
  int rc = system(cmd);
  assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);

  /* Back: every stale connection is replaced by use; the first call may
   * meet one, none may hang, and within a few calls all answer. */
  int ok = 0;
  for (int i = 0; i < 10 && ok < 3; i++) {
    caller one = {.r = r};
    ping_once(&one);
    assert_true(one.took_ms <= 500 + SLACK_MS);
    ok = one.st == RESIL_OK ? ok + 1 : 0;
  }
  assert_int_equal(ok, 3);
  resil_pool_stats ps = pool_stats(r);
  assert_true(ps.connects_ok >= 4); /* 3 prewarmed + at least one new */
  assert_true(ps.closed[RESIL_POOL_CLOSE_BROKEN] >= 1);
  resil_redis_free(r);
}

static void validate_always(resil_redis_config *cfg) {
  cfg->pool.max_size = 2;
  cfg->pool.min_idle = 2;
  cfg->pool.validate_after_idle_ms = 0; /* PING every idle connection on borrow */
}

static void stale_idle_connections_fail_validation_and_are_replaced(void **state) {
  (void)state;
  const char *restart = need_env("RESIL_TEST_REDIS_RESTART");
  resil_redis *r = make_redis("valid-cache", validate_always);
  assert_int_equal(resil_pool_prewarm(resil_redis_pool(r), resil_deadline_in_ms(2000), NULL),
                   RESIL_OK);
  pid_t pid = redis_pid();
  assert_int_equal(kill(pid, SIGKILL), 0);
  for (int i = 0; i < 200 && kill(pid, 0) == 0; i++) test_sleep_ms(10);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "'%s'", restart);
  int rc = system(cmd);
  assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);

  /* Both idle connections are dead; validation finds that and the very
   * first call is served by a fresh connection. */
  redisReply *rep = MUST(r, "PING");
  freeReplyObject(rep);
  resil_pool_stats ps = pool_stats(r);
  assert_true(ps.closed[RESIL_POOL_CLOSE_VALIDATION] >= 1);
  assert_int_equal(dep_stats(r).calls[RESIL_OUTCOME_FAILURE], 0);
  resil_redis_free(r);
}

/* ---- A full pool ------------------------------------------------------- */

static void full_conf(resil_redis_config *cfg) {
  cfg->dep.timeout_ms = 3000; /* BLPOP holds its connection for 1 s */
  cfg->pool.max_size = 2;
  cfg->pool.acquire_timeout_ms = 150;
}

typedef struct blocker {
  resil_redis *r;
  resil_status st;
} blocker;

static void *blpop(void *arg) {
  blocker *b = arg;
  redisReply *rep = NULL;
  resil_err e;
  b->st = resil_redis_command(b->r, resil_deadline_in_ms(3000), 0, &rep, &e, "BLPOP %s %s",
                              "resil:full:empty", "1.0");
  if (rep) freeReplyObject(rep);
  return NULL;
}

static void extra_caller_on_a_full_pool_gets_pool_timeout(void **state) {
  (void)state;
  resil_redis *r = make_redis("full-cache", full_conf);
  blocker b[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    b[i] = (blocker){.r = r};
    assert_int_equal(pthread_create(&th[i], NULL, blpop, &b[i]), 0);
  }
  for (int i = 0; i < 200 && pool_stats(r).in_use < 2; i++) test_sleep_ms(5);
  assert_int_equal(pool_stats(r).in_use, 2);

  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  uint64_t t0 = test_now_ms();
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "PING");
  uint64_t took = test_now_ms() - t0;
  print_message("# %s\n", e.msg);
  assert_int_equal(st, RESIL_E_POOL_TIMEOUT);
  assert_null(rep);
  assert_true(took >= 140);
  assert_true(took <= 150 + SLACK_MS);

  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(b[i].st, RESIL_OK); /* nil after 1 s */
  }
  resil_dep_stats s = dep_stats(r);
  assert_int_equal(s.rejections[RESIL_REJECT_POOL_TIMEOUT], 1);
  assert_int_equal(s.calls[RESIL_OUTCOME_FAILURE], 0); /* local: not a dependency failure */
  assert_int_equal(s.breaker.window_failures, 0);
  assert_int_equal(s.pool.acquire_timeouts, 1);
  resil_redis_free(r);
}

/* ---- Lifetime rotation ------------------------------------------------- */

/* 400 ms (1.2 s under the sanitizers): the two calls of the "young" check
 * fit in it, and are timed to make sure they did. */
static uint32_t life_ms(void) { return 400 * test_build_mult(); }

static void short_life(resil_redis_config *cfg) {
  cfg->pool.max_size = 1;
  cfg->pool.max_lifetime_ms = life_ms();
  cfg->pool.lifetime_jitter_percent = 0;
}

static void connections_are_rotated_after_max_lifetime(void **state) {
  (void)state;
  resil_redis *r = NULL;
  redisReply *rep;
  long long id1 = 0;
  bool young_checked = false;
  /* Same connection while young: only a conclusive check if both calls came
   * within the lifetime (timed from before the client existed); a try that
   * a loaded machine made slower than that is repeated with a new client. */
  for (int tries = 0; tries < 3 && !young_checked; tries++) {
    if (r) resil_redis_free(r);
    uint64_t t0 = test_now_ms();
    r = make_redis("life-cache", short_life);
    rep = MUST(r, "CLIENT ID");
    id1 = rep->integer;
    freeReplyObject(rep);
    rep = MUST(r, "CLIENT ID");
    long long id2 = rep->integer;
    freeReplyObject(rep);
    if (test_now_ms() - t0 < life_ms()) {
      assert_int_equal(id2, id1);
      young_checked = true;
    }
  }
  if (!young_checked) fail_msg("3 tries: two calls never fitted in %u ms", life_ms());
  test_sleep_ms(life_ms() + 100); /* past the lifetime: a lower bound, not a race */
  rep = MUST(r, "CLIENT ID");
  assert_int_not_equal(rep->integer, id1);
  freeReplyObject(rep);
  resil_pool_stats ps = pool_stats(r);
  assert_int_equal(ps.connects_ok, 2);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_LIFETIME], 1);
  resil_redis_free(r);
}

/* ---- Blackhole and reset through the fault proxy ----------------------- */

#ifdef HAVE_FAULTPROXY
static void blackholed_connection_times_out_at_the_deadline(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_PORT");
  fp_proxy *fp = fp_start("127.0.0.1", (uint16_t)port);
  assert_non_null(fp);
  resil_redis *r = make_redis_at("hole-cache", fp_port(fp), NULL);
  redisReply *rep = MUST(r, "PING");
  freeReplyObject(rep);

  fp_set_mode(fp, FP_BLACKHOLE, 0);
  for (int i = 0; i < 2; i++) { /* the open connection, then a fresh one */
    resil_err e;
    memset(&e, 0, sizeof e);
    uint64_t t0 = test_now_ms();
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(200), 0, &rep, &e, "PING");
    uint64_t took = test_now_ms() - t0;
    print_message("# %s\n", e.msg);
    assert_int_equal(st, RESIL_E_TIMEOUT);
    assert_true(took <= 200 + SLACK_MS);
  }
  fp_set_mode(fp, FP_RESET_AFTER, 0);
  {
    resil_err e;
    memset(&e, 0, sizeof e);
    uint64_t t0 = test_now_ms();
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "PING");
    assert_int_equal(st, RESIL_E_FAILURE);
    assert_true(test_now_ms() - t0 < 500);
  }
  fp_set_mode(fp, FP_PASS, 0);
  rep = MUST(r, "PING");
  freeReplyObject(rep);
  resil_redis_free(r);
  fp_stop(fp);
}

static void reply_cut_mid_way_is_a_failure(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_PORT");
  fp_proxy *fp = fp_start("127.0.0.1", (uint16_t)port);
  assert_non_null(fp);
  resil_redis *r = make_redis_at("cut-cache", fp_port(fp), NULL);
  must_ok(r, "SET %s %s", "resil:cut", "0123456789012345678901234567890123456789");
  fp_set_mode(fp, FP_CLOSE_MID_REPLY, 0);
  redisReply *rep = NULL;
  resil_err e;
  memset(&e, 0, sizeof e);
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &e, "GET %s",
                                       "resil:cut"),
                   RESIL_E_FAILURE);
  assert_null(rep);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "cut-cache: receive: "));
  fp_set_mode(fp, FP_PASS, 0);
  rep = MUST(r, "GET %s", "resil:cut");
  assert_int_equal(rep->len, 40);
  freeReplyObject(rep);
  resil_redis_free(r);
  fp_stop(fp);
}
#endif

/* ---- A unix socket ---------------------------------------------------- */

/* The suite's servers listen on TCP only, so this test starts its own
 * redis-server on a unix socket under RESIL_TEST_TMPDIR (TCP disabled with
 * --port 0) and stops it in the teardown. */
static pid_t unix_server = 0;
static char unix_dir[4096];

static int teardown_unix_server(void **state) {
  (void)state;
  if (unix_server > 0) {
    kill(unix_server, SIGKILL);
    waitpid(unix_server, NULL, 0);
  }
  unix_server = 0;
  if (unix_dir[0]) {
    char path[4200];
    snprintf(path, sizeof path, "%s/redis.sock", unix_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/redis.log", unix_dir);
    unlink(path);
    rmdir(unix_dir);
    unix_dir[0] = '\0';
  }
  return 0;
}

static void unix_path(resil_redis_config *cfg) {
  static char path[4200];
  snprintf(path, sizeof path, "%s/redis.sock", unix_dir);
  cfg->unix_path = path;
  cfg->host = NULL;
}

/* Whether a stream connect to the unix socket at path is accepted now. */
static bool unix_connectable(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return false;
  strcpy(sa.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  close(fd);
  return ok;
}

static void unix_socket_round_trip(void **state) {
  (void)state;
  const char *tmp = need_env("RESIL_TEST_TMPDIR");
  snprintf(unix_dir, sizeof unix_dir, "%s/redis-unix-XXXXXX", tmp);
  if (!mkdtemp(unix_dir)) {
    unix_dir[0] = '\0';
    fail_msg("mkdtemp under %s: %s", tmp, strerror(errno));
  }
  char sock[4200];
  snprintf(sock, sizeof sock, "%s/redis.sock", unix_dir);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* keep its banner out of our TAP stream */
    char log[4300];
    snprintf(log, sizeof log, "%s/redis.log", unix_dir);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
           "--appendonly", "no", "--dir", unix_dir, "--loglevel", "warning",
           (char *)NULL);
    _exit(127);
  }
  unix_server = pid;
  /* The file appears at bind(), before listen(): wait until a connect is
   * accepted, not only for the file (a connect in between is refused). */
  bool listening = false;
  for (int i = 0; i < 500 && !listening; i++) {
    listening = unix_connectable(sock);
    if (!listening) test_sleep_ms(10);
  }
  if (!listening) fail_msg("redis-server did not listen on %s within 5 s", sock);

  resil_redis *r = make_redis_at("unix-cache", 6379, unix_path);
  must_ok(r, "SET %s %s", "resil:unix", "over a socket");
  redisReply *rep = MUST(r, "GET %s", "resil:unix");
  assert_string_equal(rep->str, "over a socket");
  freeReplyObject(rep);
  resil_redis_free(r);

  /* nothing listening on the path any more: a clear failure */
  teardown_unix_server(NULL);
  snprintf(unix_dir, sizeof unix_dir, "%s/no-such-dir", tmp);
  r = make_redis_at("unix-dead-cache", 6379, unix_path);
  resil_err e;
  memset(&e, 0, sizeof e);
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(500), 0, &rep, &e, "PING"),
                   RESIL_E_FAILURE);
  print_message("# %s\n", e.msg);
  assert_non_null(strstr(e.msg, "unix-dead-cache: connect to "));
  resil_redis_free(r);
  unix_dir[0] = '\0';
}

/* ---- The example ------------------------------------------------------- */

static void minimal_example_runs(void **state) {
  (void)state;
  uint32_t port = need_port("RESIL_TEST_REDIS_PORT");
  const char *exe = test_env("RESIL_REDIS_EXAMPLE");
  if (!exe) fail_msg("RESIL_REDIS_EXAMPLE (set by meson) is missing");
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "'%s' 127.0.0.1 %u", exe, (unsigned)port);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[256] = "";
  char *got = fgets(line, sizeof line, p);
  int rc = pclose(p);
  assert_non_null(got);
  assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
  assert_string_equal(line, "greeting = hello\n");
}

/* ---- Leaks ------------------------------------------------------------- */

static void no_file_descriptor_leaks_over_the_suite(void **state) {
  (void)state;
  need_env("RESIL_TEST_REDIS_PORT");
  int now = count_open_fds();
  print_message("# fds at start %d, now %d\n", fds_at_start, now);
  assert_int_equal(now, fds_at_start);
}

int main(void) {
  atexit(resume_server);
  /* SIGPIPE is deliberately left at its default (terminate): the adapter
   * must never raise it, whatever the server does to the connection. */
  fds_at_start = count_open_fds();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_reports_every_problem),
      cmocka_unit_test(bad_arguments_are_invalid_and_touch_nothing),
      cmocka_unit_test(set_get_round_trip),
      cmocka_unit_test(host_name_is_resolved_and_connected_by_address),
      cmocka_unit_test(binary_safe_values),
      cmocka_unit_test(pipeline_of_n_commands),
      cmocka_unit_test(wrongtype_is_a_caller_error),
      cmocka_unit_test(error_replies_are_classified_by_their_first_word),
      cmocka_unit_test(value_larger_than_max_reply_bytes_is_a_caller_error),
      cmocka_unit_test_teardown(busy_server_is_overload_and_the_reply_is_handed_back,
                                teardown_script),
      cmocka_unit_test(auth_and_select_succeed),
      cmocka_unit_test(wrong_password_is_a_clear_failure_without_retries),
      cmocka_unit_test_teardown(stopped_server_during_auth_times_out_at_connect_timeout,
                                teardown_resume),
      cmocka_unit_test(slow_command_times_out_and_next_call_gets_a_fresh_connection),
      cmocka_unit_test(command_timeout_caps_a_longer_deadline),
      cmocka_unit_test(nothing_listening_fails_fast),
      cmocka_unit_test(write_to_a_connection_the_server_closed_is_a_failure_not_sigpipe),
      cmocka_unit_test(idempotent_call_is_retried_on_a_fresh_connection),
      cmocka_unit_test(concurrent_callers_each_get_their_own_reply),
      cmocka_unit_test_teardown(stopped_server_times_out_opens_breaker_then_recovers,
                                teardown_resume),
      cmocka_unit_test_teardown(recovery_probe_ends_a_long_break_soon_after_the_server_heals,
                                teardown_resume),
      cmocka_unit_test_teardown(killed_server_connections_are_replaced_and_nobody_hangs,
                                teardown_resume),
      cmocka_unit_test(stale_idle_connections_fail_validation_and_are_replaced),
      cmocka_unit_test(extra_caller_on_a_full_pool_gets_pool_timeout),
      cmocka_unit_test(connections_are_rotated_after_max_lifetime),
#ifdef HAVE_FAULTPROXY
      cmocka_unit_test(blackholed_connection_times_out_at_the_deadline),
      cmocka_unit_test(reply_cut_mid_way_is_a_failure),
#endif
      cmocka_unit_test_teardown(unix_socket_round_trip, teardown_unix_server),
      cmocka_unit_test(minimal_example_runs),
      cmocka_unit_test(no_file_descriptor_leaks_over_the_suite),
  };
  return cmocka_run_group_tests_name("redis", tests, NULL, NULL);
}
