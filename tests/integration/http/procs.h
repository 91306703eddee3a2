/* Helpers for the HTTP adapter's integration tests: child processes
 * (testhttpd, openssl) and a tiny keep-alive client for testhttpd's /stats.
 * Everything talks to 127.0.0.1 only. Include after cmocka.h. */
#ifndef RESIL_TEST_HTTP_PROCS_H
#define RESIL_TEST_HTTP_PROCS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static inline double t_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static inline void t_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

typedef struct child {
  pid_t pid;
  int out_fd; /* its stdout, or -1 */
} child;

/* Spawn argv with stdout on a pipe (if want_out) and stdin from /dev/null.
 * quiet sends stderr to /dev/null too. */
static inline int child_spawn(child *c, const char *const argv[], bool want_out, bool quiet) {
  int pfd[2] = {-1, -1};
  if (want_out && pipe2(pfd, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (want_out)
    posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
  else
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  if (quiet) posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  int rc = posix_spawnp(&c->pid, argv[0], &fa, NULL, (char *const *)(uintptr_t)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (want_out) close(pfd[1]);
  c->out_fd = want_out ? pfd[0] : -1;
  if (rc != 0) {
    if (want_out) close(pfd[0]);
    c->pid = 0;
    return -1;
  }
  return 0;
}

/* Read c's stdout until a line starting with prefix appears (within
 * timeout_ms); copy that line (no newline) into line. */
static inline bool child_wait_line(child *c, const char *prefix, char *line, size_t size,
                                   int timeout_ms) {
  double t0 = t_now_ms();
  size_t len = 0;
  for (;;) {
    int left = (int)(timeout_ms - (t_now_ms() - t0));
    struct pollfd pf = {.fd = c->out_fd, .events = POLLIN};
    if (left <= 0 || poll(&pf, 1, left) <= 0) return false;
    char ch;
    if (read(c->out_fd, &ch, 1) != 1) return false;
    if (ch == '\n') {
      line[len] = '\0';
      if (strncmp(line, prefix, strlen(prefix)) == 0) return true;
      len = 0;
    } else if (len < size - 1) {
      line[len++] = ch;
    }
  }
}

/* SIGTERM, then SIGKILL after 5 s; reap. */
static inline void child_stop(child *c) {
  if (c->pid <= 0) return;
  kill(c->pid, SIGTERM);
  double t0 = t_now_ms();
  int st;
  while (waitpid(c->pid, &st, WNOHANG) == 0) {
    if (t_now_ms() - t0 > 5000) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &st, 0);
      break;
    }
    t_sleep_ms(5);
  }
  if (c->out_fd >= 0) close(c->out_fd);
  c->pid = 0;
  c->out_fd = -1;
}

/* Run argv to completion (quietly); its exit status, or -1. */
static inline int run_quiet(const char *const argv[]) {
  child c;
  if (child_spawn(&c, argv, false, true) != 0) return -1;
  int st;
  if (waitpid(c.pid, &st, 0) != c.pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Start testhttpd on an ephemeral port; the port, or 0. */
static inline uint16_t testhttpd_start(child *c, const char *path) {
  const char *argv[] = {path, "--port", "0", NULL};
  if (child_spawn(c, argv, true, false) != 0) return 0;
  char line[64];
  unsigned port = 0;
  if (!child_wait_line(c, "PORT=", line, sizeof line, 10000) ||
      sscanf(line, "PORT=%u", &port) != 1 || port == 0 || port > 65535) {
    child_stop(c);
    return 0;
  }
  return (uint16_t)port;
}

static inline int tcp_dial(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* A loopback port that is bound but not listening: connects to it are
 * refused. Keep the returned fd open while the port must stay refused. */
static inline int refused_port(uint16_t *port) {
  *port = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

/* A port that was free a moment ago (for servers that take a fixed port). */
static inline uint16_t free_port(void) {
  uint16_t port = 0;
  int fd = refused_port(&port);
  if (fd >= 0) close(fd);
  return port;
}

typedef struct hstats {
  long accepted, requests, open, max_open;
} hstats;

/* One request on a keep-alive connection to testhttpd's /stats. */
static inline bool stats_call(int fd, bool reset, hstats *out) {
  char req[160];
  int n = snprintf(req, sizeof req,
                   "%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
                   reset ? "POST /stats/reset" : "GET /stats");
  if (write(fd, req, (size_t)n) != n) return false;
  char buf[2048];
  size_t len = 0;
  char *body = NULL;
  long clen = -1;
  for (;;) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, 5000) <= 0) return false;
    ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
    if (r <= 0) return false;
    len += (size_t)r;
    buf[len] = '\0';
    if (!body) {
      char *e = strstr(buf, "\r\n\r\n");
      if (e) {
        body = e + 4;
        char *cl = strcasestr(buf, "Content-Length:");
        if (!cl || cl > e) return false;
        clen = strtol(cl + 15, NULL, 10);
      }
    }
    if (body && (long)(len - (size_t)(body - buf)) >= clen) break;
    if (len >= sizeof buf - 1) return false;
  }
  const char *k;
  if (!(k = strstr(body, "\"accepted\":"))) return false;
  out->accepted = strtol(k + 11, NULL, 10);
  if (!(k = strstr(body, "\"requests\":"))) return false;
  out->requests = strtol(k + 11, NULL, 10);
  if (!(k = strstr(body, "\"open\":"))) return false;
  out->open = strtol(k + 7, NULL, 10);
  if (!(k = strstr(body, "\"max_open\":"))) return false;
  out->max_open = strtol(k + 11, NULL, 10);
  return true;
}

/* For a test program that runs against one testhttpd for the whole group:
 * defines httpd, port, base ("http://127.0.0.1:<port>") and group_setup /
 * group_teardown, which start it from RESIL_TESTHTTPD (set by meson) and
 * stop it. */
#define TESTHTTPD_GROUP                                                      \
  static child httpd;                                                        \
  static uint16_t port;                                                      \
  static char base[64];                                                      \
  static int group_setup(void **state) {                                     \
    (void)state;                                                             \
    const char *path = test_env("RESIL_TESTHTTPD");                          \
    if (!path) {                                                             \
      fprintf(stderr, "RESIL_TESTHTTPD is not set (meson sets it)\n");       \
      return -1;                                                             \
    }                                                                        \
    port = testhttpd_start(&httpd, path);                                    \
    if (!port) {                                                             \
      fprintf(stderr, "could not start %s\n", path);                         \
      return -1;                                                             \
    }                                                                        \
    snprintf(base, sizeof base, "http://127.0.0.1:%u", port);                \
    return 0;                                                                \
  }                                                                          \
  static int group_teardown(void **state) {                                  \
    (void)state;                                                             \
    child_stop(&httpd);                                                      \
    return 0;                                                                \
  }

#endif
