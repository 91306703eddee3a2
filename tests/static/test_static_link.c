/* Adapter kinds in a static link. This program is linked against the static
 * archives (libresil.a, libresil-redis.a, -pg.a, -http.a), never calls
 * resil_*_register_kind(), and uses each adapter the way a service does:
 * resil_service_start() with RESIL_DEPS naming every kind, then the
 * adapter's own API on the handle. Each kind must be known: registration by
 * the adapter's constructor must survive the linker picking only the
 * archive members the program references. No server is contacted (no
 * min_idle, no call). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "resil/http.h"
#include "resil/pg.h"
#include "resil/redis.h"
#include "resil/resil.h"

/* The libraries really are linked statically: no libresil*.so mapped. */
static void no_shared_resil_library_is_loaded(void **state) {
  (void)state;
  FILE *f = fopen("/proc/self/maps", "r");
  assert_non_null(f);
  char line[4096];
  int shared = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "/libresil")) {
      fprintf(stderr, "# mapped: %s", line);
      shared++;
    }
  fclose(f);
  assert_int_equal(shared, 0);
}

static void every_kind_is_known_without_registering(void **state) {
  (void)state;
  static char env[][96] = {
      "RESIL_DEPS=cache:redis,orders:pg,payments:http,plain",
      "RESIL_DEP_CACHE_HOST=127.0.0.1",
      "RESIL_DEP_CACHE_PORT=1",
      "RESIL_DEP_ORDERS_CONNINFO=host=127.0.0.1 port=1 dbname=x connect_timeout=1",
      "RESIL_DEP_PAYMENTS_BASE_URL=http://127.0.0.1:1",
      "RESIL_EMF_INTERVAL_MS=0",
      "RESIL_EVENT_LOG=off",
  };
  char *envp[sizeof env / sizeof env[0] + 1];
  for (size_t i = 0; i < sizeof env / sizeof env[0]; i++) envp[i] = env[i];
  envp[sizeof env / sizeof env[0]] = NULL;
  resil_service *svc = NULL;
  char *report = NULL;
  resil_err err = {0};
  resil_status st = resil_service_start(envp, &svc, &report, &err);
  if (st != RESIL_OK) fprintf(stderr, "# start: %s\n", report ? report : err.msg);
  free(report);
  assert_int_equal(st, RESIL_OK);

  /* The adapters' API on the handles their kinds built. */
  resil_redis *r = resil_service_get(svc, "cache", "redis");
  assert_non_null(r);
  assert_string_equal(resil_dep_name(resil_redis_dep(r)), "cache");
  resil_pg *pg = resil_service_get(svc, "orders", "pg");
  assert_non_null(pg);
  assert_string_equal(resil_dep_name(resil_pg_dep(pg)), "orders");
  resil_http *h = resil_service_get(svc, "payments", "http");
  assert_non_null(h);
  assert_string_equal(resil_dep_name(resil_http_dep(h)), "payments");
  assert_non_null(resil_service_get(svc, "plain", "core"));

  const resil_config *cfg = resil_service_get_config(svc);
  assert_string_equal(resil_config_kind_name(cfg, 0), "redis");
  assert_string_equal(resil_config_kind_name(cfg, 1), "pg");
  assert_string_equal(resil_config_kind_name(cfg, 2), "http");
  assert_int_equal(resil_service_stop(svc, &err), RESIL_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(no_shared_resil_library_is_loaded),
      cmocka_unit_test(every_kind_is_known_without_registering),
  };
  return cmocka_run_group_tests_name("static_link", tests, NULL, NULL);
}
