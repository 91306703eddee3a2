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

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

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
  int fd = raw_connect();
  assert_int_equal(send(fd, "GET /he", 7, 0), 7);
  usleep(100 * 1000);
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
  int a = raw_connect(), b = raw_connect();
  assert_int_equal(send(a, "GET", 3, 0), 3);
  assert_int_equal(send(b, "GET", 3, 0), 3);
  usleep(200 * 1000); /* both accepted */
  resp *r = malloc(sizeof *r);
  curl(r, "", "/health");
  assert_int_equal(r->code, 503);
  assert_non_null(strstr(r->body, "too many connections"));
  close(a);
  close(b);
  /* Slots free again once those clients are gone. */
  uint64_t t0 = mono_ms();
  do {
    usleep(50 * 1000);
    curl(r, "", "/health");
  } while (r->code != 200 && mono_ms() - t0 < 10000);
  assert_int_equal(r->code, 200);
  free(r);
}

static void slowloris_neither_blocks_others_nor_outlives_the_timeout(void **state) {
  (void)state;
  need_curl();
  start(16, false);
  int slow = raw_connect();
  int silent = raw_connect(); /* sends nothing at all */
  uint64_t t0 = mono_ms();
  const char *half = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  assert_int_equal(send(slow, half, strlen(half), 0), (ssize_t)strlen(half));
  usleep(100 * 1000);
  assert_int_equal(send(slow, "a", 1, 0), 1);
  /* A concurrent client is served at once, not after the slow one. */
  resp *r = malloc(sizeof *r);
  uint64_t c0 = mono_ms();
  curl(r, "", "/health");
  uint64_t took = mono_ms() - c0;
  assert_int_equal(r->code, 200);
  if (took >= READ_TIMEOUT_MS - 500) fail_msg("curl took %llu ms: blocked by the slow client",
                                               (unsigned long long)took);
  free(r);
  /* The slow client gets 408 and is closed after the read timeout. */
  char buf[1024];
  ssize_t n = raw_read_all(slow, buf, sizeof buf);
  uint64_t closed_after = mono_ms() - t0;
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
    uint64_t t0 = mono_ms();
    ssize_t n = raw_read_all(fd, buf, sizeof buf);
    close(fd);
    if (n <= 0 || !strstr(buf, "HTTP/1.1 400 "))
      fail_msg("request %zu: expected 400, got '%.60s'", i, n > 0 ? buf : "(nothing)");
    assert_true(mono_ms() - t0 < READ_TIMEOUT_MS); /* at once, not at the timeout */
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
  };
  return cmocka_run_group_tests_name("admin", tests, group_setup, group_teardown);
}
