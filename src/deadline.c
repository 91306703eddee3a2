/* The process clock, deadlines and the grpc-timeout wire format. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

_Atomic(resil_clock_fn) resil__clock_fn; /* internal.h */
#define clock_fn resil__clock_fn
static void *_Atomic clock_ctx;

static inline uint64_t mono_ns(void) {
  struct timespec ts;
  resil__vdso_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t resil_now_ns(void) {
  resil_clock_fn f = atomic_load_explicit(&clock_fn, memory_order_acquire);
  if (__builtin_expect(f == NULL, 1)) return mono_ns();
  return f(atomic_load_explicit(&clock_ctx, memory_order_acquire));
}

void resil_clock_set(resil_clock_fn fn, void *ctx) {
  atomic_store_explicit(&clock_ctx, ctx, memory_order_release);
  atomic_store_explicit(&clock_fn, fn, memory_order_release);
}

bool resil_clock_is_fake(void) {
  return atomic_load_explicit(&clock_fn, memory_order_acquire) != NULL;
}

/* Saturating now + ns; never 0 (0 means unset). */
static resil_deadline after(uint64_t now, int64_t ns) {
  resil_deadline d;
  if (ns <= 0) {
    d.at_ns = now ? now : 1;
    return d;
  }
  uint64_t at = now + (uint64_t)ns;
  if (at < now || at > (uint64_t)INT64_MAX) at = (uint64_t)INT64_MAX;
  d.at_ns = at ? at : 1;
  return d;
}

resil_deadline resil_deadline_in_ns(int64_t ns) { return after(resil_now_ns(), ns); }

resil_deadline resil_deadline_in_ms(int64_t ms) {
  if (ms > INT64_MAX / 1000000) ms = INT64_MAX / 1000000;
  return after(resil_now_ns(), ms * 1000000);
}

int64_t resil_deadline_remaining_ns(resil_deadline d) {
  if (!d.at_ns) return INT64_MAX;
  uint64_t now = resil_now_ns();
  return d.at_ns > now ? (int64_t)(d.at_ns - now) : 0;
}

int64_t resil_deadline_remaining_ms(resil_deadline d) {
  int64_t ns = resil_deadline_remaining_ns(d);
  if (ns == INT64_MAX) return INT64_MAX;
  return (ns + 999999) / 1000000;
}

bool resil_deadline_expired(resil_deadline d) {
  return d.at_ns != 0 && resil_now_ns() >= d.at_ns;
}

resil_deadline resil_deadline_min(resil_deadline a, resil_deadline b) {
  if (!a.at_ns) return b;
  if (!b.at_ns) return a;
  return a.at_ns < b.at_ns ? a : b;
}

resil_deadline resil_deadline_bound(resil_deadline d, int64_t timeout_ms) {
  if (timeout_ms > INT64_MAX / 1000000) timeout_ms = INT64_MAX / 1000000;
  return resil_deadline_min(d, after(resil_now_ns(), timeout_ms * 1000000));
}

/* ---- grpc-timeout -------------------------------------------------------- */

static const struct {
  char unit;
  uint64_t ns;
} units[] = {{'n', 1ull},           {'u', 1000ull},          {'m', 1000000ull},
             {'S', 1000000000ull},  {'M', 60000000000ull},   {'H', 3600000000000ull}};

#define GRPC_MAX_VALUE 99999999ull

resil_status resil_grpc_timeout_parse(const char *value, size_t len, resil_deadline *out,
                                      resil_err *err) {
  if (!value || !out)
    return resil_err_set(err, RESIL_E_INVALID, "grpc-timeout: %s is NULL",
                         value ? "out" : "value");
  if (len < 2 || len > 9)
    return resil_err_set(err, RESIL_E_INVALID,
                         "grpc-timeout: '%.*s' must be 1 to 8 digits and a unit (H M S m u n)",
                         (int)(len > 32 ? 32 : len), value);
  uint64_t v = 0;
  for (size_t i = 0; i + 1 < len; i++) {
    if (value[i] < '0' || value[i] > '9')
      return resil_err_set(err, RESIL_E_INVALID, "grpc-timeout: '%.*s' has a non-digit at %zu",
                           (int)len, value, i);
    v = v * 10 + (uint64_t)(value[i] - '0');
  }
  char u = value[len - 1];
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (units[i].unit == u) {
      uint64_t ns = v > (uint64_t)INT64_MAX / units[i].ns ? (uint64_t)INT64_MAX : v * units[i].ns;
      *out = after(resil_now_ns(), (int64_t)ns);
      return RESIL_OK;
    }
  }
  return resil_err_set(err, RESIL_E_INVALID,
                       "grpc-timeout: '%.*s' has unknown unit '%c' (want H M S m u n)", (int)len,
                       value, (u >= 0x20 && u < 0x7f) ? u : '?');
}

resil_status resil_grpc_timeout_format(resil_deadline d, char *buf, size_t size,
                                       resil_err *err) {
  if (!buf || size < 10)
    return resil_err_set(err, RESIL_E_INVALID, "grpc-timeout: buffer %s",
                         buf ? "smaller than 10 bytes" : "is NULL");
  if (!resil_deadline_is_set(d))
    return resil_err_set(err, RESIL_E_INVALID, "grpc-timeout: deadline is unset");
  uint64_t ns = (uint64_t)resil_deadline_remaining_ns(d);
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    uint64_t v = ns / units[i].ns;
    if (v <= GRPC_MAX_VALUE) {
      snprintf(buf, size, "%llu%c", (unsigned long long)v, units[i].unit);
      return RESIL_OK;
    }
  }
  snprintf(buf, size, "%lluH", GRPC_MAX_VALUE);
  return RESIL_OK;
}
