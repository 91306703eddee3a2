/* The ABI promises of docs/abi.md, checked on the headers and the library:
 *   - every public enum keeps its numbers (a new value goes at the end);
 *   - every struct an application allocates keeps its size (new fields come
 *     out of its reserved_ tail, which stays its last member);
 *   - _init() and _get_stats() leave the tail zeroed;
 *   - resil_status_is_rejection() and resil_status_class_of() classify by
 *     name, not by a numeric range.
 * Built with the adapters that are built (RESIL_TEST_HAVE_REDIS/PG/HTTP). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "resil/adapter.h"
#include "resil/resil.h"
#ifdef RESIL_TEST_HAVE_REDIS
#include "resil/redis.h"
#endif
#ifdef RESIL_TEST_HAVE_PG
#include "resil/pg.h"
#endif
#ifdef RESIL_TEST_HAVE_HTTP
#include "resil/http.h"
#endif

/* ---- Enum values never change ------------------------------------------- */

typedef struct {
  const char *name;
  long long value, pinned;
} pin;

#define PIN(e, v) {#e, (long long)(e), v}

static const pin enum_pins[] = {
    /* resil_status */
    PIN(RESIL_OK, 0),
    PIN(RESIL_E_FAILURE, 1),
    PIN(RESIL_E_TIMEOUT, 2),
    PIN(RESIL_E_OVERLOAD, 3),
    PIN(RESIL_E_CALLER, 4),
    PIN(RESIL_E_BREAKER_OPEN, 5),
    PIN(RESIL_E_CONCURRENCY_FULL, 6),
    PIN(RESIL_E_QUEUE_TIMEOUT, 7),
    PIN(RESIL_E_POOL_TIMEOUT, 8),
    PIN(RESIL_E_DEADLINE, 9),
    PIN(RESIL_E_DRAINING, 10),
    PIN(RESIL_E_RETRY_BUDGET, 11),
    PIN(RESIL_E_INVALID, 12),
    PIN(RESIL_E_NOMEM, 13),
    PIN(RESIL_E_SYSTEM, 14),
    PIN(RESIL_E_CLOSED, 15),
    PIN(RESIL_E_THROTTLED, 16),
    PIN(RESIL_E_RATE_LIMITED, 17),
    PIN(RESIL_E_PAUSED, 18),
    /* resil_status_class */
    PIN(RESIL_CLASS_SUCCESS, 0),
    PIN(RESIL_CLASS_FAILURE, 1),
    PIN(RESIL_CLASS_IGNORED, 2),
    PIN(RESIL_CLASS_REJECTED, 3),
    PIN(RESIL_CLASS_ERROR, 4),
    /* resil_breaker_state */
    PIN(RESIL_BREAKER_CLOSED, 0),
    PIN(RESIL_BREAKER_OPEN, 1),
    PIN(RESIL_BREAKER_HALF_OPEN, 2),
    PIN(RESIL_BREAKER_FORCED_OPEN, 3),
    PIN(RESIL_BREAKER_DISABLED, 4),
    /* resil_trip_reason */
    PIN(RESIL_TRIP_NONE, 0),
    PIN(RESIL_TRIP_CONSECUTIVE_FAILURES, 1),
    PIN(RESIL_TRIP_FAILURE_RATE, 2),
    PIN(RESIL_TRIP_SLOW_CALL_RATE, 3),
    PIN(RESIL_TRIP_PROBE_FAILED, 4),
    PIN(RESIL_TRIP_FORCED, 5),
    PIN(RESIL_TRIP_RECOVERY_PROBE, 6),
    /* resil_breaker_mode */
    PIN(RESIL_BREAKER_MODE_AUTO, 0),
    PIN(RESIL_BREAKER_MODE_FORCE_OPEN, 1),
    PIN(RESIL_BREAKER_MODE_DISABLE, 2),
    /* resil_pool_return */
    PIN(RESIL_POOL_OK, 0),
    PIN(RESIL_POOL_BROKEN, 1),
    /* resil_pool_close_reason */
    PIN(RESIL_POOL_CLOSE_LIFETIME, 0),
    PIN(RESIL_POOL_CLOSE_IDLE, 1),
    PIN(RESIL_POOL_CLOSE_BROKEN, 2),
    PIN(RESIL_POOL_CLOSE_VALIDATION, 3),
    PIN(RESIL_POOL_CLOSE_DRAIN, 4),
    /* resil_probe_result */
    PIN(RESIL_PROBE_SUCCESS, 0),
    PIN(RESIL_PROBE_FAILURE, 1),
    PIN(RESIL_PROBE_TIMEOUT, 2),
    /* resil_reject_reason */
    PIN(RESIL_REJECT_BREAKER_OPEN, 0),
    PIN(RESIL_REJECT_CONCURRENCY_FULL, 1),
    PIN(RESIL_REJECT_QUEUE_TIMEOUT, 2),
    PIN(RESIL_REJECT_POOL_TIMEOUT, 3),
    PIN(RESIL_REJECT_DEADLINE, 4),
    PIN(RESIL_REJECT_DRAINING, 5),
    PIN(RESIL_REJECT_RETRY_BUDGET, 6),
    PIN(RESIL_REJECT_THROTTLED, 7),
    PIN(RESIL_REJECT_RATE_LIMITED, 8),
    PIN(RESIL_REJECT_PAUSED, 9),
    /* resil_outcome */
    PIN(RESIL_OUTCOME_SUCCESS, 0),
    PIN(RESIL_OUTCOME_FAILURE, 1),
    PIN(RESIL_OUTCOME_TIMEOUT, 2),
    PIN(RESIL_OUTCOME_OVERLOAD, 3),
    PIN(RESIL_OUTCOME_IGNORED, 4),
    /* resil_event_type */
    PIN(RESIL_EVENT_BREAKER, 0),
    PIN(RESIL_EVENT_LIMIT, 1),
    PIN(RESIL_EVENT_THROTTLE, 2),
    PIN(RESIL_EVENT_PAUSE, 3),
    /* resil_key_type (adapter.h) */
    PIN(RESIL_KEY_UINT, 0),
    PIN(RESIL_KEY_MS, 1),
    PIN(RESIL_KEY_BOOL, 2),
    PIN(RESIL_KEY_DOUBLE, 3),
    PIN(RESIL_KEY_STRING, 4),
    PIN(RESIL_KEY_SECRET, 5),
    PIN(RESIL_KEY_SIZE, 6),
#ifdef RESIL_TEST_HAVE_HTTP
    /* resil_http_phase */
    PIN(RESIL_HTTP_PHASE_NONE, 0),
    PIN(RESIL_HTTP_PHASE_DNS, 1),
    PIN(RESIL_HTTP_PHASE_CONNECT, 2),
    PIN(RESIL_HTTP_PHASE_TLS, 3),
    PIN(RESIL_HTTP_PHASE_SEND, 4),
    PIN(RESIL_HTTP_PHASE_RECEIVE, 5),
    PIN(RESIL_HTTP_IDEMPOTENT, 0x1),
    PIN(RESIL_HTTP_NO_RETRY, 0x100),
    PIN(RESIL_HTTP_MAX_FAILURE_STATUSES, 16),
#endif
    /* Constants compiled into applications. */
    PIN(RESIL_CALL_IDEMPOTENT, 0x1),
    PIN(RESIL_ERR_MSG_MAX, 512),
    PIN(RESIL_HIST_BOUNDS, 18),
    PIN(RESIL_ADDR_TEXT_MAX, 64),
    PIN(RESIL_OUTCOME_SLOTS, 8),
    PIN(RESIL_REJECT_SLOTS, 16),
    PIN(RESIL_PROBE_RESULT_SLOTS, 4),
    PIN(RESIL_POOL_CLOSE_REASON_SLOTS, 8),
    PIN(RESIL_BREAKER_STATE_SLOTS, 8),
};

static void enum_values_never_change(void **state) {
  (void)state;
  int bad = 0;
  for (size_t i = 0; i < sizeof enum_pins / sizeof enum_pins[0]; i++) {
    const pin *p = &enum_pins[i];
    if (p->value != p->pinned) {
      fprintf(stderr,
              "# %s is %lld, was %lld: public values never change (add new ones at the end, "
              "docs/abi.md)\n",
              p->name, p->value, p->pinned);
      bad++;
    }
  }
  assert_int_equal(bad, 0);
}

/* Counts may only grow, and never past the stats arrays' capacity. */
static void enum_counts_only_grow_within_their_slots(void **state) {
  (void)state;
  assert_true(RESIL_STATUS_COUNT_ >= 16);
  assert_true(RESIL_BREAKER_STATE_COUNT_ >= 5);
  assert_true(RESIL_BREAKER_STATE_COUNT_ <= RESIL_BREAKER_STATE_SLOTS);
  assert_true(RESIL_TRIP_REASON_COUNT_ >= 7);
  assert_true(RESIL_POOL_CLOSE_REASON_COUNT_ >= 5);
  assert_true(RESIL_POOL_CLOSE_REASON_COUNT_ <= RESIL_POOL_CLOSE_REASON_SLOTS);
  assert_true(RESIL_PROBE_RESULT_COUNT_ >= 3);
  assert_true(RESIL_PROBE_RESULT_COUNT_ <= RESIL_PROBE_RESULT_SLOTS);
  assert_true(RESIL_REJECT_COUNT_ >= 7);
  assert_true(RESIL_REJECT_COUNT_ <= RESIL_REJECT_SLOTS);
  assert_true(RESIL_OUTCOME_COUNT_ >= 5);
  assert_true(RESIL_OUTCOME_COUNT_ <= RESIL_OUTCOME_SLOTS);
  assert_true(RESIL_EVENT_TYPE_COUNT_ >= 1);
}

/* ---- Classification by name ----------------------------------------------- */

static void rejections_are_listed_by_name(void **state) {
  (void)state;
  static const resil_status rejections[] = {
      RESIL_E_BREAKER_OPEN, RESIL_E_CONCURRENCY_FULL, RESIL_E_QUEUE_TIMEOUT, RESIL_E_POOL_TIMEOUT,
      RESIL_E_DEADLINE,     RESIL_E_DRAINING,         RESIL_E_RETRY_BUDGET,
  };
  static const resil_status others[] = {
      RESIL_OK,      RESIL_E_FAILURE, RESIL_E_TIMEOUT, RESIL_E_OVERLOAD, RESIL_E_CALLER,
      RESIL_E_INVALID, RESIL_E_NOMEM, RESIL_E_SYSTEM,  RESIL_E_CLOSED,
  };
  for (size_t i = 0; i < sizeof rejections / sizeof rejections[0]; i++) {
    assert_true(resil_status_is_rejection(rejections[i]));
    assert_int_equal(resil_status_class_of(rejections[i]), RESIL_CLASS_REJECTED);
  }
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
    assert_false(resil_status_is_rejection(others[i]));
  /* Values past the end (a status a newer header knows) are not rejections
   * by accident of a range, and class as errors. */
  for (int v = RESIL_STATUS_COUNT_; v < RESIL_STATUS_COUNT_ + 64; v++) {
    assert_false(resil_status_is_rejection((resil_status)v));
    assert_int_equal(resil_status_class_of((resil_status)v), RESIL_CLASS_ERROR);
  }
  assert_false(resil_status_is_rejection((resil_status)-1));
}

/* ---- Struct sizes are frozen ------------------------------------------------ */

typedef struct {
  const char *name;
  size_t size, pinned, tail_end; /* tail_end: offsetof(reserved_) + its size, 0 = none */
} frozen;

#define FROZEN(T, n) {#T, sizeof(T), n, 0}
#define TAILED(T, n) \
  {#T, sizeof(T), n, offsetof(T, reserved_) + sizeof(((T *)0)->reserved_)}

static const frozen sizes[] = {
    /* Frozen with no tail: passed by value, or array elements. */
    FROZEN(resil_deadline, 8),
    FROZEN(resil_err, 516),
    FROZEN(resil_breaker_ticket, 8),
    FROZEN(resil_addr, 200),
    FROZEN(resil_problems, 536),
    FROZEN(resil_endpoint, 524),
    /* With a reserved_ tail. */
    TAILED(resil_hist_snapshot, 192),
    TAILED(resil_breaker_config, 128),
    TAILED(resil_breaker_stats, 192),
    TAILED(resil_pool_connector, 96),
    TAILED(resil_pool_config, 128),
    TAILED(resil_pool_stats, 512),
    TAILED(resil_limit_config, 96),
    TAILED(resil_retry_config, 64),
    TAILED(resil_adaptive_limit_config, 96),
    TAILED(resil_throttle_config, 48),
    TAILED(resil_rate_limit_config, 16),
    TAILED(resil_pushback_config, 16),
    TAILED(resil_dep_config, 1024),
    TAILED(resil_permit, 64),
    TAILED(resil_dep_stats, 2048),
    TAILED(resil_event, 160),
    TAILED(resil_key_spec, 64),
    TAILED(resil_config_kind, 160),
    TAILED(resil_emf_config, 64),
    TAILED(resil_admin_config, 96),
    TAILED(resil_password_file_stats, 768),
    TAILED(resil_outlier_config, 72),
    TAILED(resil_endpoint_stats, 400),
    TAILED(resil_endpoints_dns_stats, 1024),
#ifdef RESIL_TEST_HAVE_REDIS
    TAILED(resil_redis_config, 1536),
    TAILED(resil_redis_stats, 256),
    FROZEN(resil_redis_cmd, 24),
#endif
#ifdef RESIL_TEST_HAVE_PG
    TAILED(resil_pg_config, 1536),
    TAILED(resil_pg_query_args, 96),
    TAILED(resil_pg_stats, 256),
#endif
#ifdef RESIL_TEST_HAVE_HTTP
    TAILED(resil_http_config, 1536),
    TAILED(resil_http_request, 128),
    TAILED(resil_http_response, 128),
    FROZEN(resil_http_header, 16),
#endif
};

static void struct_sizes_never_change(void **state) {
  (void)state;
#if defined(__LP64__) && (defined(__x86_64__) || defined(__aarch64__))
  int bad = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    const frozen *f = &sizes[i];
    if (f->size != f->pinned) {
      fprintf(stderr,
              "# sizeof(%s) is %zu, the ABI says %zu: a new field must come out of its "
              "reserved_ tail (shrink reserved_ by the bytes the field took, padding "
              "included; docs/abi.md \"Adding a field\")\n",
              f->name, f->size, f->pinned);
      bad++;
    }
    /* reserved_ stays the last member: nothing after it but padding. */
    if (f->tail_end && f->size - f->tail_end >= 8) {
      fprintf(stderr, "# %s: a field follows reserved_ (%zu bytes after it): move it before\n",
              f->name, f->size - f->tail_end);
      bad++;
    }
  }
  assert_int_equal(bad, 0);
#else
  skip(); /* sizes are pinned for LP64 x86-64 and arm64 */
#endif
}

/* ---- Tails are zero --------------------------------------------------------- */

static bool zero(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

#define DIRTY(x) memset(&(x), 0xa5, sizeof(x))
#define TAIL_ZERO(x) zero((x).reserved_, sizeof((x).reserved_))

static void init_and_stats_zero_the_tails(void **state) {
  (void)state;
  resil_dep_config dc;
  DIRTY(dc);
  resil_dep_config_init(&dc, "abi-dep");
  assert_true(TAIL_ZERO(dc));
  assert_true(TAIL_ZERO(dc.breaker));
  assert_true(TAIL_ZERO(dc.limit));
  assert_true(TAIL_ZERO(dc.retry));

  resil_breaker_config bc;
  DIRTY(bc);
  resil_breaker_config_init(&bc);
  assert_true(TAIL_ZERO(bc));

  resil_pool_config pc;
  DIRTY(pc);
  resil_pool_config_init(&pc);
  assert_true(TAIL_ZERO(pc));

  resil_emf_config ec;
  DIRTY(ec);
  resil_emf_config_init(&ec);
  assert_true(TAIL_ZERO(ec));

  resil_admin_config ac;
  DIRTY(ac);
  resil_admin_config_init(&ac);
  assert_true(TAIL_ZERO(ac));

#ifdef RESIL_TEST_HAVE_REDIS
  resil_redis_config rc;
  DIRTY(rc);
  resil_redis_config_init(&rc, "abi-redis");
  assert_true(TAIL_ZERO(rc));
  assert_true(TAIL_ZERO(rc.outlier));
  assert_null(rc.hosts);
  assert_false(rc.endpoints_from_dns);
  assert_true(TAIL_ZERO(rc.dep));
  assert_true(TAIL_ZERO(rc.pool));
#endif
#ifdef RESIL_TEST_HAVE_PG
  resil_pg_config gc;
  DIRTY(gc);
  resil_pg_config_init(&gc, "abi-pg");
  assert_true(TAIL_ZERO(gc));
  assert_true(TAIL_ZERO(gc.outlier));
  assert_null(gc.hosts);
  assert_false(gc.endpoints_from_dns);
  assert_true(TAIL_ZERO(gc.dep));
  assert_true(TAIL_ZERO(gc.pool));
#endif
#ifdef RESIL_TEST_HAVE_HTTP
  resil_http_config hc;
  DIRTY(hc);
  resil_http_config_init(&hc, "abi-http");
  assert_true(TAIL_ZERO(hc));
  assert_true(TAIL_ZERO(hc.dep));
  assert_true(TAIL_ZERO(hc.pool));
#endif

  resil_outlier_config oc;
  DIRTY(oc);
  resil_outlier_config_init(&oc);
  assert_true(TAIL_ZERO(oc));

  resil_err err;
  resil_dep *d = resil_dep_new(&dc, &err);
  assert_non_null(d);
  resil_dep_stats ds;
  DIRTY(ds);
  resil_dep_get_stats(d, &ds);
  assert_true(TAIL_ZERO(ds));
  assert_true(TAIL_ZERO(ds.latency));
  assert_true(TAIL_ZERO(ds.breaker));
  assert_true(TAIL_ZERO(ds.pool));
  /* Slots past an enum's count read 0. */
  for (int k = RESIL_REJECT_COUNT_; k < RESIL_REJECT_SLOTS; k++) assert_int_equal(ds.rejections[k], 0);
  for (int k = RESIL_OUTCOME_COUNT_; k < RESIL_OUTCOME_SLOTS; k++) assert_int_equal(ds.calls[k], 0);
  resil_breaker_stats bs;
  DIRTY(bs);
  resil_breaker_get_stats(resil_dep_breaker(d), &bs);
  assert_true(TAIL_ZERO(bs));
  resil_dep_free(d);
}

/* Fields taken from reserved_ tails stay where they were put (LP64). */
static void new_field_offsets(void **state) {
  (void)state;
#if defined(__LP64__) && (defined(__x86_64__) || defined(__aarch64__))
  assert_int_equal(offsetof(resil_outlier_config, success_rate_stdev_factor), 32);
  assert_int_equal(offsetof(resil_outlier_config, reserved_), 40);
  assert_int_equal(offsetof(resil_endpoint_stats, ejections_skipped), 312);
  assert_int_equal(offsetof(resil_endpoint_stats, reserved_), 336);
  assert_int_equal(offsetof(resil_endpoints_dns_stats, last_error), 305);
  assert_int_equal(offsetof(resil_endpoints_dns_stats, reserved_), 817);
#ifdef RESIL_TEST_HAVE_REDIS
  assert_int_equal(offsetof(resil_redis_config, hosts), 1248);
  assert_int_equal(offsetof(resil_redis_config, outlier), 1256);
  assert_int_equal(offsetof(resil_redis_config, endpoints_from_dns), 1328);
  assert_int_equal(offsetof(resil_redis_config, reserved_), 1329);
#endif
#ifdef RESIL_TEST_HAVE_PG
  assert_int_equal(offsetof(resil_pg_config, hosts), 1264);
  assert_int_equal(offsetof(resil_pg_config, outlier), 1272);
  assert_int_equal(offsetof(resil_pg_config, endpoints_from_dns), 1344);
  assert_int_equal(offsetof(resil_pg_config, reserved_), 1345);
#endif
#else
  skip();
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(new_field_offsets),
      cmocka_unit_test(enum_values_never_change),
      cmocka_unit_test(enum_counts_only_grow_within_their_slots),
      cmocka_unit_test(rejections_are_listed_by_name),
      cmocka_unit_test(struct_sizes_never_change),
      cmocka_unit_test(init_and_stats_zero_the_tails),
  };
  return cmocka_run_group_tests_name("abi", tests, NULL, NULL);
}
