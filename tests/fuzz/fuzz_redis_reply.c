/* libFuzzer harness: Redis reply classification, on replies parsed by
 * hiredis's redisReader from the fuzz bytes (so hiredis 0.14's parser is
 * fuzzed too, with the default reply functions the adapter's connections
 * use).
 *
 *   byte 0  how the bytes arrive: 0 = in one redisReaderFeed, else in feeds
 *           of that many bytes, taking every complete reply after each
 *   rest    what the server sent
 *
 * Checks: no crash, leak or undefined behaviour; resil_redis_classify_reply
 * is RESIL_OK for every non-error reply and, for error replies, exactly what
 * the documented first-word table gives (an independent reference below),
 * at every nesting level; NULL is RESIL_E_INVALID.
 *
 * FIXED FINDING (see tests/fuzz/crashes/README.md): hiredis 0.14 allocates a
 * multi-bulk reply's element array up front from the announced count
 * ("*2147483647\r\n" is a 16 GiB calloc) and has no limit on it (hiredis 1.x
 * added reader->maxelements). The adapter now installs reply functions that
 * refuse more than 1M elements on every connection (adapters/redis/redis.c,
 * tested by tests/integration/redis/test_redis_hostile.c). This harness
 * drives a bare redisReader, so it applies the same bound itself
 * (FUZZ_MAX_ELEMENTS); RESIL_FUZZ_REDIS_UNBOUNDED=1 removes it to show the
 * hiredis behaviour. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/hiredis.h>

#include "resil/redis.h"

#define FUZZ_MAX_ELEMENTS (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static redisReplyObjectFunctions bounded_fn;
static void *(*default_create_array)(const redisReadTask *, int);
static bool unbounded;

static void *bounded_create_array(const redisReadTask *task, int elements) {
  if (elements > (int)FUZZ_MAX_ELEMENTS) return NULL;
  return default_create_array(task, elements);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *u = getenv("RESIL_FUZZ_REDIS_UNBOUNDED");
  unbounded = u && *u && strcmp(u, "0") != 0;
  /* hiredis keeps its default functions static: copy them from a reader. */
  redisReader *rd = redisReaderCreate();
  if (!rd) abort();
  bounded_fn = *rd->fn;
  redisReaderFree(rd);
  default_create_array = bounded_fn.createArray;
  bounded_fn.createArray = bounded_create_array;
  return 0;
}

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

static void check(const redisReply *r, int depth) {
  if (!r || depth > 10000) abort();
  resil_status got = resil_redis_classify_reply(r);
  resil_status want = reference(r);
  if (got != want) {
    fprintf(stderr, "classify '%.*s' (type %d): got %s, want %s\n", (int)(r->len > 80 ? 80 : r->len),
            r->str ? r->str : "", r->type, resil_status_name(got), resil_status_name(want));
    abort();
  }
  if (r->type == REDIS_REPLY_ARRAY)
    for (size_t i = 0; i < r->elements; i++) check(r->element[i], depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t step = data[0];
  data++;
  size--;
  if (step == 0) step = size ? size : 1;
  if (resil_redis_classify_reply(NULL) != RESIL_E_INVALID) abort();

  redisReader *rd = unbounded ? redisReaderCreate()
                              : redisReaderCreateWithFunctions(&bounded_fn);
  if (!rd) return 0;
  bool failed = false;
  for (size_t off = 0; off < size && !failed; off += step) {
    size_t n = size - off < step ? size - off : step;
    if (redisReaderFeed(rd, (const char *)data + off, n) != REDIS_OK) break;
    for (;;) {
      void *reply = NULL;
      if (redisReaderGetReply(rd, &reply) != REDIS_OK) {
        /* A protocol error is sticky: the adapter closes the connection. */
        if (reply) abort();
        failed = true;
        break;
      }
      if (!reply) break; /* needs more bytes */
      check(reply, 0);
      freeReplyObject(reply);
    }
  }
  redisReaderFree(rd);
  return 0;
}
