/* Shared helpers for resil's cmocka tests. Include after cmocka.h. */
#ifndef RESIL_TESTUTIL_H
#define RESIL_TESTUTIL_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <spawn.h>
#include <sys/wait.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* Number of open file descriptors of this process (counts /proc/self/fd). */
static inline int count_open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the DIR's own fd */
}

/* Environment variable or NULL if unset/empty. */
static inline const char *test_env(const char *name) {
  const char *v = getenv(name);
  return (v && *v) ? v : NULL;
}

/* CLOCK_MONOTONIC in milliseconds and microseconds (the real clock, never
 * resil's fake one), and a sleep that resumes after signals. */
static inline uint64_t test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t test_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static inline void test_sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Whether CI is set (and not "0"/"false"): then a missing test server is a
 * broken harness, not a reason to skip. */
static inline int test_ci_mode(void) {
  const char *ci = test_env("CI");
  return ci && strcmp(ci, "0") != 0 && strcmp(ci, "false") != 0;
}

/* The variable's value; if it is missing: fail under CI (scripts/test.sh
 * should have set it), else skip the test (a developer ran `meson test` by
 * hand without the servers). Needs cmocka.h. */
static inline const char *need_env(const char *name) {
  const char *v = test_env(name);
  if (v) return v;
  if (test_ci_mode())
    fail_msg("%s is not set: integration tests must run under scripts/test.sh, "
             "which starts the test servers and sets RESIL_TEST_*", name);
  skip();
  return ""; /* not reached: skip() jumps out of the test */
}

/* need_env() of a TCP port, checked to be 1..65535. */
static inline uint16_t need_port(const char *name) {
  const char *v = need_env(name);
  char *end = NULL;
  long port = strtol(v, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535) fail_msg("%s=%s is not a port", name, v);
  return (uint16_t)port;
}

/* A loopback listener that never answers a SYN: its accept queue (backlog
 * 0) is filled by two connects that are never accepted, so the kernel drops
 * further SYNs and a connect hangs in SYN_SENT until the client gives up,
 * as against a blackholed address. fds[3] receives the listener and the
 * fillers (close them with unanswered_close). Returns the port, 0 on error. */
static inline uint16_t unanswered_listener(int fds[3]) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  fds[1] = fds[2] = -1;
  if (fds[0] < 0 || bind(fds[0], (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fds[0], (struct sockaddr *)&a, &len) != 0 || listen(fds[0], 0) != 0)
    return 0;
  for (int i = 1; i < 3; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    connect(fds[i], (struct sockaddr *)&a, sizeof a); /* EINPROGRESS or queued */
  }
  struct timespec ts = {0, 50 * 1000000L};
  nanosleep(&ts, NULL);
  return ntohs(a.sin_port);
}

static inline void unanswered_close(int fds[3]) {
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0) close(fds[i]);
}


/* ---- Timing rules (README, "Timing in tests") ----------------------------
 * Wait for conditions, never for time: a test that needs something to have
 * happened polls for it (TEST_WAIT_UNTIL) with a generous bound instead of
 * sleeping a fixed time. Lower bounds are the exact promise ("a timeout
 * waited its 300 ms"). Upper bounds are promise + test_slack_ms(promise):
 * max(100 ms, promise / 4), times the build's multiplier. */

/* 3 under ASan/TSan (RESIL_TEST_BUILD=asan|tsan, as scripts/test.sh sets it,
 * or a sanitizer compiled in when run by hand), else 1. */
static inline unsigned test_build_mult(void) {
  const char *b = test_env("RESIL_TEST_BUILD");
  if (b) return (strcmp(b, "asan") == 0 || strcmp(b, "tsan") == 0) ? 3u : 1u;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return 3u;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return 3u;
#endif
#endif
  return 1u;
}

/* Slack added to an upper bound of promise_ms: scheduler noise on a loaded
 * 2-core machine, several-fold under the sanitizers. */
static inline unsigned test_slack_ms(unsigned promise_ms) {
  unsigned s = promise_ms / 4 > 100u ? promise_ms / 4 : 100u;
  return s * test_build_mult();
}

/* The machine's own lateness over a window: a thread that sleeps 2 ms at a
 * time and records by how much it woke late. A call that is late by as much
 * as the scheduler (or the hypervisor) made every thread late is the
 * machine's delay, not the library's: a deadline check may allow it on top
 * of its slack, and still fails when the library alone is late. Usage:
 *   test_sched_watch w; test_sched_watch_start(&w);
 *   ... the timed call ...
 *   unsigned late_ms = test_sched_watch_stop(&w);  // worst oversleep, ms */
typedef struct test_sched_watch {
  pthread_t thread;
  bool running;
  _Atomic bool stop;
  _Atomic int64_t max_late_ns;
} test_sched_watch;

static inline void *test__sched_watch_main(void *arg) {
  test_sched_watch *w = arg;
  while (!atomic_load(&w->stop)) {
    uint64_t t0 = test_now_us();
    test_sleep_ms(2);
    int64_t late = (int64_t)(test_now_us() - t0) * 1000 - 2000000;
    int64_t cur = atomic_load(&w->max_late_ns);
    while (late > cur && !atomic_compare_exchange_weak(&w->max_late_ns, &cur, late)) {
    }
  }
  return NULL;
}

static inline void test_sched_watch_start(test_sched_watch *w) {
  atomic_init(&w->stop, false);
  atomic_init(&w->max_late_ns, 0);
  w->running = pthread_create(&w->thread, NULL, test__sched_watch_main, w) == 0;
}

/* Stop the watch; the worst lateness it saw, in ms (0 if it never ran). */
static inline unsigned test_sched_watch_stop(test_sched_watch *w) {
  if (!w->running) return 0;
  atomic_store(&w->stop, true);
  pthread_join(w->thread, NULL);
  w->running = false;
  int64_t ns = atomic_load(&w->max_late_ns);
  return ns > 0 ? (unsigned)(ns / 1000000) : 0;
}

/* promise_ms + test_slack_ms(promise_ms). */
static inline unsigned test_upper_ms(unsigned promise_ms) {
  return promise_ms + test_slack_ms(promise_ms);
}

/* Poll cond (an expression) every 2 ms for up to ms (times the build's
 * multiplier); evaluates to whether it became true. For waits on something
 * that happens "soon" (a thread reached a point, a peer was accepted, a
 * server freed a slot): pass a generous bound, it costs nothing when the
 * condition comes quickly. */
#define TEST_WAIT_UNTIL(cond, ms)                                                   \
  __extension__({                                                                  \
    uint64_t until_ = test_now_ms() + (uint64_t)(ms) * test_build_mult();          \
    int ok_;                                                                       \
    while (!(ok_ = !!(cond)) && test_now_ms() < until_) test_sleep_ms(2);          \
    ok_ || !!(cond);                                                               \
  })

/* A "Key:   123 kB" line of /proc/self/status (VmRSS, VmHWM...), in KiB;
 * -1 if absent. */
static inline long test_status_kb(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t kl = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
      v = strtol(line + kl + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

/* Reset the process's peak RSS (VmHWM) to its current RSS (Linux
 * /proc/self/clear_refs "5"); returns that RSS in KiB, -1 if not possible.
 * test_status_kb("VmHWM") minus it is then the growth of the peak. */
static inline long test_peak_rss_reset(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (!f) return -1;
  int ok = fputs("5", f) >= 0;
  if (fclose(f) != 0) ok = 0;
  return ok ? test_status_kb("VmRSS") : -1;
}

/* `meson test` sets MALLOC_PERTURB_, which makes glibc fill every block it
 * hands out: that touches (makes resident) memory a program reserves but
 * never uses, e.g. libpq's input buffer sized for an announced message.
 * Turn it off while measuring peak RSS; returns the setting to restore. */
static inline int test_malloc_perturb_off(void) {
  const char *v = getenv("MALLOC_PERTURB_");
  mallopt(M_PERTURB, 0);
  return v ? atoi(v) : 0;
}

static inline void test_malloc_perturb_restore(int v) { mallopt(M_PERTURB, v); }

/* Run the program at path (argv {path, NULL}) with the environment env and
 * stdin from /dev/null; *out is what it wrote on stderr, and on stdout too
 * if with_stdout (else stdout goes to /dev/null): up to 32 KiB, in a static
 * buffer valid until the next call. Fails the test if it cannot start or
 * has not finished within 10 s (it is killed). Returns its exit status, or
 * 128 + the signal that ended it. Needs cmocka.h. */
static inline int test_run_capture(const char *path, char **env, int with_stdout,
                                   const char **out) {
  static char text[32768];
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (with_stdout)
    posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
  else
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  char *argv[] = {(char *)path, NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, path, &fa, NULL, argv, env);
  posix_spawn_file_actions_destroy(&fa);
  close(pfd[1]);
  if (rc != 0) fail_msg("posix_spawn %s: %s", path, strerror(rc));
  size_t got = 0;
  uint64_t end = test_now_ms() + 10000;
  for (;;) {
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    int left = (int)(end > test_now_ms() ? end - test_now_ms() : 0);
    if (poll(&p, 1, left) <= 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      fail_msg("%s did not finish within 10 s", path);
    }
    ssize_t r = read(pfd[0], text + got, sizeof text - 1 - got);
    if (r <= 0 || (got += (size_t)r) == sizeof text - 1) break;
  }
  text[got] = 0;
  close(pfd[0]);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Whether this is a sanitizer build (RESIL_TEST_BUILD=asan|tsan). */
static inline int test_sanitized(void) {
  const char *b = test_env("RESIL_TEST_BUILD");
  return b && strcmp(b, "plain") != 0;
}

#endif
