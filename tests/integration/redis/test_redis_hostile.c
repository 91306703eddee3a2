/* The Redis adapter against a hostile peer on 127.0.0.1 (a thread of this
 * test that speaks just enough RESP): replies that announce absurd sizes
 * must fail fast and cleanly, never allocate what they announce. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "resil/redis.h"
#include "testutil.h"

typedef struct peer {
  int lfd;
  uint16_t port;
  const char *reply; /* sent for every read */
  pthread_t th;
} peer;

static void *serve(void *arg) {
  peer *p = arg;
  for (;;) {
    int c = accept(p->lfd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[4096];
    while (read(c, buf, sizeof buf) > 0)
      if (write(c, p->reply, strlen(p->reply)) < 0) break;
    close(c);
  }
}

static void peer_start(peer *p, const char *reply) {
  p->reply = reply;
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  getsockname(p->lfd, (struct sockaddr *)&a, &len);
  p->port = ntohs(a.sin_port);
  assert_int_equal(listen(p->lfd, 8), 0);
  pthread_create(&p->th, NULL, serve, p);
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
      cmocka_unit_test(unanswered_connect_times_out_at_connect_timeout),
  };
  return cmocka_run_group_tests_name("redis_hostile", tests, NULL, NULL);
}
