/* Small shared helpers: stripes, randomness, waiting, error building. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

const char *resil_version(void) { return RESIL_VERSION_STRING; }
unsigned resil_version_number(void) { return RESIL_VERSION_NUMBER; }

static _Atomic unsigned next_stripe;
RESIL_TLS unsigned resil__my_stripe = ~0u;

unsigned resil__stripe_assign(void) {
  unsigned s =
      atomic_fetch_add_explicit(&next_stripe, 1, memory_order_relaxed) & (RESIL_STRIPES - 1);
  resil__my_stripe = s;
  return s;
}

static RESIL_TLS uint64_t rng_state;

uint64_t resil__rand(void) {
  uint64_t x = rng_state;
  if (x == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x = ((uint64_t)ts.tv_nsec << 17) ^ (uint64_t)(uintptr_t)&rng_state ^ (uint64_t)ts.tv_sec;
    x |= 1;
  }
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  rng_state = x;
  return x;
}

int resil__cond_init(pthread_cond_t *c) {
  pthread_condattr_t a;
  int rc = pthread_condattr_init(&a);
  if (rc) return rc;
  rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  if (rc == 0) rc = pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
  return rc;
}

#define FAKE_SLICE_NS 10000000ull
#define UNSET_WAIT_NS 1000000000ull

static uint64_t real_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* How long to sleep on the real clock to reach d on the process clock. */
static uint64_t wait_ns_for(resil_deadline d) {
  uint64_t ns;
  if (!resil_deadline_is_set(d)) return UNSET_WAIT_NS;
  int64_t left = resil_deadline_remaining_ns(d);
  if (left <= 0) return 0;
  ns = (uint64_t)left;
  if (resil_clock_is_fake() && ns > FAKE_SLICE_NS) ns = FAKE_SLICE_NS;
  return ns;
}

static struct timespec abs_real(uint64_t wait_ns) {
  uint64_t at = real_now_ns() + wait_ns;
  struct timespec ts = {.tv_sec = (time_t)(at / 1000000000ull),
                        .tv_nsec = (long)(at % 1000000000ull)};
  return ts;
}

int resil__cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, resil_deadline d) {
  uint64_t ns = wait_ns_for(d);
  if (ns == 0) return ETIMEDOUT;
  struct timespec ts = abs_real(ns);
  int rc = pthread_cond_timedwait(c, m, &ts);
  if (rc == ETIMEDOUT) {
    /* A slice under a fake clock, or the real deadline: report a timeout only
     * if the process clock agrees. */
    if (!resil_deadline_is_set(d) || resil_deadline_expired(d)) return ETIMEDOUT;
    return 0;
  }
  return 0;
}

void resil__sleep_until(resil_deadline d, uint64_t max_ns) {
  resil_deadline cap = resil_deadline_in_ns((int64_t)max_ns);
  resil_deadline until = resil_deadline_min(d, cap);
  for (;;) {
    uint64_t ns = wait_ns_for(until);
    if (ns == 0) return;
    struct timespec rel = {.tv_sec = (time_t)(ns / 1000000000ull),
                           .tv_nsec = (long)(ns % 1000000000ull)};
    nanosleep(&rel, NULL);
    if (resil_deadline_expired(until)) return;
  }
}

bool resil__invariants_enabled(void) { return RESIL_INVARIANTS_ON; }

void resil__invariant_broken(const char *file, int line, const char *func, const char *fmt,
                             ...) {
  /* One write, so that the line is whole even if other threads print. */
  char msg[512];
  int n = snprintf(msg, sizeof msg, "resil: invariant broken at %s:%d (%s): ", file, line, func);
  if (n < 0 || (size_t)n >= sizeof msg) n = 0;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
  va_end(ap);
  size_t len = m < 0 ? (size_t)n : (size_t)n + (size_t)m;
  if (len > sizeof msg - 2) len = sizeof msg - 2;
  msg[len++] = '\n';
  fwrite(msg, 1, len, stderr);
  fflush(stderr);
  abort();
}

void resil__strlcpy(char *dst, const char *src, size_t size) {
  if (size == 0) return;
  size_t n = src ? strlen(src) : 0;
  if (n >= size) n = size - 1;
  if (n) memcpy(dst, src, n);
  dst[n] = '\0';
}

resil_status resil_err_set(resil_err *err, resil_status status, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->status = status;
  }
  return status;
}

void resil_problems_init(resil_problems *p, const char *prefix) {
  p->buf[0] = '\0';
  p->len = 0;
  p->count = 0;
  p->prefix = prefix ? prefix : "";
}

static void problems_append(resil_problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void problems_append(resil_problems *p, const char *fmt, ...) {
  if (p->len >= sizeof p->buf - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(p->buf + p->len, sizeof p->buf - p->len, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof p->buf - p->len) {
    p->len = sizeof p->buf - 1;
    memcpy(p->buf + sizeof p->buf - 4, "...", 4);
  } else {
    p->len += (size_t)n;
  }
}

/* The sink installed on this thread (resil__problem_sink_push), if any. */
static _Thread_local resil__problem_sink *cur_sink;

void resil__problem_sink_push(resil__problem_sink *s, resil__problem_fn fn, void *ctx) {
  memset(s, 0, sizeof *s);
  s->fn = fn;
  s->ctx = ctx;
  s->prev = cur_sink;
  cur_sink = s;
}

void resil__problem_sink_pop(resil__problem_sink *s) {
  if (cur_sink == s) cur_sink = s->prev;
}

static uint64_t text_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

void resil_problem(resil_problems *p, const char *field, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  problems_append(p, "%s%s%s: %s", p->count ? "; " : "", p->prefix, field, what);
  p->count++;
  if (cur_sink) cur_sink->fn(cur_sink->ctx, p->prefix, field, what);
}

void resil_problems_merge(resil_problems *p, const char *formatted) {
  if (!formatted || !*formatted) return;
  problems_append(p, "%s%s", p->count ? "; " : "", formatted);
  p->count++;
  resil__problem_sink *s = cur_sink;
  if (!s) return;
  /* Text a collector of this thread finished while the sink was installed:
   * each of its problems already went to the sink one by one. */
  uint64_t h = text_hash(formatted);
  for (unsigned i = 0; i < RESIL__SINK_FINISHED && i < s->nfinished; i++)
    if (s->finished[i] == formatted && s->finished_hash[i] == h) return;
  s->fn(s->ctx, p->prefix, NULL, formatted);
}

resil_status resil_problems_finish(const resil_problems *p, resil_err *err) {
  if (p->count == 0) return RESIL_OK;
  if (err) {
    memcpy(err->msg, p->buf, p->len + 1);
    err->status = RESIL_E_INVALID;
    resil__problem_sink *s = cur_sink;
    if (s) {
      unsigned i = s->nfinished++ % RESIL__SINK_FINISHED;
      s->finished[i] = err->msg;
      s->finished_hash[i] = text_hash(err->msg);
    }
  }
  return RESIL_E_INVALID;
}

void resil_problems_check_range(resil_problems *p, const char *field, uint64_t v, uint64_t lo,
                                uint64_t hi) {
  if (v < lo || v > hi)
    resil__problem(p, field, "%llu is outside %llu..%llu", (unsigned long long)v,
                   (unsigned long long)lo, (unsigned long long)hi);
}

void resil__check_range_d(resil_problems *p, const char *field, double v, double lo, double hi) {
  if (!(v >= lo && v <= hi)) resil__problem(p, field, "%g is outside %g..%g", v, lo, hi);
}

void resil__sb_printf(resil_sbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    size_t room = b->cap - b->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? room : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = true;
      return;
    }
    if (b->p && (size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->len + (size_t)n + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
      b->oom = true;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
}

void resil__sb_json_string(resil_sbuf *b, const char *s) {
  resil__sb_printf(b, "\"");
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\')
      resil__sb_printf(b, "\\%c", *c);
    else if (*c < 0x20 || *c == 0x7f)
      resil__sb_printf(b, "\\u%04x", *c);
    else
      resil__sb_printf(b, "%c", *c);
  }
  resil__sb_printf(b, "\"");
}

resil_status resil__sb_finish(resil_sbuf *b, char **out, size_t *len, resil_err *err) {
  if (b->oom || !b->p) {
    free(b->p);
    b->p = NULL;
    return resil_err_set(err, RESIL_E_NOMEM, "out of memory");
  }
  *out = b->p;
  if (len) *len = b->len;
  b->p = NULL;
  return RESIL_OK;
}
