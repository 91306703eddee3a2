/* Configuration from environment blocks and files: strict values, every
 * problem reported at once and named by its variable, precedence,
 * redaction and the config hash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "resil/adapter.h"
#include "resil/resil.h"

/* A kind like an adapter's: own keys (required host, secret password), an
 * embedded dep config and pool config. */
typedef struct fake_cfg {
  resil_dep_config dep;
  resil_pool_config pool;
  const char *host;
  const char *password;
  uint32_t port;
} fake_cfg;

static void fake_init(void *c, const char *name) {
  fake_cfg *f = c;
  memset(f, 0, sizeof *f);
  resil_dep_config_init(&f->dep, name);
  resil_pool_config_init(&f->pool);
  f->port = 6379;
}
/* Reports as the adapters do: through a resil_problems collector, which
 * hands each (field, message) to the loader. */
static resil_status fake_validate(const void *c, resil_err *err) {
  const fake_cfg *f = c;
  char prefix[80];
  snprintf(prefix, sizeof prefix, "%s: ", f->dep.name);
  resil_problems p;
  resil_problems_init(&p, prefix);
  resil_err sub;
  if (resil_dep_config_validate(&f->dep, &sub) != RESIL_OK) resil_problems_merge(&p, sub.msg);
  resil_problems_check_range(&p, "port", f->port, 1, 65535);
  return resil_problems_finish(&p, err);
}
static resil_dep_config *fake_dep(void *c) { return &((fake_cfg *)c)->dep; }
static resil_pool_config *fake_pool(void *c) { return &((fake_cfg *)c)->pool; }
static const resil_key_spec fake_keys[] = {
    {.key = "host", .type = RESIL_KEY_STRING, .offset = offsetof(fake_cfg, host), .required = true,
     .help = "server"},
    {.key = "password", .type = RESIL_KEY_SECRET, .offset = offsetof(fake_cfg, password),
     .help = "secret"},
    {.key = "port", .type = RESIL_KEY_UINT, .offset = offsetof(fake_cfg, port), .help = "port"},
};
static const resil_config_kind fake_kind = {
    .name = "fake", .size = sizeof(fake_cfg), .init = fake_init, .validate = fake_validate,
    .dep_config = fake_dep, .pool_config = fake_pool, .keys = fake_keys, .nkeys = 3};

/* A kind whose own connect_timeout_ms replaces the pool's. */
typedef struct shadow_cfg {
  resil_dep_config dep;
  resil_pool_config pool;
  uint32_t connect_timeout_ms;
} shadow_cfg;
static void shadow_init(void *c, const char *name) {
  shadow_cfg *f = c;
  resil_dep_config_init(&f->dep, name);
  resil_pool_config_init(&f->pool);
  f->connect_timeout_ms = 300;
}
static resil_status shadow_validate(const void *c, resil_err *err) {
  return resil_dep_config_validate(&((const shadow_cfg *)c)->dep, err);
}
static resil_dep_config *shadow_dep(void *c) { return &((shadow_cfg *)c)->dep; }
static resil_pool_config *shadow_pool(void *c) { return &((shadow_cfg *)c)->pool; }
static const resil_key_spec shadow_keys[] = {
    {.key = "connect_timeout_ms", .type = RESIL_KEY_MS, .offset = offsetof(shadow_cfg, connect_timeout_ms),
     .min = 1, .max = 1000, .help = "own connect bound"},
};
static const resil_config_kind shadow_kind = {
    .name = "shadow", .size = sizeof(shadow_cfg), .init = shadow_init,
    .validate = shadow_validate, .dep_config = shadow_dep, .pool_config = shadow_pool,
    .keys = shadow_keys, .nkeys = 1};

/* A kind whose validator does not use resil_problems: mode 1 fails with
 * resil_err_set() alone, mode 2 collects a problem it then drops (and
 * succeeds). */
typedef struct legacy_cfg {
  resil_dep_config dep;
  uint32_t mode;
} legacy_cfg;
static void legacy_init(void *c, const char *name) {
  legacy_cfg *f = c;
  resil_dep_config_init(&f->dep, name);
  f->mode = 0;
}
static resil_status legacy_validate(const void *c, resil_err *err) {
  const legacy_cfg *f = c;
  if (f->mode == 1)
    return resil_err_set(err, RESIL_E_INVALID, "%s: the legacy check failed: %s", f->dep.name,
                         "mode 1 is refused; mode 0 is fine");
  if (f->mode == 2) {
    resil_problems tried;
    resil_problems_init(&tried, "");
    resil_problem(&tried, "mode", "tried and dropped");
    resil_err dropped;
    (void)resil_problems_finish(&tried, &dropped);
  }
  return resil_dep_config_validate(&f->dep, err);
}
static resil_dep_config *legacy_dep(void *c) { return &((legacy_cfg *)c)->dep; }
static const resil_key_spec legacy_keys[] = {
    {.key = "mode", .type = RESIL_KEY_UINT, .offset = offsetof(legacy_cfg, mode), .help = "mode"},
};
static const resil_config_kind legacy_kind = {
    .name = "legacy", .size = sizeof(legacy_cfg), .init = legacy_init,
    .validate = legacy_validate, .dep_config = legacy_dep, .keys = legacy_keys, .nkeys = 1};

static int setup(void **state) {
  (void)state;
  assert_int_equal(resil_config_register_kind(&shadow_kind, NULL), RESIL_OK);
  assert_int_equal(resil_config_register_kind(&fake_kind, NULL), RESIL_OK);
  assert_int_equal(resil_config_register_kind(&legacy_kind, NULL), RESIL_OK);
  return 0;
}

static resil_config *load_ok(char **env) {
  resil_config *c = NULL;
  resil_err err;
  char *report = NULL;
  if (resil_config_load(env, NULL, &c, &report, &err) != RESIL_OK)
    fail_msg("unexpected config error: %s", report ? report : err.msg);
  return c;
}

/* Load expecting failure; returns the full report (free it). */
static char *load_bad(char **env, const char *path) {
  resil_config *c = (resil_config *)1;
  resil_err err;
  char *report = NULL;
  assert_int_equal(resil_config_load(env, path, &c, &report, &err), RESIL_E_INVALID);
  assert_null(c);
  assert_int_equal(err.status, RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "configuration problem"));
  assert_non_null(report);
  return report;
}

static void expect_all(const char *report, const char *const *want, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!strstr(report, want[i])) fail_msg("missing '%s' in:\n%s", want[i], report);
}

static void plain_dependencies_get_defaults(void **state) {
  (void)state;
  char *env[] = {(char *)"PATH=/bin", (char *)"RESIL_DEPS=orders-db, legacy.api",
                 (char *)"HOME=/root", NULL};
  resil_config *c = load_ok(env);
  assert_int_equal(resil_config_count(c), 2);
  assert_string_equal(resil_config_name(c, 0), "orders-db");
  assert_string_equal(resil_config_kind_name(c, 1), "core");
  resil_dep_config *d = resil_config_find(c, "legacy.api", "core");
  assert_non_null(d);
  assert_string_equal(d->name, "legacy.api");
  assert_int_equal(d->timeout_ms, 1000);
  assert_int_equal(d->breaker.failure_rate_percent, 50);
  assert_null(resil_config_find(c, "legacy.api", "fake"));
  assert_null(resil_config_get(c, 2));
  const resil_service_config *s = resil_config_service(c);
  assert_string_equal(s->admin_addr, "127.0.0.1");
  assert_int_equal(s->admin_port, 0);
  assert_int_equal(strlen(resil_config_hash(c)), 16);
  /* the config builds a dependency */
  resil_dep *dep = resil_dep_new(d, NULL);
  assert_non_null(dep);
  resil_dep_free(dep);
  resil_config_free(c);
}

static void keys_set_fields_with_units(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=orders-db:fake",
                 (char *)"RESIL_DEP_ORDERS_DB_HOST=db.internal",
                 (char *)"RESIL_DEP_ORDERS_DB_PASSWORD=hunter2",
                 (char *)"RESIL_DEP_ORDERS_DB_TIMEOUT_MS=2s",
                 (char *)"RESIL_DEP_ORDERS_DB_CRITICAL=yes",
                 (char *)"RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCENT=25",
                 (char *)"RESIL_DEP_ORDERS_DB_BREAKER_OPEN_MULTIPLIER=1.5",
                 (char *)"RESIL_DEP_ORDERS_DB_BREAKER_OPEN_MAX_MS=1m",
                 (char *)"RESIL_DEP_ORDERS_DB_LIMIT_MAX_WAIT_MS=250ms",
                 (char *)"RESIL_DEP_ORDERS_DB_POOL_MAX_SIZE=20",
                 (char *)"RESIL_DEP_ORDERS_DB_POOL_MAX_LIFETIME_MS=1h",
                 (char *)"RESIL_SERVICE=checkout",
                 (char *)"RESIL_ADMIN_PORT=9090",
                 NULL};
  resil_config *c = load_ok(env);
  fake_cfg *f = resil_config_find(c, "orders-db", "fake");
  assert_non_null(f);
  assert_string_equal(f->host, "db.internal");
  assert_string_equal(f->password, "hunter2");
  assert_int_equal(f->dep.timeout_ms, 2000);
  assert_true(f->dep.critical);
  assert_int_equal(f->dep.breaker.failure_rate_percent, 25);
  assert_true(f->dep.breaker.open_multiplier == 1.5);
  assert_int_equal(f->dep.breaker.open_max_ms, 60000);
  assert_int_equal(f->dep.limit.max_wait_ms, 250);
  assert_int_equal(f->pool.max_size, 20);
  assert_int_equal(f->pool.max_lifetime_ms, 3600000);
  assert_string_equal(resil_config_service(c)->service, "checkout");
  assert_int_equal(resil_config_service(c)->admin_port, 9090);
  resil_config_free(c);
}

static void every_problem_is_reported_at_once_by_variable(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=orders-db:fake,cache",
                 (char *)"RESIL_DEP_ORDERS_DB_TIMEOUT_MS=0",
                 (char *)"RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCNT=30",
                 (char *)"RESIL_DEP_ORDERS_DB_POOL_MAX_SIZE=ten",
                 (char *)"RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCENT=140",
                 (char *)"RESIL_DEP_ORDERS_DB_PASSWORD=s3cret",
                 (char *)"RESIL_DEP_CACHE_LIMIT_MAX_WAIT_MS=5 s",
                 (char *)"RESIL_DEP_CACHE_BREAKER_WINDOW_MS=50",
                 (char *)"RESIL_DEP_PAYMENTS_TIMEOUT_MS=100",
                 (char *)"RESIL_ADMIN_PROT=9090",
                 (char *)"RESIL_EMF_INTERVAL_MS=10",
                 NULL};
  char *report = load_bad(env, NULL);
  const char *want[] = {
      "RESIL_DEP_ORDERS_DB_HOST: is required for fake dependency orders-db",
      "RESIL_DEP_ORDERS_DB_TIMEOUT_MS: must be > 0",
      "RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCNT: unknown key BREAKER_FAILURE_RATE_PERCNT "
      "for fake dependency orders-db (did you mean "
      "RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCENT?)",
      "RESIL_DEP_ORDERS_DB_POOL_MAX_SIZE: 'ten' is not a whole number",
      "RESIL_DEP_ORDERS_DB_BREAKER_FAILURE_RATE_PERCENT: 140 is outside 0..100",
      "RESIL_DEP_CACHE_LIMIT_MAX_WAIT_MS: '5 s' is not a duration",
      "RESIL_DEP_CACHE_BREAKER_WINDOW_MS: 50 ms is too short for 10 buckets",
      "RESIL_DEP_PAYMENTS_TIMEOUT_MS: no dependency in RESIL_DEPS matches",
      "RESIL_ADMIN_PROT: unknown variable",
      "RESIL_EMF_INTERVAL_MS: 10 ms is below 1s",
  };
  expect_all(report, want, sizeof want / sizeof want[0]);
  assert_null(strstr(report, "s3cret"));
  free(report);
}

static size_t count_of(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
  return n;
}

/* A validator's problems reach the report one by one, each named by its
 * variable, however many there are: none is lost to the 512-byte err.msg
 * they once travelled in, none comes twice (the dependency's validator
 * merges the breaker's), and err.msg, which cannot hold them all, ends
 * saying how many it left out. */
static void every_validator_problem_survives_by_variable(void **state) {
  (void)state;
  static const char *const vars[][2] = {
      {"BREAKER_CONSECUTIVE_FAILURES", "2000000"}, {"BREAKER_FAILURE_RATE_PERCENT", "140"},
      {"BREAKER_SLOW_CALL_RATE_PERCENT", "150"},   {"BREAKER_WINDOW_BUCKETS", "500"},
      {"BREAKER_OPEN_JITTER_PERCENT", "90"},       {"BREAKER_HALF_OPEN_PROBES", "5000"},
      {"BREAKER_OPEN_MULTIPLIER", "1000"},         {"LIMIT_MAX_CONCURRENT", "0"},
      {"RETRY_MAX_ATTEMPTS", "50"},                {"RETRY_BUDGET_PERCENT", "500"},
      {"RETRY_BUDGET_WINDOW_MS", "1"},             {"PROBE_INTERVAL_MS", "1"},
      {"PROBE_TIMEOUT_MS", "2h"},                  {"PUSHBACK_MAX_PAUSE_MS", "2h"},
      {"TIMEOUT_MS", "2h"},
  };
  enum { N = sizeof vars / sizeof vars[0] };
  char buf[N][96], *env[N + 2];
  env[0] = (char *)"RESIL_DEPS=long-dependency-name";
  for (size_t i = 0; i < N; i++) {
    snprintf(buf[i], sizeof buf[i], "RESIL_DEP_LONG_DEPENDENCY_NAME_%s=%s", vars[i][0],
             vars[i][1]);
    env[i + 1] = buf[i];
  }
  env[N + 1] = NULL;
  resil_config *c = (resil_config *)1;
  resil_err err;
  char *report = NULL;
  assert_int_equal(resil_config_load(env, NULL, &c, &report, &err), RESIL_E_INVALID);
  assert_non_null(report);
  for (size_t i = 0; i < N; i++) {
    char want[128];
    snprintf(want, sizeof want, "RESIL_DEP_LONG_DEPENDENCY_NAME_%s: ", vars[i][0]);
    if (count_of(report, want) != 1) fail_msg("'%s' not once in:\n%s", want, report);
  }
  assert_null(strstr(report, "dependency long-dependency-name:"));
  size_t lines = count_of(report, "\n") + 1;
  char head[64];
  snprintf(head, sizeof head, "%zu configuration problems: ", lines);
  if (strncmp(err.msg, head, strlen(head)) != 0) fail_msg("%s vs\n%s", err.msg, report);
  assert_true(strlen(report) > sizeof err.msg);
  const char *more = strstr(err.msg, ";...and ");
  if (!more || strcmp(more + strlen(more) - 5, " more") != 0) fail_msg("%s", err.msg);
  unsigned left = (unsigned)strtoul(more + 8, NULL, 10);
  assert_int_equal(left, lines - (count_of(err.msg, ";") - 1 + 1)); /* shown = separators + 1 */
  free(report);
}

/* A kind's validator that fails with resil_err_set() alone still has its
 * whole message reported (under its dependency); problems a validator
 * collected and dropped, succeeding, are not reported. */
static void a_validator_without_the_collector_is_heard_in_full(void **state) {
  (void)state;
  char *bad[] = {(char *)"RESIL_DEPS=old:legacy", (char *)"RESIL_DEP_OLD_MODE=1", NULL};
  char *r = load_bad(bad, NULL);
  assert_non_null(
      strstr(r, "dependency old: the legacy check failed: mode 1 is refused; mode 0 is fine"));
  free(r);
  char *ok[] = {(char *)"RESIL_DEPS=old:legacy", (char *)"RESIL_DEP_OLD_MODE=2", NULL};
  resil_config_free(load_ok(ok));
}

static void missing_or_bad_dependency_list_is_an_error(void **state) {
  (void)state;
  char *none[] = {(char *)"RESIL_SERVICE=x", NULL};
  char *r = load_bad(none, NULL);
  assert_non_null(strstr(r, "RESIL_DEPS: is required"));
  free(r);
  char *bad[] = {(char *)"RESIL_DEPS=a b,ok:nosuchkind,dup,dup,x-y,x_y,", NULL};
  r = load_bad(bad, NULL);
  const char *want[] = {"'a b' is not a dependency name",
                        "dependency ok has unknown kind 'nosuchkind' (known: core, shadow, fake, "
                        "legacy",
                        "dependency dup is listed twice",
                        "dependencies x-y and x_y both map to RESIL_DEP_X_Y_*"};
  expect_all(r, want, sizeof want / sizeof want[0]);
  free(r);
  char *empty[] = {(char *)"RESIL_DEPS=", NULL};
  r = load_bad(empty, NULL);
  assert_non_null(strstr(r, "RESIL_DEPS: lists no dependency"));
  free(r);
}

static void longest_dependency_name_wins(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=orders,orders-db", (char *)"RESIL_DEP_ORDERS_DB_TIMEOUT_MS=300",
                 (char *)"RESIL_DEP_ORDERS_TIMEOUT_MS=400", NULL};
  resil_config *c = load_ok(env);
  assert_int_equal(((resil_dep_config *)resil_config_find(c, "orders-db", NULL))->timeout_ms, 300);
  assert_int_equal(((resil_dep_config *)resil_config_find(c, "orders", NULL))->timeout_ms, 400);
  resil_config_free(c);
}

/* db's CONNECT_TIMEOUT_MS and db-connect's TIMEOUT_MS are the same variable:
 * the pair is refused (in either order), naming both and the variable. */
static void dependency_names_that_share_a_variable_are_an_error(void **state) {
  (void)state;
  const char *lists[] = {"RESIL_DEPS=db:shadow,db-connect", "RESIL_DEPS=db-connect,db:shadow",
                         "RESIL_DEPS=db:shadow,db.connect:fake"};
  for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
    char *env[] = {(char *)lists[i], (char *)"RESIL_DEP_DB_CONNECT_HOST=h",
                   (char *)"RESIL_DEP_DB_CONNECT_TIMEOUT_MS=100", NULL};
    char *r = load_bad(env, NULL);
    if (!strstr(r, "RESIL_DEPS: dependency names db and db") ||
        !strstr(r, "are ambiguous: RESIL_DEP_DB_CONNECT_TIMEOUT_MS would be both db's "
                   "CONNECT_TIMEOUT_MS and db") ||
        !strstr(r, "'s TIMEOUT_MS"))
      fail_msg("%s: %s", lists[i], r);
    free(r);
  }
  /* through a pool key: a's POOL_CONNECT_TIMEOUT_MS vs a-pool-connect's TIMEOUT_MS */
  char *env[] = {(char *)"RESIL_DEPS=a:fake,a-pool-connect", (char *)"RESIL_DEP_A_HOST=h", NULL};
  char *r = load_bad(env, NULL);
  if (!strstr(r, "RESIL_DEP_A_POOL_CONNECT_TIMEOUT_MS would be both a's "
                 "POOL_CONNECT_TIMEOUT_MS and a-pool-connect's TIMEOUT_MS"))
    fail_msg("%s", r);
  free(r);
  /* a shared prefix alone is fine: no key of db starts with CONNECT_ here */
  char *ok[] = {(char *)"RESIL_DEPS=db,db-connect,orders,orders-db,a-limit,a",
                (char *)"RESIL_DEP_DB_CONNECT_TIMEOUT_MS=100", NULL};
  resil_config *c = load_ok(ok);
  assert_int_equal(((resil_dep_config *)resil_config_find(c, "db-connect", NULL))->timeout_ms,
                   100);
  assert_int_equal(((resil_dep_config *)resil_config_find(c, "db", NULL))->timeout_ms, 1000);
  resil_config_free(c);
}

static char *write_file(const char *text) {
  static char path[64];
  strcpy(path, "/tmp/resil-config-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static void file_values_are_overridden_by_environment(void **state) {
  (void)state;
  char *path = write_file("# resil config\n"
                          "\n"
                          "RESIL_DEPS=cache:fake\n"
                          "export RESIL_DEP_CACHE_HOST = \"cache.internal\"\n"
                          "RESIL_DEP_CACHE_TIMEOUT_MS=300\n"
                          "RESIL_DEP_CACHE_PORT=6380\n");
  char envfile[128];
  snprintf(envfile, sizeof envfile, "RESIL_CONFIG_FILE=%s", path);
  char *env[] = {envfile, (char *)"RESIL_DEP_CACHE_TIMEOUT_MS=500", NULL};
  resil_config *c = load_ok(env);
  fake_cfg *f = resil_config_find(c, "cache", "fake");
  assert_string_equal(f->host, "cache.internal");
  assert_int_equal(f->port, 6380);
  assert_int_equal(f->dep.timeout_ms, 500); /* environment wins */
  resil_config_free(c);
  unlink(path);
}

static void file_problems_name_file_and_line(void **state) {
  (void)state;
  char *path = write_file("RESIL_DEPS=cache:fake\n"
                          "RESIL_DEP_CACHE_HOST=h\n"
                          "this is not a setting\n"
                          "OTHER_KEY=1\n"
                          "RESIL_DEP_CACHE_PORT=70000\n");
  char *r = load_bad(NULL, path);
  char l3[128], l4[128];
  snprintf(l3, sizeof l3, "%s:3: expected KEY=VALUE", path);
  snprintf(l4, sizeof l4, "%s:4: keys in the config file must start with RESIL_", path);
  const char *want[] = {l3, l4, "RESIL_DEP_CACHE_PORT: 70000 is outside 1..65535"};
  expect_all(r, want, 3);
  free(r);
  unlink(path);
  char *missing = load_bad(NULL, "/nonexistent/resil.env");
  assert_non_null(strstr(missing, "cannot open '/nonexistent/resil.env'"));
  free(missing);
}

/* RESIL_CLOCK belongs to the fast clock (read at its first use): the
 * configuration accepts it from the environment, names a bad value, and
 * refuses it in a file, where it would have no effect. */
static void resil_clock_is_checked_but_left_to_the_clock(void **state) {
  (void)state;
  char *ok[] = {(char *)"RESIL_DEPS=cache", (char *)"RESIL_CLOCK=portable", NULL};
  resil_config_free(load_ok(ok));
  char *bad[] = {(char *)"RESIL_DEPS=cache", (char *)"RESIL_CLOCK=fastest", NULL};
  char *r = load_bad(bad, NULL);
  const char *want[] = {"RESIL_CLOCK: 'fastest' is not auto, tsc or portable"};
  expect_all(r, want, 1);
  free(r);
  char *path = write_file("RESIL_DEPS=cache\nRESIL_CLOCK=tsc\n");
  r = load_bad(NULL, path);
  const char *want_file[] = {"RESIL_CLOCK works only in the environment"};
  expect_all(r, want_file, 1);
  free(r);
  unlink(path);
}

static void inconsistent_timeouts_are_errors(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=db:fake", (char *)"RESIL_DEP_DB_HOST=h", (char *)"RESIL_DEP_DB_TIMEOUT_MS=500",
                 (char *)"RESIL_DEP_DB_POOL_CONNECT_TIMEOUT_MS=2s", (char *)"RESIL_DRAIN_GRACE_MS=30s", NULL};
  char *r = load_bad(env, NULL);
  const char *want[] = {
      "RESIL_DEP_DB_POOL_CONNECT_TIMEOUT_MS: 2000 ms is longer than RESIL_DEP_DB_TIMEOUT_MS 500 ms",
      "RESIL_DRAIN_GRACE_MS: 30000 ms is not below RESIL_DRAIN_TIMEOUT_MS 20000 ms"};
  expect_all(r, want, 2);
  free(r);
}

static void dump_redacts_secrets_and_hash_ignores_them(void **state) {
  (void)state;
  char *a[] = {(char *)"RESIL_DEPS=db:fake", (char *)"RESIL_DEP_DB_HOST=h", (char *)"RESIL_DEP_DB_PASSWORD=one", NULL};
  char *b[] = {(char *)"RESIL_DEPS=db:fake", (char *)"RESIL_DEP_DB_HOST=h", (char *)"RESIL_DEP_DB_PASSWORD=two", NULL};
  char *t[] = {(char *)"RESIL_DEPS=db:fake", (char *)"RESIL_DEP_DB_HOST=h", (char *)"RESIL_DEP_DB_PASSWORD=two",
               (char *)"RESIL_DEP_DB_TIMEOUT_MS=999", NULL};
  resil_config *ca = load_ok(a), *cb = load_ok(b), *ct = load_ok(t);
  char *dump = resil_config_dump(ca);
  assert_non_null(strstr(dump, "RESIL_DEP_DB_PASSWORD=<redacted>\n"));
  assert_non_null(strstr(dump, "RESIL_DEP_DB_HOST=h\n"));
  assert_non_null(strstr(dump, "RESIL_DEP_DB_BREAKER_WINDOW_BUCKETS=10\n"));
  assert_non_null(strstr(dump, "RESIL_DEP_DB_POOL_MAX_SIZE=10\n"));
  assert_non_null(strstr(dump, "RESIL_DEPS=db:fake\n"));
  assert_null(strstr(dump, "one"));
  char *json = resil_config_dump_json(cb);
  assert_non_null(strstr(json, "\"password\":\"<redacted>\""));
  assert_null(strstr(json, "two"));
  assert_string_equal(resil_config_hash(ca), resil_config_hash(cb));
  assert_string_not_equal(resil_config_hash(cb), resil_config_hash(ct));
  free(dump);
  free(json);
  resil_config_free(ca);
  resil_config_free(cb);
  resil_config_free(ct);
}

static void a_kind_key_hides_the_pool_key_it_replaces(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=s:shadow", (char *)"RESIL_DEP_S_POOL_CONNECT_TIMEOUT_MS=100",
                 NULL};
  char *r = load_bad(env, NULL);
  assert_non_null(strstr(r, "RESIL_DEP_S_POOL_CONNECT_TIMEOUT_MS: unknown key"));
  free(r);
  char *ok[] = {(char *)"RESIL_DEPS=s:shadow", (char *)"RESIL_DEP_S_CONNECT_TIMEOUT_MS=100",
                NULL};
  resil_config *c = load_ok(ok);
  assert_int_equal(((shadow_cfg *)resil_config_find(c, "s", "shadow"))->connect_timeout_ms, 100);
  char *dump = resil_config_dump(c);
  assert_null(strstr(dump, "POOL_CONNECT_TIMEOUT_MS"));
  assert_non_null(strstr(dump, "RESIL_DEP_S_CONNECT_TIMEOUT_MS=100\n"));
  free(dump);
  resil_config_free(c);
  char *range[] = {(char *)"RESIL_DEPS=s:shadow", (char *)"RESIL_DEP_S_CONNECT_TIMEOUT_MS=5s",
                   NULL};
  r = load_bad(range, NULL);
  assert_non_null(strstr(r, "RESIL_DEP_S_CONNECT_TIMEOUT_MS: 5000 is outside 1..1000"));
  free(r);
  char *doc = resil_config_keys_markdown("shadow");
  assert_non_null(doc);
  assert_null(strstr(doc, "POOL_CONNECT_TIMEOUT_MS"));
  assert_non_null(strstr(doc, "| `RESIL_DEP_<NAME>_POOL_MAX_SIZE` | 10 |"));
  free(doc);
  assert_null(resil_config_keys_markdown("nosuchkind"));
}

static void value_parsers_are_strict(void **state) {
  (void)state;
  uint32_t v;
  bool b;
  const char *bad_uint[] = {"", " 5", "5 ", "-1", "+1", "1e3", "4294967296", "0x10", "1,000"};
  for (size_t i = 0; i < sizeof bad_uint / sizeof bad_uint[0]; i++)
    assert_int_equal(resil_parse_uint("X", bad_uint[i], &v, NULL), RESIL_E_INVALID);
  assert_int_equal(resil_parse_uint("X", "4294967295", &v, NULL), RESIL_OK);
  assert_int_equal(v, 4294967295u);
  const char *bad_ms[] = {"", "ms", "1.5s", "5sec", "-5s", "10 ms", "2d", "50000h"};
  for (size_t i = 0; i < sizeof bad_ms / sizeof bad_ms[0]; i++)
    assert_int_equal(resil_parse_ms("X", bad_ms[i], &v, NULL), RESIL_E_INVALID);
  assert_int_equal(resil_parse_ms("X", "90s", &v, NULL), RESIL_OK);
  assert_int_equal(v, 90000);
  assert_int_equal(resil_parse_ms("X", "0", &v, NULL), RESIL_OK);
  assert_int_equal(v, 0);
  resil_err err;
  assert_int_equal(resil_parse_bool("RESIL_X", "maybe", &b, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "RESIL_X: 'maybe' is not a boolean"));
  assert_int_equal(resil_parse_bool("X", "OFF", &b, NULL), RESIL_OK);
  assert_false(b);
}

/* Doubles (breaker.open_multiplier, retry.multiplier): a leading space once
 * made the loader read an uninitialised end pointer (a crash under ASan). */
static void double_values_are_strict(void **state) {
  (void)state;
  const char *bad_double[] = {" 2", "2 ", "\t2", "", "x", "2x", "0x10", "inf", "nan", "1e999",
                              "--2", ".", "1,5"};
  for (size_t i = 0; i < sizeof bad_double / sizeof bad_double[0]; i++) {
    char var[128];
    snprintf(var, sizeof var, "RESIL_DEP_A_BREAKER_OPEN_MULTIPLIER=%s", bad_double[i]);
    char *env[] = {(char *)"RESIL_DEPS=a", var, NULL};
    char *r = load_bad(env, NULL);
    if (!strstr(r, "RESIL_DEP_A_BREAKER_OPEN_MULTIPLIER: '") || !strstr(r, "' is not a number"))
      fail_msg("'%s': %s", bad_double[i], r);
    free(r);
  }
  char *env[] = {(char *)"RESIL_DEPS=a", (char *)"RESIL_DEP_A_BREAKER_OPEN_MULTIPLIER=1.5",
                 (char *)"RESIL_DEP_A_RETRY_MULTIPLIER=3", NULL};
  resil_config *c = load_ok(env);
  const resil_dep_config *d = resil_config_find(c, "a", NULL);
  assert_true(d->breaker.open_multiplier == 1.5);
  assert_true(d->retry.multiplier == 3.0);
  resil_config_free(c);
}

static void bad_kind_registration_is_refused(void **state) {
  (void)state;
  resil_config_kind k = {.name = "broken"};
  resil_err err;
  assert_int_equal(resil_config_register_kind(&k, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "broken"));
  assert_int_equal(resil_config_register_kind(NULL, &err), RESIL_E_INVALID);
  resil_config *c;
  assert_int_equal(resil_config_load(NULL, NULL, NULL, NULL, &err), RESIL_E_INVALID);
  (void)c;
}

/* Key rows are checked against the kind's struct when it registers: a key
 * whose type does not fit its field (a SIZE key on a uint32_t field next to
 * another key, a double at a 4-byte offset, a field past the struct) is
 * refused, naming the kind and the key, instead of being written over its
 * neighbour at load. The core's own rows fit their structs. */
typedef struct two_u32 {
  resil_dep_config dep;
  uint32_t a, b;
} two_u32;
static void two_init(void *c, const char *name) { resil_dep_config_init(c, name); }
static resil_status two_validate(const void *c, resil_err *err) {
  return resil_dep_config_validate(c, err);
}
static resil_dep_config *two_dep(void *c) { return c; }

static void key_rows_that_do_not_fit_their_struct_are_refused(void **state) {
  (void)state;
  static const struct {
    resil_key_type ta, tb;
    size_t oa;
    const char *why;
  } cases[] = {
      {RESIL_KEY_SIZE, RESIL_KEY_UINT, offsetof(two_u32, a), "overlaps another key's field"},
      {RESIL_KEY_DOUBLE, RESIL_KEY_UINT, offsetof(two_u32, a) + 4, "is not aligned"},
      {RESIL_KEY_UINT, RESIL_KEY_UINT, sizeof(two_u32), "lies past the end"},
      {(resil_key_type)99, RESIL_KEY_UINT, offsetof(two_u32, a), "has an unknown type"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    resil_key_spec keys[2] = {
        {.key = "b", .type = cases[i].tb, .offset = offsetof(two_u32, b)},
        {.key = "a", .type = cases[i].ta, .offset = cases[i].oa},
    };
    resil_config_kind k = {.name = "two", .size = sizeof(two_u32), .init = two_init,
                           .validate = two_validate, .dep_config = two_dep, .keys = keys,
                           .nkeys = 2};
    resil_err err = {.status = RESIL_OK, .msg = ""};
    assert_int_equal(resil_config_register_kind(&k, &err), RESIL_E_INVALID);
    if (!strstr(err.msg, "kind 'two': key 1 ('a'") || !strstr(err.msg, cases[i].why))
      fail_msg("case %zu: %s", i, err.msg);
  }
  /* the rows with the right types register */
  static const resil_key_spec good[] = {
      {.key = "a", .type = RESIL_KEY_UINT, .offset = offsetof(two_u32, a)},
      {.key = "b", .type = RESIL_KEY_MS, .offset = offsetof(two_u32, b)},
  };
  static const resil_config_kind two = {.name = "two", .size = sizeof(two_u32), .init = two_init,
                                        .validate = two_validate, .dep_config = two_dep,
                                        .keys = good, .nkeys = 2};
  assert_int_equal(resil_config_register_kind(&two, NULL), RESIL_OK);
  /* the core's tables, as kinds of their own structs, pass the same check */
  static resil_config_kind dep_rows = {.name = "dep-rows", .size = sizeof(resil_dep_config),
                                       .init = two_init, .validate = two_validate,
                                       .dep_config = two_dep};
  static resil_config_kind pool_rows = {.name = "pool-rows", .size = sizeof(resil_pool_config),
                                        .init = two_init, .validate = two_validate,
                                        .dep_config = two_dep};
  dep_rows.keys = resil_config_dep_keys(&dep_rows.nkeys);
  pool_rows.keys = resil_config_pool_keys(&pool_rows.nkeys);
  resil_err err;
  if (resil_config_register_kind(&dep_rows, &err) != RESIL_OK) fail_msg("%s", err.msg);
  if (resil_config_register_kind(&pool_rows, &err) != RESIL_OK) fail_msg("%s", err.msg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(plain_dependencies_get_defaults),
      cmocka_unit_test(keys_set_fields_with_units),
      cmocka_unit_test(every_problem_is_reported_at_once_by_variable),
      cmocka_unit_test(every_validator_problem_survives_by_variable),
      cmocka_unit_test(a_validator_without_the_collector_is_heard_in_full),
      cmocka_unit_test(missing_or_bad_dependency_list_is_an_error),
      cmocka_unit_test(longest_dependency_name_wins),
      cmocka_unit_test(dependency_names_that_share_a_variable_are_an_error),
      cmocka_unit_test(file_values_are_overridden_by_environment),
      cmocka_unit_test(file_problems_name_file_and_line),
      cmocka_unit_test(inconsistent_timeouts_are_errors),
      cmocka_unit_test(dump_redacts_secrets_and_hash_ignores_them),
      cmocka_unit_test(a_kind_key_hides_the_pool_key_it_replaces),
      cmocka_unit_test(value_parsers_are_strict),
      cmocka_unit_test(double_values_are_strict),
      cmocka_unit_test(bad_kind_registration_is_refused),
      cmocka_unit_test(key_rows_that_do_not_fit_their_struct_are_refused),
      cmocka_unit_test(resil_clock_is_checked_but_left_to_the_clock),
  };
  return cmocka_run_group_tests_name("config", tests, setup, NULL);
}
