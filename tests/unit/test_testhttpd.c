/* The HTTP/1.1 test server (tests/support/testhttpd.c), driven over raw sockets on loopback.
 * meson passes the server binary's path as argv[1]. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *server_path;

/* ------------------------------------------------------------------ process control */

typedef struct server {
  pid_t pid;
  int out_fd; /* read end of its stdout */
  uint16_t port;
} server;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void server_start(server *s, const char *const *extra_args) {
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  posix_spawn_file_actions_addclose(&fa, pfd[1]);
  char *argv[16];
  int n = 0;
  argv[n++] = (char *)server_path;
  argv[n++] = (char *)"--port";
  argv[n++] = (char *)"0";
  for (int i = 0; extra_args && extra_args[i] && n < 15; i++) argv[n++] = (char *)extra_args[i];
  argv[n] = NULL;
  int rc = posix_spawn(&s->pid, server_path, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pfd[1]);
  if (rc != 0) fail_msg("spawn %s: %s", server_path, strerror(rc));
  s->out_fd = pfd[0];

  /* the first line is PORT=<n> */
  char line[64];
  size_t len = 0;
  double t0 = now_ms();
  while (len < sizeof line - 1 && (len == 0 || line[len - 1] != '\n')) {
    struct pollfd pf = {.fd = s->out_fd, .events = POLLIN};
    int left = (int)(20000 - (now_ms() - t0));
    if (left <= 0 || poll(&pf, 1, left) <= 0) fail_msg("no PORT= line from testhttpd");
    ssize_t r = read(s->out_fd, line + len, 1);
    if (r <= 0) fail_msg("testhttpd exited before printing PORT=");
    len += (size_t)r;
  }
  line[len] = '\0';
  unsigned port = 0;
  if (sscanf(line, "PORT=%u", &port) != 1 || port == 0 || port > 65535) fail_msg("bad first line '%s'", line);
  s->port = (uint16_t)port;
}

/* SIGTERM, wait up to 15 s; returns the wait status (or -1 if it had to be killed). */
static int server_stop(server *s) {
  kill(s->pid, SIGTERM);
  int status = 0;
  double t0 = now_ms();
  for (;;) {
    pid_t r = waitpid(s->pid, &status, WNOHANG);
    if (r == s->pid) break;
    if (now_ms() - t0 > 15000) {
      kill(s->pid, SIGKILL);
      waitpid(s->pid, &status, 0);
      status = -1;
      break;
    }
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  close(s->out_fd);
  return status;
}

/* ------------------------------------------------------------------ a tiny HTTP client */

typedef struct conn {
  int fd;
  char buf[1 << 16];
  size_t len;
} conn;

typedef struct response {
  int status;
  char head[8192];
  char *body;
  size_t body_len;
  long content_length;
  bool eof; /* the server closed the connection after (or during) the body */
} response;

static int dial(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) fail_msg("connect: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static conn *conn_open(uint16_t port) {
  conn *c = calloc(1, sizeof *c);
  assert_non_null(c);
  c->fd = dial(port);
  return c;
}

static void conn_close(conn *c) {
  close(c->fd);
  free(c);
}

static void send_str(conn *c, const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
    assert_true(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

/* Read more into c->buf. 1: data; 0: EOF; -1: timeout. */
static int fill(conn *c, int timeout_ms) {
  assert_true(c->len < sizeof c->buf);
  struct pollfd pf = {.fd = c->fd, .events = POLLIN};
  if (poll(&pf, 1, timeout_ms) <= 0) return -1;
  ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
  if (r <= 0) return 0;
  c->len += (size_t)r;
  return 1;
}

static void consume(conn *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* The value of header `name` in r->head, copied to out; false if absent. */
static bool header(const response *r, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  const char *p = strstr(r->head, "\r\n");
  while (p && p[2] != '\0') {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (*v == ' ') v++;
      size_t vl = strcspn(v, "\r");
      if (vl >= cap) vl = cap - 1;
      memcpy(out, v, vl);
      out[vl] = '\0';
      return true;
    }
    p = strstr(p, "\r\n");
  }
  return false;
}

/* Read one response (head + Content-Length body, or up to EOF). Skips 1xx responses. */
static void read_response(conn *c, response *r, bool head_only_method) {
  memset(r, 0, sizeof *r);
  for (;;) {
    char *e;
    double t0 = now_ms();
    while ((e = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL) {
      int f = fill(c, 10000);
      if (f <= 0) fail_msg("no response head (%s)", f == 0 ? "EOF" : "timeout");
      assert_true(now_ms() - t0 < 20000);
    }
    size_t hl = (size_t)(e - c->buf) + 4;
    assert_true(hl < sizeof r->head);
    memcpy(r->head, c->buf, hl);
    r->head[hl] = '\0';
    consume(c, hl);
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1);
    if (r->status >= 200) break;
  }
  char v[64];
  r->content_length = header(r, "Content-Length", v, sizeof v) ? atol(v) : -1;
  if (head_only_method || r->status == 204 || r->status == 304) return;
  assert_true(r->content_length >= 0);
  size_t want = (size_t)r->content_length;
  r->body = malloc(want + 1);
  assert_non_null(r->body);
  while (r->body_len < want) {
    if (c->len == 0) {
      int f = fill(c, 10000);
      if (f == 0) {
        r->eof = true;
        break;
      }
      if (f < 0) fail_msg("body timed out after %zu of %zu bytes", r->body_len, want);
    }
    size_t k = want - r->body_len < c->len ? want - r->body_len : c->len;
    memcpy(r->body + r->body_len, c->buf, k);
    r->body_len += k;
    consume(c, k);
  }
  r->body[r->body_len] = '\0';
}

static void response_free(response *r) {
  free(r->body);
  r->body = NULL;
}

/* One request on a fresh connection; the connection is closed afterwards. */
static void fetch(uint16_t port, const char *req, response *r) {
  conn *c = conn_open(port);
  send_str(c, req);
  read_response(c, r, strncmp(req, "HEAD ", 5) == 0);
  conn_close(c);
}

static bool conn_sees_eof(conn *c, int timeout_ms) {
  return fill(c, timeout_ms) == 0;
}

typedef struct stats {
  long accepted, requests, open, max_open;
} stats;

static void parse_stats(const response *r, stats *s) {
  assert_int_equal(r->status, 200);
  int n = sscanf(r->body, "{\"accepted\":%ld,\"requests\":%ld,\"open\":%ld,\"max_open\":%ld}", &s->accepted,
                 &s->requests, &s->open, &s->max_open);
  assert_int_equal(n, 4);
}

static void stats_reset(uint16_t port) {
  response r;
  fetch(port, "POST /stats/reset HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  response_free(&r);
}

/* ------------------------------------------------------------------ fixture */

static server srv;

static int group_setup(void **state) {
  (void)state;
  server_start(&srv, NULL);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  int st = server_stop(&srv);
  return (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) ? 0 : -1;
}

/* ------------------------------------------------------------------ tests */

static void fast_answers_ok(void **state) {
  (void)state;
  response r;
  fetch(srv.port, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.content_length, 2);
  assert_string_equal(r.body, "ok");
  response_free(&r);
}

static void head_gets_headers_only(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "HEAD /big?bytes=1000 HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  response r;
  read_response(c, &r, true);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.content_length, 1000);
  read_response(c, &r, false); /* the next response follows at once: no body was sent */
  assert_string_equal(r.body, "ok");
  response_free(&r);
  conn_close(c);
}

static void slow_waits_at_least_ms(void **state) {
  (void)state;
  response r;
  double t0 = now_ms();
  fetch(srv.port, "GET /slow?ms=200 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  double dt = now_ms() - t0;
  assert_int_equal(r.status, 200);
  assert_true(dt >= 200.0);
  assert_true(dt < 10000.0);
  response_free(&r);
}

static void slow_request_ends_when_the_client_hangs_up(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
  conn *q = conn_open(srv.port);
  response r;
  stats s;
  send_str(q, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(q, &r, false);
  parse_stats(&r, &s);
  response_free(&r);
  assert_true(s.open >= 2);
  conn_close(c); /* gives up long before 60 s */
  double t0 = now_ms();
  for (;;) {
    send_str(q, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
    read_response(q, &r, false);
    parse_stats(&r, &s);
    response_free(&r);
    if (s.open == 1) break;
    assert_true(now_ms() - t0 < 10000);
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  conn_close(q);
}

static void status_path_sets_the_status(void **state) {
  (void)state;
  const int codes[] = {200, 404, 429, 500, 502, 503, 504};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    char req[128];
    snprintf(req, sizeof req, "GET /status/%d HTTP/1.1\r\nHost: t\r\n\r\n", codes[i]);
    response r;
    fetch(srv.port, req, &r);
    assert_int_equal(r.status, codes[i]);
    response_free(&r);
  }
  response r;
  fetch(srv.port, "GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 204);
  response_free(&r);
  fetch(srv.port, "GET /status/abc HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 400);
  response_free(&r);
}

static void retry_after_sends_header_and_code(void **state) {
  (void)state;
  response r;
  char v[32];
  fetch(srv.port, "GET /retry-after?s=7&code=429 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 429);
  assert_true(header(&r, "Retry-After", v, sizeof v));
  assert_string_equal(v, "7");
  response_free(&r);
  fetch(srv.port, "GET /retry-after?s=2 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 503);
  assert_true(header(&r, "retry-after", v, sizeof v));
  assert_string_equal(v, "2");
  response_free(&r);
}

static void big_sends_n_patterned_bytes(void **state) {
  (void)state;
  response r;
  fetch(srv.port, "GET /big?bytes=300000 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, 300000);
  for (size_t i = 0; i < r.body_len; i++)
    if (r.body[i] != (char)('a' + i % 26)) fail_msg("byte %zu is wrong", i);
  response_free(&r);
  fetch(srv.port, "GET /big?bytes=0 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.body_len, 0);
  response_free(&r);
}

static void drip_sends_head_first_then_a_byte_every_ms(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  double t0 = now_ms();
  send_str(c, "GET /drip?bytes=5&ms=60 HTTP/1.1\r\nHost: t\r\n\r\n");
  /* the head arrives before the body is complete */
  while (!memmem(c->buf, c->len, "\r\n\r\n", 4)) assert_int_equal(fill(c, 10000), 1);
  char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
  size_t body_so_far = c->len - (size_t)(e + 4 - c->buf);
  assert_true(body_so_far < 5);
  response r;
  read_response(c, &r, false);
  double dt = now_ms() - t0;
  assert_int_equal(r.content_length, 5);
  assert_string_equal(r.body, "abcde");
  assert_true(dt >= 300.0);
  assert_true(dt < 10000.0);
  response_free(&r);
  conn_close(c);
}

static void cut_sends_half_the_declared_body_then_closes(void **state) {
  (void)state;
  response r;
  fetch(srv.port, "GET /cut?bytes=100 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.content_length, 100);
  assert_int_equal(r.body_len, 50);
  assert_true(r.eof);
  response_free(&r);
}

static void echo_reflects_body_and_headers(void **state) {
  (void)state;
  response r;
  char v[64];
  fetch(srv.port,
        "POST /echo HTTP/1.1\r\nHost: t\r\ngrpc-timeout: 250m\r\nX-Request-Id: abc-123\r\n"
        "Content-Type: text/x-test\r\nContent-Length: 11\r\n\r\nhello world",
        &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world");
  assert_true(header(&r, "X-Echo-grpc-timeout", v, sizeof v));
  assert_string_equal(v, "250m");
  assert_true(header(&r, "X-Echo-X-Request-Id", v, sizeof v));
  assert_string_equal(v, "abc-123");
  assert_true(header(&r, "X-Echo-Method", v, sizeof v));
  assert_string_equal(v, "POST");
  assert_true(header(&r, "Content-Type", v, sizeof v));
  assert_string_equal(v, "text/x-test");
  response_free(&r);
}

static void echo_accepts_chunked_bodies_and_expect_continue(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
  /* the server says 100 Continue before we send the body */
  while (!memmem(c->buf, c->len, "\r\n\r\n", 4)) assert_int_equal(fill(c, 10000), 1);
  assert_true(strncmp(c->buf, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
  send_str(c, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  response r;
  read_response(c, &r, false);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world");
  response_free(&r);
  conn_close(c);
}

static void keep_alive_serves_many_requests_on_one_connection(void **state) {
  (void)state;
  stats_reset(srv.port);
  conn *c = conn_open(srv.port);
  response r;
  send_str(c, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(c, &r, false);
  assert_int_equal(r.status, 200);
  response_free(&r);
  send_str(c, "GET /status/503 HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(c, &r, false);
  assert_int_equal(r.status, 503); /* an error status keeps the connection too */
  response_free(&r);
  send_str(c, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(c, &r, false);
  stats s;
  parse_stats(&r, &s);
  assert_int_equal(s.accepted, 1);
  assert_int_equal(s.requests, 2);
  assert_true(s.open >= 1);
  response_free(&r);
  conn_close(c);
}

static void pipelined_requests_get_responses_in_order(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "GET /status/201 HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
              "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz");
  response r;
  read_response(c, &r, false);
  assert_int_equal(r.status, 201);
  response_free(&r);
  read_response(c, &r, false);
  assert_string_equal(r.body, "ok");
  response_free(&r);
  read_response(c, &r, false);
  assert_string_equal(r.body, "xyz");
  response_free(&r);
  conn_close(c);
}

static void connection_close_is_honoured(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  response r;
  read_response(c, &r, false);
  char v[32];
  assert_true(header(&r, "Connection", v, sizeof v));
  assert_string_equal(v, "close");
  assert_true(conn_sees_eof(c, 10000));
  response_free(&r);
  conn_close(c);
}

static void http10_closes_unless_keep_alive(void **state) {
  (void)state;
  conn *c = conn_open(srv.port);
  send_str(c, "GET /fast HTTP/1.0\r\n\r\n");
  response r;
  read_response(c, &r, false);
  assert_int_equal(r.status, 200);
  assert_true(conn_sees_eof(c, 10000));
  response_free(&r);
  conn_close(c);

  c = conn_open(srv.port);
  send_str(c, "GET /fast HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /fast HTTP/1.0\r\n\r\n");
  read_response(c, &r, false);
  response_free(&r);
  read_response(c, &r, false);
  assert_string_equal(r.body, "ok");
  response_free(&r);
  conn_close(c);
}

static void unknown_path_is_404_and_bad_request_is_400(void **state) {
  (void)state;
  response r;
  fetch(srv.port, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 404);
  response_free(&r);
  fetch(srv.port, "this is not http\r\n\r\n", &r);
  assert_int_equal(r.status, 400);
  response_free(&r);
  fetch(srv.port, "GET /stats/reset HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 405);
  response_free(&r);
}

static void stats_count_connections_and_reset(void **state) {
  (void)state;
  stats_reset(srv.port);
  conn *c[3];
  response r;
  for (int i = 0; i < 3; i++) {
    c[i] = conn_open(srv.port);
    send_str(c[i], "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
    read_response(c[i], &r, false);
    response_free(&r);
  }
  conn *q = conn_open(srv.port);
  send_str(q, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(q, &r, false);
  stats s;
  parse_stats(&r, &s);
  response_free(&r);
  assert_int_equal(s.accepted, 4);
  assert_int_equal(s.requests, 3);
  assert_true(s.open >= 4);
  assert_true(s.max_open >= 4);
  for (int i = 0; i < 3; i++) conn_close(c[i]);

  /* once the three are gone, open drops back (the server notices asynchronously) */
  double t0 = now_ms();
  for (;;) {
    send_str(q, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
    read_response(q, &r, false);
    parse_stats(&r, &s);
    response_free(&r);
    if (s.open == 1) break;
    assert_true(now_ms() - t0 < 10000);
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  send_str(q, "POST /stats/reset HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
  read_response(q, &r, false);
  parse_stats(&r, &s);
  response_free(&r);
  assert_int_equal(s.accepted, 0);
  assert_int_equal(s.requests, 0);
  assert_int_equal(s.open, 1);
  assert_int_equal(s.max_open, 1);
  conn_close(q);
}

static void max_conns_holds_extra_clients_in_the_backlog(void **state) {
  (void)state;
  server s2;
  const char *args[] = {"--max-conns", "2", NULL};
  server_start(&s2, args);
  conn *a = conn_open(s2.port), *b = conn_open(s2.port);
  response r;
  send_str(a, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(a, &r, false);
  response_free(&r);
  send_str(b, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(b, &r, false);
  response_free(&r);
  /* a third client connects (kernel backlog) but is not served while two are open */
  conn *c = conn_open(s2.port);
  send_str(c, "GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
  struct pollfd pf = {.fd = c->fd, .events = POLLIN};
  assert_int_equal(poll(&pf, 1, 300), 0);
  conn_close(a);
  read_response(c, &r, false);
  stats s;
  parse_stats(&r, &s);
  assert_true(s.max_open <= 2);
  assert_int_equal(s.accepted, 3);
  response_free(&r);
  conn_close(b);
  conn_close(c);
  int st = server_stop(&s2);
  assert_true(st != -1 && WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

static void sigterm_closes_idle_connections_and_exits_zero(void **state) {
  (void)state;
  server s2;
  server_start(&s2, NULL);
  conn *idle = conn_open(s2.port);
  response r;
  send_str(idle, "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
  read_response(idle, &r, false);
  response_free(&r);
  conn *busy = conn_open(s2.port);
  send_str(busy, "GET /slow?ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
  struct timespec ts = {0, 50000000};
  nanosleep(&ts, NULL);
  double t0 = now_ms();
  int st = server_stop(&s2);
  assert_true(now_ms() - t0 < 10000); /* did not wait for the 60 s request */
  assert_true(st != -1 && WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  assert_true(conn_sees_eof(idle, 5000));
  assert_true(conn_sees_eof(busy, 5000));
  conn_close(idle);
  conn_close(busy);
}

/* /work follows POST /scenario: its latency, its error share, and serve_max
 * (the rest queue; a slot taken is kept to the end even if the client left). */
static void scenario_scripts_work(void **state) {
  (void)state;
  server s2;
  server_start(&s2, NULL);
  response r;
  fetch(s2.port, "GET /scenario HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 405);
  response_free(&r);
  fetch(s2.port, "POST /scenario?min_us=5&max_us=4 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
  assert_int_equal(r.status, 400);
  response_free(&r);
  fetch(s2.port, "POST /scenario?error_pct=101 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
  assert_int_equal(r.status, 400);
  response_free(&r);
  /* Latency and failures: every answer a 503 after 100-120 ms. */
  fetch(s2.port, "POST /scenario?min_us=100000&max_us=120000&error_pct=100 HTTP/1.1\r\nHost: t\r\n"
                 "Content-Length: 0\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"error_pct\":100"));
  response_free(&r);
  for (int i = 0; i < 3; i++) {
    double t0 = now_ms();
    fetch(s2.port, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_int_equal(r.status, 503);
    assert_true(now_ms() - t0 >= 100.0);
    response_free(&r);
  }
  /* No failures: 200 "ok", and about half 503s at 50 %. */
  fetch(s2.port, "POST /scenario HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
  response_free(&r);
  fetch(s2.port, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "ok");
  response_free(&r);
  fetch(s2.port, "POST /scenario?error_pct=50 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
  response_free(&r);
  int fails = 0;
  conn *c = conn_open(s2.port);
  for (int i = 0; i < 200; i++) {
    send_str(c, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
    read_response(c, &r, false);
    assert_true(r.status == 200 || r.status == 503);
    fails += r.status == 503;
    response_free(&r);
  }
  conn_close(c);
  assert_in_range(fails, 60, 140);
  /* serve_max 1, 200 ms each: a client that hangs up keeps its slot, so the
   * next request waits for the rest of it, then for its own 200 ms. */
  fetch(s2.port, "POST /scenario?min_us=200000&max_us=200000&serve_max=1 HTTP/1.1\r\nHost: t\r\n"
                 "Content-Length: 0\r\n\r\n", &r);
  response_free(&r);
  conn *gone = conn_open(s2.port);
  double t0 = now_ms();
  send_str(gone, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
  struct timespec ts = {0, 20000000};
  nanosleep(&ts, NULL);
  conn_close(gone);
  fetch(s2.port, "GET /work HTTP/1.1\r\nHost: t\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_true(now_ms() - t0 >= 400.0);
  response_free(&r);
  int st = server_stop(&s2);
  assert_true(st != -1 && WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

int main(int argc, char **argv) {
  server_path = argc > 1 ? argv[1] : getenv("TESTHTTPD");
  if (!server_path || access(server_path, X_OK) != 0) {
    fprintf(stderr, "usage: %s PATH_TO_TESTHTTPD (or set TESTHTTPD)\n", argv[0]);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fast_answers_ok),
      cmocka_unit_test(head_gets_headers_only),
      cmocka_unit_test(slow_waits_at_least_ms),
      cmocka_unit_test(slow_request_ends_when_the_client_hangs_up),
      cmocka_unit_test(status_path_sets_the_status),
      cmocka_unit_test(retry_after_sends_header_and_code),
      cmocka_unit_test(big_sends_n_patterned_bytes),
      cmocka_unit_test(drip_sends_head_first_then_a_byte_every_ms),
      cmocka_unit_test(cut_sends_half_the_declared_body_then_closes),
      cmocka_unit_test(echo_reflects_body_and_headers),
      cmocka_unit_test(echo_accepts_chunked_bodies_and_expect_continue),
      cmocka_unit_test(keep_alive_serves_many_requests_on_one_connection),
      cmocka_unit_test(pipelined_requests_get_responses_in_order),
      cmocka_unit_test(connection_close_is_honoured),
      cmocka_unit_test(http10_closes_unless_keep_alive),
      cmocka_unit_test(unknown_path_is_404_and_bad_request_is_400),
      cmocka_unit_test(stats_count_connections_and_reset),
      cmocka_unit_test(max_conns_holds_extra_clients_in_the_backlog),
      cmocka_unit_test(sigterm_closes_idle_connections_and_exits_zero),
      cmocka_unit_test(scenario_scripts_work),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
