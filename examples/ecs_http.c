/* ecs_http: see ecs_http.h. */
#include "ecs_http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define METHOD_MAX 32

static bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL); /* strchr would find the NUL */
}

/* A field-value byte: visible ASCII, space, tab, or obs-text (>= 0x80). */
static bool is_vchar_or_ws(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

ssize_t ecs_head_end(const char *buf, size_t len, size_t *scanned) {
  /* The request line must start with a method token and a space: refuse garbage (a TLS
   * handshake, a binary protocol) at once instead of waiting for a line end. */
  size_t m = 0;
  while (m < len && m <= METHOD_MAX && is_tchar((unsigned char)buf[m])) m++;
  if (m > METHOD_MAX || (m < len && (m == 0 || buf[m] != ' '))) return -400;
  size_t i = *scanned;
  for (; i < len; i++) {
    char c = buf[i];
    if (c == '\0') return -400;
    if (c == '\r') {
      if (i + 1 == len) break; /* its LF may still come */
      if (buf[i + 1] != '\n') return -400; /* a bare CR */
    } else if (c == '\n') {
      if (i == 0 || buf[i - 1] != '\r') return -400; /* a bare LF */
      if (i >= 3 && memcmp(buf + i - 3, "\r\n\r\n", 4) == 0) {
        *scanned = i + 1;
        return (ssize_t)(i + 1);
      }
    }
  }
  *scanned = i;
  return 0;
}

bool ecs_field_value_ok(const char *v, size_t len, size_t max) {
  if (!v || len > max) return false;
  for (size_t i = 0; i < len; i++)
    if (!is_vchar_or_ws((unsigned char)v[i])) return false;
  return true;
}

/* "HTTP/1.1 ..." request line in line[0..len): split it into rq. */
static int parse_request_line(char *line, size_t len, ecs_request *rq) {
  size_t i = 0;
  while (i < len && is_tchar((unsigned char)line[i])) i++;
  if (i == 0 || i > METHOD_MAX || i >= len || line[i] != ' ') return 400;
  line[i] = '\0';
  rq->method = line;
  size_t t = ++i;
  while (i < len && line[i] != ' ') {
    unsigned char c = (unsigned char)line[i];
    if (c <= 0x20 || c >= 0x7f) return 400; /* no control, no space, no raw non-ASCII */
    i++;
  }
  if (i == t || i >= len || line[t] != '/') return 400;
  line[i] = '\0';
  rq->path = line + t;
  i++;
  if (len - i != 8 || (memcmp(line + i, "HTTP/1.1", 8) != 0 && memcmp(line + i, "HTTP/1.0", 8) != 0))
    return 400;
  rq->query = strchr(rq->path, '?');
  if (rq->query) *rq->query++ = '\0';
  return 0;
}

int ecs_parse_head(char *buf, size_t head_len, size_t max_body, ecs_request *rq) {
  memset(rq, 0, sizeof *rq);
  if (head_len < 4 || memcmp(buf + head_len - 4, "\r\n\r\n", 4) != 0) return 400;
  /* Every line ends in CR LF (ecs_head_end checked there is no bare CR or LF, but the parser
   * does not rely on it). */
  char *p = buf, *end = buf + head_len - 2; /* the blank line's CR LF starts at end */
  char *eol = memchr(p, '\n', (size_t)(end + 2 - p));
  if (!eol || eol == p || eol[-1] != '\r') return 400;
  int bad = parse_request_line(p, (size_t)(eol - 1 - p), rq);
  if (bad) return bad;
  bool have_len = false;
  for (p = eol + 1; p < end; p = eol + 1) {
    eol = memchr(p, '\n', (size_t)(end + 2 - p));
    if (!eol || eol == p || eol[-1] != '\r') return 400;
    char *le = eol - 1; /* the CR */
    if (p[0] == ' ' || p[0] == '\t') return 400; /* obs-fold */
    char *n = p;
    while (n < le && is_tchar((unsigned char)*n)) n++;
    if (n == p || n == le || *n != ':') return 400; /* "TE :" or no colon */
    size_t nlen = (size_t)(n - p);
    char *v = n + 1, *ve = le;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    for (char *c = v; c < ve; c++)
      if (!is_vchar_or_ws((unsigned char)*c)) return 400; /* NUL, CR, other controls */
    if (nlen == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
      if (have_len || v == ve) return 400; /* a second Content-Length, even an equal one */
      have_len = true;
      unsigned long long len = 0;
      for (char *d = v; d < ve; d++) {
        if (*d < '0' || *d > '9') return 400;
        if (len <= max_body) len = len * 10 + (unsigned)(*d - '0'); /* stops growing past max */
      }
      if (len > max_body) return 413;
      rq->content_length = (size_t)len;
    } else if (nlen == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
      return 400; /* chunked bodies are not read by this server */
    } else if (nlen == 12 && strncasecmp(p, "grpc-timeout", 12) == 0) {
      resil_deadline theirs;
      if (resil_grpc_timeout_parse(v, (size_t)(ve - v), &theirs, NULL) != RESIL_OK) return 400;
      rq->deadline = rq->has_deadline ? resil_deadline_min(rq->deadline, theirs) : theirs;
      rq->has_deadline = true;
    }
  }
  return 0;
}

const char *ecs_reason(int code) {
  switch (code) {
  case 200: return "OK";                    case 204: return "No Content";
  case 400: return "Bad Request";           case 404: return "Not Found";
  case 405: return "Method Not Allowed";    case 408: return "Request Timeout";
  case 413: return "Content Too Large";     case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error"; case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";   case 504: return "Gateway Timeout";
  default: return code < 400 ? "OK" : "Error";
  }
}

/* extra: zero or more complete lines of field-value bytes, each ending in CR LF. */
static bool extra_ok(const char *e) {
  for (size_t i = 0; e[i]; i++) {
    if (e[i] == '\r' && e[i + 1] == '\n' && i > 0 && e[i - 1] != '\n') { /* no blank line */
      i++;
      continue;
    }
    if (!is_vchar_or_ws((unsigned char)e[i])) return false;
  }
  size_t n = strlen(e);
  return n == 0 || (n >= 2 && e[n - 2] == '\r' && e[n - 1] == '\n');
}

ssize_t ecs_format_head(char *out, size_t cap, int code, const char *ctype, size_t body_len,
                        const char *extra) {
  if (!out || !cap || code < 100 || code > 999 || !ctype ||
      !ecs_field_value_ok(ctype, strlen(ctype), ECS_MAX_CTYPE) || (extra && !extra_ok(extra)))
    return -1;
  /* snprintf returns the length it WOULD have written: check it before sending a byte. */
  int n = snprintf(out, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n%s\r\n",
                   code, ecs_reason(code), ctype, body_len, extra ? extra : "");
  if (n < 0 || (size_t)n >= cap) return -1;
  return n;
}

/* Append s JSON-escaped to out[*n..), leaving room for `keep` bytes after it. */
static void json_escape(char *out, size_t cap, size_t *n, const char *s, size_t keep) {
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    size_t need = (*c == '"' || *c == '\\') ? 2 : *c < 0x20 || *c == 0x7f ? 6 : 1;
    if (*n + need + keep > cap) return;
    if (need == 2) {
      out[(*n)++] = '\\';
      out[(*n)++] = (char)*c;
    } else if (need == 6) {
      snprintf(out + *n, 7, "\\u%04x", *c);
      *n += 6;
    } else {
      out[(*n)++] = (char)*c;
    }
  }
}

size_t ecs_json_error(char *out, size_t cap, const char *name, const char *detail) {
  size_t n = 0;
  if (cap < 64) {
    if (cap) out[0] = '\0';
    return 0;
  }
  memcpy(out, "{\"error\":\"", 10);
  n = 10;
  json_escape(out, cap, &n, name ? name : "", 32 - 10);
  memcpy(out + n, "\",\"detail\":\"", 12);
  n += 12;
  json_escape(out, cap, &n, detail ? detail : "", 3);
  memcpy(out + n, "\"}", 3);
  return n + 2;
}
