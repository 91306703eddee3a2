/* The service glue: start from an environment block, serve the admin
 * endpoint, stop on SIGTERM with a drain; a bad environment starts nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>

#include "minijson.h"
#include "testutil.h"
#include "resil/resil.h"

uint64_t resil__event_log_dropped(void); /* internal: lines the event log dropped */

/* A free loopback port (bind to 0, read it back, release it). */
static uint16_t free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

/* GET path from 127.0.0.1:port; returns the whole response (static buffer). */
static const char *http_get(uint16_t port, const char *path) {
  static char resp[65536];
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return "";
  }
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  assert_int_equal(write(fd, req, (size_t)n), n);
  size_t got = 0;
  ssize_t r;
  while (got < sizeof resp - 1 && (r = read(fd, resp + got, sizeof resp - 1 - got)) > 0)
    got += (size_t)r;
  resp[got] = 0;
  close(fd);
  return resp;
}

static void bad_environment_starts_nothing_and_names_every_problem(void **state) {
  (void)state;
  char *env[] = {(char *)"RESIL_DEPS=orders:nosuch", (char *)"RESIL_ADMIN_PORT=99999",
                 (char *)"RESIL_DEP_ORDERS_TIMEOUT_MS=fast", NULL};
  resil_service *s = (resil_service *)1;
  char *report = NULL;
  resil_err err;
  assert_int_equal(resil_service_start(env, &s, &report, &err), RESIL_E_INVALID);
  assert_null(s);
  assert_non_null(report);
  assert_non_null(strstr(report, "unknown kind 'nosuch'"));
  assert_non_null(strstr(report, "RESIL_ADMIN_PORT: 99999 is above 65535"));
  free(report);
  /* nothing was left running: a good start works now */
  char *good[] = {(char *)"RESIL_DEPS=orders", (char *)"RESIL_EMF_INTERVAL_MS=0",
                  (char *)"RESIL_DRAIN_GRACE_MS=0", NULL};
  assert_int_equal(resil_service_start(good, &s, NULL, &err), RESIL_OK);
  assert_non_null(resil_service_dep(s, "orders"));
  assert_int_equal(resil_service_admin_port(s), 0);
  resil_service *second = NULL;
  assert_int_equal(resil_service_start(good, &second, NULL, &err), RESIL_E_INVALID);
  assert_null(second); /* one service per process */
  assert_non_null(strstr(err.msg, "already running"));
  assert_int_equal(resil_service_stop(s, &err), RESIL_OK);
}

static void service_serves_admin_and_drains_on_sigterm(void **state) {
  (void)state;
  char port_var[64];
  uint16_t port = free_port();
  snprintf(port_var, sizeof port_var, "RESIL_ADMIN_PORT=%u", port);
  char *env[] = {(char *)"RESIL_DEPS=orders-db,payments",
                 (char *)"RESIL_SERVICE=checkout",
                 port_var,
                 (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0",
                 (char *)"RESIL_DRAIN_TIMEOUT_MS=2s",
                 (char *)"RESIL_DEP_ORDERS_DB_CRITICAL=true",
                 (char *)"RESIL_DEP_PAYMENTS_TIMEOUT_MS=250ms",
                 NULL};
  int fds = count_open_fds();
  resil_service *s;
  resil_err err;
  if (resil_service_start(env, &s, NULL, &err) != RESIL_OK) fail_msg("start: %s", err.msg);
  assert_int_equal(resil_service_admin_port(s), port);
  resil_dep *pay = resil_service_get(s, "payments", "core");
  assert_non_null(pay);
  assert_null(resil_service_get(s, "payments", "redis"));
  assert_int_equal(resil_dep_get_config(pay)->timeout_ms, 250);
  resil_permit p;
  assert_int_equal(resil_dep_admit(pay, RESIL_DEADLINE_UNSET, &p, NULL), RESIL_OK);
  resil_dep_done(&p, RESIL_OK);

  const char *m = http_get(port, "/metrics");
  assert_non_null(strstr(m, "200 OK"));
  assert_non_null(strstr(m, "service=\"checkout\""));
  char hash[64];
  snprintf(hash, sizeof hash, "config_hash=\"%s\"",
           resil_config_hash(resil_service_get_config(s)));
  assert_non_null(strstr(m, hash));
  assert_non_null(strstr(m, "resil_calls_total{dependency=\"payments\",outcome=\"success\"} 1"));
  const char *c = http_get(port, "/config");
  assert_non_null(strstr(c, "\"name\":\"orders-db\""));
  /* ready: critical deps have no pool to warm; wait briefly for pre-warm */
  const char *r = "";
  for (int i = 0; i < 100 && !strstr(r, "200 OK"); i++) {
    r = http_get(port, "/ready");
    if (!strstr(r, "200 OK")) usleep(20000);
  }
  assert_non_null(strstr(r, "200 OK"));

  raise(SIGTERM); /* the handler only sets a flag: we are still here */
  assert_true(resil_service_wait(s, resil_deadline_in_ms(2000)));
  assert_int_equal(resil_service_stop(s, &err), RESIL_OK);
  assert_int_equal(resil_dep_admit(resil_registry_find("payments") ? pay : NULL,
                                   RESIL_DEADLINE_UNSET, &p, NULL),
                   RESIL_E_INVALID); /* freed: no longer registered */
  assert_null(resil_registry_find("orders-db"));
  assert_int_equal(count_open_fds(), fds); /* the SIGTERM self-pipe predates fds */
}

/* Read one line starting with '{' (or with `prefix`) from fd within 2 s. */
static bool read_line(int fd, const char *prefix, char *out, size_t size) {
  size_t got = 0;
  uint64_t until = test_now_ms() + 2000;
  while (test_now_ms() < until && got < size - 1) {
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 50) != 1) continue;
    ssize_t n = read(fd, out + got, 1);
    if (n != 1) return false;
    if (out[got] == '\n') {
      out[got] = '\0';
      if (strncmp(out, prefix, strlen(prefix)) == 0) return true;
      got = 0; /* another line (something else wrote to stderr) */
      continue;
    }
    got++;
  }
  return false;
}

static void event_log_writes_one_line_per_event_to_stderr_and_never_blocks(void **state) {
  (void)state;
  char *bad[] = {(char *)"RESIL_DEPS=ledger", (char *)"RESIL_EVENT_LOG=verbose", NULL};
  resil_service *s = NULL;
  char *report = NULL;
  resil_err err;
  assert_int_equal(resil_service_start(bad, &s, &report, &err), RESIL_E_INVALID);
  assert_non_null(strstr(report, "RESIL_EVENT_LOG: 'verbose' is not json, text or off"));
  free(report);

  int p[2];
  assert_int_equal(pipe(p), 0);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_int_equal(dup2(p[1], STDERR_FILENO), STDERR_FILENO);
  char *env[] = {(char *)"RESIL_DEPS=ledger", (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0", (char *)"RESIL_DRAIN_TIMEOUT_MS=1s", NULL};
  if (resil_service_start(env, &s, NULL, &err) != RESIL_OK) {
    dup2(saved, STDERR_FILENO);
    fail_msg("start: %s", err.msg);
  }
  resil_breaker *b = resil_dep_breaker(resil_service_dep(s, "ledger"));
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_FORCE_OPEN); /* json is the default */
  char line[2048];
  bool got = read_line(p[0], "{", line, sizeof line);
  mj *j = got ? mj_parse(line, strlen(line)) : NULL;
  bool ok = j && mj_get(j, "ts") && mj_get(j, "ts")->t == MJ_STR &&
            !strcmp(mj_get(j, "type")->str, "breaker") && !strcmp(mj_get(j, "dep")->str, "ledger") &&
            !strcmp(mj_get(j, "from")->str, "closed") &&
            !strcmp(mj_get(j, "to")->str, "forced_open") &&
            !strcmp(mj_get(j, "reason")->str, "forced") && mj_get(j, "message") &&
            mj_get(j, "detail") && mj_get(j, "open_ms") && mj_get(j, "suppressed");
  mj_free(j);

  /* stderr a full pipe (nobody reading): the change happens at once and the
   * line is dropped and counted. */
  int fl = fcntl(p[1], F_GETFL);
  fcntl(p[1], F_SETFL, fl | O_NONBLOCK);
  static char fill[65536];
  while (write(p[1], fill, sizeof fill) > 0) {
  }
  while (write(p[1], fill, 1) > 0) {
  }
  fcntl(p[1], F_SETFL, fl);
  uint64_t dropped = resil__event_log_dropped();
  uint64_t t0 = test_now_ms();
  resil_breaker_set_mode(b, RESIL_BREAKER_MODE_AUTO);
  uint64_t took = test_now_ms() - t0;
  uint64_t dropped_after = resil__event_log_dropped();
  char *text = NULL;
  resil_export_prometheus(&text, NULL, NULL);
  char want[80];
  snprintf(want, sizeof want, "resil_event_log_dropped_total %llu\n",
           (unsigned long long)dropped_after);
  bool exported = text && strstr(text, want);
  free(text);
  resil_status stop = resil_service_stop(s, &err);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(p[0]);
  close(p[1]);
  if (!got) fail_msg("no event line on stderr");
  if (!ok) fail_msg("bad event line: %s", line);
  assert_int_equal(stop, RESIL_OK);
  assert_true(took < 500);
  assert_int_equal(dropped_after, dropped + 1);
  assert_true(exported);

  /* text */
  assert_int_equal(pipe(p), 0);
  saved = dup(STDERR_FILENO);
  dup2(p[1], STDERR_FILENO);
  char *tenv[] = {(char *)"RESIL_DEPS=ledger", (char *)"RESIL_EMF_INTERVAL_MS=0",
                  (char *)"RESIL_DRAIN_GRACE_MS=0", (char *)"RESIL_DRAIN_TIMEOUT_MS=1s",
                  (char *)"RESIL_EVENT_LOG=text", NULL};
  assert_int_equal(resil_service_start(tenv, &s, NULL, &err), RESIL_OK);
  resil_breaker_set_mode(resil_dep_breaker(resil_service_dep(s, "ledger")),
                         RESIL_BREAKER_MODE_FORCE_OPEN);
  got = read_line(p[0], "20", line, sizeof line);
  resil_service_stop(s, &err);
  /* off: nothing */
  char *oenv[] = {(char *)"RESIL_DEPS=ledger", (char *)"RESIL_EMF_INTERVAL_MS=0",
                  (char *)"RESIL_DRAIN_GRACE_MS=0", (char *)"RESIL_DRAIN_TIMEOUT_MS=1s",
                  (char *)"RESIL_EVENT_LOG=off", NULL};
  assert_int_equal(resil_service_start(oenv, &s, NULL, &err), RESIL_OK);
  resil_breaker_set_mode(resil_dep_breaker(resil_service_dep(s, "ledger")),
                         RESIL_BREAKER_MODE_FORCE_OPEN);
  char other[256];
  bool got_off = read_line(p[0], "", other, sizeof other);
  resil_service_stop(s, &err);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(p[0]);
  close(p[1]);
  assert_true(got);
  assert_non_null(strstr(line, "resil event breaker dep=ledger closed -> forced_open reason=forced"));
  assert_false(got_off);
}

/* tools/resil-config, from the test's argument (meson passes it). */
static const char *tool_path;

/* Run resil-config with exactly env; its exit status, stderr in *err_out
 * (static). Bounded: a tool that does not finish in 10 s fails the test. */
static int run_tool(char **env, const char **err_out) {
  if (!tool_path) fail_msg("usage: test_service PATH-TO-resil-config");
  return test_run_capture(tool_path, env, 0, err_out);
}

/* Each value that the service refuses at start is refused by resil-config,
 * which the user runs before deploying, and both name the variable. */
static void the_tool_and_the_start_refuse_the_same_values_naming_the_variable(void **state) {
  (void)state;
  static char long_name[301];
  memset(long_name, 'x', 300);
  char port_var[64];
  snprintf(port_var, sizeof port_var, "RESIL_ADMIN_PORT=%u", free_port());
  static const char *const ON = "RESIL_EMF_INTERVAL_MS=60000", *const OFF = "RESIL_EMF_INTERVAL_MS=0";
  struct {
    const char *var, *value, *extra; /* extra: another variable, or NULL */
    bool admin;                      /* with RESIL_ADMIN_PORT set */
    const char *says;                /* in the message after "VAR: " */
  } rows[] = {
      {"RESIL_ADMIN_ADDR", "localhost", OFF, true, "'localhost' is not an IP address"},
      {"RESIL_ADMIN_ADDR", "[::1]", OFF, true, "'[::1]' is not an IP address"},
      {"RESIL_ADMIN_ADDR", "127.0.0.1:9102", OFF, true, "is not an IP address"},
      {"RESIL_ADMIN_ADDR", "localhost", OFF, false, "is not an IP address"}, /* admin off */
      {"RESIL_ADMIN_ADDR", "", OFF, true, "must not be empty"},
      {"RESIL_EMF_NAMESPACE", "AWS/Foo", ON, false, "must not start with AWS/"},
      {"RESIL_EMF_NAMESPACE", "AWS/Foo", OFF, false, "must not start with AWS/"},
      {"RESIL_EMF_NAMESPACE", long_name, ON, false, "must be 1..255 characters (got 300)"},
      {"RESIL_EMF_NAMESPACE", "my*ns", ON, false, "has a character outside"},
      {"RESIL_SERVICE", long_name, ON, false, "longer than 255 bytes (300)"},
      {"RESIL_SERVICE", long_name, OFF, false, "longer than 255 bytes (300)"}, /* the label */
      {"RESIL_SERVICE", "check\tout", ON, false, "control character at byte 5"},
      {"RESIL_SERVICE", "check\nout", OFF, false, "control character at byte 5"},
      {"RESIL_EMF_INTERVAL_MS", "25h", NULL, false, "90000000 is outside 1000..86400000"},
      {"RESIL_EMF_INTERVAL_MS", "999", NULL, false, "999 ms is below 1s"},
      {"RESIL_ADMIN_PORT", "65536", NULL, false, "65536 is above 65535"},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    char var[400], want[400];
    snprintf(var, sizeof var, "%s=%s", rows[i].var, rows[i].value);
    snprintf(want, sizeof want, "%s: ", rows[i].var);
    char *env[] = {(char *)"RESIL_DEPS=orders", (char *)"RESIL_DRAIN_GRACE_MS=0", var,
                   rows[i].admin ? port_var : (char *)"RESIL_DRAIN_TIMEOUT_MS=1s",
                   (char *)rows[i].extra, NULL};
    const char *out;
    int rc = run_tool(env, &out);
    if (rc != 1 || !strstr(out, want) || !strstr(strstr(out, want), rows[i].says))
      fail_msg("row %zu (%s): resil-config exit %d, wanted 1 and '%s%s':\n%s", i, rows[i].var, rc,
               want, rows[i].says, out);
    resil_service *s = (resil_service *)1;
    char *report = NULL;
    resil_err err = {0};
    resil_status st = resil_service_start(env, &s, &report, &err);
    if (st == RESIL_OK) {
      resil_service_stop(s, NULL);
      fail_msg("row %zu (%s): the service started", i, rows[i].var);
    }
    assert_null(s);
    const char *msg = report ? report : err.msg;
    if (!strstr(msg, want) || !strstr(strstr(msg, want), rows[i].says))
      fail_msg("row %zu (%s): start said (status %s) '%s', wanted '%s%s'", i, rows[i].var,
               resil_status_name(st), msg, want, rows[i].says);
    free(report);
  }

  /* The edges both accept, and the service starts with them. */
  static char max_name[256];
  memset(max_name, 'y', 255);
  char svc_var[300];
  snprintf(svc_var, sizeof svc_var, "RESIL_SERVICE=%s", max_name);
  char *good[] = {(char *)"RESIL_DEPS=orders", (char *)"RESIL_DRAIN_GRACE_MS=0",
                  (char *)"RESIL_ADMIN_ADDR=::1", port_var,
                  (char *)"RESIL_EMF_INTERVAL_MS=24h",
                  (char *)"RESIL_EMF_NAMESPACE=My/App#1:a b_c-d.e", svc_var, NULL};
  const char *out;
  int rc = run_tool(good, &out);
  if (rc != 0) fail_msg("resil-config refused the edge values (exit %d):\n%s", rc, out);
  /* EMF flushes at stop: keep its lines out of the test's output */
  fflush(stdout);
  int saved = dup(STDOUT_FILENO), devnull = open("/dev/null", O_WRONLY);
  assert_true(saved >= 0 && devnull >= 0);
  dup2(devnull, STDOUT_FILENO);
  close(devnull);
  resil_service *s = NULL;
  char *report = NULL;
  resil_err err;
  resil_status st = resil_service_start(good, &s, &report, &err);
  if (st == RESIL_OK) st = resil_service_stop(s, &err);
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  if (st != RESIL_OK) fail_msg("the edge values: %s", report ? report : err.msg);
}

/* The one start-up failure resil-config cannot foresee, a taken admin
 * port, names the variables too. */
static void a_taken_admin_port_is_named_at_start(void **state) {
  (void)state;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 1), 0);
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  char port_var[64], want[96];
  snprintf(port_var, sizeof port_var, "RESIL_ADMIN_PORT=%u", ntohs(a.sin_port));
  snprintf(want, sizeof want, "RESIL_ADMIN_ADDR=127.0.0.1 %s: ", port_var);
  char *env[] = {(char *)"RESIL_DEPS=orders", (char *)"RESIL_EMF_INTERVAL_MS=0", port_var, NULL};
  resil_service *s = (resil_service *)1;
  resil_err err;
  assert_int_equal(resil_service_start(env, &s, NULL, &err), RESIL_E_SYSTEM);
  assert_null(s);
  if (!strstr(err.msg, want)) fail_msg("'%s' lacks '%s'", err.msg, want);
  close(fd);
}

int main(int argc, char **argv) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(bad_environment_starts_nothing_and_names_every_problem),
      cmocka_unit_test(service_serves_admin_and_drains_on_sigterm),
      cmocka_unit_test(the_tool_and_the_start_refuse_the_same_values_naming_the_variable),
      cmocka_unit_test(a_taken_admin_port_is_named_at_start),
      cmocka_unit_test(event_log_writes_one_line_per_event_to_stderr_and_never_blocks),
  };
  tool_path = argc > 1 ? argv[1] : NULL;
  return cmocka_run_group_tests_name("service", tests, NULL, NULL);
}
