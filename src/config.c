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

/* what NULL (the loader, which names the variable itself): the message
 * starts at the quoted value. */
static resil_status bad(resil_err *err, const char *what, const char *v, const char *want) {
  return resil_err_set(err, RESIL_E_INVALID, "%s%s'%.80s' is not %s", what ? what : "",
                       what ? ": " : "", v, want);
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

/* Every problem as a (name, message) pair, in the order found: name is the
 * variable ("RESIL_DEP_DB_TIMEOUT_MS"), the variable and where a file set
 * it ("RESIL_DEP_DB_PORT (app.env:3)"), a place ("app.env:3") or
 * "dependency db". Nothing is cut: the report lists them all. */
typedef struct problem_item {
  char *name, *msg;
} problem_item;

typedef struct report {
  problem_item *v;
  size_t n, cap;
  unsigned lost; /* problems not stored for want of memory */
} report;

static void problem(report *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(report *r, const char *name, const char *fmt, ...) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    problem_item *nv = realloc(r->v, cap * sizeof *nv);
    if (!nv) {
      r->lost++;
      return;
    }
    r->v = nv;
    r->cap = cap;
  }
  char *msg = NULL, *nm = strdup(name);
  va_list ap;
  va_start(ap, fmt);
  if (vasprintf(&msg, fmt, ap) < 0) msg = NULL;
  va_end(ap);
  if (!msg || !nm) {
    free(msg);
    free(nm);
    r->lost++;
    return;
  }
  r->v[r->n++] = (problem_item){nm, msg};
}

static unsigned problem_count(const report *r) { return (unsigned)r->n + r->lost; }

/* True if a problem named by variable v (alone or with its file:line) was
 * already reported. */
static bool reported(const report *r, const char *v) {
  size_t n = strlen(v);
  for (size_t i = 0; i < r->n; i++) {
    const char *name = r->v[i].name;
    if (strncmp(name, v, n) == 0 && (name[n] == 0 || name[n] == ' ')) return true;
  }
  return false;
}

/* Drop the problems after the first n. */
static void report_truncate(report *r, size_t n) {
  for (size_t i = n; i < r->n; i++) {
    free(r->v[i].name);
    free(r->v[i].msg);
  }
  if (n < r->n) r->n = n;
}

static void report_free(report *r) {
  report_truncate(r, 0);
  free(r->v);
}

/* "name: msg" lines, every problem; NULL on out of memory. */
static char *report_text(const report *r) {
  resil_sbuf b = {0};
  for (size_t i = 0; i < r->n; i++)
    resil__sb_printf(&b, "%s%s: %s", i ? "\n" : "", r->v[i].name, r->v[i].msg);
  if (r->lost)
    resil__sb_printf(&b, "%sconfig: out of memory: %u more problem%s not shown", r->n ? "\n" : "",
                     r->lost, r->lost == 1 ? "" : "s");
  char *text = NULL;
  if (resil__sb_finish(&b, &text, NULL, NULL) != RESIL_OK) return NULL;
  return text;
}

/* err->msg: "N configuration problems: a: x;b: y" with as many whole
 * problems as fit, then ";...and K more" for the rest (the report has them
 * all). One line: a newline inside a message becomes ';'. */
static void report_err(const report *r, resil_err *err) {
  enum { MARK = 32 }; /* room kept for ";...and 4294967295 more" */
  char *m = err->msg;
  const size_t cap = sizeof err->msg;
  unsigned total = problem_count(r), shown = 0;
  size_t len = (size_t)snprintf(m, cap, "%u configuration problem%s: ", total,
                                total == 1 ? "" : "s");
  for (size_t i = 0; i < r->n; i++) {
    size_t need = (i ? 1 : 0) + strlen(r->v[i].name) + 2 + strlen(r->v[i].msg);
    bool last = i + 1 == r->n && !r->lost;
    if (len + need >= (last ? cap : cap - MARK)) break;
    len += (size_t)snprintf(m + len, cap - len, "%s%s: %s", i ? ";" : "", r->v[i].name,
                            r->v[i].msg);
    shown++;
  }
  if (shown == 0 && r->n) { /* the first alone is too long: as much of it as fits */
    snprintf(m + len, cap - MARK - len, "%s: %s", r->v[0].name, r->v[0].msg);
    len = strlen(m);
    len += (size_t)snprintf(m + len, cap - len, "...");
    shown = 1;
  }
  if (shown < total) snprintf(m + len, cap - len, ";...and %u more", total - shown);
  for (char *q = m; *q; q++)
    if (*q == '\n') *q = ';';
  err->status = RESIL_E_INVALID;
}

/* Store value v (from `source`) into field spec at base. */
static void set_value(resil_config *c, report *r, const char *source, const resil_key_spec *ks,
                      void *base, const char *v) {
  resil_err e;
  char *field = (char *)base + ks->offset;
  resil_status st = RESIL_OK;
  switch (ks->type) {
    case RESIL_KEY_UINT: st = resil_parse_uint(NULL, v, (uint32_t *)(void *)field, &e); break;
    case RESIL_KEY_MS: st = resil_parse_ms(NULL, v, (uint32_t *)(void *)field, &e); break;
    case RESIL_KEY_BOOL: st = resil_parse_bool(NULL, v, (bool *)(void *)field, &e); break;
    case RESIL_KEY_DOUBLE: st = parse_double(NULL, v, (double *)(void *)field, &e); break;
    case RESIL_KEY_SIZE: st = resil_parse_size(NULL, v, (size_t *)(void *)field, &e); break;
    case RESIL_KEY_STRING:
    case RESIL_KEY_SECRET: {
      const char *s = own(c, v, strlen(v));
      if (!s) {
        problem(r, source, "out of memory");
        return;
      }
      *(const char **)(void *)field = s;
      break;
    }
  }
  if (st == RESIL_OK && (ks->type == RESIL_KEY_UINT || ks->type == RESIL_KEY_MS) &&
      (ks->min || ks->max)) {
    uint32_t x = *(uint32_t *)(void *)field;
    if (x < ks->min || x > ks->max) problem(r, source, "%u is outside %u..%u", x, ks->min, ks->max);
    return;
  }
  if (st != RESIL_OK) {
    if (ks->type == RESIL_KEY_SECRET) /* never echo a secret */
      problem(r, source, "invalid value");
    else
      problem(r, source, "%s", e.msg);
  }
}

/* ---- validators' problems, by variable ------------------------------------- */

/* A validator reports (prefix, field, message) through the problem sink
 * (internal.h): the field is a key's path ("breaker.window_ms") or, for the
 * process settings, the admin or EMF field ("admin.port"); the loader names
 * each by the variable that sets it. */
typedef struct sink_ctx {
  report *r;
  const dep_entry *d; /* NULL: the process settings */
  unsigned delivered;
} sink_ctx;

/* s past "<name>: " when it starts with the dependency's name. */
static const char *after_name(const char *s, const dep_entry *d) {
  size_t n = strlen(d->name);
  return strncmp(s, d->name, n) == 0 && s[n] == ':' && s[n + 1] == ' ' ? s + n + 2 : s;
}

static void dep_problem(sink_ctx *s, const char *prefix, const char *field, const char *msg) {
  const dep_entry *d = s->d;
  const resil_key_spec *ks = field ? resil__cfg_find_field(d, field, strlen(field)) : NULL;
  if (ks) {
    char v[200];
    resil__cfg_var_name(v, sizeof v, d, ks->key);
    if (!reported(s->r, v)) problem(s->r, v, "%s", msg);
    return;
  }
  char who[96];
  snprintf(who, sizeof who, "dependency %s", d->name);
  if (field)
    problem(s->r, who, "%s%s: %s", after_name(prefix, d), field, msg);
  else
    problem(s->r, who, "%s", after_name(msg, d));
}

static void service_problem(sink_ctx *s, const char *prefix, const char *field,
                            const char *msg) {
  static const struct {
    const char *field, *var;
  } fields[] = {
      {"admin.bind_address", "RESIL_ADMIN_ADDR"}, {"admin.port", "RESIL_ADMIN_PORT"},
      {"emf.metric_namespace", "RESIL_EMF_NAMESPACE"}, {"emf.service", "RESIL_SERVICE"},
      {"emf.interval_ms", "RESIL_EMF_INTERVAL_MS"},
  };
  for (size_t i = 0; field && i < RESIL__COUNT(fields); i++)
    if (strcmp(field, fields[i].field) == 0) {
      if (!reported(s->r, fields[i].var)) problem(s->r, fields[i].var, "%s", msg);
      return;
    }
  if (field)
    problem(s->r, "RESIL_* process settings", "%s%s: %s", prefix, field, msg);
  else
    problem(s->r, "RESIL_* process settings", "%s", msg);
}

static void to_variable(void *ctx, const char *prefix, const char *field, const char *msg) {
  sink_ctx *s = ctx;
  s->delivered++;
  if (s->d)
    dep_problem(s, prefix ? prefix : "", field, msg);
  else
    service_problem(s, prefix ? prefix : "", field, msg);
}

/* Run validate(arg) with the sink installed. Its problems stay only if it
 * failed (a validator may try something and drop what it found); if it
 * failed without reporting through resil_problems, its message is the
 * problem. */
static void validate_into(report *r, const dep_entry *d,
                          resil_status (*validate)(const void *, resil_err *), const void *arg) {
  sink_ctx s = {.r = r, .d = d};
  resil__problem_sink sink;
  size_t before = r->n;
  resil_err e = {.status = RESIL_OK, .msg = ""};
  resil__problem_sink_push(&sink, to_variable, &s);
  resil_status st = validate(arg, &e);
  resil__problem_sink_pop(&sink);
  if (st == RESIL_OK) {
    report_truncate(r, before);
  } else if (!s.delivered) {
    s.delivered = 1;
    to_variable(&s, "", NULL, e.msg[0] ? e.msg : resil_strerror(st));
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
    problem(r, "RESIL_CONFIG_FILE", "cannot open '%s': %s", path, strerror(errno));
    return;
  }
  char line[4096];
  unsigned lineno = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    size_t n = strlen(line);
    if (n == sizeof line - 1 && line[n - 1] != '\n') {
      char at[4200];
      snprintf(at, sizeof at, "%s:%u", path, lineno);
      problem(r, at, "line longer than %zu bytes", sizeof line - 2);
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
      problem(r, where, "expected KEY=VALUE");
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
      problem(r, where, "keys in the config file must start with RESIL_");
      continue;
    }
    if (!kv_add(c, l, s, (size_t)(ke - s), v, vl, src)) problem(r, where, "out of memory");
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
      problem(r, source,
              "dependency names %s and %s are ambiguous: " RESIL__ENV_PREFIX
              "%s_%s would be both %s's %s and %s's %s (rename one of them)",
              a->name, b->name, a->env, e, a->name, e, b->name, e + lt + 1);
      return;
    }
}

static void parse_deps(resil_config *c, report *r, const kv *deps) {
  const char *p = deps->value;
  size_t cap = 1;
  for (const char *q = p; *q; q++) cap += *q == ',';
  c->deps = calloc(cap, sizeof *c->deps);
  if (!c->deps) {
    problem(r, "RESIL_DEPS", "out of memory");
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
      problem(r, deps->source, "'%.*s' is not a dependency name (1..63 of A-Z a-z 0-9 _ . -)",
              (int)(e - s > 80 ? 80 : e - s), s);
    } else {
      const resil_config_kind *k = resil_config_core_kind();
      if (colon) {
        k = resil__cfg_find_kind(colon + 1, (size_t)(e - colon - 1));
        if (!k) {
          resil_sbuf kn = {0};
          resil__cfg_kind_names(&kn);
          problem(r, deps->source, "dependency %.*s has unknown kind '%.*s' (known: %s)",
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
          problem(r, deps->source, "dependency %s is listed twice", d->name);
          dup = true;
        } else if (strcmp(c->deps[i].env, d->env) == 0) {
          problem(r, deps->source, "dependencies %s and %s both map to " RESIL__ENV_PREFIX "%s_*",
                  c->deps[i].name, d->name, d->env);
          dup = true;
        }
      }
      if (k && !dup) {
        d->kind = k;
        d->cfg = calloc(1, k->size);
        if (!d->cfg) {
          problem(r, "RESIL_DEPS", "out of memory");
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
  if (c->n == 0 && problem_count(r) == 0) problem(r, deps->source, "lists no dependency");
  for (size_t i = 0; i < c->n; i++)
    for (size_t j = 0; j < c->n; j++)
      if (i != j) check_ambiguous(r, deps->source, &c->deps[i], &c->deps[j]);
}

/* ---- assigning keys -------------------------------------------------------- */

static void assign(resil_config *c, report *r, const kv *e) {
  if (!strcmp(e->key, "RESIL_DEPS") || !strcmp(e->key, "RESIL_CONFIG_FILE")) return;
  if (!strcmp(e->key, "RESIL_CLOCK")) { /* read by the fast clock itself (fastclock.c) */
    if (strcmp(e->source, e->key) != 0)
      problem(r, e->source, "RESIL_CLOCK works only in the environment (the call path's clock "
                 "is chosen at its first use, before any file is read)");
    else if (resil__clock_mode_parse(e->value) < 0)
      problem(r, "RESIL_CLOCK", "'%.40s' is not auto, tsc or portable", e->value);
    return;
  }
  if (!strcmp(e->key, RESIL_HOSTS_FILE_ENV)) { /* read by the resolver itself (resolve.c) */
    FILE *hf = NULL;
    if (strcmp(e->source, e->key) != 0)
      problem(r, e->source, RESIL_HOSTS_FILE_ENV " works only in the environment (the resolver "
                 "reads it itself)");
    else if (e->value[0] && !(hf = fopen(e->value, "re")))
      problem(r, RESIL_HOSTS_FILE_ENV, "cannot read '%.200s': %s", e->value, strerror(errno));
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
    problem(r, e->source, "unknown variable (known: RESIL_DEPS, RESIL_CONFIG_FILE, RESIL_CLOCK, "
               "RESIL_HOSTS_FILE, RESIL_SERVICE, "
               "RESIL_ADMIN_ADDR, RESIL_ADMIN_PORT, RESIL_EMF_NAMESPACE, RESIL_EMF_INTERVAL_MS, "
               "RESIL_DRAIN_GRACE_MS, RESIL_DRAIN_TIMEOUT_MS, RESIL_PREWARM_TIMEOUT_MS, "
               "RESIL_EVENT_LOG, "
               RESIL__ENV_PREFIX "<NAME>_<KEY>)");
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
    problem(r, e->source, "no dependency in RESIL_DEPS matches (names map to upper case with - "
               "and . as _)");
    return;
  }
  void *base;
  const resil_key_spec *ks = resil__cfg_find_key(best, rest + bestlen + 1, &base);
  if (!ks) {
    resil_sbuf hint = {0};
    resil__cfg_suggest_key(&hint, best, rest + bestlen + 1);
    problem(r, e->source, "unknown key %s for %s dependency %s%s", rest + bestlen + 1,
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
        problem(r, v, "is required for %s dependency %s", d->kind->name, d->name);
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

static resil_status admin_valid(const void *ac, resil_err *e) {
  return resil_admin_config_validate(ac, e);
}
static resil_status emf_valid(const void *ec, resil_err *e) {
  return resil_emf_config_validate(ec, e);
}

static void check_service(report *r, const resil_service_config *s) {
  if (s->admin_port > 65535) problem(r, "RESIL_ADMIN_PORT", "%u is above 65535", s->admin_port);
  if (!s->admin_addr || !*s->admin_addr) problem(r, "RESIL_ADMIN_ADDR", "must not be empty");
  if (!s->service || !*s->service) problem(r, "RESIL_SERVICE", "must not be empty");
  if (!s->emf_namespace || !*s->emf_namespace)
    problem(r, "RESIL_EMF_NAMESPACE", "must not be empty");
  if (s->emf_interval_ms && s->emf_interval_ms < 1000)
    problem(r, "RESIL_EMF_INTERVAL_MS", "%u ms is below 1s (0 turns EMF off)", s->emf_interval_ms);
  if (s->drain_timeout_ms == 0)
    problem(r, "RESIL_DRAIN_TIMEOUT_MS", "must be > 0 (no wait is unbounded, none is instant)");
  if (s->prewarm_timeout_ms == 0) problem(r, "RESIL_PREWARM_TIMEOUT_MS", "must be > 0");
  if (!s->event_log || (strcmp(s->event_log, "json") != 0 && strcmp(s->event_log, "text") != 0 &&
                        strcmp(s->event_log, "off") != 0))
    problem(r, "RESIL_EVENT_LOG", "'%.40s' is not json, text or off",
            s->event_log ? s->event_log : "");
  if (s->drain_grace_ms >= s->drain_timeout_ms && s->drain_timeout_ms)
    problem(r, "RESIL_DRAIN_GRACE_MS", "%u ms is not below RESIL_DRAIN_TIMEOUT_MS %u ms",
            s->drain_grace_ms, s->drain_timeout_ms);
  /* What resil_service_start() will hand the admin endpoint and the EMF
   * emitter, checked by their own validators. Both are checked even when
   * off (a bad value is bad whether or not it is used yet), and
   * RESIL_SERVICE is also the service label of resil_info. */
  resil_admin_config ac;
  resil__service_admin_config(s, &ac);
  validate_into(r, NULL, admin_valid, &ac);
  resil_emf_config ec;
  resil__service_emf_config(s, &ec);
  if (!ec.interval_ms) ec.interval_ms = 60000; /* EMF off: check the rest */
  validate_into(r, NULL, emf_valid, &ec);
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
    problem(r, a, "%u ms is longer than %s %u ms (a connect could never finish in time)",
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
  report r = {0};
  kvs env = {0}, all = {0};
  for (size_t i = 0; envp && envp[i]; i++) {
    const char *s = envp[i], *eq = strchr(s, '=');
    if (!eq || strncmp(s, "RESIL_", 6) != 0) continue;
    char src[200];
    snprintf(src, sizeof src, "%.*s", (int)(eq - s > 150 ? 150 : eq - s), s);
    if (!kv_add(c, &env, s, (size_t)(eq - s), eq + 1, strlen(eq + 1), src))
      problem(&r, "config", "out of memory");
  }
  const kv *file_kv = kv_get(&env, "RESIL_CONFIG_FILE");
  const char *file = path ? path : (file_kv && *file_kv->value ? file_kv->value : NULL);
  if (file) read_file(c, &all, &r, file);
  for (size_t i = 0; i < env.n; i++) /* environment after file: it wins */
    if (!kv_add(c, &all, env.v[i].key, strlen(env.v[i].key), env.v[i].value,
                strlen(env.v[i].value), env.v[i].source))
      problem(&r, "config", "out of memory");
  free(env.v);

  const kv *deps = kv_get(&all, "RESIL_DEPS");
  if (!deps)
    problem(&r, "RESIL_DEPS", "is required: a comma-separated list of name[:kind] "
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
    validate_into(&r, d, d->kind->validate, d->cfg);
  }
  if (problem_count(&r)) {
    if (err) report_err(&r, err);
    if (report_out) *report_out = report_text(&r);
    report_free(&r);
    resil_config_free(c);
    return RESIL_E_INVALID;
  }
  report_free(&r);
  resil__cfg_compute_hash(c);
  *out = c;
  return RESIL_OK;
}
