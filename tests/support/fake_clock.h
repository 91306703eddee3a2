/* A fake process clock for unit tests: time moves only when a test says so. */
#ifndef RESIL_TEST_FAKE_CLOCK_H
#define RESIL_TEST_FAKE_CLOCK_H

#include <stdatomic.h>
#include <stdint.h>

#include "resil/deadline.h"
#include "resil/testing.h" /* resil_clock_set */

static _Atomic uint64_t fake_now_ns_ = 1000000000ull; /* start at 1 s */

static uint64_t fake_clock_read_(void *ctx) {
  (void)ctx;
  return atomic_load(&fake_now_ns_);
}

/* Install the fake clock at t = 1 s. */
static inline void fake_clock_install(void) {
  atomic_store(&fake_now_ns_, 1000000000ull);
  resil_clock_set(fake_clock_read_, NULL);
}

static inline void fake_clock_uninstall(void) { resil_clock_set(NULL, NULL); }

static inline void fake_clock_advance_ms(uint64_t ms) { atomic_fetch_add(&fake_now_ns_, ms * 1000000ull); }
static inline void fake_clock_advance_ns(uint64_t ns) { atomic_fetch_add(&fake_now_ns_, ns); }
static inline uint64_t fake_clock_now_ns(void) { return atomic_load(&fake_now_ns_); }

#endif
