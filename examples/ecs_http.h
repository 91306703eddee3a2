/* ecs_http: the small, strict HTTP/1.1 pieces of examples/ecs_service.c that touch bytes a
 * client or an upstream chose - the request-head parser, the response-head writer and the
 * JSON error body - kept apart from the sockets so that a fuzzer (tests/fuzz/fuzz_ecs_http.c)
 * can drive them directly. Pure functions: no I/O, no allocation, no global state; every
 * output is written into a caller's buffer of a given size and never past it.
 *
 * The parser follows RFC 9112 strictly and answers 400 where the RFC allows a server to be
 * lenient: every line must end in CR LF (a bare LF or a bare CR is an error); field names are
 * tokens with nothing between the name and the colon ("TE :" is an error); no obs-fold (a line
 * starting with a space or tab); no control character other than tab in a field value (so no
 * NUL); one Content-Length at most; no Transfer-Encoding (this server reads no chunked body);
 * only HTTP/1.0 and HTTP/1.1. These are the same rules the library's admin endpoint
 * (src/admin.c) applies, which has no public parser to share: the example uses only resil's
 * public API, as a service would. */
#ifndef ECS_HTTP_H
#define ECS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <resil/resil.h>

#define ECS_MAX_CTYPE 256 /* longest Content-Type forwarded from upstream */

typedef struct ecs_request {
  char *method, *path, *query; /* NUL-terminated, inside the caller's buffer; query may be NULL */
  size_t content_length;       /* 0 when absent */
  bool has_deadline;           /* an inbound grpc-timeout was given: */
  resil_deadline deadline;     /* ... and ends here */
} ecs_request;

/* Where the request head in buf[0..len) ends. Returns the head's length including the final
 * CR LF CR LF (> 0), 0 when more bytes are needed, or -400 when what arrived can never become
 * a valid head (a bare LF or CR, a NUL, a request line that does not start "token SP").
 * *scanned (0 before the first call for a request) remembers how far the bytes were checked,
 * so that a request trickled in byte by byte costs linear time, not quadratic. */
ssize_t ecs_head_end(const char *buf, size_t len, size_t *scanned);

/* Parse the head buf[0..head_len) (head_len from ecs_head_end) in place: NUL bytes are written
 * into buf and rq's strings point into it. max_body: larger Content-Lengths give 413. Returns 0,
 * or the HTTP status to answer: 400 (malformed, or a Transfer-Encoding), 413 (body too large).
 * grpc-timeout values are parsed with resil_grpc_timeout_parse() (relative to now). */
int ecs_parse_head(char *buf, size_t head_len, size_t max_body, ecs_request *rq);

/* True when v (len bytes) may be sent as a header value: no control character but tab, no
 * DEL, not longer than max. An upstream's value that fails this is never forwarded. */
bool ecs_field_value_ok(const char *v, size_t len, size_t max);

/* The reason phrase of an HTTP status this server sends ("Error"/"OK" for others). */
const char *ecs_reason(int code);

/* Write a response head into out[0..cap): status line, Content-Type, Content-Length,
 * Connection: close, then extra (more complete "Name: value\r\n" lines written by this
 * program, or NULL), then the blank line. ctype must pass ecs_field_value_ok(). code must be
 * 100..999. Returns the head's length (< cap, NUL-terminated), or -1 when it does not fit or
 * an argument is invalid: nothing of it may then be sent. */
ssize_t ecs_format_head(char *out, size_t cap, int code, const char *ctype, size_t body_len,
                        const char *extra);

/* {"error":"<name>","detail":"<detail, JSON-escaped>"} into out[0..cap) (cap >= 64),
 * NUL-terminated; a detail too long for cap is cut (never mid-escape). Returns its length. */
size_t ecs_json_error(char *out, size_t cap, const char *name, const char *detail);

#endif
