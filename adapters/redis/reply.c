/* Bounded reading of Redis replies (see reply.h). */
#include "reply.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/sds.h>

/* The reply objects: redisReply built as hiredis 0.14's own functions build
 * them (those are static in hiredis), so that freeReplyObject() frees them
 * and callers see no difference; the bounded variants below check the
 * bound first. */
static redisReply *new_reply(const redisReadTask *t, int type) {
  redisReply *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->type = type;
  if (t->parent) {
    redisReply *parent = t->parent->obj; /* an array: only arrays have children */
    parent->element[t->idx] = r;
  }
  return r;
}

static void *make_string(const redisReadTask *t, char *str, size_t len) {
  char *buf = malloc(len + 1);
  if (!buf) return NULL;
  memcpy(buf, str, len);
  buf[len] = '\0';
  redisReply *r = new_reply(t, t->type); /* string, status or error */
  if (!r) {
    free(buf);
    return NULL;
  }
  r->str = buf;
  r->len = len;
  return r;
}

static void *make_array(const redisReadTask *t, int elements) {
  redisReply **el = NULL;
  if (elements > 0 && !(el = calloc((size_t)elements, sizeof *el))) return NULL;
  redisReply *r = new_reply(t, REDIS_REPLY_ARRAY);
  if (!r) {
    free(el);
    return NULL;
  }
  r->element = el;
  r->elements = elements > 0 ? (size_t)elements : 0;
  return r;
}

static size_t unparsed(const redisReader *rd) { return rd->len > rd->pos ? rd->len - rd->pos : 0; }

/* Room for cost more object bytes, with `buffered` unparsed bytes still to
 * be held? Refuses (and records it) when not. */
static int room(resil_redis_bound *b, size_t cost, size_t buffered) {
  size_t held = b->objects + buffered;
  if (cost > SIZE_MAX - held || held + cost > b->max_bytes) {
    b->refused = RESIL_REDIS_REFUSED_BYTES;
    b->detail = (long long)(cost > SIZE_MAX - held ? SIZE_MAX : held + cost);
    return 0;
  }
  b->objects += cost;
  return 1;
}

static void *bounded_create_string(const redisReadTask *t, char *str, size_t len) {
  resil_redis_bound *b = t->privdata;
  if (b) {
    size_t buffered = unparsed(b->rd);
    /* A bulk string is still in the buffer (consumed right after this);
     * a status or error line was consumed already. */
    if (t->type == REDIS_REPLY_STRING) buffered -= len < buffered ? len : buffered;
    size_t cost = len > SIZE_MAX - RESIL_REDIS_REPLY_OBJ_COST - 17
                      ? SIZE_MAX
                      : RESIL_REDIS_REPLY_OBJ_COST + len + 1 + 16;
    if (!room(b, cost, buffered)) return NULL;
  }
  return make_string(t, str, len);
}

static void *bounded_create_array(const redisReadTask *t, int elements) {
  resil_redis_bound *b = t->privdata;
  if (b) {
    if (elements > RESIL_REDIS_MAX_REPLY_ELEMENTS) {
      b->refused = RESIL_REDIS_REFUSED_ELEMENTS;
      b->detail = elements;
      return NULL; /* hiredis reports "Out of memory" and stops reading */
    }
    int depth = 1;
    for (const redisReadTask *p = t->parent; p; p = p->parent) depth++;
    if (depth > RESIL_REDIS_MAX_REPLY_DEPTH) {
      b->refused = RESIL_REDIS_REFUSED_DEPTH;
      b->detail = depth;
      return NULL;
    }
    size_t cost = RESIL_REDIS_REPLY_OBJ_COST;
    if (elements > 0) cost += (size_t)elements * sizeof(redisReply *) + 16;
    if (!room(b, cost, unparsed(b->rd))) return NULL;
  }
  return make_array(t, elements);
}

static void *bounded_create_integer(const redisReadTask *t, long long value) {
  resil_redis_bound *b = t->privdata;
  if (b && !room(b, RESIL_REDIS_REPLY_OBJ_COST, unparsed(b->rd))) return NULL;
  redisReply *r = new_reply(t, REDIS_REPLY_INTEGER);
  if (r) r->integer = value;
  return r;
}

static void *bounded_create_nil(const redisReadTask *t) {
  resil_redis_bound *b = t->privdata;
  if (b && !room(b, RESIL_REDIS_REPLY_OBJ_COST, unparsed(b->rd))) return NULL;
  return new_reply(t, REDIS_REPLY_NIL);
}

/* Each check finds its bound through the task's privdata, which hiredis
 * copies from the reader's when it creates the task; a reader without a
 * bound (privdata NULL) is not checked. */
static redisReplyObjectFunctions bounded_fns = {
    .createString = bounded_create_string,
    .createArray = bounded_create_array,
    .createInteger = bounded_create_integer,
    .createNil = bounded_create_nil,
    .freeObject = freeReplyObject,
};

redisReader *resil_redis_reader_new(void) {
  return redisReaderCreateWithFunctions(&bounded_fns);
}

void resil_redis_bound_begin(resil_redis_bound *b, redisReader *rd, size_t max_bytes) {
  b->rd = rd;
  b->max_bytes = max_bytes;
  b->objects = 0;
  b->refused = RESIL_REDIS_REFUSED_NONE;
  b->detail = 0;
  if (rd) rd->privdata = b;
}

void resil_redis_bound_end(resil_redis_bound *b) {
  redisReader *rd = b->rd;
  if (!rd) return;
  rd->privdata = NULL;
  /* What hiredis's redisReaderFeed does on the next feed, done now: an idle
   * pooled connection must not keep a big reply's buffer. */
  if (!rd->err && rd->len == 0 && rd->maxbuf && rd->buf && sdsavail(rd->buf) > rd->maxbuf) {
    sds fresh = sdsempty();
    if (fresh) {
      sdsfree(rd->buf);
      rd->buf = fresh;
      rd->pos = 0;
    }
  }
  b->rd = NULL;
}

size_t resil_redis_bound_held(const resil_redis_bound *b) {
  return b->objects + (b->rd ? unparsed(b->rd) : 0);
}

int resil_redis_bound_feed(resil_redis_bound *b, const char *buf, size_t len) {
  if (b->refused) return REDIS_ERR;
  size_t held = resil_redis_bound_held(b);
  if (len > SIZE_MAX - held || held + len > b->max_bytes) {
    b->refused = RESIL_REDIS_REFUSED_BYTES;
    b->detail = (long long)(len > SIZE_MAX - held ? SIZE_MAX : held + len);
    return REDIS_ERR;
  }
  return redisReaderFeed(b->rd, buf, len);
}

int resil_redis_bound_get(resil_redis_bound *b, void **reply) {
  if (reply) *reply = NULL;
  if (b->refused) return REDIS_ERR;
  return redisReaderGetReply(b->rd, reply);
}

resil_status resil_redis_bound_error(const resil_redis_bound *b, const char *name,
                                     const char *phase, resil_err *err) {
  switch (b->refused) {
    case RESIL_REDIS_REFUSED_ELEMENTS:
      return resil_err_set(err, RESIL_E_FAILURE,
                           "%s: %s: reply announces %lld elements, more than %d (refused; "
                           "connection closed)",
                           name, phase, b->detail, RESIL_REDIS_MAX_REPLY_ELEMENTS);
    case RESIL_REDIS_REFUSED_DEPTH:
      return resil_err_set(err, RESIL_E_FAILURE,
                           "%s: %s: reply nests arrays %lld deep, deeper than %d (refused; "
                           "connection closed)",
                           name, phase, b->detail, RESIL_REDIS_MAX_REPLY_DEPTH);
    case RESIL_REDIS_REFUSED_BYTES:
      return resil_err_set(err, RESIL_E_CALLER,
                           "%s: %s: reply larger than max_reply_bytes %zu (%lld bytes held "
                           "with the next piece; refused, connection closed)",
                           name, phase, b->max_bytes, b->detail);
    case RESIL_REDIS_REFUSED_NONE: break;
  }
  return RESIL_OK;
}
