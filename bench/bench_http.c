/* HTTP adapter benchmark: GET /fast through resil-http versus a raw libcurl
 * easy handle that reuses its connection, against the same testhttpd, in
 * the same run, interleaved in blocks of 50 requests. Prints median [min max] ns/op over the runs and
 * the overhead ratio (target <= 1.05). Never passes or fails.
 *
 *   bench_http [--iters N] [--runs R] [--no-deadline-header] [--summary]
 *              (--testhttpd PATH | --port P)
 *
 * With --testhttpd (or RESIL_TESTHTTPD) it starts the server on an ephemeral
 * port on 127.0.0.1 and stops it at the end; with --port it uses a server
 * already listening on 127.0.0.1:P. --no-deadline-header stops resil from
 * sending grpc-timeout (to see what the propagation costs: the raw client
 * sends no such header). --summary adds machine-readable lines (wall time,
 * then client CPU; ratio of medians) for scripts/bench.sh:
 *   SUMMARY <name> <resil_ns> <raw_ns> <ratio> <resil_min> <resil_max> <raw_min> <raw_max>
 */
#include <poll.h>
#include <stdbool.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "resil/http.h"

extern char **environ;

static long iters = 2000;
static int runs = 7;
static bool no_deadline_header = false;
static bool summary = false;

static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* This thread's CPU time spent in each client (user + kernel). */
static uint64_t raw_cpu, resil_cpu;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static pid_t server_pid;

static unsigned start_server(const char *path) {
  int pfd[2];
  if (pipe(pfd) != 0) return 0;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  const char *argv[] = {path, "--port", "0", NULL};
  int rc = posix_spawn(&server_pid, path, &fa, NULL, (char *const *)(uintptr_t)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pfd[1]);
  if (rc != 0) {
    close(pfd[0]);
    return 0;
  }
  char line[64];
  size_t len = 0;
  while (len < sizeof line - 1) {
    struct pollfd p = {.fd = pfd[0], .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0 || read(pfd[0], line + len, 1) != 1) break;
    if (line[len++] == '\n') break;
  }
  line[len] = '\0';
  close(pfd[0]);
  unsigned port = 0;
  if (sscanf(line, "PORT=%u", &port) != 1) port = 0;
  return port;
}

static void stop_server(void) {
  if (server_pid <= 0) return;
  kill(server_pid, SIGTERM);
  waitpid(server_pid, NULL, 0);
}

/* ---- raw libcurl: one easy handle, options set once, connection reused -- */

typedef struct sink {
  char *buf;
  size_t len, cap;
} sink;

static size_t sink_write(char *d, size_t s, size_t n, void *ud) {
  sink *k = ud;
  size_t len = s * n;
  if (k->len + len + 1 > k->cap) {
    size_t cap = k->cap ? k->cap * 2 : 256;
    while (cap < k->len + len + 1) cap *= 2;
    char *nb = realloc(k->buf, cap);
    if (!nb) return 0;
    k->buf = nb;
    k->cap = cap;
  }
  memcpy(k->buf + k->len, d, len);
  k->len += len;
  k->buf[k->len] = '\0';
  return len;
}

static double run_raw(CURL *e, sink *k, long n, long *errors) {
  uint64_t c0 = cpu_ns(), t0 = now_ns();
  for (long i = 0; i < n; i++) {
    k->len = 0;
    long code = 0;
    if (curl_easy_perform(e) != CURLE_OK ||
        (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code), code != 200))
      (*errors)++;
  }
  uint64_t t1 = now_ns();
  raw_cpu += cpu_ns() - c0;
  return (double)(t1 - t0) / (double)n;
}

static double run_resil(resil_http *h, long n, long *errors) {
  uint64_t c0 = cpu_ns(), t0 = now_ns();
  for (long i = 0; i < n; i++) {
    resil_http_response r;
    if (resil_http_get(h, resil_deadline_in_ms(1000), "/fast", &r, NULL) != RESIL_OK) (*errors)++;
    resil_http_response_free(&r);
  }
  uint64_t t1 = now_ns();
  resil_cpu += cpu_ns() - c0;
  return (double)(t1 - t0) / (double)n;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
  const char *server = getenv("RESIL_TESTHTTPD");
  unsigned port = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--iters") && i + 1 < argc)
      iters = atol(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
      runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--testhttpd") && i + 1 < argc)
      server = argv[++i];
    else if (!strcmp(argv[i], "--port") && i + 1 < argc)
      port = (unsigned)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-deadline-header"))
      no_deadline_header = true;
    else if (!strcmp(argv[i], "--summary"))
      summary = true;
    else {
      fprintf(stderr,
              "usage: %s [--iters N] [--runs R] [--no-deadline-header] [--summary] "
              "(--testhttpd PATH | --port P)\n",
              argv[0]);
      return 2;
    }
  }
  if (iters < 1) iters = 1;
  if (iters > 1000000) iters = 1000000;
  if (runs < 1) runs = 1;
  if (runs > 50) runs = 50;
  if (!port) {
    if (!server) {
      fprintf(stderr, "bench_http: give --testhttpd PATH or --port P\n");
      return 2;
    }
    if (!(port = start_server(server))) {
      fprintf(stderr, "bench_http: could not start %s\n", server);
      return 1;
    }
  }
  char base[64], url[80];
  snprintf(base, sizeof base, "http://127.0.0.1:%u", port);
  snprintf(url, sizeof url, "%s/fast", base);

  curl_global_init(CURL_GLOBAL_DEFAULT);
  resil_http_config cfg;
  resil_http_config_init(&cfg, "bench-http");
  cfg.base_url = base;
  cfg.pool.max_size = 1;
  if (no_deadline_header) cfg.deadline_header = "";
  resil_err err;
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) {
    fprintf(stderr, "bench_http: %s\n", err.msg);
    stop_server();
    return 1;
  }
  CURL *e = curl_easy_init();
  sink k = {0};
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 1000L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &k);

  long raw_err = 0, resil_err_n = 0;
  run_raw(e, &k, iters / 10 + 1, &raw_err); /* warm up: connect, caches */
  run_resil(h, iters / 10 + 1, &resil_err_n);
  raw_err = resil_err_n = 0;
  double raw[50], res[50], ratio[50], rawc[50], resc[50];
  /* Each run alternates blocks of 50 requests between the two clients, so
   * that both see the same background load; a run's figure is the mean over
   * its blocks. */
  const long block = 50;
  for (int r = 0; r < runs; r++) {
    double raw_sum = 0, res_sum = 0;
    raw_cpu = resil_cpu = 0;
    long done = 0;
    for (long b = 0; done < iters; b++) {
      long n = iters - done < block ? iters - done : block;
      if ((b + r) % 2) {
        res_sum += run_resil(h, n, &resil_err_n) * (double)n;
        raw_sum += run_raw(e, &k, n, &raw_err) * (double)n;
      } else {
        raw_sum += run_raw(e, &k, n, &raw_err) * (double)n;
        res_sum += run_resil(h, n, &resil_err_n) * (double)n;
      }
      done += n;
    }
    raw[r] = raw_sum / (double)iters;
    res[r] = res_sum / (double)iters;
    ratio[r] = res[r] / raw[r];
    rawc[r] = (double)raw_cpu / (double)iters;
    resc[r] = (double)resil_cpu / (double)iters;
  }
  double raw_med = median(raw, runs), res_med = median(res, runs);
  double ratio_med = median(ratio, runs);
  printf("resil %s HTTP benchmark: GET /fast on 127.0.0.1 (testhttpd), %ld requests per run, "
         "%d runs, one connection, %s, median [min max] ns/op\n",
         resil_version(), iters, runs,
         no_deadline_header ? "no deadline header" : "grpc-timeout sent");
  printf("| %-38s | %9s | %9s | %9s | %6s |\n", "client", "median", "min", "max", "errors");
  printf("|%s|%s|%s|%s|%s|\n", "----------------------------------------", "-----------",
         "-----------", "-----------", "--------");
  printf("| %-38s | %9.0f | %9.0f | %9.0f | %6ld |\n", "raw libcurl easy handle (reused conn)",
         raw_med, raw[0], raw[runs - 1], raw_err);
  printf("| %-38s | %9.0f | %9.0f | %9.0f | %6ld |\n", "resil_http_get (dep + pool + curl)",
         res_med, res[0], res[runs - 1], resil_err_n);
  double rawc_med = median(rawc, runs), resc_med = median(resc, runs);
  printf("| %-38s | %9.0f | %9.0f | %9.0f | %6s |\n", "  client CPU, raw libcurl", rawc_med,
         rawc[0], rawc[runs - 1], "");
  printf("| %-38s | %9.0f | %9.0f | %9.0f | %6s |\n", "  client CPU, resil_http_get", resc_med,
         resc[0], resc[runs - 1], "");
  printf("overhead ratio resil/raw, wall time: %.3f (median of per-run ratios; ratio of "
         "medians %.3f, of minimums %.3f); client CPU: %.3f (%+.0f ns/op); target <= 1.05\n",
         ratio_med, res_med / raw_med, res[0] / raw[0], resc_med / rawc_med,
         resc_med - rawc_med);
  if (summary) {
    printf("SUMMARY http.get.1conn%s %.0f %.0f %.3f %.0f %.0f %.0f %.0f\n",
           no_deadline_header ? ".no_deadline_header" : "", res_med, raw_med, res_med / raw_med,
           res[0], res[runs - 1], raw[0], raw[runs - 1]);
    printf("SUMMARY http.get.1conn.client_cpu%s %.0f %.0f %.3f %.0f %.0f %.0f %.0f\n",
           no_deadline_header ? ".no_deadline_header" : "", resc_med, rawc_med,
           resc_med / rawc_med, resc[0], resc[runs - 1], rawc[0], rawc[runs - 1]);
  }

  curl_easy_cleanup(e);
  free(k.buf);
  resil_http_free(h);
  stop_server();
  return 0;
}
