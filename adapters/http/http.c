/* resil-http: the HTTP adapter over libcurl. See include/resil/http.h.
 *
 * Shape: a resil_dep (admission, breaker, retries) and a resil_pool whose
 * "connections" are CURL easy handles, each allowed one cached connection.
 * One call = resil_dep_call() running attempt(): borrow a handle, set the
 * per-request options with the time left, perform, classify, return the
 * handle (broken if the transfer died part-way). Uses the core's public API
 * only. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "xutil.h"

#include "resil/http.h"
#include "resil/adapter.h"
#include "resil/lifecycle.h"
#include "resil/resolve.h"

#define MIB (1024u * 1024u)
#define DEFAULT_MAX_BODY (8u * MIB)
#define MAX_MAX_BODY ((size_t)1024u * MIB)
#define MAX_HEADER_LINES 1000
/* What one pooled handle can hold besides the response: the easy handle,
 * its connection's buffers (download 16 KiB, upload 64 KiB), TLS state and
 * the header scratch space kept between calls (<= 64 KiB). */
#define HTTP_CONN_BYTES (512u * 1024u)

struct resil_http {
  resil_dep *dep;
  resil_pool *pool;
  char *name;            /* the dependency's, owned by dep; copy for messages */
  char *base;            /* normalised base URL: no trailing '/' */
  char **headers;        /* "Name: value" lines */
  size_t nheaders;
  char *deadline_header; /* "name: " prefix of the header line; NULL = none */
  char *ca_file;
  bool https;
  bool numeric_host;
  bool use_resil_resolve; /* resolve with resil_resolve + CURLOPT_RESOLVE */
  char *host;             /* base_url's host, for resil_resolve */
  uint16_t port;          /* base_url's port (or the scheme's default) */
  uint32_t connect_timeout_ms, request_timeout_ms;
  bool tls_verify;
  size_t max_body;
  uint32_t low_speed_bps, low_speed_s;
  uint16_t failure_statuses[RESIL_HTTP_MAX_FAILURE_STATUSES];
  size_t nfailure;
  char *probe_url; /* base_url + probe_path */
};

/* Where one response header sits in http_conn.hbuf. */
typedef struct hdr_span {
  uint32_t name, value;
} hdr_span;

/* Most sockets one handle has open at once: the cached connection and the
 * happy-eyeballs attempts of a new one (curl 7.88 makes at most two). */
#define HTTP_MAX_SOCKS 4

typedef struct http_conn {
  CURL *easy;
  /* The handle's own multi: the transfer is driven here (perform_bounded)
   * so that resil, not curl's timers, decides when the wait ends; it holds
   * the connection cache (CURLMOPT_MAXCONNECTS 1) and the DNS cache. */
  CURLM *multi;
  char errbuf[CURL_ERROR_SIZE];
  int sock_errno; /* errno of a socket() that failed in open_socket(), else 0 */
  /* The sockets curl has open for this handle (open_socket/close_socket),
   * so that a child of fork can silence them (conn_abandon). */
  curl_socket_t socks[HTTP_MAX_SOCKS];
  bool untracked; /* a socket did not fit in socks[]: abandon leaks the handle */
  /* Scratch space for the headers of the response being received, kept
   * from call to call so that receiving them allocates nothing. */
  char *hbuf;
  size_t hlen, hcap;
  hdr_span *spans;
  size_t nspans, scap;
} http_conn;

/* ---- small helpers ----------------------------------------------------- */

static bool is_tchar(int c) {
  return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_token(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s)) return false;
  return true;
}

/* No CR, LF or NUL-less control characters other than tab. */
static bool is_field_value(const char *s) {
  if (!s) return false;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

/* A path or query: printable ASCII without spaces or '#'. */
static bool is_url_part(const char *s) {
  if (!s) return true;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c <= 0x20 || c >= 0x7f || c == '#') return false;
  }
  return true;
}

/* A '.' in a path: itself or %2e / %2E. Its length in *n, or 0. */
static size_t dot_at(const char *s, size_t *n) {
  if (s[0] == '.') return *n = 1;
  if (s[0] == '%' && s[1] == '2' && (s[2] == 'e' || s[2] == 'E')) return *n = 3;
  return *n = 0;
}

/* A segment separator: '/', '\\', and their encodings %2f %5c, which some servers decode
 * before resolving the path. Its length, or 0 (also at the end of the path). */
static size_t sep_at(const char *s) {
  if (s[0] == '/' || s[0] == '\\') return 1;
  if (s[0] == '%' && ((s[1] == '2' && (s[2] == 'f' || s[2] == 'F')) ||
                      (s[1] == '5' && (s[2] == 'c' || s[2] == 'C'))))
    return 3;
  return 0;
}

/* True when the path (up to its '?') has a "." or ".." segment, plainly or percent-encoded:
 * curl (and servers) resolve them, so "../x" joined to "http://h/v1" would reach "/x", outside
 * the base URL's path. */
static bool has_dot_segment(const char *p) {
  const char *seg = p;
  for (;;) {
    size_t n1, n2, k = 0;
    if (dot_at(seg, &n1)) {
      k = n1;
      if (dot_at(seg + k, &n2)) k += n2;
      if (seg[k] == '\0' || seg[k] == '?' || sep_at(seg + k)) return true;
    }
    /* the next segment */
    const char *c = seg;
    while (*c && *c != '?' && !sep_at(c)) c++;
    if (!*c || *c == '?') return false;
    seg = c + sep_at(c);
  }
}

const char *resil_http_phase_name(resil_http_phase p) {
  static const char *const names[] = {"none", "dns", "connect", "tls", "send", "receive"};
  return (unsigned)p < RESIL_HTTP_PHASE_COUNT_ ? names[p] : "unknown";
}

/* ---- curl global state ------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;
static bool curl_async_dns = false;

static void curl_global_once(void) {
  curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
  curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
  curl_async_dns = vi && (vi->features & CURL_VERSION_ASYNCHDNS);
}

/* ---- configuration ----------------------------------------------------- */

RESIL_X_PULL_KIND(http); /* see xutil.h */

void resil_http_config_init(resil_http_config *cfg, const char *name) {
  if (!cfg) return;
  resil_x_config_init(cfg, sizeof *cfg, &cfg->dep, &cfg->pool, name);
  cfg->connect_timeout_ms = 500;
  cfg->request_timeout_ms = 1000;
  cfg->tls_verify = true;
  cfg->max_response_bytes = DEFAULT_MAX_BODY;
  cfg->low_speed_bytes_per_s = 1;
  cfg->low_speed_time_s = 10;
  static const uint16_t fail[] = {500, 502, 503, 504};
  memcpy(cfg->failure_statuses, fail, sizeof fail);
  cfg->nfailure_statuses = sizeof fail / sizeof fail[0];
  cfg->deadline_header = "grpc-timeout";
}

/* Problems collected across the dependency's, the pool's and our own checks. */
typedef struct probs {
  char buf[RESIL_ERR_MSG_MAX];
  size_t len;
  unsigned n;
  const char *name; /* each of our problems starts "name: field: " like the core's */
} probs;

static void add_text(probs *p, const char *text) {
  if (p->len >= sizeof p->buf - 1) return;
  int w = snprintf(p->buf + p->len, sizeof p->buf - p->len, "%s%s", p->n ? "; " : "", text);
  if (w < 0) return;
  p->len += (size_t)w;
  if (p->len >= sizeof p->buf - 1) {
    p->len = sizeof p->buf - 1;
    memcpy(p->buf + sizeof p->buf - 4, "...", 4);
  }
  p->n++;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void add(probs *p, const char *field, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char line[400];
  snprintf(line, sizeof line, "%s: %s: %s", p->name, field, msg);
  add_text(p, line);
}

/* base_url as errors may show it: user info (a password, perhaps) never.
 * "http://u:pw@h/x" shows as "http://" "***@h/x"; a string with an '@' where
 * no authority can be found is not shown at all. Cut to 100 bytes. */
static const char *shown_url(const char *url, char *buf, size_t size) {
  const char *sep = strstr(url, "://");
  const char *auth = sep ? sep + 3 : NULL;
  size_t alen = auth ? strcspn(auth, "/?#") : 0;
  const char *at = NULL;
  for (size_t i = 0; auth && i < alen; i++)
    if (auth[i] == '@') at = auth + i;
  if (at)
    snprintf(buf, size, "%.*s***%.100s", (int)(auth - url), url, at);
  else if (!sep && strchr(url, '@'))
    snprintf(buf, size, "(not shown: it has an '@' but no scheme://)");
  else
    snprintf(buf, size, "%s", url);
  if (strlen(buf) > 100) strcpy(buf + 97, "...");
  return buf;
}

/* Parse base_url; on success fill what new() needs. Adds problems. */
static void check_base_url(const char *raw, probs *p, bool *https, bool *numeric, char **host_out,
                           uint16_t *port_out) {
  const char *url = raw; /* never echoed as is: see shown_url() */
  char shown[128];
  if (!url || !*url) {
    add(p, "base_url", "is required (e.g. \"http://orders.internal:8080/v1\")");
    return;
  }
  if (!is_url_part(url)) {
    add(p, "base_url", "\"%s\" has spaces or control characters", shown_url(url, shown, sizeof shown));
    return;
  }
  CURLU *u = curl_url();
  if (!u) {
    add(p, "base_url", "out of memory");
    return;
  }
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc != CURLUE_OK) {
    add(p, "base_url", "\"%s\" is not a URL (%s)", shown_url(url, shown, sizeof shown), curl_url_strerror(uc));
    curl_url_cleanup(u);
    return;
  }
  char *scheme = NULL, *host = NULL, *query = NULL, *frag = NULL, *user = NULL;
  curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  curl_url_get(u, CURLUPART_HOST, &host, 0);
  curl_url_get(u, CURLUPART_QUERY, &query, 0);
  curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
  curl_url_get(u, CURLUPART_USER, &user, 0);
  char *portstr = NULL;
  curl_url_get(u, CURLUPART_PORT, &portstr, CURLU_DEFAULT_PORT);
  if (port_out && portstr) *port_out = (uint16_t)strtoul(portstr, NULL, 10);
  curl_free(portstr);
  if (!scheme || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
    add(p, "base_url", "\"%s\": scheme must be http or https", shown_url(url, shown, sizeof shown));
  else if (https)
    *https = strcmp(scheme, "https") == 0;
  if (!host || !*host) add(p, "base_url", "\"%s\" has no host", shown_url(url, shown, sizeof shown));
  if (query || frag || user)
    add(p, "base_url", "\"%s\" must not have a query, fragment or user info",
        shown_url(url, shown, sizeof shown));
  if (host && numeric) {
    unsigned char tmp[16];
    char h[256];
    snprintf(h, sizeof h, "%s", host);
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') { /* IPv6 literal */
      memmove(h, h + 1, hl - 2);
      h[hl - 2] = '\0';
    }
    *numeric = inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1;
    if (host_out) *host_out = resil_x_strdup(h);
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(query);
  curl_free(frag);
  curl_free(user);
  curl_url_cleanup(u);
}

static resil_status validate(const resil_http_config *cfg, resil_err *err, bool *https,
                             bool *numeric, char **host, uint16_t *port) {
  if (!cfg) return resil_err_set(err, RESIL_E_INVALID, "http config is NULL");
  const char *name = cfg->dep.name ? cfg->dep.name : "http";
  probs p = {.len = 0, .n = 0, .name = name};
  resil_err e;
  if (resil_dep_config_validate(&cfg->dep, &e) != RESIL_OK) add_text(&p, e.msg);
  resil_pool_config pc = cfg->pool;
  pc.name = cfg->dep.name;
  char prefix[80];
  snprintf(prefix, sizeof prefix, "%s: ", name);
  if (resil_pool_config_validate(&pc, prefix, &e) != RESIL_OK) add_text(&p, e.msg);
  check_base_url(cfg->base_url, &p, https, numeric, host, port);
  if (cfg->nheaders && !cfg->headers) add(&p, "headers", "NULL with nheaders %zu", cfg->nheaders);
  for (size_t i = 0; cfg->headers && i < cfg->nheaders; i++) {
    char f[32];
    snprintf(f, sizeof f, "headers[%zu]", i);
    if (!is_token(cfg->headers[i].name))
      add(&p, f, "name \"%.60s\" is not an HTTP token",
          cfg->headers[i].name ? cfg->headers[i].name : "(null)");
    else if (!is_field_value(cfg->headers[i].value))
      add(&p, f, "value of \"%.60s\" is NULL or has CR/LF/control characters",
          cfg->headers[i].name);
  }
  if (cfg->connect_timeout_ms < 1 || cfg->connect_timeout_ms > 600000)
    add(&p, "connect_timeout_ms", "%u is outside 1..600000", cfg->connect_timeout_ms);
  if (cfg->request_timeout_ms < 1 || cfg->request_timeout_ms > 3600000)
    add(&p, "request_timeout_ms", "%u is outside 1..3600000", cfg->request_timeout_ms);
  if (cfg->ca_file && !*cfg->ca_file) add(&p, "ca_file", "is empty (use NULL for system CAs)");
  if (cfg->max_response_bytes < 1 || cfg->max_response_bytes > MAX_MAX_BODY)
    add(&p, "max_response_bytes", "%zu is outside 1..%zu", cfg->max_response_bytes,
        MAX_MAX_BODY);
  if (cfg->low_speed_bytes_per_s && (cfg->low_speed_time_s < 1 || cfg->low_speed_time_s > 3600))
    add(&p, "low_speed_time_s", "%u is outside 1..3600", cfg->low_speed_time_s);
  if (cfg->nfailure_statuses > RESIL_HTTP_MAX_FAILURE_STATUSES)
    add(&p, "nfailure_statuses", "%zu is more than %d", cfg->nfailure_statuses,
        RESIL_HTTP_MAX_FAILURE_STATUSES);
  else
    for (size_t i = 0; i < cfg->nfailure_statuses; i++)
      if (cfg->failure_statuses[i] < 400 || cfg->failure_statuses[i] > 599) {
        char f[40];
        snprintf(f, sizeof f, "failure_statuses[%zu]", i);
        add(&p, f, "%u is outside 400..599", cfg->failure_statuses[i]);
      }
  if (cfg->probe_path && !is_url_part(cfg->probe_path))
    add(&p, "probe_path", "\"%.60s\" has spaces, '#' or non-ASCII bytes (encode them)",
        cfg->probe_path);
  if (cfg->deadline_header && *cfg->deadline_header &&
      (!is_token(cfg->deadline_header) || strlen(cfg->deadline_header) > 64))
    add(&p, "deadline_header", "\"%.60s\" is not an HTTP token of at most 64 characters",
        cfg->deadline_header);
  if (!p.n) return RESIL_OK;
  return resil_err_set(err, RESIL_E_INVALID, "%s", p.buf);
}

resil_status resil_http_config_validate(const resil_http_config *cfg, resil_err *err) {
  return validate(cfg, err, NULL, NULL, NULL, NULL);
}

/* ---- the pool's connector: easy handles ------------------------------- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud);
static size_t on_header(char *data, size_t size, size_t nmemb, void *ud);

/* curl's socket, made here so that a failed socket() leaves its errno
 * behind: curl 7.88 reports it as CURLE_COULDNT_CONNECT with no errno
 * (CURLINFO_OS_ERRNO stays 0), exactly like a refused connect, and EMFILE
 * is this process's limit, not the dependency's failure. ud is the
 * http_conn; the socket is remembered in its socks[]. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  (void)purpose;
  http_conn *c = ud;
  curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (s == CURL_SOCKET_BAD) {
    c->sock_errno = errno;
    return s;
  }
  for (size_t i = 0; i < HTTP_MAX_SOCKS; i++)
    if (c->socks[i] == CURL_SOCKET_BAD) {
      c->socks[i] = s;
      return s;
    }
  c->untracked = true;
  return s;
}

static int close_socket(void *ud, curl_socket_t s) {
  http_conn *c = ud;
  for (size_t i = 0; i < HTTP_MAX_SOCKS; i++)
    if (c->socks[i] == s) c->socks[i] = CURL_SOCKET_BAD;
  return close(s);
}

static resil_status conn_open(void *ctx, resil_deadline deadline, void **out, resil_err *err) {
  (void)deadline;
  resil_http *h = ctx;
  http_conn *c = calloc(1, sizeof *c);
  if (c && !(c->multi = curl_multi_init())) {
    free(c);
    c = NULL;
  }
  if (!c || !(c->easy = curl_easy_init())) {
    if (c) curl_multi_cleanup(c->multi);
    free(c);
    /* Local (memory): not the dependency's failure. */
    return resil_err_set(err, RESIL_E_NOMEM, "http '%s': cannot create a curl handle", h->name);
  }
  for (size_t i = 0; i < HTTP_MAX_SOCKS; i++) c->socks[i] = CURL_SOCKET_BAD;
  curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, 1L);
  CURL *e = c->easy;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_MAXCONNECTS, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075700
  /* A transfer ended while curl's resolver thread is still in getaddrinfo()
   * (a DNS server that never answers) leaves that thread to finish on its
   * own; without this, curl waits for it when the transfer ends, seconds
   * past the deadline. Older curl: resolve_with_resil is forced on. */
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
#endif
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, h->tls_verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, h->tls_verify ? 2L : 0L);
  if (h->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
  if (h->low_speed_bps) {
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long)h->low_speed_bps);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)h->low_speed_s);
  }
  *out = c;
  return RESIL_OK;
}

static void conn_close(void *ctx, void *conn) {
  (void)ctx;
  http_conn *c = conn;
  if (!c) return;
  curl_easy_cleanup(c->easy);
  curl_multi_cleanup(c->multi); /* closes the cached connection: close_socket needs c */
  free(c->hbuf);
  free(c->spans);
  free(c);
}

/* A child of fork frees the parent's handle. Its connection cache
 * (CURLMOPT_MAXCONNECTS 1: at most the last connection) may hold a live
 * connection, which curl would shut down cleanly (TLS close_notify, HTTP/2
 * GOAWAY): every socket the handle has open is pointed at /dev/null first.
 * If that cannot be done the handle is left allocated rather than risk it. */
static void conn_abandon(void *ctx, void *conn) {
  http_conn *c = conn;
  if (!c || c->untracked) return; /* leaked: see above */
  for (size_t i = 0; i < HTTP_MAX_SOCKS; i++)
    if (c->socks[i] != CURL_SOCKET_BAD && !resil_x_silence_fd((int)c->socks[i]))
      return; /* leaked: see above */
  conn_close(ctx, c);
}

/* ---- running a transfer ----------------------------------------------- */

/* Run the transfer set up on e to its end, on the multi m, and return
 * curl's result. The wait between curl's steps is resil's: it never sleeps
 * past `deadline` bounded by the drain cutoff (re-read on every wake-up,
 * and at most RESIL_DRAIN_CHECK_MS at a time while no cutoff is set), so
 * the call ends at its deadline even when curl's own timer does not fire.
 * A soak call with ~200 ms left once returned "Operation timed out after
 * 1202 milliseconds" from curl_easy_perform(): curl noticed its
 * CURLOPT_TIMEOUT_MS a second late. Our reading of curl 7.88 (not
 * reproduced in isolation): add_next_timeout() compares in whole ms and
 * drops a pending expiry less than 1 ms ahead when another timer of the
 * transfer fires, so it sleeps until curl's next wake-up. curl's timeouts stay set
 * and usually end the transfer first, with curl's own message. When resil's
 * bound passes first, the transfer is abandoned (its connection closed,
 * never reused), errbuf (CURL_ERROR_SIZE) says so, and the result is
 * CURLE_OPERATION_TIMEDOUT, or CURLE_ABORTED_BY_CALLBACK when the drain
 * cutoff was the bound. */
static CURLcode perform_bounded(CURL *e, CURLM *m, resil_deadline deadline, char *errbuf) {
  if (curl_multi_add_handle(m, e) != CURLM_OK) return CURLE_FAILED_INIT;
  const uint64_t t0 = resil_now_ns();
  CURLcode rc = CURLE_OK;
  for (;;) {
    int running = 0, queued = 0;
    CURLMcode mc = curl_multi_perform(m, &running);
    CURLMsg *msg = mc == CURLM_OK ? curl_multi_info_read(m, &queued) : NULL;
    if (msg && msg->msg == CURLMSG_DONE) {
      rc = msg->data.result;
      break;
    }
    if (mc != CURLM_OK || !running) {
      rc = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
      break;
    }
    const uint64_t cut = resil_drain_cutoff().at_ns;
    const uint64_t end = cut && cut < deadline.at_ns ? cut : deadline.at_ns;
    const uint64_t now = resil_now_ns();
    if (now >= end) {
      curl_off_t got = 0;
      curl_easy_getinfo(e, CURLINFO_SIZE_DOWNLOAD_T, &got);
      rc = end == cut ? CURLE_ABORTED_BY_CALLBACK : CURLE_OPERATION_TIMEDOUT;
      snprintf(errbuf, CURL_ERROR_SIZE, "%s after %llu ms with %lld bytes received",
               rc == CURLE_OPERATION_TIMEDOUT ? "timed out at the call's deadline"
                                              : "cut at the drain cutoff",
               (unsigned long long)((now - t0) / 1000000u), (long long)got);
      break;
    }
    uint64_t wait_ms = (end - now + 999999u) / 1000000u;
    if (!cut && wait_ms > RESIL_DRAIN_CHECK_MS) wait_ms = RESIL_DRAIN_CHECK_MS;
    if (curl_multi_poll(m, NULL, 0, (int)wait_ms, NULL) != CURLM_OK) {
      rc = CURLE_FAILED_INIT;
      break;
    }
  }
  curl_multi_remove_handle(m, e);
  return rc;
}

/* ---- resolving with resil_resolve -------------------------------------- */

#define PIN_LINE_MAX 600

/* Resolve the base host with resil_resolve() (bounded by d, cached for a
 * few seconds process-wide) and write the CURLOPT_RESOLVE entry
 * "host:port:addr,addr" that pins curl to the answer into line. RESIL_OK,
 * or resil_resolve's status (RESIL_E_FAILURE when it found no address)
 * with its message in *e. */
static resil_status resolve_pin_line(const resil_http *h, resil_deadline d,
                                     char line[PIN_LINE_MAX], resil_err *e) {
  resil_addr addrs[8];
  size_t n = 0;
  resil_status st = resil_resolve(h->host, h->port, d, addrs, 8, &n, e);
  if (st == RESIL_OK && n == 0) st = RESIL_E_FAILURE;
  if (st != RESIL_OK) return st;
  int len = snprintf(line, PIN_LINE_MAX, "%s:%u:", h->host, h->port);
  for (size_t i = 0; i < n && len > 0 && (size_t)len < PIN_LINE_MAX - RESIL_ADDR_TEXT_MAX - 4;
       i++)
    len += snprintf(line + len, PIN_LINE_MAX - (size_t)len,
                    addrs[i].family == AF_INET6 ? "%s[%s]" : "%s%s", i ? "," : "", addrs[i].text);
  return RESIL_OK;
}

/* Append the client's default header lines to *list; false when out of
 * memory (*list keeps what was appended). */
static bool append_defaults(const resil_http *h, struct curl_slist **list) {
  for (size_t i = 0; i < h->nheaders; i++) {
    struct curl_slist *nl = curl_slist_append(*list, h->headers[i]);
    if (!nl) return false;
    *list = nl;
  }
  return true;
}

/* ---- the recovery probe ------------------------------------------------ */

/* Any body byte ends the transfer: the status line and headers are the
 * answer. */
static size_t probe_body(char *data, size_t size, size_t nmemb, void *ud) {
  (void)data;
  (void)size;
  (void)nmemb;
  (void)ud;
  return 0;
}

/* The probe's lookup: *pin pins curl to the answer; *cto and *left are cut
 * to the time the lookup left. */
static resil_status probe_pin(resil_http *h, resil_deadline deadline, long *cto, int64_t *left,
                              struct curl_slist **pin, resil_err *err) {
  char line[PIN_LINE_MAX];
  resil_err re = {0};
  resil_status st =
      resolve_pin_line(h, resil_deadline_min(deadline, resil_deadline_in_ms(*cto)), line, &re);
  if (st != RESIL_OK)
    st = resil_err_set(err, st == RESIL_E_TIMEOUT ? RESIL_E_TIMEOUT : RESIL_E_FAILURE,
                       "http '%s': probe: dns: %s", h->name, re.msg);
  else if (!(*pin = curl_slist_append(NULL, line)))
    st = resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: out of memory", h->name);
  *left = resil_deadline_remaining_ms(deadline);
  if (st == RESIL_OK && *left <= 0)
    st = resil_err_set(err, RESIL_E_TIMEOUT, "http '%s': probe: no time after dns", h->name);
  if (*cto > *left) *cto = (long)*left;
  return st;
}

/* GET probe_url on e: a status below 500 (but 429) is a healthy answer. */
static resil_status probe_run(resil_http *h, CURL *e, struct curl_slist *hdrs,
                              struct curl_slist *pin, long cto, int64_t left, resil_err *err) {
  char errbuf[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075700
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L); /* see conn_open() */
#endif
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, probe_body);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, h->tls_verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, h->tls_verify ? 2L : 0L);
  if (h->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
  if (pin) curl_easy_setopt(e, CURLOPT_RESOLVE, pin);
  curl_easy_setopt(e, CURLOPT_URL, h->probe_url);
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, cto);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
  CURLM *m = curl_multi_init();
  if (!m) return resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: no curl handle", h->name);
  CURLcode rc = perform_bounded(e, m, resil_deadline_in_ms(left), errbuf);
  curl_multi_cleanup(m); /* FORBID_REUSE: nothing cached */
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, (char *)NULL); /* errbuf is this frame's */
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  if ((rc == CURLE_OK || rc == CURLE_WRITE_ERROR) && code >= 100) {
    if (code >= 500 || code == 429)
      return resil_err_set(err, RESIL_E_FAILURE, "http '%s': probe: GET %s: HTTP %ld", h->name,
                           h->probe_url, code);
    resil_err_set(err, RESIL_OK, "GET %s: HTTP %ld", h->probe_url, code);
    return RESIL_OK;
  }
  return resil_err_set(err, rc == CURLE_OPERATION_TIMEDOUT ? RESIL_E_TIMEOUT : RESIL_E_FAILURE,
                       "http '%s': probe: GET %s: %s (curl %d)", h->name, h->probe_url,
                       errbuf[0] ? errbuf : curl_easy_strerror(rc), (int)rc);
}

/* Recovery probe (resil_dep_set_probe): GET probe_url on a fresh handle
 * (a fresh connection) with the default headers, within the deadline. */
static resil_status http_probe(void *ctx, resil_deadline deadline, resil_err *err) {
  resil_http *h = ctx;
  int64_t left = resil_deadline_remaining_ms(deadline);
  if (left <= 0) return resil_err_set(err, RESIL_E_TIMEOUT, "http '%s': probe: no time", h->name);
  CURL *e = curl_easy_init();
  if (!e) return resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: no curl handle", h->name);
  struct curl_slist *hdrs = NULL, *pin = NULL;
  resil_status st = RESIL_OK;
  if (!append_defaults(h, &hdrs))
    st = resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: out of memory", h->name);
  long cto = (long)(left < h->connect_timeout_ms ? left : h->connect_timeout_ms);
  if (st == RESIL_OK && h->use_resil_resolve) st = probe_pin(h, deadline, &cto, &left, &pin, err);
  if (st == RESIL_OK) st = probe_run(h, e, hdrs, pin, cto, left, err);
  curl_easy_cleanup(e);
  curl_slist_free_all(hdrs);
  curl_slist_free_all(pin);
  return st;
}

/* ---- lifecycle --------------------------------------------------------- */

void resil_http_free(resil_http *h) {
  if (!h) return;
  if (h->dep) resil_dep_set_probe(h->dep, NULL, NULL); /* waits for a running probe */
  if (h->dep) resil_dep_attach_pool(h->dep, NULL);
  resil_pool_free(h->pool);
  resil_dep_free(h->dep);
  for (size_t i = 0; i < h->nheaders; i++) free(h->headers[i]);
  free(h->headers);
  free(h->name);
  free(h->host);
  free(h->base);
  free(h->deadline_header);
  free(h->ca_file);
  free(h->probe_url);
  free(h);
}

/* "Name: value", or "Name;" (curl's way to send a header with an empty
 * value), into buf of n >= strlen(name) + strlen(value) + 3 bytes. */
static void header_line(char *buf, size_t n, const char *name, const char *value) {
  if (*value)
    snprintf(buf, n, "%s: %s", name, value);
  else
    snprintf(buf, n, "%s;", name);
}

/* The default header lines and the probe's URL, built from cfg. False when
 * out of memory (what was built is h's, freed by resil_http_free). */
static bool copy_headers_and_probe(resil_http *h, const resil_http_config *cfg) {
  if (cfg->nheaders) {
    if (!(h->headers = calloc(cfg->nheaders, sizeof *h->headers))) return false;
    for (size_t i = 0; i < cfg->nheaders; i++) {
      const resil_http_header *hd = &cfg->headers[i];
      size_t n = strlen(hd->name) + strlen(hd->value) + 3;
      if (!(h->headers[i] = malloc(n))) return false;
      h->nheaders++;
      header_line(h->headers[i], n, hd->name, hd->value);
    }
  }
  const char *pp = cfg->probe_path ? cfg->probe_path : "";
  while (*pp == '/') pp++;
  size_t bl = strlen(h->base), pl = strlen(pp);
  if (!(h->probe_url = malloc(bl + pl + 2))) return false;
  memcpy(h->probe_url, h->base, bl);
  if (pl) h->probe_url[bl++] = '/';
  memcpy(h->probe_url + bl, pp, pl + 1);
  return true;
}

/* What the client keeps of cfg (validated). False when out of memory. */
static bool copy_config(resil_http *h, const resil_http_config *cfg) {
  h->connect_timeout_ms = cfg->connect_timeout_ms;
  h->request_timeout_ms = cfg->request_timeout_ms;
  memcpy(h->failure_statuses, cfg->failure_statuses, sizeof h->failure_statuses);
  h->nfailure = cfg->nfailure_statuses;
  h->tls_verify = cfg->tls_verify;
  if (cfg->low_speed_bytes_per_s) {
    h->low_speed_bps = cfg->low_speed_bytes_per_s;
    h->low_speed_s = cfg->low_speed_time_s;
  }
  h->max_body = cfg->max_response_bytes;
  if (!(h->name = resil_x_strdup(cfg->dep.name)) || !(h->base = resil_x_strdup(cfg->base_url)))
    return false;
  for (size_t n = strlen(h->base); n > 0 && h->base[n - 1] == '/'; n--) h->base[n - 1] = '\0';
  if (cfg->deadline_header && *cfg->deadline_header) {
    size_t n = strlen(cfg->deadline_header);
    if (!(h->deadline_header = malloc(n + 3))) return false;
    memcpy(h->deadline_header, cfg->deadline_header, n);
    memcpy(h->deadline_header + n, ": ", 3);
  }
  if (cfg->ca_file && !(h->ca_file = resil_x_strdup(cfg->ca_file))) return false;
  return copy_headers_and_probe(h, cfg);
}

/* The dependency, the pool of handles and the recovery probe. */
static resil_status start_client(resil_http *h, const resil_http_config *cfg, resil_err *err) {
  if (!(h->dep = resil_dep_new(&cfg->dep, err))) return err ? err->status : RESIL_E_NOMEM;
  char label[RESIL_ERR_MSG_MAX / 4];
  snprintf(label, sizeof label, "http '%s'", h->name);
  resil_x_client c = {
      .label = label,
      .pool = cfg->pool,
      .connector = {.connect = conn_open, .close = conn_close, .ctx = h, .abandon = conn_abandon},
      .memory_bound = resil_http_config_memory_bound(cfg),
      .probe = http_probe};
  c.pool.name = h->name; /* the dependency's, always */
  return resil_x_start_pool(&c, h->dep, &h->pool, err);
}

resil_http *resil_http_new(const resil_http_config *cfg, resil_err *err) {
  bool https = false, numeric = false;
  char *host = NULL;
  uint16_t port = 0;
  if (validate(cfg, err, &https, &numeric, &host, &port) != RESIL_OK) {
    free(host);
    return NULL;
  }
  pthread_once(&curl_once, curl_global_once);
  if (curl_init_rc != CURLE_OK) {
    free(host);
    resil_err_set(err, RESIL_E_SYSTEM, "http '%s': curl_global_init failed: %s", cfg->dep.name,
                  curl_easy_strerror(curl_init_rc));
    return NULL;
  }
  resil_http *h = calloc(1, sizeof *h);
  if (!h) free(host);
  if (h) {
    h->host = host;
    h->port = port;
    /* Without curl's threaded resolver a lookup could block past the
     * deadline, and before curl 7.87 (CURLOPT_QUICK_EXIT) the end of a
     * transfer waits for a lookup still running: resolve with
     * resil_resolve() instead. */
    h->use_resil_resolve = !numeric && (cfg->resolve_with_resil || !curl_async_dns ||
                                        LIBCURL_VERSION_NUM < 0x075700);
    h->https = https;
    h->numeric_host = numeric;
  }
  if (!h || !copy_config(h, cfg)) {
    resil_err_set(err, RESIL_E_NOMEM, "http '%s': out of memory",
                  cfg->dep.name ? cfg->dep.name : "?");
  } else if (start_client(h, cfg, err) == RESIL_OK) {
    return h;
  }
  resil_http_free(h);
  return NULL;
}

uint64_t resil_http_config_memory_bound(const resil_http_config *cfg) {
  if (!cfg) return 0;
  /* A call's response: the body (up to max_response_bytes; while its buffer
   * grows, the old and the new one exist at once: 2x) and the header lines
   * (also at most max_response_bytes, copied once into the response: 2x). */
  return resil_x_memory_bound(&cfg->dep, cfg->pool.max_size, HTTP_CONN_BYTES,
                              4 * (uint64_t)cfg->max_response_bytes);
}

resil_dep *resil_http_dep(resil_http *h) { return h ? h->dep : NULL; }
resil_pool *resil_http_pool(resil_http *h) { return h ? h->pool : NULL; }

/* ---- responses --------------------------------------------------------- */

static void free_headers(resil_http_response *r) {
  free(r->headers); /* one block: the array, then the strings */
  r->headers = NULL;
  r->nheaders = 0;
}

void resil_http_response_free(resil_http_response *r) {
  if (!r) return;
  free_headers(r);
  free(r->body);
  memset(r, 0, sizeof *r);
}

const char *resil_http_response_header(const resil_http_response *r, const char *name) {
  if (!r || !name) return NULL;
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
  return NULL;
}

/* ---- one transfer ------------------------------------------------------ */

typedef struct xfer {
  resil_http_response *resp;
  http_conn *hc;
  resil_dep *dep; /* the body buffer's capacity is reported to its memory gauge */
  size_t max;
  size_t cap;
  size_t header_bytes;
  bool headers_done; /* the blank line ending the last response's headers came */
  bool too_big;
  bool nomem;
} xfer;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  resil_http_response *r = x->resp;
  size_t n = size * nmemb;
  if (n > x->max - r->body_len) {
    x->too_big = true;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  if (r->body_len + n + 1 > x->cap) {
    size_t want = x->cap ? x->cap * 2 : 0;
    if (!want) {
      curl_off_t cl = -1;
      curl_easy_getinfo(x->hc->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
      want = (cl > 0 && (uint64_t)cl <= x->max) ? (size_t)cl + 1 : 16384;
    }
    while (want < r->body_len + n + 1) want *= 2;
    if (want > x->max + 1) want = x->max + 1;
    char *nb = realloc(r->body, want);
    if (!nb) {
      x->nomem = true;
      return 0;
    }
    r->body = nb;
    resil_dep_memory_add(x->dep, (int64_t)want - (int64_t)x->cap);
    x->cap = want;
  }
  memcpy(r->body + r->body_len, data, n);
  r->body_len += n;
  r->body[r->body_len] = '\0';
  return n;
}

static bool grow(void **buf, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t nc = *cap ? *cap : 16;
  while (nc < need) nc *= 2;
  void *nb = realloc(*buf, nc * elem);
  if (!nb) return false;
  *buf = nb;
  *cap = nc;
  return true;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  http_conn *hc = x->hc;
  size_t n = size * nmemb;
  x->header_bytes += n;
  if (x->header_bytes > x->max) {
    x->too_big = true;
    return 0;
  }
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a new response (after 1xx) */
    hc->hlen = hc->nspans = 0;
    x->headers_done = false;
    return n;
  }
  size_t len = n;
  while (len && (data[len - 1] == '\r' || data[len - 1] == '\n')) len--;
  if (!len) { /* the blank line: this response's headers are complete */
    x->headers_done = true;
    return n;
  }
  if (data[0] == ' ' || data[0] == '\t') return n; /* obsolete folding */
  const char *colon = memchr(data, ':', len);
  if (!colon || colon == data || hc->nspans >= MAX_HEADER_LINES) return n;
  size_t nl = (size_t)(colon - data);
  const char *v = colon + 1, *end = data + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
  size_t vl = (size_t)(end - v);
  if (!grow((void **)&hc->hbuf, &hc->hcap, hc->hlen + nl + vl + 2, 1) ||
      !grow((void **)&hc->spans, &hc->scap, hc->nspans + 1, sizeof *hc->spans)) {
    x->nomem = true;
    return 0;
  }
  hdr_span *sp = &hc->spans[hc->nspans++];
  sp->name = (uint32_t)hc->hlen;
  memcpy(hc->hbuf + hc->hlen, data, nl);
  hc->hbuf[hc->hlen + nl] = '\0';
  sp->value = (uint32_t)(hc->hlen + nl + 1);
  memcpy(hc->hbuf + sp->value, v, vl);
  hc->hbuf[sp->value + vl] = '\0';
  hc->hlen += nl + vl + 2;
  return n;
}

/* Hand the received headers to the response as one block (array, then the
 * strings), and trim the scratch space if one response made it large. */
static bool take_headers(http_conn *hc, resil_http_response *r) {
  bool ok = true;
  if (hc->nspans) {
    size_t arr = hc->nspans * sizeof(resil_http_header);
    char *block = malloc(arr + hc->hlen);
    if (block) {
      resil_http_header *hd = (resil_http_header *)(void *)block;
      char *str = block + arr;
      memcpy(str, hc->hbuf, hc->hlen);
      for (size_t i = 0; i < hc->nspans; i++) {
        hd[i].name = str + hc->spans[i].name;
        hd[i].value = str + hc->spans[i].value;
      }
      r->headers = hd;
      r->nheaders = hc->nspans;
    } else {
      ok = false;
    }
  }
  hc->hlen = hc->nspans = 0;
  if (hc->hcap > 65536) {
    free(hc->hbuf);
    hc->hbuf = NULL;
    hc->hcap = 0;
  }
  return ok;
}

/* Where a failed transfer stopped, from its code, else from its timers. */
static resil_http_phase phase_of(const resil_http *h, CURL *e, CURLcode rc, size_t to_send) {
  switch (rc) {
  case CURLE_OK:
    return RESIL_HTTP_PHASE_NONE;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return RESIL_HTTP_PHASE_DNS;
  case CURLE_COULDNT_CONNECT:
    return RESIL_HTTP_PHASE_CONNECT;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_USE_SSL_FAILED:
    return RESIL_HTTP_PHASE_TLS;
  case CURLE_SEND_ERROR:
    return RESIL_HTTP_PHASE_SEND;
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING: {
    /* curl also reads while it uploads (for an early response): a reset
     * that read sees before the whole body went out happened while
     * sending. */
    curl_off_t sent = 0;
    curl_easy_getinfo(e, CURLINFO_SIZE_UPLOAD_T, &sent);
    return sent >= 0 && (size_t)sent < to_send ? RESIL_HTTP_PHASE_SEND : RESIL_HTTP_PHASE_RECEIVE;
  }
  case CURLE_PARTIAL_FILE:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_WRITE_ERROR:
  case CURLE_FILESIZE_EXCEEDED:
  case CURLE_BAD_CONTENT_ENCODING:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return RESIL_HTTP_PHASE_RECEIVE;
  default:
    break;
  }
  /* Timeouts and the rest: the last milestone the transfer reached. */
  curl_off_t nl = 0, conn = 0, app = 0, pre = 0, start = 0, up = 0;
  curl_easy_getinfo(e, CURLINFO_NAMELOOKUP_TIME_T, &nl);
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &conn);
  curl_easy_getinfo(e, CURLINFO_APPCONNECT_TIME_T, &app);
  curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pre);
  curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &start);
  curl_easy_getinfo(e, CURLINFO_SIZE_UPLOAD_T, &up);
  if (pre > 0 || start > 0) {
    /* Not "start == 0": curl 7.88 sets STARTTRANSFER when a POST body starts
     * going out, not at the first byte received; a body not all sent is the
     * send phase. */
    if (up >= 0 && (size_t)up < to_send) return RESIL_HTTP_PHASE_SEND;
    return RESIL_HTTP_PHASE_RECEIVE;
  }
  if (conn > 0) return h->https && app == 0 ? RESIL_HTTP_PHASE_TLS : RESIL_HTTP_PHASE_SEND;
  if (nl > 0 || h->numeric_host) return RESIL_HTTP_PHASE_CONNECT;
  return RESIL_HTTP_PHASE_DNS;
}

/* curl 7.88 ends a transfer whose response has a header line longer than
 * CURL_MAX_HTTP_HEADER (100 KiB) with CURLE_OUT_OF_MEMORY and no message
 * (later versions say CURLE_TOO_LARGE). Call for a CURLE_OUT_OF_MEMORY our
 * own callbacks did not cause: true if it is that refusal, i.e. response
 * bytes had arrived (the first-byte time is set), the headers never ended,
 * and memory is in fact available (a 256 KiB allocation succeeds, which a
 * real out-of-memory would not allow). */
static bool curl_refused_header(CURL *e, const xfer *x) {
  curl_off_t first_byte = 0;
  curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &first_byte);
  if (first_byte <= 0 || x->headers_done) return false;
  void *(*volatile alloc)(size_t) = malloc; /* not elided by the compiler */
  char *probe = alloc(256 * 1024);
  if (!probe) return false;
  free(probe);
  return true;
}

/* ---- one call ---------------------------------------------------------- */

typedef struct call_ctx {
  resil_http *h;
  const resil_http_request *req;
  const char *method;
  char *url;       /* full URL */
  size_t url_show; /* bytes of url shown in messages (no query: may hold secrets) */
  struct curl_slist *hdrs; /* defaults + request headers (no deadline header) */
  resil_http_response *resp;
} call_ctx;

static bool in_set(const resil_http *h, long status) {
  for (size_t i = 0; i < h->nfailure; i++)
    if (h->failure_statuses[i] == status) return true;
  return false;
}

/* Set the request method and body on a reused handle, undoing the last. */
static void set_method(CURL *e, const char *m, const resil_http_request *req) {
  curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
  bool has_body = req->body && req->body_len;
  if (strcmp(m, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (has_body || strcmp(m, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(has_body ? req->body_len : 0));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, has_body ? (const char *)req->body : "");
    if (strcmp(m, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (strcmp(m, "GET") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m);
  }
}

/* ---- one attempt, phase by phase ---------------------------------------
 * As in curl's multi.c, where each state of a transfer has its function:
 * attempt() borrows a handle (try_acquire), sets the transfer up
 * (try_prepare), runs it (try_perform), reads what the handle says about
 * the answer (read_response) or the failure (read_failure), gives the
 * handle back on its one release path (try_release), and only then maps the
 * outcome to a status (classify_response, classify_failure): nothing of the
 * handle is touched after the release, another call may have it. Every
 * message goes through try_err(), which starts it with
 * "http '<dep>': METHOD url: ". */

typedef struct http_try {
  call_ctx *c;
  resil_attempt *a;
  resil_http *h;
  resil_http_response *r;
  resil_pool_conn *pc; /* the borrowed handle, NULL once released */
  http_conn *hc;
  long cto, tto;                    /* curl's connect and transfer timeouts, ms */
  struct curl_slist *pin;           /* the CURLOPT_RESOLVE entry, or NULL */
  struct curl_slist *hdrs;          /* c->hdrs with the deadline header after it */
  struct curl_slist dl_node, *tail; /* the deadline header, linked after tail */
  char dl_line[128];                /* "name: value": name <= 64, value < 16 */
  xfer x;
  CURLcode rc;
  long code;           /* the response's status, 0 if none */
  bool cut_headers;    /* CURLE_OK, but the connection closed inside the headers */
  bool has_ra;         /* the response has a Retry-After */
  bool clean;          /* failed before any connection: the handle stays good */
  bool header_refused; /* curl refused a header line too long (curl_refused_header) */
  int sock_errno;      /* the handle's sock_errno after a failed transfer */
  resil_http_phase phase;
  char detail[CURL_ERROR_SIZE];
} http_try;

/* Fill the attempt's error with "http '<dep>': METHOD url: " and the
 * message; returns st. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static resil_status try_err(const http_try *t, resil_status st, const char *fmt, ...) {
  resil_err *err = t->a->err;
  const call_ctx *c = t->c;
  int n = snprintf(err->msg, sizeof err->msg, "http '%s': %s %.*s: ", t->h->name, c->method,
                   (int)c->url_show, c->url);
  size_t at = n < 0 ? 0 : (size_t)n < sizeof err->msg ? (size_t)n : sizeof err->msg - 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg + at, sizeof err->msg - at, fmt, ap);
  va_end(ap);
  err->status = st;
  return st;
}

static resil_status try_nomem(const http_try *t) {
  return resil_err_set(t->a->err, RESIL_E_NOMEM, "http '%s': out of memory", t->h->name);
}

static void reset_response(resil_http_response *r, uint32_t attempt_number) {
  free_headers(r);
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  r->status = 0;
  r->retry_after_ms = 0;
  r->phase = RESIL_HTTP_PHASE_NONE;
  r->curl_code = 0;
  r->reused = false;
  r->attempts = attempt_number;
}

/* The deadline, then a handle from the pool. Nothing is borrowed on
 * failure. */
static resil_status try_acquire(http_try *t) {
  if (resil_deadline_expired(t->a->deadline))
    return try_err(t, RESIL_E_DEADLINE, "deadline passed before the transfer");
  resil_status st = resil_pool_acquire(t->h->pool, t->a->deadline, &t->pc, t->a->err);
  if (st != RESIL_OK) return st;
  t->hc = resil_pool_conn_handle(t->pc);
  return RESIL_OK;
}

/* curl's timeouts: the configured ones, capped by the time left. */
static resil_status try_budget(http_try *t) {
  /* rounded up: 0 only if expired; a drain's cutoff bounds it too */
  int64_t left = resil_deadline_remaining_ms(resil_drain_bound(t->a->deadline));
  if (left <= 0) {
    /* The pool's handles do no I/O to be lent (curl connects inside the
     * transfer), so this is time spent waiting for one; asked anyway, so
     * that the rule (resil/status.h) holds whatever the pool does. */
    bool io = resil_pool_conn_did_io(t->pc);
    return try_err(t, io ? RESIL_E_TIMEOUT : RESIL_E_DEADLINE,
                   "deadline passed before the transfer");
  }
  const resil_http *h = t->h;
  t->cto = (long)(left < h->connect_timeout_ms ? left : h->connect_timeout_ms);
  t->tto = (long)(left < h->request_timeout_ms ? left : h->request_timeout_ms);
  return RESIL_OK;
}

/* With use_resil_resolve: resolve the base host (bounded by the connect
 * timeout and the deadline) and pin curl to the answer. */
static resil_status try_pin(http_try *t) {
  if (!t->h->use_resil_resolve) return RESIL_OK;
  char line[PIN_LINE_MAX];
  resil_err e = {0};
  resil_deadline d = resil_deadline_min(t->a->deadline, resil_deadline_in_ms(t->cto));
  resil_status st = resolve_pin_line(t->h, d, line, &e);
  int64_t left = 0;
  if (st != RESIL_OK && st != RESIL_E_TIMEOUT && st != RESIL_E_NOMEM && st != RESIL_E_SYSTEM)
    st = RESIL_E_FAILURE;
  if (st != RESIL_OK)
    try_err(t, st, "dns: %s", e.msg);
  else if (!(t->pin = curl_slist_append(NULL, line)))
    st = try_nomem(t);
  else if ((left = resil_deadline_remaining_ms(resil_drain_bound(t->a->deadline))) <= 0)
    st = try_err(t, RESIL_E_TIMEOUT, "dns: no time left after the lookup"); /* it used it all */
  if (st != RESIL_OK) {
    t->r->phase = RESIL_HTTP_PHASE_DNS;
    return st;
  }
  if (t->cto > left) t->cto = (long)left;
  if (t->tto > left) t->tto = (long)left;
  curl_easy_setopt(t->hc->easy, CURLOPT_RESOLVE, t->pin);
  return RESIL_OK;
}

/* The deadline header is the only per-attempt one: link it after the
 * shared list for this transfer (try_release unlinks it). */
static void link_deadline_header(http_try *t) {
  t->hdrs = t->c->hdrs;
  const char *name = t->h->deadline_header; /* the stored name ends with ": " */
  if (!name) return;
  size_t pl = strlen(name);
  if (resil_grpc_timeout_format(t->a->deadline, t->dl_line + pl, sizeof t->dl_line - pl, NULL) !=
      RESIL_OK)
    return;
  memcpy(t->dl_line, name, pl);
  t->dl_node.data = t->dl_line;
  if (!t->hdrs) {
    t->hdrs = &t->dl_node;
    return;
  }
  for (t->tail = t->hdrs; t->tail->next; t->tail = t->tail->next) {
  }
  t->tail->next = &t->dl_node;
}

/* Time budget, pin and headers, then the transfer's options. */
static resil_status try_prepare(http_try *t) {
  resil_status st = try_budget(t);
  if (st == RESIL_OK) st = try_pin(t);
  if (st != RESIL_OK) return st;
  link_deadline_header(t);
  const resil_http *h = t->h;
  const call_ctx *c = t->c;
  CURL *e = t->hc->easy;
  t->x = (xfer){.resp = t->r, .hc = t->hc, .dep = h->dep, .max = h->max_body};
  t->hc->sock_errno = 0;
  t->hc->hlen = t->hc->nspans = 0;
  t->hc->errbuf[0] = '\0';
  curl_easy_setopt(e, CURLOPT_URL, c->url);
  set_method(e, c->method, c->req);
  /* curl refuses a declared Content-Length above the limit before reading
   * the body, but would refuse it for a HEAD too, which reads no body. */
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)(strcmp(c->method, "HEAD") == 0 ? 0 : h->max_body));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->hdrs);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t->x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &t->x);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, t->cto);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, t->tto);
  return RESIL_OK;
}

static void try_perform(http_try *t) {
  CURL *e = t->hc->easy;
  t->rc = perform_bounded(e, t->hc->multi, t->a->deadline, t->hc->errbuf);
  /* From here the body is the caller's (or freed): no longer held for a
   * call in flight. */
  resil_dep_memory_add(t->h->dep, -(int64_t)t->x.cap);
  long nconn = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &t->code);
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn);
  t->r->curl_code = (int)t->rc;
  t->r->reused = nconn == 0 && t->code != 0;
  /* curl 7.88 ends a transfer whose connection closed inside the header
   * section (after the status line) with CURLE_OK, the status parsed and
   * no body: that is a cut response, not an answer. */
  t->cut_headers = t->rc == CURLE_OK && !t->x.headers_done;
}

/* An answer: its headers and Retry-After, from the handle. */
static void read_response(http_try *t) {
  resil_http_response *r = t->r;
  if (!take_headers(t->hc, r)) t->x.nomem = true;
  t->has_ra = resil_http_response_header(r, "Retry-After") != NULL;
  if (t->has_ra) {
    curl_off_t ra = 0; /* delta-seconds or an HTTP-date, parsed by curl */
    curl_easy_getinfo(t->hc->easy, CURLINFO_RETRY_AFTER, &ra);
    if (ra < 0) ra = 0;
    if (ra > (curl_off_t)(UINT32_MAX / 1000u)) ra = (curl_off_t)(UINT32_MAX / 1000u);
    r->retry_after_ms = (uint32_t)ra * 1000u;
  }
  r->status = t->code;
}

/* A failed transfer: where it stopped, curl's words, and whether the
 * handle can be kept (only when no connection was ever made: a refused
 * connect or a failed lookup leave nothing half-read). */
static void read_failure(http_try *t) {
  CURL *e = t->hc->easy;
  CURLcode rc = t->rc;
  const resil_http_request *req = t->c->req;
  t->r->status = 0;
  t->phase = t->cut_headers ? RESIL_HTTP_PHASE_RECEIVE
                            : phase_of(t->h, e, rc, req->body ? req->body_len : 0);
  t->r->phase = t->phase;
  if (t->cut_headers)
    snprintf(t->detail, sizeof t->detail, "connection closed inside the response headers");
  else
    snprintf(t->detail, sizeof t->detail, "%s",
             t->hc->errbuf[0] ? t->hc->errbuf : curl_easy_strerror(rc));
  /* Every timeout says "timed out", whatever words curl chose for the step
   * it was in (its TLS code says "SSL connection timeout"): one phrase for
   * the on-call engineer's grep. */
  if (rc == CURLE_OPERATION_TIMEDOUT && !strstr(t->detail, "timed out")) {
    char curl_words[CURL_ERROR_SIZE];
    snprintf(curl_words, sizeof curl_words, "%s", t->detail);
    snprintf(t->detail, sizeof t->detail, "timed out (%.200s)", curl_words);
  }
  t->hc->hlen = t->hc->nspans = 0;
  t->sock_errno = t->hc->sock_errno;
  t->clean = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
  t->header_refused = rc == CURLE_OUT_OF_MEMORY && !t->x.nomem && curl_refused_header(e, &t->x);
}

/* The one way the borrowed handle goes back: the per-transfer options off,
 * the deadline header unlinked from the shared list, the pin freed, then
 * the handle to the pool (RESIL_POOL_BROKEN frees it). */
static void try_release(http_try *t, resil_pool_return how) {
  CURL *e = t->hc->easy;
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
  if (t->tail) t->tail->next = NULL;
  if (t->pin) {
    curl_easy_setopt(e, CURLOPT_RESOLVE, (struct curl_slist *)NULL);
    curl_slist_free_all(t->pin);
    t->pin = NULL;
  }
  resil_pool_release(t->h->pool, t->pc, how);
  t->pc = NULL;
  t->hc = NULL;
}

/* The status of an answer: below 400 a success; 429 (or 503 with a
 * Retry-After) server pushback; a configured failure status; else the
 * caller's error. */
static resil_status classify_response(http_try *t) {
  long code = t->code;
  resil_http_response *r = t->r;
  if (t->x.nomem) return try_nomem(t);
  if (code < 400) return RESIL_OK;
  if (code == 429 || (code == 503 && t->has_ra)) {
    t->a->retry_after_ms = r->retry_after_ms;
    try_err(t, RESIL_E_OVERLOAD, "HTTP %ld (overloaded; Retry-After %u ms)", code,
            r->retry_after_ms);
    /* Server pushback: pause every call to this dependency until the time
     * it named (capped by pushback.max_pause_ms), or for pushback.pause_ms
     * after a 429 that named none. */
    if (t->has_ra)
      resil_dep_pause(t->h->dep, r->retry_after_ms, "retry_after", t->a->err->msg);
    else
      resil_dep_pushback(t->h->dep, "overload", t->a->err->msg);
    return RESIL_E_OVERLOAD;
  }
  if (in_set(t->h, code)) return try_err(t, RESIL_E_FAILURE, "HTTP %ld", code);
  return try_err(t, RESIL_E_CALLER, "HTTP %ld (caller error)", code);
}

/* curl's code of a failed transfer as a status (the few that are not the
 * dependency's plain failure). */
static resil_status failure_status(http_try *t) {
  switch (t->rc) {
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_ABORTED_BY_CALLBACK: /* perform_bounded: the drain cutoff passed */
    return RESIL_E_TIMEOUT;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
    return RESIL_E_INVALID; /* our configuration, not the dependency */
  case CURLE_PEER_FAILED_VERIFICATION:
    t->a->retry = 0; /* the same certificate will fail again */
    return RESIL_E_FAILURE;
  default:
    return RESIL_E_FAILURE;
  }
}

/* The status of a failed transfer. No half response: whatever arrived
 * before the failure is dropped. */
static resil_status classify_failure(http_try *t) {
  resil_http_response *r = t->r;
  CURLcode rc = t->rc;
  free_headers(r);
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  if (t->x.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    t->a->retry = 0;
    return try_err(t, RESIL_E_FAILURE, "response body exceeds max_response_bytes (%zu bytes)",
                   t->h->max_body);
  }
  if (t->header_refused) {
    /* The peer sent what curl will not hold: its failure, and it would send
     * the same again. */
    r->phase = RESIL_HTTP_PHASE_RECEIVE;
    t->a->retry = 0;
    return try_err(t, RESIL_E_FAILURE,
                   "receive: response header too large (a header line over curl's %d-byte "
                   "limit; curl %d)",
                   CURL_MAX_HTTP_HEADER, (int)rc);
  }
  if (t->x.nomem || rc == CURLE_OUT_OF_MEMORY) return try_nomem(t);
  if (rc == CURLE_COULDNT_CONNECT && resil_x_local_errno(t->sock_errno))
    return try_err(t, RESIL_E_SYSTEM,
                   "connect: cannot create a socket: %s (a local resource limit; not counted "
                   "against the dependency)",
                   strerror(t->sock_errno));
  resil_status out = failure_status(t);
  return try_err(t, out, "%s: %s (curl %d)", resil_http_phase_name(t->phase), t->detail,
                 (int)rc);
}

static resil_status attempt(void *vctx, resil_attempt *a) {
  call_ctx *c = vctx;
  http_try t = {.c = c, .a = a, .h = c->h, .r = c->resp};
  reset_response(c->resp, a->number);
  resil_status st = try_acquire(&t);
  if (st != RESIL_OK) return st; /* nothing borrowed */
  st = try_prepare(&t);
  bool answered = false;
  resil_pool_return how = RESIL_POOL_OK; /* unused, or a clean answer */
  if (st == RESIL_OK) {
    try_perform(&t);
    answered = t.rc == CURLE_OK && !t.cut_headers;
    if (answered)
      read_response(&t);
    else
      read_failure(&t);
    if (!answered && !t.clean) how = RESIL_POOL_BROKEN;
  }
  try_release(&t, how);
  if (st != RESIL_OK) return st;
  return answered ? classify_response(&t) : classify_failure(&t);
}

static bool method_idempotent(const char *m) {
  static const char *const safe[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
  for (size_t i = 0; i < sizeof safe / sizeof safe[0]; i++)
    if (strcmp(m, safe[i]) == 0) return true;
  return false;
}

static resil_status add_line(struct curl_slist **list, const char *name, const char *value) {
  size_t n = strlen(name) + strlen(value) + 3;
  char stackbuf[512];
  char *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
  if (!buf) return RESIL_E_NOMEM;
  header_line(buf, n, name, value);
  struct curl_slist *nl = curl_slist_append(*list, buf);
  if (buf != stackbuf) free(buf);
  if (!nl) return RESIL_E_NOMEM;
  *list = nl;
  return RESIL_OK;
}

/* The request's method, path, query, headers and body, checked; RESIL_OK
 * or RESIL_E_INVALID naming what is wrong. */
static resil_status check_request(const resil_http *h, const resil_http_request *req,
                                  const char *m, resil_err *err) {
  if (!is_token(m))
    return resil_err_set(err, RESIL_E_INVALID, "http '%s': method \"%.40s\" is not a token",
                         h->name, m);
  if (!is_url_part(req->path) || !is_url_part(req->query))
    return resil_err_set(err, RESIL_E_INVALID,
                         "http '%s': path or query has spaces, '#' or non-ASCII bytes "
                         "(encode them)",
                         h->name);
  if (req->path && has_dot_segment(req->path))
    return resil_err_set(err, RESIL_E_INVALID,
                         "http '%s': path \"%.60s\" has a \".\" or \"..\" segment (also as %%2e): "
                         "it could leave the base URL's path",
                         h->name, req->path);
  if (req->nheaders && !req->headers)
    return resil_err_set(err, RESIL_E_INVALID, "http '%s': request headers NULL with nheaders %zu",
                         h->name, req->nheaders);
  if (req->body_len && !req->body)
    return resil_err_set(err, RESIL_E_INVALID, "http '%s': body NULL with body_len %zu", h->name,
                         req->body_len);
  for (size_t i = 0; i < req->nheaders; i++)
    if (!is_token(req->headers[i].name) || !is_field_value(req->headers[i].value))
      return resil_err_set(err, RESIL_E_INVALID,
                           "http '%s': request header %zu (\"%.40s\") has a bad name or a value "
                           "with CR/LF",
                           h->name, i, req->headers[i].name ? req->headers[i].name : "(null)");
  return RESIL_OK;
}

/* c->url = base + '/' + path (+ '?' or '&' + query), and c->url_show the
 * length shown in messages (up to the query). False when out of memory. */
static bool build_url(call_ctx *c) {
  const resil_http *h = c->h;
  const resil_http_request *req = c->req;
  const char *path = req->path ? req->path : "";
  while (*path == '/') path++;
  size_t bl = strlen(h->base), pl = strlen(path), ql = req->query ? strlen(req->query) : 0;
  c->url = malloc(bl + pl + ql + 3);
  if (!c->url) return false;
  memcpy(c->url, h->base, bl);
  size_t at = bl;
  if (pl) {
    c->url[at++] = '/';
    memcpy(c->url + at, path, pl);
    at += pl;
  }
  const char *q = memchr(c->url + bl, '?', at - bl);
  c->url_show = q ? (size_t)(q - c->url) : at;
  if (ql) {
    c->url[at++] = q ? '&' : '?';
    memcpy(c->url + at, req->query, ql);
    at += ql;
  }
  c->url[at] = '\0';
  return true;
}

/* c->hdrs = the default headers, the request's, and "Expect:" with a body
 * (never wait for "100 Continue": it costs a round trip or a second).
 * False when out of memory (c->hdrs keeps what was appended). */
static bool build_headers(call_ctx *c) {
  const resil_http_request *req = c->req;
  if (!append_defaults(c->h, &c->hdrs)) return false;
  for (size_t i = 0; i < req->nheaders; i++)
    if (add_line(&c->hdrs, req->headers[i].name, req->headers[i].value) != RESIL_OK) return false;
  if (req->body_len) {
    struct curl_slist *nl = curl_slist_append(c->hdrs, "Expect:"); /* removes curl's own */
    if (!nl) return false;
    c->hdrs = nl;
  }
  return true;
}

resil_status resil_http_request_do(resil_http *h, resil_deadline deadline,
                                   const resil_http_request *req, resil_http_response *resp,
                                   resil_err *err) {
  if (resp) memset(resp, 0, sizeof *resp);
  if (!h || !req || !resp)
    return resil_err_set(err, RESIL_E_INVALID, "resil_http_request_do: %s is NULL",
                         !h ? "client" : !req ? "request" : "response");
  const char *m = req->method ? req->method : "GET";
  resil_status st = check_request(h, req, m, err);
  if (st != RESIL_OK) return st;
  call_ctx c = {.h = h, .req = req, .method = m, .resp = resp};
  if (!build_url(&c) || !build_headers(&c)) {
    st = resil_err_set(err, RESIL_E_NOMEM, "http '%s': out of memory", h->name);
  } else {
    bool idem = !(req->flags & RESIL_HTTP_NO_RETRY) &&
                ((req->flags & RESIL_HTTP_IDEMPOTENT) || method_idempotent(m));
    st = resil_dep_call(h->dep, deadline, idem ? RESIL_CALL_IDEMPOTENT : 0, attempt, &c, err);
  }
  curl_slist_free_all(c.hdrs);
  free(c.url);
  return st;
}

resil_status resil_http_get(resil_http *h, resil_deadline deadline, const char *path,
                            resil_http_response *resp, resil_err *err) {
  resil_http_request req = {.method = "GET", .path = path};
  return resil_http_request_do(h, deadline, &req, resp, err);
}
