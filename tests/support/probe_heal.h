/* The recovery-probe scenario the adapters' integration tests share
 * (test_pg, test_redis, test_http): a dependency's breaker is open on a long
 * break while its server is down; probes keep failing without changing the
 * break; then the server heals and the first call succeeds soon after,
 * because a probe closed the breaker. Include after cmocka.h and
 * testutil.h. */
#ifndef RESIL_TEST_PROBE_HEAL_H
#define RESIL_TEST_PROBE_HEAL_H

#include <stdint.h>

#include "resil/resil.h"

/* How long after the server heals the first call may still be refused:
 * probe interval (500 ms, +20%) + one probe + slack for a loaded machine. */
static inline uint64_t heal_bound_ms(void) {
  const char *b = test_env("RESIL_TEST_BUILD");
  return b && (strcmp(b, "asan") == 0 || strcmp(b, "tsan") == 0) ? 3000 : 1500;
}

/* The outage goes on for 1.6 s (three probe periods): the breaker stays
 * open, probes time out and none succeeds, the break neither ends nor
 * grows, and no call is counted. s0: dep's stats when the breaker opened.
 * Returns the stats after. */
static inline resil_dep_stats probe_outage_holds(resil_dep *dep, const resil_dep_stats *s0) {
  test_sleep_ms(1600);
  resil_dep_stats s;
  resil_dep_get_stats(dep, &s);
  assert_int_equal(s.breaker.state, RESIL_BREAKER_OPEN);
  assert_true(s.probes[RESIL_PROBE_TIMEOUT] >= 1);
  assert_int_equal(s.probes[RESIL_PROBE_SUCCESS], 0);
  assert_int_equal(s.breaker.open_until_ns, s0->breaker.open_until_ns);
  for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++) assert_int_equal(s.calls[k], s0->calls[k]);
  return s;
}

/* With the break s (from probe_outage_holds) more than 10 s from its end:
 * heal(ctx) the server, then call(ctx) (one call under its own deadline,
 * freeing what it got) every 10 ms for up to 10 s until it returns
 * RESIL_OK. The first success comes within heal_bound_ms() of the heal, a
 * probe succeeded and the breaker is closed. Without probes the breaker
 * would refuse calls for more than 10 s. */
static inline void probe_heal_within_bound(resil_dep *dep, const resil_dep_stats *s,
                                           void (*heal)(void *ctx),
                                           resil_status (*call)(void *ctx), void *ctx) {
  uint64_t left_ms = (s->breaker.open_until_ns - resil_now_ns()) / 1000000;
  assert_true(left_ms > 10000);
  uint64_t healed = test_now_ms();
  heal(ctx);
  resil_status st = RESIL_E_BREAKER_OPEN;
  while (test_now_ms() - healed < 10000) {
    st = call(ctx);
    if (st == RESIL_OK) break;
    test_sleep_ms(10);
  }
  uint64_t took = test_now_ms() - healed;
  print_message("# healed -> first success: %llu ms (the break had %llu ms left)\n",
                (unsigned long long)took, (unsigned long long)left_ms);
  assert_int_equal(st, RESIL_OK);
  assert_true(took <= heal_bound_ms());
  resil_dep_stats after;
  resil_dep_get_stats(dep, &after);
  assert_true(after.probes[RESIL_PROBE_SUCCESS] >= 1);
  assert_int_equal(after.breaker.state, RESIL_BREAKER_CLOSED);
}

#endif
