/* fork() with warm pools, against the real Redis and PostgreSQL servers that
 * scripts/test.sh starts (RESIL_TEST_REDIS_PORT, RESIL_TEST_PG_CONNINFO,
 * RESIL_TEST_PG_ADMIN_CONNINFO).
 *
 * The parent warms a pool, forks, and both processes then send many
 * commands with unique arguments at the same time: every reply must be the
 * one asked for (a child that reused the parent's connections would read
 * the parent's replies and the other way round). Afterwards the parent
 * still uses the very same server sessions (same Redis client ids, same
 * PostgreSQL backend pids, still alive on the server: the child sent no
 * QUIT or Terminate on them) and opened no new connection. Also: a fork
 * while other threads hold connections leaves the child a usable pool of
 * max_size connections, without a hang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "resil/pg.h"
#include "resil/redis.h"
#include "testutil.h"

/* The child starts threads after a multi-threaded fork (its workload, the
 * pool's housekeeper): tell ThreadSanitizer that this is intended. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void) { return "die_after_fork=0"; }

#define POOL_SIZE 4
#define THREADS 4
#define PER_THREAD 250 /* commands per thread and process */

/* ---- A workload with unique arguments ------------------------------------ */

typedef struct tally {
  int ok, wrong, failed;
  char first_problem[200];
} tally;

typedef struct worker {
  pthread_t t;
  void *client; /* resil_redis or resil_pg */
  bool pg;
  int index;
  tally tl;
} worker;

static void note(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(tally *t, const char *fmt, ...) {
  if (t->first_problem[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->first_problem, sizeof t->first_problem, fmt, ap);
  va_end(ap);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  char want[64];
  for (int i = 0; i < PER_THREAD; i++) {
    snprintf(want, sizeof want, "%ld-%d-%d", (long)getpid(), w->index, i);
    resil_err err = {.status = RESIL_OK, .msg = ""};
    if (!w->pg) {
      redisReply *reply = NULL;
      resil_status st = resil_redis_command(w->client, resil_deadline_in_ms(5000), 0, &reply,
                                            &err, "ECHO %s", want);
      if (st != RESIL_OK || !reply) {
        w->tl.failed++;
        note(&w->tl, "ECHO %s: %s", want, err.msg);
      } else if (reply->type != REDIS_REPLY_STRING || strcmp(reply->str, want) != 0) {
        w->tl.wrong++;
        note(&w->tl, "ECHO %s got %s", want, reply->str ? reply->str : "(no string)");
      } else {
        w->tl.ok++;
      }
      if (reply) freeReplyObject(reply);
    } else {
      PGresult *res = NULL;
      const char *vals[1] = {want};
      resil_status st = resil_pg_query(w->client, resil_deadline_in_ms(5000), 0,
                                       "SELECT $1::text", 1, vals, &res, &err);
      if (st != RESIL_OK || !res) {
        w->tl.failed++;
        note(&w->tl, "SELECT %s: %s", want, err.msg);
      } else if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), want) != 0) {
        w->tl.wrong++;
        note(&w->tl, "SELECT %s got %s", want,
             PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "(no row)");
      } else {
        w->tl.ok++;
      }
      PQclear(res);
    }
  }
  return NULL;
}

/* THREADS threads of PER_THREAD commands each; the sum of their tallies. */
static tally run_workload(void *client, bool pg) {
  worker w[THREADS];
  tally sum = {0};
  int started = 0;
  for (int i = 0; i < THREADS; i++) {
    memset(&w[i], 0, sizeof w[i]);
    w[i].client = client;
    w[i].pg = pg;
    w[i].index = i;
    if (pthread_create(&w[i].t, NULL, worker_main, &w[i]) != 0) break;
    started++;
  }
  for (int i = 0; i < started; i++) {
    pthread_join(w[i].t, NULL);
    sum.ok += w[i].tl.ok;
    sum.wrong += w[i].tl.wrong;
    sum.failed += w[i].tl.failed;
    if (!sum.first_problem[0]) memcpy(sum.first_problem, w[i].tl.first_problem, 200);
  }
  sum.failed += (THREADS - started) * PER_THREAD;
  return sum;
}

/* ---- The child's side ----------------------------------------------------- */

/* What the child reports through a pipe. */
typedef struct child_report {
  tally tl;
  int pool_open_after_fork;     /* resil_pool_get_stats() right after fork */
  int pool_in_use_after_fork;
  int max_acquired;             /* connections held at once, up to POOL_SIZE */
  int opened_by_child;          /* connects_ok - connects_ok at the fork */
  long in_use_end, open_end;    /* after everything was released */
  bool done;
} child_report;

typedef struct fork_ctx {
  int ready[2], report[2];
  pid_t pid;
} fork_ctx;

static bool write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}

/* Read n bytes within ms milliseconds. */
static bool read_all(int fd, void *p, size_t n, int ms) {
  char *c = p;
  uint64_t end = test_now_ms() + (uint64_t)ms;
  while (n) {
    uint64_t now = test_now_ms();
    if (now >= end) return false;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int r = poll(&pf, 1, (int)(end - now));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t got = read(fd, c, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    c += got;
    n -= (size_t)got;
  }
  return true;
}

/* In the child: the workload, then take max_size connections at once (all
 * new: the parent's are never lent), report, free everything and exit. */
static void child_body(fork_ctx *fc, resil_pool *pool, void *client, bool pg,
                       resil_pool_conn *held_by_me) {
  child_report rep;
  memset(&rep, 0, sizeof rep);
  resil_pool_stats s;
  resil_pool_get_stats(pool, &s);
  rep.pool_open_after_fork = (int)s.open;
  rep.pool_in_use_after_fork = (int)s.in_use;
  uint64_t connects_at_fork = s.connects_ok;
  char go = 'r';
  write_all(fc->ready[1], &go, 1);
  rep.tl = run_workload(client, pg);
  resil_pool_conn *c[POOL_SIZE];
  for (int i = 0; i < POOL_SIZE; i++) {
    if (resil_pool_acquire(pool, resil_deadline_in_ms(3000), &c[i], NULL) != RESIL_OK) break;
    rep.max_acquired++;
  }
  for (int i = 0; i < rep.max_acquired; i++) resil_pool_release(pool, c[i], RESIL_POOL_OK);
  /* The connection this thread borrowed before the fork: abandoned. */
  if (held_by_me) resil_pool_release(pool, held_by_me, RESIL_POOL_OK);
  resil_pool_get_stats(pool, &s);
  rep.opened_by_child = (int)(s.connects_ok - connects_at_fork);
  rep.in_use_end = (long)s.in_use;
  rep.open_end = (long)s.open;
  rep.done = true;
  write_all(fc->report[1], &rep, sizeof rep);
  if (pg)
    resil_pg_free(client);
  else
    resil_redis_free(client);
  _exit(0);
}

static void fork_ctx_open(fork_ctx *fc) {
  assert_int_equal(pipe(fc->ready), 0);
  assert_int_equal(pipe(fc->report), 0);
}

/* In the parent: wait for the child's "ready" (it is about to run its
 * workload). */
static void wait_child_ready(fork_ctx *fc) {
  char c = 0;
  if (!read_all(fc->ready[0], &c, 1, 30000)) {
    kill(fc->pid, SIGKILL);
    fail_msg("the child did not start its workload within 30 s");
  }
}

static void check_tallies(const char *who, const tally *t) {
  if (t->wrong || t->failed || t->ok != THREADS * PER_THREAD)
    fail_msg("%s: %d right, %d wrong, %d failed of %d (first: %s)", who, t->ok, t->wrong,
             t->failed, THREADS * PER_THREAD, t->first_problem);
}

/* In the parent: reap the child (killed if it hangs), then check the
 * parent's tally (NULL: none), the child's, and the child's exit status 0. */
static child_report finish_child(fork_ctx *fc, const tally *parent) {
  child_report rep;
  memset(&rep, 0, sizeof rep);
  bool got = read_all(fc->report[0], &rep, sizeof rep, 60000);
  int status = 0;
  pid_t r = 0;
  for (int i = 0; i < 3000 && (r = waitpid(fc->pid, &status, WNOHANG)) == 0; i++)
    test_sleep_ms(10);
  if (r == 0) {
    kill(fc->pid, SIGKILL);
    waitpid(fc->pid, &status, 0);
  }
  for (int i = 0; i < 2; i++) {
    close(fc->ready[i]);
    close(fc->report[i]);
  }
  if (parent) check_tallies("parent", parent);
  if (!got || !rep.done) fail_msg("the child did not report (hung or crashed: status 0x%x)", status);
  check_tallies("child", &rep.tl);
  if (r == 0) fail_msg("the child did not exit within 30 s of its report");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("the child exited with status 0x%x", status);
  return rep;
}

static void check_child(const child_report *rep) {
  /* A clean pool: the parent's connections count nowhere in the child. */
  assert_int_equal(rep->pool_open_after_fork, 0);
  assert_int_equal(rep->pool_in_use_after_fork, 0);
  assert_int_equal(rep->max_acquired, POOL_SIZE);
  assert_in_range(rep->opened_by_child, 1, POOL_SIZE);
  /* All released (including a connection borrowed before the fork, which
   * counts nowhere): nothing in use, only the child's own are open. */
  assert_int_equal(rep->in_use_end, 0);
  assert_int_equal(rep->open_end, rep->opened_by_child);
}

/* ---- Redis ---------------------------------------------------------------- */

static resil_redis *make_redis(const char *name) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  cfg.port = need_port("RESIL_TEST_REDIS_PORT");
  cfg.dep.timeout_ms = 5000;
  cfg.dep.limit.max_concurrent = 64;
  cfg.pool.max_size = POOL_SIZE;
  cfg.pool.min_idle = POOL_SIZE;
  cfg.pool.acquire_timeout_ms = 5000;
  cfg.pool.housekeeping_ms = 50; /* a housekeeper thread runs at the fork */
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  if (resil_pool_prewarm(resil_redis_pool(r), resil_deadline_in_ms(5000), &err) != RESIL_OK)
    fail_msg("prewarm: %s", err.msg);
  return r;
}

/* The local ports of the pool's POOL_SIZE connections (taken all at once),
 * sorted. */
static void redis_pool_ports(resil_redis *r, int ports[POOL_SIZE]) {
  resil_pool_conn *c[POOL_SIZE];
  for (int i = 0; i < POOL_SIZE; i++) {
    resil_err err;
    if (resil_pool_acquire(resil_redis_pool(r), resil_deadline_in_ms(5000), &c[i], &err) !=
        RESIL_OK)
      fail_msg("acquire %d: %s", i, err.msg);
    redisContext *ctx = resil_pool_conn_handle(c[i]);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(ctx->fd, (struct sockaddr *)&a, &len), 0);
    ports[i] = ntohs(a.sin_port);
  }
  for (int i = 0; i < POOL_SIZE; i++) resil_pool_release(resil_redis_pool(r), c[i], RESIL_POOL_OK);
  for (int i = 1; i < POOL_SIZE; i++)
    for (int j = i; j > 0 && ports[j - 1] > ports[j]; j--) {
      int t = ports[j];
      ports[j] = ports[j - 1];
      ports[j - 1] = t;
    }
}

/* The server's client id of the connection from 127.0.0.1:port, or -1,
 * from CLIENT LIST on a connection of the test's own. Also its last
 * command in cmd (e.g. "echo"; "quit" would mean the child said goodbye). */
static long redis_client_id(redisContext *mon, int port, char *cmd, size_t cmdlen) {
  redisReply *rep = redisCommand(mon, "CLIENT LIST");
  if (!rep || rep->type != REDIS_REPLY_STRING)
    fail_msg("CLIENT LIST failed");
  char needle[40];
  snprintf(needle, sizeof needle, " addr=127.0.0.1:%d ", port);
  long id = -1;
  for (char *line = rep->str; line && *line;) {
    char *end = strchr(line, '\n');
    if (end) *end = '\0';
    if (strstr(line, needle)) {
      id = strtol(line + 3, NULL, 10); /* "id=..." */
      const char *c = strstr(line, " cmd=");
      snprintf(cmd, cmdlen, "%s", c ? c + 5 : "");
      char *sp = strchr(cmd, ' ');
      if (sp) *sp = '\0';
    }
    line = end ? end + 1 : NULL;
  }
  freeReplyObject(rep);
  return id;
}

static redisContext *redis_monitor(void) {
  struct timeval tv = {2, 0};
  redisContext *mon = redisConnectWithTimeout("127.0.0.1", need_port("RESIL_TEST_REDIS_PORT"), tv);
  if (!mon || mon->err) fail_msg("test connection to Redis: %s", mon ? mon->errstr : "oom");
  redisSetTimeout(mon, tv);
  return mon;
}

static void redis_parent_and_child_each_get_their_own_replies(void **state) {
  (void)state;
  resil_redis *r = make_redis("fork-redis");
  redisContext *mon = redis_monitor();
  int ports[POOL_SIZE];
  long ids[POOL_SIZE];
  redis_pool_ports(r, ports);
  char cmd[32];
  for (int i = 0; i < POOL_SIZE; i++) {
    ids[i] = redis_client_id(mon, ports[i], cmd, sizeof cmd);
    assert_true(ids[i] > 0);
  }
  resil_pool_stats before;
  resil_pool_get_stats(resil_redis_pool(r), &before);

  fork_ctx fc;
  fork_ctx_open(&fc);
  fc.pid = fork();
  assert_true(fc.pid >= 0);
  if (fc.pid == 0) child_body(&fc, resil_redis_pool(r), r, false, NULL);
  wait_child_ready(&fc);
  tally mine = run_workload(r, false);
  child_report rep = finish_child(&fc, &mine);
  check_child(&rep);

  /* The parent still uses the same sessions, all alive on the server, and
   * opened nothing new. */
  int after[POOL_SIZE];
  redis_pool_ports(r, after);
  for (int i = 0; i < POOL_SIZE; i++) {
    assert_int_equal(after[i], ports[i]);
    assert_int_equal(redis_client_id(mon, ports[i], cmd, sizeof cmd), ids[i]);
    assert_string_not_equal(cmd, "quit");
  }
  resil_pool_stats now;
  resil_pool_get_stats(resil_redis_pool(r), &now);
  assert_int_equal(now.connects_ok, before.connects_ok);
  assert_int_equal(now.closed[RESIL_POOL_CLOSE_BROKEN], before.closed[RESIL_POOL_CLOSE_BROKEN]);
  tally again = run_workload(r, false);
  check_tallies("parent after the child exited", &again);
  redisFree(mon);
  resil_redis_free(r);
}

/* A thread that borrows a connection, tells the test, and keeps it until
 * told to give it back. */
typedef struct holder {
  pthread_t t;
  resil_pool *pool;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool holding, release;
  resil_status st;
} holder;

static void *holder_main(void *arg) {
  holder *h = arg;
  resil_pool_conn *c = NULL;
  h->st = resil_pool_acquire(h->pool, resil_deadline_in_ms(5000), &c, NULL);
  pthread_mutex_lock(&h->mu);
  h->holding = true;
  pthread_cond_broadcast(&h->cv);
  while (!h->release) pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
  if (c) resil_pool_release(h->pool, c, RESIL_POOL_OK);
  return NULL;
}

static void holder_start(holder *h, resil_pool *pool) {
  memset(h, 0, sizeof *h);
  h->pool = pool;
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  assert_int_equal(pthread_create(&h->t, NULL, holder_main, h), 0);
  pthread_mutex_lock(&h->mu);
  while (!h->holding) pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
  assert_int_equal(h->st, RESIL_OK);
}

static void holder_stop(holder *h) {
  pthread_mutex_lock(&h->mu);
  h->release = true;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
  pthread_join(h->t, NULL);
  pthread_cond_destroy(&h->cv);
  pthread_mutex_destroy(&h->mu);
}

/* Forked while two other threads and the forking thread itself hold
 * connections: the child still gets max_size connections at once, runs
 * its workload without a hang, and abandons the forking thread's borrowed
 * connection when it releases it. The parent's holders give theirs back
 * normally afterwards. */
static void redis_fork_while_connections_are_borrowed(void **state) {
  (void)state;
  resil_redis *r = make_redis("fork-redis-held");
  resil_pool *pool = resil_redis_pool(r);
  holder h[2];
  holder_start(&h[0], pool);
  holder_start(&h[1], pool);
  resil_pool_conn *mine = NULL;
  assert_int_equal(resil_pool_acquire(pool, resil_deadline_in_ms(5000), &mine, NULL), RESIL_OK);
  resil_pool_stats s;
  resil_pool_get_stats(pool, &s);
  assert_int_equal(s.in_use, 3);

  fork_ctx fc;
  fork_ctx_open(&fc);
  fc.pid = fork();
  assert_true(fc.pid >= 0);
  if (fc.pid == 0) child_body(&fc, pool, r, false, mine);
  wait_child_ready(&fc);
  child_report rep = finish_child(&fc, NULL);
  check_child(&rep);

  resil_pool_release(pool, mine, RESIL_POOL_OK);
  holder_stop(&h[0]);
  holder_stop(&h[1]);
  resil_pool_get_stats(pool, &s);
  assert_int_equal(s.in_use, 0);
  assert_int_equal(s.open, POOL_SIZE);
  tally again = run_workload(r, false);
  check_tallies("parent after the child exited", &again);
  resil_redis_free(r);
}

/* ---- PostgreSQL ------------------------------------------------------------ */

static resil_pg *make_pg(const char *name) {
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  cfg.conninfo = need_env("RESIL_TEST_PG_CONNINFO");
  cfg.dep.timeout_ms = 5000;
  cfg.dep.limit.max_concurrent = 64;
  cfg.pool.max_size = POOL_SIZE;
  cfg.pool.min_idle = POOL_SIZE;
  cfg.pool.acquire_timeout_ms = 5000;
  cfg.pool.housekeeping_ms = 50;
  resil_err err;
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  if (resil_pool_prewarm(resil_pg_pool(pg), resil_deadline_in_ms(5000), &err) != RESIL_OK)
    fail_msg("prewarm: %s", err.msg);
  return pg;
}

/* The backend pids of the pool's POOL_SIZE connections (all borrowed at
 * once through transactions), sorted. */
static void pg_pool_pids(resil_pg *pg, int pids[POOL_SIZE]) {
  resil_pg_tx *tx[POOL_SIZE];
  for (int i = 0; i < POOL_SIZE; i++) {
    resil_err err;
    if (resil_pg_tx_begin(pg, resil_deadline_in_ms(5000), NULL, &tx[i], &err) != RESIL_OK)
      fail_msg("begin %d: %s", i, err.msg);
    pids[i] = resil_pg_tx_backend_pid(tx[i]);
  }
  for (int i = 0; i < POOL_SIZE; i++) resil_pg_tx_rollback(tx[i], NULL);
  for (int i = 1; i < POOL_SIZE; i++)
    for (int j = i; j > 0 && pids[j - 1] > pids[j]; j--) {
      int t = pids[j];
      pids[j] = pids[j - 1];
      pids[j - 1] = t;
    }
}

/* How many of pids the server still runs as client backends. */
static int pg_alive(const int pids[POOL_SIZE]) {
  PGconn *adm = PQconnectdb(need_env("RESIL_TEST_PG_ADMIN_CONNINFO"));
  if (PQstatus(adm) != CONNECTION_OK) fail_msg("admin connection: %s", PQerrorMessage(adm));
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE pid IN (%d, %d, %d, %d)", pids[0],
           pids[1], pids[2], pids[3]);
  PGresult *res = PQexec(adm, sql);
  if (PQresultStatus(res) != PGRES_TUPLES_OK) fail_msg("%s", PQerrorMessage(adm));
  int n = atoi(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(adm);
  return n;
}

static void pg_parent_and_child_each_get_their_own_replies(void **state) {
  (void)state;
  resil_pg *pg = make_pg("fork-pg");
  int pids[POOL_SIZE];
  pg_pool_pids(pg, pids);
  assert_int_equal(pg_alive(pids), POOL_SIZE);
  resil_pool_stats before;
  resil_pool_get_stats(resil_pg_pool(pg), &before);

  fork_ctx fc;
  fork_ctx_open(&fc);
  fc.pid = fork();
  assert_true(fc.pid >= 0);
  if (fc.pid == 0) child_body(&fc, resil_pg_pool(pg), pg, true, NULL);
  wait_child_ready(&fc);
  tally mine = run_workload(pg, true);
  child_report rep = finish_child(&fc, &mine);
  check_child(&rep);

  /* Same backends, all alive (no Terminate reached them from the child,
   * which has exited and freed its pool), nothing reopened. */
  assert_int_equal(pg_alive(pids), POOL_SIZE);
  int after[POOL_SIZE];
  pg_pool_pids(pg, after);
  for (int i = 0; i < POOL_SIZE; i++) assert_int_equal(after[i], pids[i]);
  resil_pool_stats now;
  resil_pool_get_stats(resil_pg_pool(pg), &now);
  assert_int_equal(now.connects_ok, before.connects_ok);
  tally again = run_workload(pg, true);
  check_tallies("parent after the child exited", &again);
  resil_pg_free(pg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(redis_parent_and_child_each_get_their_own_replies),
      cmocka_unit_test(redis_fork_while_connections_are_borrowed),
      cmocka_unit_test(pg_parent_and_child_each_get_their_own_replies),
  };
  return cmocka_run_group_tests_name("fork", tests, NULL, NULL);
}
