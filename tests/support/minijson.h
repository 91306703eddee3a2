/* A tiny strict JSON parser for tests (RFC 8259 subset: no \u surrogate
 * decoding beyond copying the escape). Builds a tree; free with mj_free. */
#ifndef RESIL_TEST_MINIJSON_H
#define RESIL_TEST_MINIJSON_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef enum { MJ_NULL, MJ_BOOL, MJ_NUM, MJ_STR, MJ_ARR, MJ_OBJ } mj_type;

typedef struct mj {
  mj_type t;
  bool b;
  double num;
  bool integer; /* MJ_NUM written without fraction or exponent */
  char *str;    /* MJ_STR */
  struct mj **items; /* MJ_ARR values / MJ_OBJ values */
  char **keys;       /* MJ_OBJ */
  size_t n;
} mj;

typedef struct mj_parser {
  const char *p, *end;
  bool bad;
} mj_parser;

static void mj_free(mj *v) {
  if (!v) return;
  for (size_t i = 0; i < v->n; i++) {
    mj_free(v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->str);
  free(v);
}

static void mj_ws(mj_parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static mj *mj_value(mj_parser *ps, int depth);

static char *mj_string(mj_parser *ps) {
  if (ps->p >= ps->end || *ps->p != '"') {
    ps->bad = true;
    return NULL;
  }
  ps->p++;
  size_t cap = 16, len = 0;
  char *s = malloc(cap);
  while (ps->p < ps->end && *ps->p != '"') {
    char c = *ps->p++;
    if ((unsigned char)c < 0x20) {
      ps->bad = true;
      break;
    }
    if (c == '\\') {
      if (ps->p >= ps->end) {
        ps->bad = true;
        break;
      }
      char e = *ps->p++;
      switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
          if (ps->end - ps->p < 4) {
            ps->bad = true;
            break;
          }
          unsigned v = 0;
          for (int i = 0; i < 4; i++) {
            char h = *ps->p++;
            v <<= 4;
            if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
            else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
            else ps->bad = true;
          }
          c = v < 0x80 ? (char)v : '?';
          break;
        }
        default: ps->bad = true;
      }
    }
    if (len + 2 > cap) s = realloc(s, cap *= 2);
    s[len++] = c;
  }
  if (ps->p >= ps->end) ps->bad = true;
  else ps->p++;
  s[len] = 0;
  return s;
}

static mj *mj_new(mj_type t) {
  mj *v = calloc(1, sizeof *v);
  v->t = t;
  return v;
}

static void mj_push(mj *v, char *key, mj *item) {
  v->items = realloc(v->items, (v->n + 1) * sizeof *v->items);
  if (v->t == MJ_OBJ) {
    v->keys = realloc(v->keys, (v->n + 1) * sizeof *v->keys);
    v->keys[v->n] = key;
  }
  v->items[v->n++] = item;
}

static mj *mj_value(mj_parser *ps, int depth) {
  mj_ws(ps);
  if (ps->p >= ps->end || depth > 32) {
    ps->bad = true;
    return NULL;
  }
  char c = *ps->p;
  if (c == '{' || c == '[') {
    bool obj = c == '{';
    mj *v = mj_new(obj ? MJ_OBJ : MJ_ARR);
    ps->p++;
    mj_ws(ps);
    if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) {
      ps->p++;
      return v;
    }
    for (;;) {
      char *key = NULL;
      mj_ws(ps);
      if (obj) {
        key = mj_string(ps);
        mj_ws(ps);
        if (ps->bad || ps->p >= ps->end || *ps->p != ':') {
          ps->bad = true;
          free(key);
          return v;
        }
        ps->p++;
      }
      mj *item = mj_value(ps, depth + 1);
      mj_push(v, key, item);
      if (ps->bad) return v;
      mj_ws(ps);
      if (ps->p < ps->end && *ps->p == ',') {
        ps->p++;
        continue;
      }
      if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) {
        ps->p++;
        return v;
      }
      ps->bad = true;
      return v;
    }
  }
  if (c == '"') {
    mj *v = mj_new(MJ_STR);
    v->str = mj_string(ps);
    return v;
  }
  if (!strncmp(ps->p, "true", 4) || !strncmp(ps->p, "false", 5) || !strncmp(ps->p, "null", 4)) {
    mj *v = mj_new(c == 'n' ? MJ_NULL : MJ_BOOL);
    v->b = c == 't';
    ps->p += c == 'f' ? 5 : 4;
    return v;
  }
  /* number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
  const char *s = ps->p;
  bool integer = true;
  if (*ps->p == '-') ps->p++;
  if (ps->p < ps->end && *ps->p == '0') ps->p++;
  else if (ps->p < ps->end && *ps->p >= '1' && *ps->p <= '9')
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  else {
    ps->bad = true;
    return NULL;
  }
  if (ps->p < ps->end && *ps->p == '.') {
    integer = false;
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') ps->bad = true;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    integer = false;
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') ps->bad = true;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  mj *v = mj_new(MJ_NUM);
  char tmp[64];
  size_t l = (size_t)(ps->p - s) < sizeof tmp - 1 ? (size_t)(ps->p - s) : sizeof tmp - 1;
  memcpy(tmp, s, l);
  tmp[l] = 0;
  v->num = strtod(tmp, NULL);
  v->integer = integer;
  return v;
}

/* Parse exactly one JSON value spanning [s, s+len); NULL if malformed. */
static mj *mj_parse(const char *s, size_t len) {
  mj_parser ps = {s, s + len, false};
  mj *v = mj_value(&ps, 0);
  mj_ws(&ps);
  if (ps.bad || ps.p != ps.end) {
    mj_free(v);
    return NULL;
  }
  return v;
}

/* Member of an object by key, or NULL. */
static mj *mj_get(const mj *o, const char *key) {
  if (!o || o->t != MJ_OBJ) return NULL;
  for (size_t i = 0; i < o->n; i++)
    if (!strcmp(o->keys[i], key)) return o->items[i];
  return NULL;
}

#endif
