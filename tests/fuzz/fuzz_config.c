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
 * Checks: no crash, leak or undefined behaviour; on success the dump and the
 * JSON dump are NUL-terminated, the JSON parses (tests/support/minijson.h)
 * and carries the same hash, and the hash is 16 lower-case hex digits; on
 * failure the report and err.msg are NUL-terminated and non-empty. */
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
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
  free(buf);
  return 0;
}
