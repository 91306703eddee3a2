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

typedef struct http_conn {
  CURL *easy;
  char errbuf[CURL_ERROR_SIZE];
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

/* Pull the "http" configuration kind (http_kind.c) into every program that
 * uses this adapter, also from a static archive, where the linker takes only
 * the members a program references: its constructor registers the kind, so
 * RESIL_DEPS=name:http works without calling resil_http_register_kind(). */
__attribute__((used)) static resil_status (*const pull_kind_)(resil_err *) =
    resil_http_register_kind;

void resil_http_config_init(resil_http_config *cfg, const char *name) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  resil_dep_config_init(&cfg->dep, name);
  resil_pool_config_init(&cfg->pool);
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

/* libcurl's progress callback: abort a transfer that runs past the
 * process's drain cutoff (a transfer started before the drain; one started
 * after has its timeout capped by the cutoff already). curl calls it at
 * least once a second, more often while data moves. */
static int on_progress(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un) {
  (void)p, (void)dt, (void)dn, (void)ut, (void)un;
  uint64_t cut = resil_drain_cutoff().at_ns;
  return cut && resil_now_ns() >= cut;
}

/* curl's socket, made here so that a failed socket() leaves its errno
 * behind: curl 7.88 reports it as CURLE_COULDNT_CONNECT with no errno
 * (CURLINFO_OS_ERRNO stays 0), exactly like a refused connect, and EMFILE
 * is this process's limit, not the dependency's failure. ud is the
 * transfer's xfer.sock_errno (NULL outside a transfer). */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  (void)purpose;
  curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (s == CURL_SOCKET_BAD && ud) *(int *)ud = errno;
  return s;
}

static resil_status conn_open(void *ctx, resil_deadline deadline, void **out, resil_err *err) {
  (void)deadline;
  resil_http *h = ctx;
  http_conn *c = calloc(1, sizeof *c);
  if (!c || !(c->easy = curl_easy_init())) {
    free(c);
    /* Local (memory): not the dependency's failure. */
    return resil_err_set(err, RESIL_E_NOMEM, "http '%s': cannot create a curl handle", h->name);
  }
  CURL *e = c->easy;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_MAXCONNECTS, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
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
  free(c->hbuf);
  free(c->spans);
  free(c);
}

/* A child of fork frees the parent's easy handle. Its connection cache
 * (CURLOPT_MAXCONNECTS 1: at most the last connection) may hold a live
 * connection, which curl_easy_cleanup() would shut down cleanly (TLS
 * close_notify, HTTP/2 GOAWAY): that socket is pointed at /dev/null first.
 * If that cannot be done the handle is left allocated rather than risk it. */
static void conn_abandon(void *ctx, void *conn) {
  http_conn *c = conn;
  if (!c) return;
  curl_socket_t s = CURL_SOCKET_BAD;
  if (curl_easy_getinfo(c->easy, CURLINFO_ACTIVESOCKET, &s) == CURLE_OK &&
      s != CURL_SOCKET_BAD && !resil_x_silence_fd((int)s))
    c->easy = NULL; /* leaked: see above */
  if (c->easy) {
    conn_close(ctx, c);
    return;
  }
  free(c->hbuf);
  free(c->spans);
  free(c);
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

/* Recovery probe (resil_dep_set_probe): GET probe_url on a fresh handle
 * (a fresh connection) with the default headers, within the deadline. */
static resil_status http_probe(void *ctx, resil_deadline deadline, resil_err *err) {
  resil_http *h = ctx;
  int64_t left = resil_deadline_remaining_ms(deadline);
  if (left <= 0) return resil_err_set(err, RESIL_E_TIMEOUT, "http '%s': probe: no time", h->name);
  CURL *e = curl_easy_init();
  if (!e) return resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: no curl handle", h->name);
  char errbuf[CURL_ERROR_SIZE] = "";
  struct curl_slist *hdrs = NULL, *pin = NULL;
  resil_status st = RESIL_OK;
  for (size_t i = 0; i < h->nheaders && st == RESIL_OK; i++) {
    struct curl_slist *nl = curl_slist_append(hdrs, h->headers[i]);
    if (nl)
      hdrs = nl;
    else
      st = resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: out of memory", h->name);
  }
  long cto = (long)(left < h->connect_timeout_ms ? left : h->connect_timeout_ms);
  if (st == RESIL_OK && h->use_resil_resolve) {
    resil_addr addrs[8];
    size_t n = 0;
    resil_err re = {0};
    st = resil_resolve(h->host, h->port, resil_deadline_min(deadline, resil_deadline_in_ms(cto)),
                       addrs, 8, &n, &re);
    if (st == RESIL_OK && n == 0) st = RESIL_E_FAILURE;
    if (st != RESIL_OK) {
      st = resil_err_set(err, st == RESIL_E_TIMEOUT ? RESIL_E_TIMEOUT : RESIL_E_FAILURE,
                         "http '%s': probe: dns: %s", h->name, re.msg);
    } else {
      char line[600];
      int len = snprintf(line, sizeof line, "%s:%u:", h->host, h->port);
      for (size_t i = 0; i < n && len > 0 && (size_t)len < sizeof line - RESIL_ADDR_TEXT_MAX - 4;
           i++)
        len += snprintf(line + len, sizeof line - (size_t)len,
                        addrs[i].family == AF_INET6 ? "%s[%s]" : "%s%s", i ? "," : "",
                        addrs[i].text);
      if (!(pin = curl_slist_append(NULL, line)))
        st = resil_err_set(err, RESIL_E_NOMEM, "http '%s': probe: out of memory", h->name);
    }
    left = resil_deadline_remaining_ms(deadline);
    if (st == RESIL_OK && left <= 0)
      st = resil_err_set(err, RESIL_E_TIMEOUT, "http '%s': probe: no time after dns", h->name);
    if (cto > left) cto = (long)left;
  }
  if (st == RESIL_OK) {
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
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
    CURLcode rc = curl_easy_perform(e);
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    if ((rc == CURLE_OK || rc == CURLE_WRITE_ERROR) && code >= 100) {
      if (code >= 500 || code == 429)
        st = resil_err_set(err, RESIL_E_FAILURE, "http '%s': probe: GET %s: HTTP %ld", h->name,
                           h->probe_url, code);
      else
        resil_err_set(err, RESIL_OK, "GET %s: HTTP %ld", h->probe_url, code);
    } else {
      st = resil_err_set(err, rc == CURLE_OPERATION_TIMEDOUT ? RESIL_E_TIMEOUT : RESIL_E_FAILURE,
                         "http '%s': probe: GET %s: %s (curl %d)", h->name, h->probe_url,
                         errbuf[0] ? errbuf : curl_easy_strerror(rc), (int)rc);
    }
  }
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
    resil_err_set(err, RESIL_E_SYSTEM, "http '%s': curl_global_init failed: %s", cfg->dep.name,
                  curl_easy_strerror(curl_init_rc));
    return NULL;
  }
  resil_http *h = calloc(1, sizeof *h);
  if (!h) {
    free(host);
    goto nomem;
  }
  h->host = host;
  h->port = port;
  /* Without curl's threaded resolver a lookup could block past the
   * deadline: resolve with resil_resolve() instead. */
  h->use_resil_resolve = !numeric && (cfg->resolve_with_resil || !curl_async_dns);
  h->https = https;
  h->numeric_host = numeric;
  h->connect_timeout_ms = cfg->connect_timeout_ms;
  h->request_timeout_ms = cfg->request_timeout_ms;
  h->tls_verify = cfg->tls_verify;
  h->max_body = cfg->max_response_bytes;
  h->low_speed_bps = cfg->low_speed_bytes_per_s;
  h->low_speed_s = cfg->low_speed_time_s;
  memcpy(h->failure_statuses, cfg->failure_statuses, sizeof h->failure_statuses);
  h->nfailure = cfg->nfailure_statuses;
  if (!(h->name = resil_x_strdup(cfg->dep.name)) || !(h->base = resil_x_strdup(cfg->base_url))) goto nomem;
  for (size_t n = strlen(h->base); n > 0 && h->base[n - 1] == '/'; n--) h->base[n - 1] = '\0';
  if (cfg->deadline_header && *cfg->deadline_header) {
    size_t n = strlen(cfg->deadline_header);
    if (!(h->deadline_header = malloc(n + 3))) goto nomem;
    memcpy(h->deadline_header, cfg->deadline_header, n);
    memcpy(h->deadline_header + n, ": ", 3);
  }
  if (cfg->ca_file && !(h->ca_file = resil_x_strdup(cfg->ca_file))) goto nomem;
  if (cfg->nheaders) {
    if (!(h->headers = calloc(cfg->nheaders, sizeof *h->headers))) goto nomem;
    for (size_t i = 0; i < cfg->nheaders; i++) {
      const resil_http_header *hd = &cfg->headers[i];
      size_t n = strlen(hd->name) + strlen(hd->value) + 3;
      if (!(h->headers[i] = malloc(n))) goto nomem;
      h->nheaders++;
      /* "Name;" is curl's way to send a header with an empty value. */
      if (*hd->value)
        snprintf(h->headers[i], n, "%s: %s", hd->name, hd->value);
      else
        snprintf(h->headers[i], n, "%s;", hd->name);
    }
  }
  {
    const char *pp = cfg->probe_path ? cfg->probe_path : "";
    while (*pp == '/') pp++;
    size_t bl = strlen(h->base), pl = strlen(pp);
    if (!(h->probe_url = malloc(bl + pl + 2))) goto nomem;
    memcpy(h->probe_url, h->base, bl);
    if (pl) h->probe_url[bl++] = '/';
    memcpy(h->probe_url + bl, pp, pl + 1);
  }
  if (!(h->dep = resil_dep_new(&cfg->dep, err))) goto fail;
  resil_pool_config pc = cfg->pool;
  pc.name = h->name;
  resil_pool_connector conn = {
      .connect = conn_open, .close = conn_close, .ctx = h, .abandon = conn_abandon};
  if (!(h->pool = resil_pool_new(&pc, &conn, err))) goto fail;
  resil_dep_attach_pool(h->dep, h->pool);
  resil_dep_set_memory_bound(h->dep, resil_http_config_memory_bound(cfg));
  if (resil_dep_set_probe(h->dep, http_probe, h) != RESIL_OK) {
    resil_err_set(err, RESIL_E_SYSTEM, "http '%s': cannot start the recovery probe", h->name);
    goto fail;
  }
  return h;
nomem:
  resil_err_set(err, RESIL_E_NOMEM, "http '%s': out of memory",
                cfg->dep.name ? cfg->dep.name : "?");
fail:
  resil_http_free(h);
  return NULL;
}

/* What one pooled handle can hold besides the response: the easy handle,
 * its connection's buffers (download 16 KiB, upload 64 KiB), TLS state and
 * the header scratch space kept between calls (<= 64 KiB). */
#define HTTP_CONN_BYTES (512u * 1024u)

uint64_t resil_http_config_memory_bound(const resil_http_config *cfg) {
  if (!cfg) return 0;
  uint64_t conns = cfg->pool.max_size;
  uint64_t calls = conns < cfg->dep.limit.max_concurrent ? conns : cfg->dep.limit.max_concurrent;
  /* A call's response: the body (up to max_response_bytes; while its buffer
   * grows, the old and the new one exist at once: 2x) and the header lines
   * (also at most max_response_bytes, copied once into the response: 2x). */
  uint64_t per_call = 4 * (uint64_t)cfg->max_response_bytes;
  return resil_dep_config_memory_bound(&cfg->dep) + conns * HTTP_CONN_BYTES + calls * per_call;
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
  int sock_errno; /* errno of a socket() that failed in open_socket(), else 0 */
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

/* Resolve the base host with resil_resolve() (bounded by the connect
 * timeout and the deadline, cached for a few seconds process-wide) and make
 * a CURLOPT_RESOLVE entry "host:port:addr,addr" that pins curl to it. */
static resil_status resolve_pin(resil_http *h, call_ctx *c, resil_attempt *a, long cto,
                                struct curl_slist **out) {
  resil_addr addrs[8];
  size_t n = 0;
  resil_err e = {0};
  resil_deadline d = resil_deadline_min(a->deadline, resil_deadline_in_ms(cto));
  resil_status st = resil_resolve(h->host, h->port, d, addrs, 8, &n, &e);
  if (st == RESIL_OK && n == 0) st = RESIL_E_FAILURE;
  if (st != RESIL_OK) {
    if (st != RESIL_E_TIMEOUT && st != RESIL_E_NOMEM && st != RESIL_E_SYSTEM)
      st = RESIL_E_FAILURE;
    return resil_err_set(a->err, st, "http '%s': %s %.*s: dns: %s", h->name, c->method,
                         (int)c->url_show, c->url, e.msg);
  }
  char line[600];
  int len = snprintf(line, sizeof line, "%s:%u:", h->host, h->port);
  for (size_t i = 0; i < n && len > 0 && (size_t)len < sizeof line - RESIL_ADDR_TEXT_MAX - 4; i++)
    len += snprintf(line + len, sizeof line - (size_t)len,
                    addrs[i].family == AF_INET6 ? "%s[%s]" : "%s%s", i ? "," : "", addrs[i].text);
  *out = curl_slist_append(NULL, line);
  if (!*out) return resil_err_set(a->err, RESIL_E_NOMEM, "http '%s': out of memory", h->name);
  return RESIL_OK;
}

static resil_status attempt(void *vctx, resil_attempt *a) {
  call_ctx *c = vctx;
  resil_http *h = c->h;
  resil_http_response *r = c->resp;
  free_headers(r);
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  r->status = 0;
  r->retry_after_ms = 0;
  r->phase = RESIL_HTTP_PHASE_NONE;
  r->curl_code = 0;
  r->reused = false;
  r->attempts = a->number;

  if (resil_deadline_expired(a->deadline))
    return resil_err_set(a->err, RESIL_E_DEADLINE,
                         "http '%s': %s %.*s: deadline passed before the transfer", h->name,
                         c->method, (int)c->url_show, c->url);
  resil_pool_conn *pc = NULL;
  resil_status st = resil_pool_acquire(h->pool, a->deadline, &pc, a->err);
  if (st != RESIL_OK) return st;
  http_conn *hc = resil_pool_conn_handle(pc);
  CURL *e = hc->easy;
  /* rounded up: 0 only if expired; a drain's cutoff bounds it too */
  int64_t left = resil_deadline_remaining_ms(resil_drain_bound(a->deadline));
  if (left <= 0) {
    /* The pool's handles do no I/O to be lent (curl connects inside the
     * transfer), so this is time spent waiting for one; asked anyway, so
     * that the rule (resil/status.h) holds whatever the pool does. */
    bool io = resil_pool_conn_did_io(pc);
    resil_pool_release(h->pool, pc, RESIL_POOL_OK);
    return resil_err_set(a->err, io ? RESIL_E_TIMEOUT : RESIL_E_DEADLINE,
                         "http '%s': %s %.*s: deadline passed before the transfer", h->name,
                         c->method, (int)c->url_show, c->url);
  }
  long cto = (long)(left < h->connect_timeout_ms ? left : h->connect_timeout_ms);
  long tto = (long)(left < h->request_timeout_ms ? left : h->request_timeout_ms);

  struct curl_slist *pin = NULL;
  if (h->use_resil_resolve) {
    st = resolve_pin(h, c, a, cto, &pin);
    if (st != RESIL_OK) {
      resil_pool_release(h->pool, pc, RESIL_POOL_OK); /* no I/O was done on it */
      r->phase = RESIL_HTTP_PHASE_DNS;
      return st;
    }
    /* The lookup used some of the time. */
    left = resil_deadline_remaining_ms(resil_drain_bound(a->deadline));
    if (left <= 0) {
      curl_slist_free_all(pin);
      resil_pool_release(h->pool, pc, RESIL_POOL_OK);
      r->phase = RESIL_HTTP_PHASE_DNS;
      return resil_err_set(a->err, RESIL_E_TIMEOUT,
                           "http '%s': %s %.*s: dns: no time left after the lookup", h->name,
                           c->method, (int)c->url_show, c->url);
    }
    if (cto > left) cto = (long)left;
    if (tto > left) tto = (long)left;
    curl_easy_setopt(e, CURLOPT_RESOLVE, pin);
  }

  /* The deadline header is the only per-attempt one: append it to the
   * shared list for this transfer and unlink it afterwards. */
  struct curl_slist dl_node = {0}, *list = c->hdrs, *tail = NULL;
  char dl_line[128]; /* "name: value": name <= 64, value < 16 */
  if (h->deadline_header) {
    size_t pl = strlen(h->deadline_header);
    if (resil_grpc_timeout_format(a->deadline, dl_line + pl, sizeof dl_line - pl, NULL) ==
        RESIL_OK) {
      memcpy(dl_line, h->deadline_header, pl); /* the stored name ends with ": " */
      dl_node.data = dl_line;
      if (list) {
        for (tail = list; tail->next; tail = tail->next) {
        }
        tail->next = &dl_node;
      } else {
        list = &dl_node;
      }
    }
  }

  xfer x = {.resp = r, .hc = hc, .dep = h->dep, .max = h->max_body};
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, &x.sock_errno);
  hc->hlen = hc->nspans = 0;
  hc->errbuf[0] = '\0';
  curl_easy_setopt(e, CURLOPT_URL, c->url);
  set_method(e, c->method, c->req);
  /* curl refuses a declared Content-Length above the limit before reading
   * the body, but would refuse it for a HEAD too, which reads no body. */
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                   (curl_off_t)(strcmp(c->method, "HEAD") == 0 ? 0 : h->max_body));
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, cto);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tto);

  CURLcode rc = curl_easy_perform(e);
  /* From here the body is the caller's (or freed below): no longer held
   * for a call in flight. */
  resil_dep_memory_add(h->dep, -(int64_t)x.cap);

  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)NULL);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
  if (tail) tail->next = NULL;
  if (pin) {
    curl_easy_setopt(e, CURLOPT_RESOLVE, (struct curl_slist *)NULL);
    curl_slist_free_all(pin);
  }
  long code = 0, nconn = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn);
  r->curl_code = (int)rc;
  r->reused = nconn == 0 && code != 0;
  /* curl 7.88 ends a transfer whose connection closed inside the header
   * section (after the status line) with CURLE_OK, the status parsed and
   * no body: that is a cut response, not an answer. */
  bool cut_headers = rc == CURLE_OK && !x.headers_done;

  if (rc == CURLE_OK && !cut_headers) {
    if (!take_headers(hc, r)) x.nomem = true;
    bool has_ra = resil_http_response_header(r, "Retry-After") != NULL;
    if (has_ra) {
      curl_off_t ra = 0; /* delta-seconds or an HTTP-date, parsed by curl */
      curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &ra);
      if (ra < 0) ra = 0;
      if (ra > (curl_off_t)(UINT32_MAX / 1000u)) ra = (curl_off_t)(UINT32_MAX / 1000u);
      r->retry_after_ms = (uint32_t)ra * 1000u;
    }
    /* Nothing of the handle is touched after this: another call may have it. */
    resil_pool_release(h->pool, pc, RESIL_POOL_OK);
    r->status = code;
    if (x.nomem) return resil_err_set(a->err, RESIL_E_NOMEM, "http '%s': out of memory", h->name);
    if (code < 400) return RESIL_OK;
    if (code == 429 || (code == 503 && has_ra)) {
      a->retry_after_ms = r->retry_after_ms;
      resil_err_set(a->err, RESIL_E_OVERLOAD,
                    "http '%s': %s %.*s: HTTP %ld (overloaded; Retry-After %u ms)", h->name,
                    c->method, (int)c->url_show, c->url, code, r->retry_after_ms);
      /* Server pushback: pause every call to this dependency until the time
       * it named (capped by pushback.max_pause_ms), or for pushback.pause_ms
       * after a 429 that named none. */
      if (has_ra)
        resil_dep_pause(h->dep, r->retry_after_ms, "retry_after", a->err->msg);
      else
        resil_dep_pushback(h->dep, "overload", a->err->msg);
      return RESIL_E_OVERLOAD;
    }
    if (in_set(h, code))
      return resil_err_set(a->err, RESIL_E_FAILURE, "http '%s': %s %.*s: HTTP %ld", h->name,
                           c->method, (int)c->url_show, c->url, code);
    return resil_err_set(a->err, RESIL_E_CALLER, "http '%s': %s %.*s: HTTP %ld (caller error)",
                         h->name, c->method, (int)c->url_show, c->url, code);
  }

  /* The transfer failed. Keep the handle only when no connection was ever
   * made (a refused connect or a failed lookup leave nothing half-read). */
  r->status = 0;
  resil_http_phase ph = cut_headers ? RESIL_HTTP_PHASE_RECEIVE
                                    : phase_of(h, e, rc, c->req->body ? c->req->body_len : 0);
  r->phase = ph;
  char detail[CURL_ERROR_SIZE];
  if (cut_headers)
    snprintf(detail, sizeof detail, "connection closed inside the response headers");
  else
    snprintf(detail, sizeof detail, "%s", hc->errbuf[0] ? hc->errbuf : curl_easy_strerror(rc));
  /* Every timeout says "timed out", whatever words curl chose for the step
   * it was in (its TLS code says "SSL connection timeout"): one phrase for
   * the on-call engineer's grep. */
  if (rc == CURLE_OPERATION_TIMEDOUT && !strstr(detail, "timed out")) {
    char curl_words[CURL_ERROR_SIZE];
    snprintf(curl_words, sizeof curl_words, "%s", detail);
    snprintf(detail, sizeof detail, "timed out (%.200s)", curl_words);
  }
  hc->hlen = hc->nspans = 0;
  bool clean = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
  bool header_refused = rc == CURLE_OUT_OF_MEMORY && !x.nomem && curl_refused_header(e, &x);
  resil_pool_release(h->pool, pc, clean ? RESIL_POOL_OK : RESIL_POOL_BROKEN); /* frees hc */
  hc = NULL;
  e = NULL;
  /* No half response: whatever arrived before the failure is dropped. */
  free_headers(r);
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
  if (x.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    a->retry = 0;
    return resil_err_set(a->err, RESIL_E_FAILURE,
                         "http '%s': %s %.*s: response body exceeds max_response_bytes "
                         "(%zu bytes)",
                         h->name, c->method, (int)c->url_show, c->url, h->max_body);
  }
  if (header_refused) {
    /* The peer sent what curl will not hold: its failure, and it would send
     * the same again. */
    r->phase = RESIL_HTTP_PHASE_RECEIVE;
    a->retry = 0;
    return resil_err_set(a->err, RESIL_E_FAILURE,
                         "http '%s': %s %.*s: receive: response header too large (a header "
                         "line over curl's %d-byte limit; curl %d)",
                         h->name, c->method, (int)c->url_show, c->url, CURL_MAX_HTTP_HEADER,
                         (int)rc);
  }
  if (x.nomem || rc == CURLE_OUT_OF_MEMORY)
    return resil_err_set(a->err, RESIL_E_NOMEM, "http '%s': out of memory", h->name);
  if (rc == CURLE_COULDNT_CONNECT && x.sock_errno &&
      (x.sock_errno == EMFILE || x.sock_errno == ENFILE || x.sock_errno == ENOBUFS ||
       x.sock_errno == ENOMEM))
    return resil_err_set(a->err, RESIL_E_SYSTEM,
                         "http '%s': %s %.*s: connect: cannot create a socket: %s (a local "
                         "resource limit; not counted against the dependency)",
                         h->name, c->method, (int)c->url_show, c->url, strerror(x.sock_errno));
  resil_status out = RESIL_E_FAILURE;
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_ABORTED_BY_CALLBACK: /* on_progress: the drain's cutoff passed */
    out = RESIL_E_TIMEOUT;
    break;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
    out = RESIL_E_INVALID; /* our configuration, not the dependency */
    break;
  case CURLE_PEER_FAILED_VERIFICATION:
    a->retry = 0; /* the same certificate will fail again */
    break;
  default:
    break;
  }
  return resil_err_set(a->err, out, "http '%s': %s %.*s: %s: %s (curl %d)", h->name, c->method,
                       (int)c->url_show, c->url, resil_http_phase_name(ph), detail, (int)rc);
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
  if (*value)
    snprintf(buf, n, "%s: %s", name, value);
  else
    snprintf(buf, n, "%s;", name);
  struct curl_slist *nl = curl_slist_append(*list, buf);
  if (buf != stackbuf) free(buf);
  if (!nl) return RESIL_E_NOMEM;
  *list = nl;
  return RESIL_OK;
}

resil_status resil_http_request_do(resil_http *h, resil_deadline deadline,
                                   const resil_http_request *req, resil_http_response *resp,
                                   resil_err *err) {
  if (resp) memset(resp, 0, sizeof *resp);
  if (!h || !req || !resp)
    return resil_err_set(err, RESIL_E_INVALID, "resil_http_request_do: %s is NULL",
                         !h ? "client" : !req ? "request" : "response");
  const char *m = req->method ? req->method : "GET";
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

  /* URL: base + '/' + path (+ '?' or '&' + query). */
  const char *path = req->path ? req->path : "";
  while (*path == '/') path++;
  size_t bl = strlen(h->base), pl = strlen(path), ql = req->query ? strlen(req->query) : 0;
  call_ctx c = {.h = h, .req = req, .method = m, .resp = resp};
  c.url = malloc(bl + pl + ql + 3);
  if (!c.url) return resil_err_set(err, RESIL_E_NOMEM, "http '%s': out of memory", h->name);
  memcpy(c.url, h->base, bl);
  size_t at = bl;
  if (pl) {
    c.url[at++] = '/';
    memcpy(c.url + at, path, pl);
    at += pl;
  }
  const char *q = memchr(c.url + bl, '?', at - bl);
  c.url_show = q ? (size_t)(q - c.url) : at;
  if (ql) {
    c.url[at++] = q ? '&' : '?';
    memcpy(c.url + at, req->query, ql);
    at += ql;
  }
  c.url[at] = '\0';

  resil_status st = RESIL_OK;
  for (size_t i = 0; i < h->nheaders && st == RESIL_OK; i++) {
    struct curl_slist *nl = curl_slist_append(c.hdrs, h->headers[i]);
    if (nl)
      c.hdrs = nl;
    else
      st = RESIL_E_NOMEM;
  }
  for (size_t i = 0; i < req->nheaders && st == RESIL_OK; i++)
    st = add_line(&c.hdrs, req->headers[i].name, req->headers[i].value);
  /* Never wait for "100 Continue": it costs a round trip or a second. */
  if (st == RESIL_OK && req->body_len) {
    struct curl_slist *nl = curl_slist_append(c.hdrs, "Expect:"); /* removes curl's own */
    if (nl)
      c.hdrs = nl;
    else
      st = RESIL_E_NOMEM;
  }
  if (st != RESIL_OK) {
    curl_slist_free_all(c.hdrs);
    free(c.url);
    return resil_err_set(err, st, "http '%s': out of memory", h->name);
  }

  bool idem = !(req->flags & RESIL_HTTP_NO_RETRY) &&
              ((req->flags & RESIL_HTTP_IDEMPOTENT) || method_idempotent(m));
  st = resil_dep_call(h->dep, deadline, idem ? RESIL_CALL_IDEMPOTENT : 0, attempt, &c, err);
  curl_slist_free_all(c.hdrs);
  free(c.url);
  return st;
}

resil_status resil_http_get(resil_http *h, resil_deadline deadline, const char *path,
                            resil_http_response *resp, resil_err *err) {
  resil_http_request req = {.method = "GET", .path = path};
  return resil_http_request_do(h, deadline, &req, resp, err);
}
