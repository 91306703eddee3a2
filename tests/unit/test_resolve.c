/* Name resolution under a deadline, with a short-TTL cache. Names go through
 * a gated fake getaddrinfo where a test needs control, and through the real
 * one for "localhost" (from /etc/hosts; no network needed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"
#include "timed_tries.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "fake_clock.h"
#include "resil/resil.h"
#include "resolve_internal.h"

/* ---- A getaddrinfo that waits at a gate ----------------------------------- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_closed;
static _Atomic int gai_calls;

static void gate(bool closed) {
  pthread_mutex_lock(&gate_mu);
  gate_closed = closed;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
}

/* Names containing "nohost" are not found; names containing "three" give
 * 127.0.0.1 three times (once per socket type); every other name gives
 * 127.0.0.1 once. */
static int gated_gai(const char *node, const char *service, const struct addrinfo *hints,
                     struct addrinfo **res) {
  atomic_fetch_add(&gai_calls, 1);
  pthread_mutex_lock(&gate_mu);
  while (gate_closed) pthread_cond_wait(&gate_cv, &gate_mu);
  pthread_mutex_unlock(&gate_mu);
  if (strstr(node, "nohost")) return EAI_NONAME;
  if (strstr(node, "nofd")) { /* as glibc does when it cannot open /etc/hosts */
    errno = EMFILE;
    return EAI_NONAME;
  }
  if (strstr(node, "three")) {
    struct addrinfo any = *hints;
    any.ai_socktype = 0;
    any.ai_protocol = 0;
    return getaddrinfo("127.0.0.1", service, &any, res);
  }
  return getaddrinfo("127.0.0.1", service, hints, res);
}

/* ---- Helpers ------------------------------------------------------------- */

/* LATE_MS, timing_start/add/again/check: tests/support/timed_tries.h */


static uint64_t real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static resil__resolve_counters counters(void) {
  resil__resolve_counters c;
  resil__resolve_counters_get(&c);
  return c;
}

#define WAIT_FOR(cond)                                         \
  do {                                                         \
    for (int i_ = 0; i_ < 10000 && !(cond); i_++) test_sleep_ms(1); \
    assert_true(cond);                                         \
  } while (0)

/* Wait (without asserting) until no lookup is in flight. */
static void settle(void) {
  for (int i = 0; i < 10000; i++) {
    resil__resolve_counters c = counters();
    if (c.in_flight == 0 && c.threads == 0) return;
    test_sleep_ms(1);
  }
}

static int setup(void **state) {
  (void)state;
  gate(false);
  resil__resolve_set_gai(NULL);
  resil_resolve_set_ttl_ms(5000);
  resil_resolve_flush();
  atomic_store(&gai_calls, 0);
  return 0;
}

static int setup_gated(void **state) {
  setup(state);
  resil__resolve_set_gai(gated_gai);
  return 0;
}

static int setup_fake(void **state) {
  fake_clock_install();
  return setup(state);
}

static int setup_fake_gated(void **state) {
  fake_clock_install();
  return setup_gated(state);
}

static int teardown(void **state) {
  (void)state;
  gate(false);
  settle();
  resil__resolve_set_gai(NULL);
  resil_resolve_set_ttl_ms(5000);
  resil_resolve_flush();
  fake_clock_uninstall();
  return 0;
}

static uint16_t port_of(const resil_addr *a) {
  const void *sa = &a->sa;
  if (a->family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

static bool is_loopback_text(const char *t) {
  return strcmp(t, "::1") == 0 || strncmp(t, "127.", 4) == 0;
}

/* A resolve on its own thread. */
typedef struct job {
  pthread_t t;
  const char *host;
  int64_t deadline_ms; /* < 0: unset */
  resil_status st;
  size_t count;
  resil_addr out[4];
  char msg[RESIL_ERR_MSG_MAX];
} job;

static void *job_main(void *arg) {
  job *j = arg;
  resil_err err = {.status = RESIL_OK, .msg = ""};
  resil_deadline d =
      j->deadline_ms < 0 ? RESIL_DEADLINE_UNSET : resil_deadline_in_ms(j->deadline_ms);
  j->st = resil_resolve(j->host, 5432, d, j->out, 4, &j->count, &err);
  memcpy(j->msg, err.msg, sizeof j->msg);
  return NULL;
}

static void job_start(job *j, const char *host, int64_t deadline_ms) {
  memset(j, 0, sizeof *j);
  j->host = host;
  j->deadline_ms = deadline_ms;
  assert_int_equal(pthread_create(&j->t, NULL, job_main, j), 0);
}

/* ---- Numeric hosts ---------------------------------------------------------- */

static void numeric_ipv4_is_parsed_without_a_lookup(void **state) {
  (void)state;
  resil__resolve_counters before = counters();
  resil_addr a[2];
  size_t n = 99;
  assert_int_equal(resil_resolve("127.0.0.1", 6379, resil_deadline_in_ms(0), a, 2, &n, NULL),
                   RESIL_OK);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].family, AF_INET);
  assert_string_equal(a[0].text, "127.0.0.1");
  assert_int_equal(a[0].len, sizeof(struct sockaddr_in));
  assert_int_equal(port_of(&a[0]), 6379);
  resil__resolve_counters after = counters();
  assert_int_equal(after.lookups, before.lookups);
  assert_int_equal(after.cache_hits, before.cache_hits);
  assert_int_equal(after.threads, 0);
}

static void numeric_ipv6_is_parsed_without_a_lookup(void **state) {
  (void)state;
  resil__resolve_counters before = counters();
  resil_addr a[1];
  size_t n = 0;
  assert_int_equal(resil_resolve("::1", 443, RESIL_DEADLINE_UNSET, a, 1, &n, NULL), RESIL_OK);
  assert_int_equal(n, 1);
  assert_int_equal(a[0].family, AF_INET6);
  assert_string_equal(a[0].text, "::1");
  assert_int_equal(a[0].len, sizeof(struct sockaddr_in6));
  assert_int_equal(port_of(&a[0]), 443);
  assert_int_equal(counters().lookups, before.lookups);
}

static void bad_arguments_are_invalid(void **state) {
  (void)state;
  resil_addr a[1];
  size_t n = 7;
  resil_err err = {0};
  assert_int_equal(resil_resolve(NULL, 1, RESIL_DEADLINE_UNSET, a, 1, &n, &err), RESIL_E_INVALID);
  assert_int_equal(n, 0);
  assert_int_equal(resil_resolve("", 1, RESIL_DEADLINE_UNSET, a, 1, &n, &err), RESIL_E_INVALID);
  assert_int_equal(resil_resolve("localhost", 1, RESIL_DEADLINE_UNSET, a, 0, &n, &err),
                   RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "localhost"));
  assert_int_equal(resil_resolve("localhost", 1, RESIL_DEADLINE_UNSET, NULL, 1, &n, &err),
                   RESIL_E_INVALID);
  assert_int_equal(resil_resolve("localhost", 1, RESIL_DEADLINE_UNSET, a, 1, NULL, &err),
                   RESIL_E_INVALID);
  char longname[300];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  assert_int_equal(resil_resolve(longname, 1, RESIL_DEADLINE_UNSET, a, 1, &n, &err),
                   RESIL_E_INVALID);
  assert_int_equal(err.status, RESIL_E_INVALID);
}

/* ---- Names through the real getaddrinfo ----------------------------------- */

static void localhost_resolves_with_port(void **state) {
  (void)state;
  resil_addr a[8];
  size_t n = 0;
  resil_err err = {0};
  resil_status st = resil_resolve("localhost", 8080, resil_deadline_in_ms(5000), a, 8, &n, &err);
  if (st != RESIL_OK) print_error("%s\n", err.msg);
  assert_int_equal(st, RESIL_OK);
  assert_true(n >= 1);
  for (size_t i = 0; i < n; i++) {
    assert_true(a[i].family == AF_INET || a[i].family == AF_INET6);
    assert_true(is_loopback_text(a[i].text));
    assert_int_equal(port_of(&a[i]), 8080);
  }
}

static void expired_deadline_times_out_fast(void **state) {
  (void)state;
  resil__resolve_counters before = counters();
  resil_addr a[1];
  size_t n = 5;
  resil_err err = {0};
  uint64_t t0 = real_ms();
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(0), a, 1, &n, &err),
                   RESIL_E_TIMEOUT);
  assert_true(real_ms() - t0 < 100);
  assert_int_equal(n, 0);
  assert_non_null(strstr(err.msg, "'localhost'"));
  assert_int_equal(counters().lookups, before.lookups); /* nothing started */
}

static void second_lookup_hits_the_cache_and_answers_are_copies(void **state) {
  (void)state;
  resil__resolve_counters before = counters();
  resil_addr a[4];
  size_t n = 0;
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  resil__resolve_counters mid = counters();
  assert_int_equal(mid.lookups, before.lookups + 1);
  assert_int_equal(mid.cache_hits, before.cache_hits);
  assert_int_equal(mid.cached, 1);
  size_t first = n;
  memset(a, 0x5a, sizeof a); /* the caller owns its copy */
  assert_int_equal(resil_resolve("localhost", 81, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  assert_int_equal(n, first);
  assert_true(is_loopback_text(a[0].text));
  assert_int_equal(port_of(&a[0]), 81);
  resil__resolve_counters after = counters();
  assert_int_equal(after.lookups, mid.lookups);
  assert_int_equal(after.cache_hits, mid.cache_hits + 1);
}

static void cache_entry_expires_after_ttl(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(1000);
  resil_addr a[4];
  size_t n = 0;
  uint64_t l0 = counters().lookups;
  assert_int_equal(resil_resolve("localhost", 80, RESIL_DEADLINE_UNSET, a, 4, &n, NULL), RESIL_OK);
  assert_int_equal(counters().lookups, l0 + 1);
  fake_clock_advance_ms(999);
  assert_int_equal(resil_resolve("localhost", 80, RESIL_DEADLINE_UNSET, a, 4, &n, NULL), RESIL_OK);
  assert_int_equal(counters().lookups, l0 + 1); /* still cached */
  fake_clock_advance_ms(1);
  assert_int_equal(resil_resolve("localhost", 80, RESIL_DEADLINE_UNSET, a, 4, &n, NULL), RESIL_OK);
  assert_int_equal(counters().lookups, l0 + 2); /* expired: looked up again */
}

static void zero_ttl_disables_the_cache_and_flush_empties_it(void **state) {
  (void)state;
  resil_addr a[4];
  size_t n = 0;
  resil__resolve_counters c0 = counters();
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  assert_int_equal(counters().cached, 1);
  resil_resolve_flush();
  assert_int_equal(counters().cached, 0);
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  assert_int_equal(counters().lookups, c0.lookups + 2);
  resil_resolve_set_ttl_ms(0);
  assert_int_equal(counters().cached, 0);
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  assert_int_equal(resil_resolve("localhost", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  resil__resolve_counters c1 = counters();
  assert_int_equal(c1.lookups, c0.lookups + 4);
  assert_int_equal(c1.cache_hits, c0.cache_hits);
  assert_int_equal(c1.cached, 0);
}

/* ---- Names through the gated getaddrinfo ---------------------------------- */

static void name_not_found_is_failure_naming_the_host(void **state) {
  (void)state;
  resil_addr a[1];
  size_t n = 0;
  resil_err err = {0};
  assert_int_equal(resil_resolve("nohost.test", 80, resil_deadline_in_ms(5000), a, 1, &n, &err),
                   RESIL_E_FAILURE);
  char want[200];
  snprintf(want, sizeof want, "resolve 'nohost.test': %s", gai_strerror(EAI_NONAME));
  assert_string_equal(err.msg, want);
  assert_int_equal(n, 0);
  assert_int_equal(counters().cached, 0); /* failures are not cached */
}

/* A lookup that failed because this process has no fd left is a local
 * error, not an unknown name (which would count against the dependency). */
static void lookup_without_fds_is_a_local_error(void **state) {
  (void)state;
  resil_addr a[1];
  size_t n = 0;
  resil_err err = {0};
  assert_int_equal(resil_resolve("nofd.test", 80, resil_deadline_in_ms(5000), a, 1, &n, &err),
                   RESIL_E_SYSTEM);
  char want[200];
  snprintf(want, sizeof want, "resolve 'nofd.test': %s (%s: a local resource limit)",
           gai_strerror(EAI_NONAME), strerror(EMFILE));
  assert_string_equal(err.msg, want);
  assert_int_equal(n, 0);
  assert_int_equal(counters().cached, 0);
}

static void answers_are_truncated_to_max(void **state) {
  (void)state;
  resil_addr a[4];
  size_t n = 0;
  assert_int_equal(resil_resolve("three.test", 80, resil_deadline_in_ms(5000), a, 4, &n, NULL),
                   RESIL_OK);
  assert_int_equal(n, 3);
  assert_int_equal(resil_resolve("three.test", 80, resil_deadline_in_ms(5000), a, 2, &n, NULL),
                   RESIL_OK);
  assert_int_equal(n, 2);
  assert_string_equal(a[1].text, "127.0.0.1");
  assert_int_equal(port_of(&a[1]), 80);
}

static void abandoned_lookup_finishes_and_fills_the_cache(void **state) {
  (void)state;
  gate(true);
  resil_addr a[2];
  size_t n = 0;
  resil_err err = {0};
  timing t = timing_start(50);
  do { /* a later try joins the same lookup */
    uint64_t t0 = real_ms();
    assert_int_equal(resil_resolve("slow.test", 80, resil_deadline_in_ms(50), a, 2, &n, &err),
                     RESIL_E_TIMEOUT);
    timing_add(&t, real_ms() - t0);
    assert_non_null(strstr(err.msg, "resolve 'slow.test': no answer within"));
  } while (timing_again(&t));
  timing_check(&t);
  assert_int_equal(counters().in_flight, 1);
  assert_int_equal(counters().waiting, 0);
  gate(false);
  WAIT_FOR(counters().in_flight == 0);
  /* Served from the cache, even with no time left. */
  assert_int_equal(resil_resolve("slow.test", 80, resil_deadline_in_ms(0), a, 2, &n, &err),
                   RESIL_OK);
  assert_int_equal(n, 1);
  assert_string_equal(a[0].text, "127.0.0.1");
  assert_int_equal(atomic_load(&gai_calls), 1);
}

static void concurrent_callers_share_one_lookup(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(0); /* sharing, not the cache */
  gate(true);
  enum { N = 4 };
  job j[N];
  for (int i = 0; i < N; i++) job_start(&j[i], "shared.test", 10000);
  WAIT_FOR(counters().waiting == N);
  assert_int_equal(counters().in_flight, 1);
  gate(false);
  for (int i = 0; i < N; i++) pthread_join(j[i].t, NULL);
  for (int i = 0; i < N; i++) {
    assert_int_equal(j[i].st, RESIL_OK);
    assert_int_equal(j[i].count, 1);
    assert_int_equal(port_of(&j[i].out[0]), 5432);
  }
  assert_int_equal(atomic_load(&gai_calls), 1);
}

static void lookup_threads_are_capped(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(0);
  gate(true);
  enum { N = RESIL_RESOLVE_MAX_THREADS + 2 };
  static const char *const hosts[] = {"a.test", "b.test", "c.test", "d.test",
                                      "e.test", "f.test", "g.test", "h.test"};
  _Static_assert(N <= 8, "hosts");
  job j[N];
  for (int i = 0; i < N; i++) job_start(&j[i], hosts[i], 10000);
  WAIT_FOR(counters().waiting == N);
  WAIT_FOR(atomic_load(&gai_calls) == RESIL_RESOLVE_MAX_THREADS);
  resil__resolve_counters c = counters();
  assert_int_equal(c.threads, RESIL_RESOLVE_MAX_THREADS);
  assert_int_equal(c.in_flight, N);
  gate(false);
  for (int i = 0; i < N; i++) pthread_join(j[i].t, NULL);
  for (int i = 0; i < N; i++) assert_int_equal(j[i].st, RESIL_OK);
  assert_int_equal(atomic_load(&gai_calls), N);
  WAIT_FOR(counters().threads == 0);
}

static void unset_deadline_waits_five_seconds_at_most(void **state) {
  (void)state;
  gate(true);
  job j;
  job_start(&j, "stuck.test", -1);
  WAIT_FOR(counters().waiting == 1);
  fake_clock_advance_ms(4999);
  test_sleep_ms(30);
  assert_int_equal(counters().waiting, 1); /* still waiting */
  fake_clock_advance_ms(1);
  pthread_join(j.t, NULL);
  assert_int_equal(j.st, RESIL_E_TIMEOUT);
  assert_non_null(strstr(j.msg, "'stuck.test'"));
  gate(false);
}

/* ---- The real resolver on a name that does not exist ---------------------- */

static void nonexistent_name_fails_or_times_out_naming_the_host(void **state) {
  (void)state;
  resil_addr a[2];
  size_t n = 0;
  resil_err err = {0};
  resil_status st =
      resil_resolve("nonexistent.invalid", 80, resil_deadline_in_ms(2000), a, 2, &n, &err);
  assert_true(st == RESIL_E_FAILURE || st == RESIL_E_TIMEOUT);
  assert_int_equal(err.status, st);
  assert_non_null(strstr(err.msg, "'nonexistent.invalid'"));
  assert_int_equal(n, 0);
}

/* ---- Invalidation and the hosts-file override ---------------------------- */

/* Write text to a fresh file in /tmp, renamed into place at path (as a
 * config agent would). */
static void write_hosts(const char *path, const char *text) {
  char tmp[256];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(rename(tmp, path), 0);
}

static void hosts_path(char *buf, size_t size) {
  snprintf(buf, size, "/tmp/resil-test-hosts-%d", (int)getpid());
}

static void hosts_file_names_resolve_from_the_file_in_order(void **state) {
  (void)state;
  char path[128];
  hosts_path(path, sizeof path);
  write_hosts(path, "# comment\n127.0.0.9 other.test\n127.0.0.2 db.test DB2.test # x\n"
                    "::1 db.test\nnot-an-address db.test\n");
  resil_err err = {0};
  assert_int_equal(resil_resolve_set_hosts_file(path, &err), RESIL_OK);
  resil_addr a[4];
  size_t n = 0;
  assert_int_equal(resil_resolve("db.test", 5432, resil_deadline_in_ms(2000), a, 4, &n, &err),
                   RESIL_OK);
  assert_int_equal(n, 2);
  assert_string_equal(a[0].text, "127.0.0.2");
  assert_int_equal(port_of(&a[0]), 5432);
  assert_string_equal(a[1].text, "::1");
  assert_int_equal(resil_resolve("db2.TEST", 1, resil_deadline_in_ms(2000), a, 4, &n, &err),
                   RESIL_OK);
  assert_int_equal(n, 1);
  assert_string_equal(a[0].text, "127.0.0.2");
  /* A name the file does not list still goes to getaddrinfo. */
  assert_int_equal(resil_resolve("localhost", 1, resil_deadline_in_ms(5000), a, 4, &n, &err),
                   RESIL_OK);
  assert_true(is_loopback_text(a[0].text));
  /* Off again. */
  assert_int_equal(resil_resolve_set_hosts_file(NULL, &err), RESIL_OK);
  unlink(path);
}

static void invalidate_drops_one_cached_answer_whatever_the_ttl(void **state) {
  (void)state;
  resil_resolve_set_ttl_ms(600000); /* the move must not wait for the TTL */
  char path[128];
  hosts_path(path, sizeof path);
  write_hosts(path, "127.0.0.2 moving.test\n127.0.0.3 staying.test\n");
  resil_err err = {0};
  assert_int_equal(resil_resolve_set_hosts_file(path, &err), RESIL_OK);
  resil_addr a[2];
  size_t n = 0;
  assert_int_equal(resil_resolve("moving.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_OK);
  assert_string_equal(a[0].text, "127.0.0.2");
  assert_int_equal(resil_resolve("staying.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_OK);
  write_hosts(path, "127.0.0.1 moving.test\n127.0.0.4 staying.test\n");
  /* Cached: still the old address. */
  assert_int_equal(resil_resolve("moving.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_OK);
  assert_string_equal(a[0].text, "127.0.0.2");
  resil__resolve_counters before = counters();
  assert_true(resil_resolve_invalidate("moving.test"));
  assert_false(resil_resolve_invalidate("never-cached.test"));
  assert_int_equal(counters().invalidated, before.invalidated + 2);
  assert_int_equal(resil_resolve("moving.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_OK);
  assert_string_equal(a[0].text, "127.0.0.1");
  /* Only that name was dropped. */
  assert_int_equal(resil_resolve("staying.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_OK);
  assert_string_equal(a[0].text, "127.0.0.3");
  assert_int_equal(resil_resolve_set_hosts_file(NULL, &err), RESIL_OK);
  unlink(path);
}

static void hosts_file_errors_name_the_file(void **state) {
  (void)state;
  resil_err err = {0};
  assert_int_equal(resil_resolve_set_hosts_file("/nonexistent/resil-hosts", &err),
                   RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "'/nonexistent/resil-hosts'"));
  char path[128];
  hosts_path(path, sizeof path);
  write_hosts(path, "127.0.0.2 gone.test\n");
  assert_int_equal(resil_resolve_set_hosts_file(path, &err), RESIL_OK);
  unlink(path); /* vanished at run time: the lookup fails naming it, no DNS fallback */
  resil_addr a[2];
  size_t n = 0;
  assert_int_equal(resil_resolve("gone.test", 1, resil_deadline_in_ms(2000), a, 2, &n, &err),
                   RESIL_E_FAILURE);
  assert_non_null(strstr(err.msg, path));
  assert_non_null(strstr(err.msg, "RESIL_HOSTS_FILE"));
  assert_int_equal(resil_resolve_set_hosts_file("", &err), RESIL_OK);
}

/* Tests by setup: real getaddrinfo, gated fake, and either on the fake clock. */
#define REAL(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
#define GATED(f) cmocka_unit_test_setup_teardown(f, setup_gated, teardown)
#define FAKE(f) cmocka_unit_test_setup_teardown(f, setup_fake, teardown)
#define FAKE_GATED(f) cmocka_unit_test_setup_teardown(f, setup_fake_gated, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      REAL(numeric_ipv4_is_parsed_without_a_lookup),
      REAL(numeric_ipv6_is_parsed_without_a_lookup),
      REAL(bad_arguments_are_invalid),
      REAL(localhost_resolves_with_port),
      REAL(expired_deadline_times_out_fast),
      REAL(second_lookup_hits_the_cache_and_answers_are_copies),
      FAKE(cache_entry_expires_after_ttl),
      REAL(zero_ttl_disables_the_cache_and_flush_empties_it),
      GATED(name_not_found_is_failure_naming_the_host),
      GATED(lookup_without_fds_is_a_local_error),
      GATED(answers_are_truncated_to_max),
      GATED(abandoned_lookup_finishes_and_fills_the_cache),
      GATED(concurrent_callers_share_one_lookup),
      GATED(lookup_threads_are_capped),
      FAKE_GATED(unset_deadline_waits_five_seconds_at_most),
      REAL(nonexistent_name_fails_or_times_out_naming_the_host),
      REAL(hosts_file_names_resolve_from_the_file_in_order),
      REAL(invalidate_drops_one_cached_answer_whatever_the_ttl),
      REAL(hosts_file_errors_name_the_file),
  };
  return cmocka_run_group_tests_name("resolve", tests, NULL, NULL);
}
