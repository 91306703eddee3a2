/* CloudWatch Embedded Metric Format: every line is checked against the EMF
 * specification's rules with a real JSON parser (tests/support/minijson.h):
 * _aws.Timestamp an integer of ms near now, CloudWatchMetrics directives
 * with a Namespace, Dimensions (<= 30 per set, each a top-level string
 * member) and Metrics (<= 100, each Name a top-level number or a
 * Values/Counts object with equal, non-empty arrays; Unit from CloudWatch's
 * list); counters are deltas over the interval. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "minijson.h"
#include "resil/resil.h"
#include "resil/testing.h" /* resil_drain_reset */
#include "testutil.h"

static const char *const units[] = {
    "Seconds",          "Microseconds",     "Milliseconds",      "Bytes",
    "Kilobytes",        "Megabytes",        "Gigabytes",         "Terabytes",
    "Bits",             "Kilobits",         "Megabits",          "Gigabits",
    "Terabits",         "Percent",          "Count",             "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second",  "Terabytes/Second",
    "Bits/Second",      "Kilobits/Second",  "Megabits/Second",   "Gigabits/Second",
    "Terabits/Second",  "Count/Second",     "None"};

static bool unit_ok(const char *u) {
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (!strcmp(units[i], u)) return true;
  return false;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Validate one EMF document (without its trailing newline) and return its
 * parsed tree (caller frees). Fails the test on any violation. */
static mj *check_emf_line(const char *line, size_t len, int64_t ts_lo, int64_t ts_hi) {
  if (memchr(line, '\n', len)) fail_msg("newline inside an EMF document");
  mj *root = mj_parse(line, len);
  if (!root) fail_msg("not valid JSON: %.*s", (int)len, line);
  assert_int_equal(root->t, MJ_OBJ);
  for (size_t i = 0; i < root->n; i++)
    for (size_t k = i + 1; k < root->n; k++)
      if (!strcmp(root->keys[i], root->keys[k])) fail_msg("duplicate member %s", root->keys[i]);
  mj *aws = mj_get(root, "_aws");
  assert_non_null(aws);
  assert_int_equal(aws->t, MJ_OBJ);
  mj *ts = mj_get(aws, "Timestamp");
  assert_non_null(ts);
  assert_int_equal(ts->t, MJ_NUM);
  assert_true(ts->integer);
  if ((int64_t)ts->num < ts_lo || (int64_t)ts->num > ts_hi)
    fail_msg("Timestamp %.0f outside [%lld, %lld]", ts->num, (long long)ts_lo, (long long)ts_hi);
  mj *cwm = mj_get(aws, "CloudWatchMetrics");
  assert_non_null(cwm);
  assert_int_equal(cwm->t, MJ_ARR);
  assert_true(cwm->n >= 1);
  for (size_t d = 0; d < cwm->n; d++) {
    mj *dir = cwm->items[d];
    assert_int_equal(dir->t, MJ_OBJ);
    mj *ns = mj_get(dir, "Namespace");
    assert_non_null(ns);
    assert_int_equal(ns->t, MJ_STR);
    assert_true(strlen(ns->str) >= 1 && strlen(ns->str) <= 255);
    mj *dims = mj_get(dir, "Dimensions");
    assert_non_null(dims);
    assert_int_equal(dims->t, MJ_ARR);
    for (size_t s = 0; s < dims->n; s++) {
      mj *set = dims->items[s];
      assert_int_equal(set->t, MJ_ARR);
      assert_true(set->n <= 30);
      for (size_t k = 0; k < set->n; k++) {
        assert_int_equal(set->items[k]->t, MJ_STR);
        mj *member = mj_get(root, set->items[k]->str);
        if (!member || member->t != MJ_STR)
          fail_msg("dimension %s has no top-level string member", set->items[k]->str);
        assert_true(strlen(member->str) >= 1 && strlen(member->str) <= 1024);
      }
    }
    mj *metrics = mj_get(dir, "Metrics");
    assert_non_null(metrics);
    assert_int_equal(metrics->t, MJ_ARR);
    assert_true(metrics->n <= 100);
    for (size_t k = 0; k < metrics->n; k++) {
      mj *m = metrics->items[k];
      assert_int_equal(m->t, MJ_OBJ);
      mj *name = mj_get(m, "Name");
      assert_non_null(name);
      assert_int_equal(name->t, MJ_STR);
      assert_true(strlen(name->str) >= 1 && strlen(name->str) <= 1024);
      mj *unit = mj_get(m, "Unit");
      if (unit) {
        assert_int_equal(unit->t, MJ_STR);
        if (!unit_ok(unit->str)) fail_msg("unit %s is not a CloudWatch unit", unit->str);
      }
      mj *v = mj_get(root, name->str);
      if (!v) fail_msg("metric %s has no top-level member", name->str);
      if (v->t == MJ_NUM) {
        assert_true(isfinite(v->num));
      } else if (v->t == MJ_OBJ) {
        mj *vals = mj_get(v, "Values"), *counts = mj_get(v, "Counts");
        assert_non_null(vals);
        assert_non_null(counts);
        assert_int_equal(vals->t, MJ_ARR);
        assert_int_equal(counts->t, MJ_ARR);
        if (vals->n == 0) fail_msg("%s: Values must not be empty", name->str);
        assert_true(vals->n <= 100);
        assert_int_equal(vals->n, counts->n);
        for (size_t q = 0; q < vals->n; q++) {
          assert_int_equal(vals->items[q]->t, MJ_NUM);
          assert_int_equal(counts->items[q]->t, MJ_NUM);
          assert_true(counts->items[q]->num > 0);
        }
      } else {
        fail_msg("metric %s is neither a number nor Values/Counts", name->str);
      }
      for (size_t q = k + 1; q < metrics->n; q++)
        assert_string_not_equal(name->str, mj_get(metrics->items[q], "Name")->str);
    }
  }
  return root;
}

/* Split text into lines, validate each; returns the parsed documents. */
static size_t check_emf_text(const char *text, mj **docs, size_t max) {
  size_t n = 0;
  int64_t now = now_ms();
  size_t tl = strlen(text);
  assert_true(tl > 0);
  assert_int_equal(text[tl - 1], '\n');
  for (const char *p = text; *p;) {
    const char *nl = strchr(p, '\n');
    assert_non_null(nl);
    assert_true(n < max);
    docs[n++] = check_emf_line(p, (size_t)(nl - p), now - 600000, now + 60000);
    p = nl + 1;
  }
  return n;
}

static double num(const mj *doc, const char *name) {
  mj *v = mj_get(doc, name);
  if (!v || v->t != MJ_NUM) fail_msg("no numeric member %s", name);
  return v->num;
}

static size_t metric_count(const mj *doc) {
  return mj_get(mj_get(mj_get(doc, "_aws"), "CloudWatchMetrics")->items[0], "Metrics")->n;
}

static resil_dep *mk(const char *name) {
  resil_dep_config c;
  resil_dep_config_init(&c, name);
  c.breaker.open_jitter_percent = 0;
  resil_err err;
  resil_dep *d = resil_dep_new(&c, &err);
  if (!d) fail_msg("%s", err.msg);
  return d;
}

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
  return 0;
}
static int teardown(void **state) {
  (void)state;
  resil_emf_stop();
  fake_clock_uninstall();
  return 0;
}

/* ---- config ---- */

static void config_defaults_are_safe(void **state) {
  (void)state;
  resil_emf_config c;
  resil_emf_config_init(&c);
  assert_string_equal(c.metric_namespace, "resil");
  assert_null(c.service);
  assert_int_equal(c.interval_ms, 60000);
  assert_int_equal(c.fd, 1);
  assert_int_equal(resil_emf_config_validate(&c, NULL), RESIL_OK);
}

static void config_errors_are_reported_together(void **state) {
  (void)state;
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.metric_namespace = "AWS/EC2";
  c.interval_ms = 999;
  c.service = "bad\nname";
  c.fd = -1;
  resil_err err;
  assert_int_equal(resil_emf_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "emf.metric_namespace"));
  assert_non_null(strstr(err.msg, "AWS/"));
  assert_non_null(strstr(err.msg, "emf.interval_ms"));
  assert_non_null(strstr(err.msg, "emf.service"));
  assert_non_null(strstr(err.msg, "emf.fd"));
  c.metric_namespace = "has\"quote";
  c.interval_ms = 86400001;
  c.service = NULL;
  c.fd = 1;
  assert_int_equal(resil_emf_config_validate(&c, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "emf.metric_namespace"));
  assert_non_null(strstr(err.msg, "emf.interval_ms"));
  c.metric_namespace = "";
  c.interval_ms = 1000;
  assert_int_equal(resil_emf_config_validate(&c, &err), RESIL_E_INVALID);
  c.metric_namespace = "My/App-1:prod #2_x.y";
  assert_int_equal(resil_emf_config_validate(&c, &err), RESIL_OK);
  assert_int_equal(resil_emf_start(NULL, &err), RESIL_E_INVALID);
  assert_int_equal(resil_emf_flush(&err), RESIL_E_CLOSED);
}

/* ---- rendering ---- */

static void render_one_dependency_is_valid_emf(void **state) {
  (void)state;
  resil_dep *d = mk("orders-db");
  run(d, RESIL_OK, 10, 2);         /* (1 ms, 2.5 ms] bucket: midpoint 1.75 */
  run(d, RESIL_E_TIMEOUT, 2, 700); /* (500 ms, 1 s]: midpoint 750 */
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.service = "check\"out";
  c.metric_namespace = "Shop/Checkout";
  char *out = NULL;
  size_t len = 0;
  int64_t ts = now_ms();
  assert_int_equal(resil_emf_render(&c, &st, NULL, ts, 0, &out, &len, NULL), RESIL_OK);
  assert_int_equal(strlen(out), len);
  mj *docs[8];
  size_t n = check_emf_text(out, docs, 8);
  assert_int_equal(n, 1);
  mj *doc = docs[0];
  assert_int_equal((int64_t)num(mj_get(doc, "_aws"), "Timestamp"), ts);
  mj *dir = mj_get(mj_get(doc, "_aws"), "CloudWatchMetrics")->items[0];
  assert_string_equal(mj_get(dir, "Namespace")->str, "Shop/Checkout");
  mj *dims = mj_get(dir, "Dimensions");
  assert_int_equal(dims->n, 1);
  assert_int_equal(dims->items[0]->n, 2);
  assert_string_equal(dims->items[0]->items[0]->str, "Service");
  assert_string_equal(dims->items[0]->items[1]->str, "Dependency");
  assert_string_equal(mj_get(doc, "Service")->str, "check\"out");
  assert_string_equal(mj_get(doc, "Dependency")->str, "orders-db");
  assert_true(num(doc, "Calls") == 12);
  assert_true(num(doc, "CallsSuccess") == 10);
  assert_true(num(doc, "CallsTimeout") == 2);
  assert_true(num(doc, "CallsFailure") == 0);
  assert_true(num(doc, "Rejections") == 0);
  assert_true(num(doc, "InFlight") == 0);
  assert_true(num(doc, "ConcurrencyLimit") == 64);
  assert_true(num(doc, "BreakerState") == 0);
  assert_null(mj_get(doc, "PoolInUse")); /* no pool attached */
  mj *lat = mj_get(doc, "Latency");
  assert_non_null(lat);
  mj *vals = mj_get(lat, "Values"), *counts = mj_get(lat, "Counts");
  assert_int_equal(vals->n, 2);
  assert_true(fabs(vals->items[0]->num - 1.75) < 1e-9);
  assert_true(counts->items[0]->num == 10);
  assert_true(fabs(vals->items[1]->num - 750) < 1e-9);
  assert_true(counts->items[1]->num == 2);
  /* units as documented */
  mj *metrics = mj_get(dir, "Metrics");
  for (size_t i = 0; i < metrics->n; i++) {
    const char *nm = mj_get(metrics->items[i], "Name")->str;
    const char *u = mj_get(metrics->items[i], "Unit")->str;
    if (!strcmp(nm, "Latency")) assert_string_equal(u, "Milliseconds");
    if (!strcmp(nm, "Saturation")) assert_string_equal(u, "Percent");
    if (!strcmp(nm, "CallsSuccess")) assert_string_equal(u, "Count");
    if (!strcmp(nm, "BreakerState")) assert_string_equal(u, "None");
  }
  mj_free(doc);
  free(out);
  resil_dep_free(d);
}

static void no_calls_means_no_latency_distribution(void **state) {
  (void)state;
  resil_dep *d = mk("idle-dep");
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  resil_emf_config c;
  resil_emf_config_init(&c); /* no service: Dimensions [["Dependency"]] */
  char *out = NULL;
  assert_int_equal(resil_emf_render(&c, &st, NULL, now_ms(), 0, &out, NULL, NULL), RESIL_OK);
  mj *docs[4];
  assert_int_equal(check_emf_text(out, docs, 4), 1);
  assert_null(mj_get(docs[0], "Latency"));
  assert_null(mj_get(docs[0], "Service"));
  mj *dims = mj_get(mj_get(mj_get(docs[0], "_aws"), "CloudWatchMetrics")->items[0], "Dimensions");
  assert_int_equal(dims->items[0]->n, 1);
  assert_string_equal(dims->items[0]->items[0]->str, "Dependency");
  assert_true(num(docs[0], "Calls") == 0);
  mj_free(docs[0]);
  free(out);
  /* The same interval seen as a delta against itself: still no Latency. */
  run(d, RESIL_OK, 3, 1);
  resil_dep_get_stats(d, &st);
  assert_int_equal(resil_emf_render(&c, &st, &st, now_ms(), 0, &out, NULL, NULL), RESIL_OK);
  assert_int_equal(check_emf_text(out, docs, 4), 1);
  assert_null(mj_get(docs[0], "Latency"));
  assert_true(num(docs[0], "CallsSuccess") == 0);
  mj_free(docs[0]);
  free(out);
  resil_dep_free(d);
}

static resil_status fake_connect(void *ctx, resil_deadline dl, void **conn, resil_err *err) {
  (void)ctx;
  (void)dl;
  (void)err;
  *conn = malloc(1);
  return RESIL_OK;
}
static void fake_close(void *ctx, void *conn) {
  (void)ctx;
  free(conn);
}

static void documents_split_at_the_metric_limit(void **state) {
  (void)state;
  resil_dep *d = mk("split-dep");
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = "split-dep";
  pc.housekeeping_ms = 0;
  resil_pool_connector conn = {.connect = fake_connect, .close = fake_close};
  resil_pool *pool = resil_pool_new(&pc, &conn, NULL);
  assert_non_null(pool);
  resil_pool_conn *pcn;
  assert_int_equal(resil_pool_acquire(pool, RESIL_DEADLINE_UNSET, &pcn, NULL), RESIL_OK);
  resil_dep_attach_pool(d, pool);
  run(d, RESIL_OK, 4, 3);
  resil_dep_stats st;
  resil_dep_get_stats(d, &st);
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.service = "svc";
  char *out = NULL;
  assert_int_equal(resil_emf_render(&c, &st, NULL, now_ms(), 0, &out, NULL, NULL), RESIL_OK);
  mj *docs[16];
  assert_int_equal(check_emf_text(out, docs, 16), 1);
  size_t total = metric_count(docs[0]);
  assert_true(total > 7 && total <= 100);
  assert_true(num(docs[0], "PoolInUse") == 1);
  assert_true(num(docs[0], "PoolConnectsOk") == 1);
  assert_true(num(docs[0], "PoolMax") == 10);
  assert_non_null(mj_get(docs[0], "PoolAcquireLatency"));
  mj_free(docs[0]);
  free(out);

  assert_int_equal(resil_emf_render(&c, &st, NULL, now_ms(), 7, &out, NULL, NULL), RESIL_OK);
  size_t n = check_emf_text(out, docs, 16);
  assert_int_equal(n, (total + 6) / 7);
  size_t seen = 0;
  for (size_t i = 0; i < n; i++) {
    size_t k = metric_count(docs[i]);
    assert_true(k >= 1 && k <= 7);
    seen += k;
    assert_string_equal(mj_get(docs[i], "Dependency")->str, "split-dep");
    assert_string_equal(mj_get(docs[i], "Service")->str, "svc");
    mj_free(docs[i]);
  }
  assert_int_equal(seen, total);
  free(out);
  /* max_metrics above the EMF limit is clamped to 100 */
  assert_int_equal(resil_emf_render(&c, &st, NULL, now_ms(), 1000, &out, NULL, NULL), RESIL_OK);
  assert_int_equal(check_emf_text(out, docs, 16), 1);
  mj_free(docs[0]);
  free(out);
  resil_pool_release(pool, pcn, RESIL_POOL_OK);
  resil_dep_attach_pool(d, NULL);
  resil_pool_free(pool);
  resil_dep_free(d);
}

static void counters_that_went_backwards_restart(void **state) {
  (void)state;
  resil_dep *d = mk("reset-dep");
  run(d, RESIL_OK, 3, 1);
  resil_dep_stats cur, prev;
  resil_dep_get_stats(d, &cur);
  prev = cur;
  prev.calls[RESIL_OUTCOME_SUCCESS] = 100; /* as if re-created */
  prev.latency.counts[3] = 100;
  resil_emf_config c;
  resil_emf_config_init(&c);
  char *out = NULL;
  assert_int_equal(resil_emf_render(&c, &cur, &prev, now_ms(), 0, &out, NULL, NULL), RESIL_OK);
  mj *docs[4];
  assert_int_equal(check_emf_text(out, docs, 4), 1);
  assert_true(num(docs[0], "CallsSuccess") == 3);
  mj *lat = mj_get(docs[0], "Latency");
  assert_non_null(lat);
  assert_true(mj_get(lat, "Counts")->items[0]->num == 3);
  mj_free(docs[0]);
  free(out);
  assert_int_equal(resil_emf_render(NULL, &cur, NULL, 0, 0, &out, NULL, NULL), RESIL_E_INVALID);
  assert_int_equal(resil_emf_render(&c, NULL, NULL, 0, 0, &out, NULL, NULL), RESIL_E_INVALID);
  resil_dep_free(d);
}

/* ---- the emitter ---- */

/* Read whatever the emitter wrote, waiting up to wait_ms for the first byte. */
static char *drain_pipe(int fd, int wait_ms) {
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, wait_ms);
  while (r > 0) {
    ssize_t n = read(fd, buf + len, cap - len - 1);
    if (n <= 0) break;
    len += (size_t)n;
    if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
    r = poll(&p, 1, 0);
  }
  buf[len] = 0;
  return buf;
}

/* The documents of dependency name among docs, or NULL. */
static mj *find_doc(mj **docs, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(mj_get(docs[i], "Dependency")->str, name)) return docs[i];
  return NULL;
}

static void emitter_reports_counters_as_deltas(void **state) {
  (void)state;
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  resil_dep *a = mk("delta-a");
  resil_dep *b = mk("delta-b");
  run(a, RESIL_OK, 7, 1); /* before start: not reported */
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.service = "deltas";
  c.interval_ms = 3600000; /* only flushes emit in this test */
  c.fd = pfd[1];
  resil_err err;
  assert_int_equal(resil_emf_start(&c, &err), RESIL_OK);
  assert_true(resil_emf_running());
  assert_int_equal(resil_emf_start(&c, &err), RESIL_E_INVALID); /* one per process */

  /* interval 1 */
  run(a, RESIL_OK, 5, 2);
  run(b, RESIL_E_FAILURE, 1, 2);
  assert_int_equal(resil_emf_flush(&err), RESIL_OK);
  char *text = drain_pipe(pfd[0], 5000);
  mj *docs[16];
  size_t n = check_emf_text(text, docs, 16);
  assert_int_equal(n, 2);
  mj *da = find_doc(docs, n, "delta-a"), *db = find_doc(docs, n, "delta-b");
  assert_non_null(da);
  assert_non_null(db);
  assert_true(num(da, "CallsSuccess") == 5);
  assert_true(num(da, "Calls") == 5);
  assert_true(num(db, "CallsFailure") == 1);
  mj *lat = mj_get(da, "Latency");
  assert_non_null(lat);
  assert_true(mj_get(lat, "Counts")->items[0]->num == 5);
  for (size_t i = 0; i < n; i++) mj_free(docs[i]);
  free(text);

  /* interval 2 */
  run(a, RESIL_OK, 2, 2);
  run(a, RESIL_E_FAILURE, 3, 30);
  resil_breaker_set_mode(resil_dep_breaker(b), RESIL_BREAKER_MODE_FORCE_OPEN);
  run(b, RESIL_OK, 4, 1); /* rejected */
  assert_int_equal(resil_emf_flush(&err), RESIL_OK);
  text = drain_pipe(pfd[0], 5000);
  n = check_emf_text(text, docs, 16);
  assert_int_equal(n, 2);
  da = find_doc(docs, n, "delta-a");
  db = find_doc(docs, n, "delta-b");
  assert_true(num(da, "CallsSuccess") == 2);
  assert_true(num(da, "CallsFailure") == 3);
  assert_true(num(da, "Calls") == 5);
  lat = mj_get(da, "Latency");
  double total = 0;
  for (size_t i = 0; i < mj_get(lat, "Counts")->n; i++)
    total += mj_get(lat, "Counts")->items[i]->num;
  assert_true(total == 5);
  assert_true(num(db, "CallsFailure") == 0);
  assert_true(num(db, "RejectedBreakerOpen") == 4);
  assert_true(num(db, "Rejections") == 4);
  assert_true(num(db, "BreakerState") == RESIL_BREAKER_FORCED_OPEN);
  assert_null(mj_get(db, "Latency")); /* no admitted call in this interval */
  for (size_t i = 0; i < n; i++) mj_free(docs[i]);
  free(text);

  /* interval 3: nothing happened */
  assert_int_equal(resil_emf_flush(&err), RESIL_OK);
  text = drain_pipe(pfd[0], 5000);
  n = check_emf_text(text, docs, 16);
  da = find_doc(docs, n, "delta-a");
  assert_true(num(da, "Calls") == 0);
  assert_null(mj_get(da, "Latency"));
  for (size_t i = 0; i < n; i++) mj_free(docs[i]);
  free(text);

  resil_emf_stop();
  assert_false(resil_emf_running());
  assert_int_equal(resil_emf_flush(&err), RESIL_E_CLOSED);
  resil_emf_stop(); /* idempotent */
  close(pfd[0]);
  close(pfd[1]);
  resil_dep_free(a);
  resil_dep_free(b);
}

static double real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct flush_job {
  resil_status st;
  resil_err err;
  _Atomic bool done;
} flush_job;

static void *flush_thread(void *arg) {
  flush_job *j = arg;
  j->st = resil_emf_flush(&j->err);
  atomic_store(&j->done, true);
  return NULL;
}

static void *drain_thread(void *arg) {
  flush_job *j = arg;
  j->st = resil_drain(0, resil_deadline_in_ms(1000), &j->err);
  atomic_store(&j->done, true);
  return NULL;
}

/* Run fn on a thread and wait up to limit_ms of real time; if it is still blocked, empty
 * the pipe (unblocking the writer) so that the failure is reported instead of a hang. */
static double run_bounded(void *(*fn)(void *), flush_job *j, int rfd, double limit_ms) {
  pthread_t th;
  atomic_store(&j->done, false);
  double t0 = real_ms();
  assert_int_equal(pthread_create(&th, NULL, fn, j), 0);
  while (!atomic_load(&j->done) && real_ms() - t0 < limit_ms) {
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  double took = real_ms() - t0;
  bool stuck = !atomic_load(&j->done);
  while (!atomic_load(&j->done)) free(drain_pipe(rfd, 10));
  pthread_join(th, NULL);
  if (stuck) fail_msg("still blocked after %.0f ms on a full stdout", took);
  return took;
}

/* A stdout nobody reads (a blocking pipe, full) never blocks the emitter: a flush and a
 * drain return within the write budget, the lines are dropped and counted (also in the
 * Prometheus export), the caller's fd keeps its flags, and once the pipe is read again the
 * next emission arrives whole. */
static void full_stdout_never_blocks_flush_or_drain(void **state) {
  (void)state;
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  assert_true(fcntl(pfd[1], F_SETPIPE_SZ, 4096) > 0);
  /* Fill it with whole filler lines (non-blocking for the fill only), then make the write
   * end blocking again, as a process's stdout is. */
  int fl = fcntl(pfd[1], F_GETFL);
  fcntl(pfd[1], F_SETFL, fl | O_NONBLOCK);
  char filler[64];
  memset(filler, '#', sizeof filler - 1);
  filler[sizeof filler - 1] = '\n';
  while (write(pfd[1], filler, sizeof filler) == (ssize_t)sizeof filler) {}
  fcntl(pfd[1], F_SETFL, fl);
  assert_false(fcntl(pfd[1], F_GETFL) & O_NONBLOCK);

  resil_dep *a = mk("full-stdout");
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.interval_ms = 3600000;
  c.fd = pfd[1];
  assert_int_equal(resil_emf_start(&c, NULL), RESIL_OK);
  run(a, RESIL_OK, 3, 1);
  uint64_t before = resil_emf_dropped_lines();
  flush_job j;
  double took = run_bounded(flush_thread, &j, pfd[0], 3000);
  if (took > RESIL_EMF_WRITE_BUDGET_MS + 750)
    fail_msg("flush took %.0f ms on a full pipe (budget %d ms)", took, RESIL_EMF_WRITE_BUDGET_MS);
  assert_int_equal(j.st, RESIL_E_TIMEOUT);
  assert_non_null(strstr(j.err.msg, "dropped"));
  assert_true(resil_emf_dropped_lines() > before);
  char *prom = NULL;
  assert_int_equal(resil_export_prometheus(&prom, NULL, NULL), RESIL_OK);
  char want[64];
  snprintf(want, sizeof want, "\nresil_emf_dropped_lines_total %llu\n",
           (unsigned long long)resil_emf_dropped_lines());
  if (!strstr(prom, want)) fail_msg("%s not in the Prometheus text", want + 1);
  free(prom);
  /* the drain's last flush is bounded the same way */
  took = run_bounded(drain_thread, &j, pfd[0], 3000);
  if (took > RESIL_EMF_WRITE_BUDGET_MS + 750) fail_msg("drain took %.0f ms on a full pipe", took);
  resil_drain_reset();
  assert_false(fcntl(pfd[1], F_GETFL) & O_NONBLOCK); /* the caller's flags are untouched */

  /* Read the pipe again: only filler lines were in it, and the next emission is whole. */
  char *text = drain_pipe(pfd[0], 100);
  for (char *l = text; *l; l = strchr(l, '\n') + 1)
    if (strncmp(l, filler, sizeof filler) != 0) fail_msg("unexpected bytes in the pipe: %.80s", l);
  free(text);
  run(a, RESIL_OK, 2, 1);
  assert_int_equal(resil_emf_flush(NULL), RESIL_OK);
  text = drain_pipe(pfd[0], 5000);
  mj *docs[16];
  size_t n = check_emf_text(text, docs, 16);
  mj *d = find_doc(docs, n, "full-stdout");
  assert_non_null(d);
  for (size_t i = 0; i < n; i++) mj_free(docs[i]);
  free(text);
  resil_emf_stop();
  close(pfd[0]);
  close(pfd[1]);
  resil_dep_free(a);
}

/* The emitter writes one document for the dependency every interval_ms,
 * on a fixed schedule from start: the k-th arrives no earlier than k
 * intervals after the start (never more often), and no later than that plus
 * the slack (it does not drift: a late emission does not push the next
 * ones back). The first carries the calls made before it, the next ones
 * report deltas (0 calls). */
static void emitter_writes_every_interval(void **state) {
  (void)state;
  enum { INTERVAL = 1000, K = 3 };
  const uint64_t slack = test_slack_ms(INTERVAL);
  int pfd[2];
  assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
  fcntl(pfd[0], F_SETFL, O_NONBLOCK);
  resil_dep *a = mk("periodic");
  resil_emf_config c;
  resil_emf_config_init(&c);
  c.interval_ms = INTERVAL;
  c.fd = pfd[1];
  uint64_t t0 = test_now_ms();
  assert_int_equal(resil_emf_start(&c, NULL), RESIL_OK);
  run(a, RESIL_OK, 3, 1);
  uint64_t at[K];
  double calls[K];
  int got = 0;
  char line[65536];
  size_t len = 0;
  while (got < K) {
    uint64_t now = test_now_ms();
    uint64_t limit = t0 + (uint64_t)(got + 1) * INTERVAL + slack;
    struct pollfd pl = {.fd = pfd[0], .events = POLLIN};
    if (now >= limit || poll(&pl, 1, (int)(limit - now)) <= 0)
      fail_msg("emission %d not there %llu ms after start (interval %d ms, slack %llu ms)",
               got + 1, (unsigned long long)(test_now_ms() - t0), INTERVAL,
               (unsigned long long)slack);
    ssize_t n = read(pfd[0], line + len, sizeof line - 1 - len);
    if (n <= 0) continue;
    uint64_t when = test_now_ms() - t0;
    len += (size_t)n;
    line[len] = 0;
    char *nl;
    while ((nl = strchr(line, '\n')) != NULL) { /* one complete document */
      size_t ll = (size_t)(nl - line) + 1;
      char doc[65536];
      memcpy(doc, line, ll);
      doc[ll] = 0;
      memmove(line, line + ll, len - ll + 1);
      len -= ll;
      mj *docs[4];
      size_t nd = check_emf_text(doc, docs, 4);
      mj *d = find_doc(docs, nd, "periodic");
      if (d) {
        if (got >= K) fail_msg("more documents than emissions");
        at[got] = when;
        calls[got] = num(d, "Calls");
        got++;
      }
      for (size_t i = 0; i < nd; i++) mj_free(docs[i]);
    }
  }
  resil_emf_stop();
  for (int k = 0; k < K; k++) {
    print_message("# emission %d after %llu ms: %.0f calls\n", k + 1,
                  (unsigned long long)at[k], calls[k]);
    if (at[k] + 5 < (uint64_t)(k + 1) * INTERVAL)
      fail_msg("emission %d came %llu ms after start, before %d intervals of %d ms", k + 1,
               (unsigned long long)at[k], k + 1, INTERVAL);
  }
  assert_true(calls[0] == 3);
  assert_true(calls[1] == 0 && calls[2] == 0);
  close(pfd[0]);
  close(pfd[1]);
  resil_dep_free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_defaults_are_safe),
      cmocka_unit_test(config_errors_are_reported_together),
      cmocka_unit_test(render_one_dependency_is_valid_emf),
      cmocka_unit_test(no_calls_means_no_latency_distribution),
      cmocka_unit_test(documents_split_at_the_metric_limit),
      cmocka_unit_test(counters_that_went_backwards_restart),
      cmocka_unit_test(emitter_reports_counters_as_deltas),
      cmocka_unit_test(emitter_writes_every_interval),
      cmocka_unit_test(full_stdout_never_blocks_flush_or_drain),
  };
  return cmocka_run_group_tests_name("emf", tests, setup, teardown);
}
