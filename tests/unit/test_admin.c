/* The admin endpoint, exercised with the real curl binary (Debian package
 * curl; required when CI is set, else these tests skip without it): every
 * route and error status, HEAD, 20 parallel clients, the connection limit,
 * a slowloris client that must neither block a concurrent curl nor outlive
 * the read timeout, promtool on the served /metrics, and clean shutdown.
 * Only 127.0.0.1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "testutil.h"
#include "resil/resil.h"

#define CURL "/usr/bin/curl"
#define READ_TIMEOUT_MS 3000

static resil_dep *crit, *other;

static void need_curl(void) {
  if (access(CURL, X_OK) == 0) return;
  if (test_env("CI")) fail_msg("curl is required in CI (Debian package curl)");
  skip();
}

static resil_status config_json(void *ctx, char **out) {
  *out = strdup((const char *)ctx);
  return *out ? RESIL_OK : RESIL_E_NOMEM;
}

static void start(uint32_t max_conns, bool with_config) {
  resil_admin_config c;
  resil_admin_config_init(&c);
  c.max_connections = max_conns;
  c.read_timeout_ms = READ_TIMEOUT_MS;
  if (with_config) {
    c.config_json_fn = config_json;
    static char body[] = "{\"service\":\"test\",\"secret\":\"<redacted>\"}";
    c.config_ctx = body;
  }
  resil_err err;
  if (resil_admin_start(&c, &err) != RESIL_OK) fail_msg("%s", err.msg);
  assert_true(resil_admin_port() > 0);
}

/* ---- curl ---- */

typedef struct resp {
  int code;
  char body[65536];
  char headers[8192];
  double secs;
} resp;

static _Atomic int tmp_seq;

static void slurp(const char *path, char *buf, size_t size) {
  buf[0] = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return;
  size_t n = fread(buf, 1, size - 1, f);
  buf[n] = 0;
  fclose(f);
}

/* Run curl with args (a shell fragment) against path on the admin port. */
static void curl(resp *r, const char *args, const char *path) {
  char bodyf[128], hdrf[128], cmd[32768];
  int seq = atomic_fetch_add(&tmp_seq, 1);
  snprintf(bodyf, sizeof bodyf, "/tmp/resil-admin-%d-%d.body", (int)getpid(), seq);
  snprintf(hdrf, sizeof hdrf, "/tmp/resil-admin-%d-%d.hdr", (int)getpid(), seq);
  snprintf(cmd, sizeof cmd,
           CURL " -sS --max-time 20 -o %s -D %s -w '%%{http_code} %%{time_total}' %s "
                "'http://127.0.0.1:%u%s' 2>/dev/null",
           bodyf, hdrf, args, (unsigned)resil_admin_port(), path);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char out[128] = "";
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = 0;
  pclose(p);
  r->code = 0;
  r->secs = 0;
  sscanf(out, "%d %lf", &r->code, &r->secs);
  slurp(bodyf, r->body, sizeof r->body);
  slurp(hdrf, r->headers, sizeof r->headers);
  unlink(bodyf);
  unlink(hdrf);
}

static bool header_has(const resp *r, const char *line) { return strstr(r->headers, line) != NULL; }

/* ---- raw sockets ---- */

static int raw_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(resil_admin_port())};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  struct timeval tv = {.tv_sec = 15};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/* Read until EOF (or error/timeout); returns bytes read, -1 if the read
 * timed out before EOF. */
static ssize_t raw_read_all(int fd, char *buf, size_t size) {
  size_t len = 0;
  for (;;) {
    ssize_t n = recv(fd, buf + len, size - 1 - len, 0);
    if (n > 0) {
      len += (size_t)n;
      if (len + 1 >= size) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      buf[len] = 0;
      return -1;
    }
    break; /* EOF or reset */
  }
  buf[len] = 0;
  return (ssize_t)len;
}

/* Send len bytes of req (none if req is NULL) on a new connection and read
 * the answer until the server closes. Returns the response's status, 0 if
 * it sent none, -1 if it did not close within 15 s; *took_ms (may be NULL)
 * gets the time from connect to EOF. The answer is left in buf. */
static int raw_exchange(const char *req, size_t len, char *buf, size_t size, uint64_t *took_ms) {
  uint64_t t0 = test_now_ms();
  int fd = raw_connect();
  size_t off = 0;
  while (req && off < len) {
    ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* the server may answer and stop reading early */
    off += (size_t)n;
  }
  ssize_t n = raw_read_all(fd, buf, size);
  close(fd);
  if (took_ms) *took_ms = test_now_ms() - t0;
  if (n < 0) return -1;
  int code = 0;
  if (sscanf(buf, "HTTP/1.1 %d ", &code) != 1) code = 0;
  return code;
}

/* The admin endpoint runs in this process: a connection it accepted is an
 * open fd here. Wait until this process has n more fds than before (the
 * clients' own ends and the server's accepted ones), instead of sleeping
 * a fixed time and hoping the accepts happened. */
static void wait_fds_at_least(int before, int n, const char *what) {
  if (!TEST_WAIT_UNTIL(count_open_fds() >= before + n, 5000))
    fail_msg("%s: %d fds, expected %d (not accepted yet?)", what, count_open_fds(), before + n);
}

/* "At once": far below the 1 s read timeouts these tests use, so it tells
 * an immediate answer from one given at the timeout. */
#define AT_ONCE_MS (400 + test_slack_ms(0)) /* 500 ms, 700 ms under the sanitizers */

static int raw_get(const char *path, char *buf, size_t size, uint64_t *took_ms) {
  char req[256];
  int len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
  return raw_exchange(req, (size_t)len, buf, size, took_ms);
}

/* The address the admin endpoint listens on: the listening socket of this
 * process whose port is resil_admin_port(). */
static bool admin_listen_address(struct sockaddr_storage *out) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return false;
  bool found = false;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    int listening = 0;
    socklen_t l = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &l) != 0 || !listening) continue;
    socklen_t al = sizeof *out;
    if (getsockname(fd, (struct sockaddr *)out, &al) != 0) continue;
    uint16_t port = out->ss_family == AF_INET ? ((struct sockaddr_in *)out)->sin_port
                    : out->ss_family == AF_INET6 ? ((struct sockaddr_in6 *)out)->sin6_port
                                                 : 0;
    found = ntohs(port) == resil_admin_port();
  }
  closedir(d);
  return found;
}

static void start_with(uint32_t max_conns, uint32_t read_timeout_ms,
                       resil_admin_config_fn config_fn) {
  resil_admin_config c;
  resil_admin_config_init(&c);
  c.max_connections = max_conns;
  c.read_timeout_ms = read_timeout_ms;
  c.config_json_fn = config_fn;
  resil_err err;
  if (resil_admin_start(&c, &err) != RESIL_OK) fail_msg("%s", err.msg);
  assert_true(resil_admin_port() > 0);
}

/* ---- fixtures ---- */

static int group_setup(void **state) {
  (void)state;
  resil_dep_config c;
  resil_dep_config_init(&c, "orders-db");
  c.critical = true;
  crit = resil_dep_new(&c, NULL);
  resil_dep_config_init(&c, "session-cache");
  other = resil_dep_new(&c, NULL);
  if (!crit || !other) return -1;
  for (int i = 0; i < 20; i++) {
    resil_permit p;
    if (resil_dep_admit(i % 2 ? crit : other, RESIL_DEADLINE_UNSET, &p, NULL) == RESIL_OK)
      resil_dep_done(&p, i % 5 ? RESIL_OK : RESIL_E_TIMEOUT);
  }
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  resil_admin_stop();
  resil_dep_free(crit);
  resil_dep_free(other);
  return 0;
}

static int stop_after(void **state) {
  (void)state;
  resil_admin_stop();
  resil_breaker_set_mode(resil_dep_breaker(crit), RESIL_BREAKER_MODE_AUTO);
  return 0;
}

/* ---- tests ---- */

static void config_is_validated_and_defaults_are_local(void **state) {
  (void)state;
  resil_admin_config c;
  resil_admin_config_init(&c);
  assert_string_equal(c.bind_address, "127.0.0.1");
  assert_int_equal(c.port, 0);
  assert_int_equal(c.max_connections, 16);
  assert_int_equal(c.max_request_bytes, 8192);
  assert_int_equal(c.read_timeout_ms, 2000);
  assert_null(c.config_json_fn);
  assert_int_equal(resil_admin_config_validate(&c, NULL), RESIL_OK);
  c.bind_address = "localhost";
  c.max_connections = 0;
  c.max_request_bytes = 10;
  c.read_timeout_ms = 0;
  resil_err err;
  assert_int_equal(resil_admin_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "admin.bind_address"));
  assert_non_null(strstr(err.msg, "admin.max_connections"));
  assert_non_null(strstr(err.msg, "admin.max_request_bytes"));
  assert_non_null(strstr(err.msg, "admin.read_timeout_ms"));
  assert_int_equal(resil_admin_start(&c, &err), RESIL_E_INVALID);
  assert_int_equal(resil_admin_port(), 0);
  c.bind_address = "::1";
  c.max_connections = 1;
  c.max_request_bytes = 256;
  c.read_timeout_ms = 10;
  assert_int_equal(resil_admin_config_validate(&c, &err), RESIL_OK);
  c.bind_address = NULL; /* the default, never 0.0.0.0 */
  assert_int_equal(resil_admin_config_validate(&c, &err), RESIL_OK);
}

static void start_and_stop_release_every_fd(void **state) {
  (void)state;
  int before = count_open_fds();
  start(16, false);
  uint16_t port = resil_admin_port();
  resil_err err;
  resil_admin_config c;
  resil_admin_config_init(&c);
  assert_int_equal(resil_admin_start(&c, &err), RESIL_E_INVALID); /* one per process */
  /* A stalled client is closed by stop. */
  int fds0 = count_open_fds();
  int fd = raw_connect();
  assert_int_equal(send(fd, "GET /he", 7, 0), 7);
  wait_fds_at_least(fds0, 2, "stalled client");
  resil_admin_stop();
  assert_int_equal(resil_admin_port(), 0);
  char buf[256];
  assert_true(raw_read_all(fd, buf, sizeof buf) >= 0); /* EOF, not a timeout */
  close(fd);
  assert_int_equal(count_open_fds(), before);
  resil_admin_stop(); /* idempotent */
  /* A taken port is a system error naming the step. */
  int blocker = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(blocker, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(blocker, 1), 0);
  socklen_t al = sizeof a;
  getsockname(blocker, (struct sockaddr *)&a, &al);
  c.port = ntohs(a.sin_port);
  assert_int_equal(resil_admin_start(&c, &err), RESIL_E_SYSTEM);
  assert_non_null(strstr(err.msg, "bind"));
  close(blocker);
  assert_int_equal(count_open_fds(), before);
  (void)port;
}

static void every_route_answers_with_its_status(void **state) {
  (void)state;
  need_curl();
  start(64, true);
  resp *r = malloc(sizeof *r);

  curl(r, "", "/metrics");
  assert_int_equal(r->code, 200);
  assert_true(header_has(r, "Content-Type: text/plain; version=0.0.4"));
  assert_non_null(strstr(r->body, "resil_calls_total{dependency=\"orders-db\",outcome=\"success\"}"));
  assert_non_null(strstr(r->body, "# TYPE resil_call_duration_seconds histogram"));

  curl(r, "", "/health");
  assert_int_equal(r->code, 200);
  assert_true(header_has(r, "Content-Type: application/json"));
  assert_string_equal(r->body, "{\"status\":\"ok\"}\n");

  curl(r, "", "/ready");
  assert_int_equal(r->code, 200);
  assert_string_equal(r->body, "{\"ready\":true}\n");

  resil_breaker_set_mode(resil_dep_breaker(crit), RESIL_BREAKER_MODE_FORCE_OPEN);
  curl(r, "", "/ready?verbose=1");
  assert_int_equal(r->code, 503);
  assert_string_equal(r->body, "{\"ready\":false,\"reason\":\"orders-db: breaker forced open\"}\n");
  resil_breaker_set_mode(resil_dep_breaker(crit), RESIL_BREAKER_MODE_AUTO);
  curl(r, "", "/ready");
  assert_int_equal(r->code, 200);

  curl(r, "", "/config");
  assert_int_equal(r->code, 200);
  assert_string_equal(r->body, "{\"service\":\"test\",\"secret\":\"<redacted>\"}");

  curl(r, "", "/nope");
  assert_int_equal(r->code, 404);
  curl(r, "", "/");
  assert_int_equal(r->code, 404);
  curl(r, "", "/metrics/extra");
  assert_int_equal(r->code, 404);

  curl(r, "-X POST -d x=1", "/metrics");
  assert_int_equal(r->code, 405);
  assert_true(header_has(r, "Allow: GET, HEAD"));
  curl(r, "-X DELETE", "/health");
  assert_int_equal(r->code, 405);

  curl(r, "-I", "/health"); /* HEAD: headers only (curl -I writes them to -o too) */
  assert_int_equal(r->code, 200);
  assert_null(strstr(r->body, "{\"status\""));
  assert_true(header_has(r, "Content-Length: 16"));

  curl(r, "--request-target nope", "/health");
  assert_int_equal(r->code, 400);

  /* Request line + headers above max_request_bytes (8 KiB): 431. */
  char *big = malloc(12000);
  strcpy(big, "-H 'X-Big: ");
  size_t bl = strlen(big);
  memset(big + bl, 'a', 9000);
  strcpy(big + bl + 9000, "'");
  curl(r, big, "/health");
  assert_int_equal(r->code, 431);
  free(big);

  /* A declared body that would not fit: 413. */
  char path[] = "/tmp/resil-admin-body-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  char chunk[4096];
  memset(chunk, 'b', sizeof chunk);
  for (int i = 0; i < 5; i++) assert_int_equal(write(fd, chunk, sizeof chunk), (ssize_t)sizeof chunk);
  close(fd);
  char args[256];
  snprintf(args, sizeof args, "-X GET -H 'Expect:' --data-binary @%s", path);
  curl(r, args, "/metrics");
  assert_int_equal(r->code, 413);
  unlink(path);

  /* Still serving after all that. */
  curl(r, "", "/health");
  assert_int_equal(r->code, 200);
  free(r);
}

static void config_route_is_404_without_a_callback(void **state) {
  (void)state;
  need_curl();
  start(16, false);
  resp *r = malloc(sizeof *r);
  curl(r, "", "/config");
  assert_int_equal(r->code, 404);
  free(r);
}

static void served_metrics_pass_promtool(void **state) {
  (void)state;
  need_curl();
  const char *promtool = access("/usr/bin/promtool", X_OK) == 0 ? "/usr/bin/promtool" : NULL;
  if (!promtool) {
    if (test_env("CI")) fail_msg("promtool is required in CI (Debian package prometheus)");
    skip();
  }
  start(16, false);
  char cmd[512], out[128];
  snprintf(out, sizeof out, "/tmp/resil-admin-prom-%d.out", (int)getpid());
  snprintf(cmd, sizeof cmd,
           CURL " -sS --max-time 20 'http://127.0.0.1:%u/metrics' | %s check metrics > %s 2>&1",
           (unsigned)resil_admin_port(), promtool, out);
  int rc = system(cmd);
  char msg[4096];
  slurp(out, msg, sizeof msg);
  unlink(out);
  if (rc != 0) fail_msg("promtool check metrics failed (%d): %s", rc, msg);
}

static void twenty_parallel_clients_are_all_served(void **state) {
  (void)state;
  need_curl();
  start(64, false);
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "for i in $(seq 20); do " CURL
           " -sS --max-time 20 -o /dev/null -w '%%{http_code}\\n' "
           "'http://127.0.0.1:%u/metrics' & done; wait",
           (unsigned)resil_admin_port());
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[64];
  int ok = 0, total = 0;
  while (fgets(line, sizeof line, p)) {
    total++;
    if (!strncmp(line, "200", 3)) ok++;
  }
  pclose(p);
  assert_int_equal(total, 20);
  assert_int_equal(ok, 20);
}

static void connections_over_the_limit_get_503(void **state) {
  (void)state;
  need_curl();
  start(2, false);
  int fds0 = count_open_fds();
  int a = raw_connect(), b = raw_connect();
  assert_int_equal(send(a, "GET", 3, 0), 3);
  assert_int_equal(send(b, "GET", 3, 0), 3);
  wait_fds_at_least(fds0, 4, "two clients"); /* both accepted */
  resp *r = malloc(sizeof *r);
  curl(r, "", "/health");
  assert_int_equal(r->code, 503);
  assert_non_null(strstr(r->body, "too many connections"));
  close(a);
  close(b);
  /* Slots free again once those clients are gone. */
  uint64_t t0 = test_now_ms();
  do {
    usleep(50 * 1000);
    curl(r, "", "/health");
  } while (r->code != 200 && test_now_ms() - t0 < 10000);
  assert_int_equal(r->code, 200);
  free(r);
}

static void slowloris_neither_blocks_others_nor_outlives_the_timeout(void **state) {
  (void)state;
  need_curl();
  start(16, false);
  int slow = raw_connect();
  int silent = raw_connect(); /* sends nothing at all */
  uint64_t t0 = test_now_ms();
  const char *half = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  assert_int_equal(send(slow, half, strlen(half), 0), (ssize_t)strlen(half));
  usleep(100 * 1000);
  assert_int_equal(send(slow, "a", 1, 0), 1);
  /* A concurrent client is served at once, not after the slow one. */
  resp *r = malloc(sizeof *r);
  uint64_t c0 = test_now_ms();
  curl(r, "", "/health");
  uint64_t took = test_now_ms() - c0;
  assert_int_equal(r->code, 200);
  if (took >= READ_TIMEOUT_MS - 500) fail_msg("curl took %llu ms: blocked by the slow client",
                                               (unsigned long long)took);
  free(r);
  /* The slow client gets 408 and is closed after the read timeout. */
  char buf[1024];
  ssize_t n = raw_read_all(slow, buf, sizeof buf);
  uint64_t closed_after = test_now_ms() - t0;
  assert_true(n > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 408 "));
  assert_true(closed_after >= READ_TIMEOUT_MS - 300);
  assert_true(closed_after < READ_TIMEOUT_MS + 8000);
  n = raw_read_all(silent, buf, sizeof buf);
  assert_true(n > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 408 "));
  close(slow);
  close(silent);
}

static void malformed_requests_from_a_raw_socket_get_400(void **state) {
  (void)state;
  start(16, false);
  const char *bad[] = {
      "GET\r\n\r\n",
      "GET /health\r\n\r\n",             /* HTTP/0.9 */
      "GET /health HTTP/2.0\r\n\r\n",
      "G@T /health HTTP/1.1\r\n\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", /* a TLS ClientHello */
      "GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
      "GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n",
      "GET /health HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
      "GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int fd = raw_connect();
    assert_int_equal(send(fd, bad[i], strlen(bad[i]), MSG_NOSIGNAL), (ssize_t)strlen(bad[i]));
    char buf[1024];
    uint64_t t0 = test_now_ms();
    ssize_t n = raw_read_all(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0 || !strstr(buf, "HTTP/1.1 400 "))
      fail_msg("request %zu: expected 400, got '%.60s'", i, n > 0 ? buf : "(nothing)");
    assert_true(test_now_ms() - t0 < READ_TIMEOUT_MS); /* at once, not at the timeout */
  }
  /* A NUL is not a token character, in a method or a header name. */
  static const char nul_method[] = "GE\0T /health HTTP/1.1\r\n\r\n";
  static const char nul_name[] = "GET /health HTTP/1.1\r\nX\0Y: 1\r\n\r\n";
  const char *with_nul[] = {nul_method, nul_name};
  const size_t nul_len[] = {sizeof nul_method - 1, sizeof nul_name - 1};
  for (size_t i = 0; i < 2; i++) {
    char ans[512];
    int code = raw_exchange(with_nul[i], nul_len[i], ans, sizeof ans, NULL);
    if (code != 400) fail_msg("NUL request %zu: expected 400, got %d", i, code);
  }
  /* Bare LF line endings are accepted (RFC 9112 allows it). */
  int fd = raw_connect();
  const char *lf = "GET /health HTTP/1.0\n\n";
  assert_int_equal(send(fd, lf, strlen(lf), 0), (ssize_t)strlen(lf));
  char buf[1024];
  assert_true(raw_read_all(fd, buf, sizeof buf) > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_non_null(strstr(buf, "\r\n\r\n{\"status\":\"ok\"}\n"));
  close(fd);
}

static void half_closing_client_gets_its_answer_and_head_has_no_body(void **state) {
  (void)state;
  start(16, false);
  int fd = raw_connect();
  const char *req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
  assert_int_equal(shutdown(fd, SHUT_WR), 0);
  char buf[2048];
  assert_true(raw_read_all(fd, buf, sizeof buf) > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  close(fd);

  fd = raw_connect();
  req = "HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
  ssize_t n = raw_read_all(fd, buf, sizeof buf);
  assert_true(n > 4);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Content-Length: 15\r\n"));
  assert_string_equal(buf + n - 4, "\r\n\r\n"); /* headers only */
  close(fd);

  /* A request split into many small writes is assembled. */
  fd = raw_connect();
  req = "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";
  for (const char *p = req; *p; p++) {
    assert_int_equal(send(fd, p, 1, 0), 1);
    if ((p - req) % 8 == 0) usleep(2000);
  }
  n = raw_read_all(fd, buf, sizeof buf);
  assert_true(n > 0);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  close(fd);
}

/* ---- bounds: each test fails if its bound breaks ---- */

/* (a) Unless configured, the endpoint listens on 127.0.0.1 only: the
 * default, an explicit NULL and "" all bind the loopback address (as the
 * kernel reports it), never 0.0.0.0 or ::. */
static void default_bind_address_is_loopback(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) {
    resil_admin_config c;
    resil_admin_config_init(&c);
    if (i == 1) c.bind_address = NULL;
    if (i == 2) c.bind_address = "";
    resil_err err;
    if (resil_admin_start(&c, &err) != RESIL_OK) fail_msg("%s", err.msg);
    struct sockaddr_storage ss;
    if (!admin_listen_address(&ss)) fail_msg("no listening socket on port %u", resil_admin_port());
    assert_int_equal(ss.ss_family, AF_INET);
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, text, sizeof text);
    if (strcmp(text, "127.0.0.1") != 0) fail_msg("variant %d listens on %s", i, text);
    resil_admin_stop();
  }
}

/* (b) A request larger than max_request_bytes (a declared body of 20000
 * bytes, sent in full, against the default 8192) is answered 413 at once
 * and the connection is closed: the client reads EOF, not a timeout. */
static void oversized_request_gets_413_and_is_closed(void **state) {
  (void)state;
  start_with(16, READ_TIMEOUT_MS, NULL);
  int fds_before = count_open_fds();
  static const char head[] = "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n";
  size_t len = sizeof head - 1 + 20000;
  char *req = malloc(len);
  assert_non_null(req);
  memcpy(req, head, sizeof head - 1);
  memset(req + sizeof head - 1, 'b', 20000);
  char buf[1024];
  uint64_t took = 0;
  int code = raw_exchange(req, len, buf, sizeof buf, &took);
  free(req);
  if (code != 413) fail_msg("expected 413, got %d: '%.80s'", code, buf);
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_non_null(strstr(buf, "request body too large"));
  if (took >= 1000) fail_msg("the 413 and close took %llu ms", (unsigned long long)took);
  /* The server let go of the connection too (after the lingering read). */
  uint64_t t0 = test_now_ms();
  while (count_open_fds() != fds_before && test_now_ms() - t0 < 3000) usleep(20 * 1000);
  assert_int_equal(count_open_fds(), fds_before);
}

static char *header_flood(int nheaders, size_t *len) {
  static const char line[] = "GET /health HTTP/1.1\r\n";
  *len = sizeof line - 1 + (size_t)nheaders * 4 + 2;
  char *req = malloc(*len + 1);
  assert_non_null(req);
  char *p = req + sizeof line - 1;
  memcpy(req, line, sizeof line - 1);
  for (int i = 0; i < nheaders; i++, p += 4) memcpy(p, "X:\r\n", 4);
  memcpy(p, "\r\n", 3);
  return req;
}

/* (c) The number of headers is bounded by max_request_bytes (admin.h: no
 * separate count cap; one pass, no per-header state): 1000 headers of 4
 * bytes (4 KB, within the default 8192) are served at once; 3000 of them
 * (12 KB) are refused with 431 at once, not at the read timeout, and the
 * connection is closed. */
static void many_small_headers_are_bounded_by_max_request_bytes(void **state) {
  (void)state;
  start_with(16, READ_TIMEOUT_MS, NULL);
  char buf[1024];
  uint64_t took = 0;
  size_t len;
  char *req = header_flood(1000, &len);
  int code = raw_exchange(req, len, buf, sizeof buf, &took);
  free(req);
  if (code != 200 || took >= 1000)
    fail_msg("1000 headers: %d after %llu ms: '%.80s'", code, (unsigned long long)took, buf);
  req = header_flood(3000, &len);
  code = raw_exchange(req, len, buf, sizeof buf, &took);
  free(req);
  if (code != 431 || took >= 1000)
    fail_msg("3000 headers: %d after %llu ms: '%.80s'", code, (unsigned long long)took, buf);
  assert_non_null(strstr(buf, "request line and headers too large"));
}

/* (d) Slowloris: a client that sends one byte every 100 ms and never ends
 * its headers is cut (408, then EOF) read_timeout_ms after it connected -
 * the bytes it keeps sending do not extend its time - while other clients,
 * one between every two of its bytes, are served at once. */
static void trickling_client_is_cut_at_read_timeout_while_others_are_served(void **state) {
  (void)state;
  enum { RT = 1000 };
  start_with(4, RT, NULL);
  int slow = raw_connect();
  uint64_t t0 = test_now_ms();
  const char *half = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  assert_int_equal(send(slow, half, strlen(half), 0), (ssize_t)strlen(half));
  int trickled = 0, served = 0;
  uint64_t worst = 0, cut = 0;
  while (test_now_ms() - t0 < 4 * RT) {
    struct pollfd p = {.fd = slow, .events = POLLIN};
    if (poll(&p, 1, 100) > 0) { /* the server answered: it gave up on it */
      cut = test_now_ms() - t0;
      break;
    }
    if (send(slow, "a", 1, MSG_NOSIGNAL) != 1) break;
    trickled++;
    char buf[512];
    uint64_t took = 0;
    int code = raw_get("/health", buf, sizeof buf, &took);
    if (code != 200) fail_msg("a client served meanwhile got %d: '%.80s'", code, buf);
    served++;
    if (took > worst) worst = took;
  }
  if (!cut) fail_msg("the trickling client was not cut within %d ms (%d bytes sent)", 4 * RT,
                     trickled);
  char buf[1024];
  ssize_t n = raw_read_all(slow, buf, sizeof buf);
  close(slow);
  assert_true(n > 0); /* and EOF after it */
  assert_non_null(strstr(buf, "HTTP/1.1 408 "));
  /* The cut is seen between two served requests: up to one of them (worst)
   * late, on top of the slack. */
  if (cut < RT - 50 || cut > test_upper_ms(RT) + worst)
    fail_msg("cut after %llu ms, read_timeout_ms is %d (a served request took up to %llu ms)",
             (unsigned long long)cut, RT, (unsigned long long)worst);
  if (trickled < 5 || served < 5) fail_msg("only %d bytes trickled, %d served", trickled, served);
  if (worst >= test_upper_ms(200))
    fail_msg("a concurrent client took %llu ms", (unsigned long long)worst);
}

/* A whole 503 "too many connections" answer: the JSON body, exactly as
 * long as its Content-Length says (from a slot or from the slotless path). */
static bool is_too_many(const char *r) {
  const char *body = strstr(r, "\r\n\r\n");
  const char *cl = strstr(r, "Content-Length: ");
  if (!body || !cl || strncmp(r, "HTTP/1.1 503 ", 13) != 0) return false;
  body += 4;
  return strtoul(cl + 16, NULL, 10) == strlen(body) &&
         strcmp(body, "{\"error\":\"too many connections\"}\n") == 0;
}

/* (e) Idle clients holding every one of max_connections: the extra ones
 * get 503 at once (also past the 503 slots, where they are refused
 * without one); the idle ones are cut at read_timeout_ms (408, EOF) and,
 * even though they never close, their slots are free again once the
 * server's lingering read ends (min(read_timeout_ms, 1 s) more, admin.h),
 * when a normal request succeeds. */
static void idle_clients_over_the_limit_get_503_and_time_out(void **state) {
  (void)state;
  enum { RT = 1000 };
  start_with(2, RT, NULL);
  int fds0 = count_open_fds();
  int idle[2] = {raw_connect(), raw_connect()};
  uint64_t t0 = test_now_ms();
  wait_fds_at_least(fds0, 4, "two idle clients"); /* both accepted */
  char buf[1024];
  uint64_t took = 0;
  for (int i = 0; i < 2; i++) {
    int code = raw_exchange(NULL, 0, buf, sizeof buf, &took); /* sends nothing either */
    if (code != 503 || took >= AT_ONCE_MS)
      fail_msg("extra client %d: %d after %llu ms", i, code, (unsigned long long)took);
    assert_true(is_too_many(buf));
    code = raw_get("/health", buf, sizeof buf, &took);
    if (code != 503 || took >= AT_ONCE_MS)
      fail_msg("extra request %d: %d after %llu ms", i, code, (unsigned long long)took);
    assert_true(is_too_many(buf));
  }
  /* Two more that hold their 503 connections open, then one past them. */
  int held[2] = {raw_connect(), raw_connect()};
  for (int i = 0; i < 2; i++) { /* accepted into a 503 slot: their answer is there */
    struct pollfd pw = {.fd = held[i], .events = POLLIN};
    if (poll(&pw, 1, 5000 * (int)test_build_mult()) != 1)
      fail_msg("held client %d got no 503", i);
  }
  int code = raw_get("/health", buf, sizeof buf, &took);
  if (code != 503 || took >= AT_ONCE_MS)
    fail_msg("request past the 503 slots: %d after %llu ms", code, (unsigned long long)took);
  assert_true(is_too_many(buf)); /* the same answer without a slot */
  close(held[0]);
  close(held[1]);
  /* The idle clients are cut at the read timeout. */
  for (int i = 0; i < 2; i++) {
    ssize_t n = raw_read_all(idle[i], buf, sizeof buf);
    uint64_t at = test_now_ms() - t0;
    if (n <= 0 || !strstr(buf, "HTTP/1.1 408 ") || at > test_upper_ms(RT))
      fail_msg("idle client %d: %zd bytes after %llu ms: '%.60s'", i, n, (unsigned long long)at,
               n > 0 ? buf : "");
  }
  while ((code = raw_get("/health", buf, sizeof buf, NULL)) == 503 && test_now_ms() - t0 < 5 * RT)
    usleep(50 * 1000);
  uint64_t freed = test_now_ms() - t0;
  if (code != 200 || freed > test_upper_ms(2 * RT))
    fail_msg("after the idle clients timed out: %d after %llu ms: '%.80s'", code,
             (unsigned long long)freed, buf);
  assert_non_null(strstr(buf, "{\"status\":\"ok\"}"));
  close(idle[0]);
  close(idle[1]);
}

#define BIG_CONFIG_BYTES (16u << 20) /* far more than socket buffers hold */

static resil_status big_config_json(void *ctx, char **out) {
  (void)ctx;
  *out = malloc(BIG_CONFIG_BYTES + 1);
  if (!*out) return RESIL_E_NOMEM;
  memset(*out, 'x', BIG_CONFIG_BYTES);
  (*out)[BIG_CONFIG_BYTES] = 0;
  return RESIL_OK;
}

/* (f) A client that asks for a large response and never reads it (tiny
 * receive window) holds the only connection slot for read_timeout_ms at
 * most: meanwhile others get 503 at once, then the server drops it (its
 * socket is closed) and serves again. */
static void client_that_never_reads_cannot_hold_the_server(void **state) {
  (void)state;
  enum { RT = 1000 };
  start_with(1, RT, big_config_json);
  int fds_before = count_open_fds();
  int stuck = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(stuck >= 0);
  int small = 4096;
  assert_int_equal(setsockopt(stuck, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(resil_admin_port())};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(stuck, (struct sockaddr *)&a, sizeof a), 0);
  const char *req = "GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  assert_int_equal(send(stuck, req, strlen(req), 0), (ssize_t)strlen(req));
  uint64_t t0 = test_now_ms();
  wait_fds_at_least(fds_before, 2, "the stuck client"); /* accepted: it holds the slot */
  char buf[1024];
  uint64_t took = 0;
  int code = raw_get("/health", buf, sizeof buf, &took);
  if (code != 503 || took >= AT_ONCE_MS)
    fail_msg("while the slot is held: %d after %llu ms", code, (unsigned long long)took);
  /* Poll until the server serves again. */
  while ((code = raw_get("/health", buf, sizeof buf, NULL)) == 503 && test_now_ms() - t0 < 4 * RT)
    usleep(50 * 1000);
  uint64_t freed = test_now_ms() - t0;
  if (code != 200) fail_msg("still refused after %llu ms: %d", (unsigned long long)freed, code);
  if (freed < RT - 100 || freed > test_upper_ms(RT))
    fail_msg("slot freed after %llu ms, read_timeout_ms is %d", (unsigned long long)freed, RT);
  /* Only our end of the stuck connection is left open. */
  uint64_t w0 = test_now_ms();
  while (count_open_fds() != fds_before + 1 && test_now_ms() - w0 < 2000) usleep(20 * 1000);
  assert_int_equal(count_open_fds(), fds_before + 1);
  close(stuck);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_is_validated_and_defaults_are_local),
      cmocka_unit_test_teardown(start_and_stop_release_every_fd, stop_after),
      cmocka_unit_test_teardown(every_route_answers_with_its_status, stop_after),
      cmocka_unit_test_teardown(config_route_is_404_without_a_callback, stop_after),
      cmocka_unit_test_teardown(served_metrics_pass_promtool, stop_after),
      cmocka_unit_test_teardown(twenty_parallel_clients_are_all_served, stop_after),
      cmocka_unit_test_teardown(connections_over_the_limit_get_503, stop_after),
      cmocka_unit_test_teardown(slowloris_neither_blocks_others_nor_outlives_the_timeout,
                                stop_after),
      cmocka_unit_test_teardown(malformed_requests_from_a_raw_socket_get_400, stop_after),
      cmocka_unit_test_teardown(half_closing_client_gets_its_answer_and_head_has_no_body,
                                stop_after),
      cmocka_unit_test_teardown(default_bind_address_is_loopback, stop_after),
      cmocka_unit_test_teardown(oversized_request_gets_413_and_is_closed, stop_after),
      cmocka_unit_test_teardown(many_small_headers_are_bounded_by_max_request_bytes, stop_after),
      cmocka_unit_test_teardown(trickling_client_is_cut_at_read_timeout_while_others_are_served,
                                stop_after),
      cmocka_unit_test_teardown(idle_clients_over_the_limit_get_503_and_time_out, stop_after),
      cmocka_unit_test_teardown(client_that_never_reads_cannot_hold_the_server, stop_after),
  };
  return cmocka_run_group_tests_name("admin", tests, group_setup, group_teardown);
}
