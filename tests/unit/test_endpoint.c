/* Several addresses behind one pool (resil/endpoint.h): host-list parsing,
 * outlier ejection (consecutive failures, the percentage cap, ejection time
 * growing and capped, re-admission on probation, decay, the success-rate
 * rule), power-of-two-choices spreading, the shared connection budget and
 * the dependency breaker's rule. A fake connector per address and the fake
 * clock; no network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#include <stdatomic.h>
#include <stdlib.h>

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "fake_clock.h"
#include "resil/adapter.h"
#include "resil/resil.h"

/* ---- Fake addresses ------------------------------------------------------ */

#define NADDR 20
typedef struct fconn {
  int addr; /* index in the host list */
} fconn;

static struct {
  _Atomic bool down[NADDR]; /* connects to it fail */
  _Atomic int connects[NADDR], closes[NADDR], open;
} S;

/* 127.0.0.1:7001.. from a host list; 10.9.0.1.. (port 7000) from DNS. */
static int addr_index(const resil_endpoint *ep) {
  if (strncmp(ep->host, "10.9.0.", 7) == 0) return atoi(ep->host + 7) - 1;
  return (int)ep->port - 7001;
}

static resil_status f_connect_to(void *ctx, const resil_endpoint *ep, resil_deadline d,
                                 void **conn, resil_err *err) {
  (void)ctx;
  (void)d;
  int i = addr_index(ep);
  assert_true(i >= 0 && i < NADDR);
  atomic_fetch_add(&S.connects[i], 1);
  if (atomic_load(&S.down[i]))
    return resil_err_set(err, RESIL_E_FAILURE, "connect to %s: refused", ep->text);
  fconn *c = malloc(sizeof *c);
  c->addr = i;
  atomic_fetch_add(&S.open, 1);
  *conn = c;
  return RESIL_OK;
}

static void f_close(void *ctx, void *conn) {
  (void)ctx;
  fconn *c = conn;
  atomic_fetch_add(&S.closes[c->addr], 1);
  atomic_fetch_sub(&S.open, 1);
  free(c);
}

static const char *const HOSTS3 = "127.0.0.1:7001, 127.0.0.1:7002,127.0.0.1:7003";

/* A test pool's config (the fake addresses reset). */
static resil_pool_config test_cfg(const char *name, uint32_t max_size) {
  memset(&S, 0, sizeof S);
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = name;
  pc.max_size = max_size;
  pc.housekeeping_ms = 0;
  pc.validate_after_idle_ms = 3600000;
  pc.acquire_timeout_ms = 50;
  return pc;
}

static resil_pool *make(const char *hosts, uint32_t max_size, const resil_outlier_config *oc) {
  resil_pool_config pc = test_cfg("multi", max_size);
  resil_pool_connector cn = {.close = f_close};
  resil_err err;
  resil_pool *p = resil_pool_new_endpoints(&pc, &cn, f_connect_to, hosts, 6379, oc, &err);
  if (!p) fail_msg("resil_pool_new_endpoints: %s", err.msg);
  return p;
}

static resil_outlier_config ocfg(uint32_t consecutive, uint32_t base_ms, uint32_t max_ms,
                                 uint32_t percent) {
  resil_outlier_config oc;
  resil_outlier_config_init(&oc);
  oc.consecutive_failures = consecutive;
  oc.base_ejection_ms = base_ms;
  oc.max_ejection_ms = max_ms;
  oc.max_ejection_percent = percent;
  oc.interval_ms = 1000;
  return oc;
}

/* One call: acquire, see which address it went to, release it OK unless
 * that address is bad (then BROKEN, as a timeout would). Returns the
 * address index, or -1 - status if the acquire failed. */
static bool bad[NADDR];
static int call(resil_pool *p) {
  resil_pool_conn *c;
  resil_err err;
  resil_status st = resil_pool_acquire(p, resil_deadline_in_ms(20), &c, &err);
  if (st != RESIL_OK) return -1 - (int)st;
  int i = ((fconn *)resil_pool_conn_handle(c))->addr;
  resil_pool_release(p, c, bad[i] ? RESIL_POOL_BROKEN : RESIL_POOL_OK);
  return i;
}

static void stats(resil_pool *p, resil_endpoint_stats *es, size_t n) {
  assert_int_equal(resil_pool_endpoint_stats(p, es, RESIL_ENDPOINTS_MAX), n);
}

static int setup(void **s) {
  (void)s;
  fake_clock_install();
  memset(bad, 0, sizeof bad);
  return 0;
}
static int teardown(void **s) {
  (void)s;
  fake_clock_uninstall();
  return 0;
}

/* ---- Parsing ------------------------------------------------------------- */

static void test_parse_good(void **state) {
  (void)state;
  resil_endpoint e[RESIL_ENDPOINTS_MAX];
  size_t n = 0;
  resil_err err;
  assert_int_equal(resil_endpoints_parse(" a.example:1 ,[::1]:6380,b", 6379, e,
                                         RESIL_ENDPOINTS_MAX, &n, &err),
                   RESIL_OK);
  assert_int_equal(n, 3);
  assert_string_equal(e[0].host, "a.example");
  assert_int_equal(e[0].port, 1);
  assert_string_equal(e[0].text, "a.example:1");
  assert_string_equal(e[1].host, "::1");
  assert_string_equal(e[1].text, "[::1]:6380");
  assert_string_equal(e[2].text, "b:6379");
  /* 16 is the most */
  char list[512] = "";
  for (int i = 0; i < RESIL_ENDPOINTS_MAX; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%sh:%d", i ? "," : "", 1000 + i);
  assert_int_equal(resil_endpoints_parse(list, 0, e, RESIL_ENDPOINTS_MAX, &n, &err), RESIL_OK);
  assert_int_equal(n, RESIL_ENDPOINTS_MAX);
  strcat(list, ",h:2000");
  assert_int_equal(resil_endpoints_parse(list, 0, e, RESIL_ENDPOINTS_MAX, &n, &err),
                   RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "at most 16"));
}

static void bad_list(const char *list, uint32_t dflt, const char *want) {
  resil_err err;
  size_t n = 99;
  assert_int_equal(resil_endpoints_parse(list, dflt, NULL, 0, &n, &err), RESIL_E_INVALID);
  if (!strstr(err.msg, want)) fail_msg("'%s': '%s' lacks '%s'", list ? list : "(null)", err.msg, want);
  assert_int_equal(n, 0);
}

static void test_parse_bad(void **state) {
  (void)state;
  bad_list(NULL, 1, "empty");
  bad_list("", 1, "empty");
  bad_list("  ", 1, "empty");
  bad_list("a:1,,b:2", 1, "entry 2 is empty");
  bad_list("a:1,", 1, "entry 2 is empty");
  bad_list("a:1,a:1", 1, "listed twice");
  bad_list("A:1, a:1", 1, "listed twice");
  bad_list("a", 0, "no port");
  bad_list("a:0", 1, "port");
  bad_list("a:65536", 1, "port");
  bad_list("a:x", 1, "port");
  bad_list("a:", 1, "empty port");
  bad_list(":80", 1, "no host");
  bad_list("::1:6379", 1, "brackets");
  bad_list("[::1", 1, "unclosed");
  bad_list("a b:1", 1, "bad character");
}

/* ---- Ejection ---------------------------------------------------------------- */

/* Calls until address i was picked `times` times (bounded). */
static void hit(resil_pool *p, int i, int times) {
  for (int k = 0, got = 0; got < times; k++) {
    assert_true(k < 10000);
    if (call(p) == i) got++;
  }
}

static void test_consecutive_ejects(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(3, 1000, 10000, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  bad[1] = true;
  hit(p, 1, 2);
  stats(p, es, 3);
  assert_false(es[1].ejected); /* 2 < 3 */
  assert_int_equal(es[1].failures, 2);
  hit(p, 1, 1);
  stats(p, es, 3);
  assert_true(es[1].ejected); /* the third in a row */
  assert_int_equal(es[1].ejections, 1);
  assert_int_equal(es[1].ejected_remaining_ms, 1000);
  assert_string_equal(es[1].endpoint, "127.0.0.1:7002");
  assert_int_equal(es[1].idle + es[1].open, 0); /* its connections closed */
  /* never picked while ejected */
  for (int k = 0; k < 200; k++) assert_int_not_equal(call(p), 1);
  /* a success in between resets the count */
  bad[0] = true;
  hit(p, 0, 2);
  bad[0] = false;
  hit(p, 0, 1);
  bad[0] = true;
  hit(p, 0, 2);
  stats(p, es, 3);
  assert_false(es[0].ejected);
  resil_pool_free(p);
  assert_int_equal(atomic_load(&S.open), 0);
}

static void test_max_percent(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(2, 1000, 10000, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  bad[0] = bad[1] = true;
  /* 200 calls: both bad ones fail over and over; only one may be out */
  for (int k = 0; k < 200; k++) call(p);
  stats(p, es, 3);
  assert_int_equal(es[0].ejected + es[1].ejected + es[2].ejected, 1);
  assert_false(es[2].ejected);
  assert_true(es[0].ejections_skipped + es[1].ejections_skipped > 0);
  resil_pool_free(p);
  /* 0 % never ejects; 100 % may eject all (then all are used: panic) */
  oc.max_ejection_percent = 0;
  p = make(HOSTS3, 10, &oc);
  bad[2] = true;
  for (int k = 0; k < 100; k++) call(p);
  stats(p, es, 3);
  assert_int_equal(es[0].ejected + es[1].ejected + es[2].ejected, 0);
  resil_pool_free(p);
  oc.max_ejection_percent = 100;
  p = make(HOSTS3, 10, &oc);
  for (int k = 0; k < 100; k++) call(p);
  stats(p, es, 3);
  assert_int_equal(es[0].ejected + es[1].ejected + es[2].ejected, 3);
  assert_true(call(p) >= 0); /* panic: still served */
  resil_pool_free(p);
}

static void test_readmit_probation_backoff(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(3, 1000, 2500, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  bad[2] = true;
  hit(p, 2, 3);
  stats(p, es, 3);
  assert_true(es[2].ejected);
  assert_int_equal(es[2].ejected_remaining_ms, 1000); /* base x 1 */
  fake_clock_advance_ms(999);
  for (int k = 0; k < 100; k++) assert_int_not_equal(call(p), 2);
  fake_clock_advance_ms(1);
  /* back on probation: picked again, and ONE failure ejects it for 2 x base */
  hit(p, 2, 1);
  stats(p, es, 3);
  assert_true(es[2].ejected);
  assert_int_equal(es[2].ejections, 2);
  assert_int_equal(es[2].ejected_remaining_ms, 2000);
  fake_clock_advance_ms(2000);
  hit(p, 2, 1);
  stats(p, es, 3);
  assert_int_equal(es[2].ejected_remaining_ms, 2500); /* 3 x base, capped */
  /* healed: back, a success ends the probation and keeps it in */
  fake_clock_advance_ms(2500);
  bad[2] = false;
  hit(p, 2, 1);
  stats(p, es, 3);
  assert_false(es[2].ejected);
  assert_false(es[2].probation);
  assert_int_equal(es[2].times_ejected, 3);
  hit(p, 2, 20);
  /* decay: one less per interval (1 s) spent in */
  fake_clock_advance_ms(2000);
  stats(p, es, 3);
  assert_int_equal(es[2].times_ejected, 1);
  fake_clock_advance_ms(5000);
  stats(p, es, 3);
  assert_int_equal(es[2].times_ejected, 0);
  bad[2] = true;
  hit(p, 2, 3);
  stats(p, es, 3);
  assert_int_equal(es[2].ejected_remaining_ms, 1000); /* from base again */
  resil_pool_free(p);
}

static void test_connect_failures_eject(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(2, 1000, 10000, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  atomic_store(&S.down[0], true);
  int failed = 0;
  for (int k = 0; k < 300; k++)
    if (call(p) == -1 - (int)RESIL_E_FAILURE) failed++;
  assert_int_equal(failed, 2); /* then ejected: no more tries */
  stats(p, es, 3);
  assert_true(es[0].ejected);
  assert_int_equal(atomic_load(&S.connects[0]), 2);
  resil_pool_free(p);
}

/* ---- Spreading --------------------------------------------------------------- */

static void test_p2c_spreads(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make(HOSTS3, 30, &oc);
  int n[3] = {0};
  for (int k = 0; k < 3000; k++) {
    int i = call(p);
    assert_true(i >= 0 && i < 3);
    n[i]++;
  }
  for (int i = 0; i < 3; i++) assert_true(n[i] > 600); /* ~1000 each */
  /* least outstanding: hold two connections of address 0 and 1; the
   * third address then wins every draw that includes it */
  resil_pool_conn *held[8];
  int nh = 0, holding[3] = {0};
  while (nh < 8) {
    resil_pool_conn *c;
    resil_err err;
    assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &c, &err), RESIL_OK);
    int i = ((fconn *)resil_pool_conn_handle(c))->addr;
    holding[i]++;
    held[nh++] = c;
  }
  /* with 8 held, outstanding counts differ by at most a couple */
  for (int i = 0; i < 3; i++) assert_true(holding[i] >= 1 && holding[i] <= 4);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  stats(p, es, 3);
  assert_int_equal(es[0].outstanding + es[1].outstanding + es[2].outstanding, 8);
  for (int k = 0; k < nh; k++) resil_pool_release(p, held[k], RESIL_POOL_OK);
  stats(p, es, 3);
  assert_int_equal(es[0].outstanding + es[1].outstanding + es[2].outstanding, 0);
  /* address 0 holds a call (a slow one), the others none: every draw has
   * an address with fewer outstanding than it, so it gets no new call */
  nh = 0;
  for (int k = 0; nh < 1; k++) {
    assert_true(k < 1000);
    resil_pool_conn *c;
    resil_err err;
    assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &c, &err), RESIL_OK);
    if (((fconn *)resil_pool_conn_handle(c))->addr == 0) held[nh++] = c;
    else resil_pool_release(p, c, RESIL_POOL_OK);
  }
  for (int k = 0; k < 300; k++) assert_int_not_equal(call(p), 0);
  for (int k = 0; k < nh; k++) resil_pool_release(p, held[k], RESIL_POOL_OK);
  resil_pool_free(p);
}

/* ---- The total bound ----------------------------------------------------------- */

static void test_budget(void **state) {
  (void)state;
  fake_clock_uninstall(); /* the budget wait below runs on the real clock */
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make(HOSTS3, 2, &oc);
  resil_pool_conn *a, *b, *c;
  resil_err err;
  /* two in use: a third acquire, whatever address it picks, gets no
   * connection (pool_timeout), never a third connection */
  assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &a, &err), RESIL_OK);
  assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &b, &err), RESIL_OK);
  assert_int_equal(atomic_load(&S.open), 2);
  for (int k = 0; k < 10; k++) {
    resil_status st = resil_pool_acquire(p, resil_deadline_in_ms(5), &c, &err);
    if (st == RESIL_OK) { /* the idle list of a's or b's address: impossible, both in use */
      fail_msg("third connection lent");
    }
    assert_int_equal(st, RESIL_E_POOL_TIMEOUT);
    assert_true(atomic_load(&S.open) <= 2);
  }
  resil_pool_stats ps;
  resil_pool_get_stats(p, &ps);
  assert_int_equal(ps.max, 2);
  assert_int_equal(ps.in_use, 2);
  assert_int_equal(ps.connects_failed, 0); /* a budget wait is not a failed connect */
  /* released to idle: another address steals the idle connection's budget */
  resil_pool_release(p, a, RESIL_POOL_OK);
  resil_pool_release(p, b, RESIL_POOL_OK);
  for (int k = 0; k < 50; k++) {
    assert_true(call(p) >= 0);
    assert_true(atomic_load(&S.open) <= 2);
  }
  resil_pool_get_stats(p, &ps);
  assert_true(ps.open <= 2);
  resil_pool_free(p);
  assert_int_equal(atomic_load(&S.open), 0);
}

/* An ejected address's idle connections are closed, which frees budget. */
static void test_eject_frees_budget(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(1, 1000, 10000, 50);
  resil_pool *p = make("127.0.0.1:7001,127.0.0.1:7002", 4, &oc);
  /* four at once: two per address (least outstanding), then all idle */
  resil_pool_conn *held[4];
  resil_err err;
  for (int k = 0; k < 4; k++)
    assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &held[k], &err), RESIL_OK);
  for (int k = 0; k < 4; k++) resil_pool_release(p, held[k], RESIL_POOL_OK);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  stats(p, es, 2);
  assert_int_equal(es[0].idle, 2);
  assert_int_equal(es[1].idle, 2);
  bad[0] = true;
  hit(p, 0, 1);
  stats(p, es, 2);
  assert_true(es[0].ejected);
  assert_int_equal(es[0].open, 0);
  assert_int_equal(atomic_load(&S.open), (int)es[1].open);
  resil_pool_free(p);
}

/* ---- Success rate -------------------------------------------------------------- */

static void test_success_rate(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(0, 1000, 10000, 50); /* consecutive rule off */
  oc.success_rate_minimum_hosts = 3;
  oc.success_rate_request_volume = 20;
  oc.success_rate_stdev_factor = 1.0;
  resil_pool *p = make("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004", 10, &oc);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  /* address 3 fails every other call: never 2 in a row would matter here */
  int n3 = 0;
  for (int k = 0; k < 800; k++) {
    resil_pool_conn *c;
    resil_err err;
    assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &c, &err), RESIL_OK);
    int i = ((fconn *)resil_pool_conn_handle(c))->addr;
    bool fail = i == 3 && (n3++ % 2);
    resil_pool_release(p, c, fail ? RESIL_POOL_BROKEN : RESIL_POOL_OK);
  }
  stats(p, es, 4);
  assert_false(es[3].ejected); /* the interval has not ended */
  fake_clock_advance_ms(1000);
  call(p); /* the first outcome after the interval evaluates it */
  stats(p, es, 4);
  assert_true(es[3].ejected);
  assert_false(es[0].ejected || es[1].ejected || es[2].ejected);
  resil_pool_free(p);
  /* below the request volume: nothing */
  p = make("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004", 10, &oc);
  bad[3] = true;
  for (int k = 0; k < 30; k++) call(p); /* < 20 calls each */
  fake_clock_advance_ms(1000);
  call(p);
  stats(p, es, 4);
  assert_false(es[3].ejected);
  resil_pool_free(p);
}

/* ---- The dependency's breaker -------------------------------------------------- */

static resil_dep *make_dep(resil_pool *p) {
  resil_dep_config dc;
  resil_dep_config_init(&dc, "multi-dep");
  dc.breaker.consecutive_failures = 3;
  dc.breaker.failure_rate_percent = 10; /* 5 failures in ~45 calls would trip it */
  dc.breaker.minimum_calls = 5;
  dc.probe_interval_ms = 0;
  resil_err err;
  resil_dep *d = resil_dep_new(&dc, &err);
  assert_non_null(d);
  resil_dep_attach_pool(d, p);
  return d;
}

/* One call through the dependency: admit, acquire, release, done. */
static resil_status dep_call(resil_dep *d, resil_pool *p) {
  resil_permit pm;
  resil_err err;
  resil_status st = resil_dep_admit(d, resil_deadline_in_ms(20), &pm, &err);
  if (st != RESIL_OK) return st;
  resil_pool_conn *c;
  st = resil_pool_acquire(p, pm.deadline, &c, &err);
  if (st == RESIL_OK) {
    int i = ((fconn *)resil_pool_conn_handle(c))->addr;
    st = bad[i] ? RESIL_E_TIMEOUT : RESIL_OK;
    resil_pool_release(p, c, bad[i] ? RESIL_POOL_BROKEN : RESIL_POOL_OK);
  }
  resil_dep_done(&pm, st);
  return st;
}

static void test_breaker_one_bad_stays_closed(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 60000, 60000, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_dep *d = make_dep(p);
  for (int k = 0; k < 30; k++) assert_int_equal(dep_call(d, p), RESIL_OK);
  bad[1] = true;
  int failures = 0;
  for (int k = 0; k < 300; k++)
    if (dep_call(d, p) == RESIL_E_TIMEOUT) failures++;
  assert_int_equal(failures, 5); /* then ejected */
  assert_int_equal(resil_breaker_get_state(resil_dep_breaker(d)), RESIL_BREAKER_CLOSED);
  resil_dep_stats ds;
  resil_dep_get_stats(d, &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_TIMEOUT], 5); /* still counted as what they were */
  /* per-address metrics, labelled by address */
  char *text = NULL;
  resil_err err;
  assert_int_equal(resil_export_prometheus(&text, NULL, &err), RESIL_OK);
  const char *want[] = {
      "resil_endpoint_ejected{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7002\"} 1\n",
      "resil_endpoint_ejected{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7001\"} 0\n",
      "resil_endpoint_ejections_total{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7002\"} 1\n",
      "resil_endpoint_calls_total{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7002\",result=\"failure\"} 5\n",
      "resil_endpoint_outstanding{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7003\"} 0\n",
      "# TYPE resil_endpoint_ejections_skipped_total counter\n",
      "resil_endpoint_connections{dependency=\"multi-dep\",endpoint=\"127.0.0.1:7001\",state=\"idle\"} 1\n",
  };
  for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
    if (!strstr(text, want[k])) fail_msg("no '%s' in:\n%s", want[k], text);
  free(text);
  assert_int_equal(resil_export_json(&text, NULL, &err), RESIL_OK);
  if (!strstr(text, "\"endpoints\":[{\"endpoint\":\"127.0.0.1:7001\",\"ejected\":false") ||
      !strstr(text, "{\"endpoint\":\"127.0.0.1:7002\",\"ejected\":true"))
    fail_msg("json: %s", text);
  free(text);
  resil_dep_free(d);
  resil_pool_free(p);
}

static void test_breaker_all_bad_opens(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 60000, 60000, 50);
  resil_pool *p = make(HOSTS3, 10, &oc);
  resil_dep *d = make_dep(p);
  for (int k = 0; k < 30; k++) assert_int_equal(dep_call(d, p), RESIL_OK);
  bad[0] = bad[1] = bad[2] = true;
  int k = 0;
  while (resil_breaker_get_state(resil_dep_breaker(d)) == RESIL_BREAKER_CLOSED) {
    assert_true(++k < 50);
    resil_status st = dep_call(d, p);
    assert_true(st == RESIL_E_TIMEOUT || st == RESIL_E_BREAKER_OPEN);
  }
  assert_int_equal(dep_call(d, p), RESIL_E_BREAKER_OPEN);
  resil_dep_free(d);
  resil_pool_free(p);
}

/* A single-address pool made the ordinary way is not a multi-address one. */
static void test_plain_pool_has_no_endpoints(void **state) {
  (void)state;
  resil_pool_config pc;
  resil_pool_config_init(&pc);
  pc.name = "plain";
  pc.housekeeping_ms = 0;
  resil_pool_connector cn = {.connect = NULL, .close = f_close};
  resil_err err;
  resil_outlier_config oc;
  resil_outlier_config_init(&oc);
  assert_null(resil_pool_new_endpoints(&pc, &cn, f_connect_to, "a:1,a:1", 1, &oc, &err));
  assert_non_null(strstr(err.msg, "hosts: "));
  assert_non_null(strstr(err.msg, "listed twice"));
  oc.max_ejection_percent = 101;
  oc.base_ejection_ms = 0;
  assert_null(resil_pool_new_endpoints(&pc, &cn, f_connect_to, "a:1", 1, &oc, &err));
  assert_non_null(strstr(err.msg, "outlier.max_ejection_percent"));
  assert_non_null(strstr(err.msg, "outlier.base_ejection_ms"));
  assert_int_equal(resil_pool_endpoint_stats(NULL, NULL, 0), 0);
  assert_null(resil_pool_endpoint_next(NULL));
}


/* ---- Endpoints from DNS (resil_pool_new_endpoints_dns) ---------------------- */

#define DNS_NAME "svc.resil-test"
#define DNS_TTL_MS 1000
static char hosts_path[256];

/* Point the name at 10.9.0.<i+1> for each i listed (-1 ends), atomically
 * (a new file renamed over the old one). */
static void dns_set(const int *idx) {
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.new", hosts_path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  for (; *idx >= 0; idx++) fprintf(f, "10.9.0.%d %s\n", *idx + 1, DNS_NAME);
  fclose(f);
  assert_int_equal(rename(tmp, hosts_path), 0);
}

static int dns_setup(void **s) {
  setup(s);
  snprintf(hosts_path, sizeof hosts_path, "/tmp/resil-test-endpoint-dns-%d", (int)getpid());
  dns_set((const int[]){0, 1, 2, -1});
  resil_err err;
  assert_int_equal(resil_resolve_set_hosts_file(hosts_path, &err), RESIL_OK);
  resil_resolve_set_ttl_ms(DNS_TTL_MS);
  return 0;
}

static int dns_teardown(void **s) {
  resil_resolve_set_hosts_file(NULL, NULL);
  resil_resolve_set_ttl_ms(5000);
  unlink(hosts_path);
  return teardown(s);
}

static resil_pool *make_dns(uint32_t max_size, const resil_outlier_config *oc) {
  resil_pool_config pc = test_cfg("dns", max_size);
  resil_pool_connector cn = {.close = f_close};
  resil_err err;
  resil_pool *p = resil_pool_new_endpoints_dns(&pc, &cn, f_connect_to, DNS_NAME, 7000, oc, &err);
  if (!p) fail_msg("resil_pool_new_endpoints_dns: %s", err.msg);
  return p;
}

/* Is 10.9.0.<i+1> in p's set? */
static bool in_set(resil_pool *p, int i) {
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  size_t n = resil_pool_endpoint_stats(p, es, RESIL_ENDPOINTS_MAX);
  char want[32];
  snprintf(want, sizeof want, "10.9.0.%d:7000", i + 1);
  for (size_t k = 0; k < n && k < RESIL_ENDPOINTS_MAX; k++)
    if (strcmp(es[k].endpoint, want) == 0) return true;
  return false;
}

static const resil_endpoint_stats *find(const resil_endpoint_stats *es, size_t n, int i) {
  char want[32];
  snprintf(want, sizeof want, "10.9.0.%d:7000", i + 1);
  for (size_t k = 0; k < n; k++)
    if (strcmp(es[k].endpoint, want) == 0) return &es[k];
  fail_msg("%s not in the set", want);
  return NULL;
}

/* One call, the fake clock moved on a little (the set is maintained by
 * calls; the removed pools' reaping is due every few ms). */
static int dns_call(resil_pool *p) {
  fake_clock_advance_ms(5);
  return call(p);
}

/* Borrow 6 connections, keep one to 10.9.0.<i+1> (returned) and give the
 * others back (idle). */
static resil_pool_conn *hold_one_on(resil_pool *p, int i) {
  resil_pool_conn *cs[6], *held = NULL;
  resil_err err;
  for (int k = 0; k < 6; k++)
    assert_int_equal(resil_pool_acquire(p, resil_deadline_in_ms(20), &cs[k], &err), RESIL_OK);
  for (int k = 0; k < 6; k++) {
    if (!held && ((fconn *)resil_pool_conn_handle(cs[k]))->addr == i) held = cs[k];
    else resil_pool_release(p, cs[k], RESIL_POOL_OK);
  }
  assert_non_null(held);
  return held;
}

/* The set grows and shrinks with the name; the addresses that stay keep
 * their ejection; a removed address gets no new call, its idle
 * connections close at once and a borrowed one on release. */
static void test_dns_set_follows_the_name(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(2, 60000, 60000, 50);
  resil_pool *p = make_dns(12, &oc);
  for (int k = 0; k < 60; k++) assert_true(dns_call(p) >= 0);
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  stats(p, es, 3);
  for (int i = 0; i < 3; i++) assert_true(find(es, 3, i)->calls > 0); /* all three serve */
  /* 10.9.0.2 ejected */
  bad[1] = true;
  hit(p, 1, 2);
  stats(p, es, 3);
  assert_true(find(es, 3, 1)->ejected);
  /* connections to 10.9.0.3: one borrowed across the change, the others
   * idle (with .2 ejected, least outstanding alternates .1 and .3) */
  resil_pool_conn *held = hold_one_on(p, 2);
  int opened2 = atomic_load(&S.connects[2]);
  assert_true(opened2 >= 2);
  assert_int_equal(atomic_load(&S.closes[2]), 0);
  /* the name now: 10.9.0.1, .2, .4 (.3 gone, .4 new) */
  dns_set((const int[]){0, 1, 3, -1});
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), in_set(p, 3) && !in_set(p, 2)), 5000));
  /* idle ones closed at once; the borrowed one is still open */
  assert_int_equal(atomic_load(&S.closes[2]), opened2 - 1);
  int calls2 = atomic_load(&S.connects[2]);
  for (int k = 0; k < 100; k++) assert_true(dns_call(p) != 2);
  assert_int_equal(atomic_load(&S.connects[2]), calls2); /* no new connection to it */
  stats(p, es, 3);
  assert_true(find(es, 3, 1)->ejected); /* kept */
  assert_int_equal(find(es, 3, 1)->ejections, 1);
  assert_true(find(es, 3, 3)->calls > 0);
  resil_endpoints_dns_stats ds;
  assert_true(resil_pool_endpoints_dns_stats(p, &ds));
  assert_int_equal(ds.addresses, 3);
  assert_int_equal(ds.draining, 1);
  assert_int_equal(ds.added, 4);
  assert_int_equal(ds.removed, 1);
  resil_pool_stats ps;
  resil_pool_get_stats(p, &ps);
  assert_true(ps.open >= 1); /* the borrowed one still counts */
  /* released: closed, and the pool goes */
  resil_pool_release(p, held, RESIL_POOL_OK);
  assert_int_equal(atomic_load(&S.closes[2]), opened2);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), resil_pool_endpoints_dns_stats(p, &ds),
                               ds.draining == 0),
                              2000));
  /* grows again: .3 back, with a clean record */
  dns_set((const int[]){0, 1, 2, 3, -1});
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), in_set(p, 2)), 5000));
  hit(p, 2, 3);
  stats(p, es, 4);
  assert_int_equal(find(es, 4, 2)->failures, 0);
  assert_true(find(es, 4, 1)->ejected);
  resil_pool_free(p);
  assert_int_equal(atomic_load(&S.open), 0);
}

/* resil_resolve_invalidate() (a failover) refreshes at once, without
 * waiting for the TTL. */
static void test_dns_invalidate_refreshes_at_once(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make_dns(8, &oc);
  for (int k = 0; k < 20; k++) assert_true(call(p) >= 0);
  dns_set((const int[]){4, -1});
  for (int k = 0; k < 20; k++) assert_true(dns_call(p) != 4); /* cached: the TTL runs */
  uint64_t t0 = fake_clock_now_ns();
  resil_resolve_invalidate(DNS_NAME);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), in_set(p, 4) && !in_set(p, 0)), 5000));
  assert_true(fake_clock_now_ns() - t0 < (uint64_t)DNS_TTL_MS * 1000000 / 2); /* not the TTL */
  assert_int_equal(call(p), 4);
  resil_pool_free(p);
}

/* A refresh that fails keeps the last good set (and says so); a name
 * never resolved fails the call, naming the host. */
static void test_dns_failure_keeps_the_set(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make_dns(8, &oc);
  for (int k = 0; k < 20; k++) assert_true(call(p) >= 0);
  assert_int_equal(unlink(hosts_path), 0); /* lookups fail, naming the file */
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  resil_endpoints_dns_stats ds;
  assert_true(TEST_WAIT_UNTIL((assert_true(dns_call(p) >= 0), resil_pool_endpoints_dns_stats(p, &ds),
                               ds.failures > 0),
                              5000));
  assert_true(ds.stale);
  assert_int_equal(ds.addresses, 3);
  assert_non_null(strstr(ds.last_error, hosts_path));
  for (int k = 0; k < 50; k++) assert_true(dns_call(p) >= 0); /* still served */
  /* a second pool, never resolved: the call fails naming the host */
  resil_pool *q = make_dns(8, &oc);
  resil_pool_conn *c;
  resil_err err;
  assert_int_equal(resil_pool_acquire(q, resil_deadline_in_ms(50), &c, &err), RESIL_E_FAILURE);
  if (!strstr(err.msg, "resolve " DNS_NAME)) fail_msg("'%s' lacks the host", err.msg);
  assert_false(resil_pool_endpoints_dns_stats(q, &ds) && ds.stale); /* nothing to keep */
  /* and when the name is back, both follow it */
  dns_set((const int[]){5, -1});
  assert_true(TEST_WAIT_UNTIL((fake_clock_advance_ms(100), call(q) == 5 && dns_call(p) == 5),
                              5000));
  assert_true(resil_pool_endpoints_dns_stats(p, &ds));
  assert_false(ds.stale);
  resil_pool_free(q);
  resil_pool_free(p);
}

/* More addresses than RESIL_ENDPOINTS_MAX: the first ones, the rest
 * counted; the connection bound holds over the set's changes. */
static void test_dns_bound(void **state) {
  (void)state;
  int all[NADDR + 1];
  for (int i = 0; i < NADDR; i++) all[i] = i;
  all[NADDR] = -1;
  dns_set(all);
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make_dns(4, &oc);
  for (int k = 0; k < 100; k++) {
    assert_true(dns_call(p) >= 0);
    assert_true(atomic_load(&S.open) <= 4);
  }
  resil_endpoints_dns_stats ds;
  assert_true(resil_pool_endpoints_dns_stats(p, &ds));
  assert_int_equal(ds.addresses, RESIL_ENDPOINTS_MAX);
  assert_int_equal(ds.dropped, NADDR - RESIL_ENDPOINTS_MAX);
  for (int i = RESIL_ENDPOINTS_MAX; i < NADDR; i++) assert_int_equal(atomic_load(&S.connects[i]), 0);
  /* the answer rotated and shrunk: those in the set keep their place */
  dns_set((const int[]){19, 18, 17, 16, 3, 2, 1, 0, -1});
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), resil_pool_endpoints_dns_stats(p, &ds),
                               ds.addresses == 8),
                              5000));
  assert_int_equal(ds.dropped, 0);
  assert_true(in_set(p, 19) && in_set(p, 0) && !in_set(p, 4));
  for (int k = 0; k < 100; k++) {
    assert_true(dns_call(p) >= 0);
    assert_true(atomic_load(&S.open) <= 4);
  }
  resil_pool_free(p);
  assert_int_equal(atomic_load(&S.open), 0);
}

/* Does the export (Prometheus, or JSON if json) contain want? */
static bool exported(bool json, const char *want) {
  char *text = NULL;
  resil_err err;
  assert_int_equal((json ? resil_export_json : resil_export_prometheus)(&text, NULL, &err),
                   RESIL_OK);
  bool has = strstr(text, want) != NULL;
  if (!has && getenv("RESIL_TEST_VERBOSE")) print_message("# no '%s' in:\n%s\n", want, text);
  free(text);
  return has;
}

/* The name's metrics: resil_endpoint_dns_stale and _dropped (and the JSON
 * endpoints_dns object) follow the set; a removed address's per-address
 * series leave /metrics at once. */
static void test_dns_metrics(void **state) {
  (void)state;
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make_dns(8, &oc);
  resil_dep *d = make_dep(p);
  for (int k = 0; k < 30; k++) assert_true(dns_call(p) >= 0);
  const char *ep3 = "endpoint=\"10.9.0.3:7000\"";
  resil_endpoints_dns_stats ds;
  assert_true(exported(false, "resil_endpoint_dns_stale{dependency=\"multi-dep\"} 0\n"));
  assert_true(exported(false, "resil_endpoint_dns_dropped{dependency=\"multi-dep\"} 0\n"));
  assert_true(exported(false, "# TYPE resil_endpoint_dns_stale gauge\n"));
  assert_true(exported(false, "# TYPE resil_endpoint_dns_dropped gauge\n"));
  assert_true(exported(false, ep3));
  assert_true(exported(true, "\"endpoints_dns\":{\"host\":\"" DNS_NAME "\",\"port\":7000,"
                             "\"addresses\":3,\"draining\":0,\"dropped\":0,\"refreshes\":1,"
                             "\"failures\":0,\"added\":3,\"removed\":0,\"stale\":false,"
                             "\"last_error\":\"\"}"));
  /* 10.9.0.3 removed, a connection to it still borrowed (so it drains):
   * its series go at once all the same */
  resil_pool_conn *held = hold_one_on(p, 2);
  dns_set((const int[]){0, 1, -1});
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), resil_pool_endpoints_dns_stats(p, &ds),
                               ds.addresses == 2 && ds.draining == 1),
                              5000));
  assert_false(exported(false, ep3));
  assert_false(exported(true, "\"10.9.0.3:7000\""));
  assert_true(exported(false, "endpoint=\"10.9.0.1:7000\""));
  assert_true(exported(true, "\"addresses\":2,\"draining\":1,"));
  resil_pool_release(p, held, RESIL_POOL_OK);
  /* 20 addresses: 16 kept, 4 dropped */
  int all[NADDR + 1];
  for (int i = 0; i < NADDR; i++) all[i] = i;
  all[NADDR] = -1;
  dns_set(all);
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), resil_pool_endpoints_dns_stats(p, &ds),
                               ds.addresses == RESIL_ENDPOINTS_MAX),
                              5000));
  assert_true(exported(false, "resil_endpoint_dns_dropped{dependency=\"multi-dep\"} 4\n"));
  assert_true(exported(true, "\"addresses\":16,"));
  assert_true(exported(true, "\"dropped\":4,"));
  /* the name no longer resolves: stale, the error in the JSON */
  assert_int_equal(unlink(hosts_path), 0);
  fake_clock_advance_ms(DNS_TTL_MS + 1);
  assert_true(TEST_WAIT_UNTIL((dns_call(p), resil_pool_endpoints_dns_stats(p, &ds), ds.stale),
                              5000));
  assert_true(exported(false, "resil_endpoint_dns_stale{dependency=\"multi-dep\"} 1\n"));
  assert_true(exported(true, "\"stale\":true,\"last_error\":\""));
  assert_true(exported(true, hosts_path));
  assert_true(exported(false, ep3)); /* 10.9.0.3 is in the last good set */
  resil_dep_free(d);
  resil_pool_free(p);
}

/* Threads acquire and release while the set changes under them (TSan). */
typedef struct churn {
  resil_pool *p;
  atomic_bool stop;
  _Atomic uint64_t ok, failed;
} churn;

static void *churn_worker(void *arg) {
  churn *ch = arg;
  while (!atomic_load(&ch->stop)) {
    resil_pool_conn *c;
    resil_err err;
    if (resil_pool_acquire(ch->p, resil_deadline_in_ms(1000), &c, &err) != RESIL_OK) {
      print_message("# acquire failed: %s\n", err.msg);
      atomic_fetch_add(&ch->failed, 1);
      continue;
    }
    resil_pool_release(ch->p, c, RESIL_POOL_OK);
    atomic_fetch_add(&ch->ok, 1);
  }
  return NULL;
}

static void test_dns_churn_under_load(void **state) {
  (void)state;
  fake_clock_uninstall();
  resil_resolve_flush();
  resil_outlier_config oc = ocfg(5, 1000, 10000, 50);
  resil_pool *p = make_dns(6, &oc);
  churn ch = {.p = p};
  pthread_t t[4];
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, churn_worker, &ch), 0);
  static const int sets[4][6] = {{0, 1, 2, -1}, {3, 4, -1}, {0, 5, 6, 7, 8, -1}, {2, -1}};
  for (int round = 0; round < 40; round++) {
    dns_set(sets[round % 4]);
    resil_resolve_invalidate(DNS_NAME);
    uint64_t before = atomic_load(&ch.ok);
    assert_true(TEST_WAIT_UNTIL(atomic_load(&ch.ok) > before + 20, 5000));
    assert_true(atomic_load(&S.open) <= 6); /* the fake's own count of open connections */
  }
  atomic_store(&ch.stop, true);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  assert_int_equal(atomic_load(&ch.failed), 0);
  resil_pool_free(p);
  assert_int_equal(atomic_load(&S.open), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_parse_good, setup, teardown),
      cmocka_unit_test_setup_teardown(test_parse_bad, setup, teardown),
      cmocka_unit_test_setup_teardown(test_consecutive_ejects, setup, teardown),
      cmocka_unit_test_setup_teardown(test_max_percent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_readmit_probation_backoff, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_failures_eject, setup, teardown),
      cmocka_unit_test_setup_teardown(test_p2c_spreads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_budget, setup, teardown),
      cmocka_unit_test_setup_teardown(test_eject_frees_budget, setup, teardown),
      cmocka_unit_test_setup_teardown(test_success_rate, setup, teardown),
      cmocka_unit_test_setup_teardown(test_breaker_one_bad_stays_closed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_breaker_all_bad_opens, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plain_pool_has_no_endpoints, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dns_set_follows_the_name, dns_setup, dns_teardown),
      cmocka_unit_test_setup_teardown(test_dns_invalidate_refreshes_at_once, dns_setup,
                                      dns_teardown),
      cmocka_unit_test_setup_teardown(test_dns_failure_keeps_the_set, dns_setup, dns_teardown),
      cmocka_unit_test_setup_teardown(test_dns_bound, dns_setup, dns_teardown),
      cmocka_unit_test_setup_teardown(test_dns_churn_under_load, dns_setup, dns_teardown),
      cmocka_unit_test_setup_teardown(test_dns_metrics, dns_setup, dns_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
