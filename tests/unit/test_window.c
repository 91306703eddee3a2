/* The rolling window of striped counters (src/window.c) on its own: the
 * inline count of the call path (resil__window_count, which skips the
 * division while the last period lasts) must put every call where the
 * general add puts it, across period changes, recycled buckets, a reading
 * from just before the last period (another thread's older clock) and long
 * idle gaps; sums must match a model that keeps every call with its period;
 * and a bucket count the packed hint cannot hold is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "internal.h"

#define MS 1000000ull

typedef struct call {
  uint64_t epoch; /* now / bucket_ns */
  bool failed, slow;
} call;

/* What resil__window_sum(now) must say when every call was counted with a
 * clock that never went back: the calls of the last nbuckets periods, kept
 * as running sums over calls[lo..] (now only moves forward). */
typedef struct model {
  const call *calls;
  size_t lo, n;
  uint64_t sum[3];
} model;

static void model_add(model *m, const call *c) {
  m->n++;
  m->sum[0]++;
  m->sum[1] += c->failed;
  m->sum[2] += c->slow;
}

static void model_at(model *m, uint64_t epoch, uint32_t nbuckets) {
  while (m->lo < m->n && epoch - m->calls[m->lo].epoch >= nbuckets) {
    const call *c = &m->calls[m->lo++];
    m->sum[0]--;
    m->sum[1] -= c->failed;
    m->sum[2] -= c->slow;
  }
}

static void sums_match_a_model_and_the_general_add(void **state) {
  (void)state;
  static const uint32_t shapes[][2] = {{1000, 10}, {1000, 7}, {700, 1}, {10000, 120}};
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    resil_window inl, gen;
    assert_int_equal(resil__window_init(&inl, shapes[k][0] * MS, shapes[k][1]), RESIL_OK);
    assert_int_equal(resil__window_init(&gen, shapes[k][0] * MS, shapes[k][1]), RESIL_OK);
    uint64_t bucket_ns = inl.bucket_ns;
    enum { N = 20000 };
    call *calls = calloc(N, sizeof *calls);
    assert_non_null(calls);
    srand(7 + (unsigned)k);
    model m = {.calls = calls};
    uint64_t now = 5000 * MS + 3; /* not on a period boundary */
    for (size_t i = 0; i < N; i++) {
      int r = rand() % 1000;
      if (r < 5)
        now += (uint64_t)(rand() % 30) * bucket_ns; /* idle: up to 30 periods */
      else if (r < 100)
        now += bucket_ns / 3 + (uint64_t)(rand() % 1000);
      else
        now += (uint64_t)(rand() % 200000);
      bool failed = rand() % 4 == 0, slow = rand() % 9 == 0;
      calls[i] = (call){now / bucket_ns, failed, slow};
      resil__window_count(&inl, now, failed, slow);
      const uint64_t v[RESIL_WINDOW_VALS] = {1, failed, slow};
      resil__window_add(&gen, now, v);
      model_add(&m, &calls[i]);
      model_at(&m, now / bucket_ns, inl.nbuckets);
      uint64_t a[3], b[3];
      resil__window_sum(&inl, now, a);
      resil__window_sum(&gen, now, b);
      for (int j = 0; j < 3; j++) {
        assert_int_equal(a[j], m.sum[j]);
        assert_int_equal(b[j], m.sum[j]);
      }
    }
    free(calls);
    resil__window_destroy(&inl);
    resil__window_destroy(&gen);
  }
}

/* A thread whose reading of the clock is a little older than the last
 * add's (read before it, counted after) lands in its own, earlier period,
 * and does not move the window's idea of the current period back: the next
 * add of the present still takes the fast path into the present bucket. */
static void an_older_reading_counts_in_its_own_period(void **state) {
  (void)state;
  resil_window w;
  assert_int_equal(resil__window_init(&w, 1000 * MS, 10), RESIL_OK); /* 100 ms periods */
  uint64_t t1 = 7000 * MS + 50 * MS, t2 = t1 + 100 * MS; /* consecutive periods */
  resil__window_count(&w, t1, false, false);
  resil__window_count(&w, t2, true, false);
  uint64_t hint = atomic_load(&w.hint);
  resil__window_count(&w, t1 + 1, false, true); /* the older reading */
  assert_int_equal(atomic_load(&w.hint), hint);
  resil__window_count(&w, t2 + 1, false, false);
  uint64_t s[3];
  resil__window_sum(&w, t2 + 2, s);
  assert_int_equal(s[0], 4);
  assert_int_equal(s[1], 1);
  assert_int_equal(s[2], 1);
  /* the first period leaves the window 10 periods after it, the second one
   * period later */
  resil__window_sum(&w, t1 + 1000 * MS, s);
  assert_int_equal(s[0], 2);
  assert_int_equal(s[1], 1);
  assert_int_equal(s[2], 0);
  resil__window_destroy(&w);
}

/* After a reset every bucket is empty; the next add recycles its bucket
 * rather than trusting the hint's period. */
static void a_reset_empties_every_bucket(void **state) {
  (void)state;
  resil_window w;
  assert_int_equal(resil__window_init(&w, 1000 * MS, 4), RESIL_OK);
  uint64_t t = 9000 * MS;
  for (int i = 0; i < 10; i++) resil__window_count(&w, t + (uint64_t)i, true, true);
  resil__window_reset(&w);
  uint64_t s[3];
  resil__window_sum(&w, t + 20, s);
  assert_int_equal(s[0], 0);
  resil__window_count(&w, t + 30, false, false);
  resil__window_sum(&w, t + 40, s);
  assert_int_equal(s[0], 1);
  assert_int_equal(s[1], 0);
  resil__window_destroy(&w);
}

static void more_buckets_than_the_hint_holds_are_refused(void **state) {
  (void)state;
  resil_window w;
  assert_int_equal(resil__window_init(&w, 100000 * MS, RESIL__WINDOW_MAX_BUCKETS + 1),
                   RESIL_E_INVALID);
  assert_int_equal(resil__window_init(&w, 100000 * MS, RESIL__WINDOW_MAX_BUCKETS), RESIL_OK);
  uint64_t t = 123456 * MS;
  resil__window_count(&w, t, true, false);
  uint64_t s[3];
  resil__window_sum(&w, t, s);
  assert_int_equal(s[0], 1);
  assert_int_equal(s[1], 1);
  resil__window_destroy(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(sums_match_a_model_and_the_general_add),
      cmocka_unit_test(an_older_reading_counts_in_its_own_period),
      cmocka_unit_test(a_reset_empties_every_bucket),
      cmocka_unit_test(more_buckets_than_the_hint_holds_are_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
