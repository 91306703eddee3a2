/* resil-config: check a service's resil configuration the way it will be
 * loaded in the task, before deploying it.
 *
 *   resil-config            load from the environment (and RESIL_CONFIG_FILE);
 *                           print the effective configuration, secrets
 *                           redacted, and its hash; exit 0. On problems print
 *                           every one, one per line, and exit 1.
 *   resil-config --json     the same as JSON (what /config serves)
 *   resil-config --keys     every key with its default, as Markdown tables
 *   resil-config FILE       also read FILE (KEY=VALUE lines) before the environment
 *
 * After the configuration, the text form prints the worst-case memory resil
 * can hold for each dependency (resil_config_memory_bound()) and their total,
 * to add to the task's memory limit:
 *   # memory_bound orders-db=172228608 (164.3 MiB)
 *   # memory_bound_total=... (...)
 * and the hash last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resil/resil.h"
#ifdef RESIL_HAVE_HTTP
#include "resil/http.h"
#endif
#ifdef RESIL_HAVE_REDIS
#include "resil/redis.h"
#endif
#ifdef RESIL_HAVE_PG
#include "resil/pg.h"
#endif

extern char **environ;

static void register_kinds(void) {
  /* Explicit: with --as-needed a library whose symbols are not referenced
   * is not loaded, and its load-time registration would not run. */
#ifdef RESIL_HAVE_HTTP
  resil_http_register_kind(NULL);
#endif
#ifdef RESIL_HAVE_REDIS
  resil_redis_register_kind(NULL);
#endif
#ifdef RESIL_HAVE_PG
  resil_pg_register_kind(NULL);
#endif
}

static int keys(void) {
  const char *kinds[] = {"core", "redis", "pg", "http"};
  char *doc = resil_config_keys_markdown(NULL);
  printf("### Process\n\n| variable | default | meaning |\n|---|---|---|\n%s\n", doc ? doc : "");
  free(doc);
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    doc = resil_config_keys_markdown(kinds[i]);
    if (!doc) continue;
    printf("### Kind `%s`\n\n| variable | default | meaning |\n|---|---|---|\n%s\n", kinds[i],
           doc);
    free(doc);
  }
  return 0;
}

int main(int argc, char **argv) {
  bool json = false;
  const char *file = NULL;
  register_kinds();
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--keys")) return keys();
    if (!strcmp(argv[i], "--json")) {
      json = true;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      printf("usage: resil-config [--json] [FILE] | --keys\n");
      return 0;
    } else if (argv[i][0] == '-') {
      fprintf(stderr, "resil-config: unknown option '%s' (try --help)\n", argv[i]);
      return 2;
    } else {
      file = argv[i];
    }
  }
  resil_config *cfg;
  char *report = NULL;
  resil_err err;
  if (resil_config_load(environ, file, &cfg, &report, &err) != RESIL_OK) {
    fprintf(stderr, "resil-config: the configuration is invalid:\n%s\n", report ? report : err.msg);
    free(report);
    return 1;
  }
  char *out = json ? resil_config_dump_json(cfg) : resil_config_dump(cfg);
  if (out) fputs(out, stdout);
  if (!json) {
    uint64_t total = 0;
    for (size_t i = 0; i < resil_config_count(cfg); i++) {
      uint64_t b = resil_config_memory_bound(cfg, i);
      total += b;
      printf("# memory_bound %s=%llu (%.1f MiB)\n", resil_config_name(cfg, i),
             (unsigned long long)b, (double)b / 1048576.0);
    }
    printf("# memory_bound_total=%llu (%.1f MiB): the most resil can hold for these "
           "dependencies' calls; add it to the task's memory\n",
           (unsigned long long)total, (double)total / 1048576.0);
    printf("# config_hash=%s\n", resil_config_hash(cfg));
  }
  free(out);
  resil_config_free(cfg);
  return 0;
}
