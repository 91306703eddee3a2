/* Configuration from the environment, a KEY=VALUE file and C structs, with
 * every problem reported at once and named by its variable. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resil/admin.h"
#include "resil/config.h"
#include "resil/emf.h"
#include "resil/resolve.h"
#include "internal.h"

#define MAX_KINDS 16
#define ENV_PREFIX "RESIL_DEP_"

/* ---- key specs of the core ------------------------------------------------ */

#define DK(k, t, f, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_dep_config, f), .help = h}
static const resil_key_spec dep_keys[] = {
    DK("timeout_ms", MS, timeout_ms, "cap on each attempt; the call's deadline if the caller has none"),
    DK("critical", BOOL, critical, "readiness depends on this dependency"),
    DK("breaker.consecutive_failures", UINT, breaker.consecutive_failures, "trip after N failures in a row (0 = off)"),
    DK("breaker.failure_rate_percent", UINT, breaker.failure_rate_percent, "trip at this failure % in the window (0 = off)"),
    DK("breaker.slow_call_rate_percent", UINT, breaker.slow_call_rate_percent, "trip at this slow-call % (0 = off)"),
    DK("breaker.slow_call_ms", MS, breaker.slow_call_ms, "a call longer than this is slow"),
    DK("breaker.minimum_calls", UINT, breaker.minimum_calls, "rates need this many calls in the window"),
    DK("breaker.window_ms", MS, breaker.window_ms, "rolling window length"),
    DK("breaker.window_buckets", UINT, breaker.window_buckets, "buckets in the window"),
    DK("breaker.open_ms", MS, breaker.open_ms, "first break duration"),
    DK("breaker.open_multiplier", DOUBLE, breaker.open_multiplier, "break growth on repeated trips"),
    DK("breaker.open_max_ms", MS, breaker.open_max_ms, "longest break"),
    DK("breaker.open_jitter_percent", UINT, breaker.open_jitter_percent, "+/- jitter on breaks"),
    DK("breaker.half_open_probes", UINT, breaker.half_open_probes, "probes in half-open; successes to close"),
    DK("limit.max_concurrent", UINT, limit.max_concurrent, "concurrent calls"),
    DK("limit.max_waiters", UINT, limit.max_waiters, "callers queued for a slot (0 = none)"),
    DK("limit.max_wait_ms", MS, limit.max_wait_ms, "longest wait for a slot"),
    DK("retry.max_attempts", UINT, retry.max_attempts, "attempts including the first"),
    DK("retry.base_backoff_ms", MS, retry.base_backoff_ms, "first backoff cap"),
    DK("retry.multiplier", DOUBLE, retry.multiplier, "backoff growth"),
    DK("retry.max_backoff_ms", MS, retry.max_backoff_ms, "largest backoff"),
    DK("retry.budget_percent", UINT, retry.budget_percent, "retries <= this % of calls"),
    DK("retry.budget_min_per_s", UINT, retry.budget_min_per_s, "retries always allowed per second"),
    DK("retry.budget_window_ms", MS, retry.budget_window_ms, "retry budget window"),
    DK("probe_interval_ms", MS, probe_interval_ms, "recovery probe period while the breaker is open (0 = off)"),
    DK("probe_timeout_ms", MS, probe_timeout_ms, "bound on one recovery probe (0 = min(timeout_ms, 1s))"),
    DK("limit.adaptive", STRING, adaptive.algorithm, "adaptive concurrency limit: off, gradient or aimd"),
    DK("limit.min", UINT, adaptive.min, "adaptive: lowest limit, and where it starts"),
    DK("limit.window_ms", MS, adaptive.window_ms, "adaptive: shortest window between two decisions"),
    DK("limit.min_samples", UINT, adaptive.min_samples, "adaptive: calls a window needs before deciding"),
    DK("limit.tolerance", DOUBLE, adaptive.tolerance, "gradient: latency up to this x baseline is not congestion"),
    DK("limit.smoothing", DOUBLE, adaptive.smoothing, "gradient: weight of one window's verdict (0.01..1)"),
    DK("limit.baseline_ms", MS, adaptive.baseline_ms, "gradient: the baseline is the lowest window latency over this long"),
    DK("limit.backoff", DOUBLE, adaptive.backoff, "adaptive: a window with drops multiplies the limit by at most this"),
    DK("throttle", BOOL, throttle.enabled, "client-side throttling: shed calls when few succeed"),
    DK("throttle.k", DOUBLE, throttle.k, "throttling: shed when fewer than 1/K of calls sent succeed"),
    DK("throttle.window_ms", MS, throttle.window_ms, "throttling: rolling window"),
    DK("throttle.min_requests", UINT, throttle.min_requests, "throttling: calls sent in the window before shedding"),
    DK("rate_limit.per_s", UINT, rate_limit.per_s, "outbound rate limit: calls per second (0 = off); a call waits for a token only within limit.max_wait_ms and its deadline, else rate_limited"),
    DK("rate_limit.burst", UINT, rate_limit.burst, "calls that may go at once after a quiet spell (with rate_limit.per_s)"),
    DK("pushback.max_pause_ms", MS, pushback.max_pause_ms, "longest pause of every call a server's Retry-After (429/503) can cause (0 = ignore pushback)"),
    DK("pushback.pause_ms", MS, pushback.pause_ms, "pause on pushback naming no time: Redis BUSY/LOADING, PostgreSQL 53300, HTTP 429 without Retry-After (0 = off)"),
};

#define PK(k, t, f, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_pool_config, f), .help = h}
static const resil_key_spec pool_keys[] = {
    PK("pool.max_size", UINT, max_size, "connections at most"),
    PK("pool.min_idle", UINT, min_idle, "connections kept open and pre-warmed"),
    PK("pool.max_waiters", UINT, max_waiters, "callers queued for a connection"),
    PK("pool.acquire_timeout_ms", MS, acquire_timeout_ms, "longest wait for a connection"),
    PK("pool.connect_timeout_ms", MS, connect_timeout_ms, "bound on one connect"),
    PK("pool.max_lifetime_ms", MS, max_lifetime_ms, "rotate connections after (0 = never)"),
    PK("pool.lifetime_jitter_percent", UINT, lifetime_jitter_percent, "lifetime shortened by up to this %"),
    PK("pool.idle_timeout_ms", MS, idle_timeout_ms, "close idle connections after (0 = never)"),
    PK("pool.validate_after_idle_ms", MS, validate_after_idle_ms, "validate on borrow if idle longer"),
    PK("pool.validate_timeout_ms", MS, validate_timeout_ms, "bound on validation"),
    PK("pool.housekeeping_ms", MS, housekeeping_ms, "background maintenance period (0 = off)"),
};

#define SK(k, t, f) {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_service_config, f)}
static const resil_key_spec svc_keys[] = {
    SK("RESIL_SERVICE", STRING, service),
    SK("RESIL_ADMIN_ADDR", STRING, admin_addr),
    SK("RESIL_ADMIN_PORT", UINT, admin_port),
    SK("RESIL_EMF_NAMESPACE", STRING, emf_namespace),
    SK("RESIL_EMF_INTERVAL_MS", MS, emf_interval_ms),
    SK("RESIL_DRAIN_GRACE_MS", MS, drain_grace_ms),
    SK("RESIL_DRAIN_TIMEOUT_MS", MS, drain_timeout_ms),
    SK("RESIL_PREWARM_TIMEOUT_MS", MS, prewarm_timeout_ms),
    SK("RESIL_EVENT_LOG", STRING, event_log),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const resil_key_spec *resil_config_dep_keys(size_t *n) {
  if (n) *n = COUNT(dep_keys);
  return dep_keys;
}
const resil_key_spec *resil_config_pool_keys(size_t *n) {
  if (n) *n = COUNT(pool_keys);
  return pool_keys;
}

/* ---- the core kind ------------------------------------------------------- */

static void core_init(void *cfg, const char *name) { resil_dep_config_init(cfg, name); }
static resil_status core_validate(const void *cfg, resil_err *err) {
  return resil_dep_config_validate(cfg, err);
}
static resil_dep_config *core_dep(void *cfg) { return cfg; }
static void *core_create(const void *cfg, resil_err *err) { return resil_dep_new(cfg, err); }
static void core_destroy(void *h) { resil_dep_free(h); }
static resil_dep *core_dep_of(void *h) { return h; }

static const resil_config_kind core_kind = {
    .name = "core",
    .size = sizeof(resil_dep_config),
    .init = core_init,
    .validate = core_validate,
    .dep_config = core_dep,
    .pool_config = NULL,
    .keys = NULL,
    .nkeys = 0,
    .create = core_create,
    .destroy = core_destroy,
    .dep_of = core_dep_of,
};

const resil_config_kind *resil_config_core_kind(void) { return &core_kind; }

static pthread_mutex_t kinds_mu = PTHREAD_MUTEX_INITIALIZER;
static const resil_config_kind *kinds[MAX_KINDS];
static size_t nkinds;

resil_status resil_config_register_kind(const resil_config_kind *k, resil_err *err) {
  if (!k || !k->name || !*k->name || !k->init || !k->validate || !k->dep_config || !k->size ||
      (k->nkeys && !k->keys))
    return resil_err_set(err, RESIL_E_INVALID,
                         "config: kind '%s' lacks a name, size, init, validate or dep_config",
                         k && k->name ? k->name : "(null)");
  pthread_mutex_lock(&kinds_mu);
  for (size_t i = 0; i < nkinds; i++)
    if (strcmp(kinds[i]->name, k->name) == 0) {
      kinds[i] = k;
      pthread_mutex_unlock(&kinds_mu);
      return RESIL_OK;
    }
  if (nkinds == MAX_KINDS) {
    pthread_mutex_unlock(&kinds_mu);
    return resil_err_set(err, RESIL_E_NOMEM, "config: more than %d kinds", MAX_KINDS);
  }
  kinds[nkinds++] = k;
  pthread_mutex_unlock(&kinds_mu);
  return RESIL_OK;
}

static const resil_config_kind *find_kind(const char *name, size_t len) {
  if (len == 4 && strncmp(name, "core", 4) == 0) return &core_kind;
  const resil_config_kind *found = NULL;
  pthread_mutex_lock(&kinds_mu);
  for (size_t i = 0; i < nkinds && !found; i++)
    if (strlen(kinds[i]->name) == len && strncmp(kinds[i]->name, name, len) == 0) found = kinds[i];
  pthread_mutex_unlock(&kinds_mu);
  return found;
}

static void kind_names(resil_sbuf *b) {
  resil__sb_printf(b, "core");
  pthread_mutex_lock(&kinds_mu);
  for (size_t i = 0; i < nkinds; i++) resil__sb_printf(b, ", %s", kinds[i]->name);
  pthread_mutex_unlock(&kinds_mu);
}

/* ---- value parsing ---------------------------------------------------------- */

static resil_status bad(resil_err *err, const char *what, const char *v, const char *want) {
  return resil_err_set(err, RESIL_E_INVALID, "%s: '%.80s' is not %s", what, v, want);
}

static bool digits(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
    if (v > UINT32_MAX) return false;
  }
  *out = v;
  return true;
}

resil_status resil_parse_uint(const char *what, const char *v, uint32_t *out, resil_err *err) {
  uint64_t x;
  if (!v || !digits(v, strlen(v), &x))
    return bad(err, what, v ? v : "", "a whole number from 0 to 4294967295");
  *out = (uint32_t)x;
  return RESIL_OK;
}

resil_status resil_parse_ms(const char *what, const char *v, uint32_t *out, resil_err *err) {
  static const struct {
    const char *unit;
    uint64_t ms;
  } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  const char *want = "a duration: a whole number with an optional unit ms, s, m or h";
  if (!v) return bad(err, what, "", want);
  size_t n = strlen(v), d = 0;
  while (d < n && v[d] >= '0' && v[d] <= '9') d++;
  uint64_t x, mult = 1;
  if (!digits(v, d, &x)) return bad(err, what, v, want);
  if (d < n) {
    size_t u;
    for (u = 0; u < COUNT(units); u++)
      if (strcmp(v + d, units[u].unit) == 0) break;
    if (u == COUNT(units)) return bad(err, what, v, want);
    mult = units[u].ms;
  }
  if (x * mult > UINT32_MAX) return bad(err, what, v, "a duration below 49 days");
  *out = (uint32_t)(x * mult);
  return RESIL_OK;
}

resil_status resil_parse_bool(const char *what, const char *v, bool *out, resil_err *err) {
  static const char *yes[] = {"true", "1", "yes", "on"}, *no[] = {"false", "0", "no", "off"};
  for (size_t i = 0; v && i < 4; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return RESIL_OK;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return RESIL_OK;
    }
  }
  return bad(err, what, v ? v : "", "a boolean (true/false, 1/0, yes/no, on/off)");
}

resil_status resil_parse_size(const char *what, const char *v, size_t *out, resil_err *err) {
  const char *want = "a size: a whole number of bytes with an optional unit k, M or G";
  if (!v) return bad(err, what, "", want);
  size_t n = strlen(v), d = 0;
  while (d < n && v[d] >= '0' && v[d] <= '9') d++;
  uint64_t x = 0, mult = 1;
  if (d == 0 || d > 12) return bad(err, what, v, want);
  for (size_t i = 0; i < d; i++) x = x * 10 + (uint64_t)(v[i] - '0');
  if (d < n) {
    if (n - d != 1) return bad(err, what, v, want);
    switch (v[d]) {
      case 'k': case 'K': mult = 1024; break;
      case 'M': mult = 1024 * 1024; break;
      case 'G': mult = 1024ull * 1024 * 1024; break;
      default: return bad(err, what, v, want);
    }
  }
  if (x > (uint64_t)SIZE_MAX / mult) return bad(err, what, v, want);
  *out = (size_t)(x * mult);
  return RESIL_OK;
}

/* A finite decimal number with nothing around it: no leading or trailing
 * space (strtod would skip the leading one), no hex, inf or nan. */
static resil_status parse_double(const char *what, const char *v, double *out, resil_err *err) {
  if (!v || !*v || isspace((unsigned char)*v)) return bad(err, what, v ? v : "", "a number");
  for (const char *q = v; *q; q++)
    if (!strchr("0123456789.eE+-", *q)) return bad(err, what, v, "a number");
  char *end = NULL;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !isfinite(x)) return bad(err, what, v, "a number");
  *out = x;
  return RESIL_OK;
}

/* ---- the loaded configuration --------------------------------------------- */

typedef struct dep_entry {
  char name[64];
  char env[64]; /* ORDERS_DB */
  const resil_config_kind *kind;
  void *cfg;
  const char *set_keys[128]; /* keys given explicitly (for consistency checks) */
  size_t nset;
} dep_entry;

struct resil_config {
  dep_entry *deps;
  size_t n;
  resil_service_config svc;
  char **strings;
  size_t nstrings, capstrings;
  char hash[17];
};

static const char *own(resil_config *c, const char *s, size_t len) {
  if (c->nstrings == c->capstrings) {
    size_t cap = c->capstrings ? c->capstrings * 2 : 32;
    char **ns = realloc(c->strings, cap * sizeof *ns);
    if (!ns) return NULL;
    c->strings = ns;
    c->capstrings = cap;
  }
  char *p = malloc(len + 1);
  if (!p) return NULL;
  memcpy(p, s, len);
  p[len] = 0;
  c->strings[c->nstrings++] = p;
  return p;
}

void resil_config_free(resil_config *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++) free(c->deps[i].cfg);
  for (size_t i = 0; i < c->nstrings; i++) free(c->strings[i]);
  free(c->strings);
  free(c->deps);
  free(c);
}

size_t resil_config_count(const resil_config *c) { return c ? c->n : 0; }
const char *resil_config_name(const resil_config *c, size_t i) {
  return c && i < c->n ? c->deps[i].name : NULL;
}
const char *resil_config_kind_name(const resil_config *c, size_t i) {
  return c && i < c->n ? c->deps[i].kind->name : NULL;
}
const resil_config_kind *resil_config_kind_of(const resil_config *c, size_t i) {
  return c && i < c->n ? c->deps[i].kind : NULL;
}
void *resil_config_get(const resil_config *c, size_t i) {
  return c && i < c->n ? c->deps[i].cfg : NULL;
}
void *resil_config_find(const resil_config *c, const char *name, const char *kind) {
  for (size_t i = 0; c && name && i < c->n; i++)
    if (strcmp(c->deps[i].name, name) == 0)
      return !kind || strcmp(c->deps[i].kind->name, kind) == 0 ? c->deps[i].cfg : NULL;
  return NULL;
}
const resil_service_config *resil_config_service(const resil_config *c) {
  return c ? &c->svc : NULL;
}
const char *resil_config_hash(const resil_config *c) { return c ? c->hash : NULL; }

uint64_t resil_config_memory_bound(const resil_config *c, size_t i) {
  if (!c || i >= c->n) return 0;
  const dep_entry *d = &c->deps[i];
  if (d->kind->memory_bound) return d->kind->memory_bound(d->cfg);
  return resil_dep_config_memory_bound(d->kind->dep_config(d->cfg));
}

/* ---- key tables of one dependency ------------------------------------------ */

typedef struct table {
  const resil_key_spec *keys;
  size_t n;
  void *base;
} table;

static int tables_of(const dep_entry *d, table t[3]) {
  int n = 0;
  t[n++] = (table){dep_keys, COUNT(dep_keys), d->kind->dep_config(d->cfg)};
  resil_pool_config *pc = d->kind->pool_config ? d->kind->pool_config(d->cfg) : NULL;
  if (pc) t[n++] = (table){pool_keys, COUNT(pool_keys), pc};
  if (d->kind->nkeys) t[n++] = (table){d->kind->keys, d->kind->nkeys, d->cfg};
  return n;
}

/* A pool key "pool.X" is hidden when the kind has its own key "X" (e.g. an
 * adapter's connect_timeout_ms replaces pool.connect_timeout_ms): a key that
 * would be silently ignored must not be accepted. */
static bool shadowed(const dep_entry *d, const resil_key_spec *ks) {
  if (ks < pool_keys || ks >= pool_keys + COUNT(pool_keys)) return false;
  for (size_t k = 0; k < d->kind->nkeys; k++)
    if (strcmp(d->kind->keys[k].key, ks->key + 5) == 0) return true;
  return false;
}

/* "breaker.window_ms" -> "BREAKER_WINDOW_MS"; "orders-db" -> "ORDERS_DB" */
static void env_form(char *out, size_t size, const char *in) {
  size_t i = 0;
  for (; in[i] && i + 1 < size; i++) {
    char ch = in[i];
    out[i] = (ch == '.' || ch == '-') ? '_' : (char)toupper((unsigned char)ch);
  }
  out[i] = 0;
}

static void var_name(char *out, size_t size, const dep_entry *d, const char *key) {
  char k[96];
  env_form(k, sizeof k, key);
  snprintf(out, size, ENV_PREFIX "%s_%s", d->env, k);
}

static const resil_key_spec *find_key(const dep_entry *d, const char *envkey, void **base) {
  table t[3];
  int nt = tables_of(d, t);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++) {
      char e[96];
      if (shadowed(d, &t[i].keys[k])) continue;
      env_form(e, sizeof e, t[i].keys[k].key);
      if (strcmp(e, envkey) == 0) {
        *base = t[i].base;
        return &t[i].keys[k];
      }
    }
  return NULL;
}

static const resil_key_spec *find_key_by_field(const dep_entry *d, const char *field,
                                               size_t len) {
  table t[3];
  int nt = tables_of(d, t);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++)
      if (strlen(t[i].keys[k].key) == len && strncmp(t[i].keys[k].key, field, len) == 0)
        return &t[i].keys[k];
  return NULL;
}

/* Levenshtein distance, capped: for "did you mean" hints. */
static unsigned edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63) return 99;
  unsigned row[64];
  for (size_t j = 0; j <= lb; j++) row[j] = (unsigned)j;
  for (size_t i = 1; i <= la; i++) {
    unsigned prev = row[0];
    row[0] = (unsigned)i;
    for (size_t j = 1; j <= lb; j++) {
      unsigned cur = row[j];
      unsigned sub = prev + (a[i - 1] != b[j - 1]);
      unsigned del = row[j] + 1, ins = row[j - 1] + 1;
      row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
      prev = cur;
    }
  }
  return row[lb];
}

static void suggest_key(resil_sbuf *b, const dep_entry *d, const char *envkey) {
  table t[3];
  int nt = tables_of(d, t);
  const char *best = NULL;
  unsigned bestd = 4;
  char e[96];
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++) {
      if (shadowed(d, &t[i].keys[k])) continue;
      env_form(e, sizeof e, t[i].keys[k].key);
      unsigned dist = edit_distance(envkey, e);
      if (dist < bestd) {
        bestd = dist;
        best = t[i].keys[k].key;
      }
    }
  if (best) {
    char v[200];
    var_name(v, sizeof v, d, best);
    resil__sb_printf(b, " (did you mean %s?)", v);
  }
}

/* ---- problems ----------------------------------------------------------- */

typedef struct report {
  resil_sbuf b;
  unsigned n;
} report;

static void problem(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(report *r, const char *fmt, ...) {
  char line[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  resil__sb_printf(&r->b, "%s%s", r->n ? "\n" : "", line);
  r->n++;
}

/* True if a problem about variable v was already reported. */
static bool reported(const report *r, const char *v) {
  size_t n = strlen(v);
  for (const char *p = r->b.p; p && *p;) {
    if (strncmp(p, v, n) == 0 && (p[n] == ':' || p[n] == ' ')) return true;
    p = strchr(p, '\n');
    if (p) p++;
  }
  return false;
}

/* Store value v (from `source`) into field spec at base. */
static void set_value(resil_config *c, report *r, const char *source, const resil_key_spec *ks,
                      void *base, const char *v) {
  resil_err e;
  char *field = (char *)base + ks->offset;
  resil_status st = RESIL_OK;
  switch (ks->type) {
    case RESIL_KEY_UINT: st = resil_parse_uint(source, v, (uint32_t *)(void *)field, &e); break;
    case RESIL_KEY_MS: st = resil_parse_ms(source, v, (uint32_t *)(void *)field, &e); break;
    case RESIL_KEY_BOOL: st = resil_parse_bool(source, v, (bool *)(void *)field, &e); break;
    case RESIL_KEY_DOUBLE: st = parse_double(source, v, (double *)(void *)field, &e); break;
    case RESIL_KEY_SIZE: st = resil_parse_size(source, v, (size_t *)(void *)field, &e); break;
    case RESIL_KEY_STRING:
    case RESIL_KEY_SECRET: {
      const char *s = own(c, v, strlen(v));
      if (!s) {
        problem(r, "%s: out of memory", source);
        return;
      }
      *(const char **)(void *)field = s;
      break;
    }
  }
  if (st == RESIL_OK && (ks->type == RESIL_KEY_UINT || ks->type == RESIL_KEY_MS) &&
      (ks->min || ks->max)) {
    uint32_t x = *(uint32_t *)(void *)field;
    if (x < ks->min || x > ks->max)
      problem(r, "%s: %u is outside %u..%u", source, x, ks->min, ks->max);
    return;
  }
  if (st != RESIL_OK) {
    if (ks->type == RESIL_KEY_SECRET) /* never echo a secret */
      problem(r, "%s: invalid value", source);
    else
      problem(r, "%s", e.msg);
  }
}

/* Rewrite "dep: field: message; dep: field2: ..." from a kind's validator
 * into one problem per item, named by the environment variable. */
static void translate(report *r, const dep_entry *d, const char *msg) {
  char prefix[80];
  snprintf(prefix, sizeof prefix, "%s: ", d->name);
  const char *p = msg;
  while (*p) {
    const char *end = strstr(p, "; ");
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char item[600];
    snprintf(item, sizeof item, "%.*s", (int)len, p);
    const char *body = item;
    if (strncmp(body, prefix, strlen(prefix)) == 0) body += strlen(prefix);
    const char *colon = strstr(body, ": ");
    const resil_key_spec *ks = colon ? find_key_by_field(d, body, (size_t)(colon - body)) : NULL;
    if (ks) {
      char v[200];
      var_name(v, sizeof v, d, ks->key);
      if (!reported(r, v)) problem(r, "%s: %s", v, colon + 2);
    } else {
      problem(r, "dependency %s: %s", d->name, body);
    }
    p += len;
    if (end) p += 2;
  }
}

/* ---- collecting KEY=VALUE pairs ------------------------------------------- */

typedef struct kv {
  const char *key, *value; /* owned by the config */
  char source[200];        /* variable name, or file:line */
} kv;

typedef struct kvs {
  kv *v;
  size_t n, cap;
} kvs;

static bool kv_add(resil_config *c, kvs *l, const char *k, size_t kl, const char *v, size_t vl,
                   const char *source) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    kv *nv = realloc(l->v, cap * sizeof *nv);
    if (!nv) return false;
    l->v = nv;
    l->cap = cap;
  }
  kv *e = &l->v[l->n];
  e->key = own(c, k, kl);
  e->value = own(c, v, vl);
  if (!e->key || !e->value) return false;
  resil__strlcpy(e->source, source, sizeof e->source);
  l->n++;
  return true;
}

/* The last value given for key (env entries come after file entries). */
static const kv *kv_get(const kvs *l, const char *key) {
  for (size_t i = l->n; i-- > 0;)
    if (strcmp(l->v[i].key, key) == 0) return &l->v[i];
  return NULL;
}

static void read_file(resil_config *c, kvs *l, report *r, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    problem(r, "RESIL_CONFIG_FILE: cannot open '%s': %s", path, strerror(errno));
    return;
  }
  char line[4096];
  unsigned lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    size_t n = strlen(line);
    if (n == sizeof line - 1 && line[n - 1] != '\n') {
      problem(r, "%s:%u: line longer than %zu bytes", path, lineno, sizeof line - 2);
      int ch;
      while ((ch = fgetc(f)) != EOF && ch != '\n') {
      }
      continue;
    }
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || isspace((unsigned char)line[n - 1])))
      line[--n] = 0;
    char *s = line;
    while (isspace((unsigned char)*s)) s++;
    if (!*s || *s == '#') continue;
    if (strncmp(s, "export ", 7) == 0) s += 7;
    char *eq = strchr(s, '=');
    char where[96];
    snprintf(where, sizeof where, "%.70s:%u", path, lineno);
    if (!eq) {
      problem(r, "%s: expected KEY=VALUE", where);
      continue;
    }
    char *ke = eq;
    while (ke > s && isspace((unsigned char)ke[-1])) ke--;
    char *v = eq + 1;
    while (isspace((unsigned char)*v)) v++;
    size_t vl = strlen(v);
    if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
      v++;
      vl -= 2;
    }
    char src[200];
    snprintf(src, sizeof src, "%.*s (%s)", (int)(ke - s > 60 ? 60 : ke - s), s, where);
    if (strncmp(s, "RESIL_", 6) != 0) {
      problem(r, "%s: keys in the config file must start with RESIL_", where);
      continue;
    }
    if (!kv_add(c, l, s, (size_t)(ke - s), v, vl, src)) problem(r, "%s: out of memory", where);
  }
  fclose(f);
}

/* ---- RESIL_DEPS ----------------------------------------------------------- */

static bool name_char(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_' || ch == '-' || ch == '.';
}

/* Two dependencies are ambiguous when a variable could belong to either:
 * b's prefix is a's prefix + "_" + T (a = DB, b = DB_CONNECT, T = CONNECT)
 * and a has a key T_K where K is a key of b (DB's CONNECT_TIMEOUT_MS and
 * DB_CONNECT's TIMEOUT_MS are both RESIL_DEP_DB_CONNECT_TIMEOUT_MS). Such a
 * variable would silently go to one of them and the other's key could not
 * be set at all, so the pair is an error whether or not the variable is
 * set. Names that merely share a prefix (orders, orders-db) are fine: no
 * key of the shorter one starts with DB_. */
static void check_ambiguous(report *r, const char *source, const dep_entry *a,
                            const dep_entry *b) {
  size_t la = strlen(a->env);
  if (strncmp(b->env, a->env, la) != 0 || b->env[la] != '_') return;
  const char *t = b->env + la + 1;
  size_t lt = strlen(t);
  table tb[3];
  int nt = tables_of(a, tb);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < tb[i].n; k++) {
      if (shadowed(a, &tb[i].keys[k])) continue;
      char e[96];
      env_form(e, sizeof e, tb[i].keys[k].key);
      void *base;
      if (strncmp(e, t, lt) != 0 || e[lt] != '_' || !find_key(b, e + lt + 1, &base)) continue;
      problem(r,
              "%s: dependency names %s and %s are ambiguous: " ENV_PREFIX
              "%s_%s would be both %s's %s and %s's %s (rename one of them)",
              source, a->name, b->name, a->env, e, a->name, e, b->name, e + lt + 1);
      return;
    }
}

static void parse_deps(resil_config *c, report *r, const kv *deps) {
  const char *p = deps->value;
  size_t cap = 1;
  for (const char *q = p; *q; q++) cap += *q == ',';
  c->deps = calloc(cap, sizeof *c->deps);
  if (!c->deps) {
    problem(r, "RESIL_DEPS: out of memory");
    return;
  }
  while (*p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *s = p, *e = p + len;
    while (s < e && isspace((unsigned char)*s)) s++;
    while (e > s && isspace((unsigned char)e[-1])) e--;
    const char *colon = memchr(s, ':', (size_t)(e - s));
    const char *ne = colon ? colon : e;
    size_t nl = (size_t)(ne - s);
    bool ok = nl > 0 && nl < 64;
    for (const char *q = s; ok && q < ne; q++) ok = name_char(*q);
    if (!ok) {
      problem(r, "%s: '%.*s' is not a dependency name (1..63 of A-Z a-z 0-9 _ . -)",
              deps->source, (int)(e - s > 80 ? 80 : e - s), s);
    } else {
      const resil_config_kind *k = &core_kind;
      if (colon) {
        k = find_kind(colon + 1, (size_t)(e - colon - 1));
        if (!k) {
          resil_sbuf kn = {0};
          kind_names(&kn);
          problem(r, "%s: dependency %.*s has unknown kind '%.*s' (known: %s)", deps->source,
                  (int)nl, s, (int)(e - colon - 1), colon + 1, kn.p ? kn.p : "core");
          free(kn.p);
        }
      }
      dep_entry *d = &c->deps[c->n];
      memcpy(d->name, s, nl);
      d->name[nl] = 0;
      env_form(d->env, sizeof d->env, d->name);
      bool dup = false;
      for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->deps[i].name, d->name) == 0) {
          problem(r, "%s: dependency %s is listed twice", deps->source, d->name);
          dup = true;
        } else if (strcmp(c->deps[i].env, d->env) == 0) {
          problem(r, "%s: dependencies %s and %s both map to " ENV_PREFIX "%s_*", deps->source,
                  c->deps[i].name, d->name, d->env);
          dup = true;
        }
      }
      if (k && !dup) {
        d->kind = k;
        d->cfg = calloc(1, k->size);
        if (!d->cfg) {
          problem(r, "RESIL_DEPS: out of memory");
        } else {
          k->init(d->cfg, d->name);
          resil_dep_config *dc = k->dep_config(d->cfg);
          dc->name = d->name;
          c->n++;
        }
      }
    }
    p += len;
    if (end) p++;
  }
  if (c->n == 0 && r->n == 0) problem(r, "%s: lists no dependency", deps->source);
  for (size_t i = 0; i < c->n; i++)
    for (size_t j = 0; j < c->n; j++)
      if (i != j) check_ambiguous(r, deps->source, &c->deps[i], &c->deps[j]);
}

/* ---- assigning keys -------------------------------------------------------- */

static void assign(resil_config *c, report *r, const kv *e) {
  if (!strcmp(e->key, "RESIL_DEPS") || !strcmp(e->key, "RESIL_CONFIG_FILE")) return;
  if (!strcmp(e->key, "RESIL_CLOCK")) { /* read by the fast clock itself (fastclock.c) */
    if (strcmp(e->source, e->key) != 0)
      problem(r, "%s: RESIL_CLOCK works only in the environment (the call path's clock is "
                 "chosen at its first use, before any file is read)", e->source);
    else if (resil__clock_mode_parse(e->value) < 0)
      problem(r, "RESIL_CLOCK: '%.40s' is not auto, tsc or portable", e->value);
    return;
  }
  if (!strcmp(e->key, RESIL_HOSTS_FILE_ENV)) { /* read by the resolver itself (resolve.c) */
    FILE *hf = NULL;
    if (strcmp(e->source, e->key) != 0)
      problem(r, "%s: " RESIL_HOSTS_FILE_ENV " works only in the environment (the resolver "
                 "reads it itself)", e->source);
    else if (e->value[0] && !(hf = fopen(e->value, "re")))
      problem(r, RESIL_HOSTS_FILE_ENV ": cannot read '%.200s': %s", e->value, strerror(errno));
    if (hf) fclose(hf);
    return;
  }
  for (size_t i = 0; i < COUNT(svc_keys); i++)
    if (!strcmp(e->key, svc_keys[i].key)) {
      set_value(c, r, e->source, &svc_keys[i], &c->svc, e->value);
      return;
    }
  if (strncmp(e->key, ENV_PREFIX, strlen(ENV_PREFIX)) != 0) {
    problem(r, "%s: unknown variable (known: RESIL_DEPS, RESIL_CONFIG_FILE, RESIL_CLOCK, "
               "RESIL_HOSTS_FILE, RESIL_SERVICE, "
               "RESIL_ADMIN_ADDR, RESIL_ADMIN_PORT, RESIL_EMF_NAMESPACE, RESIL_EMF_INTERVAL_MS, "
               "RESIL_DRAIN_GRACE_MS, RESIL_DRAIN_TIMEOUT_MS, RESIL_PREWARM_TIMEOUT_MS, "
               "RESIL_EVENT_LOG, "
               ENV_PREFIX "<NAME>_<KEY>)",
            e->source);
    return;
  }
  const char *rest = e->key + strlen(ENV_PREFIX);
  /* the longest dependency prefix followed by '_' and a known key; failing
   * that, the longest prefix (to name the unknown key) */
  dep_entry *best = NULL, *any = NULL;
  size_t bestlen = 0, anylen = 0;
  for (size_t i = 0; i < c->n; i++) {
    size_t l = strlen(c->deps[i].env);
    if (strncmp(rest, c->deps[i].env, l) != 0 || rest[l] != '_') continue;
    void *base;
    if (find_key(&c->deps[i], rest + l + 1, &base) && l > bestlen) {
      best = &c->deps[i];
      bestlen = l;
    }
    if (l > anylen) {
      any = &c->deps[i];
      anylen = l;
    }
  }
  if (!best) {
    best = any;
    bestlen = anylen;
  }
  if (!best) {
    problem(r, "%s: no dependency in RESIL_DEPS matches (names map to upper case with - and . "
               "as _)",
            e->source);
    return;
  }
  void *base;
  const resil_key_spec *ks = find_key(best, rest + bestlen + 1, &base);
  if (!ks) {
    resil_sbuf hint = {0};
    suggest_key(&hint, best, rest + bestlen + 1);
    problem(r, "%s: unknown key %s for %s dependency %s%s", e->source, rest + bestlen + 1,
            best->kind->name, best->name, hint.p ? hint.p : "");
    free(hint.p);
    return;
  }
  set_value(c, r, e->source, ks, base, e->value);
  if (best->nset < sizeof best->set_keys / sizeof best->set_keys[0])
    best->set_keys[best->nset++] = ks->key;
}

static bool was_set(const dep_entry *d, const char *key) {
  for (size_t i = 0; i < d->nset; i++)
    if (strcmp(d->set_keys[i], key) == 0) return true;
  return false;
}

static void check_required(report *r, const dep_entry *d) {
  table t[3];
  int nt = tables_of(d, t);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++) {
      const resil_key_spec *ks = &t[i].keys[k];
      if (!ks->required) continue;
      bool missing = false;
      if (ks->type == RESIL_KEY_STRING || ks->type == RESIL_KEY_SECRET) {
        const char *s = *(const char **)(void *)((char *)t[i].base + ks->offset);
        missing = !s || !*s;
      }
      if (missing) {
        char v[200];
        var_name(v, sizeof v, d, ks->key);
        problem(r, "%s: is required for %s dependency %s", v, d->kind->name, d->name);
      }
    }
}

static void service_defaults(resil_service_config *s) {
  s->service = "service";
  s->admin_addr = "127.0.0.1";
  s->admin_port = 0;
  s->emf_namespace = "resil";
  s->emf_interval_ms = 60000;
  s->drain_grace_ms = 5000;
  s->drain_timeout_ms = 20000;
  s->prewarm_timeout_ms = 10000;
  s->event_log = "json";
}

void resil__service_admin_config(const resil_service_config *s, resil_admin_config *ac) {
  resil_admin_config_init(ac);
  ac->bind_address = s->admin_addr;
  ac->port = (uint16_t)s->admin_port;
}

void resil__service_emf_config(const resil_service_config *s, resil_emf_config *ec) {
  resil_emf_config_init(ec);
  ec->metric_namespace = s->emf_namespace;
  ec->service = s->service;
  ec->interval_ms = s->emf_interval_ms;
}

/* Rewrite "admin.bind_address: msg; emf.service: msg" from the admin and EMF
 * validators into problems named by the RESIL_* variable that set the
 * field. */
static void translate_service(report *r, const char *msg) {
  static const struct {
    const char *field, *var;
  } fields[] = {
      {"admin.bind_address", "RESIL_ADMIN_ADDR"}, {"admin.port", "RESIL_ADMIN_PORT"},
      {"emf.metric_namespace", "RESIL_EMF_NAMESPACE"}, {"emf.service", "RESIL_SERVICE"},
      {"emf.interval_ms", "RESIL_EMF_INTERVAL_MS"},
  };
  for (const char *p = msg; *p;) {
    const char *end = strstr(p, "; ");
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *var = NULL, *rest = p;
    for (size_t i = 0; i < COUNT(fields) && !var; i++) {
      size_t fl = strlen(fields[i].field);
      if (fl + 2 <= len && strncmp(p, fields[i].field, fl) == 0 && p[fl] == ':' &&
          p[fl + 1] == ' ') {
        var = fields[i].var;
        rest = p + fl + 2;
      }
    }
    if (!var)
      problem(r, "RESIL_* process settings: %.*s", (int)len, p);
    else if (!reported(r, var))
      problem(r, "%s: %.*s", var, (int)(len - (size_t)(rest - p)), rest);
    p += len;
    if (end) p += 2;
  }
}

static void check_service(report *r, const resil_service_config *s) {
  if (s->admin_port > 65535) problem(r, "RESIL_ADMIN_PORT: %u is above 65535", s->admin_port);
  if (!s->admin_addr || !*s->admin_addr) problem(r, "RESIL_ADMIN_ADDR: must not be empty");
  if (!s->service || !*s->service) problem(r, "RESIL_SERVICE: must not be empty");
  if (!s->emf_namespace || !*s->emf_namespace)
    problem(r, "RESIL_EMF_NAMESPACE: must not be empty");
  if (s->emf_interval_ms && s->emf_interval_ms < 1000)
    problem(r, "RESIL_EMF_INTERVAL_MS: %u ms is below 1s (0 turns EMF off)", s->emf_interval_ms);
  if (s->drain_timeout_ms == 0)
    problem(r, "RESIL_DRAIN_TIMEOUT_MS: must be > 0 (no wait is unbounded, none is instant)");
  if (s->prewarm_timeout_ms == 0) problem(r, "RESIL_PREWARM_TIMEOUT_MS: must be > 0");
  if (!s->event_log || (strcmp(s->event_log, "json") != 0 && strcmp(s->event_log, "text") != 0 &&
                        strcmp(s->event_log, "off") != 0))
    problem(r, "RESIL_EVENT_LOG: '%.40s' is not json, text or off",
            s->event_log ? s->event_log : "");
  if (s->drain_grace_ms >= s->drain_timeout_ms && s->drain_timeout_ms)
    problem(r, "RESIL_DRAIN_GRACE_MS: %u ms is not below RESIL_DRAIN_TIMEOUT_MS %u ms",
            s->drain_grace_ms, s->drain_timeout_ms);
  /* What resil_service_start() will hand the admin endpoint and the EMF
   * emitter, checked by their own validators. Both are checked even when
   * off (a bad value is bad whether or not it is used yet), and
   * RESIL_SERVICE is also the service label of resil_info. */
  resil_err e;
  resil_admin_config ac;
  resil__service_admin_config(s, &ac);
  if (resil_admin_config_validate(&ac, &e) != RESIL_OK) translate_service(r, e.msg);
  resil_emf_config ec;
  resil__service_emf_config(s, &ec);
  if (!ec.interval_ms) ec.interval_ms = 60000; /* EMF off: check the rest */
  if (resil_emf_config_validate(&ec, &e) != RESIL_OK) translate_service(r, e.msg);
}

/* Cross-field checks the core can make for any kind: a connect timeout set
 * longer than the call timeout can never take effect (the call's deadline
 * ends first), which is a misunderstanding worth stopping a deploy for. */
static void check_consistency(report *r, const dep_entry *d) {
  resil_dep_config *dc = d->kind->dep_config(d->cfg);
  resil_pool_config *pc = d->kind->pool_config ? d->kind->pool_config(d->cfg) : NULL;
  char a[200], b[200];
  if (pc && dc->timeout_ms && pc->connect_timeout_ms > dc->timeout_ms &&
      was_set(d, "pool.connect_timeout_ms")) {
    var_name(a, sizeof a, d, "pool.connect_timeout_ms");
    var_name(b, sizeof b, d, "timeout_ms");
    problem(r, "%s: %u ms is longer than %s %u ms (a connect could never finish in time)", a,
            pc->connect_timeout_ms, b, dc->timeout_ms);
  }
}

/* ---- dump and hash ------------------------------------------------------------ */

static void format_value(char *out, size_t size, const resil_key_spec *ks, const void *base,
                         bool json) {
  const char *field = (const char *)base + ks->offset;
  switch (ks->type) {
    case RESIL_KEY_UINT:
    case RESIL_KEY_MS: snprintf(out, size, "%u", *(const uint32_t *)(const void *)field); break;
    case RESIL_KEY_BOOL:
      snprintf(out, size, "%s", *(const bool *)(const void *)field ? "true" : "false");
      break;
    case RESIL_KEY_DOUBLE: snprintf(out, size, "%g", *(const double *)(const void *)field); break;
    case RESIL_KEY_SIZE: snprintf(out, size, "%zu", *(const size_t *)(const void *)field); break;
    case RESIL_KEY_STRING:
    case RESIL_KEY_SECRET: {
      const char *s = *(const char *const *)(const void *)field;
      if (ks->type == RESIL_KEY_SECRET && s && *s) s = "<redacted>";
      if (!json) {
        snprintf(out, size, "%s", s ? s : "");
        break;
      }
      size_t o = 0;
      out[o++] = '"';
      for (; s && *s && o + 8 < size; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
          out[o++] = '\\';
          out[o++] = (char)ch;
        } else if (ch < 0x20) {
          o += (size_t)snprintf(out + o, size - o, "\\u%04x", ch);
        } else {
          out[o++] = (char)ch;
        }
      }
      out[o++] = '"';
      out[o] = 0;
      break;
    }
  }
}

char *resil_config_dump(const resil_config *c) {
  if (!c) return NULL;
  resil_sbuf b = {0};
  resil__sb_printf(&b, "RESIL_DEPS=");
  for (size_t i = 0; i < c->n; i++)
    resil__sb_printf(&b, "%s%s:%s", i ? "," : "", c->deps[i].name, c->deps[i].kind->name);
  resil__sb_printf(&b, "\n");
  char v[512];
  for (size_t i = 0; i < COUNT(svc_keys); i++) {
    format_value(v, sizeof v, &svc_keys[i], &c->svc, false);
    resil__sb_printf(&b, "%s=%s\n", svc_keys[i].key, v);
  }
  for (size_t i = 0; i < c->n; i++) {
    table t[3];
    int nt = tables_of(&c->deps[i], t);
    for (int j = 0; j < nt; j++)
      for (size_t k = 0; k < t[j].n; k++) {
        if (shadowed(&c->deps[i], &t[j].keys[k])) continue;
        char name[200];
        var_name(name, sizeof name, &c->deps[i], t[j].keys[k].key);
        format_value(v, sizeof v, &t[j].keys[k], t[j].base, false);
        resil__sb_printf(&b, "%s=%s\n", name, v);
      }
  }
  char *out = NULL;
  if (resil__sb_finish(&b, &out, NULL, NULL) != RESIL_OK) return NULL;
  return out;
}

char *resil_config_dump_json(const resil_config *c) {
  if (!c) return NULL;
  resil_sbuf b = {0};
  char v[512];
  resil__sb_printf(&b, "{\"hash\":\"%s\",\"service\":{", c->hash);
  for (size_t i = 0; i < COUNT(svc_keys); i++) {
    format_value(v, sizeof v, &svc_keys[i], &c->svc, true);
    char k[64];
    resil__strlcpy(k, svc_keys[i].key + 6, sizeof k); /* drop RESIL_ */
    for (char *q = k; *q; q++) *q = (char)tolower((unsigned char)*q);
    resil__sb_printf(&b, "%s\"%s\":%s", i ? "," : "", k, v);
  }
  resil__sb_printf(&b, "},\"dependencies\":[");
  for (size_t i = 0; i < c->n; i++) {
    resil__sb_printf(&b, "%s{\"name\":\"%s\",\"kind\":\"%s\",\"settings\":{", i ? "," : "",
                     c->deps[i].name, c->deps[i].kind->name);
    table t[3];
    int nt = tables_of(&c->deps[i], t);
    bool first = true;
    for (int j = 0; j < nt; j++)
      for (size_t k = 0; k < t[j].n; k++) {
        if (shadowed(&c->deps[i], &t[j].keys[k])) continue;
        format_value(v, sizeof v, &t[j].keys[k], t[j].base, true);
        resil__sb_printf(&b, "%s\"%s\":%s", first ? "" : ",", t[j].keys[k].key, v);
        first = false;
      }
    resil__sb_printf(&b, "}}");
  }
  resil__sb_printf(&b, "]}\n");
  char *out = NULL;
  if (resil__sb_finish(&b, &out, NULL, NULL) != RESIL_OK) return NULL;
  return out;
}

static const char *const svc_help[] = {
    "service name: the Service dimension of EMF and a resil_info label; 1..255 bytes, no "
    "control characters",
    "admin endpoint bind address: a numeric IPv4 or IPv6 address (no host names, no brackets)",
    "admin endpoint port; 0 = off",
    "CloudWatch EMF namespace: 1..255 of A-Z a-z 0-9 . - _ / # : and space, not starting AWS/",
    "EMF interval, 1s..24h; 0 = EMF off",
    "keep admitting calls this long after SIGTERM",
    "wait at most this long for in-flight calls at drain",
    "bound on each start-up pre-warm attempt",
    "events (breaker changes) on stderr: json, text or off",
};

static void doc_rows(resil_sbuf *b, const dep_entry *d, const resil_key_spec *keys, size_t n,
                     const void *base, const char *prefix) {
  char v[512], name[200];
  for (size_t k = 0; k < n; k++) {
    if (d && shadowed(d, &keys[k])) continue;
    format_value(v, sizeof v, &keys[k], base, false);
    if (keys[k].required) snprintf(v, sizeof v, "(required)");
    if (!v[0]) snprintf(v, sizeof v, "(none)");
    char ek[96];
    env_form(ek, sizeof ek, keys[k].key);
    snprintf(name, sizeof name, "%s%s", prefix, ek);
    resil__sb_printf(b, "| `%s` | %s | %s |\n", name, v, keys[k].help ? keys[k].help : "");
  }
}

char *resil_config_keys_markdown(const char *kind_name) {
  resil_sbuf b = {0};
  char *out = NULL;
  if (!kind_name) {
    resil_service_config s;
    service_defaults(&s);
    resil__sb_printf(&b, "| `RESIL_DEPS` | (required) | dependencies: name[:kind],... |\n");
    resil__sb_printf(&b, "| `RESIL_CONFIG_FILE` | (none) | KEY=VALUE file read before the "
                         "environment |\n");
    resil__sb_printf(&b, "| `RESIL_CLOCK` | auto | call-path clock: auto, tsc (force the TSC) "
                         "or portable (clock_gettime); environment only |\n");
    resil__sb_printf(&b, "| `RESIL_HOSTS_FILE` | (none) | hosts file (/etc/hosts format) "
                         "consulted before DNS by resil's resolver; environment only |\n");
    for (size_t i = 0; i < COUNT(svc_keys); i++) {
      resil_key_spec ks = svc_keys[i];
      ks.help = svc_help[i];
      doc_rows(&b, NULL, &ks, 1, &s, "");
    }
  } else {
    const resil_config_kind *k = find_kind(kind_name, strlen(kind_name));
    if (!k) return NULL;
    void *cfg = calloc(1, k->size);
    if (!cfg) return NULL;
    k->init(cfg, "NAME");
    dep_entry d = {.kind = k, .cfg = cfg};
    snprintf(d.env, sizeof d.env, "<NAME>");
    table t[3];
    int nt = tables_of(&d, t);
    for (int i = nt - 1; i >= 0; i--) /* the kind's own keys first */
      doc_rows(&b, &d, t[i].keys, t[i].n, t[i].base, ENV_PREFIX "<NAME>_");
    free(cfg);
  }
  if (resil__sb_finish(&b, &out, NULL, NULL) != RESIL_OK) return NULL;
  return out;
}

static void compute_hash(resil_config *c) {
  char *dump = resil_config_dump(c);
  uint64_t h = 1469598103934665603ull;
  for (const char *p = dump ? dump : ""; *p; p++) {
    h ^= (unsigned char)*p;
    h *= 1099511628211ull;
  }
  free(dump);
  snprintf(c->hash, sizeof c->hash, "%016llx", (unsigned long long)h);
}

/* ---- load ------------------------------------------------------------------ */

resil_status resil_config_load(char *const *envp, const char *path, resil_config **out,
                               char **report_out, resil_err *err) {
  if (report_out) *report_out = NULL;
  if (!out) return resil_err_set(err, RESIL_E_INVALID, "config: out is NULL");
  *out = NULL;
  resil_config *c = calloc(1, sizeof *c);
  if (!c) return resil_err_set(err, RESIL_E_NOMEM, "config: out of memory");
  service_defaults(&c->svc);
  report r = {{0}, 0};
  kvs env = {0}, all = {0};
  for (size_t i = 0; envp && envp[i]; i++) {
    const char *s = envp[i], *eq = strchr(s, '=');
    if (!eq || strncmp(s, "RESIL_", 6) != 0) continue;
    char src[200];
    snprintf(src, sizeof src, "%.*s", (int)(eq - s > 150 ? 150 : eq - s), s);
    if (!kv_add(c, &env, s, (size_t)(eq - s), eq + 1, strlen(eq + 1), src))
      problem(&r, "config: out of memory");
  }
  const kv *file_kv = kv_get(&env, "RESIL_CONFIG_FILE");
  const char *file = path ? path : (file_kv && *file_kv->value ? file_kv->value : NULL);
  if (file) read_file(c, &all, &r, file);
  for (size_t i = 0; i < env.n; i++) /* environment after file: it wins */
    if (!kv_add(c, &all, env.v[i].key, strlen(env.v[i].key), env.v[i].value,
                strlen(env.v[i].value), env.v[i].source))
      problem(&r, "config: out of memory");
  free(env.v);

  const kv *deps = kv_get(&all, "RESIL_DEPS");
  if (!deps)
    problem(&r, "RESIL_DEPS: is required: a comma-separated list of name[:kind] "
                "(e.g. orders-db:pg,session-cache:redis)");
  else
    parse_deps(c, &r, deps);
  for (size_t i = 0; i < all.n; i++) assign(c, &r, &all.v[i]);
  free(all.v);
  check_service(&r, &c->svc);
  for (size_t i = 0; i < c->n; i++) {
    dep_entry *d = &c->deps[i];
    check_required(&r, d);
    check_consistency(&r, d);
    resil_err verr;
    if (d->kind->validate(d->cfg, &verr) != RESIL_OK) translate(&r, d, verr.msg);
  }
  if (r.n) {
    char *text = NULL;
    if (resil__sb_finish(&r.b, &text, NULL, NULL) != RESIL_OK) text = NULL;
    if (err) {
      err->status = RESIL_E_INVALID;
      int n = snprintf(err->msg, sizeof err->msg, "%u configuration problem%s: %s", r.n,
                       r.n == 1 ? "" : "s", text ? text : "(out of memory)");
      if (n >= (int)sizeof err->msg) memcpy(err->msg + sizeof err->msg - 4, "...", 4);
      for (char *q = err->msg; *q; q++)
        if (*q == '\n') *q = ';';
    }
    if (report_out)
      *report_out = text;
    else
      free(text);
    resil_config_free(c);
    return RESIL_E_INVALID;
  }
  free(r.b.p);
  compute_hash(c);
  *out = c;
  return RESIL_OK;
}
