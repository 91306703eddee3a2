/* Internal to libresil-redis (not installed): reading replies from a
 * hiredis 0.14 redisReader under bounds. redis.c drives every connection's
 * reads through these functions, and tests/fuzz/fuzz_redis_reply.c fuzzes
 * the same functions (it compiles reply.c itself: the library exports none
 * of this).
 *
 * hiredis 0.14 has no limits of its own beyond a nesting depth: it callocs
 * an array's elements from the announced count, and keeps a bulk string's
 * bytes in its buffer until the whole string is there. A bound watches one
 * reader for one call and refuses, at the first byte or object past it:
 *   - an array announcing more than RESIL_REDIS_MAX_REPLY_ELEMENTS elements
 *     (before hiredis allocates it);
 *   - an array nested deeper than RESIL_REDIS_MAX_REPLY_DEPTH;
 *   - more than max_bytes held for the call: the bytes of every reply object
 *     created since resil_redis_bound_begin() (counted with malloc's
 *     overhead, see RESIL_REDIS_REPLY_OBJ_COST) plus the bytes the reader
 *     buffers and has not parsed yet. Checked after every feed and at every
 *     object created, so it is exceeded by at most one feed's bytes.
 *     (While hiredis copies a complete bulk string out of its buffer, that
 *     string exists twice for an instant; that copy is not counted.)
 * A refusal is final for the reader: the connection must be destroyed.
 *
 * Not thread-safe for one reader (a connection is used by one thread at a
 * time); different readers are independent. */
#ifndef RESIL_REDIS_REPLY_H
#define RESIL_REDIS_REPLY_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "resil/adapter.h"

#define RESIL_REDIS_MAX_REPLY_ELEMENTS (1 << 20)
/* hiredis 0.14 itself refuses depth > 7 (its message says so, and parses at
 * most one level more); the adapter enforces 7 on its own so that the bound
 * stays whatever hiredis does. Redis's own replies nest at most 4-5 deep. */
#define RESIL_REDIS_MAX_REPLY_DEPTH 7
/* What one redisReply costs: the struct plus malloc's chunk overhead. */
#define RESIL_REDIS_REPLY_OBJ_COST (sizeof(redisReply) + 16)

typedef enum resil_redis_refusal {
  RESIL_REDIS_REFUSED_NONE = 0,
  RESIL_REDIS_REFUSED_ELEMENTS, /* detail: elements announced */
  RESIL_REDIS_REFUSED_DEPTH,    /* detail: depth of the refused array */
  RESIL_REDIS_REFUSED_BYTES     /* detail: bytes that would have been held */
} resil_redis_refusal;

typedef struct resil_redis_bound {
  redisReader *rd;
  size_t max_bytes;
  size_t objects; /* bytes held by reply objects created since _begin */
  resil_redis_refusal refused;
  long long detail;
} resil_redis_bound;

/* A reader (redisReaderCreateWithFunctions, hiredis's public reader API)
 * whose reply functions build ordinary redisReply objects (freeReplyObject
 * frees them) and check the bound of the call in progress first. NULL when
 * out of memory. A context's reader is replaced by one of these after
 * connecting (redisReaderFree the old one, set c->reader). */
redisReader *resil_redis_reader_new(void);

/* Start bounding rd's reads for one call: counters reset, max_bytes >= 1.
 * rd must come from resil_redis_reader_new() (another reader is read
 * without any check). */
void resil_redis_bound_begin(resil_redis_bound *b, redisReader *rd, size_t max_bytes);

/* Stop: rd forgets b. If rd's buffer is empty but large (a big reply was
 * read), it is released so an idle connection does not keep it. */
void resil_redis_bound_end(resil_redis_bound *b);

/* Bytes held now: reply objects plus unparsed buffered bytes. */
size_t resil_redis_bound_held(const resil_redis_bound *b);

/* Feed len bytes (len >= 1) into the reader. REDIS_ERR when the reader is
 * in error or the bytes would go past max_bytes (b->refused set; nothing is
 * appended then). */
int resil_redis_bound_feed(resil_redis_bound *b, const char *buf, size_t len);

/* redisReaderGetReply under the bound: REDIS_OK with *reply a complete
 * reply or NULL (more bytes needed); REDIS_ERR on a protocol error or a
 * refusal (b->refused set). */
int resil_redis_bound_get(resil_redis_bound *b, void **reply);

/* For a refusal: fill err with "<name>: <phase>: <why, naming the bound>"
 * and return its status: RESIL_E_CALLER for max_bytes (the reply is
 * well-formed, only larger than this dependency accepts: most likely the
 * caller asked for a huge value), RESIL_E_FAILURE for too many elements or
 * too deep a nesting (no sane Redis reply: the server is broken or
 * hostile). RESIL_OK (err untouched) when nothing was refused. */
resil_status resil_redis_bound_error(const resil_redis_bound *b, const char *name,
                                     const char *phase, resil_err *err);

#endif
