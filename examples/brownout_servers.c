/* brownout --with-servers: real Redis and PostgreSQL, stalled, then failed over.
 *
 * The servers are the ones scripts/lib/servers.sh started (scripts/demo.sh
 * --with-servers does; its RESIL_TEST_* variables say where they are). The
 * demo starts none itself, except the failover twins on 127.0.0.2 that
 * servers.sh starts on demand ($RESIL_TEST_PG2_START, $RESIL_TEST_REDIS2_START).
 *
 * Stalled: three phases - healthy, stalled (the server and its children are
 * SIGSTOPped: connections stay open, nothing answers), resumed (SIGCONT) -
 * with 4 threads per side calling resil (resil_redis_command() GET /
 * resil_pg_query() SELECT 1, 200 ms deadline) or the raw driver with no
 * timeout (blocking redisCommand() / PQexec()). Naive calls stuck on the
 * stopped server end when it is continued, so every wait stays bounded; the
 * server is always continued before this returns (and servers.sh's
 * stop_all_servers continues whatever a killed demo left stopped).
 *
 * Failover (what tests/integration/test_failover.c checks): 3 writer threads
 * per side write on "the writer" A, the twin on 127.0.0.2. Then, at once,
 * the writer's name moves to B on 127.0.0.1 (same port) in a hosts file
 * resil resolves with (resil_resolve_set_hosts_file, as RESIL_HOSTS_FILE
 * does; its TTL set to 60 s so that only the failover signs re-resolve it),
 * and A is demoted: PostgreSQL ALTER SYSTEM SET default_transaction_read_only
 * = on + pg_reload_conf(), so writes get 25006; Redis REPLICAOF B, so writes
 * get READONLY. resil writes through the name; the naive client holds the
 * connection it opened to A (libpq and hiredis resolve once, at connect, and
 * keep a connection an error reply does not break). Recovery: from the first
 * refusal a side saw (resil: its adapter's read_only counter) to the end of
 * its first write on B. A is made writable again afterwards. */
#include "brownout.h"

#include <stdio.h>

#if !defined(BROWNOUT_HAVE_REDIS) && !defined(BROWNOUT_HAVE_PG)
int run_servers_section(unsigned phase_s) {
  (void)phase_s;
  printf("---- --with-servers: skipped: this build has neither resil-redis (hiredis) nor\n"
         "     resil-pg (libpq) ----\n\n");
  return 0;
}
#else

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef BROWNOUT_HAVE_REDIS
#include <hiredis/hiredis.h>
#include <resil/redis.h>
#endif
#ifdef BROWNOUT_HAVE_PG
#include <libpq-fe.h>
#include <resil/pg.h>
#endif

#define SRV_WORKERS 4             /* threads per side (stalled); the failover uses 3 */
#define FO_WRITERS 3
#define SRV_INTERVAL_NS 10000000u /* one call per 10 ms per thread */
#define SRV_MAX_PHASE_S 5u
#define FO_DEADLINE_MS 1000u      /* per write in the failover */
#define MAX_PH 3
#define MAX_STOPPED 128

enum { K_REDIS, K_PG };
enum { M_STALL, M_FAILOVER };
static const char *const KIND_NAME[2] = {"Redis", "PostgreSQL"};
static const char *const PH_NAME[2][MAX_PH] = {{"healthy", "stalled", "resumed"},
                                               {"before", "failover", ""}};
static const int SIDES[2] = {SIDE_RESIL, SIDE_NAIVE};

typedef struct srv_worker {
  struct srv_run *run;
  int side, id;
  pthread_t thread;
  bool running;
  void *naive; /* redisContext * or PGconn * */
  _Atomic uint64_t call_start_ns;
  cell cells[MAX_PH];
} srv_worker;

typedef struct srv_run {
  int kind, mode, nphases, nworkers;
  void *client; /* resil_redis * or resil_pg * */
  resil_dep *dep;
  _Atomic int cur_phase;
  _Atomic uint64_t end_ns;
  uint64_t phase_start[MAX_PH + 1];
  _Atomic uint64_t first_reject[MAX_PH]; /* ns, UINT64_MAX: none */
  unsigned stuck[MAX_PH][NSIDES];
  resil_breaker_state breaker[MAX_PH];
  uint64_t trips[MAX_PH];
  /* Failover: the switch, and per side the first refusal (25006 / READONLY)
   * and the end of the first write on B started after the switch (ns,
   * UINT64_MAX: none); how many refusals. */
  _Atomic uint64_t t_switch; /* 0: not yet */
  _Atomic uint64_t refused_at[NSIDES], ok_on_b_at[NSIDES], refused[NSIDES];
  srv_worker w[NSIDES][SRV_WORKERS];
} srv_run;

static void atomic_min(_Atomic uint64_t *a, uint64_t v) {
  uint64_t cur = atomic_load(a);
  while (v < cur && !atomic_compare_exchange_weak(a, &cur, v)) {
  }
}

/* ---- Stalling a server: SIGSTOP it and its children ------------------------- */

static pid_t g_stopped[MAX_STOPPED];
static int g_nstopped;

static void srv_resume(void) {
  for (int i = 0; i < g_nstopped; i++) kill(g_stopped[i], SIGCONT);
  g_nstopped = 0;
}

/* The parent pid of pid from /proc, or -1. */
static pid_t proc_ppid(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  int ppid;
  if (!p || sscanf(p + 1, " %*c %d", &ppid) != 1) return -1;
  return (pid_t)ppid;
}

/* The server (redis-server, or the postmaster) and its children (the
 * PostgreSQL backends, each in a session of its own). */
static void srv_stall(pid_t root) {
  if (root <= 1) return; /* never kill(0 or -1, ...) */
  g_stopped[g_nstopped++] = root;
  kill(root, SIGSTOP); /* first: it forks no new backend while we look */
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d && (e = readdir(d)) && g_nstopped < MAX_STOPPED) {
    char *end;
    long v = strtol(e->d_name, &end, 10);
    if (*end || v <= 0 || proc_ppid((pid_t)v) != root) continue;
    g_stopped[g_nstopped++] = (pid_t)v;
    kill((pid_t)v, SIGSTOP);
  }
  if (d) closedir(d);
}

/* ---- One call per kind, mode and side --------------------------------------- */

typedef struct outcome {
  resil_status st;
  bool on_b;    /* failover: the write was done by B */
  bool refused; /* naive: 25006 / READONLY */
} outcome;

#ifdef BROWNOUT_HAVE_REDIS
static outcome redis_call(srv_worker *w) {
  srv_run *run = w->run;
  outcome o = {RESIL_E_FAILURE, false, false};
  bool fo = run->mode == M_FAILOVER;
  char key[32];
  snprintf(key, sizeof key, fo ? "brownout:failover:%d:%d" : "brownout:key", w->side, w->id);
  redisReply *reply = NULL;
  if (w->side == SIDE_RESIL) {
    resil_err err;
    o.st = resil_redis_command(run->client, resil_deadline_in_ms(fo ? FO_DEADLINE_MS : DEADLINE_MS),
                               fo ? 0 : RESIL_CALL_IDEMPOTENT, &reply, &err, fo ? "INCR %s" : "GET %s",
                               key);
  } else { /* plain hiredis: blocking, no timeout */
    redisContext *c = w->naive;
    reply = !c->err ? redisCommand(c, fo ? "INCR %s" : "GET %s", key) : NULL;
    o.st = reply && reply->type != REDIS_REPLY_ERROR ? RESIL_OK : RESIL_E_FAILURE;
    o.refused = reply && reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "READONLY", 8);
    if (c->err) redisReconnect(c);
  }
  o.on_b = fo && o.st == RESIL_OK; /* after the switch A refuses every write */
  if (reply) freeReplyObject(reply);
  return o;
}
#endif

#ifdef BROWNOUT_HAVE_PG
#define FO_INSERT "INSERT INTO brownout_failover (who) VALUES ($1) RETURNING host(inet_server_addr())"

static outcome pg_call(srv_worker *w) {
  srv_run *run = w->run;
  outcome o = {RESIL_E_FAILURE, false, false};
  bool fo = run->mode == M_FAILOVER;
  const char *who[] = {SIDE_NAME[w->side]};
  PGresult *res = NULL;
  if (w->side == SIDE_RESIL) {
    resil_err err;
    o.st = fo ? resil_pg_query(run->client, resil_deadline_in_ms(FO_DEADLINE_MS), 0, FO_INSERT, 1,
                               who, &res, &err)
              : resil_pg_query(run->client, resil_deadline_in_ms(DEADLINE_MS),
                               RESIL_CALL_IDEMPOTENT, "SELECT 1", 0, NULL, &res, &err);
  } else { /* plain libpq: no timeout; reconnects only when the connection broke */
    PGconn *c = w->naive;
    res = fo ? PQexecParams(c, FO_INSERT, 1, NULL, who, NULL, NULL, 0) : PQexec(c, "SELECT 1");
    o.st = PQresultStatus(res) == PGRES_TUPLES_OK ? RESIL_OK : RESIL_E_FAILURE;
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    o.refused = state && !strcmp(state, "25006");
    if (PQstatus(c) != CONNECTION_OK) PQreset(c);
  }
  o.on_b = fo && o.st == RESIL_OK && res && PQntuples(res) == 1 &&
           !strcmp(PQgetvalue(res, 0, 0), "127.0.0.1");
  PQclear(res);
  return o;
}

static void ignore_notice(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}
#endif

static void *srv_worker_main(void *arg) {
  srv_worker *w = arg;
  srv_run *run = w->run;
  uint64_t next = resil_now_ns();
  for (;;) {
    uint64_t now = resil_now_ns(), end_ns = atomic_load(&run->end_ns);
    if (now >= end_ns) break;
    if (now < next) {
      sleep_until_ns(min_u64(next, end_ns));
      continue;
    }
    next += SRV_INTERVAL_NS;
    if (next < now) next = now;
    int ph = atomic_load(&run->cur_phase);
    cell *c = &w->cells[ph];
    atomic_store(&w->call_start_ns, now);
    outcome o = {RESIL_E_FAILURE, false, false};
#ifdef BROWNOUT_HAVE_REDIS
    if (run->kind == K_REDIS) o = redis_call(w);
#endif
#ifdef BROWNOUT_HAVE_PG
    if (run->kind == K_PG) o = pg_call(w);
#endif
    uint64_t end = resil_now_ns();
    atomic_store(&w->call_start_ns, 0);
    c->done++;
    cell_add_latency(c, end - now);
    if (o.st == RESIL_OK) {
      c->ok++;
    } else if (resil_status_is_rejection(o.st)) {
      c->rejected++;
      atomic_min(&run->first_reject[ph], end);
    } else {
      c->failed++;
    }
    if (o.refused) {
      atomic_fetch_add(&run->refused[w->side], 1);
      atomic_min(&run->refused_at[w->side], end);
    }
    uint64_t t_switch = atomic_load(&run->t_switch);
    if (o.on_b && t_switch && now >= t_switch) atomic_min(&run->ok_on_b_at[w->side], end);
  }
  return NULL;
}

/* ---- The table ------------------------------------------------------------- */

static void srv_take_phase_end(srv_run *run, int ph, uint64_t *prev_trips) {
  uint64_t now = resil_now_ns();
  for (int s = 0; s < 2; s++) {
    unsigned n = 0;
    for (int i = 0; i < run->nworkers; i++) {
      uint64_t cs = atomic_load(&run->w[SIDES[s]][i].call_start_ns);
      if (cs && now > cs && now - cs >= STUCK_NS) n++;
    }
    run->stuck[ph][SIDES[s]] = n;
  }
  resil_dep_stats st;
  resil_dep_get_stats(run->dep, &st);
  run->breaker[ph] = st.breaker.state;
  run->trips[ph] = st.breaker.transitions[RESIL_BREAKER_OPEN] - *prev_trips;
  *prev_trips = st.breaker.transitions[RESIL_BREAKER_OPEN];
}

/* The columns after phase, side, done, ok, p50, p99, max: stalled: stuck,
 * breaker, fail-fast; failover: breaker, refused, recovered. */
static void srv_row_tail(const srv_run *run, int ph, int k, char *out, size_t n) {
  char br[40] = "none", b1[32], b2[32];
  if (k == SIDE_RESIL)
    snprintf(br, sizeof br, "%s (%" PRIu64 ")", resil_breaker_state_name(run->breaker[ph]),
             run->trips[ph]);
  if (run->mode == M_FAILOVER) {
    uint64_t r = atomic_load(&run->refused_at[k]), b = atomic_load(&run->ok_on_b_at[k]);
    const char *rec = !ph ? "" : b == UINT64_MAX ? "never" : r == UINT64_MAX ? "no refusal"
                                                  : fmt_dur(b2, sizeof b2, b > r ? b - r : 0);
    snprintf(out, n, "%-13s %7s %9s", br, ph ? fmt_count(b1, sizeof b1, atomic_load(&run->refused[k])) : "0",
             rec);
    return;
  }
  uint64_t fr = atomic_load(&run->first_reject[ph]);
  if (k != SIDE_RESIL || fr == UINT64_MAX)
    snprintf(b1, sizeof b1, k == SIDE_RESIL ? "-" : "never");
  else
    fmt_dur(b1, sizeof b1, fr > run->phase_start[ph] ? fr - run->phase_start[ph] : 0);
  snprintf(out, n, "%2u/%d %-13s %9s", run->stuck[ph][k], run->nworkers, br, b1);
}

static void srv_print_table(const srv_run *run) {
  bool fo = run->mode == M_FAILOVER;
  printf("  %-8s %-5s %6s %6s %7s %7s %7s %s\n", "phase", "side", "done", "ok", "p50", "p99",
         "max", fo ? "breaker       refused recovered" : "stuck breaker       fail-fast");
  for (int ph = 0; ph < run->nphases; ph++) {
    for (int s = 0; s < 2; s++) {
      int k = SIDES[s];
      static cell sum;
      memset(&sum, 0, sizeof sum);
      for (int i = 0; i < run->nworkers; i++) {
        const cell *c = &run->w[k][i].cells[ph];
        sum.done += c->done;
        sum.ok += c->ok;
        if (c->max_ns > sum.max_ns) sum.max_ns = c->max_ns;
        for (int b = 0; b < LAT_BUCKETS; b++) sum.hist[b] += c->hist[b];
      }
      char b1[32], b2[32], b3[32], b4[32], okp[16] = "-", tail[96];
      if (sum.done) snprintf(okp, sizeof okp, "%.1f%%", 100.0 * (double)sum.ok / (double)sum.done);
      srv_row_tail(run, ph, k, tail, sizeof tail);
      uint64_t p50 = min_u64(hist_quantile(sum.hist, sum.done, 0.50), sum.max_ns);
      uint64_t p99 = min_u64(hist_quantile(sum.hist, sum.done, 0.99), sum.max_ns);
      printf("  %-8s %-5s %6s %6s %7s %7s %7s %s\n", s == 0 ? PH_NAME[run->mode][ph] : "",
             SIDE_NAME[k], fmt_count(b1, sizeof b1, sum.done), okp,
             sum.done ? fmt_dur(b2, sizeof b2, p50) : "-", sum.done ? fmt_dur(b3, sizeof b3, p99) : "-",
             sum.done ? fmt_dur(b4, sizeof b4, sum.max_ns) : "-", tail);
    }
  }
  printf("\n");
}

/* ---- Setting a run up ---------------------------------------------------------- */

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

/* For the variables missing_env() checked: never NULL. */
static const char *need(const char *name) {
  const char *v = env(name);
  return v ? v : "";
}

/* A message into emsg; false, for `return fail(...)`. */
static bool fail(char *emsg, size_t n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static bool fail(char *emsg, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(emsg, n, fmt, ap);
  va_end(ap);
  return false;
}

static char g_hosts[256]; /* the failover's hosts file */

/* Replace the hosts file at once (rename), as a DNS update does. */
static bool put_hosts(const char *text) {
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp", g_hosts);
  FILE *f = fopen(tmp, "w");
  if (!f) return false;
  bool ok = fputs(text, f) >= 0;
  if (fclose(f) != 0) ok = false;
  return ok && rename(tmp, g_hosts) == 0;
}

/* Run one of servers.sh's start scripts ($RESIL_TEST_PG2_START...). */
static bool run_script(const char *var, char *emsg, size_t n) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "'%s'", need(var));
  return system(cmd) == 0 || fail(emsg, n, "%s (%s) failed", var, need(var));
}

#ifdef BROWNOUT_HAVE_PG
static bool pg_admin(const char *conninfo, const char *sql, char *emsg, size_t n) {
  char ci[512];
  snprintf(ci, sizeof ci, "%s connect_timeout=5", conninfo);
  PGconn *c = PQconnectdb(ci);
  PQsetNoticeProcessor(c, ignore_notice, NULL);
  PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
  ExecStatusType st = PQresultStatus(r);
  bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  if (!ok) snprintf(emsg, n, "'%s': %s", sql, r ? PQresultErrorMessage(r) : PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return ok;
}

/* A, the twin, writable (or read-only, as a demoted writer is). */
static bool pg_a_writable(bool on, char *emsg, size_t n) {
  const char *a = need("RESIL_TEST_PG2_ADMIN_CONNINFO");
  return pg_admin(a, on ? "ALTER SYSTEM RESET default_transaction_read_only"
                        : "ALTER SYSTEM SET default_transaction_read_only = on", emsg, n) &&
         pg_admin(a, "SELECT pg_reload_conf()", emsg, n);
}

static bool pg_failover_prepare(char *emsg, size_t n) {
  static const char *const sql[] = {
      "CREATE TABLE IF NOT EXISTS brownout_failover (id bigserial PRIMARY KEY, who text, "
      "at timestamptz DEFAULT now())",
      "GRANT ALL ON brownout_failover, brownout_failover_id_seq TO resil"};
  if (!run_script("RESIL_TEST_PG2_START", emsg, n) || !pg_a_writable(true, emsg, n)) return false;
  for (int i = 0; i < 2; i++)
    if (!pg_admin(need("RESIL_TEST_PG2_ADMIN_CONNINFO"), sql[i], emsg, n) ||
        !pg_admin(need("RESIL_TEST_PG_ADMIN_CONNINFO"), sql[i], emsg, n))
      return false;
  return true;
}
#endif

#ifdef BROWNOUT_HAVE_REDIS
static bool redis_admin(const char *host, const char *cmd, char *emsg, size_t n) {
  struct timeval tv = {.tv_sec = 5};
  redisContext *c = redisConnectWithTimeout(host, atoi(need("RESIL_TEST_REDIS_PORT")), tv);
  redisReply *r = c && !c->err && redisSetTimeout(c, tv) == REDIS_OK ? redisCommand(c, cmd) : NULL;
  bool ok = r && r->type != REDIS_REPLY_ERROR;
  if (!ok) snprintf(emsg, n, "%s: '%s': %s", host, cmd, r ? r->str : c ? c->errstr : "no memory");
  if (r) freeReplyObject(r);
  if (c) redisFree(c);
  return ok;
}
#endif

/* The variables a run needs (NULL: all there), so that it is skipped with a
 * note, not failed, without them. */
static const char *missing_env(int kind, int mode) {
  static const char *const need[2][2][4] = {
      {{"RESIL_TEST_REDIS_PORT", "RESIL_TEST_REDIS_PID"},
       {"RESIL_TEST_REDIS_PORT", "RESIL_TEST_REDIS2_ADDR", "RESIL_TEST_REDIS2_START"}},
      {{"RESIL_TEST_PG_CONNINFO", "RESIL_TEST_PG_PID"},
       {"RESIL_TEST_PG_PORT", "RESIL_TEST_PG_PASSWORD", "RESIL_TEST_PG2_START",
        "RESIL_TEST_PG_ADMIN_CONNINFO"}}};
  for (int i = 0; i < 4 && need[kind][mode][i]; i++)
    if (!env(need[kind][mode][i])) return need[kind][mode][i];
  if (kind == K_PG && mode == M_FAILOVER && !env("RESIL_TEST_PG2_ADMIN_CONNINFO"))
    return "RESIL_TEST_PG2_ADMIN_CONNINFO";
  return NULL;
}

static void srv_configs(resil_dep_config *c, resil_pool_config *p, int mode, unsigned phase_s) {
  if (mode == M_FAILOVER) { /* the library's defaults, and idle connections to A */
    p->max_size = 8;
    p->min_idle = 6;
    p->housekeeping_ms = 0;
    return;
  }
  c->timeout_ms = DEADLINE_MS;
  uint32_t pms = phase_s * 1000u, open_ms = pms / 20 < 100 ? 100 : pms / 20 > 500 ? 500 : pms / 20;
  c->breaker.consecutive_failures = 5;
  c->breaker.failure_rate_percent = 50;
  c->breaker.minimum_calls = 20;
  c->breaker.window_ms = pms < 10000 ? pms : 10000;
  c->breaker.open_ms = open_ms;
  c->breaker.open_max_ms = 2 * open_ms;
  c->limit.max_concurrent = SRV_WORKERS;
  c->limit.max_waiters = 0;
  c->retry.max_attempts = 3;
  c->retry.base_backoff_ms = 5;
  c->retry.max_backoff_ms = 50;
  c->retry.budget_percent = 20;
  p->max_size = SRV_WORKERS;
  p->connect_timeout_ms = DEADLINE_MS;
  p->acquire_timeout_ms = DEADLINE_MS;
  p->validate_timeout_ms = DEADLINE_MS;
  p->housekeeping_ms = 0;
}

/* Point the failover's name at addr (resil only: the naive clients connect
 * to addresses). */
static bool point_name(const char *addr, const char *name, bool first, char *emsg, size_t n) {
  char line[128];
  resil_err err;
  snprintf(line, sizeof line, "%s %s\n", addr, name);
  if (!put_hosts(line)) return fail(emsg, n, "cannot write %s: %s", g_hosts, strerror(errno));
  if (first && resil_resolve_set_hosts_file(g_hosts, &err) != RESIL_OK)
    return fail(emsg, n, "%s", err.msg);
  return true;
}

#ifdef BROWNOUT_HAVE_REDIS
static bool redis_open(srv_run *run, unsigned phase_s, char *emsg, size_t n) {
  bool fo = run->mode == M_FAILOVER;
  const char *a = fo ? need("RESIL_TEST_REDIS2_ADDR") : "127.0.0.1";
  int port = atoi(need("RESIL_TEST_REDIS_PORT"));
  if (fo && !(run_script("RESIL_TEST_REDIS2_START", emsg, n) &&
              redis_admin(a, "REPLICAOF NO ONE", emsg, n) &&
              point_name(a, "primary.brownout.test", true, emsg, n)))
    return false;
  resil_err err;
  resil_redis_config c;
  resil_redis_config_init(&c, fo ? "brownout-redis-writer" : "brownout-redis");
  c.host = fo ? "primary.brownout.test" : "127.0.0.1";
  c.port = (unsigned)port;
  c.connect_timeout_ms = DEADLINE_MS;
  srv_configs(&c.dep, &c.pool, run->mode, phase_s);
  if (!(run->client = resil_redis_new(&c, &err))) return fail(emsg, n, "%s", err.msg);
  run->dep = resil_redis_dep(run->client);
  if (fo && resil_pool_prewarm(resil_redis_pool(run->client), resil_deadline_in_ms(5000), &err))
    return fail(emsg, n, "%s", err.msg);
  for (int i = 0; i < run->nworkers; i++) { /* no timeout: the naive way */
    redisContext *rc = redisConnect(a, port);
    run->w[SIDE_NAIVE][i].naive = rc;
    if (!rc || rc->err) return fail(emsg, n, "cannot connect: %s", rc ? rc->errstr : "no memory");
  }
  return true;
}
#endif

#ifdef BROWNOUT_HAVE_PG
static bool pg_open(srv_run *run, unsigned phase_s, char *emsg, size_t n) {
  bool fo = run->mode == M_FAILOVER;
  char name_ci[512], a_ci[512];
  snprintf(name_ci, sizeof name_ci, "host=writer.brownout.test port=%s dbname=resil user=resil "
           "password=%s", need("RESIL_TEST_PG_PORT"), need("RESIL_TEST_PG_PASSWORD"));
  snprintf(a_ci, sizeof a_ci, "host=%s port=%s dbname=resil user=resil password=%s",
           need("RESIL_TEST_PG2_ADDR"), need("RESIL_TEST_PG_PORT"), need("RESIL_TEST_PG_PASSWORD"));
  if (fo && !(pg_failover_prepare(emsg, n) &&
              point_name(need("RESIL_TEST_PG2_ADDR"), "writer.brownout.test", true, emsg, n)))
    return false;
  resil_err err;
  resil_pg_config c;
  resil_pg_config_init(&c, fo ? "brownout-pg-writer" : "brownout-pg");
  c.conninfo = fo ? name_ci : need("RESIL_TEST_PG_CONNINFO");
  c.connect_timeout_ms = fo ? 500 : DEADLINE_MS;
  c.cancel_timeout_ms = DEADLINE_MS;
  srv_configs(&c.dep, &c.pool, run->mode, phase_s);
  if (!(run->client = resil_pg_new(&c, &err))) return fail(emsg, n, "%s", err.msg);
  run->dep = resil_pg_dep(run->client);
  if (fo && resil_pool_prewarm(resil_pg_pool(run->client), resil_deadline_in_ms(5000), &err))
    return fail(emsg, n, "%s", err.msg);
  for (int i = 0; i < run->nworkers; i++) { /* no connect_timeout: the naive way */
    PGconn *pc = PQconnectdb(fo ? a_ci : need("RESIL_TEST_PG_CONNINFO"));
    run->w[SIDE_NAIVE][i].naive = pc;
    if (PQstatus(pc) != CONNECTION_OK) return fail(emsg, n, "cannot connect: %s", PQerrorMessage(pc));
    PQsetNoticeProcessor(pc, ignore_notice, NULL);
  }
  return true;
}
#endif

/* The resil client and the naive connections of a run (for the failover:
 * after its servers are prepared and the name points at A). */
static bool srv_open(srv_run *run, unsigned phase_s, char *emsg, size_t n) {
#ifdef BROWNOUT_HAVE_REDIS
  if (run->kind == K_REDIS) return redis_open(run, phase_s, emsg, n);
#endif
#ifdef BROWNOUT_HAVE_PG
  if (run->kind == K_PG) return pg_open(run, phase_s, emsg, n);
#endif
  return fail(emsg, n, "not built");
}

/* The failover: the name moves to B, and A is demoted at once (the name
 * first: were it still on A, a re-resolution would find A again, as during
 * a DNS update's lag, when no write can succeed anywhere). */
static bool srv_switch(srv_run *run, char *emsg, size_t n) {
  if (!point_name("127.0.0.1", run->kind == K_PG ? "writer.brownout.test" : "primary.brownout.test",
                  false, emsg, n))
    return false;
#ifdef BROWNOUT_HAVE_PG
  if (run->kind == K_PG) return pg_a_writable(false, emsg, n);
#endif
#ifdef BROWNOUT_HAVE_REDIS
  char cmd[64];
  snprintf(cmd, sizeof cmd, "REPLICAOF 127.0.0.1 %s", need("RESIL_TEST_REDIS_PORT"));
  return redis_admin(need("RESIL_TEST_REDIS2_ADDR"), cmd, emsg, n);
#endif
  return false;
}

/* The refusals the resil client's adapter saw (it replays them). */
static uint64_t resil_refusals(const srv_run *run, uint64_t *replays) {
#ifdef BROWNOUT_HAVE_PG
  if (run->kind == K_PG) {
    resil_pg_stats st;
    resil_pg_get_stats(run->client, &st);
    *replays = st.replays;
    return st.read_only;
  }
#endif
#ifdef BROWNOUT_HAVE_REDIS
  resil_redis_stats st;
  resil_redis_get_stats(run->client, &st);
  *replays = st.replays;
  return st.read_only;
#endif
  return 0;
}

static void srv_close(srv_run *run) {
  char emsg[256];
  for (int i = 0; i < run->nworkers; i++) {
    void *c = run->w[SIDE_NAIVE][i].naive;
#ifdef BROWNOUT_HAVE_REDIS
    if (c && run->kind == K_REDIS) redisFree(c);
#endif
#ifdef BROWNOUT_HAVE_PG
    if (run->kind == K_PG) PQfinish(c);
#endif
  }
  if (run->client) {
#ifdef BROWNOUT_HAVE_REDIS
    if (run->kind == K_REDIS) resil_redis_free(run->client);
#endif
#ifdef BROWNOUT_HAVE_PG
    if (run->kind == K_PG) resil_pg_free(run->client);
#endif
  }
  if (run->mode != M_FAILOVER) return;
  /* A writable again, the name back to DNS. */
#ifdef BROWNOUT_HAVE_PG
  if (run->kind == K_PG && !pg_a_writable(true, emsg, sizeof emsg))
    fprintf(stderr, "brownout: PostgreSQL failover: undo: %s\n", emsg);
#endif
#ifdef BROWNOUT_HAVE_REDIS
  if (run->kind == K_REDIS &&
      !redis_admin(need("RESIL_TEST_REDIS2_ADDR"), "REPLICAOF NO ONE", emsg, sizeof emsg))
    fprintf(stderr, "brownout: Redis failover: undo: %s\n", emsg);
#endif
  (void)emsg;
  resil_resolve_set_hosts_file(NULL, NULL);
  resil_resolve_set_ttl_ms(5000);
  unlink(g_hosts);
}

/* ---- Running one ------------------------------------------------------------ */

static void srv_describe(const srv_run *run, unsigned phase_s, unsigned fo_s) {
  bool pg = run->kind == K_PG;
  if (run->mode == M_STALL) {
    printf("  %s stalled: the server on 127.0.0.1:%s (pid %s), healthy -> stalled (it and its\n"
           "  children SIGSTOPped) -> resumed (SIGCONT), %u s each; %d threads per side, %s at\n"
           "  up to %d/s per side\n"
           "  resil: %s, %u ms deadline, breaker, pool of %d connections\n"
           "  naive: one connection per thread, blocking %s, no timeout\n\n",
           KIND_NAME[run->kind], pg ? need("RESIL_TEST_PG_PORT") : need("RESIL_TEST_REDIS_PORT"),
           pg ? need("RESIL_TEST_PG_PID") : need("RESIL_TEST_REDIS_PID"), phase_s, SRV_WORKERS,
           pg ? "SELECT 1" : "GET", (int)(SRV_WORKERS * (1000000000u / SRV_INTERVAL_NS)),
           pg ? "resil_pg_query()" : "resil_redis_command()", DEADLINE_MS, SRV_WORKERS,
           pg ? "libpq PQexec()" : "hiredis redisCommand()");
    return;
  }
  printf("  %s failover: the writer A on %s, B on 127.0.0.1 (port %s). After 1 s the name\n"
         "  %s.brownout.test moves from A to B (hosts file, resolver TTL 60 s) and A is\n"
         "  demoted at once, so that writes get %s:\n"
         "  %s; then %u s more.\n"
         "  %d writer threads per side, %s every 10 ms each\n"
         "  resil: %s through the name, %u ms deadline, the library's defaults\n"
         "  naive: one connection per thread to A, opened when the name pointed there\n"
         "  (as libpq and hiredis resolve once, at connect); reconnects when it breaks\n\n",
         KIND_NAME[run->kind], pg ? need("RESIL_TEST_PG2_ADDR") : need("RESIL_TEST_REDIS2_ADDR"),
         pg ? need("RESIL_TEST_PG_PORT") : need("RESIL_TEST_REDIS_PORT"), pg ? "writer" : "primary",
         pg ? "25006" : "READONLY",
         pg ? "ALTER SYSTEM SET default_transaction_read_only = on + pg_reload_conf()"
            : "REPLICAOF B",
         fo_s, FO_WRITERS, pg ? "INSERT ... RETURNING the server" : "INCR",
         pg ? "resil_pg_query()" : "resil_redis_command()", FO_DEADLINE_MS);
}

/* The phases, with the workers running: 0, or 1 if a worker or the switch failed. */
static int srv_phases(srv_run *run, const uint64_t *len, pid_t pid, char *emsg, size_t n) {
  uint64_t t0 = resil_now_ns(), total = 0, prev_trips = 0, replays = 0, base = 0;
  for (int ph = 0; ph < run->nphases; ph++) total += len[ph];
  atomic_store(&run->end_ns, t0 + total);
  run->phase_start[0] = t0;
  int rc = 0;
  for (int s = 0; s < 2 && rc == 0; s++)
    for (int i = 0; i < run->nworkers && rc == 0; i++) {
      srv_worker *w = &run->w[SIDES[s]][i];
      *w = (srv_worker){.run = run, .side = SIDES[s], .id = i, .naive = w->naive};
      if (pthread_create(&w->thread, NULL, srv_worker_main, w) != 0) {
        snprintf(emsg, n, "cannot start a worker thread");
        atomic_store(&run->end_ns, resil_now_ns());
        rc = 1;
      }
      w->running = rc == 0;
    }
  uint64_t pend = t0;
  for (int ph = 0; ph < run->nphases && rc == 0; ph++) {
    printf("  phase %d/%d: %s (%.1f s)\n", ph + 1, run->nphases, PH_NAME[run->mode][ph],
           (double)len[ph] / 1e9);
    pend += len[ph];
    if (run->mode == M_FAILOVER && ph == 1) { /* watch for resil's first refusal */
      for (uint64_t now; (now = resil_now_ns()) < pend; sleep_until_ns(min_u64(now + 1000000, pend)))
        if (atomic_load(&run->refused_at[SIDE_RESIL]) == UINT64_MAX &&
            resil_refusals(run, &replays) > base)
          atomic_store(&run->refused_at[SIDE_RESIL], now);
      atomic_store(&run->refused[SIDE_RESIL], resil_refusals(run, &replays) - base);
    }
    sleep_until_ns(pend);
    srv_take_phase_end(run, ph, &prev_trips);
    if (run->mode == M_STALL && ph == 0) srv_stall(pid);
    if (run->mode == M_STALL && ph == 1) srv_resume();
    run->phase_start[ph + 1] = resil_now_ns();
    if (ph + 1 < run->nphases) atomic_store(&run->cur_phase, ph + 1);
    if (run->mode == M_FAILOVER && ph == 0) { /* the failover phase begins with the switch */
      base = resil_refusals(run, &replays);
      if (!srv_switch(run, emsg, n)) rc = 1;
      atomic_store(&run->t_switch, resil_now_ns());
    }
  }
  if (rc) atomic_store(&run->end_ns, resil_now_ns());
  srv_resume(); /* never join with the server stopped: naive calls would wait forever */
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < run->nworkers; i++)
      if (run->w[SIDES[s]][i].running) pthread_join(run->w[SIDES[s]][i].thread, NULL);
  return rc;
}

/* One kind in one mode: 0 (done or skipped with a note), or 1 on a run-time error. */
static int run_one(int kind, int mode, unsigned phase_s) {
  static srv_run R; /* large (histograms); zeroed per use */
  srv_run *run = &R;
  memset(run, 0, sizeof *run);
  *run = (srv_run){.kind = kind, .mode = mode, .nphases = mode == M_STALL ? 3 : 2,
                   .nworkers = mode == M_STALL ? SRV_WORKERS : FO_WRITERS};
  for (int i = 0; i < MAX_PH; i++) atomic_init(&run->first_reject[i], UINT64_MAX);
  for (int k = 0; k < NSIDES; k++) {
    atomic_init(&run->refused_at[k], UINT64_MAX);
    atomic_init(&run->ok_on_b_at[k], UINT64_MAX);
  }
  const char *what = mode == M_STALL ? "stalled" : "failover";
  const char *gone = missing_env(kind, mode);
  if (gone) {
    printf("  %s %s: skipped (%s is not set: scripts/demo.sh --with-servers starts the\n"
           "  servers with scripts/lib/servers.sh and runs the demo with its variables)\n\n",
           KIND_NAME[kind], what, gone);
    return 0;
  }
  unsigned fo_s = phase_s < 2 ? 2 : phase_s;
  uint64_t s = 1000000000ull, len[MAX_PH] = {phase_s * s, phase_s * s, phase_s * s};
  if (mode == M_FAILOVER) len[0] = s, len[1] = fo_s * s;
  snprintf(g_hosts, sizeof g_hosts, "%s/brownout-hosts-%d",
           env("RESIL_TEST_TMPDIR") ? env("RESIL_TEST_TMPDIR") : "/tmp", (int)getpid());
  if (mode == M_FAILOVER) resil_resolve_set_ttl_ms(60000);
  srv_describe(run, phase_s, fo_s);
  char emsg[600] = "";
  pid_t pid = (pid_t)atoi(need(kind == K_PG ? "RESIL_TEST_PG_PID" : "RESIL_TEST_REDIS_PID"));
  int rc = !srv_open(run, phase_s, emsg, sizeof emsg) || srv_phases(run, len, pid, emsg, sizeof emsg);
  if (rc) {
    fprintf(stderr, "brownout: --with-servers: %s %s: %s\n", KIND_NAME[kind], what, emsg);
  } else {
    printf("\n");
    srv_print_table(run);
  }
  if (rc == 0 && mode == M_FAILOVER) {
    uint64_t replays = 0, refusals = resil_refusals(run, &replays);
    resil_dep_stats ds;
    resil_dep_get_stats(run->dep, &ds);
    printf("  resil saw %" PRIu64 " refusal%s in all and sent %" PRIu64 " of them again at once "
           "on a new connection\n  (the name resolved afresh); its breaker opened %" PRIu64
           " time%s.\n\n",
           refusals, refusals == 1 ? "" : "s", replays, ds.breaker.transitions[RESIL_BREAKER_OPEN],
           ds.breaker.transitions[RESIL_BREAKER_OPEN] == 1 ? "" : "s");
  }
  srv_close(run);
  return rc;
}

int run_servers_section(unsigned phase_s) {
  phase_s = phase_s < SRV_MAX_PHASE_S ? phase_s : SRV_MAX_PHASE_S;
  int rc = 0;
  printf("---- --with-servers: real Redis / PostgreSQL servers, stalled with SIGSTOP ----\n");
  for (int kind = K_REDIS; kind <= K_PG; kind++) {
#ifndef BROWNOUT_HAVE_REDIS
    if (kind == K_REDIS) {
      printf("  Redis: skipped (this build has no resil-redis: hiredis was not found)\n\n");
      continue;
    }
#endif
#ifndef BROWNOUT_HAVE_PG
    if (kind == K_PG) {
      printf("  PostgreSQL: skipped (this build has no resil-pg: libpq was not found)\n\n");
      continue;
    }
#endif
    rc |= run_one(kind, M_STALL, phase_s);
  }
  printf("  done: calls started in the phase that completed (any outcome); stuck: threads in\n"
         "  one call for over 1 s at the phase's end; breaker: state at the phase's end (times\n"
         "  it opened in the phase); fail-fast: phase start to the first local rejection.\n"
         "  Naive calls stuck on the stopped server end when it is continued (SIGCONT).\n\n");
  printf("---- failover: the writer's name moves to another server, the old one turns "
         "read-only ----\n");
  for (int kind = K_PG; kind >= K_REDIS; kind--) {
#ifndef BROWNOUT_HAVE_REDIS
    if (kind == K_REDIS) continue;
#endif
#ifndef BROWNOUT_HAVE_PG
    if (kind == K_PG) continue;
#endif
    rc |= run_one(kind, M_FAILOVER, phase_s);
  }
  printf("  refused: writes refused as the old writer's (25006 / READONLY; resil's are the ones\n"
         "  its adapter saw and sent again, not failures); recovered: from a side's first\n"
         "  refusal to the end of its first write on the new writer.\n\n");
  return rc;
}
#endif /* BROWNOUT_HAVE_REDIS || BROWNOUT_HAVE_PG */
