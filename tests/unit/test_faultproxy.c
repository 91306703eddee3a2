/* The fault-injecting TCP proxy used by the fault tests, checked against an echo server on
 * loopback. Timing assertions have a hard lower bound and a generous upper bound so the
 * tests hold on a loaded 2-core machine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "faultproxy.h"
#include "testutil.h"

/* ------------------------------------------------------------------ echo server */

#define ECHO_MAX 64

typedef struct echo_server {
  int lfd;
  int stop_pipe[2];
  uint16_t port;
  pthread_t acceptor;
  pthread_mutex_t mu;
  int fds[ECHO_MAX];
  pthread_t threads[ECHO_MAX];
  int n;
} echo_server;

typedef struct echo_conn_arg {
  int fd;
} echo_conn_arg;

static void *echo_conn_main(void *arg) {
  int fd = ((echo_conn_arg *)arg)->fd;
  free(arg);
  static _Thread_local unsigned char buf[65536];
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    size_t off = 0;
    while (off < (size_t)r) {
      ssize_t w = send(fd, buf + off, (size_t)r - off, MSG_NOSIGNAL);
      if (w <= 0) goto out;
      off += (size_t)w;
    }
  }
out:
  shutdown(fd, SHUT_WR); /* FIN; the fd is closed by echo_stop() */
  return NULL;
}

static void *echo_accept_main(void *arg) {
  echo_server *es = arg;
  for (;;) {
    struct pollfd pf[2] = {{.fd = es->lfd, .events = POLLIN}, {.fd = es->stop_pipe[0], .events = POLLIN}};
    if (poll(pf, 2, -1) < 0) continue;
    if (pf[1].revents) break;
    int fd = accept(es->lfd, NULL, NULL);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_mutex_lock(&es->mu);
    if (es->n == ECHO_MAX) {
      pthread_mutex_unlock(&es->mu);
      close(fd);
      continue;
    }
    echo_conn_arg *a = malloc(sizeof *a);
    a->fd = fd;
    es->fds[es->n] = fd;
    if (pthread_create(&es->threads[es->n], NULL, echo_conn_main, a) == 0) es->n++;
    else {
      free(a);
      close(fd);
    }
    pthread_mutex_unlock(&es->mu);
  }
  return NULL;
}

static int listen_loopback(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t sl = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static echo_server *echo_start(void) {
  echo_server *es = calloc(1, sizeof *es);
  assert_non_null(es);
  es->lfd = listen_loopback(&es->port);
  assert_int_equal(listen(es->lfd, 128), 0);
  assert_int_equal(pipe(es->stop_pipe), 0);
  pthread_mutex_init(&es->mu, NULL);
  assert_int_equal(pthread_create(&es->acceptor, NULL, echo_accept_main, es), 0);
  return es;
}

static void echo_stop(echo_server *es) {
  assert_int_equal(write(es->stop_pipe[1], "x", 1), 1);
  pthread_join(es->acceptor, NULL);
  for (int i = 0; i < es->n; i++) shutdown(es->fds[i], SHUT_RDWR);
  for (int i = 0; i < es->n; i++) {
    pthread_join(es->threads[i], NULL);
    close(es->fds[i]);
  }
  close(es->lfd);
  close(es->stop_pipe[0]);
  close(es->stop_pipe[1]);
  pthread_mutex_destroy(&es->mu);
  free(es);
}

/* ------------------------------------------------------------------ client helpers */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int try_connect(uint16_t port, int *err) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    *err = errno;
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  *err = 0;
  return fd;
}

static int connect_to(uint16_t port) {
  int err = 0;
  int fd = try_connect(port, &err);
  if (fd < 0) fail_msg("connect to %u: %s", port, strerror(err));
  return fd;
}

static void send_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    assert_true(w > 0);
    p += w;
    n -= (size_t)w;
  }
}

/* Read until n bytes, EOF, an error or timeout_ms of silence. Returns bytes read; *end is
 * 0 when n bytes arrived, -1 on timeout, 1 on EOF, or the errno of a failed recv. */
static size_t read_some(int fd, void *buf, size_t n, int timeout_ms, int *end) {
  size_t got = 0;
  *end = 0;
  while (got < n) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int pr = poll(&pf, 1, timeout_ms);
    if (pr == 0) {
      *end = -1;
      return got;
    }
    ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
    if (r == 0) {
      *end = 1;
      return got;
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      *end = errno;
      return got;
    }
    got += (size_t)r;
  }
  return got;
}

static void fill_pattern(unsigned char *b, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 31u + seed) & 0xff);
}

/* Send msg, read the echo back, check it. Returns the round trip in ms. */
static double echo_roundtrip(int fd, const char *msg) {
  size_t n = strlen(msg);
  char buf[256];
  assert_true(n < sizeof buf);
  double t0 = now_ms();
  send_all(fd, msg, n);
  int end;
  size_t got = read_some(fd, buf, n, 10000, &end);
  double dt = now_ms() - t0;
  assert_int_equal(end, 0);
  assert_int_equal(got, n);
  assert_memory_equal(buf, msg, n);
  return dt;
}

/* ------------------------------------------------------------------ fixture */

typedef struct fx {
  echo_server *es;
  fp_proxy *fp;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  f->es = echo_start();
  f->fp = fp_start("127.0.0.1", f->es->port);
  assert_non_null(f->fp);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  fp_stop(f->fp);
  echo_stop(f->es);
  free(f);
  return 0;
}

/* ------------------------------------------------------------------ tests */

static void start_refuses_non_loopback_upstream(void **state) {
  (void)state;
  errno = 0;
  assert_null(fp_start("192.0.2.1", 80));
  assert_int_equal(errno, EPERM);
  assert_null(fp_start("2001:db8::1", 80));
  assert_int_equal(errno, EPERM);
  assert_null(fp_start("example.com", 80));
  assert_int_equal(errno, EINVAL);
  assert_null(fp_start("127.0.0.1", 0));
  assert_int_equal(errno, EINVAL);
  assert_null(fp_start(NULL, 80));
}

static void start_accepts_loopback_forms(void **state) {
  (void)state;
  const char *hosts[] = {"127.0.0.1", "127.1.2.3", "::1", "localhost"};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
    fp_proxy *p = fp_start(hosts[i], 9);
    assert_non_null(p);
    assert_true(fp_port(p) != 0);
    assert_int_equal(fp_get_mode(p, NULL), FP_PASS);
    fp_stop(p);
  }
  fp_stop(NULL);
}

static void pass_echoes_bytes_unchanged(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "hello through the proxy");
  close(fd);
}

static void pass_carries_a_megabyte_both_ways(void **state) {
  fx *f = *state;
  const size_t N = 1 << 20;
  unsigned char *out = malloc(N), *in = malloc(N);
  fill_pattern(out, N, 7);
  int fd = connect_to(fp_port(f->fp));
  size_t sent = 0, got = 0;
  double t0 = now_ms();
  while (got < N) {
    assert_true(now_ms() - t0 < 30000);
    struct pollfd pf = {.fd = fd, .events = (short)(POLLIN | (sent < N ? POLLOUT : 0))};
    assert_true(poll(&pf, 1, 10000) > 0);
    if ((pf.revents & POLLOUT) && sent < N) {
      ssize_t w = send(fd, out + sent, N - sent > 65536 ? 65536 : N - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0) sent += (size_t)w;
    }
    if (pf.revents & POLLIN) {
      ssize_t r = recv(fd, in + got, N - got, MSG_DONTWAIT);
      assert_true(r > 0 || (r < 0 && errno == EAGAIN));
      if (r > 0) got += (size_t)r;
    }
  }
  close(fd);
  int same = memcmp(in, out, N);
  free(out);
  free(in);
  assert_int_equal(same, 0);
  /* the proxy counts a write just after it, so the client can be a moment ahead */
  double t1 = now_ms();
  while (fp_bytes_to_client(f->fp) < N && now_ms() - t1 < 10000) usleep(1000);
  assert_true(fp_bytes_to_server(f->fp) >= N);
  assert_true(fp_bytes_to_client(f->fp) >= N);
}

static void pass_forwards_half_close_both_ways(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  send_all(fd, "bye", 3);
  shutdown(fd, SHUT_WR); /* echo server sees EOF, answers with FIN after the echo */
  char buf[8];
  int end;
  size_t got = read_some(fd, buf, sizeof buf, 10000, &end);
  assert_int_equal(got, 3);
  assert_int_equal(end, 1); /* EOF */
  close(fd);
  assert_true(fp_wait_active(f->fp, 0, 10000));
}

static void counters_track_accepted_and_active(void **state) {
  fx *f = *state;
  assert_int_equal(fp_accepted(f->fp), 0);
  assert_int_equal(fp_active(f->fp), 0);
  int a = connect_to(fp_port(f->fp));
  int b = connect_to(fp_port(f->fp));
  echo_roundtrip(a, "a");
  echo_roundtrip(b, "b");
  assert_int_equal(fp_accepted(f->fp), 2);
  assert_int_equal(fp_active(f->fp), 2);
  close(a);
  assert_true(fp_wait_active(f->fp, 1, 10000));
  close(b);
  assert_true(fp_wait_active(f->fp, 0, 10000));
  assert_int_equal(fp_accepted(f->fp), 2);
}

static void delay_holds_each_chunk_at_least_arg_ms(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "warm");
  fp_set_mode(f->fp, FP_DELAY, 150); /* applies to this already-open connection */
  uint64_t arg = 0;
  assert_int_equal(fp_get_mode(f->fp, &arg), FP_DELAY);
  assert_int_equal(arg, 150);
  double dt = echo_roundtrip(fd, "slow");
  /* both directions are delayed: at least 2 × 150 ms */
  assert_true(dt >= 300.0);
  assert_true(dt < 10000.0);
  fp_set_mode(f->fp, FP_PASS, 0);
  dt = echo_roundtrip(fd, "fast again");
  assert_true(dt < 5000.0); /* no delay added; the bound is loose on purpose */
  close(fd);
}

static void delay_does_not_serialize_connections(void **state) {
  fx *f = *state;
  enum { K = 8 };
  int fds[K];
  for (int i = 0; i < K; i++) {
    fds[i] = connect_to(fp_port(f->fp));
    echo_roundtrip(fds[i], "x");
  }
  fp_set_mode(f->fp, FP_DELAY, 150);
  double t0 = now_ms();
  for (int i = 0; i < K; i++) send_all(fds[i], "ping", 4);
  for (int i = 0; i < K; i++) {
    char buf[4];
    int end;
    assert_int_equal(read_some(fds[i], buf, 4, 10000, &end), 4);
  }
  double dt = now_ms() - t0;
  /* concurrent: ~300 ms in all; one connection after another would take ≥ 8 × 300 ms */
  assert_true(dt >= 300.0);
  assert_true(dt < 1800.0);
  for (int i = 0; i < K; i++) close(fds[i]);
}

static void blackhole_answers_nothing_and_keeps_the_connection(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "before");
  fp_set_mode(f->fp, FP_BLACKHOLE, 0);
  send_all(fd, "lost?", 5);
  struct pollfd pf = {.fd = fd, .events = POLLIN};
  assert_int_equal(poll(&pf, 1, 200), 0); /* no data, no EOF, no reset */
  assert_int_equal(fp_active(f->fp), 1);

  /* a new connection is accepted, and also never answered */
  int fd2 = connect_to(fp_port(f->fp));
  send_all(fd2, "hello", 5);
  pf.fd = fd2;
  assert_int_equal(poll(&pf, 1, 200), 0);
  assert_int_equal(fp_accepted(f->fp), 2);
  assert_int_equal(fp_active(f->fp), 2);

  /* the client hanging up is noticed */
  close(fd2);
  assert_true(fp_wait_active(f->fp, 1, 10000));

  /* back to pass: what was held is delivered, in order */
  fp_set_mode(f->fp, FP_PASS, 0);
  char buf[5];
  int end;
  assert_int_equal(read_some(fd, buf, 5, 10000, &end), 5);
  assert_memory_equal(buf, "lost?", 5);
  close(fd);
}

static void reset_after_n_delivers_exactly_n_then_econnreset(void **state) {
  fx *f = *state;
  fp_set_mode(f->fp, FP_RESET_AFTER, 10);
  int fd = connect_to(fp_port(f->fp));
  unsigned char msg[100], buf[100];
  fill_pattern(msg, sizeof msg, 1);
  send_all(fd, msg, sizeof msg);
  int end;
  size_t got = read_some(fd, buf, sizeof buf, 10000, &end);
  assert_int_equal(got, 10);
  assert_memory_equal(buf, msg, 10);
  assert_int_equal(end, ECONNRESET);
  close(fd);
  assert_true(fp_wait_active(f->fp, 0, 10000));
}

static void reset_after_counts_from_when_it_is_set_on_open_connections(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "0123456789"); /* 10 bytes before the mode: not counted */
  fp_set_mode(f->fp, FP_RESET_AFTER, 4);
  send_all(fd, "abcdefgh", 8);
  char buf[8];
  int end;
  size_t got = read_some(fd, buf, sizeof buf, 10000, &end);
  assert_int_equal(got, 4);
  assert_memory_equal(buf, "abcd", 4);
  assert_int_equal(end, ECONNRESET);
  close(fd);
}

static void reset_after_zero_resets_at_once(void **state) {
  fx *f = *state;
  fp_set_mode(f->fp, FP_RESET_AFTER, 0);
  int fd = connect_to(fp_port(f->fp));
  char buf[4];
  int end;
  assert_int_equal(read_some(fd, buf, sizeof buf, 10000, &end), 0);
  assert_int_equal(end, ECONNRESET);
  close(fd);
  assert_true(fp_wait_active(f->fp, 0, 10000));
}

static void close_mid_reply_sends_half_then_eof(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "whole");
  fp_set_mode(f->fp, FP_CLOSE_MID_REPLY, 0);
  unsigned char msg[100], buf[100];
  fill_pattern(msg, sizeof msg, 3);
  send_all(fd, msg, sizeof msg);
  int end;
  size_t got = read_some(fd, buf, sizeof buf, 10000, &end);
  assert_int_equal(end, 1); /* clean EOF, not a reset */
  assert_int_equal(got, 50);
  assert_memory_equal(buf, msg, got);
  close(fd);
  assert_true(fp_wait_active(f->fp, 0, 10000));
}

static void throttle_limits_server_to_client_rate(void **state) {
  fx *f = *state;
  int fd = connect_to(fp_port(f->fp));
  echo_roundtrip(fd, "warm");
  fp_set_mode(f->fp, FP_THROTTLE, 20 * 1024);
  enum { N = 10 * 1024 };
  static unsigned char msg[N], buf[N];
  fill_pattern(msg, N, 5);
  double t0 = now_ms();
  send_all(fd, msg, N);
  int end;
  size_t got = read_some(fd, buf, N, 10000, &end);
  double dt = now_ms() - t0;
  assert_int_equal(got, N);
  assert_memory_equal(buf, msg, N);
  assert_true(dt >= 350.0); /* ≈ 500 ms at 20 KiB/s */
  assert_true(dt < 5000.0);
  close(fd);
}

static void refuse_makes_connect_fail_and_keeps_open_connections(void **state) {
  fx *f = *state;
  uint16_t port = fp_port(f->fp);
  int old = connect_to(port);
  echo_roundtrip(old, "open before");
  fp_set_mode(f->fp, FP_REFUSE, 0);
  int err = 0;
  int fd = try_connect(port, &err);
  assert_int_equal(fd, -1);
  assert_int_equal(err, ECONNREFUSED);
  assert_int_equal(fp_accepted(f->fp), 1);
  echo_roundtrip(old, "still open"); /* existing connections are forwarded */

  /* leaving the mode listens again on the same port */
  fp_set_mode(f->fp, FP_PASS, 0);
  assert_int_equal(fp_port(f->fp), port);
  fd = connect_to(port);
  echo_roundtrip(fd, "welcome back");
  close(fd);
  close(old);
}

static void kill_all_resets_every_connection(void **state) {
  fx *f = *state;
  int a = connect_to(fp_port(f->fp));
  int b = connect_to(fp_port(f->fp));
  echo_roundtrip(a, "a");
  echo_roundtrip(b, "b");
  fp_kill_all(f->fp);
  assert_int_equal(fp_active(f->fp), 0);
  char buf[4];
  int end;
  assert_int_equal(read_some(a, buf, sizeof buf, 10000, &end), 0);
  assert_int_equal(end, ECONNRESET);
  assert_int_equal(read_some(b, buf, sizeof buf, 10000, &end), 0);
  assert_int_equal(end, ECONNRESET);
  close(a);
  close(b);
  /* the proxy still accepts */
  int c = connect_to(fp_port(f->fp));
  echo_roundtrip(c, "c");
  close(c);
}

static void upstream_connect_failure_closes_the_client(void **state) {
  (void)state;
  uint16_t dead_port;
  int holder = listen_loopback(&dead_port); /* bound, not listening: connects are refused */
  fp_proxy *p = fp_start("127.0.0.1", dead_port);
  assert_non_null(p);
  int fd = connect_to(fp_port(p));
  char buf[4];
  int end;
  assert_int_equal(read_some(fd, buf, sizeof buf, 10000, &end), 0);
  assert_int_equal(end, 1); /* EOF */
  assert_int_equal(fp_accepted(p), 1);
  assert_true(fp_wait_active(p, 0, 10000));
  close(fd);
  fp_stop(p);
  close(holder);
}

static void stop_with_open_connections_releases_every_fd(void **state) {
  (void)state;
  int fds_before = count_open_fds();
  echo_server *es = echo_start();
  fp_proxy *p = fp_start("127.0.0.1", es->port);
  assert_non_null(p);
  int a = connect_to(fp_port(p));
  int b = connect_to(fp_port(p));
  echo_roundtrip(a, "a");
  fp_set_mode(p, FP_DELAY, 10000);
  send_all(b, "queued", 6); /* a chunk held in the proxy when it stops */
  assert_true(fp_wait_active(p, 2, 10000));
  fp_stop(p);
  char buf[8];
  int end;
  assert_int_equal(read_some(a, buf, sizeof buf, 10000, &end), 0);
  assert_int_equal(end, 1); /* plain close: EOF */
  close(a);
  close(b);
  echo_stop(es);
  assert_int_equal(count_open_fds(), fds_before);
}

static void mode_switches_race_with_traffic(void **state) {
  fx *f = *state;
  enum { K = 4 };
  int fds[K];
  for (int i = 0; i < K; i++) fds[i] = connect_to(fp_port(f->fp));
  for (int round = 0; round < 40; round++) {
    fp_set_mode(f->fp, round % 2 ? FP_DELAY : FP_THROTTLE, round % 2 ? 1 : 1000000);
    for (int i = 0; i < K; i++) echo_roundtrip(fds[i], "r");
  }
  fp_set_mode(f->fp, FP_PASS, 0);
  for (int i = 0; i < K; i++) close(fds[i]);
  assert_true(fp_wait_active(f->fp, 0, 10000));
  assert_int_equal(fp_accepted(f->fp), K);
}

static void mode_names_are_stable(void **state) {
  (void)state;
  assert_string_equal(fp_mode_name(FP_PASS), "pass");
  assert_string_equal(fp_mode_name(FP_BLACKHOLE), "blackhole");
  assert_string_equal(fp_mode_name(FP_RESET_AFTER), "reset_after");
  assert_string_equal(fp_mode_name((fp_mode)99), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(start_refuses_non_loopback_upstream),
      cmocka_unit_test(start_accepts_loopback_forms),
      cmocka_unit_test(mode_names_are_stable),
      cmocka_unit_test_setup_teardown(pass_echoes_bytes_unchanged, setup, teardown),
      cmocka_unit_test_setup_teardown(pass_carries_a_megabyte_both_ways, setup, teardown),
      cmocka_unit_test_setup_teardown(pass_forwards_half_close_both_ways, setup, teardown),
      cmocka_unit_test_setup_teardown(counters_track_accepted_and_active, setup, teardown),
      cmocka_unit_test_setup_teardown(delay_holds_each_chunk_at_least_arg_ms, setup, teardown),
      cmocka_unit_test_setup_teardown(delay_does_not_serialize_connections, setup, teardown),
      cmocka_unit_test_setup_teardown(blackhole_answers_nothing_and_keeps_the_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(reset_after_n_delivers_exactly_n_then_econnreset, setup, teardown),
      cmocka_unit_test_setup_teardown(reset_after_counts_from_when_it_is_set_on_open_connections, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(reset_after_zero_resets_at_once, setup, teardown),
      cmocka_unit_test_setup_teardown(close_mid_reply_sends_half_then_eof, setup, teardown),
      cmocka_unit_test_setup_teardown(throttle_limits_server_to_client_rate, setup, teardown),
      cmocka_unit_test_setup_teardown(refuse_makes_connect_fail_and_keeps_open_connections, setup, teardown),
      cmocka_unit_test_setup_teardown(kill_all_resets_every_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(mode_switches_race_with_traffic, setup, teardown),
      cmocka_unit_test(upstream_connect_failure_closes_the_client),
      cmocka_unit_test(stop_with_open_connections_releases_every_fd),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
