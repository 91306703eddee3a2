/* Events: one process-wide hook, a per-dependency token bucket, and the
 * line formats the service layer writes. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

_Thread_local const char *resil__call_msg;

/* The hook and the calls running it. A caller takes the hook under hook_mu
 * and runs it unlocked, counted in hook_active; resil_set_event_hook()
 * waits until no call runs any more. A plain mutex and a count rather than
 * a rwlock: the fork handler locks hook_mu and resets the count in the
 * child (glibc's rwlock knows its writer by thread id, which the child's
 * thread does not share, and it cannot be unlocked or re-initialised there
 * cleanly under ThreadSanitizer). */
static pthread_mutex_t hook_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hook_idle;
static pthread_once_t hook_once = PTHREAD_ONCE_INIT;
static unsigned hook_active;
static resil_event_hook hook_fn;
static void *hook_ctx;

static void hook_init(void) { resil__cond_init(&hook_idle); }

void resil_set_event_hook(resil_event_hook fn, void *ctx) {
  pthread_once(&hook_once, hook_init);
  pthread_mutex_lock(&hook_mu);
  hook_fn = fn;
  hook_ctx = fn ? ctx : NULL;
  while (hook_active) pthread_cond_wait(&hook_idle, &hook_mu);
  pthread_mutex_unlock(&hook_mu);
}

/* The hook to call (NULL: none), counted as running until hook_leave(). */
static resil_event_hook hook_enter(void **ctx) {
  pthread_mutex_lock(&hook_mu);
  resil_event_hook fn = hook_fn;
  *ctx = hook_ctx;
  if (fn) hook_active++;
  pthread_mutex_unlock(&hook_mu);
  return fn;
}

static void hook_leave(void) {
  pthread_once(&hook_once, hook_init);
  pthread_mutex_lock(&hook_mu);
  if (--hook_active == 0) pthread_cond_broadcast(&hook_idle);
  pthread_mutex_unlock(&hook_mu);
}

/* fork (see fork.c): hook_mu is held across fork(); in the child, calls of
 * the hook by threads that do not exist there are forgotten, so the
 * child's resil_set_event_hook() never waits for them. */
void resil__event_fork_prepare(void) { pthread_mutex_lock(&hook_mu); }
void resil__event_fork_parent(void) { pthread_mutex_unlock(&hook_mu); }
void resil__event_fork_child(void) {
  hook_active = 0;
  pthread_once(&hook_once, hook_init);
  resil__cond_init(&hook_idle);
  pthread_mutex_unlock(&hook_mu);
}

const char *resil_event_type_name(resil_event_type t) {
  switch (t) {
    case RESIL_EVENT_BREAKER: return "breaker";
    case RESIL_EVENT_LIMIT: return "limit";
    case RESIL_EVENT_THROTTLE: return "throttle";
    case RESIL_EVENT_PAUSE: return "pause";
    default: return "unknown";
  }
}

void resil__ev_bucket_init(resil__ev_bucket *b) {
  pthread_mutex_init(&b->mu, NULL);
  b->tokens = RESIL_EVENT_BURST;
  b->last_ns = 0;
  b->suppressed = 0;
  atomic_init(&b->delivered, 0);
  atomic_init(&b->dropped, 0);
}

void resil__ev_bucket_destroy(resil__ev_bucket *b) { pthread_mutex_destroy(&b->mu); }

/* Take a token at now. On success *suppressed gets the events dropped since
 * the last one delivered (and the count restarts). */
static bool bucket_take(resil__ev_bucket *b, uint64_t now, uint32_t *suppressed) {
  pthread_mutex_lock(&b->mu);
  if (b->last_ns && now > b->last_ns) {
    b->tokens += (double)(now - b->last_ns) * RESIL_EVENT_RATE_PER_S / 1e9;
    if (b->tokens > RESIL_EVENT_BURST) b->tokens = RESIL_EVENT_BURST;
  }
  if (now > b->last_ns) b->last_ns = now;
  bool ok = b->tokens >= 1.0;
  if (ok) {
    b->tokens -= 1.0;
    *suppressed = b->suppressed;
    b->suppressed = 0;
  } else {
    b->suppressed++;
  }
  pthread_mutex_unlock(&b->mu);
  return ok;
}

static const char *transition_reason(resil_breaker_state from, resil_breaker_state to,
                                     resil_trip_reason reason) {
  switch (to) {
    case RESIL_BREAKER_OPEN: return resil_trip_reason_name(reason);
    case RESIL_BREAKER_FORCED_OPEN: return "forced";
    case RESIL_BREAKER_HALF_OPEN:
      return reason == RESIL_TRIP_RECOVERY_PROBE ? "recovery_probe" : "break_elapsed";
    case RESIL_BREAKER_CLOSED:
      return from == RESIL_BREAKER_HALF_OPEN ? "half_open_succeeded" : "operator";
    default: return "operator";
  }
}

/* The hook to deliver one event of bk's dependency to, counted as running
 * (end with hook_leave()), or NULL: no hook, or the rate limit dropped the
 * event (counted). *now and *suppressed are filled for the event. */
static resil_event_hook take_turn(resil__ev_bucket *bk, void **ctx, uint64_t *now,
                                  uint32_t *suppressed) {
  resil_event_hook fn = hook_enter(ctx);
  if (!fn) return NULL;
  *now = resil_now_ns();
  *suppressed = 0;
  if (!bucket_take(bk, *now, suppressed)) {
    atomic_fetch_add_explicit(&bk->dropped, 1, memory_order_relaxed);
    hook_leave();
    return NULL;
  }
  return fn;
}

/* Take bk's turn: NULL if there is no hook or the event is over the rate
 * limit; else the hook (its context in *ctx), with ev set to an event of
 * type for dep, stamped now (wall and monotonic) with the count suppressed
 * before it, no states (from/to -1) and empty texts. */
static resil_event_hook event_begin(resil__ev_bucket *bk, resil_event_type type, const char *dep,
                                    resil_event *ev, void **ctx) {
  uint64_t now;
  uint32_t suppressed;
  resil_event_hook fn = take_turn(bk, ctx, &now, &suppressed);
  if (!fn) return NULL;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  *ev = (resil_event){
      .type = type,
      .dep = dep,
      .wall_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec,
      .mono_ns = now,
      .from = -1,
      .to = -1,
      .message = "",
      .detail = "",
      .suppressed = suppressed,
  };
  return fn;
}

/* Hand ev to the hook event_begin() took, and leave it. */
static void event_end(resil__ev_bucket *bk, resil_event_hook fn, void *ctx, resil_event *ev) {
  fn(ctx, ev);
  atomic_fetch_add_explicit(&bk->delivered, 1, memory_order_relaxed);
  hook_leave();
}

void resil__event_breaker(const char *dep, resil__ev_bucket *bk, resil_breaker *b,
                          resil_breaker_state from, resil_breaker_state to,
                          resil_trip_reason reason) {
  void *ctx;
  resil_event ev;
  resil_event_hook fn = event_begin(bk, RESIL_EVENT_BREAKER, dep, &ev, &ctx);
  if (!fn) return;
  resil_breaker_stats st;
  resil_breaker_get_stats(b, &st);
  char detail[200];
  resil_breaker_describe(b, detail, sizeof detail);
  ev.from = (int)from;
  ev.to = (int)to;
  ev.reason = transition_reason(from, to, reason);
  if (resil__call_msg) ev.message = resil__call_msg;
  ev.detail = detail;
  ev.trip_streak = st.trip_streak;
  /* The stats may already show a later state (another thread moved on):
   * the break's length only when they still show this one. */
  if (to == RESIL_BREAKER_OPEN && st.state == RESIL_BREAKER_OPEN &&
      st.open_until_ns > st.opened_at_ns)
    ev.open_ms = (st.open_until_ns - st.opened_at_ns + 500000) / 1000000;
  event_end(bk, fn, ctx, &ev);
}

/* One event of a type other than BREAKER (from/to -1). */
static void emit_value(const char *dep, resil__ev_bucket *bk, resil_event_type type,
                       const char *reason, const char *message, const char *detail,
                       int64_t old_value, int64_t new_value) {
  void *ctx;
  resil_event ev;
  resil_event_hook fn = event_begin(bk, type, dep, &ev, &ctx);
  if (!fn) return;
  ev.reason = reason;
  if (message) ev.message = message;
  if (detail) ev.detail = detail;
  ev.old_value = old_value;
  ev.new_value = new_value;
  event_end(bk, fn, ctx, &ev);
}

void resil__event_value(const char *dep, resil__ev_bucket *bk, resil_event_type type,
                        const char *reason, const char *detail, int64_t old_value,
                        int64_t new_value) {
  emit_value(dep, bk, type, reason, NULL, detail, old_value, new_value);
}

void resil__event_pause(const char *dep, resil__ev_bucket *bk, bool start, uint64_t ms,
                        const char *reason, const char *message, const char *detail) {
  emit_value(dep, bk, RESIL_EVENT_PAUSE, reason ? reason : "pushback", message, detail,
             start ? 0 : (int64_t)ms, start ? (int64_t)ms : 0);
}

/* ---- formatting --------------------------------------------------------- */

/* Append s (at most max bytes of it) JSON-escaped to buf[*o..cap), leaving
 * room for `reserve` more bytes. Non-ASCII bytes become '?' so that the
 * line is valid UTF-8 whatever a server sent. */
static void esc(char *buf, size_t *o, size_t cap, const char *s, size_t max, size_t reserve,
                bool json) {
  size_t n = 0;
  for (; s && *s && n < max; s++, n++) {
    unsigned char ch = (unsigned char)*s;
    char tmp[8];
    size_t tl;
    if (json && (ch == '"' || ch == '\\')) {
      tmp[0] = '\\';
      tmp[1] = (char)ch;
      tl = 2;
    } else if (ch < 0x20 || ch == 0x7f) {
      if (json)
        tl = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", ch);
      else {
        tmp[0] = ' ';
        tl = 1;
      }
    } else if (ch >= 0x80) {
      tmp[0] = '?';
      tl = 1;
    } else {
      tmp[0] = (char)ch;
      tl = 1;
    }
    if (*o + tl + reserve >= cap) break;
    memcpy(buf + *o, tmp, tl);
    *o += tl;
  }
  buf[*o] = '\0';
}

static void put(char *buf, size_t *o, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t *o, size_t cap, const char *fmt, ...) {
  if (*o >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf + *o, cap - *o, fmt, ap);
  va_end(ap);
  if (n > 0) *o += (size_t)n < cap - *o ? (size_t)n : cap - *o - 1;
}

static const char *state_of(const resil_event *ev, int s) {
  if (ev->type != RESIL_EVENT_BREAKER || s < 0) return "";
  return resil_breaker_state_name((resil_breaker_state)s);
}

size_t resil_event_format(const resil_event *ev, bool json, char *buf, size_t size) {
  if (!ev || !buf || size < 256) return 0;
  time_t secs = (time_t)(ev->wall_ns / 1000000000ull);
  unsigned ms = (unsigned)(ev->wall_ns % 1000000000ull / 1000000ull);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char when[80];
  snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  const char *dep = ev->dep ? ev->dep : "";
  const char *reason = ev->reason ? ev->reason : "";
  /* The fixed parts take < 200 bytes; the message and detail share the
   * rest, the message first (it is what went wrong). */
  const size_t tail = 120;
  size_t o = 0;
  buf[0] = '\0';
  if (json) {
    put(buf, &o, size, "{\"ts\":\"%s\",\"type\":\"%s\",\"dep\":\"", when,
        resil_event_type_name(ev->type));
    esc(buf, &o, size, dep, 63, tail, true);
    put(buf, &o, size, "\",\"from\":\"%s\",\"to\":\"%s\",\"reason\":\"", state_of(ev, ev->from),
        state_of(ev, ev->to));
    esc(buf, &o, size, reason, 40, tail, true);
    put(buf, &o, size, "\",\"message\":\"");
    esc(buf, &o, size, ev->message, (size - o) / 2, tail, true);
    put(buf, &o, size, "\",\"detail\":\"");
    esc(buf, &o, size, ev->detail, 400, tail, true);
    put(buf, &o, size, "\",\"open_ms\":%llu,\"trip_streak\":%u,\"suppressed\":%u",
        (unsigned long long)ev->open_ms, ev->trip_streak, ev->suppressed);
    if (ev->type != RESIL_EVENT_BREAKER)
      put(buf, &o, size, ",\"old_value\":%lld,\"new_value\":%lld", (long long)ev->old_value,
          (long long)ev->new_value);
    put(buf, &o, size, "}\n");
  } else {
    put(buf, &o, size, "%s resil event %s dep=", when, resil_event_type_name(ev->type));
    esc(buf, &o, size, dep, 63, tail, false);
    if (ev->type == RESIL_EVENT_BREAKER)
      put(buf, &o, size, " %s -> %s reason=", state_of(ev, ev->from), state_of(ev, ev->to));
    else
      put(buf, &o, size, " %lld -> %lld reason=", (long long)ev->old_value,
          (long long)ev->new_value);
    esc(buf, &o, size, reason, 40, tail, false);
    if (ev->open_ms) put(buf, &o, size, " open_ms=%llu", (unsigned long long)ev->open_ms);
    if (ev->suppressed) put(buf, &o, size, " suppressed=%u", ev->suppressed);
    if (ev->message && *ev->message) {
      put(buf, &o, size, " message=\"");
      esc(buf, &o, size, ev->message, (size - o) / 2, tail, false);
      put(buf, &o, size, "\"");
    }
    put(buf, &o, size, " (");
    esc(buf, &o, size, ev->detail, 400, tail, false);
    put(buf, &o, size, ")\n");
  }
  return o;
}
