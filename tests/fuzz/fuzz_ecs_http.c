/* libFuzzer harness: examples/ecs_service.c's request parser and its proxy path, i.e. the
 * pure functions of examples/ecs_http.c (linked in) that see bytes chosen by a client or an
 * upstream:
 *
 *   byte 0 = 0..127  the rest is a request as a client sends it, arriving in reads of
 *                    (byte 0 % 16) + 1 bytes: ecs_head_end() after each read, as the
 *                    example's fill() does, then ecs_parse_head() on a complete head
 *   byte 0 >= 128    the rest is an upstream's response: byte 1 its status (100 + byte * 4),
 *                    bytes 2.. a Content-Type value; the example's proxy path checks it with
 *                    ecs_field_value_ok() and writes the client's head with
 *                    ecs_format_head() into a buffer of the example's size, and an error
 *                    body with ecs_json_error() carrying the same bytes as the detail
 *
 * Checks (abort() on failure): no crash, overflow or undefined behaviour; ecs_head_end()
 * returns the same end whatever the read sizes; a parsed request has a token method, a path
 * starting with '/' of visible ASCII, a Content-Length within the limit; a response head is
 * never longer than its buffer, is printable with CR only before LF, has exactly the lines it
 * should (an upstream value can never add a header), and ends with the blank line; an error
 * body is a JSON object whose strings hold no raw control character. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../examples/ecs_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEAD 8192
#define MAX_BODY 65536

static void fuzz_request(const uint8_t *data, size_t size, size_t chunk) {
  static char buf[MAX_HEAD + 1];
  size_t n = size < MAX_HEAD ? size : MAX_HEAD;
  /* all at once */
  memcpy(buf, data, n);
  size_t scanned = 0;
  ssize_t whole = ecs_head_end(buf, n, &scanned);
  if (whole > (ssize_t)n || scanned > n) abort();
  /* in reads of `chunk` bytes, as they arrive: the same answer */
  ssize_t end = 0;
  scanned = 0;
  for (size_t have = 0; have < n && end == 0;) {
    have += chunk < n - have ? chunk : n - have;
    end = ecs_head_end(buf, have, &scanned);
  }
  if (end != whole) abort();
  if (end <= 0) return;
  ecs_request rq;
  int code = ecs_parse_head(buf, (size_t)end, MAX_BODY, &rq);
  if (code != 0 && code != 400 && code != 413) abort();
  if (code) return;
  if (!rq.method || !*rq.method || !rq.path || rq.path[0] != '/') abort();
  if (rq.content_length > MAX_BODY) abort();
  for (const char *c = rq.path; *c; c++)
    if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) abort();
  if (rq.method + strlen(rq.method) > buf + end || rq.path + strlen(rq.path) > buf + end) abort();
}

static void check_head(const char *h, size_t n, size_t cap, int lines) {
  if (n >= cap || h[n] != '\0' || strlen(h) != n) abort();
  if (n < 4 || memcmp(h + n - 4, "\r\n\r\n", 4) != 0) abort();
  int crlf = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)h[i];
    if (c == '\r') {
      if (h[i + 1] != '\n') abort();
      crlf++;
    } else if (c == '\n') {
      if (i == 0 || h[i - 1] != '\r') abort();
    } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
      abort();
    }
  }
  /* status line + Content-Type + Content-Length + Connection + extra + blank line */
  if (crlf != lines) abort();
}

static void fuzz_proxy(const uint8_t *data, size_t size) {
  if (size < 1) return;
  int status = 100 + data[0] * 4; /* 100..1120: some invalid */
  char ctype[2048];
  size_t cl = size - 1 < sizeof ctype - 1 ? size - 1 : sizeof ctype - 1;
  memcpy(ctype, data + 1, cl);
  ctype[cl] = '\0'; /* curl hands the value over as a C string */
  char head[1024];
  bool ok = ecs_field_value_ok(ctype, strlen(ctype), ECS_MAX_CTYPE);
  ssize_t n = ecs_format_head(head, sizeof head, status, ctype, 2, NULL);
  if (!ok || status > 999) {
    if (n != -1) abort(); /* never a head with such a value */
  } else {
    if (n < 0) abort(); /* a clean value of <= 256 bytes always fits */
    check_head(head, (size_t)n, sizeof head, 5);
  }
  /* the example's 503 with Retry-After, and its 405 with Allow: one extra line each */
  n = ecs_format_head(head, sizeof head, 503, "application/json", cl, "Retry-After: 7\r\n");
  if (n < 0) abort();
  check_head(head, (size_t)n, sizeof head, 6);
  /* extra lines that could end the head early or smuggle a control are refused */
  if (ecs_format_head(head, sizeof head, 200, "text/plain", 0, "A: 1\r\n\r\nB: 2\r\n") != -1 ||
      ecs_format_head(head, sizeof head, 200, "text/plain", 0, "A: 1\rB: 2\r\n") != -1)
    abort();
  /* the error body, with the upstream's bytes as the detail */
  char json[1024];
  size_t jl = ecs_json_error(json, sizeof json, "failure", ctype);
  if (jl >= sizeof json || json[jl] != '\0' || strlen(json) != jl) abort();
  if (memcmp(json, "{\"error\":\"failure\",\"detail\":\"", 29) != 0) abort();
  if (jl < 31 || memcmp(json + jl - 2, "\"}", 2) != 0) abort();
  bool esc = false;
  for (size_t i = 29; i + 2 < jl; i++) {
    unsigned char c = (unsigned char)json[i];
    if (c < 0x20) abort();
    if (esc) {
      if (!strchr("\"\\u", c)) abort();
      esc = false;
    } else if (c == '\\') {
      esc = true;
    } else if (c == '"') {
      abort(); /* an unescaped quote would end the string early */
    }
  }
  if (esc) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  if (data[0] < 128)
    fuzz_request(data + 1, size - 1, (size_t)(data[0] % 16) + 1);
  else
    fuzz_proxy(data + 1, size - 1);
  return 0;
}
