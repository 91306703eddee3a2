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

/* ---- Small utilities ---------------------------------------------------- */

/* Copy src into dst (size > 0), collapsing runs of whitespace into one
 * space, dropping libpq's verbose "LOCATION:" lines, trimming the ends. */
static void flatten(char *dst, size_t size, const char *src) {
  size_t n = 0;
  bool space = false;
  if (!src) src = "";
  while (*src && n + 1 < size) {
    if (strncmp(src, "LOCATION:", 9) == 0 && (n == 0 || space)) {
      while (*src && *src != '\n') src++;
      continue;
    }
    unsigned char ch = (unsigned char)*src++;
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
      space = true;
      continue;
    }
    if (space && n > 0 && n + 2 < size) dst[n++] = ' ';
    space = false;
    dst[n++] = (char)ch;
  }
  dst[n] = '\0';
}

/* ---- Configuration ------------------------------------------------------ */

/* Pull the "pg" configuration kind (pg_kind.c) into every program that
 * uses this adapter, also from a static archive, where the linker takes only
 * the members a program references: its constructor registers the kind, so
 * RESIL_DEPS=name:pg works without calling resil_pg_register_kind(). */
__attribute__((used)) static resil_status (*const pull_kind_)(resil_err *) =
    resil_pg_register_kind;

void resil_pg_config_init(resil_pg_config *cfg, const char *name) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  resil_dep_config_init(&cfg->dep, name);
  resil_pool_config_init(&cfg->pool);
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
  return resil_problems_finish(&p, err);
}

/* ---- The adapter object ------------------------------------------------- */

typedef struct reap_item {
  PGconn *conn;
} reap_item;

typedef struct reaper {
  pthread_t thread;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  reap_item *q; /* ring of cap entries */
  size_t cap, head, len;
  bool stop;
  pid_t pid; /* the process the thread runs in: a child of fork has none */
} reaper;

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
  reaper rp;
  resil_password_file *pwfile; /* cfg.password_file, or NULL */
  _Atomic uint64_t connects_ok, connects_failed, connects_timed_out, timeouts, reaped,
      cancels_sent, cancels_failed, cancels_abandoned, cancels_skipped, rollbacks, broken,
      failovers, read_only, replays, auth_failures;
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

static void bump(_Atomic uint64_t *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); }

resil_dep *resil_pg_dep(resil_pg *pg) { return pg ? pg->dep : NULL; }
resil_pool *resil_pg_pool(resil_pg *pg) { return pg ? pg->pool : NULL; }

void resil_pg_get_stats(const resil_pg *pg, resil_pg_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!pg) return;
  resil_pg *m = (resil_pg *)(uintptr_t)pg;
#define RD(f) out->f = atomic_load_explicit(&m->f, memory_order_relaxed)
  RD(connects_ok);
  RD(connects_failed);
  RD(connects_timed_out);
  RD(timeouts);
  RD(reaped);
  RD(cancels_sent);
  RD(cancels_failed);
  RD(cancels_abandoned);
  RD(cancels_skipped);
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

/* ---- Waiting on the socket --------------------------------------------- */

/* ---- The reaper --------------------------------------------------------- */

/* One cancel request run on its own detached thread so that the reaper can
 * stop waiting for it. Freed by whichever of the two lets go last. */
typedef struct cancel_job {
  PGcancel *cancel;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int ok;
  _Atomic int refs;
} cancel_job;

static _Atomic int g_cancel_threads; /* cancel helper threads alive, process-wide */

static void cancel_job_unref(cancel_job *j) {
  if (atomic_fetch_sub(&j->refs, 1) == 1) {
    PQfreeCancel(j->cancel);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
  }
}

static void *cancel_main(void *arg) {
  cancel_job *j = arg;
  char buf[256];
  int ok = PQcancel(j->cancel, buf, (int)sizeof buf);
  pthread_mutex_lock(&j->mu);
  j->ok = ok;
  j->done = true;
  pthread_cond_signal(&j->cv);
  pthread_mutex_unlock(&j->mu);
  cancel_job_unref(j);
  atomic_fetch_sub(&g_cancel_threads, 1);
  return NULL;
}

static int cond_init_mono(pthread_cond_t *cv) {
  pthread_condattr_t a;
  int r = pthread_condattr_init(&a);
  if (r) return r;
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  r = pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
  return r;
}

static struct timespec mono_in_ms(uint64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* Send a cancel request for conn's running statement, waiting at most
 * timeout_ms for it. */
static void cancel_bounded(resil_pg *pg, PGconn *conn, uint64_t timeout_ms) {
  if (timeout_ms == 0 || PQstatus(conn) != CONNECTION_OK) {
    bump(&pg->cancels_skipped);
    return;
  }
  if (atomic_fetch_add(&g_cancel_threads, 1) >= RESIL_PG_MAX_STUCK_CANCELS) {
    atomic_fetch_sub(&g_cancel_threads, 1);
    bump(&pg->cancels_skipped);
    return;
  }
  cancel_job *j = calloc(1, sizeof *j);
  PGcancel *c = j ? PQgetCancel(conn) : NULL;
  if (!c || pthread_mutex_init(&j->mu, NULL) != 0) {
    free(j);
    PQfreeCancel(c);
    atomic_fetch_sub(&g_cancel_threads, 1);
    bump(&pg->cancels_skipped);
    return;
  }
  if (cond_init_mono(&j->cv) != 0) {
    pthread_mutex_destroy(&j->mu);
    free(j);
    PQfreeCancel(c);
    atomic_fetch_sub(&g_cancel_threads, 1);
    bump(&pg->cancels_skipped);
    return;
  }
  j->cancel = c;
  atomic_init(&j->refs, 2);
  pthread_attr_t attr;
  pthread_t th;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  int r = pthread_create(&th, &attr, cancel_main, j);
  pthread_attr_destroy(&attr);
  if (r != 0) {
    atomic_store(&j->refs, 1);
    cancel_job_unref(j);
    atomic_fetch_sub(&g_cancel_threads, 1);
    bump(&pg->cancels_skipped);
    return;
  }
  struct timespec until = mono_in_ms(timeout_ms);
  pthread_mutex_lock(&j->mu);
  while (!j->done)
    if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT) break;
  bool done = j->done;
  int ok = j->ok;
  pthread_mutex_unlock(&j->mu);
  cancel_job_unref(j);
  if (!done)
    bump(&pg->cancels_abandoned);
  else if (ok)
    bump(&pg->cancels_sent);
  else
    bump(&pg->cancels_failed);
}

static void *reaper_main(void *arg) {
  resil_pg *pg = arg;
  reaper *rp = &pg->rp;
  uint64_t stop_until = 0; /* shared cancel budget once stopping */
  pthread_mutex_lock(&rp->mu);
  for (;;) {
    while (rp->len == 0 && !rp->stop) pthread_cond_wait(&rp->cv, &rp->mu);
    if (rp->len == 0) break; /* stopping and empty */
    reap_item it = rp->q[rp->head];
    rp->head = (rp->head + 1) % rp->cap;
    rp->len--;
    bool stopping = rp->stop;
    pthread_mutex_unlock(&rp->mu);

    uint64_t timeout = pg->cfg.cancel_timeout_ms;
    if (stopping) {
      uint64_t now = resil_now_ns();
      if (!stop_until) stop_until = now + timeout * 1000000ull;
      timeout = stop_until > now ? (stop_until - now + 999999ull) / 1000000ull : 0;
    }
    cancel_bounded(pg, it.conn, timeout);
    PQfinish(it.conn);
    bump(&pg->reaped);
    pthread_mutex_lock(&rp->mu);
  }
  pthread_mutex_unlock(&rp->mu);
  return NULL;
}

/* Hand a connection whose statement is still running to the reaper. Never
 * blocks: with the queue full (or no reaper) the connection is closed here
 * without a cancel request (PQfinish on a non-blocking connection does not
 * wait). */
static void reap(resil_pg *pg, PGconn *conn) {
  reaper *rp = &pg->rp;
  bump(&pg->timeouts);
  /* In a child of fork the thread does not exist (and its mutex may have
   * been held by it): close here, without a cancel request. */
  bool here = rp->started && rp->pid == getpid();
  if (here) pthread_mutex_lock(&rp->mu);
  if (here && !rp->stop && rp->len < rp->cap) {
    rp->q[(rp->head + rp->len) % rp->cap].conn = conn;
    rp->len++;
    pthread_cond_signal(&rp->cv);
    pthread_mutex_unlock(&rp->mu);
    return;
  }
  if (here) pthread_mutex_unlock(&rp->mu);
  bump(&pg->cancels_skipped);
  PQfinish(conn);
  bump(&pg->reaped);
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
  flatten(msg, sizeof msg, PQerrorMessage(c));
  /* libpq could not even make a socket (EMFILE, ENFILE...): this process's
   * limit, not the server's failure. libpq's own words, not the server's
   * (server errors come as "FATAL:  <SQLSTATE>: ..."). */
  if (strstr(msg, "could not create socket"))
    return resil_err_set(err, RESIL_E_SYSTEM,
                         "%s (a local resource limit; not counted against the dependency)", msg);
  /* 53300 too_many_connections: the server's connection slots are full.
   * Pause every call for pushback.pause_ms (a no-op while it is 0). */
  if (strstr(msg, "53300")) resil_dep_pushback(pg->dep, "too_many_connections", msg);
  bump(&pg->connects_failed);
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
  if (pg->pool && resil_pool_evict(pg->pool, gen)) bump(&pg->failovers);
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
  char pw[RESIL_PASSWORD_MAX], pw2[RESIL_PASSWORD_MAX];
  if (rotating && !get_password(pg, 0, pw, err)) {
    bump(&pg->connects_failed);
    return RESIL_E_FAILURE;
  }
  resil_status st = pg_connect_once(pg, deadline, rotating ? pw : NULL, out, err);
  if (st == RESIL_E_FAILURE && rotating && err && strstr(err->msg, "28P01")) {
    bump(&pg->auth_failures);
    resil_err e2;
    if (get_password(pg, RESIL_PASSWORD_AUTH_FAILED, pw2, &e2) && strcmp(pw, pw2) != 0 &&
        !resil_deadline_expired(deadline)) {
      st = pg_connect_once(pg, deadline, pw2, out, err);
      if (st == RESIL_E_FAILURE && err && strstr(err->msg, "28P01")) bump(&pg->auth_failures);
    }
    explicit_bzero(pw2, sizeof pw2);
  }
  if (rotating) explicit_bzero(pw, sizeof pw);
  if (st == RESIL_E_FAILURE && had_good && err && connect_error_moved(err->msg))
    failover(pg, gen);
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
  if (pg->host && !pg->hostaddr) {
    bool per_port = false;
    resil_status st = build_hosts(pg, deadline, hosts, addrs, ports, &per_port, err);
    if (st != RESIL_OK) {
      if (st == RESIL_E_TIMEOUT)
        bump(&pg->connects_timed_out);
      else if (st != RESIL_E_SYSTEM && st != RESIL_E_NOMEM)
        bump(&pg->connects_failed);
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

  if (resil_deadline_expired(deadline)) {
    bump(&pg->connects_timed_out);
    return resil_err_set(err, RESIL_E_TIMEOUT, "deadline passed while resolving");
  }
  PGconn *c = PQconnectStartParams(keys, vals, 0);
  if (!c) {
    bump(&pg->connects_failed);
    return resil_err_set(err, RESIL_E_NOMEM, "out of memory");
  }
  PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
  PQsetNoticeProcessor(c, quiet_notices, NULL);
  if (PQstatus(c) == CONNECTION_BAD) {
    resil_status st = connect_error(pg, c, err);
    PQfinish(c);
    return st;
  }
  PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
  for (;;) {
    if (ps == PGRES_POLLING_OK) break;
    if (ps == PGRES_POLLING_FAILED) {
      resil_status st = connect_error(pg, c, err);
      PQfinish(c);
      return st;
    }
    /* The socket can change between polls (libpq tries each address and
     * retries without SSL on its own): ask every time. */
    short ev = ps == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    int w = resil_x_wait_fd(PQsocket(c), ev, deadline);
    if (w == 0) {
      /* Name the address that did not answer (libpq may try several). */
      const char *addr = PQhostaddr(c), *port = PQport(c);
      if (!addr || !*addr) addr = PQhost(c);
      if (!addr) addr = "";
      if (!port) port = "";
      bool v6 = strchr(addr, ':') != NULL;
      resil_status st = resil_err_set(err, RESIL_E_TIMEOUT, "%s%s%s%s%s: timed out",
                                      v6 ? "[" : "", addr, v6 ? "]" : "", *port ? ":" : "",
                                      port);
      PQfinish(c);
      bump(&pg->connects_timed_out);
      return st;
    }
    if (w < 0) {
      int e = errno;
      PQfinish(c);
      bump(&pg->connects_failed);
      return resil_err_set(err, RESIL_E_FAILURE, "poll: %s", strerror(e));
    }
    ps = PQconnectPoll(c);
  }
  PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
  if (PQsetnonblocking(c, 1) != 0) {
    resil_status st = connect_error(pg, c, err);
    PQfinish(c);
    return st;
  }
  pg_conn *w = malloc(sizeof *w);
  if (!w) {
    PQfinish(c);
    bump(&pg->connects_failed);
    return resil_err_set(err, RESIL_E_NOMEM, "out of memory");
  }
  *w = (pg_conn){.pq = c}; /* never returned, no byte count yet, nothing prepared */
  bump(&pg->connects_ok);
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

/* ---- Running one statement ---------------------------------------------- */

/* What to do with the connection after a statement. */
/* DISP_MOVED: close it, and the endpoint moved (read-only after a failover,
 * shut down, reset): see failover(). */
typedef enum disp { DISP_KEEP = 0, DISP_BROKEN, DISP_REAP, DISP_MOVED } disp;

static bool is_sqlstate(const char *s) {
  if (!s || strlen(s) != 5) return false;
  for (int i = 0; i < 5; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z'))) return false;
  return true;
}

/* One connection besides its results: the PGconn with libpq's input and
 * output buffers at their usual sizes, and TLS state. */
#define PG_CONN_BYTES (256u * 1024u)

uint64_t resil_pg_config_memory_bound(const resil_pg_config *cfg) {
  if (!cfg) return 0;
  uint64_t conns = cfg->pool.max_size;
  uint64_t calls = conns < cfg->dep.limit.max_concurrent ? conns : cfg->dep.limit.max_concurrent;
  /* A statement is stopped within one read of max_result_bytes received
   * (see "Bounding what one statement receives"): libpq's input buffer holds
   * up to that (1x, plus one read) and the PGresult it builds is up to ~3x
   * the protocol bytes for many narrow rows: 4x. */
  return resil_dep_config_memory_bound(&cfg->dep) + conns * PG_CONN_BYTES +
         calls * 4 * (uint64_t)cfg->max_result_bytes;
}

resil_status resil_pg_classify_sqlstate(const char *s, bool *retryable) {
  if (retryable) *retryable = false;
  if (!is_sqlstate(s)) return RESIL_E_FAILURE;
  if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0) {
    if (retryable) *retryable = true;
    return RESIL_E_CALLER;
  }
  if (strcmp(s, "57014") == 0) return RESIL_E_TIMEOUT;
  if (strcmp(s, "25006") == 0) return RESIL_E_FAILURE; /* read-only: a demoted writer */
  if (strncmp(s, "08", 2) == 0 || strncmp(s, "58", 2) == 0 || strncmp(s, "XX", 2) == 0 ||
      strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
      strcmp(s, "53300") == 0)
    return RESIL_E_FAILURE;
  if (strncmp(s, "53", 2) == 0) return RESIL_E_OVERLOAD;
  return RESIL_E_CALLER;
}

const char *resil_pg_sqlstate(const PGresult *res) {
  return res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
}

/* Status and message for an error result. */
static resil_status result_error(resil_pg *pg, const char *phase, const PGresult *r,
                                 bool *retryable, resil_err *err) {
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (!sev) sev = PQresultErrorField(r, PG_DIAG_SEVERITY);
  const char *prim = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  char msg[RESIL_ERR_MSG_MAX - 100];
  flatten(msg, sizeof msg, prim ? prim : PQresultErrorMessage(r));
  resil_status st = resil_pg_classify_sqlstate(state, retryable);
  if (!is_sqlstate(state))
    return resil_err_set(err, st, "%s: %s: %s", pg->name, phase, msg);
  return resil_err_set(err, st, "%s: %s: %s %s %s", pg->name, phase, sev ? sev : "ERROR", state,
                       msg);
}

static resil_status conn_error(resil_pg *pg, const char *phase, PGconn *c, resil_err *err) {
  char msg[RESIL_ERR_MSG_MAX - 100];
  flatten(msg, sizeof msg, PQerrorMessage(c));
  return resil_err_set(err, RESIL_E_FAILURE, "%s: %s: %s", pg->name, phase,
                       msg[0] ? msg : "connection error");
}

static resil_status timed_out(resil_pg *pg, const char *phase, resil_err *err) {
  return resil_err_set(err, RESIL_E_TIMEOUT, "%s: %s: deadline passed; statement cancelled",
                       pg->name, phase);
}

/* ---- Bounding what one statement receives -------------------------------
 * libpq 15 buffers a whole result (and each whole DataRow message) before
 * handing it over, and has no limit. Single-row mode would let us count rows
 * as they come, but the caller is promised one ordinary PGresult (with its
 * command tag), so every row would have to be copied into an assembled
 * result, and one huge value is still buffered whole by libpq before its row
 * appears. Instead the adapter counts the bytes libpq has taken from the
 * socket since the statement was sent: the kernel's count of bytes received
 * on the TCP connection (TCP_INFO tcpi_bytes_received, Linux >= 4.1) minus
 * what is still queued unread (FIONREAD). It is checked after every
 * PQconsumeInput(), so a result is stopped within one read of
 * max_result_bytes, and the statement is then cancelled and the connection
 * closed (the reaper, as for a timeout). One read fills at most libpq's
 * input buffer: 16-32 KiB for ordinary rows, but libpq sizes it for a whole
 * DataRow, and keeps reading while the socket is not empty, so a single row
 * larger than the bound can come in whole in one read when the server
 * sends faster than we take (then it is refused right after, before libpq
 * copies it into a PGresult). One getsockopt() per read, and one ioctl() only once the
 * bound may have been passed; the count when the statement starts is the one
 * its connection's last statement ended with (pg_conn.rx_mark: nothing is
 * read between statements, so a statement that needs one read costs one
 * getsockopt(), ~0.6 us, instead of two), measured only on a connection's
 * first statement. The count is of protocol bytes (with TLS:
 * encrypted bytes); the PGresult libpq builds from them is about as large for
 * wide values and up to ~2-3x for many narrow rows. Connections without byte
 * counters (Unix-domain sockets) are not bounded this way, only by the
 * deadline. */
typedef struct rx_meter {
  int fd;
  bool on;       /* the socket counts received bytes (TCP) */
  uint64_t base; /* received when the statement was sent */
  uint64_t last; /* received, as last measured */
  uint64_t used; /* taken by libpq since, as last measured */
  uint64_t *mark; /* the connection's rx_mark: base on entry, last on release */
  resil_dep *dep;    /* whose memory gauge the received bytes are reported to */
  uint64_t reported; /* bytes reported to it so far */
} rx_meter;

/* When the statement is over (every return of run_stmt_kind: a cleanup
 * attribute), its result is the caller's or freed: no longer in flight. */
static void meter_release(rx_meter *m) {
  if (m->reported) resil_dep_memory_add(m->dep, -(int64_t)m->reported);
  m->reported = 0;
  if (m->mark) *m->mark = m->on ? m->last : 0;
}

static bool tcp_received(int fd, uint64_t *out) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return false;
  if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
    return false; /* a kernel older than 4.1 */
  *out = ti.tcpi_bytes_received;
  return true;
}

static void meter_start(rx_meter *m, pg_conn *w) {
  m->fd = PQsocket(w->pq);
  m->used = 0;
  m->base = w->rx_mark;
  m->mark = &w->rx_mark;
  m->on = m->fd >= 0 && (m->base || tcp_received(m->fd, &m->base));
  m->last = m->base;
}

/* After libpq read from the socket: has the statement taken at most max
 * bytes? (Anything queued but unread when it was sent counts as its own:
 * a few bytes of notices at most.) */
static bool meter_ok(rx_meter *m, size_t max) {
  uint64_t now;
  if (!m->on || !tcp_received(m->fd, &now)) return true;
  m->last = now;
  uint64_t got = now > m->base ? now - m->base : 0; /* received, read or not */
  /* What libpq holds for the statement (its input buffer, the result it
   * builds) is about what it received: the memory gauge's figure. */
  if (m->dep && got != m->reported) {
    resil_dep_memory_add(m->dep, (int64_t)got - (int64_t)m->reported);
    m->reported = got;
  }
  if (got <= max) return true;
  int inq = 0;
  if (ioctl(m->fd, FIONREAD, &inq) != 0 || inq < 0) inq = 0;
  m->used = got > (uint64_t)inq ? got - (uint64_t)inq : 0;
  return m->used <= max;
}

static resil_status too_large(resil_pg *pg, const char *phase, const rx_meter *m,
                              resil_err *err) {
  return resil_err_set(err, RESIL_E_CALLER,
                       "%s: %s: result larger than max_result_bytes %zu (%" PRIu64
                       " bytes received; statement cancelled, connection closed)",
                       pg->name, phase, pg->cfg.max_result_bytes, m->used);
}

/* Send one statement (q, or simple_sql through the simple protocol) and
 * read every result until PQgetResult() returns NULL or qd passes, at most
 * max_result_bytes of them (see above). *out receives the first error
 * result or else the last result. */
typedef enum send_kind { SEND_PARAMS = 0, SEND_PREPARE, SEND_PREPARED } send_kind;

static resil_status run_stmt_kind(resil_pg *pg, pg_conn *w, resil_deadline qd,
                                  const resil_pg_query_args *q, const char *simple_sql,
                                  send_kind kind, const char *name, const char *phase,
                                  PGresult **out, disp *d, bool *retryable, resil_err *err);

static resil_status run_stmt(resil_pg *pg, pg_conn *w, resil_deadline qd,
                             const resil_pg_query_args *q, const char *simple_sql,
                             const char *phase, PGresult **out, disp *d, bool *retryable,
                             resil_err *err) {
  return run_stmt_kind(pg, w, qd, q, simple_sql, SEND_PARAMS, NULL, phase, out, d, retryable,
                       err);
}

static resil_status run_stmt_raw(resil_pg *pg, pg_conn *conn, resil_deadline qd,
                                 const resil_pg_query_args *q, const char *simple_sql,
                                 send_kind kind, const char *name, const char *phase,
                                 PGresult **out, disp *d, bool *retryable, resil_err *err);

/* run_stmt_raw, then: does the outcome show the endpoint moved? 25006
 * (read_only_sql_transaction: the old writer after a failover answers
 * writes so) - the connection would still work but must not be reused for
 * writes; 57P01/57P02 or a connection lost mid-call (no error result). */
static resil_status run_stmt_kind(resil_pg *pg, pg_conn *w, resil_deadline qd,
                                  const resil_pg_query_args *q, const char *simple_sql,
                                  send_kind kind, const char *name, const char *phase,
                                  PGresult **out, disp *d, bool *retryable, resil_err *err) {
  resil_status st =
      run_stmt_raw(pg, w, qd, q, simple_sql, kind, name, phase, out, d, retryable, err);
  if (st == RESIL_OK || *d == DISP_REAP) return st;
  const char *state = resil_pg_sqlstate(*out);
  if (state && strcmp(state, "25006") == 0) {
    bump(&pg->read_only);
    *d = DISP_MOVED;
  } else if (*d == DISP_BROKEN && st == RESIL_E_FAILURE &&
             (!state || strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
              strncmp(state, "08", 2) == 0)) {
    *d = DISP_MOVED;
  }
  return st;
}

static resil_status run_stmt_raw(resil_pg *pg, pg_conn *conn, resil_deadline qd,
                                 const resil_pg_query_args *q, const char *simple_sql,
                                 send_kind kind, const char *name, const char *phase,
                                 PGresult **out, disp *d, bool *retryable, resil_err *err) {
  PGconn *c = conn->pq;
  *out = NULL;
  *d = DISP_KEEP;
  if (retryable) *retryable = false;
  if (PQstatus(c) != CONNECTION_OK) {
    *d = DISP_BROKEN;
    return conn_error(pg, phase, c, err);
  }
  __attribute__((cleanup(meter_release))) rx_meter m = {.dep = pg->dep};
  meter_start(&m, conn);
  int ok;
  if (!q)
    ok = PQsendQuery(c, simple_sql);
  else if (kind == SEND_PREPARE)
    ok = PQsendPrepare(c, name, q->sql, q->nparams, q->types);
  else if (kind == SEND_PREPARED)
    ok = PQsendQueryPrepared(c, name, q->nparams, q->values, q->lengths, q->formats,
                             q->result_format);
  else
    ok = PQsendQueryParams(c, q->sql, q->nparams, q->types, q->values, q->lengths, q->formats,
                           q->result_format);
  if (!ok) {
    *d = DISP_BROKEN;
    return conn_error(pg, phase, c, err);
  }
  int r;
  while ((r = PQflush(c)) == 1) {
    int w = resil_x_wait_fd(PQsocket(c), POLLIN | POLLOUT, qd);
    if (w == 0) {
      *d = DISP_REAP;
      return timed_out(pg, phase, err);
    }
    if (w < 0 || ((w & POLLIN) && !PQconsumeInput(c))) {
      *d = DISP_BROKEN;
      return conn_error(pg, phase, c, err);
    }
    if (!meter_ok(&m, pg->cfg.max_result_bytes)) {
      *d = DISP_REAP;
      return too_large(pg, phase, &m, err);
    }
  }
  if (r < 0) {
    *d = DISP_BROKEN;
    return conn_error(pg, phase, c, err);
  }
  PGresult *keep = NULL;
  bool keep_err = false;
  for (;;) {
    while (PQisBusy(c)) {
      int w = resil_x_wait_fd(PQsocket(c), POLLIN, qd);
      if (w == 0) {
        PQclear(keep);
        *d = DISP_REAP;
        return timed_out(pg, phase, err);
      }
      if (w < 0 || !PQconsumeInput(c)) {
        PQclear(keep);
        *d = DISP_BROKEN;
        return conn_error(pg, phase, c, err);
      }
      if (!meter_ok(&m, pg->cfg.max_result_bytes)) {
        PQclear(keep);
        *d = DISP_REAP;
        return too_large(pg, phase, &m, err);
      }
    }
    PGresult *res = PQgetResult(c);
    if (!res) break;
    ExecStatusType s = PQresultStatus(res);
    if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH) {
      PQclear(res);
      PQclear(keep);
      *d = DISP_BROKEN;
      return resil_err_set(err, RESIL_E_CALLER, "%s: %s: COPY is not supported", pg->name,
                           phase);
    }
    bool is_err = s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE;
    if (is_err && !keep_err) {
      PQclear(keep);
      keep = res;
      keep_err = true;
    } else if (!is_err && !keep_err) {
      PQclear(keep);
      keep = res;
    } else {
      PQclear(res);
    }
  }
  if (PQstatus(c) != CONNECTION_OK) *d = DISP_BROKEN;
  if (keep_err) {
    resil_status st = result_error(pg, phase, keep, retryable, err);
    if (*d == DISP_BROKEN && st != RESIL_E_TIMEOUT) {
      /* The server ended the session (FATAL) or libpq lost it. */
      st = RESIL_E_FAILURE;
      if (err) err->status = st;
      if (retryable) *retryable = false;
    }
    *out = keep;
    return st;
  }
  if (!keep) {
    *d = DISP_BROKEN;
    return resil_err_set(err, RESIL_E_FAILURE, "%s: %s: no result", pg->name, phase);
  }
  *out = keep; /* with DISP_BROKEN: the answer is in, only the connection is lost */
  return RESIL_OK;
}

/* Run an internal statement (BEGIN, COMMIT, ROLLBACK) and discard the
 * result. *tag receives the command tag's first letters when non-NULL. */
static resil_status run_simple(resil_pg *pg, pg_conn *w, resil_deadline qd, const char *sql,
                               const char *phase, disp *d, char *tag, size_t tagsz,
                               bool *retryable, resil_err *err) {
  PGresult *r = NULL;
  resil_status st = run_stmt(pg, w, qd, NULL, sql, phase, &r, d, retryable, err);
  if (tag && tagsz) {
    tag[0] = '\0';
    if (r && st == RESIL_OK) snprintf(tag, tagsz, "%s", PQcmdStatus(r));
  }
  PQclear(r);
  return st;
}

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
      disp rdisp = DISP_BROKEN;
      resil_status st = RESIL_E_DEADLINE;
      if (!resil_deadline_expired(rd))
        st = run_simple(pg, w, rd, "ROLLBACK", "rollback", &rdisp, NULL, 0, NULL, NULL);
      if (st == RESIL_OK && rdisp == DISP_KEEP &&
          PQtransactionStatus(w->pq) == PQTRANS_IDLE) {
        bump(&pg->rollbacks);
      } else if (rdisp == DISP_REAP) {
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
  if (d == DISP_BROKEN) bump(&pg->broken);
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
    bump(&pg->broken);
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
  disp d;
  PGresult *res = NULL;
  resil_status st = run_stmt(pg, w, deadline, NULL, "", "validate", &res, &d, NULL, NULL);
  PQclear(res);
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
  resil_status st =
      pg_connect(pg, resil_deadline_bound(deadline, pg->cfg.connect_timeout_ms), &conn, &ce);
  if (st != RESIL_OK)
    return resil_err_set(err, st, "%s: probe: connect: %s", pg->name,
                         ce.msg[0] ? ce.msg : resil_strerror(st));
  pg_conn *w = conn;
  disp d = DISP_KEEP;
  PGresult *res = NULL;
  st = run_stmt(pg, w, deadline, NULL, pg->probe_sql, "probe", &res, &d, NULL, err);
  PQclear(res);
  if (d == DISP_REAP) { /* still running at the deadline: cancel and close it aside */
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

/* Prepare x->name on w unless it already is. */
static resil_status ensure_prepared(query_ctx *x, pg_conn *w, resil_deadline qd, disp *d,
                                    bool *retryable, resil_err *err) {
  if (conn_has_prepared(w, x->name)) return RESIL_OK;
  PGresult *r = NULL;
  resil_status st = run_stmt_kind(x->pg, w, qd, x->q, NULL, SEND_PREPARE, x->name, "prepare",
                                  &r, d, retryable, err);
  const char *state = resil_pg_sqlstate(r);
  if (st == RESIL_OK || (state && strcmp(state, "42P05") == 0)) { /* already there */
    conn_add_prepared(w, x->name);
    PQclear(r);
    return RESIL_OK;
  }
  x->res = r;
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
    bump(&pg->replays);
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
  disp d = DISP_KEEP;
  bool retryable = false;
  if (!x->name) {
    st = run_stmt(pg, w, qd, x->q, NULL, "query", &x->res, &d, &retryable, a->err);
  } else {
    st = ensure_prepared(x, w, qd, &d, &retryable, a->err);
    if (st == RESIL_OK && d == DISP_KEEP) {
      st = run_stmt_kind(pg, w, qd, x->q, NULL, SEND_PREPARED, x->name, "query", &x->res,
                         &d, &retryable, a->err);
      const char *state = resil_pg_sqlstate(x->res);
      if (state && strcmp(state, "26000") == 0) conn_drop_prepared(w, x->name);
    }
  }
  *dout = d;
  give_back(pg, pc, d, a->deadline);
  if (retryable) a->retry = 1;
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
  disp d = DISP_KEEP;
  if (resil_deadline_expired(qd)) {
    st = spent_before_sending(pg, tx->pc, "begin", err);
  } else {
    st = run_simple(pg, w, qd, begin_sql ? begin_sql : "BEGIN", "begin", &d, NULL, 0,
                    retryable, err);
    if (st == RESIL_OK && d == DISP_KEEP && PQtransactionStatus(w->pq) != PQTRANS_INTRANS) {
      /* begin_sql did not open a transaction: refuse to go on. */
      st = resil_err_set(err, RESIL_E_INVALID, "%s: begin: statement did not open a transaction",
                         pg->name);
    }
  }
  if (st != RESIL_OK) {
    give_back(pg, tx->pc, d, deadline);
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
  disp d = DISP_KEEP;
  bool retryable = false;
  PGresult *r = NULL;
  if (resil_deadline_expired(qd)) {
    st = resil_err_set(&e, RESIL_E_TIMEOUT, "%s: query: transaction deadline passed", pg->name);
  } else {
    st = run_stmt(pg, w, qd, q, NULL, "query", &r, &d, &retryable, &e);
  }
  tx_note(tx, st, d, retryable, &e);
  if (st != RESIL_OK && err) *err = e;
  if (res)
    *res = r;
  else
    PQclear(r);
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
      disp d = DISP_KEEP;
      bool rt = false;
      char tag[32];
      resil_status st;
      if (resil_deadline_expired(qd)) {
        st = resil_err_set(&e, RESIL_E_TIMEOUT, "%s: %s: transaction deadline passed", pg->name,
                           do_commit ? "commit" : "rollback");
        d = DISP_BROKEN; /* closing it rolls the transaction back */
      } else {
        st = run_simple(pg, w, qd, do_commit ? "COMMIT" : "ROLLBACK",
                        do_commit ? "commit" : "rollback", &d, tag, sizeof tag, &rt, &e);
        if (st == RESIL_OK && do_commit && strncmp(tag, "COMMIT", 6) != 0) {
          st = resil_err_set(&e, RESIL_E_CALLER, "%s: commit: transaction was rolled back",
                             pg->name);
        }
      }
      if (do_commit || st != RESIL_E_CALLER)
        tx_note(tx, st, d, rt, &e);
      else
        tx_note(tx, RESIL_OK, d, false, NULL);
      if (st != RESIL_OK && !do_commit && d == DISP_KEEP) tx->d = DISP_BROKEN;
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
  /* In a child of fork the reaper thread does not exist: joining it would
   * wait forever; the connections it was cancelling are the parent's and
   * stay allocated here. */
  if (pg->rp.started && pg->rp.pid == getpid()) {
    pthread_mutex_lock(&pg->rp.mu);
    pg->rp.stop = true;
    pthread_cond_signal(&pg->rp.cv);
    pthread_mutex_unlock(&pg->rp.mu);
    pthread_join(pg->rp.thread, NULL);
    pthread_cond_destroy(&pg->rp.cv);
    pthread_mutex_destroy(&pg->rp.mu);
  }
  resil_dep_free(pg->dep);
  free(pg->rp.q);
  free(pg->options);
  free(pg->probe_sql);
  resil_password_file_free(pg->pwfile);
  if (pg->opts) PQconninfoFree(pg->opts);
  free(pg->conninfo);
  free(pg);
}

resil_pg *resil_pg_new(const resil_pg_config *cfg, resil_err *err) {
  if (resil_pg_config_validate(cfg, err) != RESIL_OK) return NULL;
  resil_pg *pg = calloc(1, sizeof *pg);
  if (!pg) {
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", cfg->dep.name);
    return NULL;
  }
  snprintf(pg->name, sizeof pg->name, "%s", cfg->dep.name);
  pg->cfg = *cfg;
  pg->cfg.application_name = NULL; /* copied into app_name if used */
  pg->cfg.conninfo = pg->conninfo = resil_x_strdup(cfg->conninfo);
  pg->cfg.probe_sql = pg->probe_sql = resil_x_strdup(cfg->probe_sql);
  pg->cfg.password_file = NULL; /* the path is kept by pwfile */
  if (cfg->password_file) {
    resil_err fe;
    pg->pwfile = resil_password_file_open(cfg->password_file, cfg->password_file_check_ms, &fe);
    if (!pg->pwfile) {
      resil_err_set(err, fe.status, "%s: password_file: %s", cfg->dep.name, fe.msg);
      goto fail;
    }
  }
  if (!pg->conninfo || !pg->probe_sql) {
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", pg->name);
    goto fail;
  }
  if (cfg->application_name)
    snprintf(pg->app_name, sizeof pg->app_name, "%s", cfg->application_name);
  char *emsg = NULL;
  pg->opts = PQconninfoParse(pg->conninfo, &emsg);
  if (!pg->opts) { /* validated above: only out of memory is left */
    PQfreemem(emsg);
    resil_err_set(err, RESIL_E_NOMEM, "%s: conninfo: out of memory", pg->name);
    goto fail;
  }
  pg->cfg.application_name = cfg->application_name ? pg->app_name : NULL;
  if (build_keys(pg, err) != RESIL_OK) goto fail;

  /* The reaper. */
  pg->rp.cap = cfg->reaper_queue_max;
  pg->rp.q = calloc(pg->rp.cap, sizeof *pg->rp.q);
  if (!pg->rp.q) {
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", pg->name);
    goto fail;
  }
  if (pthread_mutex_init(&pg->rp.mu, NULL) != 0) {
    resil_err_set(err, RESIL_E_SYSTEM, "%s: pthread_mutex_init failed", pg->name);
    goto fail;
  }
  if (pthread_cond_init(&pg->rp.cv, NULL) != 0) {
    pthread_mutex_destroy(&pg->rp.mu);
    resil_err_set(err, RESIL_E_SYSTEM, "%s: pthread_cond_init failed", pg->name);
    goto fail;
  }
  int r = pthread_create(&pg->rp.thread, NULL, reaper_main, pg);
  if (r != 0) {
    pthread_cond_destroy(&pg->rp.cv);
    pthread_mutex_destroy(&pg->rp.mu);
    resil_err_set(err, RESIL_E_SYSTEM, "%s: creating the reaper thread: %s", pg->name,
                  strerror(r));
    goto fail;
  }
  pg->rp.started = true;
  pg->rp.pid = getpid();

  pg->dep = resil_dep_new(&cfg->dep, err);
  if (!pg->dep) goto fail;
  resil_pool_config pc = cfg->pool;
  if (!pc.name) pc.name = pg->name;
  pc.connect_timeout_ms = cfg->connect_timeout_ms;
  resil_pool_connector cn = {
      .connect = pg_connect, .validate = pg_validate, .close = pg_close, .ctx = pg,
      .abandon = pg_abandon};
  pg->pool = resil_pool_new(&pc, &cn, err);
  if (!pg->pool) goto fail;
  resil_dep_attach_pool(pg->dep, pg->pool);
  resil_dep_set_memory_bound(pg->dep, resil_pg_config_memory_bound(cfg));
  if (resil_dep_set_probe(pg->dep, pg_probe, pg) != RESIL_OK) {
    resil_err_set(err, RESIL_E_SYSTEM, "%s: cannot start the recovery probe", pg->name);
    goto fail;
  }
  return pg;
fail:
  resil_pg_free(pg);
  return NULL;
}
