/* resil: test hooks. NOT INSTALLED and not part of the API: tests include
 * it to drive the process clock and to undo a drain between test cases.
 * The functions are exported by libresil (the tests link the shared
 * library) and listed as test hooks in abi/libresil.symbols; applications
 * must not call them.
 */
#ifndef RESIL_TESTING_H
#define RESIL_TESTING_H

#include "resil/deadline.h"
#include "resil/lifecycle.h"

RESIL_BEGIN_DECLS

/* ---- The clock (from deadline.h) ----------------------------------------- */

/* A clock returns monotonic nanoseconds. */
typedef uint64_t (*resil_clock_fn)(void *ctx);

/* Install a clock for the whole process, or restore CLOCK_MONOTONIC with
 * fn == NULL. Meant for tests: a fake clock lets a test drive breaker and
 * window time by hand. Blocking waits still sleep on the real clock, in
 * slices of at most 10 ms while a fake clock is installed, so a test that
 * advances the fake clock from another thread wakes them. Install it before
 * creating any object; thread-safe, but objects created under one clock
 * must not be used under another. */
RESIL_API void resil_clock_set(resil_clock_fn fn, void *ctx);

/* True while a clock other than CLOCK_MONOTONIC is installed. */
RESIL_API bool resil_clock_is_fake(void);

/* ---- Drain (from lifecycle.h) -------------------------------------------- */

/* Undo a drain: readiness no longer reports draining and every registered
 * dependency admits calls again. Pools drained by resil_drain() stay
 * closed. For tests and for an aborted shutdown. Thread-safe. */
RESIL_API void resil_drain_reset(void);

RESIL_END_DECLS
#endif
