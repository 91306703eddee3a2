/* Configuration from the environment, a KEY=VALUE file and C structs, with
 * every problem reported at once and named by its variable: loading,
 * parsing values and every check. The key tables are in config_keys.c, the
 * dump, JSON, hash and Markdown in config_out.c. */
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
#include "config_internal.h"

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
    for (u = 0; u < RESIL__COUNT(units); u++)
      if (strcmp(v + d, units[u].unit) == 0) break;
    if (u == RESIL__COUNT(units)) return bad(err, what, v, want);
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
    const resil_key_spec *ks = colon ? resil__cfg_find_field(d, body, (size_t)(colon - body)) : NULL;
    if (ks) {
      char v[200];
      resil__cfg_var_name(v, sizeof v, d, ks->key);
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
  resil__cfg_table tb[3];
  int nt = resil__cfg_tables(a, tb);
  for (int i = 0; i < nt; i++)
    for (size_t k = 0; k < tb[i].n; k++) {
      if (resil__cfg_shadowed(a, &tb[i].keys[k])) continue;
      char e[96];
      resil__cfg_env_form(e, sizeof e, tb[i].keys[k].key);
      void *base;
      if (strncmp(e, t, lt) != 0 || e[lt] != '_' || !resil__cfg_find_key(b, e + lt + 1, &base)) continue;
      problem(r,
              "%s: dependency names %s and %s are ambiguous: " RESIL__ENV_PREFIX
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
      const resil_config_kind *k = resil_config_core_kind();
      if (colon) {
        k = resil__cfg_find_kind(colon + 1, (size_t)(e - colon - 1));
        if (!k) {
          resil_sbuf kn = {0};
          resil__cfg_kind_names(&kn);
          problem(r, "%s: dependency %.*s has unknown kind '%.*s' (known: %s)", deps->source,
                  (int)nl, s, (int)(e - colon - 1), colon + 1, kn.p ? kn.p : "core");
          free(kn.p);
        }
      }
      dep_entry *d = &c->deps[c->n];
      memcpy(d->name, s, nl);
      d->name[nl] = 0;
      resil__cfg_env_form(d->env, sizeof d->env, d->name);
      bool dup = false;
      for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->deps[i].name, d->name) == 0) {
          problem(r, "%s: dependency %s is listed twice", deps->source, d->name);
          dup = true;
        } else if (strcmp(c->deps[i].env, d->env) == 0) {
          problem(r, "%s: dependencies %s and %s both map to " RESIL__ENV_PREFIX "%s_*", deps->source,
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
  size_t ns;
  const resil_key_spec *svc_keys = resil__cfg_svc_keys(&ns);
  for (size_t i = 0; i < ns; i++)
    if (!strcmp(e->key, svc_keys[i].key)) {
      set_value(c, r, e->source, &svc_keys[i], &c->svc, e->value);
      return;
    }
  if (strncmp(e->key, RESIL__ENV_PREFIX, strlen(RESIL__ENV_PREFIX)) != 0) {
    problem(r, "%s: unknown variable (known: RESIL_DEPS, RESIL_CONFIG_FILE, RESIL_CLOCK, "
               "RESIL_HOSTS_FILE, RESIL_SERVICE, "
               "RESIL_ADMIN_ADDR, RESIL_ADMIN_PORT, RESIL_EMF_NAMESPACE, RESIL_EMF_INTERVAL_MS, "
               "RESIL_DRAIN_GRACE_MS, RESIL_DRAIN_TIMEOUT_MS, RESIL_PREWARM_TIMEOUT_MS, "
               "RESIL_EVENT_LOG, "
               RESIL__ENV_PREFIX "<NAME>_<KEY>)",
            e->source);
    return;
  }
  const char *rest = e->key + strlen(RESIL__ENV_PREFIX);
  /* the longest dependency prefix followed by '_' and a known key; failing
   * that, the longest prefix (to name the unknown key) */
  dep_entry *best = NULL, *any = NULL;
  size_t bestlen = 0, anylen = 0;
  for (size_t i = 0; i < c->n; i++) {
    size_t l = strlen(c->deps[i].env);
    if (strncmp(rest, c->deps[i].env, l) != 0 || rest[l] != '_') continue;
    void *base;
    if (resil__cfg_find_key(&c->deps[i], rest + l + 1, &base) && l > bestlen) {
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
  const resil_key_spec *ks = resil__cfg_find_key(best, rest + bestlen + 1, &base);
  if (!ks) {
    resil_sbuf hint = {0};
    resil__cfg_suggest_key(&hint, best, rest + bestlen + 1);
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
  resil__cfg_table t[3];
  int nt = resil__cfg_tables(d, t);
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
        resil__cfg_var_name(v, sizeof v, d, ks->key);
        problem(r, "%s: is required for %s dependency %s", v, d->kind->name, d->name);
      }
    }
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
    for (size_t i = 0; i < RESIL__COUNT(fields) && !var; i++) {
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
    resil__cfg_var_name(a, sizeof a, d, "pool.connect_timeout_ms");
    resil__cfg_var_name(b, sizeof b, d, "timeout_ms");
    problem(r, "%s: %u ms is longer than %s %u ms (a connect could never finish in time)", a,
            pc->connect_timeout_ms, b, dc->timeout_ms);
  }
}

/* ---- load ------------------------------------------------------------------ */

resil_status resil_config_load(char *const *envp, const char *path, resil_config **out,
                               char **report_out, resil_err *err) {
  if (report_out) *report_out = NULL;
  if (!out) return resil_err_set(err, RESIL_E_INVALID, "config: out is NULL");
  *out = NULL;
  resil_config *c = calloc(1, sizeof *c);
  if (!c) return resil_err_set(err, RESIL_E_NOMEM, "config: out of memory");
  resil__cfg_service_defaults(&c->svc);
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
  resil__cfg_compute_hash(c);
  *out = c;
  return RESIL_OK;
}
