/* The "http" configuration kind end to end: a service configured only from
 * environment variables builds a resil_http and calls a real testhttpd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "resil/http.h"
#include "resil/resil.h"
#include "procs.h"

static void environment_configures_an_http_dependency(void **state) {
  (void)state;
  const char *httpd = getenv("RESIL_TESTHTTPD");
  if (!httpd) fail_msg("RESIL_TESTHTTPD is not set (meson sets it)");
  child srv;
  uint16_t port = testhttpd_start(&srv, httpd);
  assert_true(port > 0);
  char url[96];
  snprintf(url, sizeof url, "RESIL_DEP_PAYMENTS_API_BASE_URL=http://127.0.0.1:%u/", port);
  char *env[] = {(char *)"RESIL_DEPS=payments-api:http",
                 url,
                 (char *)"RESIL_DEP_PAYMENTS_API_REQUEST_TIMEOUT_MS=300ms",
                 (char *)"RESIL_DEP_PAYMENTS_API_MAX_RESPONSE_BYTES=64k",
                 (char *)"RESIL_DEP_PAYMENTS_API_POOL_MAX_SIZE=2",
                 (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0",
                 NULL};
  resil_service *svc;
  resil_err err;
  char *report = NULL;
  if (resil_service_start(env, &svc, &report, &err) != RESIL_OK)
    fail_msg("start: %s", report ? report : err.msg);
  resil_http_config *hc =
      resil_config_find(resil_service_get_config(svc), "payments-api", "http");
  assert_non_null(hc);
  assert_int_equal(hc->request_timeout_ms, 300);
  assert_int_equal(hc->max_response_bytes, 65536);
  assert_int_equal(hc->pool.max_size, 2);
  resil_http *api = resil_service_get(svc, "payments-api", "http");
  assert_non_null(api);
  resil_http_response resp;
  assert_int_equal(resil_http_get(api, resil_deadline_in_ms(2000), "/fast", &resp, &err),
                   RESIL_OK);
  assert_int_equal(resp.status, 200);
  resil_http_response_free(&resp);
  /* the request timeout from the environment bounds a slow call */
  double t0 = t_now_ms();
  assert_int_equal(resil_http_get(api, resil_deadline_in_ms(5000), "/slow?ms=2000", &resp, &err),
                   RESIL_E_TIMEOUT);
  assert_true(t_now_ms() - t0 < 300 + 100);
  resil_http_response_free(&resp);
  /* a body over the configured limit is refused */
  assert_int_equal(resil_http_get(api, resil_deadline_in_ms(2000), "/big?bytes=100000", &resp,
                                  &err),
                   RESIL_E_FAILURE);
  resil_http_response_free(&resp);
  assert_int_equal(resil_service_stop(svc, &err), RESIL_OK);
  child_stop(&srv);
}

static void missing_base_url_is_named(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=payments-api:http", (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DEP_PAYMENTS_API_TLS_VERIFY=maybe", NULL};
  resil_service *svc = NULL;
  char *report = NULL;
  assert_int_equal(resil_service_start(env, &svc, &report, NULL), RESIL_E_INVALID);
  assert_non_null(report);
  if (!strstr(report, "RESIL_DEP_PAYMENTS_API_BASE_URL: is required for http dependency"))
    fail_msg("%s", report);
  assert_non_null(strstr(report, "RESIL_DEP_PAYMENTS_API_TLS_VERIFY: 'maybe' is not a boolean"));
  free(report);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(environment_configures_an_http_dependency),
      cmocka_unit_test(missing_base_url_is_named),
  };
  return cmocka_run_group_tests_name("http_service", tests, NULL, NULL);
}
