/* resil-pg: PostgreSQL through a resil dependency (see include/resil/pg.h).
 *
 * Layout: configuration and conninfo handling; connecting (resolve, then
 * PQconnectStartParams + PQconnectPoll under poll()); running a statement
 * on a non-blocking connection under a deadline; the reaper (cancel +
 * close of timed-out connections, off the caller's thread); the pool
 * connector; queries through resil_dep_call(); transactions; helpers.
 *
 * Only the core's public API is used.
 */
#include "resil/pg.h"
#include "resil/adapter.h"
#include "resil/lifecycle.h"
#include "resil/credentials.h"
#include "resil/resolve.h"
#include "xutil.h"
#include "reaper.h"
#include "stmt.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
/* struct tcp_info with tcpi_bytes_received (glibc's netinet/tcp.h lacks it) */
#include <linux/tcp.h>

#define PG_NAME_MAX 64
#define PG_MAX_ADDRS 8       /* addresses tried per connect */
#define PG_ADDRS_PER_HOST 4  /* of which at most this many per host name */
#define PG_LIST_MAX 2048     /* host/hostaddr/port lists */
#define PG_MAX_KEYS 96

/* ---- Configuration ------------------------------------------------------ */

RESIL_X_PULL_KIND(pg); /* see xutil.h */

void resil_pg_config_init(resil_pg_config *cfg, const char *name) {
  if (!cfg) return;
  resil_x_config_init(cfg, sizeof *cfg, &cfg->dep, &cfg->pool, name);
  cfg->conninfo = NULL;
  cfg->connect_timeout_ms = 1000;
  cfg->query_timeout_ms = 5000;
  cfg->application_name = NULL;
  cfg->statement_timeout = true;
  cfg->tcp_user_timeout_ms = 10000;
  cfg->keepalives = true;
  cfg->keepalives_idle_s = 30;
  cfg->keepalives_interval_s = 10;
  cfg->keepalives_count = 3;
  cfg->cancel_timeout_ms = 2000;
  cfg->reaper_queue_max = 64;
  cfg->rollback_timeout_ms = 500;
  cfg->alive_bypass_ms = 500;
  cfg->max_result_bytes = RESIL_PG_DEFAULT_MAX_RESULT_BYTES;
  cfg->probe_sql = "SELECT 1";
  cfg->password_file = NULL;
  cfg->password_file_check_ms = RESIL_PASSWORD_FILE_CHECK_MS;
  cfg->hosts = NULL;
  resil_outlier_config_init(&cfg->outlier);
  cfg->password_cb = NULL;
  cfg->password_ctx = NULL;
}

static const char *opt_val(PQconninfoOption *opts, const char *key) {
  for (PQconninfoOption *o = opts; o && o->keyword; o++)
    if (strcmp(o->keyword, key) == 0) return (o->val && o->val[0]) ? o->val : NULL;
  return NULL;
}

/* ---- Conninfo parse errors, redacted ---------------------------------------
 *
 * libpq's parse errors quote pieces of the conninfo, which may be pieces of
 * the password: `password=abc"def ghi"TAIL` gives `missing "=" after
 * "ghi"TAIL" ...`, and a URI error quotes the whole URI. Guessing which
 * quoted piece is safe from quote marks cannot work (the piece may itself
 * hold quotes), so the message is rebuilt instead:
 *   - it must match one of libpq's templates below exactly, or none of it
 *     is shown (a localised or future libpq gets a generic sentence);
 *   - only the template's own text is copied; each %s piece is shown only if
 *     it looks like a keyword ([A-Za-z0-9_.-], at most 64), occurs in the
 *     part of the conninfo before anything that may hold a secret, and does
 *     NOT occur anywhere in the rest, so it cannot be a piece of the
 *     password; any other piece is "***", a %c is "*", a %d is kept.
 * The part that may hold a secret starts at the first "password" (any
 * case: also sslpassword), and in a postgresql:// URI also at the first ':'
 * after the scheme (user:password@, or a port), '@' or '%' (a
 * percent-encoded key could spell password). */
static const char *const parse_templates[] = {
    "missing \"=\" after \"%s\" in connection info string",
    "unterminated quoted string in connection info string",
    "invalid connection option \"%s\"",
    "invalid URI propagated to internal parser routine: \"%s\"",
    "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"%s\"",
    "IPv6 host address may not be empty in URI: \"%s\"",
    "unexpected character \"%c\" at position %d in URI (expected \":\" or \"/\"): \"%s\"",
    "extra key/value separator \"=\" in URI query parameter: \"%s\"",
    "missing key/value separator \"=\" in URI query parameter: \"%s\"",
    "invalid URI query parameter: \"%s\"",
    "invalid percent-encoded token: \"%s\"",
    "forbidden value %%00 in percent-encoded value: \"%s\"",
    "out of memory",
};

#define PARSE_SLOTS 4
typedef struct slot {
  char type; /* 's', 'c' or 'd' */
  const char *p;
  size_t len;
} slot;

/* Does msg[0..mlen) match template t exactly? Fills slots (at most
 * PARSE_SLOTS); a %s matches any text, a %c one byte, a %d digits. */
static bool match_template(const char *t, const char *m, size_t mlen, slot *sl, int n) {
  while (*t) {
    if (t[0] == '%' && t[1] == '%') {
      if (!mlen || *m != '%') return false;
      t += 2, m++, mlen--;
      continue;
    }
    if (t[0] == '%' && (t[1] == 's' || t[1] == 'c' || t[1] == 'd')) {
      if (n == PARSE_SLOTS) return false;
      sl[n] = (slot){t[1], m, 0};
      size_t lo = t[1] == 'c' ? 1 : t[1] == 'd' ? 1 : 0;
      size_t hi = t[1] == 'c' ? 1 : mlen;
      for (size_t l = lo; l <= hi && l <= mlen; l++) {
        if (t[1] == 'd' && !(m[l - 1] >= '0' && m[l - 1] <= '9')) break;
        sl[n].len = l;
        if (match_template(t + 2, m + l, mlen - l, sl, n + 1)) return true;
      }
      return false;
    }
    if (!mlen || *t != *m) return false;
    t++, m++, mlen--;
  }
  return mlen == 0;
}

static const char *find_ci(const char *s, size_t n, const char *needle) {
  size_t k = strlen(needle);
  for (size_t i = 0; i + k <= n; i++)
    if (strncasecmp(s + i, needle, k) == 0) return s + i;
  return NULL;
}

static bool is_uri(const char *ci) {
  return strncmp(ci, "postgresql://", 13) == 0 || strncmp(ci, "postgres://", 11) == 0;
}

/* Length of the part of ci that cannot hold a secret (see above). */
static size_t public_prefix(const char *ci) {
  size_t n = strlen(ci);
  const char *pw = find_ci(ci, n, "password");
  size_t end = pw ? (size_t)(pw - ci) : n;
  if (is_uri(ci)) {
    const char *a = strstr(ci, "://") + 3;
    size_t cut = (size_t)(a - ci) + strcspn(a, ":@%");
    if (cut < end) end = cut;
  }
  return end;
}

static bool occurs(const char *hay, size_t n, const char *p, size_t len) {
  for (size_t i = 0; i + len <= n; i++)
    if (memcmp(hay + i, p, len) == 0) return true;
  return false;
}

static bool keyword_like(const char *p, size_t len) {
  if (len == 0 || len > 64) return false;
  for (size_t i = 0; i < len; i++) {
    char c = p[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == '-'))
      return false;
  }
  return true;
}

/* libpq's parse error msg for conninfo ci, rebuilt as described above. */
static void redact_parse_error(char *dst, size_t size, const char *msg, const char *ci) {
  size_t mlen = strlen(msg);
  while (mlen && (msg[mlen - 1] == '\n' || msg[mlen - 1] == '\r')) mlen--;
  slot sl[PARSE_SLOTS];
  const char *t = NULL;
  for (size_t i = 0; i < sizeof parse_templates / sizeof parse_templates[0] && !t; i++)
    if (match_template(parse_templates[i], msg, mlen, sl, 0)) t = parse_templates[i];
  if (!t) {
    snprintf(dst, size, "libpq cannot parse it (its message is not shown: it may quote the "
                        "password)");
    return;
  }
  size_t cilen = strlen(ci), pub = public_prefix(ci);
  bool hid = false;
  size_t n = 0;
  int k = 0;
#define PUT(p, l)                                   \
  do {                                              \
    size_t l_ = (l);                                \
    if (n + l_ >= size) l_ = n + 1 < size ? size - n - 1 : 0; \
    memcpy(dst + n, (p), l_);                       \
    n += l_;                                        \
  } while (0)
  while (*t) {
    if (t[0] == '%' && t[1] == '%') {
      PUT("%", 1);
      t += 2;
    } else if (t[0] == '%') {
      const slot *s = &sl[k++];
      if (s->type == 'd') {
        PUT(s->p, s->len);
      } else if (s->type == 's' && keyword_like(s->p, s->len) && occurs(ci, pub, s->p, s->len) &&
                 !occurs(ci + pub, cilen - pub, s->p, s->len)) {
        PUT(s->p, s->len);
      } else {
        PUT(s->type == 'c' ? "*" : "***", s->type == 'c' ? 1 : 3);
        hid = true;
      }
      t += 2;
    } else {
      PUT(t, 1);
      t++;
    }
  }
  if (hid) PUT(" (the part that may hold the password is not shown)", 52);
#undef PUT
  dst[n] = '\0';
}

/* A postgresql:// URI that libpq parses but not as meant: a password with an
 * unencoded '/' makes "user:pa" the host and port, and one with an unencoded
 * '@' leaves the rest in the host; both would show pieces of the password in
 * connect errors. libpq takes the first '@' before the first '/' after the
 * scheme as the end of user:password. */
/* HOSTS, ENDPOINTS_FROM_DNS and OUTLIER_* (resil/endpoint.h). */
static void check_endpoints(const resil_pg_config *cfg, resil_problems *p) {
  resil_err he;
  if (cfg->hosts) {
    if (resil_endpoints_parse(cfg->hosts, 5432, NULL, 0, NULL, &he) != RESIL_OK)
      resil_problem(p, "hosts", "%s", he.msg);
    if (cfg->endpoints_from_dns) { /* named both ways: the loader names each variable */
      resil_problem(p, "hosts", "set together with endpoints_from_dns: use one");
      resil_problem(p, "endpoints_from_dns", "set together with hosts: use one");
    }
  }
  if ((cfg->hosts || cfg->endpoints_from_dns) &&
      resil_outlier_config_validate(&cfg->outlier, p->prefix, &he) != RESIL_OK)
    resil_problems_merge(p, he.msg);
}

/* What keeps the conninfo from following DNS (endpoints_from_dns), or NULL. */
static const char *dns_conninfo_problem(PQconninfoOption *o) {
  const char *h = opt_val(o, "host"), *port = opt_val(o, "port");
  if (!h || !*h) return "endpoints_from_dns needs the conninfo to name a host";
  if (strchr(h, ',')) return "endpoints_from_dns needs one host in the conninfo, not a list";
  if (h[0] == '/' || h[0] == '@') return "endpoints_from_dns needs a TCP host, not a socket";
  if (opt_val(o, "hostaddr")) return "endpoints_from_dns is not for a conninfo with hostaddr";
  if (port && strchr(port, ',')) return "endpoints_from_dns needs one port in the conninfo";
  return NULL;
}

static const char *uri_problem(const char *ci, PQconninfoOption *o) {
  const char *port = opt_val(o, "port");
  if (port && port[strspn(port, "0123456789,")])
    return "the port is not a number (not shown: it may be part of the password, as when a "
           "URI's password has a '/' that is not percent-encoded as %2F)";
  if (!is_uri(ci)) return NULL;
  const char *a = strstr(ci, "://") + 3;
  size_t auth = strcspn(a, "@/");
  const char *rest = a + auth + (a[auth] == '@' ? 1 : 0);
  if (strchr(rest, '@'))
    return "has an '@' that does not end user:password (a password's '@' and '/' must be "
           "percent-encoded as %40 and %2F)";
  return NULL;
}

resil_status resil_pg_config_validate(const resil_pg_config *cfg, resil_err *err) {
  if (!cfg) return resil_err_set(err, RESIL_E_INVALID, "pg: config is NULL");
  const char *name = cfg->dep.name ? cfg->dep.name : "pg";
  char prefix[PG_NAME_MAX + 8];
  snprintf(prefix, sizeof prefix, "%s: ", name);
  resil_problems p;
  resil_problems_init(&p, prefix);
  resil_err e;
  if (resil_dep_config_validate(&cfg->dep, &e) != RESIL_OK) resil_problems_merge(&p, e.msg);
  resil_pool_config pc = cfg->pool;
  if (!pc.name) pc.name = name;
  pc.connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 1;
  if (resil_pool_config_validate(&pc, prefix, &e) != RESIL_OK) resil_problems_merge(&p, e.msg);

  if (!cfg->conninfo) {
    resil_problem(&p, "conninfo", "required");
  } else {
    char *emsg = NULL;
    PQconninfoOption *o = PQconninfoParse(cfg->conninfo, &emsg);
    if (!o) {
      if (!emsg) return resil_err_set(err, RESIL_E_NOMEM, "%s: conninfo: out of memory", name);
      char red[RESIL_ERR_MSG_MAX];
      redact_parse_error(red, sizeof red, emsg, cfg->conninfo);
      PQfreemem(emsg);
      resil_problem(&p, "conninfo", "%s", red);
    } else {
      const char *pwd = opt_val(o, "password");
      if (pwd && *pwd && (cfg->password_file || cfg->password_cb))
        resil_problem(&p, cfg->password_file ? "password_file" : "password_cb",
                      "the conninfo also holds a password: give it one way only");
      const char *an = opt_val(o, "application_name");
      if (an && strlen(an) > 63)
        resil_problem(&p, "conninfo", "application_name is longer than 63 bytes");
      const char *up = uri_problem(cfg->conninfo, o);
      if (up) resil_problem(&p, "conninfo", "%s", up);
      const char *dp = cfg->endpoints_from_dns && !cfg->hosts ? dns_conninfo_problem(o) : NULL;
      if (dp) resil_problem(&p, "conninfo", "%s", dp);
      PQconninfoFree(o);
    }
  }
  resil_problems_check_range(&p, "connect_timeout_ms", cfg->connect_timeout_ms, 1, 600000);
  resil_problems_check_range(&p, "query_timeout_ms", cfg->query_timeout_ms, 1, 86400000);
  if (cfg->application_name && strlen(cfg->application_name) > 63)
    resil_problem(&p, "application_name", "longer than 63 bytes");
  resil_problems_check_range(&p, "tcp_user_timeout_ms", cfg->tcp_user_timeout_ms, 0, 3600000);
  if (cfg->keepalives) {
    resil_problems_check_range(&p, "keepalives_idle_s", cfg->keepalives_idle_s, 1, 86400);
    resil_problems_check_range(&p, "keepalives_interval_s", cfg->keepalives_interval_s, 1, 86400);
    resil_problems_check_range(&p, "keepalives_count", cfg->keepalives_count, 1, 100);
  }
  resil_problems_check_range(&p, "cancel_timeout_ms", cfg->cancel_timeout_ms, 1, 60000);
  resil_problems_check_range(&p, "reaper_queue_max", cfg->reaper_queue_max, 1, 100000);
  resil_problems_check_range(&p, "rollback_timeout_ms", cfg->rollback_timeout_ms, 1, 60000);
  resil_problems_check_range(&p, "alive_bypass_ms", cfg->alive_bypass_ms, 0, 60000);
  resil_problems_check_range(&p, "max_result_bytes", cfg->max_result_bytes,
                             RESIL_PG_MIN_MAX_RESULT_BYTES, RESIL_PG_MAX_MAX_RESULT_BYTES);
  if (!cfg->probe_sql || !*cfg->probe_sql)
    resil_problem(&p, "probe_sql", "must not be empty (default \"SELECT 1\")");
  if (cfg->password_file) {
    if (cfg->password_cb)
      resil_problem(&p, "password_file", "set together with password_cb: use one");
    resil_err fe;
    if (resil_password_file_check(cfg->password_file, &fe) != RESIL_OK)
      resil_problem(&p, "password_file", "%s", fe.msg);
  }
  resil_problems_check_range(&p, "password_file_check_ms", cfg->password_file_check_ms, 100,
                             3600000);
  check_endpoints(cfg, &p);
  return resil_problems_finish(&p, err);
}

/* One connection besides its results: the PGconn with libpq's input and
 * output buffers at their usual sizes, and TLS state. */
#define PG_CONN_BYTES (256u * 1024u)

uint64_t resil_pg_config_memory_bound(const resil_pg_config *cfg) {
  if (!cfg) return 0;
  /* A statement is stopped within one read of max_result_bytes received
   * (see "Bounding what one statement receives", stmt.c): libpq's input
   * buffer holds up to that (1x, plus one read) and the PGresult it builds
   * is up to ~3x the protocol bytes for many narrow rows: 4x. */
  return resil_x_memory_bound(&cfg->dep, cfg->pool.max_size, PG_CONN_BYTES,
                              4 * (uint64_t)cfg->max_result_bytes);
}

/* ---- The adapter object ------------------------------------------------- */

struct resil_pg {
  char name[PG_NAME_MAX];
  resil_pg_config cfg;  /* strings below are owned copies */
  char *conninfo;
  PQconninfoOption *opts; /* parsed conninfo */
  /* Keywords passed to every connect except host/hostaddr/port, which are
   * computed per connect. NULL-terminated. */
  const char *keys[PG_MAX_KEYS];
  const char *vals[PG_MAX_KEYS];
  size_t nkeys;
  const char *host, *hostaddr, *port; /* from the conninfo, or NULL */
  char app_name[PG_NAME_MAX];
  char tcp_ut[24], ka_idle[16], ka_int[16], ka_cnt[16];
  char *options; /* options with statement_timeout appended, or NULL */
  char *probe_sql; /* owned copy of cfg.probe_sql */
  resil_dep *dep;
  resil_pool *pool;
  pg_reaper rp;
  pg_stmt_env env; /* what its statements need (stmt.h) */
  resil_password_file *pwfile; /* cfg.password_file, or NULL */
  _Atomic uint64_t connects_ok, connects_failed, connects_timed_out, timeouts, rollbacks,
      broken, failovers, read_only, replays, auth_failures;
};

/* A pooled connection. pq is NULL once handed to the reaper. */
#define PG_PREPARED_MAX 256 /* prepared statements remembered per connection */

typedef struct pg_conn {
  PGconn *pq;
  uint64_t returned_ns; /* when it last came back to the pool clean (0 never) */
  uint64_t rx_mark;     /* bytes received when its last statement ended (rx_meter) or 0 */
  char **prepared; /* names prepared on this session */
  size_t nprepared;
} pg_conn;

static bool conn_has_prepared(const pg_conn *w, const char *name) {
  for (size_t i = 0; i < w->nprepared; i++)
    if (strcmp(w->prepared[i], name) == 0) return true;
  return false;
}

static void conn_add_prepared(pg_conn *w, const char *name) {
  if (w->nprepared >= PG_PREPARED_MAX || conn_has_prepared(w, name)) return;
  if (w->nprepared % 16 == 0) {
    char **p = realloc(w->prepared, (w->nprepared + 16) * sizeof *p);
    if (!p) return;
    w->prepared = p;
  }
  char *d = resil_x_strdup(name);
  if (d) w->prepared[w->nprepared++] = d;
}

static void conn_drop_prepared(pg_conn *w, const char *name) {
  for (size_t i = 0; i < w->nprepared; i++)
    if (strcmp(w->prepared[i], name) == 0) {
      free(w->prepared[i]);
      w->prepared[i] = w->prepared[--w->nprepared];
      return;
    }
}

resil_dep *resil_pg_dep(resil_pg *pg) { return pg ? pg->dep : NULL; }
resil_pool *resil_pg_pool(resil_pg *pg) { return pg ? pg->pool : NULL; }

void resil_pg_get_stats(const resil_pg *pg, resil_pg_stats *out) {
  if (!resil_x_stats_begin(out, sizeof *out, pg)) return;
  resil_pg *m = (resil_pg *)(uintptr_t)pg;
#define RD(f) out->f = atomic_load_explicit(&m->f, memory_order_relaxed)
  RD(connects_ok);
  RD(connects_failed);
  RD(connects_timed_out);
  RD(timeouts);
#define RDR(f) out->f = atomic_load_explicit(&m->rp.n.f, memory_order_relaxed)
  RDR(reaped);
  RDR(cancels_sent);
  RDR(cancels_failed);
  RDR(cancels_abandoned);
  RDR(cancels_skipped);
#undef RDR
  RD(rollbacks);
  RD(broken);
  RD(failovers);
  RD(read_only);
  RD(replays);
  RD(auth_failures);
#undef RD
  if (pg->pwfile) {
    resil_password_file_stats ps;
    resil_password_file_get_stats(pg->pwfile, &ps);
    out->password_changes = ps.changes;
    out->password_errors = ps.errors;
  }
}

/* Hand a connection whose statement is still running to the reaper
 * (reaper.h): cancelled and closed off this thread. */
static void reap(resil_pg *pg, PGconn *conn) {
  resil_x_bump(&pg->timeouts);
  pg_reaper_hand(&pg->rp, conn);
}

/* ---- Connecting --------------------------------------------------------- */

/* Copy the next comma-separated item of *s into buf; advance *s. */
static void next_item(const char **s, char *buf, size_t size) {
  const char *p = *s, *c = strchr(p, ',');
  size_t n = c ? (size_t)(c - p) : strlen(p);
  if (n >= size) n = size - 1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  *s = c ? c + 1 : p + strlen(p);
}

static size_t count_items(const char *s) {
  size_t n = 1;
  for (; *s; s++)
    if (*s == ',') n++;
  return n;
}

/* Append s to a comma-separated list; first says whether it is the first
 * entry (entries may be empty, so the length cannot tell). */
static bool append(char *buf, size_t size, size_t *len, const char *s, bool first) {
  size_t n = strlen(s);
  if (*len + n + 2 > size) return false;
  if (!first) buf[(*len)++] = ',';
  memcpy(buf + *len, s, n + 1);
  *len += n;
  return true;
}

/* Build the host/hostaddr/port lists: every host name resolved under
 * deadline (up to PG_ADDRS_PER_HOST addresses each, each a separate entry
 * so libpq tries them in turn); socket paths kept with an empty hostaddr. */
static resil_status build_hosts(resil_pg *pg, resil_deadline deadline, char *hosts,
                                char *addrs, char *ports, bool *per_port, resil_err *err) {
  size_t hl = 0, al = 0, pl = 0, entries = 0;
  hosts[0] = addrs[0] = ports[0] = '\0';
  size_t nh = count_items(pg->host);
  size_t np = pg->port ? count_items(pg->port) : 0;
  *per_port = np > 1 && np == nh;
  const char *hs = pg->host, *ps = pg->port ? pg->port : "";
  resil_status last = RESIL_OK;
  resil_err last_err;
  last_err.msg[0] = '\0';
  for (size_t i = 0; i < nh; i++) {
    char h[256], pt[32];
    next_item(&hs, h, sizeof h);
    pt[0] = '\0';
    if (*per_port) next_item(&ps, pt, sizeof pt);
    if (h[0] == '\0' || h[0] == '/' || h[0] == '@') {
      if (entries >= PG_MAX_ADDRS) break;
      bool first = entries == 0;
      if (!append(hosts, PG_LIST_MAX, &hl, h, first) ||
          !append(addrs, PG_LIST_MAX, &al, "", first) ||
          (*per_port && !append(ports, PG_LIST_MAX, &pl, pt, first)))
        return resil_err_set(err, RESIL_E_INVALID, "host list too long");
      entries++;
      continue;
    }
    unsigned long portnum = 5432;
    const char *pstr = *per_port ? pt : (pg->port ? pg->port : NULL);
    if (pstr && *pstr) {
      char *end;
      portnum = strtoul(pstr, &end, 10);
      if (*end || portnum == 0 || portnum > 65535) portnum = 5432;
    }
    resil_addr a[PG_ADDRS_PER_HOST];
    size_t n = 0;
    resil_err e;
    resil_status st = resil_resolve(h, (uint16_t)portnum, deadline, a, PG_ADDRS_PER_HOST, &n, &e);
    if (st != RESIL_OK) {
      last = st;
      last_err = e;
      continue;
    }
    for (size_t k = 0; k < n && entries < PG_MAX_ADDRS; k++, entries++) {
      bool first = entries == 0;
      if (!append(hosts, PG_LIST_MAX, &hl, h, first) ||
          !append(addrs, PG_LIST_MAX, &al, a[k].text, first) ||
          (*per_port && !append(ports, PG_LIST_MAX, &pl, pt, first)))
        return resil_err_set(err, RESIL_E_INVALID, "host list too long");
    }
  }
  if (entries == 0) {
    if (last == RESIL_OK) last = RESIL_E_FAILURE;
    if (last != RESIL_E_TIMEOUT && last != RESIL_E_SYSTEM && last != RESIL_E_NOMEM)
      last = RESIL_E_FAILURE;
    return resil_err_set(err, last, "resolving %s: %s", pg->host,
                         last_err.msg[0] ? last_err.msg : "no address");
  }
  return RESIL_OK;
}

/* Set verbose error messages around the start-up phase so a FATAL sent by
 * the server (53300, 57P03, 28P01...) carries its SQLSTATE. */
static resil_status connect_error(resil_pg *pg, PGconn *c, resil_err *err) {
  char msg[RESIL_ERR_MSG_MAX - 80];
  pg_flatten(msg, sizeof msg, PQerrorMessage(c));
  /* libpq could not even make a socket (EMFILE, ENFILE...): this process's
   * limit, not the server's failure. libpq's own words, not the server's
   * (server errors come as "FATAL:  <SQLSTATE>: ..."). */
  if (strstr(msg, "could not create socket"))
    return resil_err_set(err, RESIL_E_SYSTEM,
                         "%s (a local resource limit; not counted against the dependency)", msg);
  /* 53300 too_many_connections: the server's connection slots are full.
   * Pause every call for pushback.pause_ms (a no-op while it is 0). */
  if (strstr(msg, "53300")) resil_dep_pushback(pg->dep, "too_many_connections", msg);
  return resil_err_set(err, RESIL_E_FAILURE, "%s",
                       msg[0] ? msg : "connection failed");
}

/* Notices and warnings (e.g. "relation already exists, skipping") are
 * dropped: a library must not write to stderr. */
static void quiet_notices(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* ---- Failover ------------------------------------------------------------
 * A connection that shows the endpoint moved (25006 read-only, 57P01/57P02
 * shutdown, a reset or refused connection after good ones) makes every
 * host name be resolved afresh (the cached answer is dropped whatever its
 * TTL) and ends the pool's generation `gen`: idle connections close at
 * once, borrowed ones when they come back. Invalidate first: a connect that
 * starts between the two then resolves afresh (and, being of the old
 * generation, is closed on return), never the other way round. */
static void failover(resil_pg *pg, uint64_t gen) {
  if (pg->host && !pg->hostaddr) {
    const char *hs = pg->host;
    for (size_t i = 0, nh = count_items(pg->host); i < nh; i++) {
      char h[256];
      next_item(&hs, h, sizeof h);
      if (h[0] && h[0] != '/' && h[0] != '@') resil_resolve_invalidate(h);
    }
  }
  if (pg->pool && resil_pool_evict(pg->pool, gen)) resil_x_bump(&pg->failovers);
}

/* A connect error that, after good connects, means the server at that
 * address went away or is being demoted: refused, reset, closed during
 * start-up, shutting down (57P01, 57P03). */
static bool connect_error_moved(const char *msg) {
  return strstr(msg, "Connection refused") || strstr(msg, "Connection reset") ||
         strstr(msg, "server closed the connection unexpectedly") || strstr(msg, "57P01") ||
         strstr(msg, "57P02") || strstr(msg, "57P03");
}

/* The password for a new connection from password_cb or password_file
 * into buf; false (err set, never with the secret) if none. */
static bool get_password(resil_pg *pg, unsigned flags, char *buf, resil_err *err) {
  if (pg->cfg.password_cb) {
    buf[0] = '\0';
    if (pg->cfg.password_cb(pg->cfg.password_ctx, flags, buf, RESIL_PASSWORD_MAX) != 0 ||
        !memchr(buf, '\0', RESIL_PASSWORD_MAX)) {
      explicit_bzero(buf, RESIL_PASSWORD_MAX);
      resil_err_set(err, RESIL_E_FAILURE, "password callback failed");
      return false;
    }
    return true;
  }
  return resil_password_file_get(pg->pwfile, flags, buf, RESIL_PASSWORD_MAX, NULL, err) ==
         RESIL_OK;
}

static resil_status pg_connect_once(resil_pg *pg, resil_deadline deadline, const char *password,
                                    void **out, resil_err *err);

/* The server refused password pw (28P01): ask the callback or the file
 * again at once and, if the answer changed (rotated), connect once more
 * within the same deadline. */
static resil_status connect_rotated(resil_pg *pg, resil_deadline deadline, const char *pw,
                                    void **out, resil_err *err) {
  resil_x_bump(&pg->auth_failures);
  char pw2[RESIL_PASSWORD_MAX];
  resil_err e2;
  resil_status st = RESIL_E_FAILURE;
  if (get_password(pg, RESIL_PASSWORD_AUTH_FAILED, pw2, &e2) && strcmp(pw, pw2) != 0 &&
      !resil_deadline_expired(deadline)) {
    st = pg_connect_once(pg, deadline, pw2, out, err);
    if (st == RESIL_E_FAILURE && err && strstr(err->msg, "28P01")) resil_x_bump(&pg->auth_failures);
  }
  explicit_bzero(pw2, sizeof pw2);
  return st;
}

/* The pool's connector (and the probe's): one connect, and when the server
 * refused the password (28P01) and the password comes from a file or a
 * callback, ask again at once and, if the answer changed (rotated), connect
 * once more within the same deadline. A reset or refusal after good
 * connects is a failover sign (see failover()). */
static resil_status pg_connect(void *ctx, resil_deadline deadline, void **out, resil_err *err) {
  resil_pg *pg = ctx;
  uint64_t gen = pg->pool ? resil_pool_generation(pg->pool) : 0;
  bool had_good = atomic_load_explicit(&pg->connects_ok, memory_order_relaxed) > 0;
  bool rotating = pg->cfg.password_cb || pg->pwfile;
  char pw[RESIL_PASSWORD_MAX];
  if (rotating && !get_password(pg, 0, pw, err)) { /* leaves no secret in pw */
    resil_x_bump(&pg->connects_failed);
    return RESIL_E_FAILURE;
  }
  resil_status st = pg_connect_once(pg, deadline, rotating ? pw : NULL, out, err);
  if (st == RESIL_E_FAILURE && rotating && err && strstr(err->msg, "28P01"))
    st = connect_rotated(pg, deadline, pw, out, err);
  if (rotating) explicit_bzero(pw, sizeof pw);
  if (st == RESIL_E_FAILURE && had_good && err && connect_error_moved(err->msg))
    failover(pg, gen);
  return st;
}

/* A connect that failed with st, counted: timed out, failed, or neither
 * (this process's limit: RESIL_E_SYSTEM). */
static void count_connect_failure(resil_pg *pg, resil_status st) {
  if (st == RESIL_E_TIMEOUT)
    resil_x_bump(&pg->connects_timed_out);
  else if (st != RESIL_E_SYSTEM)
    resil_x_bump(&pg->connects_failed);
}

/* The connect attempt did not finish by the deadline: name the address
 * that did not answer (libpq may try several). */
static resil_status connect_timed_out(PGconn *c, resil_err *err) {
  const char *addr = PQhostaddr(c), *port = PQport(c);
  if (!addr || !*addr) addr = PQhost(c);
  if (!addr) addr = "";
  if (!port) port = "";
  bool v6 = strchr(addr, ':') != NULL;
  return resil_err_set(err, RESIL_E_TIMEOUT, "%s%s%s%s%s: timed out", v6 ? "[" : "", addr,
                       v6 ? "]" : "", *port ? ":" : "", port);
}

/* Drive libpq's connect state machine on c (started) under deadline, then
 * make the connection non-blocking. The caller closes c on failure. */
static resil_status connect_poll(resil_pg *pg, PGconn *c, resil_deadline deadline,
                                 resil_err *err) {
  PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
  PQsetNoticeProcessor(c, quiet_notices, NULL);
  if (PQstatus(c) == CONNECTION_BAD) return connect_error(pg, c, err);
  PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
  while (ps != PGRES_POLLING_OK) {
    if (ps == PGRES_POLLING_FAILED) return connect_error(pg, c, err);
    /* The socket can change between polls (libpq tries each address and
     * retries without SSL on its own): ask every time. */
    short ev = ps == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    int w = resil_x_wait_fd(PQsocket(c), ev, deadline);
    if (w == 0) return connect_timed_out(c, err);
    if (w < 0) return resil_err_set(err, RESIL_E_FAILURE, "poll: %s", strerror(errno));
    ps = PQconnectPoll(c);
  }
  PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
  if (PQsetnonblocking(c, 1) != 0) return connect_error(pg, c, err);
  return RESIL_OK;
}

/* The address a connect of a several-address pool goes to (pg_connect_to),
 * NULL for the conninfo's hosts. */
static _Thread_local const resil_endpoint *cur_ep;

/* The conninfo's host, hostaddr and port replaced by cur_ep's: keys and
 * vals from n on; addr and port are the caller's buffers. */
static resil_status ep_keys(resil_pg *pg, resil_deadline deadline, const char **keys,
                            const char **vals, size_t *n, char *addr, char *port,
                            resil_err *err) {
  resil_addr a;
  size_t na = 0;
  resil_err e;
  e.msg[0] = '\0';
  resil_status st = resil_resolve(cur_ep->host, (uint16_t)cur_ep->port, deadline, &a, 1, &na, &e);
  if (st == RESIL_OK && na == 0) st = RESIL_E_FAILURE;
  if (st != RESIL_OK) {
    if (st != RESIL_E_NOMEM) count_connect_failure(pg, st);
    if (st != RESIL_E_TIMEOUT && st != RESIL_E_SYSTEM && st != RESIL_E_NOMEM) st = RESIL_E_FAILURE;
    return resil_err_set(err, st, "resolving %s: %s", cur_ep->host,
                         e.msg[0] ? e.msg : "no address");
  }
  memcpy(addr, a.text, sizeof a.text);
  snprintf(port, 8, "%u", (unsigned)cur_ep->port);
  keys[*n] = "host"; /* from DNS: the name (TLS verification), hostaddr the address */
  vals[(*n)++] = pg->cfg.endpoints_from_dns && pg->host ? pg->host : cur_ep->host;
  keys[*n] = "hostaddr";
  vals[(*n)++] = addr;
  keys[*n] = "port";
  vals[(*n)++] = port;
  return RESIL_OK;
}

/* The connector of a several-address pool (resil_pool_new_endpoints). */
static resil_status pg_connect_to(void *ctx, const resil_endpoint *ep, resil_deadline deadline,
                                  void **out, resil_err *err) {
  cur_ep = ep;
  resil_status st = pg_connect(ctx, deadline, out, err);
  cur_ep = NULL;
  return st;
}

static resil_status pg_connect_once(resil_pg *pg, resil_deadline deadline, const char *password,
                                    void **out, resil_err *err) {
  const char *keys[PG_MAX_KEYS + 5], *vals[PG_MAX_KEYS + 5];
  size_t n = 0;
  for (size_t i = 0; i < pg->nkeys; i++) {
    keys[n] = pg->keys[i];
    vals[n++] = pg->vals[i];
  }
  if (password) {
    keys[n] = "password";
    vals[n++] = password;
  }
  char hosts[PG_LIST_MAX], addrs[PG_LIST_MAX], ports[PG_LIST_MAX];
  if (cur_ep) {
    resil_status st = ep_keys(pg, deadline, keys, vals, &n, addrs, ports, err);
    if (st != RESIL_OK) return st;
  } else if (pg->host && !pg->hostaddr) {
    bool per_port = false;
    resil_status st = build_hosts(pg, deadline, hosts, addrs, ports, &per_port, err);
    if (st != RESIL_OK) {
      if (st == RESIL_E_TIMEOUT)
        resil_x_bump(&pg->connects_timed_out);
      else if (st != RESIL_E_SYSTEM && st != RESIL_E_NOMEM)
        resil_x_bump(&pg->connects_failed);
      return st;
    }
    keys[n] = "host";
    vals[n++] = hosts;
    keys[n] = "hostaddr";
    vals[n++] = addrs;
    if (per_port || pg->port) {
      keys[n] = "port";
      vals[n++] = per_port ? ports : pg->port;
    }
  } else {
    if (pg->host) {
      keys[n] = "host";
      vals[n++] = pg->host;
    }
    if (pg->hostaddr) {
      keys[n] = "hostaddr";
      vals[n++] = pg->hostaddr;
    }
    if (pg->port) {
      keys[n] = "port";
      vals[n++] = pg->port;
    }
  }
  keys[n] = NULL;
  vals[n] = NULL;

  PGconn *c = NULL;
  pg_conn *w = NULL;
  resil_status st;
  if (resil_deadline_expired(deadline))
    st = resil_err_set(err, RESIL_E_TIMEOUT, "deadline passed while resolving");
  else if (!(c = PQconnectStartParams(keys, vals, 0)))
    st = resil_err_set(err, RESIL_E_NOMEM, "out of memory");
  else
    st = connect_poll(pg, c, deadline, err);
  if (st == RESIL_OK && !(w = calloc(1, sizeof *w)))
    st = resil_err_set(err, RESIL_E_NOMEM, "out of memory");
  if (st != RESIL_OK) { /* the one cleanup path */
    if (c) PQfinish(c);
    count_connect_failure(pg, st);
    return st;
  }
  w->pq = c;
  resil_x_bump(&pg->connects_ok);
  *out = w;
  return RESIL_OK;
}

static void pg_close(void *ctx, void *conn) {
  (void)ctx;
  pg_conn *w = conn;
  if (!w) return;
  if (w->pq) PQfinish(w->pq); /* non-blocking connection: never waits */
  for (size_t i = 0; i < w->nprepared; i++) free(w->prepared[i]);
  free(w->prepared);
  free(w);
}

/* A child of fork frees the parent's connection. PQfinish() would send a
 * Terminate message (and, over TLS, a close_notify), ending the parent's
 * session: the socket is pointed at /dev/null first so both go nowhere
 * (libpq's send() fails with ENOTSOCK). If that cannot be done the PGconn
 * is left allocated rather than risk it. */
static void pg_abandon(void *ctx, void *conn) {
  pg_conn *w = conn;
  if (!w) return;
  if (w->pq) {
    int fd = PQsocket(w->pq);
    if (fd >= 0 && !resil_x_silence_fd(fd))
      w->pq = NULL; /* leaked: see above */
  }
  pg_close(ctx, w);
}

/* ---- Giving connections back ------------------------------------------ */

/* Give a borrowed connection back according to d. A connection left
 * inside a transaction is rolled back first (bounded by deadline and
 * rollback_timeout_ms), or closed. */
static void give_back(resil_pg *pg, resil_pool_conn *pc, disp d, resil_deadline deadline) {
  pg_conn *w = resil_pool_conn_handle(pc);
  if (d == DISP_MOVED) {
    failover(pg, resil_pool_conn_generation(pc));
    d = DISP_BROKEN;
  }
  if (d == DISP_REAP) {
    PGconn *c = w->pq;
    w->pq = NULL;
    if (c) reap(pg, c);
    resil_pool_release(pg->pool, pc, RESIL_POOL_BROKEN);
    return;
  }
  if (d == DISP_KEEP && (!w->pq || PQstatus(w->pq) != CONNECTION_OK)) d = DISP_BROKEN;
  if (d == DISP_KEEP) {
    PGTransactionStatusType ts = PQtransactionStatus(w->pq);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
      resil_deadline rd = resil_deadline_bound(deadline, pg->cfg.rollback_timeout_ms);
      pg_stmt rs = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = rd, .sql = "ROLLBACK", .phase = "rollback",
                    .d = DISP_BROKEN};
      resil_status st = RESIL_E_DEADLINE;
      if (!resil_deadline_expired(rd)) st = pg_stmt_simple(&pg->env, &rs, NULL, 0, NULL);
      if (st == RESIL_OK && rs.d == DISP_KEEP && PQtransactionStatus(w->pq) == PQTRANS_IDLE) {
        resil_x_bump(&pg->rollbacks);
      } else if (rs.d == DISP_REAP) {
        PGconn *c = w->pq;
        w->pq = NULL;
        reap(pg, c);
        resil_pool_release(pg->pool, pc, RESIL_POOL_BROKEN);
        return;
      } else {
        d = DISP_BROKEN;
      }
    } else if (ts != PQTRANS_IDLE) {
      d = DISP_BROKEN;
    }
  }
  if (d == DISP_BROKEN) resil_x_bump(&pg->broken);
  if (d == DISP_KEEP) w->returned_ns = resil_now_ns();
  resil_pool_release(pg->pool, pc, d == DISP_KEEP ? RESIL_POOL_OK : RESIL_POOL_BROKEN);
}

/* Without any round trip: is an idle connection still open? A server
 * that shut down or restarted sent a FATAL (or WARNING) and closed the
 * socket; reading that marks the connection bad. One poll() when nothing
 * is pending. */
static bool conn_quick_ok(pg_conn *w, uint64_t bypass_ns) {
  if (!w || !w->pq || PQstatus(w->pq) != CONNECTION_OK) return false;
  if (PQtransactionStatus(w->pq) != PQTRANS_IDLE) return false;
  if (w->returned_ns && resil_now_ns() - w->returned_ns < bypass_ns) return true;
  for (int i = 0; i < 4; i++) {
    struct pollfd pfd = {.fd = PQsocket(w->pq), .events = POLLIN, .revents = 0};
    int r = poll(&pfd, 1, 0);
    if (r == 0) return true;
    if (r < 0) return errno == EINTR;
    /* Unsolicited data or a hang-up: a notice or notification is fine; EOF
     * or an error marks the connection bad. */
    if (!PQconsumeInput(w->pq) || PQstatus(w->pq) != CONNECTION_OK) return false;
    w->rx_mark = 0; /* read outside a statement: the next one measures its start */
    PGnotify *nt;
    while ((nt = PQnotifies(w->pq)) != NULL) PQfreemem(nt);
  }
  return PQstatus(w->pq) == CONNECTION_OK;
}

/* Borrow a connection that passes conn_quick_ok(): dead ones left by a
 * server restart are closed here and another is taken (at most max_size
 * times), so callers do not pay for them. */
static resil_status acquire_live(resil_pg *pg, resil_deadline d, resil_pool_conn **pc,
                                 resil_err *err) {
  for (uint32_t i = 0;; i++) {
    resil_status st = resil_pool_acquire(pg->pool, d, pc, err);
    if (st != RESIL_OK) return st;
    if (i >= pg->cfg.pool.max_size ||
        conn_quick_ok(resil_pool_conn_handle(*pc),
                      (uint64_t)pg->cfg.alive_bypass_ms * 1000000u))
      return RESIL_OK;
    resil_x_bump(&pg->broken);
    /* The server closed an idle connection: restarted, shut down or failed
     * over. Close the others now, not one by one as they are borrowed. */
    failover(pg, resil_pool_conn_generation(*pc));
    resil_pool_release(pg->pool, *pc, RESIL_POOL_BROKEN);
    *pc = NULL;
  }
}

/* Pool validation: conn_quick_ok(), then an empty query must come back in
 * time (this is what notices a silent peer). */
static bool pg_validate(void *ctx, void *conn, resil_deadline deadline) {
  resil_pg *pg = ctx;
  pg_conn *w = conn;
  if (!conn_quick_ok(w, 0)) {
    failover(pg, resil_pool_generation(pg->pool)); /* closed by the server: see acquire_live */
    return false;
  }
  pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = deadline, .sql = "", .phase = "validate"};
  resil_status st = pg_stmt_simple(&pg->env, &s, NULL, 0, NULL);
  disp d = s.d;
  if (d == DISP_MOVED) /* only current-generation connections are validated */
    failover(pg, resil_pool_generation(pg->pool));
  if (d == DISP_REAP) {
    /* Statement still running at the deadline: let the reaper cancel and
     * close it; the pool then closes the empty wrapper. */
    PGconn *c = w->pq;
    w->pq = NULL;
    reap(pg, c);
    return false;
  }
  return st == RESIL_OK && d == DISP_KEEP;
}

/* Recovery probe (resil_dep_set_probe): a FRESH connection (never a
 * pooled one), then probe_sql, all under the probe's deadline. */
static resil_status pg_probe(void *ctx, resil_deadline deadline, resil_err *err) {
  resil_pg *pg = ctx;
  void *conn = NULL;
  resil_err ce;
  memset(&ce, 0, sizeof ce);
  cur_ep = resil_pool_endpoint_next(pg->pool); /* several addresses: the next one in */
  resil_status st =
      pg_connect(pg, resil_deadline_bound(deadline, pg->cfg.connect_timeout_ms), &conn, &ce);
  cur_ep = NULL;
  if (st != RESIL_OK)
    return resil_err_set(err, st, "%s: probe: connect: %s", pg->name,
                         ce.msg[0] ? ce.msg : resil_strerror(st));
  pg_conn *w = conn;
  pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = deadline, .sql = pg->probe_sql, .phase = "probe"};
  st = pg_stmt_simple(&pg->env, &s, NULL, 0, err);
  if (s.d == DISP_REAP) { /* still running at the deadline: cancel and close it aside */
    PGconn *c = w->pq;
    w->pq = NULL;
    reap(pg, c);
  }
  pg_close(pg, w);
  return st;
}

/* The deadline was found spent right after borrowing pc, before anything
 * was sent. If that acquire connected (start-up, TLS, authentication) or
 * validated, the dependency's slowness spent it: RESIL_E_TIMEOUT, counted
 * by the breaker. Otherwise the time went to the caller or to waiting for
 * a connection: RESIL_E_DEADLINE, a local rejection. */
static resil_status spent_before_sending(resil_pg *pg, const resil_pool_conn *pc,
                                         const char *phase, resil_err *err) {
  if (resil_pool_conn_did_io(pc))
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "%s: %s: timed out: connecting or validating the connection used the "
                         "whole deadline, nothing was sent",
                         pg->name, phase);
  return resil_err_set(err, RESIL_E_DEADLINE,
                       "%s: %s: deadline passed before sending (waiting for a connection)",
                       pg->name, phase);
}

/* ---- Queries ------------------------------------------------------------ */

/* One statement through the dependency: a plain one (name NULL) or a
 * prepared one, prepared on the borrowed connection first if needed. */
typedef struct query_ctx {
  resil_pg *pg;
  const char *name; /* prepared statement name, or NULL */
  const resil_pg_query_args *q;
  PGresult *res;
} query_ctx;

static resil_status query_attempt_once(query_ctx *x, resil_attempt *a, disp *dout);

/* Prepare x->name on w unless it already is, running s (its inputs set for
 * the query) as the PREPARE; a failure's result goes to x->res. */
static resil_status ensure_prepared(query_ctx *x, pg_conn *w, pg_stmt *s, resil_err *err) {
  if (conn_has_prepared(w, x->name)) return RESIL_OK;
  s->kind = SEND_PREPARE;
  s->phase = "prepare";
  resil_status st = pg_stmt_run(&x->pg->env, s, err);
  const char *state = resil_pg_sqlstate(s->res);
  if (st == RESIL_OK || (state && strcmp(state, "42P05") == 0)) { /* already there */
    conn_add_prepared(w, x->name);
    PQclear(s->res);
    s->res = NULL;
    return RESIL_OK;
  }
  x->res = s->res;
  s->res = NULL;
  return st;
}

/* One attempt. A statement refused with 25006 (the server is read-only: a
 * writer demoted by a failover) was not executed, so once the endpoint's
 * connections are evicted and its name re-resolved it is sent again at
 * once, on a fresh connection, within the same attempt and deadline - once.
 * Then a failover that DNS already followed costs the caller nothing, and
 * the breaker sees one call. */
static resil_status query_attempt(void *vctx, resil_attempt *a) {
  query_ctx *x = vctx;
  resil_pg *pg = x->pg;
  resil_status st;
  for (int replay = 0;; replay++) {
    disp d = DISP_KEEP;
    st = query_attempt_once(x, a, &d);
    const char *state = resil_pg_sqlstate(x->res);
    if (replay || d != DISP_MOVED || !state || strcmp(state, "25006") != 0 ||
        resil_deadline_expired(a->deadline))
      return st;
    resil_x_bump(&pg->replays);
  }
}

static resil_status query_attempt_once(query_ctx *x, resil_attempt *a, disp *dout) {
  resil_pg *pg = x->pg;
  PQclear(x->res);
  x->res = NULL;
  resil_pool_conn *pc = NULL;
  resil_status st = acquire_live(pg, a->deadline, &pc, a->err);
  if (st != RESIL_OK) return st;
  pg_conn *w = resil_pool_conn_handle(pc);
  resil_deadline qd = resil_deadline_bound(a->deadline, pg->cfg.query_timeout_ms);
  if (resil_deadline_expired(qd)) {
    resil_status late = spent_before_sending(pg, pc, "query", a->err);
    resil_pool_release(pg->pool, pc, RESIL_POOL_OK);
    return late;
  }
  pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = qd, .q = x->q, .name = x->name, .phase = "query"};
  if (!x->name) {
    st = pg_stmt_run(&pg->env, &s, a->err);
    x->res = s.res;
  } else {
    st = ensure_prepared(x, w, &s, a->err);
    if (st == RESIL_OK && s.d == DISP_KEEP) {
      s.kind = SEND_PREPARED;
      s.phase = "query";
      st = pg_stmt_run(&pg->env, &s, a->err);
      x->res = s.res;
      const char *state = resil_pg_sqlstate(x->res);
      if (state && strcmp(state, "26000") == 0) conn_drop_prepared(w, x->name);
    }
  }
  *dout = s.d;
  give_back(pg, pc, s.d, a->deadline);
  if (s.retryable) a->retry = 1;
  return st;
}

static resil_status run_query(resil_pg *pg, resil_deadline deadline, unsigned flags,
                              const char *name, const resil_pg_query_args *q, PGresult **res,
                              resil_err *err) {
  query_ctx x = {.pg = pg, .name = name, .q = q, .res = NULL};
  resil_status st = resil_dep_call(pg->dep, deadline, flags, query_attempt, &x, err);
  if (res)
    *res = x.res;
  else
    PQclear(x.res);
  return st;
}

resil_status resil_pg_query_prepared(resil_pg *pg, resil_deadline deadline, unsigned flags,
                                     const char *name, const resil_pg_query_args *q,
                                     PGresult **res, resil_err *err) {
  if (res) *res = NULL;
  if (!pg || !name || !name[0] || !q || !q->sql || q->nparams < 0 ||
      (q->nparams > 0 && !q->values))
    return resil_err_set(err, RESIL_E_INVALID, "%s: query: invalid arguments",
                         pg ? pg->name : "pg");
  return run_query(pg, deadline, flags, name, q, res, err);
}

resil_status resil_pg_query_ex(resil_pg *pg, resil_deadline deadline, unsigned flags,
                               const resil_pg_query_args *q, PGresult **res, resil_err *err) {
  if (res) *res = NULL;
  if (!pg || !q || !q->sql || q->nparams < 0 || (q->nparams > 0 && !q->values))
    return resil_err_set(err, RESIL_E_INVALID, "%s: query: invalid arguments",
                         pg ? pg->name : "pg");
  return run_query(pg, deadline, flags, NULL, q, res, err);
}

resil_status resil_pg_query(resil_pg *pg, resil_deadline deadline, unsigned flags,
                            const char *sql, int nparams, const char *const *values,
                            PGresult **res, resil_err *err) {
  resil_pg_query_args q = {.sql = sql, .nparams = nparams, .values = values};
  return resil_pg_query_ex(pg, deadline, flags, &q, res, err);
}

/* ---- Transactions ------------------------------------------------------- */

struct resil_pg_tx {
  resil_pg *pg;
  resil_pool_conn *pc;
  resil_deadline deadline;
  resil_permit permit;
  bool owns_permit;
  bool failed;           /* a statement failed: only rollback remains */
  disp d;                /* what the connection needs at the end */
  resil_status outcome;  /* first error, RESIL_OK if none */
  bool retryable;        /* the first error was 40001/40P01 */
  char first_msg[RESIL_ERR_MSG_MAX];
};

static void tx_note(resil_pg_tx *tx, resil_status st, disp d, bool retryable,
                    const resil_err *e) {
  if (d != DISP_KEEP && tx->d != DISP_REAP) tx->d = d;
  if (st == RESIL_OK) return;
  tx->failed = true;
  if (tx->outcome == RESIL_OK) {
    tx->outcome = st;
    tx->retryable = retryable;
    snprintf(tx->first_msg, sizeof tx->first_msg, "%s", e ? e->msg : "");
  }
}

/* Borrow a connection and BEGIN, under deadline. */
static resil_status tx_open(resil_pg *pg, resil_deadline deadline, const char *begin_sql,
                            resil_pg_tx *tx, bool *retryable, resil_err *err) {
  resil_status st = acquire_live(pg, deadline, &tx->pc, err);
  if (st != RESIL_OK) return st;
  pg_conn *w = resil_pool_conn_handle(tx->pc);
  resil_deadline qd = resil_deadline_bound(deadline, pg->cfg.query_timeout_ms);
  pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = qd, .sql = begin_sql ? begin_sql : "BEGIN",
               .phase = "begin"};
  if (resil_deadline_expired(qd)) {
    st = spent_before_sending(pg, tx->pc, "begin", err);
  } else {
    st = pg_stmt_simple(&pg->env, &s, NULL, 0, err);
    if (retryable) *retryable = s.retryable;
    if (st == RESIL_OK && s.d == DISP_KEEP && PQtransactionStatus(w->pq) != PQTRANS_INTRANS) {
      /* begin_sql did not open a transaction: refuse to go on. */
      st = resil_err_set(err, RESIL_E_INVALID, "%s: begin: statement did not open a transaction",
                         pg->name);
    }
  }
  if (st != RESIL_OK) {
    give_back(pg, tx->pc, s.d, deadline);
    tx->pc = NULL;
  }
  return st;
}

resil_status resil_pg_tx_begin(resil_pg *pg, resil_deadline deadline, const char *begin_sql,
                               resil_pg_tx **txp, resil_err *err) {
  if (txp) *txp = NULL;
  if (!pg || !txp) return resil_err_set(err, RESIL_E_INVALID, "pg: tx_begin: invalid arguments");
  resil_pg_tx *tx = calloc(1, sizeof *tx);
  if (!tx) return resil_err_set(err, RESIL_E_NOMEM, "%s: begin: out of memory", pg->name);
  tx->pg = pg;
  resil_status st = resil_dep_admit(pg->dep, deadline, &tx->permit, err);
  if (st != RESIL_OK) {
    free(tx);
    return st;
  }
  tx->owns_permit = true;
  tx->deadline = tx->permit.deadline;
  st = tx_open(pg, tx->deadline, begin_sql, tx, NULL, err);
  if (st != RESIL_OK) {
    resil_dep_done(&tx->permit, st);
    free(tx);
    return st;
  }
  *txp = tx;
  return RESIL_OK;
}

resil_status resil_pg_tx_query_ex(resil_pg_tx *tx, const resil_pg_query_args *q, PGresult **res,
                                  resil_err *err) {
  if (res) *res = NULL;
  if (!tx || !q || !q->sql || q->nparams < 0 || (q->nparams > 0 && !q->values))
    return resil_err_set(err, RESIL_E_INVALID, "pg: tx_query: invalid arguments");
  resil_pg *pg = tx->pg;
  if (tx->failed || !tx->pc)
    return resil_err_set(err, RESIL_E_CALLER,
                         "%s: query: transaction already failed; roll it back", pg->name);
  pg_conn *w = resil_pool_conn_handle(tx->pc);
  resil_deadline qd = resil_deadline_bound(tx->deadline, pg->cfg.query_timeout_ms);
  resil_err e;
  resil_status st;
  pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = qd, .q = q, .phase = "query"};
  if (resil_deadline_expired(qd))
    st = resil_err_set(&e, RESIL_E_TIMEOUT, "%s: query: transaction deadline passed", pg->name);
  else
    st = pg_stmt_run(&pg->env, &s, &e);
  tx_note(tx, st, s.d, s.retryable, &e);
  if (st != RESIL_OK && err) *err = e;
  if (res)
    *res = s.res;
  else
    PQclear(s.res);
  return st;
}

resil_status resil_pg_tx_query(resil_pg_tx *tx, const char *sql, int nparams,
                               const char *const *values, PGresult **res, resil_err *err) {
  resil_pg_query_args q = {.sql = sql, .nparams = nparams, .values = values};
  return resil_pg_tx_query_ex(tx, &q, res, err);
}

PGconn *resil_pg_tx_conn(resil_pg_tx *tx) {
  if (!tx || !tx->pc || tx->d != DISP_KEEP) return NULL;
  pg_conn *w = resil_pool_conn_handle(tx->pc);
  return w ? w->pq : NULL;
}

int resil_pg_tx_backend_pid(const resil_pg_tx *tx) {
  if (!tx || !tx->pc) return 0;
  const pg_conn *w = resil_pool_conn_handle(tx->pc);
  return (w && w->pq) ? PQbackendPID(w->pq) : 0;
}

/* End the transaction with COMMIT (commit true, and nothing failed) or
 * ROLLBACK; give the connection back; return the outcome. Does not free tx
 * or end the permit. */
static resil_status tx_finish(resil_pg_tx *tx, bool commit, bool *retryable, resil_err *err) {
  resil_pg *pg = tx->pg;
  if (tx->pc) {
    pg_conn *w = resil_pool_conn_handle(tx->pc);
    if (tx->d == DISP_KEEP && w->pq) {
      bool do_commit = commit && !tx->failed;
      resil_deadline qd = resil_deadline_bound(tx->deadline, pg->cfg.query_timeout_ms);
      resil_err e;
      pg_stmt s = {.conn = w->pq, .rx_mark = &w->rx_mark, .deadline = qd, .sql = do_commit ? "COMMIT" : "ROLLBACK",
                   .phase = do_commit ? "commit" : "rollback"};
      char tag[32];
      resil_status st;
      if (resil_deadline_expired(qd)) {
        st = resil_err_set(&e, RESIL_E_TIMEOUT, "%s: %s: transaction deadline passed", pg->name,
                           s.phase);
        s.d = DISP_BROKEN; /* closing it rolls the transaction back */
      } else {
        st = pg_stmt_simple(&pg->env, &s, tag, sizeof tag, &e);
        if (st == RESIL_OK && do_commit && strncmp(tag, "COMMIT", 6) != 0) {
          st = resil_err_set(&e, RESIL_E_CALLER, "%s: commit: transaction was rolled back",
                             pg->name);
        }
      }
      if (do_commit || st != RESIL_E_CALLER)
        tx_note(tx, st, s.d, s.retryable, &e);
      else
        tx_note(tx, RESIL_OK, s.d, false, NULL);
      if (st != RESIL_OK && !do_commit && s.d == DISP_KEEP) tx->d = DISP_BROKEN;
    }
    /* give_back rolls back (or closes) whatever is still open. */
    give_back(pg, tx->pc, tx->d, tx->deadline);
    tx->pc = NULL;
  }
  if (retryable) *retryable = tx->retryable;
  if (tx->outcome != RESIL_OK) {
    if (err) resil_err_set(err, tx->outcome, "%s", tx->first_msg);
    return tx->outcome;
  }
  return RESIL_OK;
}

resil_status resil_pg_tx_commit(resil_pg_tx *tx, resil_err *err) {
  if (!tx) return resil_err_set(err, RESIL_E_INVALID, "pg: tx_commit: NULL transaction");
  bool had_failed = tx->failed;
  resil_status st = tx_finish(tx, true, NULL, err);
  if (had_failed && st == RESIL_OK) st = RESIL_E_CALLER; /* cannot happen; defensive */
  if (had_failed && err) {
    resil_err_set(err, st, "%s: commit: rolled back after an earlier error (%.400s)",
                  tx->pg->name, tx->first_msg);
  }
  if (tx->owns_permit) resil_dep_done(&tx->permit, st);
  free(tx);
  return st;
}

resil_status resil_pg_tx_rollback(resil_pg_tx *tx, resil_err *err) {
  if (!tx) return resil_err_set(err, RESIL_E_INVALID, "pg: tx_rollback: NULL transaction");
  resil_status st = tx_finish(tx, false, NULL, err);
  if (tx->owns_permit) resil_dep_done(&tx->permit, st);
  free(tx);
  return st;
}

typedef struct transact_ctx {
  resil_pg *pg;
  const char *begin_sql;
  resil_pg_tx_fn fn;
  void *ctx;
} transact_ctx;

static resil_status transact_attempt(void *vctx, resil_attempt *a) {
  transact_ctx *x = vctx;
  resil_pg_tx tx;
  memset(&tx, 0, sizeof tx);
  tx.pg = x->pg;
  tx.deadline = a->deadline;
  bool retryable = false;
  resil_status st = tx_open(x->pg, a->deadline, x->begin_sql, &tx, &retryable, a->err);
  if (st != RESIL_OK) {
    if (retryable) a->retry = 1;
    return st;
  }
  resil_status body = x->fn(x->ctx, &tx);
  st = tx_finish(&tx, body == RESIL_OK, &retryable, a->err);
  if (st == RESIL_OK && body != RESIL_OK) {
    /* The body chose to roll back without a failed statement. */
    st = resil_err_set(a->err, body, "%s: transaction rolled back by the caller (%s)",
                       x->pg->name, resil_status_name(body));
  }
  if (retryable) a->retry = 1;
  return st;
}

resil_status resil_pg_transact(resil_pg *pg, resil_deadline deadline, unsigned flags,
                               const char *begin_sql, resil_pg_tx_fn fn, void *ctx,
                               resil_err *err) {
  if (!pg || !fn) return resil_err_set(err, RESIL_E_INVALID, "pg: transact: invalid arguments");
  transact_ctx x = {.pg = pg, .begin_sql = begin_sql, .fn = fn, .ctx = ctx};
  return resil_dep_call(pg->dep, deadline, flags, transact_attempt, &x, err);
}

/* ---- Result helpers ----------------------------------------------------- */

const char *resil_pg_value(const PGresult *res, int row, int col) {
  if (!res || row < 0 || col < 0 || row >= PQntuples(res) || col >= PQnfields(res)) return NULL;
  if (PQgetisnull(res, row, col)) return NULL;
  return PQgetvalue(res, row, col);
}

resil_status resil_pg_int64(const PGresult *res, int row, int col, int64_t *out,
                            resil_err *err) {
  const char *v = resil_pg_value(res, row, col);
  if (!v)
    return resil_err_set(err, RESIL_E_INVALID, "pg: value at row %d, column %d is NULL or absent",
                         row, col);
  if (PQfformat(res, col) != 0)
    return resil_err_set(err, RESIL_E_INVALID, "pg: column %d is binary, not text", col);
  errno = 0;
  char *end = NULL;
  long long x = strtoll(v, &end, 10);
  if (end == v || *end != '\0' || errno == ERANGE || v[0] == ' ')
    return resil_err_set(err, RESIL_E_INVALID, "pg: value at row %d, column %d is not an int64",
                         row, col);
  if (out) *out = (int64_t)x;
  return RESIL_OK;
}

/* ---- Lifecycle ---------------------------------------------------------- */

static bool add_key(resil_pg *pg, const char *k, const char *v) {
  if (pg->nkeys + 1 >= PG_MAX_KEYS) return false;
  pg->keys[pg->nkeys] = k;
  pg->vals[pg->nkeys] = v;
  pg->nkeys++;
  return true;
}

static resil_status build_keys(resil_pg *pg, resil_err *err) {
  const resil_pg_config *c = &pg->cfg;
  for (PQconninfoOption *o = pg->opts; o->keyword; o++) {
    if (!o->val || !o->val[0]) continue;
    if (strcmp(o->keyword, "host") == 0) {
      pg->host = o->val;
    } else if (strcmp(o->keyword, "hostaddr") == 0) {
      pg->hostaddr = o->val;
    } else if (strcmp(o->keyword, "port") == 0) {
      pg->port = o->val;
    } else if (strcmp(o->keyword, "options") == 0) {
      /* added below, maybe extended */
    } else if (!add_key(pg, o->keyword, o->val)) {
      return resil_err_set(err, RESIL_E_INVALID, "%s: conninfo: too many keywords", pg->name);
    }
  }
  bool ok = true;
  if (!opt_val(pg->opts, "application_name")) {
    snprintf(pg->app_name, sizeof pg->app_name, "%s",
             c->application_name ? c->application_name : pg->name);
    ok = ok && add_key(pg, "application_name", pg->app_name);
  }
  if (c->tcp_user_timeout_ms && !opt_val(pg->opts, "tcp_user_timeout")) {
    snprintf(pg->tcp_ut, sizeof pg->tcp_ut, "%u", c->tcp_user_timeout_ms);
    ok = ok && add_key(pg, "tcp_user_timeout", pg->tcp_ut);
  }
  if (c->keepalives && !opt_val(pg->opts, "keepalives")) {
    ok = ok && add_key(pg, "keepalives", "1");
    if (!opt_val(pg->opts, "keepalives_idle")) {
      snprintf(pg->ka_idle, sizeof pg->ka_idle, "%u", c->keepalives_idle_s);
      ok = ok && add_key(pg, "keepalives_idle", pg->ka_idle);
    }
    if (!opt_val(pg->opts, "keepalives_interval")) {
      snprintf(pg->ka_int, sizeof pg->ka_int, "%u", c->keepalives_interval_s);
      ok = ok && add_key(pg, "keepalives_interval", pg->ka_int);
    }
    if (!opt_val(pg->opts, "keepalives_count")) {
      snprintf(pg->ka_cnt, sizeof pg->ka_cnt, "%u", c->keepalives_count);
      ok = ok && add_key(pg, "keepalives_count", pg->ka_cnt);
    }
  }
  const char *opts = opt_val(pg->opts, "options");
  if (c->statement_timeout && !(opts && strstr(opts, "statement_timeout"))) {
    size_t n = (opts ? strlen(opts) : 0) + 64;
    pg->options = malloc(n);
    if (!pg->options) return resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", pg->name);
    snprintf(pg->options, n, "%s%s-c statement_timeout=%u", opts ? opts : "", opts ? " " : "",
             c->query_timeout_ms);
    ok = ok && add_key(pg, "options", pg->options);
  } else if (opts) {
    ok = ok && add_key(pg, "options", opts);
  }
  if (!ok) return resil_err_set(err, RESIL_E_INVALID, "%s: conninfo: too many keywords", pg->name);
  pg->keys[pg->nkeys] = NULL;
  pg->vals[pg->nkeys] = NULL;
  return RESIL_OK;
}

void resil_pg_free(resil_pg *pg) {
  if (!pg) return;
  if (pg->dep) resil_dep_set_probe(pg->dep, NULL, NULL); /* waits for a running probe */
  if (pg->dep && pg->pool) resil_dep_attach_pool(pg->dep, NULL);
  resil_pool_free(pg->pool);
  pg_reaper_stop(&pg->rp);
  resil_dep_free(pg->dep);
  free(pg->options);
  free(pg->probe_sql);
  resil_password_file_free(pg->pwfile);
  if (pg->opts) PQconninfoFree(pg->opts);
  free(pg->conninfo);
  free(pg);
}

/* The owned copies of cfg's strings, the password file, the parsed
 * conninfo and the keywords every connect passes. */
static resil_status copy_config(resil_pg *pg, const resil_pg_config *cfg, resil_err *err) {
  snprintf(pg->name, sizeof pg->name, "%s", cfg->dep.name);
  pg->cfg = *cfg;
  pg->cfg.application_name = NULL; /* copied into app_name if used */
  pg->cfg.conninfo = pg->conninfo = resil_x_strdup(cfg->conninfo);
  pg->cfg.probe_sql = pg->probe_sql = resil_x_strdup(cfg->probe_sql);
  pg->cfg.password_file = NULL; /* the path is kept by pwfile */
  if (cfg->password_file) {
    resil_err fe;
    pg->pwfile = resil_password_file_open(cfg->password_file, cfg->password_file_check_ms, &fe);
    if (!pg->pwfile)
      return resil_err_set(err, fe.status, "%s: password_file: %s", cfg->dep.name, fe.msg);
  }
  if (!pg->conninfo || !pg->probe_sql)
    return resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", pg->name);
  if (cfg->application_name)
    snprintf(pg->app_name, sizeof pg->app_name, "%s", cfg->application_name);
  char *emsg = NULL;
  pg->opts = PQconninfoParse(pg->conninfo, &emsg);
  if (!pg->opts) { /* validated above: only out of memory is left */
    PQfreemem(emsg);
    return resil_err_set(err, RESIL_E_NOMEM, "%s: conninfo: out of memory", pg->name);
  }
  pg->cfg.application_name = cfg->application_name ? pg->app_name : NULL;
  return build_keys(pg, err);
}

/* The dependency, the pool and the recovery probe. */
static resil_status start_client(resil_pg *pg, const resil_pg_config *cfg, resil_err *err) {
  if (!(pg->dep = resil_dep_new(&cfg->dep, err))) return RESIL_E_INVALID;
  pg->env = (pg_stmt_env){.name = pg->name,
                          .dep = pg->dep,
                          .max_result_bytes = cfg->max_result_bytes,
                          .read_only = &pg->read_only};
  resil_x_client c = {
      .label = pg->name,
      .name = pg->name,
      .pool = cfg->pool,
      .connect_timeout_ms = cfg->connect_timeout_ms,
      .connector = {.connect = pg_connect, .validate = pg_validate, .close = pg_close,
                    .ctx = pg, .abandon = pg_abandon},
      .memory_bound = resil_pg_config_memory_bound(cfg),
      .probe = pg_probe,
      .hosts = cfg->hosts,
      .default_port = 5432,
      .outlier = &cfg->outlier,
      .connect_to = pg_connect_to,
      .dns_host = cfg->endpoints_from_dns ? pg->host : NULL,
      .dns_port = pg->port ? (uint32_t)atoi(pg->port) : 5432};
  resil_status st = resil_x_start_pool(&c, pg->dep, &pg->pool, err);
  pg->cfg.hosts = NULL; /* not owned; the pool has its copy */
  return st;
}

resil_pg *resil_pg_new(const resil_pg_config *cfg, resil_err *err) {
  if (resil_pg_config_validate(cfg, err) != RESIL_OK) return NULL;
  resil_pg *pg = resil_x_client_alloc(sizeof *pg, cfg->dep.name, err);
  if (!pg) return NULL;
  if (copy_config(pg, cfg, err) != RESIL_OK ||
      pg_reaper_start(&pg->rp, pg->name, cfg->reaper_queue_max, cfg->cancel_timeout_ms, err) !=
          RESIL_OK ||
      start_client(pg, cfg, err) != RESIL_OK) {
    resil_pg_free(pg);
    return NULL;
  }
  return pg;
}
