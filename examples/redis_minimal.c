/* The smallest useful resil-redis program: one dependency, one SET and GET,
 * each under a 200 ms deadline.  Usage: redis_minimal [host [port]] */
#include <stdio.h>
#include <stdlib.h>

#include <resil/redis.h>

int main(int argc, char **argv) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, "session-cache");
  cfg.host = argc > 1 ? argv[1] : "127.0.0.1";
  cfg.port = argc > 2 ? (uint32_t)atoi(argv[2]) : 6379;
  cfg.pool.max_size = 4;
  resil_err err;
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) return fprintf(stderr, "%s\n", err.msg), 1;

  redisReply *reply = NULL;
  resil_status st = resil_redis_command(r, resil_deadline_in_ms(200), 0, &reply, &err,
                                        "SET %s %s", "greeting", "hello");
  if (reply) freeReplyObject(reply);
  if (st == RESIL_OK)
    st = resil_redis_command(r, resil_deadline_in_ms(200), RESIL_CALL_IDEMPOTENT, &reply, &err,
                             "GET %s", "greeting");
  if (st == RESIL_OK) printf("greeting = %s\n", reply->str);
  else fprintf(stderr, "%s (%s)\n", err.msg, resil_status_name(st));
  if (reply) freeReplyObject(reply);
  resil_redis_free(r);
  return st == RESIL_OK ? 0 : 1;
}
