/* Prometheus and JSON export: real output from dependencies in every
 * breaker state, checked by promtool (when installed; required in CI) and by
 * the rules promtool does not check: one TYPE per family, no duplicate
 * series, cumulative histogram buckets with +Inf equal to _count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "testutil.h"
#include "resil/resil.h"
#include "internal.h"

#define MS 1000000ull

static resil_dep *deps[5];

/* Connector for a pool attached to one dependency. */
static resil_status fake_connect(void *ctx, resil_deadline d, void **conn, resil_err *err) {
  (void)ctx;
  (void)d;
  (void)err;
  *conn = malloc(1);
  return RESIL_OK;
}
static void fake_close(void *ctx, void *conn) {
  (void)ctx;
  free(conn);
}
static resil_pool *pool;

static void run(resil_dep *d, resil_status out, int n, uint64_t ms) {
  for (int i = 0; i < n; i++) {
    resil_permit p;
    if (resil_dep_admit(d, RESIL_DEADLINE_UNSET, &p, NULL) != RESIL_OK) continue;
    fake_clock_advance_ms(ms);
    resil_dep_done(&p, out);
  }
}

static int setup(void **state) {
  (void)state;
  fake_clock_install();
  const char *names[] = {"closed-db", "open-api", "half-cache", "forced-x", "disabled-y"};
  for (int i = 0; i < 5; i++) {
    resil_dep_config c;
    resil_dep_config_init(&c, names[i]);
    c.breaker.open_jitter_percent = 0;
    c.breaker.half_open_probes = 2;
    deps[i] = resil_dep_new(&c, NULL);
    assert_non_null(deps[i]);
  }
  run(deps[0], RESIL_OK, 50, 2);
  run(deps[0], RESIL_E_CALLER, 3, 1);
  run(deps[1], RESIL_E_TIMEOUT, 6, 900);
  run(deps[2], RESIL_E_FAILURE, 5, 1);
  fake_clock_advance_ms(6000);
  resil_permit probe;
  assert_int_equal(resil_dep_admit(deps[2], RESIL_DEADLINE_UNSET, &probe, NULL), RESIL_OK);
  resil_dep_done(&probe, RESIL_OK); /* half-open, 1 of 2 successes */
  resil_breaker_set_mode(resil_dep_breaker(deps[3]), RESIL_BREAKER_MODE_FORCE_OPEN);
  run(deps[3], RESIL_OK, 3, 1);
  resil_breaker_set_mode(resil_dep_breaker(deps[4]), RESIL_BREAKER_MODE_DISABLE);
  run(deps[4], RESIL_E_FAILURE, 10, 1);
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = "closed-db";
  pc.max_size = 4;
  pc.housekeeping_ms = 0;
  resil_pool_connector conn = {.connect = fake_connect, .close = fake_close};
  pool = resil_pool_new(&pc, &conn, NULL);
  assert_non_null(pool);
  resil_pool_conn *pc1;
  assert_int_equal(resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &pc1, NULL), RESIL_OK);
  resil_pool_release(pool, pc1, RESIL_POOL_OK);
  assert_int_equal(resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &pc1, NULL), RESIL_OK);
  resil_pool_release(pool, pc1, RESIL_POOL_BROKEN);
  resil_dep_attach_pool(deps[0], pool);
  assert_int_equal(resil_export_set_info_label("config_hash", "ab12\"x\\y", NULL), RESIL_OK);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < 5; i++) resil_dep_free(deps[i]);
  resil_pool_free(pool);
  fake_clock_uninstall();
  return 0;
}

static char *render(void) {
  char *out = NULL;
  size_t len = 0;
  resil_err err;
  assert_int_equal(resil_export_prometheus(&out, &len, &err), RESIL_OK);
  assert_int_equal(strlen(out), len);
  return out;
}

/* ---- the rules promtool does not check ---- */

#define MAXS 4096
static char *series[MAXS];
static int nseries;

static void check_rules(char *text) {
  char types[256][96];
  int ntypes = 0;
  char cur_family[96] = "", cur_type[32] = "";
  unsigned long long last_bucket = 0, inf = 0;
  char bucket_series[256] = "";
  nseries = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (!strncmp(line, "# TYPE ", 7)) {
      sscanf(line + 7, "%95s %31s", cur_family, cur_type);
      for (int i = 0; i < ntypes; i++)
        if (!strcmp(types[i], cur_family)) fail_msg("TYPE twice for %s", cur_family);
      strcpy(types[ntypes++], cur_family);
      continue;
    }
    if (line[0] == '#') continue;
    char *sp = strrchr(line, ' ');
    assert_non_null(sp);
    *sp = 0;
    const char *value = sp + 1;
    for (int i = 0; i < nseries; i++)
      if (!strcmp(series[i], line)) fail_msg("duplicate series %s", line);
    assert_true(nseries < MAXS);
    series[nseries++] = line;
    assert_true(strncmp(line, cur_family, strlen(cur_family)) == 0); /* grouped under TYPE */
    if (!strcmp(cur_type, "counter")) assert_non_null(strstr(cur_family, "_total"));
    if (!strcmp(cur_type, "histogram")) {
      char *brace = strchr(line, '{');
      if (strstr(line, "_bucket{")) {
        /* series identity without the le label */
        char id[256];
        snprintf(id, sizeof id, "%.*s", (int)(strstr(line, ",le=") - line), line);
        unsigned long long v = strtoull(value, NULL, 10);
        if (strcmp(id, bucket_series) != 0) {
          strcpy(bucket_series, id);
          last_bucket = 0;
        }
        if (v < last_bucket) fail_msg("bucket decreases: %s", line);
        last_bucket = v;
        if (strstr(line, "le=\"+Inf\"")) inf = v;
      } else if (strstr(line, "_count{")) {
        unsigned long long v = strtoull(value, NULL, 10);
        if (v != inf) fail_msg("%s = %llu but +Inf bucket = %llu", line, v, inf);
      }
      (void)brace;
    }
  }
  assert_true(nseries > 50);
}

static void prometheus_output_obeys_exposition_rules(void **state) {
  (void)state;
  char *out = render();
  assert_non_null(strstr(out, "resil_calls_total{dependency=\"closed-db\",outcome=\"success\"} 50"));
  assert_non_null(strstr(out, "resil_calls_total{dependency=\"closed-db\",outcome=\"ignored\"} 3"));
  assert_non_null(strstr(out, "resil_breaker_state{dependency=\"open-api\",state=\"open\"} 1"));
  assert_non_null(strstr(out, "resil_breaker_state{dependency=\"half-cache\",state=\"half_open\"} 1"));
  assert_non_null(strstr(out, "resil_breaker_state{dependency=\"forced-x\",state=\"forced_open\"} 1"));
  assert_non_null(strstr(out, "resil_rejections_total{dependency=\"forced-x\",reason=\"breaker_open\"} 3"));
  assert_non_null(strstr(out, "resil_call_duration_seconds_bucket{dependency=\"closed-db\",le=\"0.0025\"} 53"));
  assert_non_null(strstr(out, "resil_call_duration_seconds_count{dependency=\"closed-db\"} 53"));
  assert_non_null(strstr(out, "resil_pool_connects_total{dependency=\"closed-db\",result=\"ok\"} 1"));
  assert_non_null(strstr(out, "resil_pool_closed_total{dependency=\"closed-db\",reason=\"broken\"} 1"));
  assert_non_null(strstr(out, "config_hash=\"ab12\\\"x\\\\y\""));
  check_rules(out);
  free(out);
}

static void promtool_accepts_the_output(void **state) {
  (void)state;
  const char *promtool = access("/usr/bin/promtool", X_OK) == 0 ? "/usr/bin/promtool" : NULL;
  if (!promtool) {
    if (test_env("CI")) fail_msg("promtool is required in CI (Debian package prometheus)");
    skip();
  }
  char *out = render();
  char path[] = "/tmp/resil-prom-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, out, strlen(out)), (ssize_t)strlen(out));
  close(fd);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s check metrics < %s > %s.out 2>&1", promtool, path, path);
  int rc = system(cmd);
  char outpath[300], msg[4096] = "";
  snprintf(outpath, sizeof outpath, "%s.out", path);
  FILE *f = fopen(outpath, "r");
  if (f) {
    size_t n = fread(msg, 1, sizeof msg - 1, f);
    msg[n] = 0;
    fclose(f);
  }
  unlink(path);
  unlink(outpath);
  free(out);
  if (rc != 0 || msg[0]) fail_msg("promtool check metrics complained (rc %d): %s", rc, msg);
}

static void json_snapshot_has_every_dependency(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(resil_export_json(&out, NULL, NULL), RESIL_OK);
  for (int i = 0; i < 5; i++) {
    char want[96];
    snprintf(want, sizeof want, "\"name\":\"%s\"", resil_dep_name(deps[i]));
    assert_non_null(strstr(out, want));
  }
  assert_non_null(strstr(out, "\"state\":\"half_open\""));
  assert_non_null(strstr(out, "\"pool\":{\"max\":4"));
  /* balanced braces and brackets: a cheap structural check */
  int depth = 0;
  for (char *c = out; *c; c++) {
    if (*c == '{' || *c == '[') depth++;
    if (*c == '}' || *c == ']') depth--;
    assert_true(depth >= 0);
  }
  assert_int_equal(depth, 0);
  free(out);
}

/* resil_info names the clock the call path reads (tsc or clock_gettime),
 * so figures and latencies from different hosts are never compared blind. */
static void info_names_the_call_path_clock(void **state) {
  (void)state;
  char *out = NULL;
  assert_int_equal(resil_export_prometheus(&out, NULL, NULL), RESIL_OK);
  char want[128];
  snprintf(want, sizeof want, "resil_info{version=\"%s\",clock=\"%s\",", resil_version(),
           resil__fast_clock_source());
  if (!strstr(out, want)) fail_msg("missing '%s' in:\n%.600s", want, out);
  assert_true(strcmp(resil__fast_clock_source(), "tsc") == 0 ||
              strcmp(resil__fast_clock_source(), "clock_gettime") == 0);
  free(out);
}

static void bad_arguments_are_named(void **state) {
  (void)state;
  resil_err err;
  assert_int_equal(resil_export_prometheus(NULL, NULL, &err), RESIL_E_INVALID);
  assert_int_equal(resil_export_set_info_label("9bad", "x", &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "9bad"));
  assert_int_equal(resil_export_set_info_label("version", "x", &err), RESIL_E_INVALID);
  assert_int_equal(resil_export_set_info_label("clock", "x", &err), RESIL_E_INVALID);
  assert_int_equal(resil_export_set_info_label("ok", NULL, &err), RESIL_E_INVALID);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(prometheus_output_obeys_exposition_rules),
      cmocka_unit_test(promtool_accepts_the_output),
      cmocka_unit_test(json_snapshot_has_every_dependency),
      cmocka_unit_test(bad_arguments_are_named),
      cmocka_unit_test(info_names_the_call_path_clock),
  };
  return cmocka_run_group_tests_name("export", tests, setup, teardown);
}
