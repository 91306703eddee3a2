/* The test servers that scripts/test.sh starts are up, on 127.0.0.1, and
 * speak their protocols; the restart scripts the fault tests rely on bring a
 * killed or stopped server back on the same port.
 *
 * Needs the RESIL_TEST_* variables (scripts/lib/servers.sh). Without them a
 * test fails under CI (the harness is broken) and skips elsewhere. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define IO_TIMEOUT_MS 5000

/* TCP connection to 127.0.0.1:port with connect and I/O timeouts, or -1. */
static int connect_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* only ever 127.0.0.1 */
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    if (errno != EINPROGRESS) goto fail;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    if (poll(&p, 1, IO_TIMEOUT_MS) != 1) { errno = ETIMEDOUT; goto fail; }
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) goto fail;
    if (err) { errno = err; goto fail; }
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
fail: {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
}

static int must_connect(int port) {
  int fd = connect_loopback(port);
  if (fd < 0) fail_msg("connect to 127.0.0.1:%d: %s", port, strerror(errno));
  return fd;
}

static void send_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail_msg("send: %s", strerror(errno));
    p += w;
    n -= (size_t)w;
  }
}

/* One "\r\n"-terminated reply line (without the terminator). */
static void read_line(int fd, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = recv(fd, buf + n, 1, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) fail_msg("recv: %s", r == 0 ? "connection closed" : strerror(errno));
    n++;
    if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n') {
      buf[n - 2] = '\0';
      return;
    }
  }
  buf[n] = '\0';
  fail_msg("reply line too long: %s", buf);
}

static void redis_command(int fd, const char *cmd, char *reply, size_t cap) {
  send_all(fd, cmd, strlen(cmd));
  read_line(fd, reply, cap);
}

static void assert_redis_pongs(int port) {
  char reply[256];
  int fd = must_connect(port);
  redis_command(fd, "PING\r\n", reply, sizeof reply);
  assert_string_equal(reply, "+PONG");
  close(fd);
}

/* PostgreSQL's SSLRequest: every PostgreSQL server (and pgbouncer) answers
 * with one byte, 'S' or 'N'. Proves the listener speaks the protocol. */
static void assert_speaks_postgres(int port) {
  const unsigned char ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
  int fd = must_connect(port);
  send_all(fd, ssl_request, sizeof ssl_request);
  char c = 0;
  ssize_t r;
  do r = recv(fd, &c, 1, 0);
  while (r < 0 && errno == EINTR);
  if (r != 1) fail_msg("no answer to SSLRequest on port %d: %s", port,
                       r == 0 ? "connection closed" : strerror(errno));
  assert_true(c == 'N' || c == 'S');
  close(fd);
}

static long read_pid_file(const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", need_env("RESIL_TEST_TMPDIR"), name);
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("open %s: %s", path, strerror(errno));
  long pid = 0;
  int ok = fscanf(f, "%ld", &pid) == 1;
  fclose(f);
  if (!ok || pid <= 1) fail_msg("%s holds no pid", path);
  return pid;
}

/* Run a restart script; it must succeed and print nothing. */
static void run_restart(const char *var) {
  const char *script = need_env(var);
  char cmd[4200], out[4096];
  snprintf(cmd, sizeof cmd, "'%s' 2>&1", script);
  FILE *p = popen(cmd, "r");
  if (!p) fail_msg("popen %s: %s", script, strerror(errno));
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = '\0';
  int status = pclose(p);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail_msg("%s failed (status %d): %s", script, status, out);
  if (n != 0) fail_msg("%s printed output on success: %s", script, out);
}

/* Wait up to 5 s until nothing accepts on 127.0.0.1:port. */
static void wait_port_closed(int port) {
  for (int i = 0; i < 500; i++) {
    int fd = connect_loopback(port);
    if (fd < 0) return;
    close(fd);
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fail_msg("127.0.0.1:%d still accepts connections after its server was killed", port);
}

/* ------------------------------------------------------------------ tests */

static void redis_answers_ping_on_loopback(void **state) {
  (void)state;
  assert_redis_pongs(need_port("RESIL_TEST_REDIS_PORT"));
}

static void redis_with_password_refuses_until_auth(void **state) {
  (void)state;
  int port = need_port("RESIL_TEST_REDIS_AUTH_PORT");
  const char *password = need_env("RESIL_TEST_REDIS_PASSWORD");
  char cmd[512], reply[256];
  int fd = must_connect(port);
  redis_command(fd, "PING\r\n", reply, sizeof reply);
  assert_true(strncmp(reply, "-NOAUTH", 7) == 0);
  snprintf(cmd, sizeof cmd, "AUTH %s\r\n", password);
  redis_command(fd, cmd, reply, sizeof reply);
  assert_string_equal(reply, "+OK");
  redis_command(fd, "PING\r\n", reply, sizeof reply);
  assert_string_equal(reply, "+PONG");
  close(fd);
}

static void redis_allows_debug_sleep(void **state) {
  (void)state;
  char reply[256];
  int fd = must_connect(need_port("RESIL_TEST_REDIS_PORT"));
  redis_command(fd, "DEBUG SLEEP 0\r\n", reply, sizeof reply);
  assert_string_equal(reply, "+OK");
  close(fd);
}

static void postgres_speaks_protocol_on_loopback(void **state) {
  (void)state;
  assert_speaks_postgres(need_port("RESIL_TEST_PG_PORT"));
}

static void pgbouncer_speaks_protocol_on_loopback(void **state) {
  (void)state;
  assert_speaks_postgres(need_port("RESIL_TEST_PGBOUNCER_PORT"));
}

static void conninfo_points_at_loopback(void **state) {
  (void)state;
  assert_non_null(strstr(need_env("RESIL_TEST_PG_CONNINFO"), "host=127.0.0.1 "));
  assert_non_null(strstr(need_env("RESIL_TEST_PGBOUNCER_CONNINFO"), "host=127.0.0.1 "));
}

static void redis_restart_script_revives_a_killed_server(void **state) {
  (void)state;
  int port = need_port("RESIL_TEST_REDIS_PORT");
  long old = read_pid_file("redis.pid");
  assert_int_equal(kill((pid_t)old, SIGKILL), 0);
  wait_port_closed(port);
  run_restart("RESIL_TEST_REDIS_RESTART");
  long now = read_pid_file("redis.pid");
  assert_true(now != old);
  assert_int_equal(kill((pid_t)now, 0), 0);
  assert_redis_pongs(port);
}

static void pg_restart_script_revives_a_stopped_postmaster(void **state) {
  (void)state;
  int port = need_port("RESIL_TEST_PG_PORT");
  long old = read_pid_file("pg.pid");
  assert_int_equal(kill((pid_t)old, SIGSTOP), 0);
  run_restart("RESIL_TEST_PG_RESTART");
  long now = read_pid_file("pg.pid");
  assert_true(now != old);
  assert_int_equal(kill((pid_t)now, 0), 0);
  assert_speaks_postgres(port);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(redis_answers_ping_on_loopback),
      cmocka_unit_test(redis_with_password_refuses_until_auth),
      cmocka_unit_test(redis_allows_debug_sleep),
      cmocka_unit_test(postgres_speaks_protocol_on_loopback),
      cmocka_unit_test(pgbouncer_speaks_protocol_on_loopback),
      cmocka_unit_test(conninfo_points_at_loopback),
      cmocka_unit_test(redis_restart_script_revives_a_killed_server),
      cmocka_unit_test(pg_restart_script_revives_a_stopped_postmaster),
  };
  return cmocka_run_group_tests_name("servers_smoke", tests, NULL, NULL);
}
