/* testhttpd — a small HTTP/1.1 server for resil's HTTP adapter tests and the demo.
 *
 * Usage: testhttpd [--port N] [--max-conns N] [--idle-ms N]   (or: testhttpd PORT)
 *
 * Listens on 127.0.0.1 only. The first line on stdout is always "PORT=<n>" (flushed), so
 * `--port 0` (the default) picks an ephemeral port that a script or test can read back.
 * One thread per connection, at most --max-conns (default 256) at once; further clients
 * wait in the listen backlog. HTTP/1.1 persistent connections (HTTP/1.0 with
 * "Connection: keep-alive"); request bodies with Content-Length or chunked encoding;
 * "Expect: 100-continue" is answered; every response has a Content-Length. An idle
 * keep-alive connection is closed after --idle-ms (default 120000).
 * SIGTERM/SIGINT: stop accepting, close idle connections, cut requests in progress (slow,
 * drip), wait up to 5 s for connection threads, exit 0.
 *
 * Endpoints (any method unless noted; HEAD gets headers only):
 *   /fast                       200 "ok"
 *   /slow?ms=N                  sleeps N ms, then 200 "ok"
 *                               (/slow and /drip end early, closing the connection, when
 *                               the client hangs up, so "open" in /stats drops promptly)
 *   /status/NNN                 status NNN (100..599) with a short text body
 *   /retry-after?s=N&code=C     status C (default 503; e.g. 429) with "Retry-After: N"
 *   /big?bytes=N                200 with an N-byte body: byte i is 'a' + i % 26
 *   /drip?bytes=N&ms=M          200, Content-Length N, then one byte every M ms (sleep first)
 *   /cut?bytes=N                200, Content-Length N, N/2 bytes, then the connection closes
 *   /echo                       200 with the request body; each request header H: v is
 *                               reflected as "X-Echo-H: v", plus "X-Echo-Method: <method>"
 *   /work                       the scripted dependency (the brownout demo's): answers as the
 *                               last POST /scenario says (default: 200 "ok" at once). After a
 *                               latency uniform in [min_us, max_us] (drawn per request), 503
 *                               "unavailable" for error_pct % of requests (drawn per request),
 *                               else 200 "ok". With serve_max > 0 at most serve_max requests
 *                               are served at once and the rest queue for a slot; a request
 *                               that has a slot is worked to its end even if the client hung
 *                               up (the capacity is spent anyway). Without serve_max the wait
 *                               ends early, closing the connection, when the client hangs up.
 *   POST /scenario?min_us=A&max_us=B&error_pct=P&serve_max=N
 *                               sets what /work does (omitted: 0; A <= B <= 600 s, P 0..100,
 *                               N 0..10000, else 400); answers 200 with the scenario as JSON;
 *                               requests already in /work keep what they drew
 *   /stats                      {"accepted":A,"requests":R,"open":O,"max_open":M}
 *                               A connections accepted, R requests received (not counting
 *                               /stats and /stats/reset), O connections open now (including
 *                               the one asking), M most connections open at once
 *   POST /stats/reset           zeroes A and R, sets M to O; answers with the new stats
 *   anything else               404
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 16384
#define MAX_HEADERS 64
#define MAX_BODY (64u * 1024u * 1024u)
#define MAX_BIG (1024ull * 1024ull * 1024ull)
#define MAX_SLEEP_MS 600000L

static struct {
  int lfd;
  int stop_pipe[2];
  int max_conns;
  int idle_ms;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned long accepted, requests;
  unsigned open, max_open;
  /* /work's scenario (POST /scenario) and its slots in use; under mu */
  long min_us, max_us;
  int error_pct, serve_max, serving;
  unsigned long seq; /* seeds each connection thread's random numbers */
} g = {.lfd = -1, .stop_pipe = {-1, -1}, .max_conns = 256, .idle_ms = 120000,
       .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void on_signal(int sig) {
  (void)sig;
  int saved = errno;
  char b = 1;
  ssize_t r = write(g.stop_pipe[1], &b, 1);
  (void)r;
  errno = saved;
}

static bool stopping(void) {
  struct pollfd pf = {.fd = g.stop_pipe[0], .events = POLLIN};
  return poll(&pf, 1, 0) > 0;
}

/* Wait for `events` on fd. 1: ready; 0: timeout; -1: server stopping or poll error. */
static int wait_fd(int fd, short events, int timeout_ms) {
  for (;;) {
    struct pollfd pf[2] = {{.fd = fd, .events = events}, {.fd = g.stop_pipe[0], .events = POLLIN}};
    int r = poll(pf, 2, timeout_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (pf[1].revents) return -1;
    return r == 0 ? 0 : 1;
  }
}

/* Sleep us microseconds; false if the server started stopping meanwhile or, when fd >= 0,
 * the client hung up (FIN or RST), so a request the client gave up on ends at once. */
static bool nap_us(long us, int fd) {
  struct pollfd pf[2] = {{.fd = g.stop_pipe[0], .events = POLLIN}, {.fd = fd, .events = POLLRDHUP}};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long spent = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000L;
    if (spent >= us) return true;
    struct timespec left = {(us - spent) / 1000000L, (us - spent) % 1000000L * 1000L};
    int r = ppoll(pf, fd >= 0 ? 2 : 1, &left, NULL);
    if (r < 0 && errno != EINTR) return false;
    if (r > 0) return false;
  }
}

static bool nap(long ms, int fd) { return nap_us(ms * 1000L, fd); }

static bool send_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_fd(fd, POLLOUT, 30000) != 1) return false;
      continue;
    }
    return false;
  }
  return true;
}

/* ------------------------------------------------------------------ input buffer */

typedef struct rbuf {
  char *d;
  size_t len, cap;
} rbuf;

/* Read more bytes. 1: got some; 0: EOF; -1: error, timeout or stopping. */
static int rbuf_fill(int fd, rbuf *b, int timeout_ms) {
  if (b->cap - b->len < 4096) {
    size_t nc = b->cap ? b->cap * 2 : 8192;
    char *nd = realloc(b->d, nc);
    if (!nd) return -1;
    b->d = nd;
    b->cap = nc;
  }
  for (;;) {
    ssize_t r = recv(fd, b->d + b->len, b->cap - b->len - 1, 0);
    if (r > 0) {
      b->len += (size_t)r;
      b->d[b->len] = '\0';
      return 1;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    if (wait_fd(fd, POLLIN, timeout_ms) != 1) return -1;
  }
}

static void rbuf_consume(rbuf *b, size_t n) {
  memmove(b->d, b->d + n, b->len - n);
  b->len -= n;
  if (b->d) b->d[b->len] = '\0';
}

/* Ensure at least n bytes are buffered. */
static bool rbuf_need(int fd, rbuf *b, size_t n) {
  while (b->len < n)
    if (rbuf_fill(fd, b, 30000) != 1) return false;
  return true;
}

/* Position of the first CRLF at or after `from`, reading more as needed; limit bounds it. */
static long rbuf_find_crlf(int fd, rbuf *b, size_t from, size_t limit) {
  for (;;) {
    for (size_t i = from; i + 1 < b->len; i++)
      if (b->d[i] == '\r' && b->d[i + 1] == '\n') return (long)i;
    if (b->len - from > limit) return -1;
    if (rbuf_fill(fd, b, 30000) != 1) return -1;
  }
}

/* ------------------------------------------------------------------ requests */

typedef struct header {
  char *name, *value;
} header;

typedef struct request {
  char *method, *target, *version;
  header h[MAX_HEADERS];
  int nh;
  char *body;
  size_t body_len;
  bool keep_alive, head;
} request;

static const char *hdr(const request *r, const char *name) {
  for (int i = 0; i < r->nh; i++)
    if (strcasecmp(r->h[i].name, name) == 0) return r->h[i].value;
  return NULL;
}

/* Does a comma-separated header value contain token (case-insensitive)? */
static bool has_token(const char *v, const char *token) {
  size_t tl = strlen(token);
  while (v && *v) {
    while (*v == ' ' || *v == '\t' || *v == ',') v++;
    const char *e = v;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > v && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if ((size_t)(t - v) == tl && strncasecmp(v, token, tl) == 0) return true;
    v = e;
  }
  return false;
}

static const char *reason(int code) {
  switch (code) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Content Too Large";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Status";
  }
}

static bool status_has_body(int code) { return !(code < 200 || code == 204 || code == 304); }

/* Send a status line and headers. `extra` holds complete header lines (or is NULL). */
static bool send_head(int fd, int code, size_t content_length, const char *extra, bool keep_alive,
                      const char *content_type) {
  char head[1024];
  char cl[64] = "";
  if (status_has_body(code)) snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", content_length);
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nServer: resil-testhttpd\r\n%sContent-Type: %s\r\n%s\r\n", code,
                   reason(code), cl, content_type ? content_type : "text/plain",
                   keep_alive ? "" : "Connection: close\r\n");
  if (n < 0 || (size_t)n >= sizeof head) return false;
  if (extra && *extra) {
    /* insert the extra lines before the final CRLF */
    if (!send_all(fd, head, (size_t)n - 2)) return false;
    if (!send_all(fd, extra, strlen(extra))) return false;
    return send_all(fd, "\r\n", 2);
  }
  return send_all(fd, head, (size_t)n);
}

static bool respond(int fd, const request *r, int code, const char *extra, const char *body,
                    size_t len, const char *ctype) {
  if (!status_has_body(code)) len = 0;
  if (!send_head(fd, code, len, extra, r->keep_alive, ctype)) return false;
  if (r->head || len == 0) return true;
  return send_all(fd, body, len);
}

static long qparam(const char *query, const char *name, long dflt) {
  size_t nl = strlen(name);
  const char *q = query;
  while (q && *q) {
    if (strncmp(q, name, nl) == 0 && q[nl] == '=') {
      char *end;
      long v = strtol(q + nl + 1, &end, 10);
      return end == q + nl + 1 ? dflt : v;
    }
    q = strchr(q, '&');
    if (q) q++;
  }
  return dflt;
}

static void fill_pattern(char *b, size_t n, size_t start) {
  for (size_t i = 0; i < n; i++) b[i] = (char)('a' + (start + i) % 26);
}

static bool stats_json(char *out, size_t cap, bool reset) {
  pthread_mutex_lock(&g.mu);
  if (reset) {
    g.accepted = 0;
    g.requests = 0;
    g.max_open = g.open;
  }
  int n = snprintf(out, cap, "{\"accepted\":%lu,\"requests\":%lu,\"open\":%u,\"max_open\":%u}",
                   g.accepted, g.requests, g.open, g.max_open);
  pthread_mutex_unlock(&g.mu);
  return n > 0 && (size_t)n < cap;
}

/* ------------------------------------------------------------------ /work, the scripted dependency */

/* Uniform in [0, 1), per connection thread (xorshift, seeded from a counter). */
static double rand01(void) {
  static _Thread_local uint64_t x;
  if (!x) {
    pthread_mutex_lock(&g.mu);
    x = 0x2545F4914F6CDD1Dull ^ (++g.seq * 0x9E3779B97F4A7C15ull);
    pthread_mutex_unlock(&g.mu);
  }
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return (double)(x >> 11) / 9007199254740992.0;
}

/* Wait for one of max slots; false if the server is stopping. */
static bool slot_take(int max) {
  pthread_mutex_lock(&g.mu);
  while (g.serving >= max) {
    if (stopping()) {
      pthread_mutex_unlock(&g.mu);
      return false;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 5 * 1000000L; /* look at the stop pipe every 5 ms */
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&g.cv, &g.mu, &ts);
  }
  g.serving++;
  pthread_mutex_unlock(&g.mu);
  return true;
}

static void slot_give(void) {
  pthread_mutex_lock(&g.mu);
  g.serving--;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
}

static bool serve_work(int fd, const request *r) {
  pthread_mutex_lock(&g.mu);
  long lo = g.min_us, hi = g.max_us;
  int pct = g.error_pct, max = g.serve_max;
  pthread_mutex_unlock(&g.mu);
  long us = lo + (long)(rand01() * (double)(hi - lo));
  bool fail = rand01() * 100.0 < (double)pct;
  if (max > 0) {
    if (!slot_take(max)) return false;
    bool done = nap_us(us, -1); /* worked to its end, whether the client waits or not */
    slot_give();
    if (!done) return false;
  } else if (!nap_us(us, fd)) {
    return false;
  }
  if (fail) return respond(fd, r, 503, NULL, "unavailable\n", 12, NULL);
  return respond(fd, r, 200, NULL, "ok", 2, NULL);
}

static bool set_scenario(int fd, const request *r, const char *query) {
  long lo = qparam(query, "min_us", 0), hi = qparam(query, "max_us", 0);
  long pct = qparam(query, "error_pct", 0), max = qparam(query, "serve_max", 0);
  if (strcmp(r->method, "POST") != 0) return respond(fd, r, 405, "Allow: POST\r\n", "use POST\n", 9, NULL);
  if (lo < 0 || hi < lo || hi > MAX_SLEEP_MS * 1000L || pct < 0 || pct > 100 || max < 0 || max > 10000)
    return respond(fd, r, 400, NULL, "bad scenario\n", 13, NULL);
  pthread_mutex_lock(&g.mu);
  g.min_us = lo;
  g.max_us = hi;
  g.error_pct = (int)pct;
  g.serve_max = (int)max;
  pthread_mutex_unlock(&g.mu);
  char body[160];
  int n = snprintf(body, sizeof body, "{\"min_us\":%ld,\"max_us\":%ld,\"error_pct\":%ld,\"serve_max\":%ld}",
                   lo, hi, pct, max);
  return respond(fd, r, 200, NULL, body, (size_t)n, "application/json");
}

/* Serve one parsed request. Returns false when the connection must close. */
static bool serve(int fd, request *r) {
  char path[2048];
  const char *query = "";
  size_t tl = strcspn(r->target, "?");
  if (tl >= sizeof path) tl = sizeof path - 1;
  memcpy(path, r->target, tl);
  path[tl] = '\0';
  if (r->target[tl] == '?') query = r->target + tl + 1;

  bool is_stats = strcmp(path, "/stats") == 0 || strcmp(path, "/stats/reset") == 0;
  if (!is_stats) {
    pthread_mutex_lock(&g.mu);
    g.requests++;
    pthread_mutex_unlock(&g.mu);
  }

  if (strcmp(path, "/fast") == 0) return respond(fd, r, 200, NULL, "ok", 2, NULL);
  if (strcmp(path, "/work") == 0) return serve_work(fd, r);
  if (strcmp(path, "/scenario") == 0) return set_scenario(fd, r, query);

  if (strcmp(path, "/slow") == 0) {
    long ms = qparam(query, "ms", 1000);
    if (ms < 0) ms = 0;
    if (ms > MAX_SLEEP_MS) ms = MAX_SLEEP_MS;
    if (!nap(ms, fd)) return false;
    return respond(fd, r, 200, NULL, "ok", 2, NULL);
  }

  if (strncmp(path, "/status/", 8) == 0) {
    char *end;
    long code = strtol(path + 8, &end, 10);
    if (*end || end == path + 8 || code < 100 || code > 599)
      return respond(fd, r, 400, NULL, "bad status\n", 11, NULL);
    char body[64];
    int n = snprintf(body, sizeof body, "status %ld\n", code);
    return respond(fd, r, (int)code, NULL, body, (size_t)n, NULL);
  }

  if (strcmp(path, "/retry-after") == 0) {
    long s = qparam(query, "s", 1);
    long code = qparam(query, "code", 503);
    if (code < 100 || code > 599 || s < 0) return respond(fd, r, 400, NULL, "bad params\n", 11, NULL);
    char extra[64];
    snprintf(extra, sizeof extra, "Retry-After: %ld\r\n", s);
    return respond(fd, r, (int)code, extra, "retry later\n", 12, NULL);
  }

  if (strcmp(path, "/big") == 0 || strcmp(path, "/cut") == 0) {
    long long n = (long long)qparam(query, "bytes", 1024);
    if (n < 0 || (unsigned long long)n > MAX_BIG) return respond(fd, r, 400, NULL, "bad bytes\n", 10, NULL);
    bool cut = path[1] == 'c';
    if (!send_head(fd, 200, (size_t)n, NULL, r->keep_alive && !cut, "application/octet-stream"))
      return false;
    if (r->head) return !cut;
    size_t total = cut ? (size_t)n / 2 : (size_t)n;
    char buf[65536];
    for (size_t off = 0; off < total;) {
      size_t k = total - off < sizeof buf ? total - off : sizeof buf;
      fill_pattern(buf, k, off);
      if (!send_all(fd, buf, k)) return false;
      off += k;
    }
    if (cut) {
      shutdown(fd, SHUT_WR);
      return false;
    }
    return true;
  }

  if (strcmp(path, "/drip") == 0) {
    long n = qparam(query, "bytes", 10);
    long ms = qparam(query, "ms", 100);
    if (n < 0 || n > 1000000 || ms < 0 || ms > MAX_SLEEP_MS)
      return respond(fd, r, 400, NULL, "bad params\n", 11, NULL);
    if (!send_head(fd, 200, (size_t)n, NULL, r->keep_alive, "application/octet-stream")) return false;
    if (r->head) return true;
    for (long i = 0; i < n; i++) {
      if (!nap(ms, fd)) return false;
      char c = (char)('a' + i % 26);
      if (!send_all(fd, &c, 1)) return false;
    }
    return true;
  }

  if (strcmp(path, "/echo") == 0) {
    size_t cap = 64;
    for (int i = 0; i < r->nh; i++) cap += strlen(r->h[i].name) + strlen(r->h[i].value) + 16;
    cap += strlen(r->method);
    char *extra = malloc(cap);
    if (!extra) return false;
    size_t off = (size_t)snprintf(extra, cap, "X-Echo-Method: %s\r\n", r->method);
    for (int i = 0; i < r->nh; i++)
      off += (size_t)snprintf(extra + off, cap - off, "X-Echo-%s: %s\r\n", r->h[i].name, r->h[i].value);
    const char *ct = hdr(r, "Content-Type");
    bool ok = respond(fd, r, 200, extra, r->body ? r->body : "", r->body_len,
                      ct ? ct : "application/octet-stream");
    free(extra);
    return ok;
  }

  if (strcmp(path, "/stats") == 0 || strcmp(path, "/stats/reset") == 0) {
    bool reset = path[6] == '/';
    if (reset && strcmp(r->method, "POST") != 0) {
      return respond(fd, r, 405, "Allow: POST\r\n", "use POST\n", 9, NULL);
    }
    char body[256];
    if (!stats_json(body, sizeof body, reset)) return false;
    return respond(fd, r, 200, NULL, body, strlen(body), "application/json");
  }

  return respond(fd, r, 404, NULL, "not found\n", 10, NULL);
}

/* Parse the head in b->d[0..head_len) (NUL-terminated copy made by the caller). */
static int parse_head(char *head, request *r) {
  char *save = NULL;
  char *line = strtok_r(head, "\r\n", &save);
  if (!line) return 400;
  char *sp1 = strchr(line, ' ');
  if (!sp1) return 400;
  *sp1 = '\0';
  char *sp2 = strchr(sp1 + 1, ' ');
  if (!sp2) return 400;
  *sp2 = '\0';
  r->method = line;
  r->target = sp1 + 1;
  r->version = sp2 + 1;
  if (strncmp(r->version, "HTTP/1.", 7) != 0 || !*r->method || r->target[0] != '/') return 400;
  while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
    char *colon = strchr(line, ':');
    if (!colon || colon == line) return 400;
    *colon = '\0';
    for (char *c = line; *c; c++)
      if (*c == ' ' || *c == '\t') return 400;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    char *e = v + strlen(v);
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
    if (r->nh == MAX_HEADERS) return 431;
    r->h[r->nh].name = line;
    r->h[r->nh].value = v;
    r->nh++;
  }
  const char *conn = hdr(r, "Connection");
  if (strcmp(r->version, "HTTP/1.0") == 0) r->keep_alive = conn && has_token(conn, "keep-alive");
  else r->keep_alive = !(conn && has_token(conn, "close"));
  r->head = strcmp(r->method, "HEAD") == 0;
  return 0;
}

/* Read the body that follows the head into r->body. Returns 0 or an HTTP error status, or
 * -1 when the connection failed. The body bytes are consumed from b. */
static int read_body(int fd, rbuf *b, request *r) {
  const char *te = hdr(r, "Transfer-Encoding");
  const char *cl = hdr(r, "Content-Length");
  const char *expect = hdr(r, "Expect");
  bool chunked = te && has_token(te, "chunked");
  if (te && !chunked) return 501;
  size_t want = 0;
  if (!chunked && cl) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(cl, &end, 10);
    if (errno || end == cl || *end || cl[0] == '-') return 400;
    if (v > MAX_BODY) return 413;
    want = (size_t)v;
  }
  if ((chunked || want > 0) && expect && strcasecmp(expect, "100-continue") == 0 && b->len == 0) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (!send_all(fd, cont, sizeof cont - 1)) return -1;
  }
  if (!chunked) {
    if (want == 0) return 0;
    if (!rbuf_need(fd, b, want)) return -1;
    r->body = malloc(want + 1);
    if (!r->body) return -1;
    memcpy(r->body, b->d, want);
    r->body[want] = '\0';
    r->body_len = want;
    rbuf_consume(b, want);
    return 0;
  }
  size_t cap = 0;
  for (;;) {
    long e = rbuf_find_crlf(fd, b, 0, 1024);
    if (e < 0) return -1;
    char *end;
    unsigned long long sz = strtoull(b->d, &end, 16);
    if (end == b->d) return 400;
    rbuf_consume(b, (size_t)e + 2);
    if (sz == 0) break;
    if (sz > MAX_BODY || r->body_len + sz > MAX_BODY) return 413;
    if (!rbuf_need(fd, b, (size_t)sz + 2)) return -1;
    if (r->body_len + sz + 1 > cap) {
      cap = (r->body_len + (size_t)sz + 1) * 2;
      char *nb = realloc(r->body, cap);
      if (!nb) return -1;
      r->body = nb;
    }
    memcpy(r->body + r->body_len, b->d, (size_t)sz);
    r->body_len += (size_t)sz;
    r->body[r->body_len] = '\0';
    rbuf_consume(b, (size_t)sz + 2);
  }
  for (;;) { /* trailers, up to the empty line */
    long e = rbuf_find_crlf(fd, b, 0, MAX_HEAD);
    if (e < 0) return -1;
    rbuf_consume(b, (size_t)e + 2);
    if (e == 0) break;
  }
  return 0;
}

static void send_error(int fd, int code) {
  char body[64];
  int n = snprintf(body, sizeof body, "%d %s\n", code, reason(code));
  request r = {.keep_alive = false};
  respond(fd, &r, code, NULL, body, (size_t)n, NULL);
}

static void *conn_main(void *arg) {
  int fd = (int)(intptr_t)arg;
  rbuf b = {0};
  for (;;) {
    /* the head */
    size_t head_len = 0;
    for (;;) {
      char *e = b.len ? strstr(b.d, "\r\n\r\n") : NULL;
      if (e) {
        head_len = (size_t)(e - b.d) + 4;
        break;
      }
      if (b.len > MAX_HEAD) {
        send_error(fd, 431);
        goto done;
      }
      int rr = rbuf_fill(fd, &b, b.len ? 30000 : g.idle_ms);
      if (rr != 1) goto done;
      if (memchr(b.d, '\0', b.len)) {
        send_error(fd, 400);
        goto done;
      }
    }
    char *head = malloc(head_len + 1);
    if (!head) goto done;
    memcpy(head, b.d, head_len);
    head[head_len] = '\0';
    rbuf_consume(&b, head_len);
    request r;
    memset(&r, 0, sizeof r);
    int st = parse_head(head, &r);
    if (st == 0) st = read_body(fd, &b, &r);
    bool keep = false;
    if (st == 0) {
      keep = serve(fd, &r) && r.keep_alive;
    } else if (st > 0) { /* a malformed request counts as a request */
      pthread_mutex_lock(&g.mu);
      g.requests++;
      pthread_mutex_unlock(&g.mu);
      send_error(fd, st);
    }
    free(r.body);
    free(head);
    if (!keep || stopping()) break;
  }
done:
  free(b.d);
  close(fd);
  pthread_mutex_lock(&g.mu);
  g.open--;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  return NULL;
}

/* ------------------------------------------------------------------ main */

static int parse_int(const char *s, long lo, long hi, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) {
    fprintf(stderr, "testhttpd: bad %s '%s' (want %ld..%ld)\n", what, s, lo, hi);
    exit(2);
  }
  return (int)v;
}

static void usage(FILE *f) {
  fputs("usage: testhttpd [--port N] [--max-conns N] [--idle-ms N]   (or: testhttpd PORT)\n"
        "Serves test endpoints on 127.0.0.1; prints PORT=<n> first. See the source header.\n",
        f);
}

int main(int argc, char **argv) {
  int port = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((strcmp(a, "--port") == 0 || strcmp(a, "-p") == 0) && i + 1 < argc) {
      port = parse_int(argv[++i], 0, 65535, "port");
    } else if (strcmp(a, "--max-conns") == 0 && i + 1 < argc) {
      g.max_conns = parse_int(argv[++i], 1, 100000, "max-conns");
    } else if (strcmp(a, "--idle-ms") == 0 && i + 1 < argc) {
      g.idle_ms = parse_int(argv[++i], 1, 86400000, "idle-ms");
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (isdigit((unsigned char)a[0])) {
      port = parse_int(a, 0, 65535, "port");
    } else {
      usage(stderr);
      return 2;
    }
  }

  if (pipe2(g.stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    perror("testhttpd: pipe");
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  g.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (g.lfd < 0) {
    perror("testhttpd: socket");
    return 1;
  }
  int one = 1;
  setsockopt(g.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(g.lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(g.lfd, 512) != 0) {
    fprintf(stderr, "testhttpd: bind/listen 127.0.0.1:%d: %s\n", port, strerror(errno));
    return 1;
  }
  socklen_t sl = sizeof addr;
  getsockname(g.lfd, (struct sockaddr *)&addr, &sl);
  printf("PORT=%u\n", (unsigned)ntohs(addr.sin_port));
  fflush(stdout);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 512 * 1024);

  for (;;) {
    /* respect the connection cap: leave clients in the backlog while full */
    pthread_mutex_lock(&g.mu);
    while ((int)g.open >= g.max_conns && !stopping()) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 50 * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      pthread_cond_timedwait(&g.cv, &g.mu, &ts);
    }
    pthread_mutex_unlock(&g.mu);

    int r = wait_fd(g.lfd, POLLIN, -1);
    if (r < 0) break; /* stopping */
    int fd = accept4(g.lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) nap(50, -1);
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_mutex_lock(&g.mu);
    g.accepted++;
    g.open++;
    if (g.open > g.max_open) g.max_open = g.open;
    pthread_mutex_unlock(&g.mu);
    pthread_t th;
    if (pthread_create(&th, &attr, conn_main, (void *)(intptr_t)fd) != 0) {
      close(fd);
      pthread_mutex_lock(&g.mu);
      g.open--;
      pthread_mutex_unlock(&g.mu);
    }
  }

  /* graceful stop: no new connections; connection threads see the stop pipe and end */
  close(g.lfd);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 5;
  pthread_mutex_lock(&g.mu);
  while (g.open > 0)
    if (pthread_cond_timedwait(&g.cv, &g.mu, &deadline) == ETIMEDOUT) break;
  unsigned left = g.open;
  pthread_mutex_unlock(&g.mu);
  pthread_attr_destroy(&attr);
  if (left) fprintf(stderr, "testhttpd: %u connection(s) still open at exit\n", left);
  return 0;
}
