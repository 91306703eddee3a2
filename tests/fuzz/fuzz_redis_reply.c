/* libFuzzer harness: the Redis adapter's bounded reply reading
 * (adapters/redis/reply.c, the code every connection's reads go through:
 * this target compiles that file itself, since the library exports none of
 * it) on hiredis 0.14's parser, and reply classification.
 *
 *   byte 0  how the bytes arrive: 0 = in one feed, else in feeds of that
 *           many bytes, taking every complete reply after each (as the
 *           adapter does after each read)
 *   byte 1  the bound: max_bytes = 1 KiB << (byte % 12) (1 KiB .. 2 MiB)
 *   rest    what the server sent
 *
 * Checks: no crash, leak or undefined behaviour; the bound holds: after
 * every feed and every reply the bytes held (objects + unparsed buffer) are
 * at most max_bytes, and the objects the bound counted are at least what
 * the replies handed out cost under its own cost model (nothing escapes the
 * count); a refusal is final and maps to RESIL_E_CALLER (bytes) or
 * RESIL_E_FAILURE (elements, depth) with a message naming the bound;
 * resil_redis_classify_reply is RESIL_OK for every non-error reply and, for
 * error replies, exactly what the documented first-word table gives (an
 * independent reference below), at every nesting level; NULL is
 * RESIL_E_INVALID.
 *
 * FIXED FINDING (see tests/fuzz/crashes/README.md): hiredis 0.14 allocates a
 * multi-bulk reply's element array up front from the announced count
 * ("*2147483647\r\n" is a 16 GiB calloc). The adapter's bound refuses more
 * than 1M elements before hiredis allocates them; this harness runs that
 * very code. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "reply.h"
#include "resil/redis.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The adapter's table, restated: the first word of the error text (up to a
 * space or the end), compared exactly. */
static resil_status reference(const redisReply *r) {
  if (r->type != REDIS_REPLY_ERROR) return RESIL_OK;
  const char *s = r->str ? r->str : "";
  size_t len = r->str ? r->len : 0;
  size_t w = 0;
  while (w < len && s[w] != ' ') w++;
#define IS(word) (w == sizeof(word) - 1 && memcmp(s, word, w) == 0)
  if (IS("LOADING") || IS("BUSY") || IS("TRYAGAIN")) return RESIL_E_OVERLOAD;
  if (IS("MASTERDOWN") || IS("OOM") || IS("READONLY") || IS("CLUSTERDOWN")) return RESIL_E_FAILURE;
#undef IS
  return RESIL_E_CALLER;
}

/* What reply.h says one reply costs, and how deep its arrays nest. */
static size_t cost(const redisReply *r, int depth, int *max_depth) {
  size_t c = RESIL_REDIS_REPLY_OBJ_COST;
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR: c += r->len + 1 + 16; break;
    case REDIS_REPLY_ARRAY:
      if (depth > *max_depth) *max_depth = depth;
      if (r->elements) c += r->elements * sizeof(redisReply *) + 16;
      for (size_t i = 0; i < r->elements; i++) c += cost(r->element[i], depth + 1, max_depth);
      break;
    default: break;
  }
  return c;
}

static void check(const redisReply *r, int depth) {
  if (!r || depth > RESIL_REDIS_MAX_REPLY_DEPTH + 1) abort();
  resil_status got = resil_redis_classify_reply(r);
  resil_status want = reference(r);
  if (got != want) {
    fprintf(stderr, "classify '%.*s' (type %d): got %s, want %s\n", (int)(r->len > 80 ? 80 : r->len),
            r->str ? r->str : "", r->type, resil_status_name(got), resil_status_name(want));
    abort();
  }
  if (r->type == REDIS_REPLY_ARRAY) {
    if (r->elements > RESIL_REDIS_MAX_REPLY_ELEMENTS) abort();
    for (size_t i = 0; i < r->elements; i++) check(r->element[i], depth + 1);
  }
}

static void check_held(const resil_redis_bound *b) {
  if (resil_redis_bound_held(b) > b->max_bytes) {
    fprintf(stderr, "held %zu > max_bytes %zu\n", resil_redis_bound_held(b), b->max_bytes);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  size_t step = data[0];
  size_t max_bytes = (size_t)1024 << (data[1] % 12);
  data += 2;
  size -= 2;
  if (step == 0) step = size ? size : 1;
  if (resil_redis_classify_reply(NULL) != RESIL_E_INVALID) abort();

  redisReader *rd = resil_redis_reader_new(); /* as every connection's */
  if (!rd) return 0;
  resil_redis_bound b;
  resil_redis_bound_begin(&b, rd, max_bytes);
  size_t handed = 0; /* cost of the replies handed out */
  bool failed = false;
  for (size_t off = 0; off < size && !failed; off += step) {
    size_t n = size - off < step ? size - off : step;
    if (resil_redis_bound_feed(&b, (const char *)data + off, n) != REDIS_OK) {
      if (!b.refused) abort(); /* the reader was not in error before */
      failed = true;
      break;
    }
    check_held(&b);
    for (;;) {
      void *reply = NULL;
      if (resil_redis_bound_get(&b, &reply) != REDIS_OK) {
        /* A protocol error or a refusal is sticky: the adapter closes the
         * connection. */
        if (reply) abort();
        failed = true;
        break;
      }
      if (!reply) break; /* needs more bytes */
      check(reply, 0);
      int max_depth = 0;
      handed += cost(reply, 1, &max_depth);
      if (max_depth > RESIL_REDIS_MAX_REPLY_DEPTH) abort();
      if (handed > b.objects) {
        fprintf(stderr, "replies cost %zu, bound counted %zu\n", handed, b.objects);
        abort();
      }
      check_held(&b);
      freeReplyObject(reply);
    }
  }
  if (failed && b.refused) {
    if (resil_redis_bound_feed(&b, "+OK\r\n", 5) != REDIS_ERR) abort(); /* final */
    resil_err err;
    resil_status st = resil_redis_bound_error(&b, "fuzz", "receive", &err);
    resil_status want = b.refused == RESIL_REDIS_REFUSED_BYTES ? RESIL_E_CALLER : RESIL_E_FAILURE;
    const char *names = b.refused == RESIL_REDIS_REFUSED_BYTES   ? "max_reply_bytes"
                        : b.refused == RESIL_REDIS_REFUSED_DEPTH ? "deeper than"
                                                                 : "more than";
    if (st != want || err.status != want || !strstr(err.msg, names)) {
      fprintf(stderr, "refusal %d: %s %s\n", (int)b.refused, resil_status_name(st), err.msg);
      abort();
    }
  } else if (resil_redis_bound_error(&b, "fuzz", "receive", NULL) != RESIL_OK) {
    abort();
  }
  resil_redis_bound_end(&b);
  redisReaderFree(rd);
  return 0;
}
