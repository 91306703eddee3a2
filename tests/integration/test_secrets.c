/* Secrets from configuration never leave the process: a service configured
 * from the environment with a Redis password and a PostgreSQL conninfo
 * password, whose dependencies fail (refused and never-answered ports, so no
 * server is needed), must not show either secret in any error message, in
 * /config, /metrics, the JSON snapshot, the EMF lines or the config dump;
 * nor may passwords read from PASSWORD_FILE files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "resil/pg.h"
#include "resil/redis.h"
#include "resil/resil.h"
#include "testutil.h"

#define REDIS_SECRET "rEdIs-SeCrEt-9f1c"
#define PG_SECRET "pG-SeCrEt-77aa"

static uint16_t refused_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd); /* nothing listens there now */
  return ntohs(a.sin_port);
}

/* GET path from the admin endpoint on 127.0.0.1:port: the whole response
 * (headers and body, until the server closes), or NULL if there was none. */
static const char *http_get(uint16_t port, const char *path) {
  static char resp[1 << 17];
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return NULL;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  size_t got = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     path);
    if (write(fd, req, (size_t)n) == n) {
      ssize_t r;
      while (got < sizeof resp - 1 && (r = read(fd, resp + got, sizeof resp - 1 - got)) > 0)
        got += (size_t)r;
    }
  }
  close(fd);
  resp[got] = 0;
  return got ? resp : NULL;
}

/* A positive answer first, so that a secret check cannot pass on an
 * endpoint that is down: GET path must answer with status ok (or ok2, if
 * not 0) and a body holding every one of the strings in want (NULL-ended).
 * Returns the whole response. */
static const char *must_get(uint16_t port, const char *path, int ok, int ok2,
                            const char *const *want) {
  const char *r = http_get(port, path);
  if (!r) fail_msg("GET %s on 127.0.0.1:%u: no answer", path, (unsigned)port);
  int code = 0;
  if (sscanf(r, "HTTP/1.1 %d ", &code) != 1 || (code != ok && (!ok2 || code != ok2)))
    fail_msg("GET %s: status %d, expected %d: '%.200s'", path, code, ok, r);
  const char *body = strstr(r, "\r\n\r\n");
  if (!body || !body[4]) fail_msg("GET %s: an empty body: '%.200s'", path, r);
  for (; want && *want; want++)
    if (!strstr(body, *want)) fail_msg("GET %s: no '%s' in the body: '%.300s'", path, *want, body);
  return r;
}

static void no_secret_in(const char *what, const char *text) {
  assert_non_null(text);
  if (strstr(text, REDIS_SECRET) || strstr(text, PG_SECRET))
    fail_msg("a secret leaked into %s: %s", what, text);
}

/* Every output of a running service whose "cache" (redis) and "db" (pg)
 * cannot be reached: three calls to each fail, naming the dependency,
 * without a secret (before_third(ctx), if not NULL, runs before the third
 * round); then /config (holding each of config_want), /metrics (holding
 * both dependencies), /ready if check_ready, the JSON snapshot, the config
 * dump and EMF of db's stats show no secret. */
static void outputs_hold_no_secret(resil_service *svc, const char *const *config_want,
                                   bool check_ready, void (*before_third)(void *), void *ctx) {
  resil_redis *cache = resil_service_get(svc, "cache", "redis");
  resil_pg *db = resil_service_get(svc, "db", "pg");
  assert_non_null(cache);
  assert_non_null(db);
  resil_err err;
  for (int i = 0; i < 3; i++) {
    if (i == 2 && before_third) before_third(ctx);
    redisReply *rep = NULL;
    resil_status st =
        resil_redis_command(cache, resil_deadline_in_ms(500), 0, &rep, &err, "GET k");
    assert_int_not_equal(st, RESIL_OK);
    assert_non_null(strstr(err.msg, "cache")); /* a real error message, naming the dependency */
    no_secret_in("a Redis error", err.msg);
    PGresult *res = NULL;
    st = resil_pg_query(db, resil_deadline_in_ms(500), 0, "SELECT 1", 0, NULL, &res, &err);
    PQclear(res);
    assert_int_not_equal(st, RESIL_OK);
    assert_non_null(strstr(err.msg, "db"));
    no_secret_in("a PostgreSQL error", err.msg);
  }
  uint16_t port = resil_service_admin_port(svc);
  assert_true(port > 0);
  no_secret_in("/config", must_get(port, "/config", 200, 0, config_want));
  const char *metrics_want[] = {"dependency=\"cache\"", "dependency=\"db\"", NULL};
  no_secret_in("/metrics", must_get(port, "/metrics", 200, 0, metrics_want));
  const char *ready_want[] = {"\"ready\":", NULL};
  if (check_ready) no_secret_in("/ready", must_get(port, "/ready", 200, 503, ready_want));
  char *text = NULL;
  assert_int_equal(resil_export_json(&text, NULL, NULL), RESIL_OK);
  no_secret_in("the JSON snapshot", text);
  free(text);
  text = resil_config_dump(resil_service_get_config(svc));
  no_secret_in("the config dump", text);
  free(text);
  resil_emf_config ec;
  resil_emf_config_init(&ec);
  ec.service = "secrets-test";
  resil_dep_stats ds;
  resil_dep_get_stats(resil_service_dep(svc, "db"), &ds);
  assert_int_equal(resil_emf_render(&ec, &ds, NULL, 1, 100, &text, NULL, &err), RESIL_OK);
  no_secret_in("EMF", text);
  free(text);
}

/* The loader refuses env with a report naming var (followed by ": "), and
 * neither the report nor err.msg shows a secret (no_leak); what names the
 * case in a failure. */
static void refused_naming(char **env, const char *var, const char *what,
                           void (*no_leak)(const char *, const char *)) {
  resil_config *c = NULL;
  char *report = NULL;
  resil_err err;
  assert_int_equal(resil_config_load(env, NULL, &c, &report, &err), RESIL_E_INVALID);
  assert_non_null(report);
  char want[128];
  snprintf(want, sizeof want, "%s: ", var);
  if (!strstr(report, want)) fail_msg("%s: the report does not name %s: %s", what, var, report);
  no_leak("a config error report", report);
  no_leak("a config error", err.msg);
  free(report);
}

static void secrets_never_appear_in_any_output(void **state) {
  (void)state;
  resil_redis_register_kind(NULL); /* explicit: --as-needed may drop constructors */
  resil_pg_register_kind(NULL);
  int fds[3];
  uint16_t hang = unanswered_listener(fds), refused = refused_port();
  char admin[64], rport[64], pginfo[160];
  snprintf(admin, sizeof admin, "RESIL_ADMIN_PORT=%u", refused_port());
  snprintf(rport, sizeof rport, "RESIL_DEP_CACHE_PORT=%u", refused);
  snprintf(pginfo, sizeof pginfo,
           "RESIL_DEP_DB_CONNINFO=host=127.0.0.1 port=%u dbname=x user=x password=" PG_SECRET,
           hang);
  char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg",
                 (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0",
                 admin,
                 rport,
                 (char *)"RESIL_DEP_CACHE_PASSWORD=" REDIS_SECRET,
                 pginfo,
                 (char *)"RESIL_DEP_DB_CONNECT_TIMEOUT_MS=150",
                 NULL};
  resil_service *svc;
  char *report = NULL;
  resil_err err;
  if (resil_service_start(env, &svc, &report, &err) != RESIL_OK)
    fail_msg("start: %s", report ? report : err.msg);
  /* Each output really holds the two dependencies (whose secrets must not
   * be there). */
  const char *config_want[] = {"<redacted>", "cache", "db", NULL};
  outputs_hold_no_secret(svc, config_want, true, NULL, NULL);
  assert_int_equal(resil_service_stop(svc, &err), RESIL_OK);
  unanswered_close(fds);
}

static void a_bad_secret_value_is_not_echoed_in_config_errors(void **state) {
  (void)state;
  resil_pg_register_kind(NULL);
  char *env[] = {(char *)"RESIL_DEPS=db:pg",
                 (char *)"RESIL_DEP_DB_CONNINFO=host=127.0.0.1 password='" PG_SECRET,
                 NULL}; /* unterminated quote: libpq refuses it */
  refused_naming(env, "RESIL_DEP_DB_CONNINFO", "an unterminated quote", no_secret_in);
}

/* The same with the password inside a postgresql:// URI (user info, or the
 * query parameter password=), in every form libpq accepts, and in URIs
 * libpq refuses (its parse errors quote pieces of the string): no error
 * message, config error report, /config nor config dump shows it. */
#define PG_URI_SECRET "pGuRi-SeCrEt-31d5"
static void no_uri_secret_in(const char *what, const char *text) {
  assert_non_null(text);
  if (strstr(text, PG_URI_SECRET)) fail_msg("a postgresql:// password leaked into %s: %s", what, text);
}

static void postgresql_uri_passwords_never_appear(void **state) {
  (void)state;
  resil_pg_register_kind(NULL);
  int fds[3];
  uint16_t hang = unanswered_listener(fds), refused = refused_port();
  char uris[4][256];
  snprintf(uris[0], sizeof uris[0],
           "RESIL_DEP_DB_CONNINFO=postgresql://resil:" PG_URI_SECRET "@127.0.0.1:%u/x", refused);
  snprintf(uris[1], sizeof uris[1],
           "RESIL_DEP_DB_CONNINFO=postgres://resil:" PG_URI_SECRET "@127.0.0.1:%u/x"
           "?connect_timeout=1", hang);
  snprintf(uris[2], sizeof uris[2],
           "RESIL_DEP_DB_CONNINFO=postgresql://127.0.0.1:%u/x?user=resil&password=" PG_URI_SECRET,
           refused);
  snprintf(uris[3], sizeof uris[3],
           "RESIL_DEP_DB_CONNINFO=postgresql://resil:%%41" PG_URI_SECRET "@127.0.0.1:%u/x", hang);
  for (int i = 0; i < 4; i++) {
    char admin[64];
    snprintf(admin, sizeof admin, "RESIL_ADMIN_PORT=%u", refused_port());
    char *env[] = {(char *)"RESIL_DEPS=db:pg", (char *)"RESIL_EMF_INTERVAL_MS=0",
                   (char *)"RESIL_DRAIN_GRACE_MS=0", admin, uris[i],
                   (char *)"RESIL_DEP_DB_CONNECT_TIMEOUT_MS=150", NULL};
    resil_service *svc;
    char *report = NULL;
    resil_err err;
    if (resil_service_start(env, &svc, &report, &err) != RESIL_OK)
      fail_msg("start with URI %d: %s", i, report ? report : err.msg);
    resil_pg *db = resil_service_get(svc, "db", "pg");
    assert_non_null(db);
    for (int k = 0; k < 2; k++) {
      PGresult *res = NULL;
      resil_status st =
          resil_pg_query(db, resil_deadline_in_ms(500), 0, "SELECT 1", 0, NULL, &res, &err);
      PQclear(res);
      assert_int_not_equal(st, RESIL_OK);
      no_uri_secret_in("a PostgreSQL error", err.msg);
    }
    uint16_t port = resil_service_admin_port(svc);
    const char *cfg = http_get(port, "/config");
    no_uri_secret_in("/config", cfg);
    assert_non_null(strstr(cfg, "<redacted>"));
    no_uri_secret_in("/metrics", http_get(port, "/metrics"));
    char *text = resil_config_dump(resil_service_get_config(svc));
    no_uri_secret_in("the config dump", text);
    free(text);
    text = NULL;
    assert_int_equal(resil_export_json(&text, NULL, NULL), RESIL_OK);
    no_uri_secret_in("the JSON snapshot", text);
    free(text);
    assert_int_equal(resil_service_stop(svc, &err), RESIL_OK);
  }
  unanswered_close(fds);

  /* URIs libpq refuses, each quoting a piece that holds the password. */
  const char *bad[] = {
      "RESIL_DEP_DB_CONNINFO=postgresql://resil:" PG_URI_SECRET "%zz@127.0.0.1/x",
      "RESIL_DEP_DB_CONNINFO=postgresql://resil:" PG_URI_SECRET "@127.0.0.1:port/x",
      "RESIL_DEP_DB_CONNINFO=postgresql://127.0.0.1/x?password=" PG_URI_SECRET "&" PG_URI_SECRET
      "=1",
      "RESIL_DEP_DB_CONNINFO=postgresql://[resil:" PG_URI_SECRET "@127.0.0.1/x",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *env[] = {(char *)"RESIL_DEPS=db:pg", (char *)bad[i], NULL};
    resil_config *c = NULL;
    resil_status st = resil_config_load(env, NULL, &c, NULL, NULL);
    if (st == RESIL_OK) {
      char *text = resil_config_dump(c);
      no_uri_secret_in("the config dump", text);
      free(text);
      resil_config_free(c);
      continue;
    }
    refused_naming(env, "RESIL_DEP_DB_CONNINFO", bad[i], no_uri_secret_in);
  }
}

/* Run the resil-config binary (RESIL_CONFIG_TOOL, set by meson) with env;
 * its exit status and everything it printed (stdout and stderr). */
static int run_tool(char **env, const char **out) {
  return test_run_capture(need_env("RESIL_CONFIG_TOOL"), env, 1, out);
}

/* Malformed conninfo strings and URIs holding the password: every one is
 * refused, naming RESIL_DEP_DB_CONNINFO, and no error from the adapter's
 * validation, the config loader, resil-config or resil_service_start
 * shows the password or a piece of it. */
static void a_malformed_conninfo_never_shows_the_password(void **state) {
  (void)state;
  resil_pg_register_kind(NULL);
  const char *cases[] = {
      "password=abc\"def ghi\"" PG_SECRET,           /* the quoted piece holds quotes */
      "host=127.0.0.1 password=abc\"def ghi\"" PG_SECRET " dbname=x",
      "host=127.0.0.1 password=abc " PG_SECRET,      /* unquoted space: missing "=" */
      "host=127.0.0.1 password=abc " PG_SECRET "=1", /* invalid connection option */
      "host=127.0.0.1 password='" PG_SECRET,         /* unterminated quote */
      "host=127.0.0.1 password=x " PG_SECRET "\"=1",
      "postgresql://u:" PG_SECRET "%zz@127.0.0.1/db",          /* bad percent-encoding */
      "postgresql://u:" PG_SECRET "%00@127.0.0.1/db",          /* %00 */
      "postgresql://u@127.0.0.1/db?password=" PG_SECRET "%2",  /* in the query */
      "postgresql://u@127.0.0.1/db?pass%77ord=" PG_SECRET "%zz",
      "postgresql://u@127.0.0.1/db?password=a&" PG_SECRET,     /* missing "=" in a param */
      "postgresql://u@127.0.0.1/db?password=a=" PG_SECRET,     /* extra "=" */
      "postgresql://u:" PG_SECRET "@[::1",                     /* quotes the whole URI */
      "postgresql://u:" PG_SECRET "@[::1]x/db",
      "postgresql://u:" PG_SECRET "@[]/db",
      "postgres://u:" PG_SECRET "@h?" PG_SECRET,
      "postgresql://u:" PG_SECRET "/x@127.0.0.1/db",  /* '/' in the password: host:port */
      "postgresql://u:12/" PG_SECRET "@127.0.0.1/db", /* the rest would be the dbname */
      "postgresql://u:a@" PG_SECRET "@127.0.0.1/db",  /* '@' in the password */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char var[512];
    snprintf(var, sizeof var, "RESIL_DEP_DB_CONNINFO=%s", cases[i]);
    char *env[] = {(char *)"RESIL_DEPS=db:pg", (char *)"RESIL_EMF_INTERVAL_MS=0", var, NULL};
    /* the adapter's own validation */
    resil_pg_config pc;
    resil_pg_config_init(&pc, "db");
    pc.conninfo = cases[i];
    resil_err err = {0};
    if (resil_pg_config_validate(&pc, &err) != RESIL_E_INVALID)
      fail_msg("case %zu accepted: %s", i, cases[i]);
    no_secret_in("resil_pg_config_validate", err.msg);
    refused_naming(env, "RESIL_DEP_DB_CONNINFO", cases[i], no_secret_in); /* the loader */
    /* the service */
    resil_service *svc = (resil_service *)1;
    char *report = NULL;
    assert_int_equal(resil_service_start(env, &svc, &report, &err), RESIL_E_INVALID);
    assert_null(svc);
    assert_non_null(report);
    no_secret_in("a start-up error report", report);
    no_secret_in("a start-up error", err.msg);
    free(report);
    /* the tool a user runs before deploying */
    const char *out;
    int rc = run_tool(env, &out);
    if (rc != 1 || !strstr(out, "RESIL_DEP_DB_CONNINFO: "))
      fail_msg("case %zu: resil-config exit %d: %s", i, rc, out);
    no_secret_in("resil-config's output", out);
  }
  /* what is not secret is still shown: a typo before the password */
  resil_pg_config pc;
  resil_pg_config_init(&pc, "db");
  pc.conninfo = "host=127.0.0.1 hots=x password=" PG_SECRET;
  resil_err err;
  assert_int_equal(resil_pg_config_validate(&pc, &err), RESIL_E_INVALID);
  if (!strstr(err.msg, "invalid connection option \"hots\"")) fail_msg("%s", err.msg);
}

static void unlink_files(void *paths) {
  for (const char *const *p = paths; *p; p++) unlink(*p);
}

/* Passwords from files (PASSWORD_FILE): their content never shows in an
 * error, /config, /metrics, the JSON snapshot, the config dump or EMF; a
 * file that is missing, a directory or empty is a configuration error
 * naming the variable and the file, never the content; a file that vanishes
 * at run time keeps the last password and says so without showing it. */
static void password_files_never_show_their_content(void **state) {
  (void)state;
  resil_redis_register_kind(NULL);
  resil_pg_register_kind(NULL);
  char rfile[128], pfile[128];
  snprintf(rfile, sizeof rfile, "/tmp/resil-secrets-redis-%d", (int)getpid());
  snprintf(pfile, sizeof pfile, "/tmp/resil-secrets-pg-%d", (int)getpid());
  FILE *f = fopen(rfile, "w");
  assert_non_null(f);
  fputs(REDIS_SECRET "\n", f);
  fclose(f);
  f = fopen(pfile, "w");
  assert_non_null(f);
  fputs(PG_SECRET "\n", f);
  fclose(f);
  int fds[3];
  uint16_t hang = unanswered_listener(fds), refused = refused_port();
  char admin[64], rport[64], pginfo[160], rpw[200], ppw[200];
  snprintf(admin, sizeof admin, "RESIL_ADMIN_PORT=%u", refused_port());
  snprintf(rport, sizeof rport, "RESIL_DEP_CACHE_PORT=%u", refused);
  snprintf(pginfo, sizeof pginfo, "RESIL_DEP_DB_CONNINFO=host=127.0.0.1 port=%u dbname=x user=x",
           hang);
  snprintf(rpw, sizeof rpw, "RESIL_DEP_CACHE_PASSWORD_FILE=%s", rfile);
  snprintf(ppw, sizeof ppw, "RESIL_DEP_DB_PASSWORD_FILE=%s", pfile);
  char *env[] = {(char *)"RESIL_DEPS=cache:redis,db:pg",
                 (char *)"RESIL_EMF_INTERVAL_MS=0",
                 (char *)"RESIL_DRAIN_GRACE_MS=0",
                 admin,
                 rport,
                 rpw,
                 pginfo,
                 ppw,
                 (char *)"RESIL_DEP_DB_CONNECT_TIMEOUT_MS=150",
                 NULL};
  resil_service *svc;
  char *report = NULL;
  resil_err err;
  if (resil_service_start(env, &svc, &report, &err) != RESIL_OK)
    fail_msg("start: %s", report ? report : err.msg);
  /* the files vanish before the third calls: the last password stays, the
   * error names the file; paths are not secrets: /config shows them */
  const char *files[] = {rfile, pfile, NULL};
  outputs_hold_no_secret(svc, files, false, unlink_files, files);
  assert_int_equal(resil_service_stop(svc, &err), RESIL_OK);
  unanswered_close(fds);

  /* Bad files: errors name the variable and the file, never the content. */
  char dir[128], empty[128], holder[128];
  snprintf(dir, sizeof dir, "/tmp");
  snprintf(empty, sizeof empty, "/tmp/resil-secrets-empty-%d", (int)getpid());
  snprintf(holder, sizeof holder, "/tmp/resil-secrets-holder-%d", (int)getpid());
  f = fopen(empty, "w");
  assert_non_null(f);
  fputs("\n" PG_SECRET "\n", f); /* the first line is empty; the secret after it */
  fclose(f);
  const char *bad[][2] = {{"/nonexistent/resil-pw", "No such file"},
                          {dir, "is a directory"},
                          {empty, "is empty"}};
  for (size_t i = 0; i < 3; i++) {
    char v1[200], v2[200];
    snprintf(v1, sizeof v1, "RESIL_DEP_CACHE_PASSWORD_FILE=%s", bad[i][0]);
    snprintf(v2, sizeof v2, "RESIL_DEP_DB_PASSWORD_FILE=%s", bad[i][0]);
    char *benv[] = {(char *)"RESIL_DEPS=cache:redis,db:pg", v1,
                    (char *)"RESIL_DEP_DB_CONNINFO=host=127.0.0.1 dbname=x user=x", v2, NULL};
    resil_config *c = NULL;
    report = NULL;
    assert_int_equal(resil_config_load(benv, NULL, &c, &report, &err), RESIL_E_INVALID);
    char want[300];
    snprintf(want, sizeof want, "RESIL_DEP_CACHE_PASSWORD_FILE: cannot read '%s'", bad[i][0]);
    if (i == 2)
      snprintf(want, sizeof want, "RESIL_DEP_CACHE_PASSWORD_FILE: '%s' is empty", bad[i][0]);
    if (!strstr(report, want) || !strstr(report, "RESIL_DEP_DB_PASSWORD_FILE: ") ||
        !strstr(report, bad[i][1]))
      fail_msg("case %zu: %s", i, report);
    no_secret_in("a password file error", report);
    free(report);
    const char *out;
    int rc = run_tool(benv, &out);
    if (rc != 1 || !strstr(out, want)) fail_msg("resil-config, case %zu: exit %d: %s", i, rc, out);
    no_secret_in("resil-config's output", out);
  }
  unlink(empty);
  (void)holder;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(secrets_never_appear_in_any_output),
      cmocka_unit_test(a_bad_secret_value_is_not_echoed_in_config_errors),
      cmocka_unit_test(postgresql_uri_passwords_never_appear),
      cmocka_unit_test(a_malformed_conninfo_never_shows_the_password),
      cmocka_unit_test(password_files_never_show_their_content),
  };
  return cmocka_run_group_tests_name("secrets", tests, NULL, NULL);
}
