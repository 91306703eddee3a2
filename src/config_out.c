/* The configuration's output: the effective configuration as KEY=VALUE
 * lines and as JSON, its hash, and the Markdown documentation of a kind's
 * keys. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

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
  size_t ns;
  const resil_key_spec *svc_keys = resil__cfg_svc_keys(&ns);
  for (size_t i = 0; i < ns; i++) {
    format_value(v, sizeof v, &svc_keys[i], &c->svc, false);
    resil__sb_printf(&b, "%s=%s\n", svc_keys[i].key, v);
  }
  for (size_t i = 0; i < c->n; i++) {
    resil__cfg_table t[3];
    int nt = resil__cfg_tables(&c->deps[i], t);
    for (int j = 0; j < nt; j++)
      for (size_t k = 0; k < t[j].n; k++) {
        if (resil__cfg_shadowed(&c->deps[i], &t[j].keys[k])) continue;
        char name[200];
        resil__cfg_var_name(name, sizeof name, &c->deps[i], t[j].keys[k].key);
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
  size_t ns;
  const resil_key_spec *svc_keys = resil__cfg_svc_keys(&ns);
  resil__sb_printf(&b, "{\"hash\":\"%s\",\"service\":{", c->hash);
  for (size_t i = 0; i < ns; i++) {
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
    resil__cfg_table t[3];
    int nt = resil__cfg_tables(&c->deps[i], t);
    bool first = true;
    for (int j = 0; j < nt; j++)
      for (size_t k = 0; k < t[j].n; k++) {
        if (resil__cfg_shadowed(&c->deps[i], &t[j].keys[k])) continue;
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

static void doc_rows(resil_sbuf *b, const dep_entry *d, const resil_key_spec *keys, size_t n,
                     const void *base, const char *prefix) {
  char v[512], name[200];
  for (size_t k = 0; k < n; k++) {
    if (d && resil__cfg_shadowed(d, &keys[k])) continue;
    format_value(v, sizeof v, &keys[k], base, false);
    if (keys[k].required) snprintf(v, sizeof v, "(required)");
    if (!v[0]) snprintf(v, sizeof v, "(none)");
    char ek[96];
    resil__cfg_env_form(ek, sizeof ek, keys[k].key);
    snprintf(name, sizeof name, "%s%s", prefix, ek);
    resil__sb_printf(b, "| `%s` | %s | %s |\n", name, v, keys[k].help ? keys[k].help : "");
  }
}

char *resil_config_keys_markdown(const char *kind_name) {
  resil_sbuf b = {0};
  char *out = NULL;
  if (!kind_name) {
    resil_service_config s;
    resil__cfg_service_defaults(&s);
    resil__sb_printf(&b, "| `RESIL_DEPS` | (required) | dependencies: name[:kind],... |\n");
    resil__sb_printf(&b, "| `RESIL_CONFIG_FILE` | (none) | KEY=VALUE file read before the "
                         "environment |\n");
    resil__sb_printf(&b, "| `RESIL_CLOCK` | auto | call-path clock: auto, tsc (force the TSC) "
                         "or portable (clock_gettime); environment only |\n");
    resil__sb_printf(&b, "| `RESIL_HOSTS_FILE` | (none) | hosts file (/etc/hosts format) "
                         "consulted before DNS by resil's resolver; environment only |\n");
    size_t ns;
    const resil_key_spec *svc_keys = resil__cfg_svc_keys(&ns);
    doc_rows(&b, NULL, svc_keys, ns, &s, "");
  } else {
    const resil_config_kind *k = resil__cfg_find_kind(kind_name, strlen(kind_name));
    if (!k) return NULL;
    void *cfg = calloc(1, k->size);
    if (!cfg) return NULL;
    k->init(cfg, "NAME");
    dep_entry d = {.kind = k, .cfg = cfg};
    snprintf(d.env, sizeof d.env, "<NAME>");
    resil__cfg_table t[3];
    int nt = resil__cfg_tables(&d, t);
    for (int i = nt - 1; i >= 0; i--) /* the kind's own keys first */
      doc_rows(&b, &d, t[i].keys, t[i].n, t[i].base, RESIL__ENV_PREFIX "<NAME>_");
    free(cfg);
  }
  if (resil__sb_finish(&b, &out, NULL, NULL) != RESIL_OK) return NULL;
  return out;
}

void resil__cfg_compute_hash(resil_config *c) {
  char *dump = resil_config_dump(c);
  uint64_t h = 1469598103934665603ull;
  for (const char *p = dump ? dump : ""; *p; p++) {
    h ^= (unsigned char)*p;
    h *= 1099511628211ull;
  }
  free(dump);
  snprintf(c->hash, sizeof c->hash, "%016llx", (unsigned long long)h);
}
