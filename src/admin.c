/* The embedded admin HTTP/1.1 endpoint: one poll() thread, non-blocking
 * sockets, bounded requests, per-connection deadlines, Connection: close.
 *
 * A connection goes READ (collect the request line and headers until the
 * blank line, bounded by max_request_bytes and by read_timeout_ms from
 * accept) -> WRITE (send the whole response, bounded by read_timeout_ms) ->
 * LINGER (after shutdown(SHUT_WR), read and discard until the client closes,
 * at most 1 s, so that a client still sending a body gets our response
 * instead of a reset) -> closed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "resil/admin.h"
#include "resil/lifecycle.h"

#define LINGER_MS 1000
#define LINGER_MAX_BYTES (1u << 20)
/* Connections accepted per poll() round (the listen backlog): a flood of
 * connects cannot keep the thread in accept() away from the timers and
 * the other connections. */
#define ACCEPT_BATCH 128
/* Longest method token (parse_request_line). */
#define METHOD_MAX 32

typedef enum { C_FREE = 0, C_READ, C_WRITE, C_LINGER } cstate;

typedef struct conn {
  int fd;
  cstate st;
  char *in;      /* max_request_bytes + 1 */
  size_t inlen;
  size_t line_end; /* just past the request line's LF; 0 until it arrived */
  size_t scan;     /* where examine() resumes looking (each byte is looked at once) */
  char *out;
  size_t outlen, outoff;
  size_t discarded;
  bool over_limit;      /* accepted above max_connections: 503 only */
  uint64_t deadline_ms; /* real monotonic */
} conn;

static pthread_mutex_t adm_mu = PTHREAD_MUTEX_INITIALIZER; /* start/stop */
static bool adm_running;
static _Atomic uint16_t adm_port;
static pthread_t adm_thread;
static int adm_lfd = -1, adm_wake[2] = {-1, -1};
static resil_admin_config adm_cfg;
static char adm_addr[64];
static conn *adm_conns;
static uint64_t adm_accept_pause_until; /* admin thread only */

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- config -------------------------------------------------------------- */

void resil_admin_config_init(resil_admin_config *cfg) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->bind_address = "127.0.0.1";
  cfg->port = 0;
  cfg->max_connections = 16;
  cfg->max_request_bytes = 8192;
  cfg->read_timeout_ms = 2000;
}

typedef union addr_any {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} addr_any;

static bool parse_addr(const char *a, uint16_t port, addr_any *out, socklen_t *len) {
  memset(out, 0, sizeof *out);
  if (inet_pton(AF_INET, a, &out->v4.sin_addr) == 1) {
    out->v4.sin_family = AF_INET;
    out->v4.sin_port = htons(port);
    *len = sizeof out->v4;
    return true;
  }
  if (inet_pton(AF_INET6, a, &out->v6.sin6_addr) == 1) {
    out->v6.sin6_family = AF_INET6;
    out->v6.sin6_port = htons(port);
    *len = sizeof out->v6;
    return true;
  }
  return false;
}

static const char *addr_or_default(const char *a) { return (a && *a) ? a : "127.0.0.1"; }

resil_status resil_admin_config_validate(const resil_admin_config *cfg, resil_err *err) {
  if (!cfg) return resil_err_set(err, RESIL_E_INVALID, "admin: config is NULL");
  resil_problems p;
  resil__problems_init(&p, "");
  const char *a = addr_or_default(cfg->bind_address);
  addr_any sa;
  socklen_t sl;
  if (strlen(a) >= sizeof adm_addr || !parse_addr(a, 0, &sa, &sl))
    resil__problem(&p, "admin.bind_address",
                   "'%.64s' is not an IP address (a numeric IPv4 or IPv6 address: no host "
                   "names, no brackets)",
                   a);
  resil__check_range(&p, "admin.max_connections", cfg->max_connections, 1, 4096);
  resil__check_range(&p, "admin.max_request_bytes", cfg->max_request_bytes, 256, 1048576);
  resil__check_range(&p, "admin.read_timeout_ms", cfg->read_timeout_ms, 10, 600000);
  return resil__problems_finish(&p, err);
}

/* ---- responses ----------------------------------------------------------- */

static const char *reason_phrase(int code) {
  switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

/* Queue a response on c (body may be NULL) and switch it to WRITE. */
static void respond(conn *c, int code, const char *ctype, const char *body, size_t blen,
                    bool head, const char *extra_headers) {
  resil_sbuf b = {0};
  resil__sb_printf(&b,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                   code, reason_phrase(code), ctype, blen, extra_headers ? extra_headers : "");
  if (!b.oom && b.p && !head && body && blen) {
    char *np = realloc(b.p, b.len + blen + 1);
    if (!np) {
      b.oom = true;
    } else {
      memcpy(np + b.len, body, blen);
      b.len += blen;
      np[b.len] = 0;
      b.p = np;
    }
  }
  free(c->out);
  c->out = NULL;
  c->outlen = c->outoff = 0;
  if (b.oom || !b.p) {
    free(b.p);
    /* Out of memory: a static minimal answer. */
    static const char oom[] =
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    c->out = malloc(sizeof oom);
    if (c->out) {
      memcpy(c->out, oom, sizeof oom - 1);
      c->outlen = sizeof oom - 1;
    }
  } else {
    c->out = b.p;
    c->outlen = b.len;
  }
  c->st = C_WRITE;
  c->deadline_ms = mono_ms() + adm_cfg.read_timeout_ms;
}

static void respond_error(conn *c, int code, const char *msg, bool head, const char *extra) {
  char body[160];
  int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}\n", msg);
  respond(c, code, "application/json", body, (size_t)n, head, extra);
}

/* ---- request parsing ------------------------------------------------------- */

static bool is_tchar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL); /* strchr finds the NUL */
}

typedef struct reqline {
  const char *method;
  size_t mlen;
  const char *path;
  size_t plen;
} reqline;

/* Parse "METHOD SP target SP HTTP/1.x" ending at eol (excluding CR LF).
 * true if well formed. */
static bool parse_request_line(const char *s, size_t len, reqline *r) {
  if (len && s[len - 1] == '\r') len--;
  size_t i = 0;
  while (i < len && is_tchar(s[i])) i++;
  if (i == 0 || i > METHOD_MAX || i >= len || s[i] != ' ') return false;
  r->method = s;
  r->mlen = i;
  size_t t = ++i;
  while (i < len && s[i] != ' ') {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 0x20 || ch == 0x7f) return false;
    i++;
  }
  if (i == t || i >= len || s[t] != '/') return false;
  r->path = s + t;
  r->plen = i - t;
  for (size_t q = 0; q < r->plen; q++)
    if (r->path[q] == '?') {
      r->plen = q;
      break;
    }
  i++;
  size_t vlen = len - i;
  if (vlen != 8 || (memcmp(s + i, "HTTP/1.1", 8) != 0 && memcmp(s + i, "HTTP/1.0", 8) != 0))
    return false;
  return true;
}

static bool method_is(const reqline *r, const char *m) {
  return r->mlen == strlen(m) && memcmp(r->method, m, r->mlen) == 0;
}
static bool path_is(const reqline *r, const char *p) {
  return r->plen == strlen(p) && memcmp(r->path, p, r->plen) == 0;
}

/* Headers between hs and he (each line ending in \n): validate and find a
 * declared body. 0 ok, else the error status to answer. */
static int check_headers(char *hs, char *he, size_t head_bytes, bool *te) {
  *te = false;
  while (hs < he) {
    char *eol = memchr(hs, '\n', (size_t)(he - hs));
    if (!eol) break;
    size_t ll = (size_t)(eol - hs);
    if (ll && hs[ll - 1] == '\r') ll--;
    if (ll == 0) break; /* the blank line */
    char *colon = memchr(hs, ':', ll);
    if (!colon || colon == hs) return 400;
    for (char *k = hs; k < colon; k++)
      if (!is_tchar(*k)) return 400; /* no space before the colon, RFC 9112 */
    size_t nlen = (size_t)(colon - hs);
    const char *v = colon + 1;
    const char *ve = hs + ll;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    if (nlen == 14 && strncasecmp(hs, "Content-Length", 14) == 0) {
      if (v == ve) return 400;
      uint64_t n = 0;
      for (const char *d = v; d < ve; d++) {
        if (*d < '0' || *d > '9') return 400;
        n = n * 10 + (uint64_t)(*d - '0');
        if (n > (1ull << 40)) break;
      }
      if (n + head_bytes > adm_cfg.max_request_bytes) return 413;
    } else if (nlen == 17 && strncasecmp(hs, "Transfer-Encoding", 17) == 0) {
      *te = true;
    }
    hs = eol + 1;
  }
  return 0;
}

static void route(conn *c, const reqline *r) {
  bool head = method_is(r, "HEAD");
  bool known = path_is(r, "/metrics") || path_is(r, "/health") || path_is(r, "/ready") ||
               (path_is(r, "/config") && adm_cfg.config_json_fn);
  if (!known) {
    respond_error(c, 404, "not found", head, NULL);
    return;
  }
  if (!head && !method_is(r, "GET")) {
    respond_error(c, 405, "method not allowed", false, "Allow: GET, HEAD\r\n");
    return;
  }
  if (path_is(r, "/metrics")) {
    char *out = NULL;
    size_t len = 0;
    if (resil_export_prometheus(&out, &len, NULL) != RESIL_OK) {
      respond_error(c, 500, "export failed", head, NULL);
      return;
    }
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", out, len, head, NULL);
    free(out);
  } else if (path_is(r, "/health")) {
    char body[128];
    int code = resil_health(body, sizeof body - 1);
    size_t n = strlen(body);
    body[n++] = '\n';
    respond(c, code, "application/json", body, n, head, NULL);
  } else if (path_is(r, "/ready")) {
    char body[256];
    int code = resil_ready(body, sizeof body - 1);
    size_t n = strlen(body);
    body[n++] = '\n';
    respond(c, code, "application/json", body, n, head, NULL);
  } else { /* /config */
    char *out = NULL;
    if (adm_cfg.config_json_fn(adm_cfg.config_ctx, &out) != RESIL_OK || !out) {
      free(out);
      respond_error(c, 500, "config unavailable", head, NULL);
      return;
    }
    respond(c, 200, "application/json", out, strlen(out), head, NULL);
    free(out);
  }
}

/* Look at what has arrived; answer if the request is complete or bad.
 * Called after every read: it resumes where the previous call stopped, so
 * a request trickled in byte by byte costs linear, not quadratic, time. */
static void examine(conn *c) {
  c->in[c->inlen] = 0;
  reqline r;
  if (!c->line_end) {
    char *eol = memchr(c->in + c->scan, '\n', c->inlen - c->scan);
    if (!eol) { /* reject garbage (e.g. a TLS handshake) before the line ends */
      size_t i = 0;
      while (i < c->inlen && i <= METHOD_MAX && is_tchar(c->in[i])) i++;
      if (i > METHOD_MAX || (i < c->inlen && (c->in[i] != ' ' || i == 0))) {
        respond_error(c, 400, "malformed request line", false, NULL);
        return;
      }
      c->scan = c->inlen;
      if (c->inlen >= adm_cfg.max_request_bytes)
        respond_error(c, 431, "request line and headers too large", false, NULL);
      return;
    }
    if (!parse_request_line(c->in, (size_t)(eol - c->in), &r)) {
      respond_error(c, 400, "malformed request line", false, NULL);
      return;
    }
    c->line_end = (size_t)(eol - c->in) + 1;
    c->scan = (size_t)(eol - c->in); /* the blank line may follow at once */
  }
  /* End of headers: a blank line (CRLF CRLF, or bare LF LF), looked for
   * from the first LF that could still start one. */
  char *end = NULL;
  char *lim = c->in + c->inlen;
  size_t resume = c->inlen;
  for (char *p = c->in + c->scan; p < lim; p++) {
    p = memchr(p, '\n', (size_t)(lim - p));
    if (!p) break;
    if (p + 1 == lim || (p[1] == '\r' && p + 2 == lim)) { /* not complete yet */
      resume = (size_t)(p - c->in);
      break;
    }
    if (p[1] == '\n') {
      end = p + 2;
      break;
    }
    if (p[1] == '\r' && p[2] == '\n') {
      end = p + 3;
      break;
    }
  }
  if (!end) {
    c->scan = resume;
    if (c->inlen >= adm_cfg.max_request_bytes)
      respond_error(c, 431, "request line and headers too large", false, NULL);
    return;
  }
  parse_request_line(c->in, c->line_end - 1, &r); /* checked when it arrived */
  bool head = method_is(&r, "HEAD");
  bool te;
  int bad = check_headers(c->in + c->line_end, end, (size_t)(end - c->in), &te);
  if (bad == 0 && te) bad = 400;
  if (bad) {
    respond_error(c, bad,
                  bad == 413 ? "request body too large"
                             : te ? "Transfer-Encoding is not supported" : "malformed header",
                  head, NULL);
    return;
  }
  route(c, &r);
}

/* ---- connection I/O ---------------------------------------------------------- */

static void conn_close(conn *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->in);
  free(c->out);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static void on_readable(conn *c) {
  bool eof = false;
  for (;;) {
    size_t room = adm_cfg.max_request_bytes - c->inlen;
    if (room == 0) break;
    ssize_t n = recv(c->fd, c->in + c->inlen, room, 0);
    if (n > 0) {
      c->inlen += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) { /* reset: nobody to answer */
      conn_close(c);
      return;
    }
    eof = true; /* the client may half-close after sending its request */
    break;
  }
  examine(c);
  if (eof && c->st == C_READ) conn_close(c); /* EOF before a complete request */
}

static void on_writable(conn *c) {
  while (c->outoff < c->outlen) {
    ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
    if (n > 0) {
      c->outoff += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    conn_close(c);
    return;
  }
  shutdown(c->fd, SHUT_WR);
  free(c->out);
  c->out = NULL;
  c->st = C_LINGER;
  uint64_t linger = adm_cfg.read_timeout_ms < LINGER_MS ? adm_cfg.read_timeout_ms : LINGER_MS;
  c->deadline_ms = mono_ms() + linger;
}

static void on_linger(conn *c) {
  char sink[4096];
  for (;;) {
    ssize_t n = recv(c->fd, sink, sizeof sink, 0);
    if (n > 0) {
      c->discarded += (size_t)n;
      if (c->discarded > LINGER_MAX_BYTES) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break; /* EOF or error */
  }
  conn_close(c);
}

static void on_timeout(conn *c) {
  if (c->st == C_READ)
    respond_error(c, 408, "request not received in time", false, NULL);
  else
    conn_close(c);
}

/* Slots: max_connections for requests, as many again for connections
 * over the limit, which only get a 503 and a graceful close. */
#define NSLOTS (adm_cfg.max_connections * 2u)

static void accept_all(void) {
  for (int k = 0; k < ACCEPT_BATCH; k++) {
    int fd = accept4(adm_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      /* Out of descriptors or memory: the listener stays readable, so stop
       * polling it for a moment instead of spinning. */
      if (errno != EAGAIN && errno != EWOULDBLOCK) adm_accept_pause_until = mono_ms() + 100;
      return;
    }
    uint32_t serving = 0;
    conn *c = NULL;
    for (uint32_t i = 0; i < NSLOTS; i++) {
      if (adm_conns[i].st == C_FREE) {
        if (!c) c = &adm_conns[i];
      } else if (!adm_conns[i].over_limit) {
        serving++;
      }
    }
    bool over = serving >= adm_cfg.max_connections;
    char *in = (c && !over) ? malloc(adm_cfg.max_request_bytes + 1) : NULL;
    if (!c || (!over && !in)) { /* no slot at all: best effort, then close */
      /* The same answer as from a slot (respond_error), in one send. */
      static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                 "Content-Type: application/json\r\nContent-Length: 33\r\n"
                                 "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                                 "{\"error\":\"too many connections\"}\n";
      ssize_t w = send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL);
      (void)w;
      close(fd);
      free(in);
      continue;
    }
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->in = in;
    c->over_limit = over;
    if (over) {
      respond_error(c, 503, "too many connections", false, NULL);
      on_writable(c);
      continue;
    }
    c->st = C_READ;
    c->deadline_ms = mono_ms() + adm_cfg.read_timeout_ms;
  }
}

static void *admin_main(void *arg) {
  (void)arg;
  uint32_t max = NSLOTS;
  struct pollfd *pfd = calloc(max + 2, sizeof *pfd);
  int *idx = calloc(max + 2, sizeof *idx);
  if (!pfd || !idx) { /* nothing to serve with; wait for stop */
    struct pollfd w = {.fd = adm_wake[0], .events = POLLIN};
    while (poll(&w, 1, -1) < 0 && errno == EINTR) {
    }
    free(pfd);
    free(idx);
    return NULL;
  }
  for (;;) {
    nfds_t n = 0;
    pfd[n++] = (struct pollfd){.fd = adm_wake[0], .events = POLLIN};
    uint64_t now = mono_ms(), next = now + 1000;
    bool listening = now >= adm_accept_pause_until;
    if (!listening) next = adm_accept_pause_until;
    pfd[n++] = (struct pollfd){.fd = listening ? adm_lfd : -1, .events = POLLIN};
    for (uint32_t i = 0; i < max; i++) {
      conn *c = &adm_conns[i];
      if (c->st == C_FREE) continue;
      idx[n] = (int)i;
      pfd[n++] = (struct pollfd){.fd = c->fd, .events = c->st == C_WRITE ? POLLOUT : POLLIN};
      if (c->deadline_ms < next) next = c->deadline_ms;
    }
    int timeout = next > now ? (int)(next - now) : 0;
    int r = poll(pfd, n, timeout);
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) break; /* stop */
    for (nfds_t k = 2; r > 0 && k < n; k++) {
      if (!pfd[k].revents) continue;
      conn *c = &adm_conns[idx[k]];
      switch (c->st) {
        case C_READ: on_readable(c); break;
        case C_WRITE: on_writable(c); break;
        case C_LINGER: on_linger(c); break;
        case C_FREE: break;
      }
      /* A response queued while reading: try to send it at once. */
      if (c->st == C_WRITE && c->fd >= 0) on_writable(c);
    }
    now = mono_ms();
    for (uint32_t i = 0; i < max; i++) {
      conn *c = &adm_conns[i];
      if (c->st != C_FREE && now >= c->deadline_ms) {
        on_timeout(c);
        if (c->st == C_WRITE) on_writable(c);
      }
    }
    if (r > 0 && listening && (pfd[1].revents & POLLIN)) accept_all();
  }
  free(pfd);
  free(idx);
  return NULL;
}

/* ---- start / stop -------------------------------------------------------------- */

static void close_all_locked(void) {
  if (adm_conns) {
    for (uint32_t i = 0; i < NSLOTS; i++)
      if (adm_conns[i].st != C_FREE) conn_close(&adm_conns[i]);
    free(adm_conns);
    adm_conns = NULL;
  }
  if (adm_lfd >= 0) close(adm_lfd);
  adm_lfd = -1;
  for (int i = 0; i < 2; i++) {
    if (adm_wake[i] >= 0) close(adm_wake[i]);
    adm_wake[i] = -1;
  }
}

resil_status resil_admin_start(const resil_admin_config *cfg, resil_err *err) {
  resil_status st = resil_admin_config_validate(cfg, err);
  if (st != RESIL_OK) return st;
  pthread_mutex_lock(&adm_mu);
  if (adm_running) {
    pthread_mutex_unlock(&adm_mu);
    return resil_err_set(err, RESIL_E_INVALID, "admin: the endpoint is already running");
  }
  adm_cfg = *cfg;
  adm_accept_pause_until = 0;
  resil__strlcpy(adm_addr, addr_or_default(cfg->bind_address), sizeof adm_addr);
  adm_cfg.bind_address = adm_addr;
  addr_any sa;
  socklen_t sl = 0;
  parse_addr(adm_addr, cfg->port, &sa, &sl);
  const char *step = "socket";
  int e = 0;
  adm_conns = calloc(NSLOTS, sizeof *adm_conns);
  if (!adm_conns) {
    pthread_mutex_unlock(&adm_mu);
    return resil_err_set(err, RESIL_E_NOMEM, "admin: out of memory");
  }
  for (uint32_t i = 0; i < NSLOTS; i++) adm_conns[i].fd = -1;
  adm_lfd = socket(sa.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (adm_lfd < 0) goto fail;
  int one = 1;
  setsockopt(adm_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  step = "bind";
  if (bind(adm_lfd, &sa.sa, sl) != 0) goto fail;
  step = "listen";
  if (listen(adm_lfd, 128) != 0) goto fail;
  step = "getsockname";
  addr_any bound;
  socklen_t bl = sizeof bound;
  if (getsockname(adm_lfd, &bound.sa, &bl) != 0) goto fail;
  uint16_t port = ntohs(bound.sa.sa_family == AF_INET ? bound.v4.sin_port : bound.v6.sin6_port);
  step = "pipe2";
  if (pipe2(adm_wake, O_CLOEXEC | O_NONBLOCK) != 0) goto fail;
  e = pthread_create(&adm_thread, NULL, admin_main, NULL);
  if (e != 0) {
    step = "pthread_create";
    errno = e;
    goto fail;
  }
  atomic_store(&adm_port, port);
  adm_running = true;
  pthread_mutex_unlock(&adm_mu);
  return RESIL_OK;
fail:
  e = errno;
  close_all_locked();
  pthread_mutex_unlock(&adm_mu);
  return resil_err_set(err, RESIL_E_SYSTEM, "admin: %s on %s port %u: %s", step, adm_addr,
                       (unsigned)cfg->port, strerror(e));
}

uint16_t resil_admin_port(void) { return atomic_load(&adm_port); }

void resil_admin_stop(void) {
  pthread_mutex_lock(&adm_mu);
  if (!adm_running) {
    pthread_mutex_unlock(&adm_mu);
    return;
  }
  char c = 1;
  ssize_t w;
  do w = write(adm_wake[1], &c, 1);
  while (w < 0 && errno == EINTR);
  pthread_join(adm_thread, NULL);
  close_all_locked();
  atomic_store(&adm_port, 0);
  adm_running = false;
  pthread_mutex_unlock(&adm_mu);
}
