/* libFuzzer harness: the admin endpoint's request handling.
 *
 * src/admin.c has no public parsing function: resil_admin_start() serves a
 * socket, and fuzzing over a loopback connection would run a few thousand
 * inputs a second. Its request handling is the static examine() (request
 * line, end of headers, header checks, routing, the response), which
 * on_readable() calls after every read. This harness compiles admin.c into
 * itself (#include below; the library's own admin.o is then never linked)
 * and drives examine() the way the admin thread does, on a connection
 * struct with no socket:
 *
 *   byte 0  max_request_bytes: 256, 1024, 8192 (default) or 65536; bit 2
 *           sets a config_json_fn so /config is routed too
 *   byte 1  how the request arrives: 0 = in one read, else in reads of
 *           that many bytes, examine() after each, as on_readable() does;
 *           a request still incomplete at the end times out (on_timeout)
 *   rest    the bytes the client sent
 *
 * Checks: no crash, leak or undefined behaviour; a response is queued once
 * the request is complete or bad (never more than max_request_bytes read);
 * it is a well-formed HTTP/1.1 response with one of the documented status
 * codes, a printable head, "Connection: close", and a Content-Length equal
 * to the body sent (or no body, for HEAD). */
#include "../../src/admin.c"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static resil_status fake_config(void *ctx, char **out) {
  (void)ctx;
  *out = strdup("{\"hash\":\"0123456789abcdef\"}");
  return *out ? RESIL_OK : RESIL_E_NOMEM;
}

static void check_response(const conn *c, const uint8_t *req, size_t reqlen) {
  if (!c->out || c->outlen < 17 || c->outoff != 0) abort();
  const char *o = c->out;
  if (memcmp(o, "HTTP/1.1 ", 9) != 0) abort();
  int code = atoi(o + 9);
  switch (code) {
    case 200: case 400: case 404: case 405: case 408: case 413: case 431: case 500: case 503:
      break;
    default: abort();
  }
  const char *end = NULL;
  for (size_t i = 0; i + 4 <= c->outlen; i++)
    if (memcmp(o + i, "\r\n\r\n", 4) == 0) {
      end = o + i + 4;
      break;
    }
  if (!end) abort();
  size_t head_len = (size_t)(end - o);
  /* The head is printable ASCII and CR LF only: nothing of the request is
   * echoed into it. */
  for (size_t i = 0; i < head_len; i++) {
    unsigned char ch = (unsigned char)o[i];
    if (ch != '\r' && ch != '\n' && (ch < 0x20 || ch > 0x7e)) abort();
  }
  if (!memmem(o, head_len, "\r\nConnection: close\r\n", 21)) abort();
  const char *cl = memmem(o, head_len, "\r\nContent-Length: ", 18);
  if (!cl) abort();
  size_t declared = strtoul(cl + 18, NULL, 10);
  size_t body = c->outlen - head_len;
  /* HEAD gets the head only; which errors a HEAD request gets without a
   * body depends on how far it was parsed, so for HEAD accept either. */
  bool head = reqlen >= 5 && memcmp(req, "HEAD ", 5) == 0;
  if (body != declared && !(head && body == 0)) abort();
  if (!head && body != declared) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  static const uint32_t maxes[] = {256, 1024, 8192, 65536};
  resil_admin_config_init(&adm_cfg);
  adm_cfg.max_request_bytes = maxes[data[0] & 3];
  adm_cfg.config_json_fn = (data[0] & 4) ? fake_config : NULL;
  size_t step = data[1];
  const uint8_t *req = data + 2;
  size_t len = size - 2;
  if (step == 0) step = len ? len : 1;

  conn c;
  memset(&c, 0, sizeof c);
  c.fd = -1;
  c.st = C_READ;
  c.in = malloc(adm_cfg.max_request_bytes + 1);
  if (!c.in) return 0;

  size_t off = 0;
  while (c.st == C_READ) {
    size_t room = adm_cfg.max_request_bytes - c.inlen;
    size_t n = len - off < step ? len - off : step;
    if (n > room) n = room;
    if (n == 0) break; /* no more input, or the buffer is full */
    memcpy(c.in + c.inlen, req + off, n);
    c.inlen += n;
    off += n;
    examine(&c);
  }
  if (c.inlen > adm_cfg.max_request_bytes) abort();
  if (c.st == C_READ) {
    /* A full buffer without the end of the headers must have been refused. */
    if (c.inlen == adm_cfg.max_request_bytes) abort();
    on_timeout(&c); /* the client stopped sending: 408 */
    if (c.st != C_WRITE) abort();
    if (atoi(c.out + 9) != 408) abort();
  }
  if (c.st != C_WRITE) abort();
  check_response(&c, req, len);
  conn_close(&c); /* fd -1: frees in and out only */
  return 0;
}
