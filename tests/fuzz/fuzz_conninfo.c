/* libFuzzer harness: a PostgreSQL password never shows in what resil says
 * about a conninfo, however malformed the conninfo is.
 *
 * The input is cut at its first two 0xFF bytes into BEFORE, SECRET and
 * AFTER (missing parts are empty); none of them may contain the marker, and
 * a NUL ends a part. The first byte of BEFORE picks where the password goes:
 *   0  BEFORE password=SECRET<marker>AFTER            (key=value)
 *   1  BEFORE password='SECRET<marker>AFTER           (quoted, maybe unterminated)
 *   2  postgresql://BEFORE:SECRET<marker>AFTER        (user:password@ in a URI)
 *   3  postgresql://BEFORE?password=SECRET<marker>AFTER  (query parameter)
 *   4  postgresql://BEFORE?pass%77ord=SECRET<marker>AFTER (percent-encoded key)
 *   5  postgres://BEFORE:SECRET<marker>AFTER          (the short scheme)
 *   6  BEFORE sslpassword=SECRET<marker>AFTER
 *   7  BEFORE (no password: only checks that nothing crashes)
 * (BEFORE is the rest of the first part after that byte.) The marker is a
 * token libpq never splits (letters and digits only), so any leak of the
 * password shows at least half of it.
 *
 * Checks, for the conninfo alone (resil_pg_config_validate) and as
 * RESIL_DEP_DB_CONNINFO through the config loader: no crash, leak or
 * undefined behaviour; neither half of the marker appears in the error
 * message, the loader's report, or (when it loads) the config dump and its
 * JSON. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resil/config.h"
#include "resil/pg.h"

#define MARKER "Zq7SeCrEt4mK9wXp"
#define HALF 8

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  resil_pg_register_kind(NULL); /* in case the linker dropped the constructor */
  return 0;
}

/* Does text hold the marker or either half of it? */
static bool leaks(const char *text) {
  if (!text) return false;
  char half[HALF + 1];
  memcpy(half, MARKER, HALF);
  half[HALF] = 0;
  return strstr(text, half) || strstr(text, MARKER + sizeof MARKER - 1 - HALF);
}

static void check(const char *what, const char *conninfo, const char *text) {
  if (!leaks(text)) return;
  fprintf(stderr, "the password leaked into %s\nconninfo: %s\ntext: %s\n", what, conninfo, text);
  abort();
}

/* Copy part p[0..n) up to any NUL; false if it holds either half of the
 * marker (the input must not put the marker where it is not secret). */
static bool part(char *dst, const uint8_t *p, size_t n) {
  size_t l = 0;
  while (l < n && p[l]) l++;
  memcpy(dst, p, l);
  dst[l] = 0;
  char half[HALF + 1];
  memcpy(half, MARKER, HALF);
  half[HALF] = 0;
  return !strstr(dst, half) && !strstr(dst, MARKER + sizeof MARKER - 1 - HALF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > 4096) return 0;
  unsigned mode = data[0] & 7;
  data++;
  size--;
  const uint8_t *ff1 = memchr(data, 0xFF, size);
  size_t l1 = ff1 ? (size_t)(ff1 - data) : size;
  const uint8_t *p2 = ff1 ? ff1 + 1 : data + size;
  size_t r2 = (size_t)(data + size - p2);
  const uint8_t *ff2 = memchr(p2, 0xFF, r2);
  size_t l2 = ff2 ? (size_t)(ff2 - p2) : r2;
  const uint8_t *p3 = ff2 ? ff2 + 1 : p2 + l2;
  size_t l3 = (size_t)(data + size - p3);

  char *before = malloc(l1 + 1), *secret = malloc(l2 + 1), *after = malloc(l3 + 1);
  size_t cap = l1 + l2 + l3 + sizeof MARKER + 64;
  char *ci = malloc(cap), *var = malloc(cap + 32);
  if (!before || !secret || !after || !ci || !var) abort();
  if (!part(before, data, l1) || !part(secret, p2, l2) || !part(after, p3, l3)) goto out;
  static const char *const fmt[] = {
      "%s password=%s" MARKER "%s",
      "%s password='%s" MARKER "%s",
      "postgresql://%s:%s" MARKER "%s",
      "postgresql://%s?password=%s" MARKER "%s",
      "postgresql://%s?pass%%77ord=%s" MARKER "%s",
      "postgres://%s:%s" MARKER "%s",
      "%s sslpassword=%s" MARKER "%s",
      "%s%.0s%.0s",
  };
  snprintf(ci, cap, fmt[mode], before, secret, after);

  resil_pg_config pc;
  resil_pg_config_init(&pc, "db");
  pc.conninfo = ci;
  resil_err err;
  memset(&err, 0, sizeof err);
  if (resil_pg_config_validate(&pc, &err) != RESIL_OK) {
    if (!memchr(err.msg, 0, sizeof err.msg)) abort();
    check("resil_pg_config_validate's message", ci, err.msg);
  }

  snprintf(var, cap + 32, "RESIL_DEP_DB_CONNINFO=%s", ci);
  char *env[] = {(char *)"RESIL_DEPS=db:pg", var, NULL};
  resil_config *cfg = NULL;
  char *report = NULL;
  memset(&err, 0, sizeof err);
  if (resil_config_load(env, NULL, &cfg, &report, &err) == RESIL_OK) {
    char *dump = resil_config_dump(cfg), *json = resil_config_dump_json(cfg);
    check("the config dump", ci, dump);
    check("the JSON config dump", ci, json);
    free(dump);
    free(json);
    resil_config_free(cfg);
  } else {
    check("the config loader's report", ci, report);
    check("the config loader's message", ci, err.msg);
    free(report);
  }
out:
  free(before);
  free(secret);
  free(after);
  free(ci);
  free(var);
  return 0;
}
