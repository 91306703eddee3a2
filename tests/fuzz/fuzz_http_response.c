/* libFuzzer harness: how the HTTP adapter takes in a response.
 *
 * include/resil/http.h exposes no classification or Retry-After parsing
 * function: the status classification is inline in the adapter's attempt()
 * (a few integer comparisons) and Retry-After is parsed by libcurl
 * (CURLINFO_RETRY_AFTER). What the adapter itself parses from the network
 * is the response: its libcurl header callback (on_header: splits
 * "Name: value" lines into a scratch buffer, bounded by max_response_bytes
 * and MAX_HEADER_LINES, restarting on each "HTTP/" status line),
 * take_headers (hands them to the response), the body callback (on_body:
 * grows the body, bounded by max_response_bytes) and
 * resil_http_response_header(). Those are static, so this harness compiles
 * adapters/http/http.c into itself and calls them as libcurl would:
 *
 *   byte 0  max_response_bytes: 16, 256, 4096 or 8 MiB (the default)
 *   byte 1  body delivery: 0 = one callback, else chunks of that many bytes
 *   rest    header lines (split after each '\n', as libcurl delivers them)
 *           up to the first NUL byte, then the body
 *
 * Checks: no crash, leak or undefined behaviour; the transfer is aborted
 * (callback returns short) exactly when headers or body exceed the limit;
 * otherwise the headers are those of the last response, in order, names
 * without ':' and values trimmed (an independent reference below), at most
 * MAX_HEADER_LINES of them; the body is the bytes sent, NUL-terminated;
 * resil_http_response_header() finds the first header of a name, ignoring
 * case. */
#include "../../adapters/http/http.c"

#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static CURL *easy; /* for on_body's CURLINFO_CONTENT_LENGTH_DOWNLOAD_T; never performs */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  easy = curl_easy_init();
  if (!easy) abort();
  return 0;
}

typedef struct ref_header {
  const char *name, *value;
  size_t nl, vl;
} ref_header;

/* The reference: the last response's header lines, as the callback is
 * documented to keep them. */
static size_t reference(const char *h, size_t hl, ref_header *out, size_t max_out) {
  size_t n = 0;
  for (size_t off = 0; off < hl;) {
    const char *line = h + off;
    const char *nlp = memchr(line, '\n', hl - off);
    size_t len = nlp ? (size_t)(nlp - line) + 1 : hl - off;
    off += len;
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
      n = 0;
      continue;
    }
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n')) len--;
    if (!len || line[0] == ' ' || line[0] == '\t') continue;
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || n >= max_out) continue;
    const char *v = colon + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    out[n++] = (ref_header){line, v, (size_t)(colon - line), (size_t)(e - v)};
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  static const size_t maxes[] = {16, 256, 4096, DEFAULT_MAX_BODY};
  size_t max = maxes[data[0] & 3];
  size_t step = data[1];
  const char *in = (const char *)data + 2;
  size_t len = size - 2;
  const char *nul = memchr(in, 0, len);
  size_t hl = nul ? (size_t)(nul - in) : len;
  const char *body = nul ? nul + 1 : in + len;
  size_t bl = nul ? len - hl - 1 : 0;
  if (step == 0) step = bl ? bl : 1;

  http_conn hc;
  memset(&hc, 0, sizeof hc);
  hc.easy = easy;
  resil_http_response r;
  memset(&r, 0, sizeof r);
  xfer x = {.resp = &r, .hc = &hc, .max = max};

  bool aborted = false;
  size_t fed = 0;
  for (size_t off = 0; off < hl && !aborted;) {
    const char *nlp = memchr(in + off, '\n', hl - off);
    size_t n = nlp ? (size_t)(nlp - (in + off)) + 1 : hl - off;
    /* libcurl passes a writable buffer: give each line its own copy. */
    char *line = malloc(n);
    if (!line) abort();
    memcpy(line, in + off, n);
    size_t got = on_header(line, 1, n, &x);
    free(line);
    fed += n;
    if (got != n) aborted = true;
    off += n;
  }
  if (aborted != (fed > max)) abort();
  if (aborted && (!x.too_big || x.nomem)) abort();
  for (size_t off = 0; off < bl && !aborted;) {
    size_t n = bl - off < step ? bl - off : step;
    char *chunk = malloc(n);
    if (!chunk) abort();
    memcpy(chunk, body + off, n);
    size_t got = on_body(chunk, 1, n, &x);
    free(chunk);
    if (got != n) {
      aborted = true;
      if (!x.too_big || r.body_len + n <= max) abort();
    }
    off += n;
  }
  if (!aborted && bl > max) abort();

  if (!aborted) {
    if (!take_headers(&hc, &r)) abort();
    ref_header *ref = calloc(MAX_HEADER_LINES, sizeof *ref);
    if (!ref) abort();
    size_t want = reference(in, hl, ref, MAX_HEADER_LINES);
    if (r.nheaders != want) abort();
    for (size_t i = 0; i < want; i++) {
      const char *nm = r.headers[i].name, *v = r.headers[i].value;
      /* A name or value with a NUL byte inside reads shorter: compare the
       * C strings against the reference's prefix up to its first NUL. */
      if (strlen(nm) != strnlen(ref[i].name, ref[i].nl) || memcmp(nm, ref[i].name, strlen(nm)))
        abort();
      if (strlen(v) != strnlen(ref[i].value, ref[i].vl) || memcmp(v, ref[i].value, strlen(v)))
        abort();
    }
    if (want) {
      const char *first = resil_http_response_header(&r, r.headers[want - 1].name);
      size_t j = 0;
      while (strcasecmp(r.headers[j].name, r.headers[want - 1].name) != 0) j++;
      if (first != r.headers[j].value) abort();
    }
    free(ref);
    if (r.body_len != bl) abort();
    if (bl && (!r.body || memcmp(r.body, body, bl) != 0 || r.body[bl] != 0)) abort();
    resil_http_response_header(&r, "Retry-After");
  }
  resil_http_response_free(&r);
  free(hc.hbuf);
  free(hc.spans);
  return 0;
}
