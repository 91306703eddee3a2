/* examples/ecs_service end to end: the example binary (RESIL_ECS_SERVICE, built
 * by meson from examples/ecs_service.c) runs as a child process configured only
 * through its environment, against the Redis and PostgreSQL servers that
 * scripts/test.sh starts (RESIL_TEST_REDIS_PORT, RESIL_TEST_PG_CONNINFO) and a
 * testhttpd this test starts (RESIL_TESTHTTPD) as its upstream. The test talks
 * plain HTTP/1.1 to it on 127.0.0.1.
 *
 * Without the RESIL_TEST_* variables a test fails under CI (the harness is
 * broken) and skips otherwise. Timing assertions have generous slack (loaded
 * 2-core VMs, sanitizers) but each still tells the behaviour apart from its
 * absence: e.g. a 100 ms grpc-timeout must end well before the 300 ms default. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sys/stat.h>

#include "../http/procs.h"
#include "minijson.h"
#include "testutil.h"

#define SLACK_MS (200 * (int)test_build_mult()) /* added to every "within N ms" bound */

/* ---- Environment --------------------------------------------------------------------- */

/* Set by meson (tests/integration/ecs/meson.build): missing means a broken build. */
static const char *meson_env(const char *name) {
  const char *v = test_env(name);
  if (!v) fail_msg("%s is not set (meson sets it: run through `meson test`)", name);
  return v;
}

/* ---- The service as a child process ---------------------------------------------------- */

typedef struct svc {
  pid_t pid;
  uint16_t port;
  char out[256], err[256]; /* files holding its stdout (EMF) and stderr (logs) */
} svc;

static char tmpdir[128];
static pid_t spawned[64]; /* every child spawned: teardown stops those a failed test left */
static size_t nspawned;
static child upstream;   /* testhttpd */
static uint16_t upstream_port;
static svc main_svc;     /* shared by most tests, started on first use */

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return strdup("");
  char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  fclose(f);
  if (buf) buf[n] = '\0';
  return buf;
}

/* Spawn the example with the base configuration plus `extra` (NULL-terminated
 * KEY=VALUE list of keys not in the base). The outer
 * environment is passed on (sanitizer options...) except RESIL_* (the service
 * rejects RESIL_ variables it does not know, e.g. RESIL_TEST_*) and the
 * example's own keys. */
static void svc_spawn_out(svc *s, const char *const *extra, int stdout_fd);
static void svc_spawn(svc *s, const char *const *extra) { svc_spawn_out(s, extra, -1); }

/* stdout_fd >= 0: the child's stdout is that fd (else a file, s->out). */
static void svc_spawn_out(svc *s, const char *const *extra, int stdout_fd) {
  static int seq;
  const char *redis_port = need_env("RESIL_TEST_REDIS_PORT");
  const char *conninfo = need_env("RESIL_TEST_PG_CONNINFO");
  const char *exe = meson_env("RESIL_ECS_SERVICE");
  if (!upstream_port) {
    upstream_port = testhttpd_start(&upstream, meson_env("RESIL_TESTHTTPD"));
    if (!upstream_port) fail_msg("testhttpd did not start");
  }
  if (!tmpdir[0]) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/resil-ecs-test.XXXXXX");
    if (!mkdtemp(tmpdir)) fail_msg("mkdtemp: %s", strerror(errno));
  }
  static char base[8][640];
  snprintf(base[0], sizeof base[0], "RESIL_DEPS=cache:redis,db:pg,upstream:http");
  snprintf(base[1], sizeof base[1], "RESIL_DEP_CACHE_HOST=127.0.0.1");
  snprintf(base[2], sizeof base[2], "RESIL_DEP_CACHE_PORT=%s", redis_port);
  snprintf(base[3], sizeof base[3], "RESIL_DEP_DB_CONNINFO=%s", conninfo);
  snprintf(base[4], sizeof base[4], "RESIL_DEP_UPSTREAM_BASE_URL=http://127.0.0.1:%u",
           upstream_port);
  snprintf(base[5], sizeof base[5], "RESIL_SERVICE=ecs-example-test");
  snprintf(base[6], sizeof base[6], "PORT=0"); /* any free port: read back from its log */
  snprintf(base[7], sizeof base[7], "BIND_ADDR=127.0.0.1");
  const char *envp[128];
  size_t n = 0;
  for (size_t i = 0; extra && extra[i] && n < 40; i++) envp[n++] = extra[i];
  for (size_t i = 0; i < 8; i++) { /* an extra KEY=... replaces the base's */
    size_t kl = strcspn(base[i], "=") + 1;
    bool overridden = false;
    for (size_t k = 0; extra && extra[k]; k++)
      if (strncmp(extra[k], base[i], kl) == 0) overridden = true;
    if (!overridden) envp[n++] = base[i];
  }
  for (char **e = environ; *e && n < 127; e++)
    if (strncmp(*e, "RESIL_", 6) != 0 && strncmp(*e, "PORT=", 5) != 0 &&
        strncmp(*e, "BIND_ADDR=", 10) != 0 && strncmp(*e, "REQUEST_DEADLINE_MS=", 20) != 0)
      envp[n++] = *e;
  envp[n] = NULL;

  seq++;
  snprintf(s->out, sizeof s->out, "%s/svc%d.out", tmpdir, seq);
  snprintf(s->err, sizeof s->err, "%s/svc%d.err", tmpdir, seq);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (stdout_fd >= 0)
    posix_spawn_file_actions_adddup2(&fa, stdout_fd, STDOUT_FILENO);
  else
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, s->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, s->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  const char *argv[] = {exe, NULL};
  int rc = posix_spawn(&s->pid, exe, &fa, NULL, (char *const *)(uintptr_t)argv,
                       (char *const *)(uintptr_t)envp);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) fail_msg("spawn %s: %s", exe, strerror(rc));
  if (nspawned < sizeof spawned / sizeof spawned[0]) spawned[nspawned++] = s->pid;
  s->port = 0;
}

/* Wait up to timeout_ms for the child to exit; its wait status, or -1. */
static int svc_wait_exit(svc *s, int timeout_ms) {
  double t0 = t_now_ms();
  int st;
  while (t_now_ms() - t0 < timeout_ms) {
    if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
      s->pid = 0;
      return st;
    }
    t_sleep_ms(5);
  }
  return -1;
}

static void svc_kill(svc *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGTERM);
  if (svc_wait_exit(s, 10000) == -1) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
  }
}

/* ---- A tiny HTTP/1.1 client ---------------------------------------------------------- */

typedef struct resp {
  int status;       /* 0: no response */
  char head[2048];  /* status line + headers */
  char body[8192];
  double ms;        /* from connect to the end of the response */
} resp;

/* Write req on a new connection to port, read the whole response (the server closes). */
static int send_raw(uint16_t port, const char *req, size_t len) {
  int fd = tcp_dial(port);
  if (fd < 0) return -1;
  if (len && write(fd, req, len) != (ssize_t)len) {
    close(fd);
    return -1;
  }
  return fd;
}

static void read_resp(int fd, resp *r, double t0) {
  static char buf[16384];
  size_t len = 0;
  memset(r, 0, sizeof *r);
  if (fd < 0) return; /* could not connect: status 0 */
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0) break;
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
    if (len == sizeof buf - 1) break;
  }
  r->ms = t_now_ms() - t0;
  close(fd);
  buf[len] = '\0';
  char *e = strstr(buf, "\r\n\r\n");
  if (!e || sscanf(buf, "HTTP/1.1 %d", &r->status) != 1) return;
  snprintf(r->head, sizeof r->head, "%.*s", (int)(e - buf), buf);
  snprintf(r->body, sizeof r->body, "%s", e + 4);
}

/* method path with optional extra header lines ("Name: v\r\n") and body. */
static resp *req(uint16_t port, const char *method, const char *path, const char *headers,
                 const char *body) {
  static resp r;
  static char msg[16384];
  size_t blen = body ? strlen(body) : 0;
  int n = snprintf(msg, sizeof msg, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %zu\r\n\r\n%s",
                   method, path, headers ? headers : "", blen, body ? body : "");
  assert_true(n > 0 && (size_t)n < sizeof msg);
  double t0 = t_now_ms();
  int fd = send_raw(port, msg, (size_t)n);
  if (fd < 0) {
    memset(&r, 0, sizeof r);
    return &r;
  }
  read_resp(fd, &r, t0);
  return &r;
}

static resp *get(uint16_t port, const char *path) { return req(port, "GET", path, NULL, NULL); }

/* The header's value (up to the line end) in r->head, or NULL. */
static const char *header(const resp *r, const char *name) {
  static char v[256];
  const char *h = strcasestr(r->head, name);
  if (!h || h[strlen(name)] != ':') return NULL;
  h += strlen(name) + 1;
  h += strspn(h, " ");
  snprintf(v, sizeof v, "%.*s", (int)strcspn(h, "\r\n"), h);
  return v;
}

#define assert_status(r, code)                                                                  \
  do {                                                                                          \
    if ((r)->status != (code))                                                                  \
      fail_msg("expected HTTP %d, got %d: %s\n%s", (code), (r)->status, (r)->head, (r)->body); \
  } while (0)

#define assert_contains(hay, needle)                                                        \
  do {                                                                                      \
    if (!strstr((hay), (needle))) fail_msg("'%s' not found in: %s", (needle), (hay));       \
  } while (0)

/* Wait for "listening on 127.0.0.1:<port>" in its log, then for `path` to answer 200. */
static void svc_wait_ready(svc *s, const char *path) {
  double t0 = t_now_ms();
  while (!s->port) {
    char *log = slurp(s->err);
    const char *l = strstr(log, "listening on 127.0.0.1:");
    if (l) s->port = (uint16_t)atoi(l + strlen("listening on 127.0.0.1:"));
    free(log);
    if (s->port) break;
    int st;
    if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
      s->pid = 0;
      char *e = slurp(s->err);
      fail_msg("ecs_service exited (status %d) before listening:\n%s", st, e);
    }
    if (t_now_ms() - t0 > 15000) fail_msg("ecs_service did not log 'listening on' in 15 s");
    t_sleep_ms(10);
  }
  while (get(s->port, path)->status != 200) {
    if (t_now_ms() - t0 > 15000) fail_msg("%s did not answer 200 within 15 s", path);
    t_sleep_ms(20);
  }
}

/* The shared instance: 300 ms request deadline, a pre-warmed critical database (so
 * /ready waits for it), an upstream breaker that trips after 3 failures in a row,
 * EMF every second. */
static svc *shared(void) {
  if (main_svc.pid > 0) return &main_svc;
  const char *extra[] = {"REQUEST_DEADLINE_MS=300",
                         "RESIL_DEP_DB_CRITICAL=true",
                         "RESIL_DEP_DB_POOL_MIN_IDLE=1",
                         "RESIL_DEP_UPSTREAM_BREAKER_CONSECUTIVE_FAILURES=3",
                         "RESIL_EMF_INTERVAL_MS=1000",
                         "RESIL_EMF_NAMESPACE=ecs-example",
                         "RESIL_DRAIN_GRACE_MS=100",
                         NULL};
  svc_spawn(&main_svc, extra);
  svc_wait_ready(&main_svc, "/ready");
  return &main_svc;
}

/* ---- A hostile upstream ------------------------------------------------------------- */

/* A loopback HTTP server that answers every request with one canned response chosen by the
 * request path (see hostile_reply), to show what the example forwards to its client. One
 * connection at a time, each bounded to 2 s; stopped by closing its listener. */
typedef struct hostile {
  int lfd;
  uint16_t port;
  pthread_t th;
} hostile;

static const char *hostile_reply(const char *req) {
  static char longct[1200];
  if (strstr(req, "GET /longct ")) { /* a legal but 600-byte Content-Type */
    char a[601];
    memset(a, 'a', 600);
    a[600] = '\0';
    snprintf(longct, sizeof longct,
             "HTTP/1.1 200 OK\r\nContent-Type: text/plain; x=%s\r\nContent-Length: 2\r\n"
             "Connection: close\r\n\r\nok", a);
    return longct;
  }
  if (strstr(req, "GET /crct ")) /* a bare CR inside the value: a header for our client */
    return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\rSet-Cookie: evil=1\r\n"
           "Content-Length: 2\r\nConnection: close\r\n\r\nok";
  if (strstr(req, "GET /ctlct ")) /* a control character other than CR/LF */
    return "HTTP/1.1 200 OK\r\nContent-Type: text/pl\x01ain\r\nContent-Length: 2\r\n"
           "Connection: close\r\n\r\nok";
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
         "Connection: close\r\n\r\nok";
}

static void *hostile_main(void *arg) {
  hostile *h = arg;
  for (;;) {
    int c = accept(h->lfd, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR) continue;
      return NULL; /* the listener was shut down */
    }
    char req[4096];
    size_t len = 0;
    double t0 = t_now_ms();
    while (len < sizeof req - 1 && t_now_ms() - t0 < 2000) {
      struct pollfd p = {.fd = c, .events = POLLIN};
      if (poll(&p, 1, 100) <= 0) continue;
      ssize_t n = read(c, req + len, sizeof req - 1 - len);
      if (n <= 0) break;
      len += (size_t)n;
      req[len] = '\0';
      if (strstr(req, "\r\n\r\n")) break;
    }
    req[len] = '\0';
    const char *r = hostile_reply(req);
    if (write(c, r, strlen(r)) < 0) { /* the client went away */ }
    close(c);
  }
}

static void hostile_start(hostile *h) {
  h->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (h->lfd < 0 || bind(h->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(h->lfd, 16) != 0 ||
      getsockname(h->lfd, (struct sockaddr *)&a, &al) != 0)
    fail_msg("hostile upstream: %s", strerror(errno));
  h->port = ntohs(a.sin_port);
  if (pthread_create(&h->th, NULL, hostile_main, h) != 0) fail_msg("hostile upstream: thread");
}

static void hostile_stop(hostile *h) {
  shutdown(h->lfd, SHUT_RDWR); /* wakes accept() */
  pthread_join(h->th, NULL);
  close(h->lfd);
}

/* The whole response as bytes: head, body, and anything after. */
static size_t raw_exchange(uint16_t port, const char *request, char *out, size_t cap) {
  int fd = send_raw(port, request, strlen(request));
  size_t len = 0;
  if (fd < 0) return 0;
  double t0 = t_now_ms();
  while (len < cap - 1 && t_now_ms() - t0 < 10000) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0) break;
    ssize_t n = read(fd, out + len, cap - 1 - len);
    if (n <= 0) break;
    len += (size_t)n;
  }
  close(fd);
  out[len] = '\0';
  return len;
}

/* ---- Tests -------------------------------------------------------------------------- */

static void cache_put_get_round_trip(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  char path[96], missing[96];
  snprintf(path, sizeof path, "/cache/ecs-test:%d", (int)getpid());
  snprintf(missing, sizeof missing, "/cache/ecs-test-missing:%d", (int)getpid());
  assert_status(req(port, "PUT", path, NULL, "hello from ecs"), 204);
  resp *r = get(port, path);
  assert_status(r, 200);
  assert_string_equal(r->body, "hello from ecs");
  r = get(port, missing); /* Redis nil */
  assert_status(r, 404);
  assert_contains(r->body, "\"error\":\"not_found\"");
  assert_status(get(port, "/cache/bad%20key"), 400); /* not a valid key: never sent */
  assert_status(req(port, "DELETE", path, NULL, NULL), 405);
}

static void db_now_answers(void **state) {
  (void)state;
  resp *r = get(shared()->port, "/db/now");
  assert_status(r, 200);
  assert_contains(r->body, "{\"now\":\"20");
  r = get(shared()->port, "/db/sleep?ms=10");
  assert_status(r, 200);
  assert_string_equal(r->body, "{\"slept_ms\":10}");
  assert_status(get(shared()->port, "/db/sleep?ms=abc"), 400);
}

/* REQUEST_DEADLINE_MS=300 cuts a 2 s query: 504 at ~300 ms, not 2 s. */
static void slow_query_hits_the_request_deadline(void **state) {
  (void)state;
  resp *r = get(shared()->port, "/db/sleep?ms=2000");
  assert_status(r, 504);
  assert_contains(r->body, "\"error\":\"timeout\"");
  assert_contains(r->body, "\"detail\":\"db: ");
  if (r->ms < 250 || r->ms > 300 + SLACK_MS) fail_msg("504 after %.0f ms, expected ~300", r->ms);
  /* the database is still usable afterwards (the timed-out connection was replaced) */
  assert_status(get(shared()->port, "/db/now"), 200);
}

/* An inbound grpc-timeout shortens the deadline; a longer one does not extend it. */
static void inbound_grpc_timeout_is_inherited(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  resp *r = req(port, "GET", "/db/sleep?ms=2000", "grpc-timeout: 100m\r\n", NULL);
  assert_status(r, 504);
  /* 100 ms, and clearly not the 300 ms default (nor 2 s) */
  if (r->ms < 80 || r->ms > 100 + 150) fail_msg("504 after %.0f ms, expected ~100", r->ms);
  r = req(port, "GET", "/db/sleep?ms=2000", "grpc-timeout: 10S\r\n", NULL);
  assert_status(r, 504);
  if (r->ms > 300 + SLACK_MS) fail_msg("504 after %.0f ms: the 300 ms default must win", r->ms);
  assert_status(req(port, "GET", "/db/now", "grpc-timeout: soon\r\n", NULL), 400);
}

static void upstream_statuses_map_to_http(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  resp *r = get(port, "/upstream/fast");
  assert_status(r, 200);
  assert_string_equal(r->body, "ok");
  r = get(port, "/upstream/status/404"); /* the upstream's 404 is the caller's */
  assert_status(r, 404);
  assert_contains(r->body, "\"error\":\"caller\"");
  uint64_t t_ra = test_now_ms();
  r = get(port, "/upstream/retry-after?s=2&code=503"); /* overload: shed, with its hint */
  assert_status(r, 503);
  assert_contains(r->body, "\"error\":\"overload\"");
  assert_non_null(header(r, "Retry-After"));
  assert_string_equal(header(r, "Retry-After"), "2");
  /* The upstream's Retry-After paused every call to it for 2 s: refused at
   * once as "paused", passing the time left on. */
  r = get(port, "/upstream/fast");
  assert_status(r, 503);
  assert_contains(r->body, "\"error\":\"paused\"");
  assert_non_null(header(r, "Retry-After"));
  if (atoi(header(r, "Retry-After")) < 1 || atoi(header(r, "Retry-After")) > 2)
    fail_msg("Retry-After %s, expected the pause's 2 s", header(r, "Retry-After"));
  /* then served again once the pause is over (this resets the consecutive failures) */
  assert_true(TEST_WAIT_UNTIL(get(port, "/upstream/fast")->status == 200, 2000 + SLACK_MS));
  if (test_now_ms() - t_ra < 2000) fail_msg("served %llu ms after a 2 s Retry-After",
                                            (unsigned long long)(test_now_ms() - t_ra));
  for (int i = 0; i < 3; i++) { /* an upstream 503 is a dependency failure: 502 */
    r = get(port, "/upstream/status/503");
    assert_status(r, 502);
    assert_contains(r->body, "\"error\":\"failure\"");
    assert_contains(r->body, "HTTP 503");
  }
  /* 3 failures in a row tripped the breaker: rejected at once, 503 + Retry-After */
  r = get(port, "/upstream/fast");
  assert_status(r, 503);
  assert_contains(r->body, "\"error\":\"breaker_open\"");
  const char *ra = header(r, "Retry-After");
  assert_non_null(ra);
  if (atoi(ra) < 2 || atoi(ra) > 7) fail_msg("Retry-After %s, expected the break (5 s)", ra);
  if (r->ms > 50 + SLACK_MS) fail_msg("a breaker rejection took %.0f ms", r->ms);
  /* upstream is not critical: the task stays ready */
  assert_status(get(port, "/ready"), 200);
}

static void metrics_and_probes_on_the_same_port(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  resp *r = get(port, "/health");
  assert_status(r, 200);
  assert_string_equal(r->body, "{\"status\":\"ok\"}");
  r = get(port, "/ready");
  assert_status(r, 200);
  assert_string_equal(r->body, "{\"ready\":true}");
  r = get(port, "/metrics");
  assert_status(r, 200);
  assert_contains(header(r, "Content-Type"), "text/plain; version=0.0.4");
  assert_contains(r->body, "resil_calls_total{dependency=\"cache\",outcome=\"success\"} ");
  assert_contains(r->body, "resil_calls_total{dependency=\"db\",outcome=\"timeout\"} ");
  assert_contains(r->body, "resil_rejections_total{dependency=\"upstream\",reason=\"breaker_open\"} ");
  assert_contains(r->body, "service=\"ecs-example-test\"");
  assert_status(get(port, "/nope"), 404);
}

static void request_limits(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  static char big[12000];
  memset(big, 'a', sizeof big - 1);
  char hdr[12100];
  snprintf(hdr, sizeof hdr, "X-Big: %s\r\n", big);
  assert_status(req(port, "GET", "/health", hdr, NULL), 431);
  const char *huge = "PUT /cache/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n";
  resp r;
  read_resp(send_raw(port, huge, strlen(huge)), &r, t_now_ms());
  assert_status(&r, 413);
  assert_status(req(port, "GET", "/health", "Transfer-Encoding: chunked\r\n", NULL), 400);
  /* A client that never finishes its request holds one worker for 5 s at most,
   * and the others keep serving meanwhile. */
  double t0 = t_now_ms();
  int slow = send_raw(port, "GET /health HTTP/1.1\r\n", 22);
  assert_true(slow >= 0);
  assert_status(get(port, "/health"), 200);
  read_resp(slow, &r, t0);
  assert_status(&r, 408);
  if (r.ms < 4500 || r.ms > 5000 + SLACK_MS * 5) fail_msg("408 after %.0f ms, expected ~5 s", r.ms);
}

/* stdout carries only CloudWatch EMF: one JSON document per line. */
static void emf_goes_to_stdout(void **state) {
  (void)state;
  svc *s = shared();
  char *out = NULL;
  for (int i = 0; i < 50; i++) { /* interval 1 s */
    free(out);
    out = slurp(s->out);
    if (strstr(out, "\"Dependency\":\"upstream\"")) break;
    t_sleep_ms(100);
  }
  assert_contains(out, "\"Namespace\":\"ecs-example\"");
  assert_contains(out, "\"Service\":\"ecs-example-test\"");
  assert_contains(out, "\"Dependency\":\"cache\"");
  assert_contains(out, "\"Dependency\":\"db\"");
  assert_contains(out, "\"Dependency\":\"upstream\"");
  for (char *line = out; *line; line = strchr(line, '\n') + 1) {
    if (line[0] != '{') fail_msg("stdout line is not EMF JSON: %.80s", line);
    if (!strchr(line, '\n')) break;
  }
  free(out);
}

/* A typo in the task definition: exit 1 at once, naming the variable. */
static void bad_environment_exits_1_naming_the_variable(void **state) {
  (void)state;
  const char *extra[] = {"RESIL_DEP_CACHE_PORTT=1", NULL};
  svc s;
  svc_spawn(&s, extra);
  int st = svc_wait_exit(&s, 10000);
  char *err = slurp(s.err);
  if (st == -1) {
    svc_kill(&s);
    fail_msg("still running 10 s after start with a bad environment:\n%s", err);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 1) fail_msg("wait status %d, expected exit 1:\n%s", st, err);
  assert_contains(err, "RESIL_DEP_CACHE_PORTT");
  free(err);

  const char *extra2[] = {"REQUEST_DEADLINE_MS=0", NULL}; /* the example's own key */
  svc_spawn(&s, extra2);
  st = svc_wait_exit(&s, 10000);
  err = slurp(s.err);
  if (st == -1) svc_kill(&s);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 1) fail_msg("wait status %d:\n%s", st, err);
  assert_contains(err, "REQUEST_DEADLINE_MS");
  free(err);
}

/* SIGTERM: /ready turns 503 at once, requests are still served during the grace
 * (including one in flight), then the process exits 0 within the drain timeout. */
static void sigterm_drains_and_exits_0(void **state) {
  (void)state;
  const char *extra[] = {"RESIL_DRAIN_GRACE_MS=500", "RESIL_DRAIN_TIMEOUT_MS=3000",
                         "REQUEST_DEADLINE_MS=2000", "RESIL_EMF_INTERVAL_MS=0", NULL};
  svc s;
  svc_spawn(&s, extra);
  svc_wait_ready(&s, "/ready");
  assert_status(get(s.port, "/db/now"), 200); /* a connection in the pool */
  const char *inflight = "GET /db/sleep?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n";
  double t_in = t_now_ms();
  int fd = send_raw(s.port, inflight, strlen(inflight));
  assert_true(fd >= 0);
  t_sleep_ms(100); /* let it reach the database */

  double t0 = t_now_ms();
  assert_int_equal(kill(s.pid, SIGTERM), 0);
  resp *r = NULL;
  for (;;) { /* /ready says 503 draining, still inside the grace */
    r = get(s.port, "/ready");
    if (r->status == 503 || t_now_ms() - t0 > 400) break;
    t_sleep_ms(10);
  }
  assert_status(r, 503);
  assert_contains(r->body, "\"reason\":\"draining\"");
  if (t_now_ms() - t0 > 500) fail_msg("/ready turned 503 only %.0f ms after SIGTERM", t_now_ms() - t0);
  /* during the grace: still live and still serving */
  assert_status(get(s.port, "/health"), 200);
  assert_status(get(s.port, "/db/now"), 200);

  resp in;
  read_resp(fd, &in, t_in);
  assert_status(&in, 200); /* the call in flight at SIGTERM finished normally */
  assert_string_equal(in.body, "{\"slept_ms\":400}");

  int st = svc_wait_exit(&s, 3000 + SLACK_MS * 5);
  char *err = slurp(s.err);
  if (st == -1) {
    svc_kill(&s);
    fail_msg("not exited %.0f ms after SIGTERM:\n%s", t_now_ms() - t0, err);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("wait status %d, expected exit 0:\n%s", st, err);
  double took = t_now_ms() - t0;
  if (took < 500) fail_msg("exited %.0f ms after SIGTERM, before the 500 ms grace", took);
  if (took > 3000) fail_msg("exited %.0f ms after SIGTERM, beyond the drain timeout", took);
  assert_contains(err, "SIGTERM: draining");
  assert_contains(err, "ecs_service: stopped\n");
  if (strstr(err, "Sanitizer") || strstr(err, "runtime error")) fail_msg("sanitizer report:\n%s", err);
  free(err);
}

/* An upstream's Content-Type is forwarded only when it is a clean header value of at most
 * 256 bytes. Before: a 600-byte one made respond() send snprintf's would-be length from a
 * 512-byte stack buffer (stack bytes to the client; an ASan crash), and a bare CR in it
 * became a header of its own in the client's response. */
static void upstream_headers_are_never_forwarded_raw(void **state) {
  (void)state;
  hostile h;
  hostile_start(&h);
  char url[64];
  snprintf(url, sizeof url, "RESIL_DEP_UPSTREAM_BASE_URL=http://127.0.0.1:%u", h.port);
  const char *extra[] = {url, "RESIL_EMF_INTERVAL_MS=0", NULL};
  svc s;
  svc_spawn(&s, extra);
  svc_wait_ready(&s, "/health");
  static char out[16384];
  const char *paths[] = {"/upstream/longct", "/upstream/crct", "/upstream/ctlct"};
  for (size_t i = 0; i < 3; i++) {
    char rq[128];
    snprintf(rq, sizeof rq, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i]);
    size_t n = raw_exchange(s.port, rq, out, sizeof out);
    if (n < 12 || strncmp(out, "HTTP/1.1 502 ", 13) != 0)
      fail_msg("%s: expected 502, got %zu bytes: %.300s", paths[i], n, out);
    char *e = strstr(out, "\r\n\r\n");
    assert_non_null(e);
    /* exactly Content-Length bytes follow the head: nothing else (no stack bytes) */
    const char *cl = strcasestr(out, "\r\nContent-Length: ");
    assert_non_null(cl);
    size_t body = n - (size_t)(e + 4 - out);
    if ((size_t)atol(cl + 18) != body)
      fail_msg("%s: Content-Length %ld but %zu bytes follow the head", paths[i], atol(cl + 18), body);
    for (const char *c = out; c < e; c++) /* a printable head, CR only before LF */
      if ((*c < 0x20 && *c != '\r' && *c != '\n') || (*c == '\r' && c[1] != '\n'))
        fail_msg("%s: control byte 0x%02x in the response head", paths[i], (unsigned char)*c);
    if (strcasestr(out, "Set-Cookie")) fail_msg("%s: the upstream's header reached the client", paths[i]);
    assert_non_null(strstr(e, "\"detail\":\"upstream: its Content-Type"));
  }
  resp *r = get(s.port, "/upstream/plain"); /* a clean one still passes */
  assert_status(r, 200);
  assert_string_equal(header(r, "Content-Type"), "text/plain; charset=utf-8");
  svc_kill(&s);
  hostile_stop(&h);
}

/* The request parser rejects with 400 what RFC 9112 lets a lenient server guess at. */
static void ambiguous_requests_get_400(void **state) {
  (void)state;
  uint16_t port = shared()->port;
  static const struct { const char *what, *req; size_t len; } cases[] = {
#define C(w, r) {w, r, sizeof r - 1}
      C("duplicate Content-Length",
        "PUT /cache/k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"),
      C("space before the colon", "GET /health HTTP/1.1\r\nHost: x\r\nTE : gzip\r\n\r\n"),
      C("obs-fold", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"),
      C("NUL in a header", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
      C("HTTP/1.9", "GET /health HTTP/1.9\r\nHost: x\r\n\r\n"),
      C("bare LF", "GET /health HTTP/1.1\nHost: x\n\n"),
      C("bare CR", "GET /health HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n"),
      C("Transfer-Encoding", "GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
#undef C
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    resp r;
    double t0 = t_now_ms();
    int fd = tcp_dial(port);
    assert_true(fd >= 0);
    if (write(fd, cases[i].req, cases[i].len) != (ssize_t)cases[i].len) fail_msg("write");
    read_resp(fd, &r, t0);
    if (r.status != 400) fail_msg("%s: expected 400, got %d (%.0f ms)", cases[i].what, r.status, r.ms);
    if (r.ms > 1000 + SLACK_MS) fail_msg("%s: 400 only after %.0f ms", cases[i].what, r.ms);
  }
  assert_status(get(port, "/health"), 200); /* a clean request still passes */
  /* a path that would leave the upstream's base path: refused by the HTTP adapter */
  const char *dots[] = {"/upstream/../fast", "/upstream/%2e%2e/fast", "/upstream/a/%2E./fast"};
  for (size_t i = 0; i < 3; i++) {
    resp *r = get(port, dots[i]);
    assert_status(r, 400);
    assert_contains(r->body, "segment");
  }
}

/* /db/sleep?ms=00000 answers valid JSON: the number, not the digits as sent. */
static void sleep_reply_is_valid_json(void **state) {
  (void)state;
  resp *r = get(shared()->port, "/db/sleep?ms=00000");
  assert_status(r, 200);
  assert_string_equal(r->body, "{\"slept_ms\":0}");
  r = get(shared()->port, "/db/sleep?ms=010");
  assert_status(r, 200);
  assert_string_equal(r->body, "{\"slept_ms\":10}");
}

/* A request still being read when the service stops gets 503 + Retry-After, not an empty
 * reply. */
static void request_read_at_shutdown_gets_503(void **state) {
  (void)state;
  const char *extra[] = {"RESIL_DRAIN_GRACE_MS=100", "RESIL_DRAIN_TIMEOUT_MS=1000",
                         "RESIL_EMF_INTERVAL_MS=0", NULL};
  svc s;
  svc_spawn(&s, extra);
  svc_wait_ready(&s, "/health");
  double t0 = t_now_ms();
  int fd = send_raw(s.port, "GET /health HTTP/1.1\r\n", 22); /* not finished yet */
  assert_true(fd >= 0);
  t_sleep_ms(50);
  assert_int_equal(kill(s.pid, SIGTERM), 0);
  resp r;
  read_resp(fd, &r, t0);
  assert_status(&r, 503);
  assert_contains(r.body, "\"error\":\"draining\"");
  assert_non_null(header(&r, "Retry-After"));
  int st = svc_wait_exit(&s, 5000);
  if (st == -1) svc_kill(&s);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("wait status %d", st);
}

/* The container health check goes to the admin endpoint (RESIL_ADMIN_PORT, poll-based and
 * bounded), not to the 16 blocking workers that serve traffic: the task definition says so,
 * and with 20 slow clients holding every worker /health there still answers at once while
 * the traffic port's /health waits for a free worker (the failure the health check must not
 * have: a healthy task killed because it is busy). */
static void health_check_cannot_be_starved_by_slow_clients(void **state) {
  (void)state;
  /* 1. The task definition's health check uses the admin port it configures. */
  char *td = slurp(meson_env("RESIL_ECS_TASKDEF"));
  mj *root = mj_parse(td, strlen(td));
  if (!root) fail_msg("task-definition.json is not JSON");
  mj *cd = mj_get(root, "containerDefinitions")->items[0];
  const char *admin_port = NULL, *admin_addr = "127.0.0.1";
  mj *envs = mj_get(cd, "environment");
  for (size_t i = 0; i < envs->n; i++) {
    const char *n = mj_get(envs->items[i], "name")->str, *v = mj_get(envs->items[i], "value")->str;
    if (!strcmp(n, "RESIL_ADMIN_PORT")) admin_port = v;
    if (!strcmp(n, "RESIL_ADMIN_ADDR")) admin_addr = v;
  }
  if (!admin_port || !atoi(admin_port)) fail_msg("the task definition sets no RESIL_ADMIN_PORT");
  mj *cmd = mj_get(mj_get(cd, "healthCheck"), "command");
  char want[96];
  snprintf(want, sizeof want, "http://%s:%s/health", admin_addr, admin_port);
  if (!strstr(cmd->items[cmd->n - 1]->str, want))
    fail_msg("healthCheck \"%s\" does not call the admin endpoint %s", cmd->items[cmd->n - 1]->str,
             want);
  mj_free(root);
  free(td);

  /* 2. The admin endpoint answers while every worker is held. */
  char admin[48];
  uint16_t aport = free_port();
  if (!aport) fail_msg("no free port");
  snprintf(admin, sizeof admin, "RESIL_ADMIN_PORT=%u", aport);
  const char *extra[] = {admin, "RESIL_EMF_INTERVAL_MS=0", NULL};
  svc s;
  svc_spawn(&s, extra);
  svc_wait_ready(&s, "/health");
  assert_status(get(aport, "/health"), 200);
  enum { SLOW = 20 }; /* more than the 16 workers */
  int slow[SLOW];
  for (int i = 0; i < SLOW; i++) { /* each sends half a request and stalls: a worker waits 5 s */
    slow[i] = send_raw(s.port, "GET /health HTTP/1.1\r\n", 22);
    assert_true(slow[i] >= 0);
  }
  t_sleep_ms(300); /* let the workers pick them up */
  double worst = 0;
  for (int i = 0; i < 10; i++) {
    resp *r = get(aport, "/health");
    assert_status(r, 200);
    assert_contains(r->body, "\"status\":\"ok\"");
    if (r->ms > worst) worst = r->ms;
    t_sleep_ms(50);
  }
  if (worst > 100 + SLACK_MS) fail_msg("admin /health took %.0f ms with every worker held", worst);
  print_message("# admin /health with every worker held: worst of 10 %.1f ms\n", worst);
  /* and the traffic port really was starved (else this test would show nothing) */
  double t0 = t_now_ms();
  const char *probe = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  int fd = send_raw(s.port, probe, strlen(probe));
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int ready = poll(&p, 1, 1000);
  if (ready != 0) fail_msg("the traffic port answered in %.0f ms: the slow clients held no worker",
                           t_now_ms() - t0);
  close(fd);
  for (int i = 0; i < SLOW; i++) close(slow[i]);
  svc_kill(&s);
}

/* The drain timeout bounds the exit: an 8 s query in flight (request deadline 10 s) is cut at
 * the drain's deadline, answered 503 draining, and the process exits within grace + timeout.
 * Before: the worker waited for the query, and the exit came ~7 s after SIGTERM. */
static void slow_call_in_flight_is_cut_at_the_drain_deadline(void **state) {
  (void)state;
  const char *extra[] = {"RESIL_DRAIN_GRACE_MS=1000", "RESIL_DRAIN_TIMEOUT_MS=2000",
                         "REQUEST_DEADLINE_MS=10s", "RESIL_DEP_DB_TIMEOUT_MS=10s",
                         "RESIL_DEP_DB_QUERY_TIMEOUT_MS=10s", "RESIL_EMF_INTERVAL_MS=0", NULL};
  svc s;
  svc_spawn(&s, extra);
  svc_wait_ready(&s, "/ready");
  const char *slow = "GET /db/sleep?ms=8000 HTTP/1.1\r\nHost: x\r\n\r\n";
  double t_in = t_now_ms();
  int fd = send_raw(s.port, slow, strlen(slow));
  assert_true(fd >= 0);
  t_sleep_ms(300); /* let it reach the database */
  double t0 = t_now_ms();
  assert_int_equal(kill(s.pid, SIGTERM), 0);
  resp in;
  read_resp(fd, &in, t_in);
  double answered = t_now_ms() - t0;
  int st = svc_wait_exit(&s, 8000);
  double took = t_now_ms() - t0;
  char *err = slurp(s.err);
  if (st == -1) {
    kill(s.pid, SIGKILL);
    waitpid(s.pid, NULL, 0);
    fail_msg("not exited %.0f ms after SIGTERM:\n%s", took, err);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("wait status %d:\n%s", st, err);
  /* grace 1 s + timeout 2 s, plus slack for a loaded machine (the drain deadline itself is
   * SIGTERM + 2 s here: the example's grace runs inside its timeout) */
  if (took > 1000 + 2000 + SLACK_MS * 3) fail_msg("exited %.0f ms after SIGTERM:\n%s", took, err);
  assert_status(&in, 503);
  assert_contains(in.body, "\"error\":\"draining\"");
  assert_contains(in.body, "cut at the drain deadline");
  if (answered > 2000 + SLACK_MS * 3) fail_msg("the cut call was answered after %.0f ms", answered);
  print_message("# exit %.0f ms after SIGTERM (grace 1000 + timeout 2000), the cut call answered "
                "after %.0f ms\n", took, answered);
  free(err);
}

/* The value of an unlabelled Prometheus sample in text, or -1. */
static double metric_value(const char *text, const char *name) {
  char key[128];
  snprintf(key, sizeof key, "\n%s ", name);
  const char *l = strstr(text, key);
  return l ? atof(l + strlen(key)) : -1;
}

/* stdout on a pipe nobody reads (a stalled log driver): EMF lines are dropped and counted,
 * requests are still served, and SIGTERM still ends the process within grace + timeout.
 * Before: the emitter blocked in write() holding its mutex, the drain's flush waited for
 * it, and the process never exited (ECS would SIGKILL it). */
static void stdout_nobody_reads_never_blocks_the_exit(void **state) {
  (void)state;
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  assert_true(fcntl(pfd[1], F_SETPIPE_SZ, 4096) > 0); /* full after one or two emissions */
  const char *extra[] = {"RESIL_EMF_INTERVAL_MS=1000", "RESIL_DRAIN_GRACE_MS=200",
                         "RESIL_DRAIN_TIMEOUT_MS=1000", NULL};
  svc s;
  svc_spawn_out(&s, extra, pfd[1]);
  close(pfd[1]); /* the child holds the write end; we hold the read end and never read */
  svc_wait_ready(&s, "/health");
  double t0 = t_now_ms();
  double dropped = 0;
  while (t_now_ms() - t0 < 15000) { /* a few intervals */
    assert_status(get(s.port, "/cache/emf-pipe-test"), 404); /* traffic: still served */
    resp *r = get(s.port, "/metrics");
    assert_status(r, 200);
    dropped = metric_value(r->body, "resil_emf_dropped_lines_total");
    if (dropped > 0) break;
    t_sleep_ms(200);
  }
  if (dropped <= 0) fail_msg("resil_emf_dropped_lines_total stayed %.0f", dropped);
  t0 = t_now_ms();
  assert_int_equal(kill(s.pid, SIGTERM), 0);
  int st = svc_wait_exit(&s, 1200 + 1000 + SLACK_MS * 5);
  double took = t_now_ms() - t0;
  char *err = slurp(s.err);
  if (st == -1) {
    kill(s.pid, SIGKILL);
    waitpid(s.pid, NULL, 0);
    fail_msg("not exited %.0f ms after SIGTERM with a full stdout:\n%s", took, err);
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("wait status %d:\n%s", st, err);
  free(err);
  close(pfd[0]);
}

/* Last: the shared instance stops cleanly too (exit 0; under the sanitizers no report,
 * and LeakSanitizer's exit check has passed). */
static void shared_instance_exits_cleanly(void **state) {
  (void)state;
  svc *s = shared();
  assert_int_equal(kill(s->pid, SIGTERM), 0);
  int st = svc_wait_exit(s, 10000);
  char *err = slurp(s->err);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("wait status %d after SIGTERM, expected exit 0:\n%s", st, err);
  if (strstr(err, "Sanitizer") || strstr(err, "runtime error"))
    fail_msg("sanitizer report:\n%s", err);
  free(err);
}

static int teardown(void **state) {
  (void)state;
  svc_kill(&main_svc);
  for (size_t i = 0; i < nspawned; i++) /* left running by a failed test (reaped ones: ECHILD) */
    if (waitpid(spawned[i], NULL, WNOHANG) == 0) {
      kill(spawned[i], SIGKILL);
      waitpid(spawned[i], NULL, 0);
    }
  if (upstream_port) child_stop(&upstream);
  if (tmpdir[0]) {
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  }
  return 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(cache_put_get_round_trip),
      cmocka_unit_test(db_now_answers),
      cmocka_unit_test(slow_query_hits_the_request_deadline),
      cmocka_unit_test(inbound_grpc_timeout_is_inherited),
      cmocka_unit_test(upstream_statuses_map_to_http),
      cmocka_unit_test(metrics_and_probes_on_the_same_port),
      cmocka_unit_test(request_limits),
      cmocka_unit_test(emf_goes_to_stdout),
      cmocka_unit_test(bad_environment_exits_1_naming_the_variable),
      cmocka_unit_test(sigterm_drains_and_exits_0),
      cmocka_unit_test(upstream_headers_are_never_forwarded_raw),
      cmocka_unit_test(ambiguous_requests_get_400),
      cmocka_unit_test(sleep_reply_is_valid_json),
      cmocka_unit_test(request_read_at_shutdown_gets_503),
      cmocka_unit_test(stdout_nobody_reads_never_blocks_the_exit),
      cmocka_unit_test(slow_call_in_flight_is_cut_at_the_drain_deadline),
      cmocka_unit_test(health_check_cannot_be_starved_by_slow_clients),
      cmocka_unit_test(shared_instance_exits_cleanly),
  };
  return cmocka_run_group_tests_name("ecs_service", tests, NULL, teardown);
}
