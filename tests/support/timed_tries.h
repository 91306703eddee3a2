/* Timing a wait that should end at its deadline, for the unit tests that
 * time real waits (test_pool, test_resolve). Include after cmocka.h. */
#ifndef RESIL_TEST_TIMED_TRIES_H
#define RESIL_TEST_TIMED_TRIES_H

#include <stdbool.h>
#include <stdint.h>

/* Upper slack on real-time waits: a deadline is met within this many ms.
 * Sanitizers slow every thread several-fold, so they get more room. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LATE_MS 400
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define LATE_MS 400
#endif
#endif
#ifndef LATE_MS
#define LATE_MS 100
#endif

/* Timing a wait that should end at its deadline. Ending early is a bug, so
 * every try must last at least the deadline (less clock-reading slack);
 * ending late is scheduler noise on a loaded machine, so a step is timed up
 * to TIMED_TRIES times and the fastest try must be within LATE_MS:
 *   timing t = timing_start(50);
 *   do { ...run the step, timing_add(&t, took_ms)... } while (timing_again(&t));
 *   timing_check(&t);                                                      */
#define TIMED_TRIES 3
typedef struct timing {
  uint64_t deadline_ms, best_ms;
  int tries;
} timing;

static inline timing timing_start(uint64_t deadline_ms) {
  timing t = {deadline_ms, UINT64_MAX, 0};
  return t;
}

static inline void timing_add(timing *t, uint64_t took_ms) {
  assert_true(took_ms + 5 >= t->deadline_ms); /* never early */
  if (took_ms < t->best_ms) t->best_ms = took_ms;
  t->tries++;
}

static inline bool timing_again(const timing *t) {
  return t->tries < TIMED_TRIES && t->best_ms > t->deadline_ms + LATE_MS;
}

static inline void timing_check(const timing *t) {
  assert_in_range(t->best_ms, t->deadline_ms - 5, t->deadline_ms + LATE_MS);
}

#endif
