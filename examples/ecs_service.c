/* ecs_service: a small HTTP/1.1 service of the kind that runs on AWS ECS, with
 * its three dependencies (Redis, PostgreSQL, an HTTP API) behind resil and
 * configured ONLY from environment variables - see examples/ecs/README.md and
 * examples/ecs/task-definition.json.
 *
 *   RESIL_DEPS=cache:redis,db:pg,upstream:http      + RESIL_DEP_<NAME>_<KEY>=...
 *   PORT=8080  BIND_ADDR=127.0.0.1  REQUEST_DEADLINE_MS=500   (this program's own)
 *
 *   GET /cache/<key>      Redis GET (404 if the key is absent)
 *   PUT /cache/<key>      Redis SET of the request body (204)
 *   GET /db/now           SELECT now()
 *   GET /db/sleep?ms=N    SELECT pg_sleep(N/1000): shows a deadline cutting a slow query
 *   GET /upstream/<path>  GET <RESIL_DEP_UPSTREAM_BASE_URL>/<path>, proxied
 *   GET /health /ready /metrics   liveness, readiness, Prometheus text
 *     (the container health check uses the admin endpoint, RESIL_ADMIN_PORT, instead:
 *     slow clients holding all 16 workers here cannot starve it; see examples/ecs/)
 *
 * Every request gets a deadline: REQUEST_DEADLINE_MS, or an inbound
 * `grpc-timeout` header if that ends earlier. Statuses map to HTTP: ok 200,
 * caller 400/404, local rejections (breaker_open, pool_timeout, draining...)
 * 503 with Retry-After, timeout/deadline 504, dependency failures 502; errors
 * carry {"error":"<resil_status_name>","detail":"<message>"}.
 * EMF metrics go to stdout (RESIL_EMF_INTERVAL_MS), logs to stderr.
 * SIGTERM: drain while still serving, then stop accepting and exit 0; calls still running
 * at the drain's deadline are cut (503 draining), so the exit comes within
 * RESIL_DRAIN_TIMEOUT_MS. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, pipe2, memmem */
#endif
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <resil/adapter.h> /* resil_parse_* for its own settings */
#include <resil/http.h>
#include <resil/pg.h>
#include <resil/redis.h>
#include <resil/resil.h>

#include "ecs_http.h" /* the request parser and response writer, fuzzed on their own */

extern char **environ;

#define WORKERS 16              /* fixed pool of threads, each serving one connection at a time */
#define MAX_HEAD 8192           /* request line + headers; larger: 431 */
#define MAX_BODY 65536          /* request body (PUT /cache); larger: 413 */
#define IO_TIMEOUT_MS 5000      /* to receive a whole request, and again to send the response */

static resil_redis *cache;      /* the three dependencies, made by resil_service_start() */
static resil_pg *db;
static resil_http *upstream;
static uint32_t deadline_ms = 500; /* REQUEST_DEADLINE_MS */
static int listen_fd = -1;
static int stop_pipe[2] = {-1, -1}; /* written once at shutdown: wakes every worker */

typedef struct request {
  char *method, *path, *query; /* NUL-terminated, inside the worker's buffer */
  const char *body;
  size_t body_len;
  resil_deadline deadline;
} request;

/* ---- Responses ---------------------------------------------------------------------- */

/* Write all of buf within IO_TIMEOUT_MS (a client that stops reading cannot hold us), and
 * not past shutdown: once the workers are told to stop, a client that is not reading loses
 * the rest of its answer rather than delaying the exit. */
static void send_all(int fd, const char *buf, size_t len) {
  resil_deadline until = resil_deadline_in_ms(IO_TIMEOUT_MS);
  while (len > 0) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) { buf += n; len -= (size_t)n; continue; }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return;
    struct pollfd p[2] = {{.fd = fd, .events = POLLOUT}, {.fd = stop_pipe[0], .events = POLLIN}};
    if (poll(p, 2, (int)resil_deadline_remaining_ms(until)) <= 0) return;
    if (p[1].revents && !p[0].revents) return;
  }
}

/* One response; every one closes the connection. extra: more header lines or NULL. The head
 * is checked before anything is sent: a value that cannot be a header, or a head that does
 * not fit, gets a 500 instead (never a truncated head, never bytes past the buffer). */
static void respond(int fd, int code, const char *ctype, const char *body, size_t len,
                    const char *extra) {
  char head[1024];
  ssize_t n = ecs_format_head(head, sizeof head, code, ctype, len, extra);
  if (n < 0) {
    static const char oops[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    send_all(fd, oops, sizeof oops - 1);
    return;
  }
  send_all(fd, head, (size_t)n);
  if (len) send_all(fd, body, len);
}

static void respond_json(int fd, int code, const char *json, const char *extra) {
  respond(fd, code, "application/json", json, strlen(json), extra);
}

/* {"error":"<name>","detail":"<text>"} with the detail JSON-escaped. */
static void respond_error(int fd, int code, const char *name, const char *detail,
                          const char *extra) {
  char json[1024];
  ecs_json_error(json, sizeof json, name, detail);
  respond_json(fd, code, json, extra);
}

/* Map a resil status to HTTP and answer with the error body. dep (may be NULL) is asked how
 * long its breaker stays open, for Retry-After; retry_after_ms is a hint from upstream. */
static void respond_status(int fd, resil_status st, const resil_err *err, resil_dep *dep,
                           uint32_t retry_after_ms) {
  int code;
  if (st == RESIL_E_TIMEOUT || st == RESIL_E_DEADLINE) code = 504; /* out of time */
  else if (st == RESIL_E_CALLER) code = 400;          /* the dependency refused our request */
  else if (st == RESIL_E_FAILURE) code = 502;         /* the dependency failed */
  else if (resil_status_is_rejection(st) || st == RESIL_E_OVERLOAD || st == RESIL_E_CLOSED)
    code = 503;                                       /* shed load: come back later */
  else code = 500;                                    /* invalid, nomem, system */
  char extra[64] = "";
  if (code == 503) {
    uint64_t secs = (retry_after_ms + 999) / 1000;
    if (st == RESIL_E_BREAKER_OPEN && dep) { /* until the break is over */
      resil_breaker_stats bs;
      resil_breaker_get_stats(resil_dep_breaker(dep), &bs);
      resil_deadline end = {bs.open_until_ns};
      if (bs.open_until_ns) secs = ((uint64_t)resil_deadline_remaining_ms(end) + 999) / 1000;
    }
    if (st == RESIL_E_PAUSED && dep) /* until the pause the upstream asked for is over */
      secs = (resil_dep_pause_remaining_ms(dep) + 999) / 1000;
    snprintf(extra, sizeof extra, "Retry-After: %llu\r\n",
             (unsigned long long)(secs ? secs : 1));
  }
  respond_error(fd, code, resil_status_name(st), err->msg, extra);
}

/* ---- Handlers ----------------------------------------------------------------------- */

/* Keys are 1..200 of [A-Za-z0-9._:-]: nothing to escape anywhere. */
static bool key_ok(const char *k) {
  size_t n = strlen(k);
  return n > 0 && n <= 200 && strspn(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789._:-") == n;
}

static void handle_cache(int fd, const request *rq, const char *key) {
  resil_err err;
  redisReply *r = NULL;
  resil_status st;
  bool put = strcmp(rq->method, "PUT") == 0;
  if (!key_ok(key)) {
    respond_error(fd, 400, "caller", "key: 1..200 of [A-Za-z0-9._:-]", NULL);
    return;
  }
  /* GET and SET are both idempotent: resil may retry them within the deadline. */
  if (put)
    st = resil_redis_command(cache, rq->deadline, RESIL_CALL_IDEMPOTENT, &r, &err, "SET %s %b",
                             key, rq->body ? rq->body : "", rq->body_len);
  else
    st = resil_redis_command(cache, rq->deadline, RESIL_CALL_IDEMPOTENT, &r, &err, "GET %s", key);
  if (st != RESIL_OK) respond_status(fd, st, &err, resil_redis_dep(cache), 0);
  else if (put) respond(fd, 204, "text/plain", "", 0, NULL);
  else if (r->type == REDIS_REPLY_STRING)
    respond(fd, 200, "application/octet-stream", r->str, r->len, NULL);
  else respond_error(fd, 404, "not_found", "cache: no such key", NULL); /* nil */
  if (r) freeReplyObject(r);
}

/* "/db/now" or "/db/sleep?ms=N" (N 0..60000). */
static void handle_db(int fd, const request *rq, const char *what) {
  char ms[8] = ""; /* N as a plain decimal: "00500" becomes "500" */
  const char *q = rq->query && strncmp(rq->query, "ms=", 3) == 0 ? rq->query + 3 : NULL;
  size_t n = q ? strspn(q, "0123456789") : 0;
  bool sleep = strcmp(what, "sleep") == 0;
  if (!sleep && strcmp(what, "now") != 0) {
    respond_error(fd, 404, "not_found", "no such route", NULL);
    return;
  }
  if (sleep && (n == 0 || n > 5 || q[n] || atoi(q) > 60000)) {
    respond_error(fd, 400, "caller", "query: ms=0..60000 is required", NULL);
    return;
  }
  if (sleep) snprintf(ms, sizeof ms, "%d", atoi(q));
  const char *params[] = {ms};
  PGresult *res = NULL;
  resil_err err;
  /* now() may be retried; pg_sleep is not (flags 0): a retry would only sleep again. */
  resil_status st =
      sleep ? resil_pg_query(db, rq->deadline, 0, "SELECT pg_sleep($1::float8 / 1000)", 1,
                             params, &res, &err)
            : resil_pg_query(db, rq->deadline, RESIL_CALL_IDEMPOTENT, "SELECT now()::text", 0,
                             NULL, &res, &err);
  if (st == RESIL_OK) {
    char json[128];
    if (sleep) snprintf(json, sizeof json, "{\"slept_ms\":%s}", ms); /* a JSON number */
    else snprintf(json, sizeof json, "{\"now\":\"%s\"}", resil_pg_value(res, 0, 0));
    respond_json(fd, 200, json, NULL);
  } else {
    respond_status(fd, st, &err, resil_pg_dep(db), 0);
  }
  PQclear(res);
}

/* "/upstream/<path>[?query]" -> GET <base_url>/<path>[?query]. */
static void handle_upstream(int fd, const request *rq, const char *path) {
  char target[2048];
  resil_http_response resp;
  resil_err err;
  if (snprintf(target, sizeof target, "/%s%s%s", path, rq->query ? "?" : "",
               rq->query ? rq->query : "") >= (int)sizeof target) {
    respond_error(fd, 400, "caller", "path too long", NULL);
    return;
  }
  /* The time left is sent downstream as grpc-timeout, so upstream can give up early too. */
  resil_status st = resil_http_get(upstream, rq->deadline, target, &resp, &err);
  if (st == RESIL_OK) {
    /* The upstream's Content-Type is forwarded only if it is a clean header value: a CR, LF or
     * other control character in it would let the upstream write the client's headers. */
    const char *ct = resil_http_response_header(&resp, "Content-Type");
    if (ct && !ecs_field_value_ok(ct, strlen(ct), ECS_MAX_CTYPE))
      respond_error(fd, 502, "failure",
                    "upstream: its Content-Type has control characters or is longer than 256 "
                    "bytes: not forwarded",
                    NULL);
    else
      respond(fd, (int)resp.status, ct ? ct : "application/octet-stream", resp.body,
              resp.body_len, NULL);
  } else if (st == RESIL_E_INVALID) { /* the client's path: e.g. a ".." segment */
    respond_error(fd, 400, "caller", err.msg, NULL);
  } else if (st == RESIL_E_CALLER && resp.status >= 400 && resp.status < 500) {
    respond_error(fd, (int)resp.status, "caller", err.msg, NULL); /* upstream's 404 stays 404 */
  } else {
    respond_status(fd, st, &err, resil_http_dep(upstream), resp.retry_after_ms);
  }
  resil_http_response_free(&resp);
}

static void handle_metrics(int fd) {
  char *text = NULL;
  size_t len = 0;
  resil_err err;
  if (resil_export_prometheus(&text, &len, &err) == RESIL_OK)
    respond(fd, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
  else
    respond_error(fd, 500, resil_status_name(err.status), err.msg, NULL);
  free(text);
}

static bool prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static void route(int fd, const request *rq) {
  char buf[512];
  const char *m = rq->method, *p = rq->path;
  bool get = strcmp(m, "GET") == 0;
  /* /health and /ready never touch a dependency: a slow database never gets a healthy task
   * killed by the container health check. */
  if (get && strcmp(p, "/health") == 0) respond_json(fd, resil_health(buf, sizeof buf), buf, NULL);
  else if (get && strcmp(p, "/ready") == 0) respond_json(fd, resil_ready(buf, sizeof buf), buf, NULL);
  else if (get && strcmp(p, "/metrics") == 0) handle_metrics(fd);
  else if (prefix(p, "/cache/") && (get || strcmp(m, "PUT") == 0)) handle_cache(fd, rq, p + 7);
  else if (prefix(p, "/db/") && get) handle_db(fd, rq, p + 4);
  else if (prefix(p, "/upstream/") && get) handle_upstream(fd, rq, p + 10);
  else if (prefix(p, "/cache/"))
    respond_error(fd, 405, "caller", "method not allowed", "Allow: GET, PUT\r\n");
  else if (prefix(p, "/db/") || prefix(p, "/upstream/") || !strcmp(p, "/health") ||
           !strcmp(p, "/ready") || !strcmp(p, "/metrics"))
    respond_error(fd, 405, "caller", "method not allowed", "Allow: GET\r\n");
  else respond_error(fd, 404, "not_found", "no such route", NULL);
}

/* ---- Reading a request -------------------------------------------------------------- */

#define READ_STOPPED (-2) /* fill(): the server is shutting down */

/* Read until `want` bytes are in buf (or, with want 0, until the end of the headers), by
 * `until`. Returns bytes held, -1 on timeout / hang-up, READ_STOPPED at shutdown, -400 for a
 * head that can never be valid. *head_len gets the head's length (want 0). */
static ssize_t fill(int fd, char *buf, size_t have, size_t cap, size_t want, resil_deadline until,
                    size_t *head_len) {
  size_t scanned = 0;
  for (;;) {
    if (want) {
      if (have >= want) return (ssize_t)have;
    } else {
      ssize_t end = ecs_head_end(buf, have, &scanned);
      if (end < 0) return -400;
      if (end > 0) {
        *head_len = (size_t)end;
        return (ssize_t)have;
      }
    }
    if (have == cap) return (ssize_t)have; /* full: the caller answers 431/413 */
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = stop_pipe[0], .events = POLLIN}};
    int r = poll(p, 2, (int)resil_deadline_remaining_ms(until));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    if (p[1].revents) return READ_STOPPED;
    ssize_t n = recv(fd, buf + have, cap - have, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1;
    if (n > 0) have += (size_t)n;
  }
}

/* Read and parse one request into rq (pointers into buf). 0, or the HTTP error to answer
 * (-1: just close). The parser (ecs_http.c) is strict: see ecs_http.h. */
static int read_request(int fd, char *buf, request *rq) {
  resil_deadline until = resil_deadline_in_ms(IO_TIMEOUT_MS); /* the whole request, not per read */
  size_t head_len = 0;
  ssize_t have = fill(fd, buf, 0, MAX_HEAD, 0, until, &head_len);
  if (have == READ_STOPPED) return 503;
  if (have == -400) return 400;
  if (have < 0) return resil_deadline_expired(until) ? 408 : -1;
  if (!head_len) return 431; /* the buffer filled up before the blank line */
  ecs_request h;
  int bad = ecs_parse_head(buf, head_len, MAX_BODY, &h);
  if (bad) return bad;
  rq->method = h.method;
  rq->path = h.path;
  rq->query = h.query;
  /* The request's deadline: ours, or the caller's (grpc-timeout) if earlier. */
  rq->deadline = resil_deadline_in_ms(deadline_ms);
  if (h.has_deadline) rq->deadline = resil_deadline_min(rq->deadline, h.deadline);
  /* The body: what came after the headers, then the rest. */
  size_t clen = h.content_length;
  char *body = buf + head_len;
  size_t got = (size_t)have - head_len;
  if (clen > got) {
    ssize_t r = fill(fd, body, got, clen, clen, until, NULL);
    if (r == READ_STOPPED) return 503;
    if (r < (ssize_t)clen) return resil_deadline_expired(until) ? 408 : -1;
  }
  rq->body = clen ? body : NULL;
  rq->body_len = clen;
  return 0;
}

/* After answering a bad request the client may still be sending: read and drop what it sends
 * for a moment (up to ms) before closing, or the kernel resets the connection and the answer
 * is lost. */
static void drop_input(int fd, int ms) {
  char junk[4096];
  resil_deadline until = resil_deadline_in_ms(ms);
  shutdown(fd, SHUT_WR);
  for (int i = 0; i < 64; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)resil_deadline_remaining_ms(until)) <= 0 ||
        recv(fd, junk, sizeof junk, MSG_DONTWAIT) <= 0)
      break;
  }
}

/* Shutting down: a connection gets a 503 it can act on (retry on another task), never an
 * empty reply. */
static void refuse_stopping(int fd) {
  respond_error(fd, 503, "draining", "the service is shutting down", "Retry-After: 1\r\n");
  drop_input(fd, 100);
}

static void *worker(void *arg) {
  (void)arg;
  char *buf = malloc(MAX_HEAD + MAX_BODY); /* one buffer per worker, reused */
  while (buf) {
    struct pollfd p[2] = {{.fd = listen_fd, .events = POLLIN}, {.fd = stop_pipe[0], .events = POLLIN}};
    if (poll(p, 2, -1) < 0 && errno != EINTR) break;
    if (p[1].revents) break;
    int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC); /* non-blocking listener: EAGAIN if */
    if (c < 0) {                                          /* another worker was faster */
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) usleep(10000); /* no spin */
      continue;
    }
    request rq = {0};
    int bad = read_request(c, buf, &rq);
    if (bad == 0) route(c, &rq);
    else if (bad == 503) refuse_stopping(c);
    else if (bad > 0) {
      respond_error(c, bad, "caller", ecs_reason(bad), NULL);
      drop_input(c, 500);
    }
    close(c);
  }
  /* Connections already accepted by the kernel (in the listen backlog) get their 503 too,
   * before the listener closes and would reset them: at most a backlog's worth, in 500 ms. */
  resil_deadline backlog_until = resil_deadline_in_ms(500);
  for (int i = 0; buf && i < 512 && !resil_deadline_expired(backlog_until); i++) {
    int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) break;
    refuse_stopping(c);
    close(c);
  }
  free(buf);
  return NULL;
}

/* ---- main --------------------------------------------------------------------------- */

static int fail(const char *what, const char *why) {
  fprintf(stderr, "ecs_service: %s: %s\n", what, why);
  return 1;
}

int main(void) {
  /* 1. This program's own settings. Not RESIL_*: resil rejects RESIL_ names it does not know. */
  resil_err err;
  uint32_t port = 8080;
  const char *v, *bind_addr = getenv("BIND_ADDR") ? getenv("BIND_ADDR") : "127.0.0.1";
  if ((v = getenv("PORT")) && (resil_parse_uint("PORT", v, &port, &err) != RESIL_OK || port > 65535))
    return fail("PORT", "must be 0..65535 (0: any free port)");
  if ((v = getenv("REQUEST_DEADLINE_MS")) &&
      (resil_parse_ms("REQUEST_DEADLINE_MS", v, &deadline_ms, &err) != RESIL_OK || !deadline_ms))
    return fail("REQUEST_DEADLINE_MS", "must be a duration > 0, e.g. 500ms or 2s");

  /* 2. resil from the environment: dependencies, EMF, admin endpoint, SIGTERM handler. A bad
   * task definition exits 1 here, with every problem listed by variable. */
  resil_service *svc;
  char *report = NULL;
  if (resil_service_start(environ, &svc, &report, &err) != RESIL_OK) {
    fprintf(stderr, "ecs_service: configuration:\n%s\n", report ? report : err.msg);
    free(report);
    return 1;
  }
  cache = resil_service_get(svc, "cache", "redis");
  db = resil_service_get(svc, "db", "pg");
  upstream = resil_service_get(svc, "upstream", "http");
  if (!cache || !db || !upstream) {
    resil_service_stop(svc, NULL);
    return fail("RESIL_DEPS", "must name cache:redis, db:pg and upstream:http");
  }

  /* 3. One listening socket, shared by a fixed pool of workers. */
  struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM};
  struct addrinfo *ai = NULL;
  char portstr[8];
  snprintf(portstr, sizeof portstr, "%u", port);
  int one = 1;
  if (getaddrinfo(bind_addr, portstr, &hints, &ai) != 0) {
    resil_service_stop(svc, NULL);
    return fail("BIND_ADDR", "must be a numeric IPv4 or IPv6 address");
  }
  listen_fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd < 0 || setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(listen_fd, ai->ai_addr, ai->ai_addrlen) || listen(listen_fd, 512) ||
      pipe2(stop_pipe, O_CLOEXEC)) {
    freeaddrinfo(ai);
    resil_service_stop(svc, NULL);
    return fail("listen", strerror(errno));
  }
  freeaddrinfo(ai);
  struct sockaddr_storage sa;
  socklen_t salen = sizeof sa;
  char host[64] = "?", serv[8] = "?";
  getsockname(listen_fd, (struct sockaddr *)&sa, &salen);
  getnameinfo((struct sockaddr *)&sa, salen, host, sizeof host, serv, sizeof serv,
              NI_NUMERICHOST | NI_NUMERICSERV);
  pthread_t workers[WORKERS];
  size_t started = 0;
  while (started < WORKERS && pthread_create(&workers[started], NULL, worker, NULL) == 0) started++;
  fprintf(stderr, "ecs_service: listening on %s:%s (%zu workers, request deadline %u ms)\n",
          host, serv, started, deadline_ms);

  /* 4. Serve until SIGTERM (ECS sends it, then SIGKILL after stopTimeout). */
  while (started && !resil_service_wait(svc, resil_deadline_in_ms(1000))) {}

  /* 5. Drain WHILE STILL SERVING: /ready turns 503 at once; calls are still admitted for
   * RESIL_DRAIN_GRACE_MS (the load balancer may still send some); then they are rejected
   * (503 "draining", Retry-After); in-flight calls get up to RESIL_DRAIN_TIMEOUT_MS. */
  const resil_service_config *sc = resil_config_service(resil_service_get_config(svc));
  fprintf(stderr, "ecs_service: SIGTERM: draining (grace %u ms, timeout %u ms)\n",
          sc->drain_grace_ms, sc->drain_timeout_ms);
  if (resil_drain(sc->drain_grace_ms, resil_deadline_in_ms(sc->drain_timeout_ms), &err) != RESIL_OK)
    fprintf(stderr, "ecs_service: %s\n", err.msg);

  /* 6. Stop accepting; each worker finishes the request it is on (calls now fail fast). */
  if (write(stop_pipe[1], "x", 1) != 1) perror("ecs_service: stop");
  for (size_t i = 0; i < started; i++) pthread_join(workers[i], NULL);
  close(listen_fd);

  /* 7. Free everything. No worker runs any more, so no call can touch a freed dependency.
   * resil_service_stop() drains again, which returns at once: the grace was had and
   * nothing is in flight. */
  resil_status st = resil_service_stop(svc, &err);
  fprintf(stderr, "ecs_service: stopped%s%s\n", st == RESIL_OK ? "" : ": ",
          st == RESIL_OK ? "" : err.msg);
  close(stop_pipe[0]);
  close(stop_pipe[1]);
  return started ? 0 : 1;
}
