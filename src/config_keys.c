/* The configuration's key tables: the core's keys (resil_dep_config,
 * resil_pool_config, the process settings), the core kind, the registry of
 * kinds, and finding a dependency's keys by name. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "config_internal.h"

#define MAX_KINDS 16

/* ---- key specs of the core ------------------------------------------------ */

/* Rows of resil_dep_config keys: DK(key, type, field, help); the field's
 * C type must be the key type's (RESIL__KEY_OFFSET). */
#define DK(k, t, f, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = RESIL__KEY_OFFSET(resil_dep_config, f, t), .help = h}
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
  {.key = k, .type = RESIL_KEY_##t, .offset = RESIL__KEY_OFFSET(resil_pool_config, f, t), .help = h}
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

#define SK(k, t, f, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = RESIL__KEY_OFFSET(resil_service_config, f, t), .help = h}
static const resil_key_spec svc_keys[] = {
    SK("RESIL_SERVICE", STRING, service,
       "service name: the Service dimension of EMF and a resil_info label; 1..255 bytes, no "
       "control characters"),
    SK("RESIL_ADMIN_ADDR", STRING, admin_addr,
       "admin endpoint bind address: a numeric IPv4 or IPv6 address (no host names, no "
       "brackets)"),
    SK("RESIL_ADMIN_PORT", UINT, admin_port, "admin endpoint port; 0 = off"),
    SK("RESIL_EMF_NAMESPACE", STRING, emf_namespace,
       "CloudWatch EMF namespace: 1..255 of A-Z a-z 0-9 . - _ / # : and space, not starting "
       "AWS/"),
    SK("RESIL_EMF_INTERVAL_MS", MS, emf_interval_ms, "EMF interval, 1s..24h; 0 = EMF off"),
    SK("RESIL_DRAIN_GRACE_MS", MS, drain_grace_ms, "keep admitting calls this long after SIGTERM"),
    SK("RESIL_DRAIN_TIMEOUT_MS", MS, drain_timeout_ms,
       "wait at most this long for in-flight calls at drain"),
    SK("RESIL_PREWARM_TIMEOUT_MS", MS, prewarm_timeout_ms,
       "bound on each start-up pre-warm attempt"),
    SK("RESIL_EVENT_LOG", STRING, event_log,
       "events (breaker changes) on stderr: json, text or off"),
};


const resil_key_spec *resil_config_dep_keys(size_t *n) {
  if (n) *n = RESIL__COUNT(dep_keys);
  return dep_keys;
}
const resil_key_spec *resil_config_pool_keys(size_t *n) {
  if (n) *n = RESIL__COUNT(pool_keys);
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

size_t resil__cfg_key_size(resil_key_type t, size_t *align) {
#define KT(T) (*align = _Alignof(RESIL__KEY_CTYPE_##T), sizeof(RESIL__KEY_CTYPE_##T))
  switch (t) {
    case RESIL_KEY_UINT: return KT(UINT);
    case RESIL_KEY_MS: return KT(MS);
    case RESIL_KEY_BOOL: return KT(BOOL);
    case RESIL_KEY_DOUBLE: return KT(DOUBLE);
    case RESIL_KEY_STRING: return KT(STRING);
    case RESIL_KEY_SECRET: return KT(SECRET);
    case RESIL_KEY_SIZE: return KT(SIZE);
  }
#undef KT
  *align = 1;
  return 0;
}

/* A kind's own keys must each name a field of its struct that can hold
 * the key's type: inside the struct, aligned for it, and not sharing a byte
 * with another key's field. A row with the wrong type or offset (a SIZE key
 * on a uint32_t field next to another key) is refused here rather than
 * written over its neighbour at load. */
static resil_status check_kind_keys(const resil_config_kind *k, resil_err *err) {
  for (size_t i = 0; i < k->nkeys; i++) {
    const resil_key_spec *a = &k->keys[i];
    size_t align, size = resil__cfg_key_size(a->type, &align);
    const char *why = !a->key || !*a->key ? "has no name"
                      : !size              ? "has an unknown type"
                      : a->offset % align  ? "is not aligned for its type"
                      : a->offset > k->size || size > k->size - a->offset
                          ? "lies past the end of the kind's struct"
                          : NULL;
    for (size_t j = 0; !why && j < i; j++) {
      const resil_key_spec *b = &k->keys[j];
      size_t bal, bsize = resil__cfg_key_size(b->type, &bal);
      if (a->offset < b->offset + bsize && b->offset < a->offset + size)
        why = "overlaps another key's field (is its type right?)";
    }
    if (why)
      return resil_err_set(err, RESIL_E_INVALID,
                           "config: kind '%s': key %zu ('%s' at offset %zu) %s", k->name, i,
                           a->key ? a->key : "", a->offset, why);
  }
  return RESIL_OK;
}

resil_status resil_config_register_kind(const resil_config_kind *k, resil_err *err) {
  if (!k || !k->name || !*k->name || !k->init || !k->validate || !k->dep_config || !k->size ||
      (k->nkeys && !k->keys))
    return resil_err_set(err, RESIL_E_INVALID,
                         "config: kind '%s' lacks a name, size, init, validate or dep_config",
                         k && k->name ? k->name : "(null)");
  if (check_kind_keys(k, err) != RESIL_OK) return RESIL_E_INVALID;
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

const resil_config_kind *resil__cfg_find_kind(const char *name, size_t len) {
  if (len == 4 && strncmp(name, "core", 4) == 0) return &core_kind;
  const resil_config_kind *found = NULL;
  pthread_mutex_lock(&kinds_mu);
  for (size_t i = 0; i < nkinds && !found; i++)
    if (strlen(kinds[i]->name) == len && strncmp(kinds[i]->name, name, len) == 0) found = kinds[i];
  pthread_mutex_unlock(&kinds_mu);
  return found;
}

void resil__cfg_kind_names(resil_sbuf *b) {
  resil__sb_printf(b, "core");
  pthread_mutex_lock(&kinds_mu);
  for (size_t i = 0; i < nkinds; i++) resil__sb_printf(b, ", %s", kinds[i]->name);
  pthread_mutex_unlock(&kinds_mu);
}

/* ---- key tables of one dependency ------------------------------------------ */

int resil__cfg_tables(const dep_entry *d, resil__cfg_table t[3]) {
  int n = 0;
  t[n++] = (resil__cfg_table){dep_keys, RESIL__COUNT(dep_keys), d->kind->dep_config(d->cfg)};
  resil_pool_config *pc = d->kind->pool_config ? d->kind->pool_config(d->cfg) : NULL;
  if (pc) t[n++] = (resil__cfg_table){pool_keys, RESIL__COUNT(pool_keys), pc};
  if (d->kind->nkeys) t[n++] = (resil__cfg_table){d->kind->keys, d->kind->nkeys, d->cfg};
  return n;
}

/* A pool key "pool.X" is hidden when the kind has its own key "X" (e.g. an
 * adapter's connect_timeout_ms replaces pool.connect_timeout_ms): a key that
 * would be silently ignored must not be accepted. */
bool resil__cfg_shadowed(const dep_entry *d, const resil_key_spec *ks) {
  if (ks < pool_keys || ks >= pool_keys + RESIL__COUNT(pool_keys)) return false;
  for (size_t k = 0; k < d->kind->nkeys; k++)
    if (strcmp(d->kind->keys[k].key, ks->key + 5) == 0) return true;
  return false;
}

void resil__cfg_env_form(char *out, size_t size, const char *in) {
  size_t i = 0;
  for (; in[i] && i + 1 < size; i++) {
    char ch = in[i];
    out[i] = (ch == '.' || ch == '-') ? '_' : (char)toupper((unsigned char)ch);
  }
  out[i] = 0;
}

void resil__cfg_var_name(char *out, size_t size, const dep_entry *d, const char *key) {
  char k[96];
  resil__cfg_env_form(k, sizeof k, key);
  snprintf(out, size, RESIL__ENV_PREFIX "%s_%s", d->env, k);
}

const resil_key_spec *resil__cfg_find_key(const dep_entry *d, const char *envkey, void **base) {
  resil__cfg_table t[3];
  int nt = resil__cfg_tables(d, t);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++) {
      char e[96];
      if (resil__cfg_shadowed(d, &t[i].keys[k])) continue;
      resil__cfg_env_form(e, sizeof e, t[i].keys[k].key);
      if (strcmp(e, envkey) == 0) {
        *base = t[i].base;
        return &t[i].keys[k];
      }
    }
  return NULL;
}

const resil_key_spec *resil__cfg_find_field(const dep_entry *d, const char *field,
                                               size_t len) {
  resil__cfg_table t[3];
  int nt = resil__cfg_tables(d, t);
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

void resil__cfg_suggest_key(resil_sbuf *b, const dep_entry *d, const char *envkey) {
  resil__cfg_table t[3];
  int nt = resil__cfg_tables(d, t);
  const char *best = NULL;
  unsigned bestd = 4;
  char e[96];
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < t[i].n; k++) {
      if (resil__cfg_shadowed(d, &t[i].keys[k])) continue;
      resil__cfg_env_form(e, sizeof e, t[i].keys[k].key);
      unsigned dist = edit_distance(envkey, e);
      if (dist < bestd) {
        bestd = dist;
        best = t[i].keys[k].key;
      }
    }
  if (best) {
    char v[200];
    resil__cfg_var_name(v, sizeof v, d, best);
    resil__sb_printf(b, " (did you mean %s?)", v);
  }
}

/* ---- the process settings ------------------------------------------------- */

void resil__cfg_service_defaults(resil_service_config *s) {
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

const resil_key_spec *resil__cfg_svc_keys(size_t *n) {
  *n = RESIL__COUNT(svc_keys);
  return svc_keys;
}
