/* The HTTP adapter's errors name the phase the attempt failed in (http.h,
 * README "Adapters": dns, connect, tls, send, receive). test_http covers
 * connect, tls and receive; this program covers the other two:
 *
 * dns: a host name whose first label is 70 bytes long. A DNS label holds at
 *   most 63 bytes, so glibc's resolver cannot even build a query and fails
 *   (EAI_NONAME) without sending anything: no traffic leaves the machine
 *   (checked with strace: no socket but nscd's unix socket is touched). Both
 *   resolvers: curl's own (threaded) and resil_resolve() (resolve_with_resil).
 * send: a server on 127.0.0.1 (a thread of this test) that accepts, reads
 *   part of a 32 MiB request body and resets the connection; and one that
 *   never reads the body, so the upload stalls until the request timeout.
 * Each: the documented status, resp.phase, and the phase's name in the
 * message ("http 'NAME': POST http://...: send: ... (curl N)"), counted by
 * the dependency as a failure or a timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "resil/http.h"
#include "testutil.h"

#define LONG_LABEL                                                              \
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" /* 70 */
#define BODY_BYTES (32u << 20)

static void assert_msg_has(const char *msg, const char *part) {
  if (!strstr(msg, part)) fail_msg("message lacks \"%s\": %s", part, msg);
}

static void dns_failure(bool with_resil) {
  const char *name = with_resil ? "phase-dns-resil" : "phase-dns-curl";
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = "http://" LONG_LABEL ".invalid:8080";
  cfg.resolve_with_resil = with_resil;
  cfg.connect_timeout_ms = 2000;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  resil_http_response resp;
  uint64_t t0 = test_now_ms();
  resil_status st = resil_http_get(h, resil_deadline_in_ms(3000), "/x", &resp, &err);
  uint64_t took = test_now_ms() - t0;
  if (st != RESIL_E_FAILURE || resp.phase != RESIL_HTTP_PHASE_DNS)
    fail_msg("status %s, phase %s: %s", resil_status_name(st), resil_http_phase_name(resp.phase),
             err.msg);
  assert_int_equal(resp.status, 0);
  assert_null(resp.body);
  assert_msg_has(err.msg, name);
  assert_msg_has(err.msg, "GET http://" LONG_LABEL ".invalid:8080/x: dns: ");
  if (took > 1500) fail_msg("a name that cannot resolve took %llu ms", (unsigned long long)took);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_FAILURE], resp.attempts);
  resil_http_response_free(&resp);
  resil_http_free(h);
}

static void dns_phase_with_curls_resolver(void **state) {
  (void)state;
  dns_failure(false);
}

static void dns_phase_with_resils_resolver(void **state) {
  (void)state;
  dns_failure(true);
}

/* ---- a server that misbehaves while the request body is sent ---------- */

typedef struct bad_server {
  int lfd;
  uint16_t port;
  bool reset; /* true: read some of the body, then RST; false: never read */
  pthread_t th;
  atomic_size_t got;
  atomic_int accepted;
  int stop_pipe[2];
} bad_server;

static void *bad_server_run(void *arg) {
  bad_server *s = arg;
  int fd = accept(s->lfd, NULL, NULL);
  if (fd < 0) return NULL;
  atomic_fetch_add(&s->accepted, 1);
  if (s->reset) {
    char buf[16384];
    size_t got = 0;
    while (got < 256 * 1024) { /* the headers and the body's first bytes */
      ssize_t r = read(fd, buf, sizeof buf);
      if (r <= 0) break;
      got += (size_t)r;
    }
    atomic_store(&s->got, got);
    struct linger lg = {.l_onoff = 1, .l_linger = 0}; /* close sends RST */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
  } else {
    char b;
    ssize_t r = read(s->stop_pipe[0], &b, 1); /* hold the connection, read nothing */
    (void)r;
    close(fd);
  }
  return NULL;
}

static void bad_server_start(bad_server *s, bool reset) {
  memset(s, 0, sizeof *s);
  s->reset = reset;
  assert_int_equal(pipe(s->stop_pipe), 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(s->lfd >= 0);
  /* Small buffers, so the 32 MiB body cannot sit in the kernel. */
  int small = 64 * 1024;
  setsockopt(s->lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &len), 0);
  assert_int_equal(listen(s->lfd, 4), 0);
  s->port = ntohs(a.sin_port);
  assert_int_equal(pthread_create(&s->th, NULL, bad_server_run, s), 0);
}

static void bad_server_stop(bad_server *s) {
  ssize_t w = write(s->stop_pipe[1], "x", 1);
  (void)w;
  shutdown(s->lfd, SHUT_RDWR); /* wakes accept() if nobody came */
  pthread_join(s->th, NULL);
  close(s->lfd);
  close(s->stop_pipe[0]);
  close(s->stop_pipe[1]);
}

static resil_status post_big(uint16_t port, const char *name, uint32_t request_timeout_ms,
                             resil_http_response *resp, resil_err *err, resil_http **out) {
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)port);
  resil_http_config cfg;
  resil_http_config_init(&cfg, name);
  cfg.base_url = url;
  cfg.request_timeout_ms = request_timeout_ms;
  cfg.dep.timeout_ms = request_timeout_ms;
  resil_http *h = resil_http_new(&cfg, err);
  if (!h) fail_msg("resil_http_new: %s", err->msg);
  char *body = malloc(BODY_BYTES);
  assert_non_null(body);
  memset(body, 'b', BODY_BYTES);
  resil_http_request req = {.method = "POST", .path = "/upload", .body = body,
                            .body_len = BODY_BYTES, .flags = RESIL_HTTP_NO_RETRY};
  resil_status st = resil_http_request_do(h, resil_deadline_in_ms(request_timeout_ms + 1000),
                                          &req, resp, err);
  free(body);
  *out = h;
  return st;
}

static void send_phase_when_the_server_resets_mid_body(void **state) {
  (void)state;
  int fds_before = count_open_fds();
  bad_server s;
  bad_server_start(&s, true);
  resil_http_response resp;
  resil_err err = {0};
  resil_http *h;
  resil_status st = post_big(s.port, "phase-send-reset", 5000, &resp, &err, &h);
  bad_server_stop(&s);
  assert_int_equal(atomic_load(&s.accepted), 1);
  if (st != RESIL_E_FAILURE || resp.phase != RESIL_HTTP_PHASE_SEND)
    fail_msg("status %s, phase %s, curl %d: %s", resil_status_name(st),
             resil_http_phase_name(resp.phase), resp.curl_code, err.msg);
  assert_int_equal(resp.status, 0);
  char where[96];
  snprintf(where, sizeof where, "POST http://127.0.0.1:%u/upload: send: ", (unsigned)s.port);
  assert_msg_has(err.msg, where);
  assert_msg_has(err.msg, "phase-send-reset");
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_FAILURE], 1);
  resil_http_response_free(&resp);
  resil_http_free(h);
  assert_int_equal(count_open_fds(), fds_before);
}

static void send_phase_when_the_server_stops_reading_the_body(void **state) {
  (void)state;
  int fds_before = count_open_fds();
  bad_server s;
  bad_server_start(&s, false);
  resil_http_response resp;
  resil_err err = {0};
  resil_http *h;
  uint64_t t0 = test_now_ms();
  resil_status st = post_big(s.port, "phase-send-stall", 400, &resp, &err, &h);
  uint64_t took = test_now_ms() - t0;
  bad_server_stop(&s);
  if (st != RESIL_E_TIMEOUT || resp.phase != RESIL_HTTP_PHASE_SEND)
    fail_msg("status %s, phase %s, curl %d: %s", resil_status_name(st),
             resil_http_phase_name(resp.phase), resp.curl_code, err.msg);
  assert_int_equal(resp.curl_code, 28); /* CURLE_OPERATION_TIMEDOUT */
  char where[96];
  snprintf(where, sizeof where, "POST http://127.0.0.1:%u/upload: send: ", (unsigned)s.port);
  assert_msg_has(err.msg, where);
  /* took includes making the client and the loopback server's accept: on a
   * loaded 2-core machine that alone has taken 180 ms */
  uint64_t slack = 250u * test_build_mult();
  if (took > 400 + slack)
    fail_msg("the stalled upload ended after %llu ms, past its 400 ms timeout + %llu ms",
             (unsigned long long)took, (unsigned long long)slack);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_http_dep(h), &ds);
  assert_int_equal(ds.calls[RESIL_OUTCOME_TIMEOUT], 1);
  resil_http_response_free(&resp);
  resil_http_free(h);
  assert_int_equal(count_open_fds(), fds_before);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(dns_phase_with_curls_resolver),
      cmocka_unit_test(dns_phase_with_resils_resolver),
      cmocka_unit_test(send_phase_when_the_server_resets_mid_body),
      cmocka_unit_test(send_phase_when_the_server_stops_reading_the_body),
  };
  return cmocka_run_group_tests_name("http_phases", tests, NULL, NULL);
}
