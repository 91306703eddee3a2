/* Deadlines, the injectable clock and the grpc-timeout wire format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "fake_clock.h"
#include "resil/resil.h"

static int setup(void **state) {
  (void)state;
  fake_clock_install();
  return 0;
}
static int teardown(void **state) {
  (void)state;
  fake_clock_uninstall();
  return 0;
}

static void deadline_in_ms_is_now_plus_ms(void **state) {
  (void)state;
  resil_deadline d = resil_deadline_in_ms(250);
  assert_int_equal(d.at_ns, fake_clock_now_ns() + 250000000ull);
  assert_int_equal(resil_deadline_remaining_ms(d), 250);
  assert_false(resil_deadline_expired(d));
}

static void deadline_expires_exactly_at_its_time(void **state) {
  (void)state;
  resil_deadline d = resil_deadline_in_ms(10);
  fake_clock_advance_ns(9999999);
  assert_false(resil_deadline_expired(d));
  assert_int_equal(resil_deadline_remaining_ns(d), 1);
  assert_int_equal(resil_deadline_remaining_ms(d), 1); /* rounded up, never 0 early */
  fake_clock_advance_ns(1);
  assert_true(resil_deadline_expired(d));
  assert_int_equal(resil_deadline_remaining_ms(d), 0);
  fake_clock_advance_ms(1000);
  assert_int_equal(resil_deadline_remaining_ns(d), 0);
}

static void non_positive_timeout_gives_expired_not_unset(void **state) {
  (void)state;
  resil_deadline z = resil_deadline_in_ms(0), n = resil_deadline_in_ms(-5);
  assert_true(resil_deadline_is_set(z));
  assert_true(resil_deadline_is_set(n));
  assert_true(resil_deadline_expired(z));
  assert_true(resil_deadline_expired(n));
}

static void unset_deadline_never_expires_and_loses_min(void **state) {
  (void)state;
  resil_deadline u = RESIL_DEADLINE_UNSET, d = resil_deadline_in_ms(5);
  assert_false(resil_deadline_expired(u));
  assert_int_equal(resil_deadline_remaining_ns(u), INT64_MAX);
  assert_int_equal(resil_deadline_min(u, d).at_ns, d.at_ns);
  assert_int_equal(resil_deadline_min(d, u).at_ns, d.at_ns);
  assert_int_equal(resil_deadline_min(u, u).at_ns, 0);
}

static void min_picks_earlier(void **state) {
  (void)state;
  resil_deadline a = resil_deadline_in_ms(5), b = resil_deadline_in_ms(7);
  assert_int_equal(resil_deadline_min(a, b).at_ns, a.at_ns);
  assert_int_equal(resil_deadline_min(b, a).at_ns, a.at_ns);
}

static void bound_caps_by_timeout_and_sets_unset(void **state) {
  (void)state;
  resil_deadline far = resil_deadline_in_ms(10000);
  assert_int_equal(resil_deadline_bound(far, 100).at_ns, fake_clock_now_ns() + 100000000ull);
  resil_deadline near = resil_deadline_in_ms(20);
  assert_int_equal(resil_deadline_bound(near, 100).at_ns, near.at_ns);
  resil_deadline u = resil_deadline_bound(RESIL_DEADLINE_UNSET, 300);
  assert_int_equal(u.at_ns, fake_clock_now_ns() + 300000000ull);
  assert_true(resil_deadline_expired(resil_deadline_bound(RESIL_DEADLINE_UNSET, 0)));
}

static void huge_timeouts_saturate_instead_of_wrapping(void **state) {
  (void)state;
  resil_deadline d = resil_deadline_in_ms(INT64_MAX);
  assert_true(d.at_ns > fake_clock_now_ns());
  assert_false(resil_deadline_expired(d));
}

/* ---- grpc-timeout ---- */

static int64_t parse_ns(const char *s) {
  resil_deadline d;
  resil_err err;
  resil_status st = resil_grpc_timeout_parse(s, strlen(s), &d, &err);
  if (st != RESIL_OK) return -1;
  return (int64_t)(d.at_ns - fake_clock_now_ns());
}

static void grpc_parses_every_unit(void **state) {
  (void)state;
  assert_int_equal(parse_ns("7n"), 7);
  assert_int_equal(parse_ns("7u"), 7000);
  assert_int_equal(parse_ns("7m"), 7000000);
  assert_int_equal(parse_ns("7S"), 7000000000LL);
  assert_int_equal(parse_ns("2M"), 120000000000LL);
  assert_int_equal(parse_ns("1H"), 3600000000000LL);
  assert_int_equal(parse_ns("99999999m"), 99999999000000LL);
  assert_int_equal(parse_ns("00000001S"), 1000000000LL);
}

static void grpc_rejects_malformed_values_with_message(void **state) {
  (void)state;
  const char *bad[] = {"", "m", "100", "123456789m", "10x", "10 m", " 10m", "-5m",
                       "+5m", "1.5S", "10mm", "10s", "10h", "0x10m"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    resil_deadline d = {0};
    resil_err err = {0};
    assert_int_equal(resil_grpc_timeout_parse(bad[i], strlen(bad[i]), &d, &err), RESIL_E_INVALID);
    assert_int_equal(err.status, RESIL_E_INVALID);
    assert_non_null(strstr(err.msg, "grpc-timeout"));
  }
  resil_deadline d;
  assert_int_equal(resil_grpc_timeout_parse(NULL, 2, &d, NULL), RESIL_E_INVALID);
  assert_int_equal(resil_grpc_timeout_parse("5m", 2, NULL, NULL), RESIL_E_INVALID);
}

static void grpc_parse_respects_length_not_nul(void **state) {
  (void)state;
  resil_deadline d;
  /* Only the first 3 bytes belong to the header value. */
  assert_int_equal(resil_grpc_timeout_parse("15mXYZ", 3, &d, NULL), RESIL_OK);
  assert_int_equal(d.at_ns - fake_clock_now_ns(), 15000000ull);
}

static void grpc_huge_hours_saturate(void **state) {
  (void)state;
  resil_deadline d;
  assert_int_equal(resil_grpc_timeout_parse("99999999H", 9, &d, NULL), RESIL_OK);
  assert_true(d.at_ns > fake_clock_now_ns());
}

static void grpc_formats_finest_unit_that_fits(void **state) {
  (void)state;
  char buf[16];
  assert_int_equal(resil_grpc_timeout_format(resil_deadline_in_ns(5), buf, sizeof buf, NULL),
                   RESIL_OK);
  assert_string_equal(buf, "5n");
  resil_grpc_timeout_format(resil_deadline_in_ms(250), buf, sizeof buf, NULL);
  assert_string_equal(buf, "250000u");
  resil_grpc_timeout_format(resil_deadline_in_ms(99999), buf, sizeof buf, NULL);
  assert_string_equal(buf, "99999000u");
  resil_grpc_timeout_format(resil_deadline_in_ms(100000), buf, sizeof buf, NULL);
  assert_string_equal(buf, "100000m");
  resil_grpc_timeout_format(resil_deadline_in_ms(0), buf, sizeof buf, NULL);
  assert_string_equal(buf, "0n");
}

static void grpc_format_round_trips(void **state) {
  (void)state;
  int64_t cases_ms[] = {1, 17, 999, 1500, 60000, 3600000, 86400000};
  for (size_t i = 0; i < sizeof cases_ms / sizeof cases_ms[0]; i++) {
    char buf[16];
    resil_deadline d = resil_deadline_in_ms(cases_ms[i]);
    assert_int_equal(resil_grpc_timeout_format(d, buf, sizeof buf, NULL), RESIL_OK);
    assert_true(strlen(buf) <= 9);
    assert_int_equal(parse_ns(buf), cases_ms[i] * 1000000LL);
  }
}

static void grpc_format_rejects_bad_arguments(void **state) {
  (void)state;
  char buf[16];
  resil_err err;
  assert_int_equal(resil_grpc_timeout_format(RESIL_DEADLINE_UNSET, buf, sizeof buf, &err),
                   RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "unset"));
  assert_int_equal(resil_grpc_timeout_format(resil_deadline_in_ms(5), buf, 9, &err),
                   RESIL_E_INVALID);
  assert_int_equal(resil_grpc_timeout_format(resil_deadline_in_ms(5), NULL, 16, &err),
                   RESIL_E_INVALID);
}

static void status_names_and_classes(void **state) {
  (void)state;
  assert_string_equal(resil_status_name(RESIL_E_POOL_TIMEOUT), "pool_timeout");
  assert_string_equal(resil_status_name((resil_status)999), "unknown");
  assert_string_equal(resil_strerror((resil_status)-1), "unknown status");
  assert_int_equal(resil_status_class_of(RESIL_E_TIMEOUT), RESIL_CLASS_FAILURE);
  assert_int_equal(resil_status_class_of(RESIL_E_CALLER), RESIL_CLASS_IGNORED);
  assert_int_equal(resil_status_class_of(RESIL_E_BREAKER_OPEN), RESIL_CLASS_REJECTED);
  assert_int_equal(resil_status_class_of(RESIL_E_NOMEM), RESIL_CLASS_ERROR);
  for (int s = 0; s < RESIL_STATUS_COUNT_; s++) {
    assert_non_null(resil_status_name((resil_status)s));
    assert_string_not_equal(resil_status_name((resil_status)s), "unknown");
  }
  assert_string_equal(resil_version(), RESIL_VERSION_STRING);
  assert_int_equal(resil_version_number(), RESIL_VERSION_NUMBER);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(deadline_in_ms_is_now_plus_ms, setup, teardown),
      cmocka_unit_test_setup_teardown(deadline_expires_exactly_at_its_time, setup, teardown),
      cmocka_unit_test_setup_teardown(non_positive_timeout_gives_expired_not_unset, setup, teardown),
      cmocka_unit_test_setup_teardown(unset_deadline_never_expires_and_loses_min, setup, teardown),
      cmocka_unit_test_setup_teardown(min_picks_earlier, setup, teardown),
      cmocka_unit_test_setup_teardown(bound_caps_by_timeout_and_sets_unset, setup, teardown),
      cmocka_unit_test_setup_teardown(huge_timeouts_saturate_instead_of_wrapping, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_parses_every_unit, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_rejects_malformed_values_with_message, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_parse_respects_length_not_nul, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_huge_hours_saturate, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_formats_finest_unit_that_fits, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_format_round_trips, setup, teardown),
      cmocka_unit_test_setup_teardown(grpc_format_rejects_bad_arguments, setup, teardown),
      cmocka_unit_test(status_names_and_classes),
  };
  return cmocka_run_group_tests_name("deadline", tests, NULL, NULL);
}
