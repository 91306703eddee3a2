/* libFuzzer harness: the grpc-timeout header parser.
 *
 * The whole input is the header value (not NUL-terminated: the parser takes
 * a length). Checks: RESIL_OK exactly for 1..8 ASCII digits and one unit of
 * H M S m u n (an independent reference implementation), RESIL_E_INVALID
 * with a NUL-terminated message otherwise; a parsed deadline is set, lies
 * within the value (+/- clock slack) from now, and formats back through
 * resil_grpc_timeout_format into a value that parses again to a deadline no
 * later than the first. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "resil/deadline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t unit_ns(char u) {
  switch (u) {
    case 'H': return 3600000000000ull;
    case 'M': return 60000000000ull;
    case 'S': return 1000000000ull;
    case 'm': return 1000000ull;
    case 'u': return 1000ull;
    case 'n': return 1ull;
    default: return 0;
  }
}

/* The reference: the value in ns, or -1 if malformed. */
static int64_t reference(const char *s, size_t n) {
  if (n < 2 || n > 9) return -1;
  uint64_t v = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  uint64_t u = unit_ns(s[n - 1]);
  if (!u) return -1;
  /* 99999999 H is about 3.6e20 ns: saturates. */
  if (v > (uint64_t)INT64_MAX / u) return INT64_MAX;
  return (int64_t)(v * u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A private copy of exactly size bytes, so ASan catches any read past it. */
  char *v = malloc(size ? size : 1);
  if (!v) return 0;
  memcpy(v, data, size);
  int64_t want = reference(v, size);

  resil_err err;
  memset(&err, 0, sizeof err);
  resil_deadline d = {0};
  uint64_t t0 = resil_now_ns();
  resil_status st = resil_grpc_timeout_parse(v, size, &d, &err);
  uint64_t t1 = resil_now_ns();
  if (want < 0) {
    if (st != RESIL_E_INVALID || err.status != RESIL_E_INVALID) abort();
    if (!memchr(err.msg, 0, sizeof err.msg) || !err.msg[0]) abort();
    free(v);
    return 0;
  }
  if (st != RESIL_OK || !resil_deadline_is_set(d)) abort();
  /* now + want, saturating; allow the clock to move between the calls. */
  uint64_t lo = (uint64_t)want > UINT64_MAX - t0 ? UINT64_MAX : t0 + (uint64_t)want;
  uint64_t hi = (uint64_t)want > UINT64_MAX - t1 ? UINT64_MAX : t1 + (uint64_t)want;
  if (want < INT64_MAX / 2 && (d.at_ns < lo || d.at_ns > hi)) abort();

  char buf[16];
  memset(buf, 'x', sizeof buf);
  if (resil_grpc_timeout_format(d, buf, 10, &err) != RESIL_OK) abort();
  size_t bl = strnlen(buf, 10);
  if (bl == 10) abort(); /* not NUL-terminated within the 10 bytes */
  if (buf[10] != 'x') abort(); /* wrote past size */
  if (reference(buf, bl) < 0) abort(); /* not a valid grpc-timeout */
  resil_deadline d2 = {0};
  if (resil_grpc_timeout_parse(buf, bl, &d2, &err) != RESIL_OK) abort();
  /* Formatting rounds down, so the round trip never extends the deadline
   * (beyond the time that passed between the two parses). */
  uint64_t t2 = resil_now_ns();
  if (want < INT64_MAX / 2 && d2.at_ns > d.at_ns + (t2 - t0)) abort();

  /* Undersized buffers are refused, never overrun. */
  char small[9];
  if (resil_grpc_timeout_format(d, small, sizeof small, &err) != RESIL_E_INVALID) abort();
  free(v);
  return 0;
}
