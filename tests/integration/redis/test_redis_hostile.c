/* The Redis adapter against a hostile peer on 127.0.0.1 (a thread of this
 * test that speaks just enough RESP): replies that announce absurd sizes,
 * stream without end or nest without end must fail fast and cleanly, never
 * allocate what they announce, and never hold memory past max_reply_bytes
 * (checked on the process's peak RSS) or the call past its deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "resil/redis.h"
#include "testutil.h"

typedef struct peer {
  int lfd;
  uint16_t port;
  const char *reply; /* sent for every read */
  size_t reply_len;  /* 0: strlen(reply) */
  /* Streaming instead (when unit is set): after the first read, send
   * header, then unit over and over, unit_len bytes at a time, until
   * stream_total bytes or the client goes away, sleeping pause_us between
   * sends (0: as fast as the socket takes them). */
  const char *header;
  const char *unit;
  size_t unit_len, stream_total;
  unsigned pause_us;
  pthread_t th;
} peer;

static void stream(peer *p, int c) {
  if (p->header && write(c, p->header, strlen(p->header)) < 0) return;
  for (size_t sent = 0; sent < p->stream_total;) {
    ssize_t w = send(c, p->unit, p->unit_len, MSG_NOSIGNAL);
    if (w <= 0) return;
    sent += (size_t)w;
    if (p->pause_us) usleep(p->pause_us);
  }
}

static void *serve(void *arg) {
  peer *p = arg;
  for (;;) {
    int c = accept(p->lfd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[4096];
    while (read(c, buf, sizeof buf) > 0) {
      if (p->unit) {
        stream(p, c);
        break;
      }
      if (write(c, p->reply, p->reply_len ? p->reply_len : strlen(p->reply)) < 0) break;
    }
    close(c);
  }
}

static void peer_listen(peer *p) {
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  getsockname(p->lfd, (struct sockaddr *)&a, &len);
  p->port = ntohs(a.sin_port);
  assert_int_equal(listen(p->lfd, 8), 0);
  pthread_create(&p->th, NULL, serve, p);
}

static void peer_start(peer *p, const char *reply) {
  memset(p, 0, sizeof *p);
  p->reply = reply;
  peer_listen(p);
}

static void peer_start_stream(peer *p, const char *header, const char *unit, size_t unit_len,
                              size_t total, unsigned pause_us) {
  memset(p, 0, sizeof *p);
  p->header = header;
  p->unit = unit;
  p->unit_len = unit_len;
  p->stream_total = total;
  p->pause_us = pause_us;
  peer_listen(p);
}

static void peer_stop(peer *p) {
  shutdown(p->lfd, SHUT_RDWR);
  close(p->lfd);
  pthread_join(p->th, NULL);
}

static void check_refused_fast(const char *reply) {
  peer p;
  peer_start(&p, reply);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "hostile");
  cfg.port = p.port;
  cfg.dep.breaker.consecutive_failures = 100;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  assert_non_null(r);
  for (int i = 0; i < 3; i++) {
    redisReply *rep = NULL;
    uint64_t t0 = resil_now_ns();
    resil_status st =
        resil_redis_command(r, resil_deadline_in_ms(300), 0, &rep, &err, "GET %s", "k");
    uint64_t took_ms = (resil_now_ns() - t0) / 1000000;
    assert_int_equal(st, RESIL_E_FAILURE);
    assert_null(rep);
    if (!strstr(err.msg, "more than 1048576")) fail_msg("unexpected message: %s", err.msg);
    assert_true(took_ms < 300 + 100); /* never near seconds of freeing */
  }
  resil_pool_stats ps;
  resil_pool_get_stats(resil_redis_pool(r), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 3); /* each connection destroyed */
  resil_redis_free(r);
  peer_stop(&p);
}

static void absurd_multibulk_count_fails_fast(void **state) {
  (void)state;
  check_refused_fast("*2147483647\r\n");
}

static void nested_absurd_counts_fail_fast(void **state) {
  (void)state;
  check_refused_fast("*3\r\n*2147483647\r\n");
}

static void large_but_sane_array_is_accepted(void **state) {
  (void)state;
  /* 1000 nils: well under the bound */
  static char reply[16 + 1000 * 5];
  strcpy(reply, "*1000\r\n");
  for (int i = 0; i < 1000; i++) strcat(reply, "$-1\r\n");
  peer p;
  peer_start(&p, reply);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "sane");
  cfg.port = p.port;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  redisReply *rep = NULL;
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &err, "LRANGE x"),
                   RESIL_OK);
  assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
  assert_int_equal(rep->elements, 1000);
  freeReplyObject(rep);
  resil_redis_free(r);
  peer_stop(&p);
}

/* ---- max_reply_bytes and the nesting bound --------------------------------- */

/* Slack on top of a deadline for a loaded 2-core machine. */
static uint64_t slack_ms(void) { return test_sanitized() ? 300 : 100; }

/* How much the peak RSS may grow during a call bounded by max_bytes: the
 * bound, hiredis's buffer growing by realloc (old and new block both live
 * for an instant) and malloc's slack. The sanitizers' allocators keep freed
 * blocks (quarantine) and add shadow memory: wider there. */
static long peak_limit_kb(size_t max_bytes) {
  long kb = (long)(max_bytes / 1024);
  return test_sanitized() ? 8 * kb + 64 * 1024 : 2 * kb + 4 * 1024;
}

typedef struct bounded_call {
  resil_status st;
  char msg[RESIL_ERR_MSG_MAX];
  uint64_t took_ms;
  uint64_t sched_ms;   /* the machine's worst scheduling delay meanwhile */
  long peak_growth_kb; /* -1 if the peak could not be measured */
  uint64_t closed_broken;
  uint64_t ignored;    /* calls counted as caller errors */
  uint64_t failures;
} bounded_call;

/* One GET (or a pipeline of npipe GETs) through a fresh resil_redis whose
 * max_reply_bytes is max_bytes, against p, under a deadline of deadline_ms. */
static bounded_call call_bounded(peer *p, size_t max_bytes, int deadline_ms, size_t npipe) {
  bounded_call out;
  memset(&out, 0, sizeof out);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "bounded");
  cfg.port = p->port;
  cfg.max_reply_bytes = max_bytes;
  cfg.dep.timeout_ms = (uint32_t)deadline_ms;
  resil_err err;
  memset(&err, 0, sizeof err);
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  int perturb = test_malloc_perturb_off();
  long base = test_peak_rss_reset();
  test_sched_watch watch;
  test_sched_watch_start(&watch);
  uint64_t t0 = resil_now_ns();
  if (npipe == 0) {
    redisReply *rep = NULL;
    out.st = resil_redis_command(r, resil_deadline_in_ms(deadline_ms), 0, &rep, &err, "GET %s",
                                 "k");
    if (out.st != RESIL_OK) assert_null(rep);
    if (rep) freeReplyObject(rep);
  } else {
    const char *argv[2] = {"GET", "k"};
    resil_redis_cmd cmds[8];
    redisReply *reps[8];
    assert_true(npipe <= 8);
    for (size_t i = 0; i < npipe; i++) cmds[i] = (resil_redis_cmd){.argc = 2, .argv = argv};
    out.st = resil_redis_pipeline(r, resil_deadline_in_ms(deadline_ms), 0, npipe, cmds, reps,
                                  &err);
    for (size_t i = 0; i < npipe; i++) {
      if (out.st != RESIL_OK) assert_null(reps[i]);
      if (reps[i]) freeReplyObject(reps[i]);
    }
  }
  out.took_ms = (resil_now_ns() - t0) / 1000000;
  out.sched_ms = test_sched_watch_stop(&watch);
  long peak = test_status_kb("VmHWM");
  test_malloc_perturb_restore(perturb);
  out.peak_growth_kb = base >= 0 && peak >= 0 ? peak - base : -1;
  snprintf(out.msg, sizeof out.msg, "%s", out.st == RESIL_OK ? "" : err.msg);
  resil_dep_stats ds;
  resil_dep_get_stats(resil_redis_dep(r), &ds);
  out.closed_broken = ds.pool.closed[RESIL_POOL_CLOSE_BROKEN];
  out.ignored = ds.calls[RESIL_OUTCOME_IGNORED];
  out.failures = ds.calls[RESIL_OUTCOME_FAILURE];
  resil_redis_free(r);
  return out;
}

static void expect_refused(const bounded_call *c, resil_status st, const char *needle,
                           int deadline_ms, size_t max_bytes) {
  if (c->st != st || !strstr(c->msg, needle))
    fail_msg("status %s after %llu ms (want %s naming \"%s\"): %s", resil_status_name(c->st),
             (unsigned long long)c->took_ms, resil_status_name(st), needle, c->msg);
  if (c->took_ms > (uint64_t)deadline_ms + slack_ms() + c->sched_ms)
    fail_msg("took %llu ms, deadline %d ms (machine's scheduling delay %llu ms)",
             (unsigned long long)c->took_ms, deadline_ms, (unsigned long long)c->sched_ms);
  if (c->peak_growth_kb > peak_limit_kb(max_bytes))
    fail_msg("peak RSS grew by %ld KiB during the call, limit %ld KiB (max_reply_bytes %zu)",
             c->peak_growth_kb, peak_limit_kb(max_bytes), max_bytes);
  print_message("  %s in %llu ms (sched delay %llu ms), peak RSS +%ld KiB: %s\n",
                resil_status_name(c->st), (unsigned long long)c->took_ms,
                (unsigned long long)c->sched_ms, c->peak_growth_kb, c->msg);
  assert_int_equal(c->closed_broken, 1); /* mid-reply: never reused */
  if (st == RESIL_E_CALLER) {
    assert_int_equal(c->ignored, 1); /* a caller error: the breaker never sees it */
    assert_int_equal(c->failures, 0);
  } else {
    assert_int_equal(c->failures, 1);
  }
}

#define MiB ((size_t)1 << 20)

static char *filled(size_t n, char ch) {
  char *b = malloc(n + 1);
  assert_non_null(b);
  memset(b, ch, n);
  b[n] = '\0';
  return b;
}

/* ---- replies refused at a bound: one table ------------------------------- */

/* Builders of what the peer sends: a whole reply (NUL-terminated), or the
 * unit of a stream; *len is its length. */
static char *unit_64k_x(size_t *len) { return filled(*len = 64 * 1024, 'x'); }

static char *unit_endless_nesting(size_t *len) {
  size_t n = *len = 64 * 1024;
  char *unit = malloc(n);
  assert_non_null(unit);
  for (size_t i = 0; i < n; i += 4) memcpy(unit + i, "*1\r\n", 4);
  return unit;
}

/* 100 000 integers: 400 KB on the wire, ~7 MB of redisReply objects. */
static char *reply_many_integers(size_t *len) {
  size_t n = 100000;
  char *reply = malloc(16 + n * 4);
  assert_non_null(reply);
  int off = sprintf(reply, "*%zu\r\n", n);
  for (size_t i = 0; i < n; i++) memcpy(reply + off + i * 4, ":1\r\n", 4);
  reply[off + n * 4] = '\0';
  *len = (size_t)off + n * 4;
  return reply;
}

/* n bulk strings of each bytes of ch, inside an array if array. */
static char *bulk_strings(size_t n, size_t each, char ch, bool array, size_t *len) {
  char *reply = malloc(16 + n * (each + 16));
  assert_non_null(reply);
  size_t off = array ? (size_t)sprintf(reply, "*%zu\r\n", n) : 0;
  for (size_t i = 0; i < n; i++) {
    off += (size_t)sprintf(reply + off, "$%zu\r\n", each);
    memset(reply + off, ch, each);
    off += each;
    memcpy(reply + off, "\r\n", 3);
    off += 2;
  }
  *len = off;
  return reply;
}

/* 64 strings of 64 KiB: each well under the bound, 4 MiB together. */
static char *reply_array_of_strings(size_t *len) {
  return bulk_strings(64, 64 * 1024, 'y', true, len);
}

/* 4 replies of 400 KB, each under 1 MiB: a pipeline's, counted together. */
static char *replies_for_a_pipeline(size_t *len) {
  return bulk_strings(4, 400000, 'z', false, len);
}

typedef struct refused_case {
  char *(*build)(size_t *len);
  /* stream: build gives the unit, sent after header until stream_total
   * bytes, pause_us between sends; else build gives the whole reply */
  bool stream;
  const char *header;
  size_t stream_total;
  unsigned pause_us;
  size_t max_bytes; /* the client's max_reply_bytes */
  int deadline_ms;
  size_t npipe;     /* 0: one GET; else a pipeline of npipe GETs */
  resil_status st;  /* how it is refused */
  const char *needle;
  size_t peak_bytes; /* the bound the peak RSS growth is held to */
  unsigned within_ms; /* 0, or refused this fast (+ slack) */
} refused_case;

static void refused_at_a_bound(void **state) {
  const refused_case *rc = *state;
  size_t len;
  char *what = rc->build(&len);
  peer p;
  if (rc->stream)
    peer_start_stream(&p, rc->header, what, len, rc->stream_total, rc->pause_us);
  else
    peer_start(&p, what);
  bounded_call c = call_bounded(&p, rc->max_bytes, rc->deadline_ms, rc->npipe);
  peer_stop(&p);
  free(what);
  expect_refused(&c, rc->st, rc->needle, rc->deadline_ms, rc->peak_bytes);
  if (rc->within_ms && c.took_ms > rc->within_ms + slack_ms() + c.sched_ms)
    fail_msg("took %llu ms (machine's scheduling delay %llu ms)", (unsigned long long)c.took_ms,
             (unsigned long long)c.sched_ms);
}

/* Each refused: its status naming the bound, by the deadline, the peak RSS
 * near the bound, the connection destroyed, and counted as a caller error
 * (a bound the caller chose) or a failure (a hostile reply). */
static const refused_case refused_cases[] = {
    /* "$1000000000000" then bytes as fast as the socket takes them (up to
     * 256 MiB): cut at max_reply_bytes long before the deadline */
    {.build = unit_64k_x, .stream = true, .header = "$1000000000000\r\n",
     .stream_total = 256 * MiB, .max_bytes = 8 * MiB, .deadline_ms = 2000, .st = RESIL_E_CALLER,
     .needle = "max_reply_bytes 8388608", .peak_bytes = 8 * MiB},
    /* the same, paced (64 KiB per ms at most): still cut at the bound, not
     * at the deadline with everything received so far buffered */
    {.build = unit_64k_x, .stream = true, .header = "$1000000000000\r\n",
     .stream_total = 256 * MiB, .pause_us = 1000, .max_bytes = 4 * MiB, .deadline_ms = 1500,
     .st = RESIL_E_CALLER, .needle = "max_reply_bytes 4194304", .peak_bytes = 4 * MiB},
    /* "*1\r\n" without end: refused at depth 8 as soon as it arrives (a
     * hostile reply: a failure), never buffered */
    {.build = unit_endless_nesting, .stream = true, .stream_total = 64 * MiB,
     .max_bytes = 64 * MiB, .deadline_ms = 2000, .st = RESIL_E_FAILURE,
     .needle = "deeper than 7", .peak_bytes = 8 * MiB, .within_ms = 50},
    {.build = reply_many_integers, .max_bytes = 1 * MiB, .deadline_ms = 2000,
     .st = RESIL_E_CALLER, .needle = "max_reply_bytes 1048576", .peak_bytes = 1 * MiB},
    {.build = reply_array_of_strings, .max_bytes = 1 * MiB, .deadline_ms = 2000,
     .st = RESIL_E_CALLER, .needle = "max_reply_bytes 1048576", .peak_bytes = 1 * MiB},
    {.build = replies_for_a_pipeline, .max_bytes = 1 * MiB, .deadline_ms = 2000, .npipe = 4,
     .st = RESIL_E_CALLER, .needle = "max_reply_bytes 1048576", .peak_bytes = 1 * MiB},
};

#define REFUSED_CASE(name, i) {#name, refused_at_a_bound, NULL, NULL, (void *)&refused_cases[i]}

/* A stream that never pauses, under a bound it does not reach before the
 * deadline: the call ends at the deadline (every read loop re-checks it),
 * not when the server stops sending (512 MiB later). */
static void endless_stream_ends_at_the_deadline(void **state) {
  (void)state;
  char *unit = filled(4 * MiB, 'x');
  peer p;
  peer_start_stream(&p, "$1000000000000\r\n", unit, 4 * MiB, 512 * MiB, 0);
  bounded_call c = call_bounded(&p, 1024 * MiB, 100, 0);
  peer_stop(&p);
  free(unit);
  if (c.st != RESIL_E_TIMEOUT || c.took_ms > 100 + slack_ms() + c.sched_ms)
    fail_msg("status %s after %llu ms (want timeout by 100 ms + %llu + the machine's scheduling "
             "delay %llu): %s",
             resil_status_name(c.st), (unsigned long long)c.took_ms,
             (unsigned long long)slack_ms(), (unsigned long long)c.sched_ms, c.msg);
  print_message("  %s in %llu ms (sched delay %llu ms), peak RSS +%ld KiB: %s\n",
                resil_status_name(c.st), (unsigned long long)c.took_ms,
                (unsigned long long)c.sched_ms, c.peak_growth_kb, c.msg);
  assert_int_equal(c.closed_broken, 1);
}

/* The bound does not refuse what fits: a 700 KB string and a 3-deep array
 * under a 1 MiB bound, on a connection that is then reused. */
static void replies_within_max_reply_bytes_are_accepted(void **state) {
  (void)state;
  size_t each = 700000;
  char *reply = malloc(each + 64);
  assert_non_null(reply);
  int off = sprintf(reply, "$%zu\r\n", each);
  memset(reply + off, 'w', each);
  strcpy(reply + off + each, "\r\n");
  peer p;
  peer_start(&p, reply);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "fits");
  cfg.port = p.port;
  cfg.max_reply_bytes = 1 * MiB;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  assert_non_null(r);
  for (int i = 0; i < 3; i++) {
    redisReply *rep = NULL;
    resil_status st = resil_redis_command(r, resil_deadline_in_ms(2000), 0, &rep, &err, "GET k");
    if (st != RESIL_OK) fail_msg("%s: %s", resil_status_name(st), err.msg);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->len, each);
    freeReplyObject(rep);
  }
  resil_pool_stats ps;
  resil_pool_get_stats(resil_redis_pool(r), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 0);
  resil_redis_free(r);
  peer_stop(&p);
  free(reply);

  peer_start(&p, "*1\r\n*1\r\n*2\r\n:1\r\n$2\r\nok\r\n");
  resil_redis_config_init(&cfg, "fits-nested");
  cfg.port = p.port;
  r = resil_redis_new(&cfg, &err);
  assert_non_null(r);
  redisReply *rep = NULL;
  assert_int_equal(resil_redis_command(r, resil_deadline_in_ms(2000), 0, &rep, &err, "X"),
                   RESIL_OK);
  assert_int_equal(rep->element[0]->element[0]->element[1]->len, 2);
  freeReplyObject(rep);
  resil_redis_free(r);
  peer_stop(&p);
}

/* A connect whose SYN is never answered ends at connect_timeout_ms (the
 * call's deadline is longer), as a timeout naming the connect phase. */
static void unanswered_connect_times_out_at_connect_timeout(void **state) {
  (void)state;
  int fds[3];
  uint16_t port = unanswered_listener(fds);
  assert_true(port > 0);
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "blackholed");
  cfg.port = port;
  cfg.connect_timeout_ms = 200;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  assert_non_null(r);
  redisReply *rep = NULL;
  uint64_t t0 = resil_now_ns();
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(1000), 0, &rep, &err, "PING");
  uint64_t took_ms = (resil_now_ns() - t0) / 1000000;
  if (st != RESIL_E_TIMEOUT || took_ms < 190 || took_ms > 200 + 100 || !strstr(err.msg, "connect"))
    fail_msg("status %s after %llu ms: %s", resil_status_name(st), (unsigned long long)took_ms,
             err.msg);
  resil_pool_stats ps;
  resil_pool_get_stats(resil_redis_pool(r), &ps);
  assert_int_equal(ps.connects_timed_out, 1);
  resil_redis_free(r);
  unanswered_close(fds);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(absurd_multibulk_count_fails_fast),
      cmocka_unit_test(nested_absurd_counts_fail_fast),
      cmocka_unit_test(large_but_sane_array_is_accepted),
      REFUSED_CASE(huge_bulk_streamed_fast_is_cut_at_max_reply_bytes, 0),
      REFUSED_CASE(huge_bulk_streamed_slowly_is_cut_at_max_reply_bytes, 1),
      cmocka_unit_test(endless_stream_ends_at_the_deadline),
      REFUSED_CASE(endless_nesting_is_refused_at_depth, 2),
      REFUSED_CASE(many_small_elements_count_against_max_reply_bytes, 3),
      REFUSED_CASE(array_of_strings_over_max_reply_bytes_in_total, 4),
      REFUSED_CASE(pipeline_replies_count_together, 5),
      cmocka_unit_test(replies_within_max_reply_bytes_are_accepted),
      cmocka_unit_test(unanswered_connect_times_out_at_connect_timeout),
  };
  return cmocka_run_group_tests_name("redis_hostile", tests, NULL, NULL);
}
