/* libFuzzer harness: the configuration loader (environment and file).
 *
 * The first byte picks how the rest is loaded:
 *   0  environment only: the rest split on NUL / newline into "KEY=VALUE"
 *      strings, passed as envp (any RESIL_CONFIG_FILE entry is dropped, so
 *      the input cannot make the loader open an arbitrary path);
 *   1  file only: the rest written to a temporary file named by
 *      RESIL_CONFIG_FILE in envp;
 *   2  both: the rest split at its first 0xFF byte, environment before it,
 *      file after it (RESIL_CONFIG_FILE appended to the environment), so
 *      the precedence code runs;
 *   3  file given as the path argument of resil_config_load().
 *   4..7 (bit 2 set) structured: the variables come from the key tables
 *      themselves (resil_config_keys_markdown() of the process and of every
 *      registered kind), so every key of every kind is reached, and values
 *      from a dictionary of every value shape (durations, sizes, doubles,
 *      booleans, addresses, namespaces, URLs, conninfo strings, over-long
 *      strings, each also wrong), or raw bytes. Byte 1: the number of
 *      dependencies - 1 (low 2 bits); then one byte per dependency: its
 *      name (low 4 bits, among names that prefix each other) and kind
 *      (bits 4-5: core, redis, pg, http). Then records of a key byte (an
 *      index into every variable of the process and of those dependencies,
 *      modulo their number) and a value byte (below 0xF0 an index into the
 *      dictionary, else (v & 15) * 4 raw bytes follow, up to a NUL).
 * Checks: no crash, leak or undefined behaviour; on success the dump and the
 * JSON dump are NUL-terminated, the JSON parses (tests/support/minijson.h)
 * and carries the same hash, and the hash is 16 lower-case hex digits; on
 * failure the report and err.msg are NUL-terminated and non-empty. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "minijson.h"
#include "resil/config.h"
#ifdef FUZZ_HAVE_REDIS
#include "resil/redis.h"
#endif
#ifdef FUZZ_HAVE_PG
#include "resil/pg.h"
#endif
#ifdef FUZZ_HAVE_HTTP
#include "resil/http.h"
#endif

#define MAX_VARS 256

/* ---- structured mode: variables from the key tables -------------------------- */

#define MAX_KEYS 512
static const char *const kinds[] = {"core", "redis", "pg", "http"};
static char *kind_keys[4][MAX_KEYS]; /* "RESIL_DEP_<NAME>_X" per kind */
static size_t kind_nkeys[4];
static char *proc_keys[32]; /* RESIL_DEPS and RESIL_SERVICE, ... */
static size_t proc_nkeys;
static const char *const names[16] = {"a",      "db",        "db-connect", "db.connect",
                                      "db-query", "cache",   "cache-pool", "orders-db",
                                      "orders", "x_y",       "x",          "svc.v2",
                                      "a-limit", "a-b-c",    "db_connect_timeout", "z"};
static char long_value[301];
static const char *values[] = {
    /* durations and integers */
    "0", "1", "250", "250ms", "2s", "1m", "24h", "25h", "49710h", "4294967295", "4294967296",
    "1.5s", "5 s", " 5", "5 ", "-1", "+1", "ms", "0x10", "65535", "65536", "100000",
    /* sizes */
    "64k", "8M", "1G", "1K", "16G", "99999999999999G", "1024", "8MB",
    /* doubles */
    "2", "1.5", "0.5", " 2", "2 ", "1e308", "1e999", "inf", "nan", "-0", "1e-5", ".5", "5.",
    /* booleans */
    "true", "false", "yes", "no", "on", "off", "TRUE", "maybe", "",
    /* strings: addresses, namespaces, names, URLs, conninfo, paths, headers */
    "127.0.0.1", "::1", "0.0.0.0", "localhost", "[::1]", "127.0.0.1:9102", "AWS/Foo", "my*ns",
    "My/App#1:a b_c-d.e", "check\tout", "checkout", "http://127.0.0.1:1/x", "https://h/v2",
    "ftp://x", "http://", "host=127.0.0.1 dbname=x", "password=abc\"def ghi\"TAIL",
    "postgresql://u:p@127.0.0.1/db", "postgresql://u:p%zz@h", "postgresql://u:s/e@h/d",
    "hots=1", "/tmp/sock", "grpc-timeout", "bad header", "db:pg,db-connect:redis", long_value,
};

/* The variables of one markdown table from resil_config_keys_markdown(). */
static size_t parse_keys(const char *md, char **out, size_t max) {
  size_t n = 0;
  for (const char *p = md; p && *p && n < max;) {
    const char *a = strstr(p, "| `");
    if (!a) break;
    a += 3;
    const char *b = strchr(a, '`');
    if (!b) break;
    /* not RESIL_CONFIG_FILE: the input must not open arbitrary paths; a
     * RESIL_DEPS record overrides the structured list (a list value) */
    if ((size_t)(b - a) != 17 || strncmp(a, "RESIL_CONFIG_FILE", 17) != 0) {
      out[n] = strndup(a, (size_t)(b - a));
      if (!out[n]) abort();
      n++;
    }
    p = strchr(b, '\n');
  }
  return n;
}

static void load_key_tables(void) {
  memset(long_value, 'x', 300);
  char *md = resil_config_keys_markdown(NULL);
  proc_nkeys = parse_keys(md, proc_keys, 32);
  free(md);
  for (size_t k = 0; k < 4; k++) {
    md = resil_config_keys_markdown(kinds[k]);
    kind_nkeys[k] = md ? parse_keys(md, kind_keys[k], MAX_KEYS) : 0;
    free(md);
  }
  if (proc_nkeys < 9 || kind_nkeys[0] < 20) abort(); /* the tables must be there */
}

/* "RESIL_DEP_<NAME>_X" with <NAME> as the dependency's variable form. */
static void expand(char *out, size_t size, const char *tpl, const char *name) {
  char env[64];
  size_t i = 0;
  for (; name[i] && i + 1 < sizeof env; i++)
    env[i] = name[i] == '-' || name[i] == '.' ? '_' : (char)toupper((unsigned char)name[i]);
  env[i] = 0;
  const char *ph = strstr(tpl, "<NAME>");
  if (ph)
    snprintf(out, size, "%.*s%s%s", (int)(ph - tpl), tpl, env, ph + 6);
  else
    snprintf(out, size, "%s", tpl);
}

/* Build envp from a structured input; the strings live in arena. */
static size_t structured_env(const uint8_t *d, size_t n, char **envp, char *arena,
                             size_t arena_size) {
  size_t used = 0, ne = 0, i = 0;
  if (n < 1) return 0;
  size_t ndeps = (size_t)(d[i++] & 3) + 1;
  const char *dn[4];
  size_t dk[4];
  char deps[256] = "RESIL_DEPS=";
  for (size_t j = 0; j < ndeps; j++) {
    uint8_t b = i < n ? d[i++] : 0;
    dn[j] = names[b & 15];
    dk[j] = (size_t)(b >> 4) & 3;
    size_t l = strlen(deps);
    snprintf(deps + l, sizeof deps - l, "%s%s:%s", j ? "," : "", dn[j], kinds[dk[j]]);
  }
  size_t total = proc_nkeys;
  for (size_t j = 0; j < ndeps; j++) total += kind_nkeys[dk[j]];
#define ADD(str)                                                      \
  do {                                                                \
    size_t l_ = strlen(str) + 1;                                      \
    if (used + l_ > arena_size || ne >= MAX_VARS) return ne;          \
    memcpy(arena + used, (str), l_);                                  \
    envp[ne++] = arena + used;                                        \
    used += l_;                                                       \
  } while (0)
  ADD(deps);
  while (i + 1 < n) {
    size_t key = d[i++] % total;
    uint8_t v = d[i++];
    char var[512], val[128];
    const char *value;
    if (v < 0xF0) {
      value = values[v % (sizeof values / sizeof values[0])];
    } else {
      size_t want = (size_t)(v & 15) * 4, l = 0;
      while (l < want && i < n && d[i] && l + 1 < sizeof val) val[l++] = (char)d[i++];
      val[l] = 0;
      value = val;
    }
    if (key < proc_nkeys) {
      snprintf(var, sizeof var, "%s=%s", proc_keys[key], value);
    } else {
      key -= proc_nkeys;
      size_t j = 0;
      while (key >= kind_nkeys[dk[j]]) key -= kind_nkeys[dk[j++]];
      char name[160];
      expand(name, sizeof name, kind_keys[dk[j]][key], dn[j]);
      snprintf(var, sizeof var, "%s=%s", name, value);
    }
    ADD(var);
  }
#undef ADD
  return ne;
}

static char tmp_path[64];
static int tmp_fd = -1;

static void cleanup(void) {
  if (tmp_fd >= 0) close(tmp_fd);
  if (tmp_path[0]) unlink(tmp_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  snprintf(tmp_path, sizeof tmp_path, "/tmp/resil-fuzz-config.XXXXXX");
  tmp_fd = mkstemp(tmp_path);
  if (tmp_fd < 0) {
    perror("mkstemp");
    abort();
  }
  atexit(cleanup);
  /* Adapter kinds register themselves at load; do it again in case the
   * linker dropped the constructors. */
#ifdef FUZZ_HAVE_REDIS
  resil_redis_register_kind(NULL);
#endif
#ifdef FUZZ_HAVE_PG
  resil_pg_register_kind(NULL);
#endif
#ifdef FUZZ_HAVE_HTTP
  resil_http_register_kind(NULL);
#endif
  load_key_tables();
  return 0;
}

static void write_file(const uint8_t *p, size_t n) {
  if (ftruncate(tmp_fd, 0) != 0) abort();
  size_t off = 0;
  while (off < n) {
    ssize_t w = pwrite(tmp_fd, p + off, n - off, (off_t)off);
    if (w <= 0) abort();
    off += (size_t)w;
  }
}

static bool is_hex16(const char *h) {
  if (!h || strlen(h) != 16) return false;
  for (int i = 0; i < 16; i++)
    if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return false;
  return true;
}

static void check_loaded(resil_config *cfg) {
  const char *hash = resil_config_hash(cfg);
  if (!is_hex16(hash)) abort();
  char *dump = resil_config_dump(cfg);
  char *json = resil_config_dump_json(cfg);
  if (!dump || !json) abort(); /* not out of memory at these sizes */
  if (strncmp(dump, "RESIL_DEPS=", 11) != 0) abort();
  size_t jl = strlen(json);
  mj *v = mj_parse(json, jl);
  if (!v || v->t != MJ_OBJ) {
    fprintf(stderr, "resil_config_dump_json is not valid JSON:\n%s\n", json);
    abort();
  }
  mj *h = mj_get(v, "hash");
  if (!h || h->t != MJ_STR || strcmp(h->str, hash) != 0) abort();
  mj_free(v);
  for (size_t i = 0; i < resil_config_count(cfg); i++) {
    if (!resil_config_name(cfg, i) || !resil_config_kind_name(cfg, i) || !resil_config_get(cfg, i))
      abort();
  }
  if (!resil_config_service(cfg)) abort();
  free(dump);
  free(json);
}

static void load_and_check(char **envp, const char *path) {
  resil_config *cfg = NULL;
  char *report = NULL;
  resil_err err;
  memset(&err, 0, sizeof err);
  resil_status st = resil_config_load(envp, path, &cfg, &report, &err);
  if (st == RESIL_OK) {
    if (!cfg || report) abort();
    check_loaded(cfg);
    resil_config_free(cfg);
  } else {
    if (cfg) abort();
    if (st != RESIL_E_INVALID && st != RESIL_E_NOMEM && st != RESIL_E_SYSTEM) abort();
    if (err.status != st || !memchr(err.msg, 0, sizeof err.msg) || !err.msg[0]) abort();
    if (st == RESIL_E_INVALID && (!report || !report[0])) abort();
    free(report);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (data[0] & 4) {
    static char arena[1 << 16];
    char *envp[MAX_VARS + 1];
    size_t n = structured_env(data + 1, size - 1, envp, arena, sizeof arena);
    envp[n] = NULL;
    load_and_check(envp, NULL);
    return 0;
  }
  unsigned mode = data[0] & 3;
  data++;
  size--;

  size_t env_len = size, file_off = size;
  if (mode == 1 || mode == 3) {
    env_len = 0;
    file_off = 0;
  } else if (mode == 2) {
    const uint8_t *ff = memchr(data, 0xFF, size);
    env_len = ff ? (size_t)(ff - data) : size;
    file_off = ff ? env_len + 1 : size;
  }

  /* The environment: NUL/newline-separated strings, copied so each is
   * NUL-terminated. */
  char *buf = malloc(env_len + 1);
  char *envp[MAX_VARS + 2];
  size_t n = 0;
  if (!buf) return 0;
  memcpy(buf, data, env_len);
  buf[env_len] = 0;
  for (size_t i = 0, start = 0; i <= env_len && n < MAX_VARS; i++) {
    if (i == env_len || buf[i] == 0 || buf[i] == '\n') {
      buf[i] = 0;
      if (i > start && strncmp(buf + start, "RESIL_CONFIG_FILE=", 18) != 0)
        envp[n++] = buf + start;
      start = i + 1;
    }
  }
  char file_var[96];
  const char *path = NULL;
  if (mode != 0) {
    write_file(data + file_off, size - file_off);
    if (mode == 3) {
      path = tmp_path;
    } else {
      snprintf(file_var, sizeof file_var, "RESIL_CONFIG_FILE=%s", tmp_path);
      envp[n++] = file_var;
    }
  }
  envp[n] = NULL;

  load_and_check(envp, path);
  free(buf);
  return 0;
}
