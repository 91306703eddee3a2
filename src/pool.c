/* Generic bounded connection pool (see resil/pool.h).
 *
 * Accounting, all under p->mu:
 *   open       = idle + in_use (established connections);
 *   connecting = slots reserved for connects in progress;
 *   open + connecting <= max_size at all times.
 * A conn being validated counts as in_use.
 *
 * Hand-off. Each queued acquirer owns a waiter node (on its stack, with its
 * own condvar) in a FIFO list. Whenever a connection goes idle or a slot
 * frees, dispatch_locked() hands it straight to the oldest waiter - either
 * the connection itself (W_CONN) or a reserved connect slot (W_SLOT, counted
 * in `connecting`, so the waiter connects in its own thread, outside the
 * lock). A newcomer takes an idle connection or a free slot only when nobody
 * is queued, so it can never steal from an older waiter. Hence: waiters
 * queued => no idle connection and no free slot.
 *
 * Priority. An acquirer holding a grant (a connection or a slot) keeps the
 * slot when the connection turns out to be expired or invalid: it closes the
 * connection and immediately takes the next idle one or connects itself,
 * without queueing again.
 *
 * Clocks. Connection ages use the coarse clock (pool_now()); an acquire that
 * takes an idle connection at once (acquire_quick()) reads no other clock and
 * is counted in the latency histogram's first bucket; every other acquire is
 * timed on the fast clock. A release wakes the waiter it grants after
 * unlocking (wake_defer).
 *
 * Idle order is LIFO: released connections go to the head and acquires take
 * from the head, so the tail holds the longest idle, which eviction trims.
 * idle_timeout_ms never closes connections that would leave fewer than
 * min_idle idle (those are validated on borrow instead).
 *
 * Every connector callback (connect, validate, close) runs with no lock held;
 * connections to close are collected on a local list under the lock and
 * closed after it is released.
 *
 * Parking (park_*). A release that finds nobody queued parks the
 * connection in one of the pool's PARK_SLOTS slots (the calling thread's,
 * by a per-thread index) with one compare-and-swap instead of the mutex, and
 * an acquire by a thread of the same index takes it back with one more: a
 * thread that borrows and returns in a loop touches no shared line. A parked
 * connection stays counted in `in_use` (the stats show it as idle). Parking
 * never hides a connection from a thread that needs it: a queued waiter
 * raises park_block and then sweeps every slot into the idle list, while a
 * parking release re-reads park_block (and the generation) after its
 * compare-and-swap and, seeing it raised, takes its connection back and
 * releases under the mutex (both are sequentially consistent: one of the
 * two always sees the other; both racing for the slot, one wins). Drain,
 * fork and the housekeeper sweep the slots too; an acquire that finds the
 * idle list empty sweeps them before it connects.
 *
 * Fork (fork.c, resil/pool.h). The atfork handler holds every pool's mutex
 * across fork(); in the child it resets the counts (every connection of the
 * parent is either idle - its session is the parent's too - or held by a
 * thread), moves the idle list to `orphans`, forgets the waiters (threads of
 * the parent), re-initialises the condition variables and bumps fork_gen.
 * The first acquire, prewarm or drain in the child abandons the orphans
 * (connector->abandon: no I/O on the parent's sessions) and restarts the
 * housekeeper. A connection released with an older fork_gen (borrowed by
 * the forking thread before the fork) is abandoned too and touches no count.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NAME_MAX_LEN 63
#define MS 1000000ull
#define TIMEOUT_MAX_MS 3600000u   /* 1 h: upper bound of every configured wait */
#define DRAIN_UNSET_MS 30000      /* bound on a drain given an unset deadline */

typedef enum { W_WAITING, W_CONN, W_SLOT, W_CLOSED } waiter_state;

#define PARK_SLOTS 8 /* a power of two */
#define PARK_PTR ((UINT64_C(1) << 48) - 1)

/* One queued acquirer. Lives on the acquirer's stack; granted under mu and
 * signalled under mu, or by a releasing thread just after it unlocks mu (see
 * wake_defer), in which case `waking` stays set until that thread no longer
 * touches the node. */
typedef struct waiter {
  pthread_cond_t cv;
  struct waiter *prev, *next;
  waiter_state state;
  resil_pool_conn *conn; /* with W_CONN */
  _Atomic bool waking;   /* a releasing thread is about to signal cv */
} waiter;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Waking a waiter after unlocking mu rather than under it: the woken thread
 * then finds mu free instead of blocking on it again at once (one context
 * switch less per hand-off when threads queue for connections).
 * resil_pool_release() opens this thread's list around its locked section;
 * dispatch_locked() then grants under mu as always but only marks the
 * waiter `waking` and lists it; wake_flush() signals after the unlock and
 * clears `waking`, and the waiter does not leave (its node and condvar live
 * on its stack) while `waking` is set. Everywhere else, and once the list is
 * full, waiters are signalled under mu. */
#define WAKE_DEFER_MAX 8
static _Thread_local __attribute__((tls_model("initial-exec"))) struct wake_defer {
  bool open;
  unsigned n;
  waiter *w[WAKE_DEFER_MAX];
} wake_defer;

static void wake_flush(void) {
  for (unsigned i = 0; i < wake_defer.n; i++) {
    waiter *w = wake_defer.w[i];
    pthread_cond_signal(&w->cv);
    atomic_store_explicit(&w->waking, false, memory_order_release); /* last touch */
  }
  wake_defer.n = 0;
  wake_defer.open = false;
}

/* A waiter granted under mu: signal it now, or after the unlock. */
static void wake_locked(waiter *w) {
  if (wake_defer.open && wake_defer.n < WAKE_DEFER_MAX) {
    atomic_store_explicit(&w->waking, true, memory_order_relaxed);
    wake_defer.w[wake_defer.n++] = w;
  } else {
    pthread_cond_signal(&w->cv);
  }
}

struct resil_pool_conn {
  void *handle;
  uint64_t expires_ns;          /* end of the jittered lifetime; 0 = never */
  /* When it was last returned (or opened). Atomic (relaxed) because the
   * locked release glances at parked connections it does not own
   * (unpark_aged_locked); everyone else reads it owning the connection. */
  _Atomic uint64_t idle_since_ns;
  bool did_io;                  /* the acquire that lent it connected or validated */
  resil_pool_conn *prev, *next; /* idle list; `next` also links close lists */
  uint32_t fork_gen;            /* the pool's fork_gen when it was opened */
  uint64_t gen;                 /* the pool's generation when its connect began */
};

/* What a locked step handed the calling thread. */
typedef enum { G_NONE, G_CONN, G_SLOT } grant_kind;
typedef struct grant {
  grant_kind kind;
  resil_pool_conn *conn;
} grant;

struct resil_pool {
  resil_hist latency; /* first: needs cache-line alignment */
  resil_pool_config cfg;
  char name[NAME_MAX_LEN + 1];
  resil_pool_connector cn;

  /* Set for a pool made by resil_pool_new_endpoints() (a "front" holding no
   * connection): its public functions go to endpoint.c. Read-only after
   * creation, beside the connector (read-only too), so it shares no line
   * with what acquire and release write. */
  struct resil__group *group;

  /* What acquire and release write or read under the mutex, packed on two
   * cache lines of their own (they move between CPUs with the mutex when
   * threads contend; they were spread over six): the mutex, the lists, the
   * counts, the flags and the counters of those paths. All under mu except
   * gen and fork_gen (below). */
  _Alignas(RESIL_CACHELINE) pthread_mutex_t mu;
  resil_pool_conn *idle_head, *idle_tail;
  waiter *wq_head;
  waiter *wq_tail; /* second line */
  uint32_t open, idle, in_use, connecting, waiters;
  bool draining;
  bool forked;             /* fork work left for the first use in the child */
  bool test_skip_dispatch; /* resil__pool_test_skip_dispatch() */
  /* Forks this pool went through: written only by the atfork child handler,
   * before the child has other threads. */
  uint32_t fork_gen;
  /* Generation (resil_pool_evict): written under mu, read anywhere. A
   * connection of an older generation is closed on borrow and on return. */
  _Atomic uint64_t gen;
  uint64_t acquired;
  uint64_t quick_acquires; /* served at once: in latency's first bucket, 0 ns in its sum */

  pthread_cond_t drain_cv; /* broadcast when a slot frees while draining */
  pthread_cond_t hk_cv;    /* wakes the housekeeper to stop */
  pthread_t hk;
  bool hk_running, hk_stop;
  uint64_t acquire_timeouts, connects_ok, connects_failed, connects_timed_out;
  uint64_t closed[RESIL_POOL_CLOSE_REASON_COUNT_];
  uint64_t evictions;

  /* Parking (see the top of this file). park_block: > 0 while a waiter is
   * queued (one per waiter) or the pool drains (+1 for good). park_undo:
   * parked takes that then went the locked way (under mu). */
  _Atomic uint32_t park_block;
  uint64_t park_undo;
#if RESIL_INVARIANTS_ON
  void (*_Atomic test_park_fn)(void *); /* resil__pool_test_before_park() */
  void *test_park_arg;
#endif

  /* Fork (under mu). */
  bool hk_restart;                 /* the housekeeper ran in the parent */
  resil_pool_conn *orphans;        /* the parent's idle connections, to abandon */
  resil_pool *reg_next, *reg_prev; /* every pool, for the atfork handler */

  /* One cache line each: (takes mod 2^16) << 48 | the parked connection. */
  struct park_slot {
    _Alignas(RESIL_CACHELINE) _Atomic uint64_t w;
    _Atomic uint64_t takes_hi; /* takes in units of 2^16 */
  } park[PARK_SLOTS];
};
_Static_assert(offsetof(struct resil_pool, quick_acquires) + sizeof(uint64_t) -
                       offsetof(struct resil_pool, mu) <= 2 * RESIL_CACHELINE,
               "the hot fields of a pool span two cache lines");

/* ---- Configuration ------------------------------------------------------ */

void resil_pool_config_init(resil_pool_config *cfg) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->max_size = 10;
  cfg->min_idle = 0;
  cfg->max_waiters = 64;
  cfg->acquire_timeout_ms = 1000;
  cfg->connect_timeout_ms = 1000;
  cfg->max_lifetime_ms = 1800000;
  cfg->lifetime_jitter_percent = 10;
  cfg->idle_timeout_ms = 600000;
  cfg->validate_after_idle_ms = 5000;
  cfg->validate_timeout_ms = 500;
  cfg->housekeeping_ms = 1000;
}

/* Add a problem for every bad field of c. */
static void check_config(resil_problems *pr, const resil_pool_config *c) {
  if (!c->name || !*c->name)
    resil__problem(pr, "pool.name", "is required");
  else if (strlen(c->name) > NAME_MAX_LEN)
    resil__problem(pr, "pool.name", "'%.20s...' is longer than %d characters", c->name,
                   NAME_MAX_LEN);
  resil__check_range(pr, "pool.max_size", c->max_size, 1, 10000);
  if (c->min_idle > c->max_size)
    resil__problem(pr, "pool.min_idle", "%u is above pool.max_size %u", c->min_idle, c->max_size);
  resil__check_range(pr, "pool.max_waiters", c->max_waiters, 0, 100000);
  resil__check_range(pr, "pool.acquire_timeout_ms", c->acquire_timeout_ms, 1, TIMEOUT_MAX_MS);
  resil__check_range(pr, "pool.connect_timeout_ms", c->connect_timeout_ms, 1, TIMEOUT_MAX_MS);
  resil__check_range(pr, "pool.lifetime_jitter_percent", c->lifetime_jitter_percent, 0, 50);
  resil__check_range(pr, "pool.validate_timeout_ms", c->validate_timeout_ms, 1, TIMEOUT_MAX_MS);
  if (c->housekeeping_ms)
    resil__check_range(pr, "pool.housekeeping_ms", c->housekeeping_ms, 10, TIMEOUT_MAX_MS);
}

resil_status resil_pool_config_validate(const resil_pool_config *cfg, const char *prefix,
                                        resil_err *err) {
  resil_problems pr;
  resil__problems_init(&pr, prefix);
  if (!cfg)
    resil__problem(&pr, "pool", "config is NULL");
  else
    check_config(&pr, cfg);
  return resil__problems_finish(&pr, err);
}

/* ---- Small helpers (all *_locked ones need p->mu) ------------------------ */

static const char *const reason_names[RESIL_POOL_CLOSE_REASON_COUNT_] = {
    "lifetime", "idle", "broken", "validation", "drain", "evicted"};

const char *resil_pool_close_reason_name(resil_pool_close_reason r) {
  if ((unsigned)r >= RESIL_POOL_CLOSE_REASON_COUNT_) return "unknown";
  return reason_names[r];
}

/* The current generation (written only under mu). */
static uint64_t gen_locked(const resil_pool *p) {
  return atomic_load_explicit(&p->gen, memory_order_relaxed);
}

static bool slot_free_locked(const resil_pool *p) {
  return p->open + p->connecting < p->cfg.max_size;
}

/* A new connection's lifetime end: max_lifetime shortened by a random
 * 0..lifetime_jitter_percent so that a fleet does not reconnect at once. */
static uint64_t lifetime_end(const resil_pool *p, uint64_t now) {
  if (!p->cfg.max_lifetime_ms) return 0;
  uint64_t life = p->cfg.max_lifetime_ms * MS;
  uint64_t span = life / 100 * p->cfg.lifetime_jitter_percent;
  if (span) life -= resil__rand() % (span + 1);
  return now + life;
}

/* The clock of connection ages (idle since, lifetime, idle timeout,
 * validation after idle): the coarse clock (~5 ns; behind CLOCK_MONOTONIC by
 * at most a tick, 1-10 ms), so acquire and release read no precise clock.
 * Every threshold it is compared with is >= 1 s by default and never
 * promised to the millisecond. With a fake clock installed, the fake time. */
static inline uint64_t pool_now(void) { return resil__now_coarse_inline_ns(); }

/* A deadline closer than this to the coarse clock is checked against the
 * precise one (the coarse clock lags by one tick: 4 ms at HZ=250, 10 ms at
 * HZ=100). */
#define COARSE_SLACK_NS (25 * MS)

static inline uint64_t idle_since(const resil_pool_conn *c) {
  return atomic_load_explicit(&c->idle_since_ns, memory_order_relaxed);
}

/* now - t, or 0 if t is later (a clock that moved backwards). */
static uint64_t since(uint64_t now, uint64_t t) { return now > t ? now - t : 0; }

static bool lifetime_over(const resil_pool_conn *c, uint64_t now) {
  return c->expires_ns && now >= c->expires_ns;
}

/* Idle longer than idle_timeout_ms (whatever min_idle says). */
static bool idle_expired(const resil_pool *p, const resil_pool_conn *c, uint64_t now) {
  return p->cfg.idle_timeout_ms && since(now, idle_since(c)) >= p->cfg.idle_timeout_ms * MS;
}

/* Idle longer than idle_timeout_ms, and closing it keeps min_idle idle
 * (`idle_left` = idle connections other than c). */
static bool idle_over(const resil_pool *p, const resil_pool_conn *c, uint64_t now,
                      uint32_t idle_left) {
  return idle_expired(p, c, now) && idle_left >= p->cfg.min_idle;
}

static void idle_unlink_locked(resil_pool *p, resil_pool_conn *c) {
  if (c->prev) c->prev->next = c->next; else p->idle_head = c->next;
  if (c->next) c->next->prev = c->prev; else p->idle_tail = c->prev;
  c->prev = c->next = NULL;
  p->idle--;
}

static void idle_push_head_locked(resil_pool *p, resil_pool_conn *c) {
  c->prev = NULL;
  c->next = p->idle_head;
  if (p->idle_head) p->idle_head->prev = c; else p->idle_tail = c;
  p->idle_head = c;
  p->idle++;
}

static void waiter_unlink_locked(resil_pool *p, waiter *w) {
  if (w->prev) w->prev->next = w->next; else p->wq_head = w->next;
  if (w->next) w->next->prev = w->prev; else p->wq_tail = w->prev;
  w->prev = w->next = NULL;
  p->waiters--;
}

/* The pool's invariants (RESIL_INVARIANT, internal.h), checked before every
 * unlock of p->mu (and before a waiter sleeps), so that a broken hand-off
 * stops the test builds where it happens; nothing in other builds. The idle
 * and waiter lists are walked (up to one node past their counts). */
#define pool_check_locked(p) pool_check(p, __LINE__, __func__)
static void pool_check(const resil_pool *p, int line, const char *func) {
#if RESIL_INVARIANTS_ON
#define CHECK(...) RESIL_INVARIANT_AT(__FILE__, line, func, __VA_ARGS__)
  uint64_t open = p->open, connecting = p->connecting, idle = p->idle, in_use = p->in_use;
  CHECK(open + connecting <= p->cfg.max_size,
        "pool '%s': open + connecting <= max_size (open %llu, connecting %llu, max_size %u)",
        p->name, (unsigned long long)open, (unsigned long long)connecting, p->cfg.max_size);
  CHECK(idle + in_use <= open,
        "pool '%s': idle + in_use <= open (idle %llu, in_use %llu, open %llu)", p->name,
        (unsigned long long)idle, (unsigned long long)in_use, (unsigned long long)open);
  CHECK(!p->wq_head || !p->idle_head,
        "pool '%s': waiters queued => no idle connection (%u waiting, %llu idle)", p->name,
        p->waiters, (unsigned long long)idle);
  CHECK(!p->draining || !p->wq_head, "pool '%s': draining => no waiter queued (%u waiting)",
        p->name, p->waiters);
  uint64_t n = 0;
  const resil_pool_conn *last = NULL;
  for (const resil_pool_conn *c = p->idle_head; c && n <= idle; c = c->next) last = c, n++;
  CHECK(n == idle && last == p->idle_tail,
        "pool '%s': the idle list holds `idle` connections, idle_tail last (list %llu, idle %llu)",
        p->name, (unsigned long long)n, (unsigned long long)idle);
  n = 0;
  for (const waiter *w = p->wq_head; w && n <= p->waiters; w = w->next) n++;
  CHECK(n == p->waiters, "pool '%s': the waiter queue holds `waiters` (queue %llu, waiters %u)",
        p->name, (unsigned long long)n, p->waiters);
#undef CHECK
#else
  (void)p, (void)line, (void)func;
#endif
}

/* Connections waiting to be closed once the lock is released. */
typedef struct close_list {
  resil_pool_conn *head;
} close_list;

static void close_push(close_list *l, resil_pool_conn *c) {
  c->prev = NULL;
  c->next = l->head;
  l->head = c;
}

/* Close every connection of l. Call without the lock. */
static void close_all(resil_pool *p, close_list *l) {
  resil_pool_conn *c = l->head;
  while (c) {
    resil_pool_conn *next = c->next;
    p->cn.close(p->cn.ctx, c->handle);
    free(c);
    c = next;
  }
  l->head = NULL;
}

/* Hand idle connections and free slots to queued waiters, oldest first. */
static void dispatch_locked(resil_pool *p) {
  while (p->wq_head) {
    waiter *w = p->wq_head;
    if (p->idle_head) {
      resil_pool_conn *c = p->idle_head;
      idle_unlink_locked(p, c);
      p->in_use++;
      w->state = W_CONN;
      w->conn = c;
    } else if (slot_free_locked(p)) {
      p->connecting++;
      w->state = W_SLOT;
    } else {
      return;
    }
    waiter_unlink_locked(p, w);
    wake_locked(w);
  }
}

/* open + connecting went down: serve a waiter, or tell drain. */
static void slot_freed_locked(resil_pool *p) {
  if (p->draining)
    pthread_cond_broadcast(&p->drain_cv);
  else
    dispatch_locked(p);
}

/* Account an open connection (idle or in use, already unlinked) as closed
 * for reason and put it on l. Does not dispatch the freed slot. */
static void retire_locked(resil_pool *p, resil_pool_conn *c, resil_pool_close_reason reason,
                          close_list *l) {
  p->open--;
  p->closed[reason]++;
  close_push(l, c);
}

/* A connection about to go idle that must not (the pool drains, or it is of
 * an older generation): closed, its slot handed on. True if so. */
static bool retire_unwanted_locked(resil_pool *p, resil_pool_conn *c, close_list *l) {
  if (!p->draining && c->gen == gen_locked(p)) return false;
  retire_locked(p, c, p->draining ? RESIL_POOL_CLOSE_DRAIN : RESIL_POOL_CLOSE_EVICTED, l);
  slot_freed_locked(p);
  return true;
}

/* A connection no one holds yet (just connected, or just returned): make it
 * idle and serve waiters, or close it if the pool is draining. */
static void add_idle_locked(resil_pool *p, resil_pool_conn *c, uint64_t now, close_list *l) {
  if (retire_unwanted_locked(p, c, l)) return;
  atomic_store_explicit(&c->idle_since_ns, now, memory_order_relaxed);
  idle_push_head_locked(p, c);
#if RESIL_INVARIANTS_ON
  if (p->test_skip_dispatch) { /* a lost hand-off, for the invariant test */
    p->test_skip_dispatch = false;
    return;
  }
#endif
  if (p->wq_head) dispatch_locked(p);
}

/* Return an idle connection taken but not lent (no longer counted in_use),
 * keeping its idle time, and serve waiters. */
static void give_back_locked(resil_pool *p, resil_pool_conn *c) {
  idle_push_head_locked(p, c);
  dispatch_locked(p);
}

/* Take an idle connection or reserve a free slot. */
static bool take_locked(resil_pool *p, grant *g) {
  if (p->idle_head) {
    resil_pool_conn *c = p->idle_head;
    idle_unlink_locked(p, c);
    p->in_use++;
    g->kind = G_CONN;
    g->conn = c;
    return true;
  }
  if (slot_free_locked(p)) {
    p->connecting++;
    g->kind = G_SLOT;
    g->conn = NULL;
    return true;
  }
  return false;
}

/* ---- Parking (see the top of this file) ---------------------------------- */

static bool needs_validation(const resil_pool *p, const resil_pool_conn *c, uint64_t now);

/* This thread's slot index + 1 (0: not assigned yet): threads are spread
 * over the slots in turn. */
static _Thread_local __attribute__((tls_model("initial-exec"))) unsigned park_idx;
static _Atomic unsigned park_next;

static inline struct park_slot *my_slot(resil_pool *p) {
  unsigned i = park_idx;
  if (__builtin_expect(!i, 0))
    park_idx = i = atomic_fetch_add_explicit(&park_next, 1, memory_order_relaxed) % PARK_SLOTS + 1;
  return &p->park[i - 1];
}

static inline resil_pool_conn *park_conn(uint64_t w) {
  return (resil_pool_conn *)(uintptr_t)(w & PARK_PTR);
}

/* Take whatever is parked in s (not counted as a take), or NULL. */
static resil_pool_conn *park_grab(struct park_slot *s) {
  uint64_t w = atomic_load(&s->w);
  while (w & PARK_PTR)
    if (atomic_compare_exchange_weak(&s->w, &w, w & ~PARK_PTR)) return park_conn(w);
  return NULL;
}

/* Put c, taken from the idle list's ends, where its idle time belongs: the
 * list stays ordered newest (head) to longest idle (tail). */
static void idle_insert_by_age_locked(resil_pool *p, resil_pool_conn *c) {
  resil_pool_conn *at = p->idle_head;
  while (at && idle_since(at) >= idle_since(c)) at = at->next; /* ties: it is older */
  if (!at) { /* the longest idle: the tail */
    c->next = NULL;
    c->prev = p->idle_tail;
    if (p->idle_tail) p->idle_tail->next = c; else p->idle_head = c;
    p->idle_tail = c;
    p->idle++;
    return;
  }
  if (at == p->idle_head) {
    idle_push_head_locked(p, c);
    return;
  }
  c->prev = at->prev;
  c->next = at;
  at->prev->next = c;
  at->prev = c;
  p->idle++;
}

/* A parked connection taken out (counted in_use until now): idle again,
 * serving a waiter, or closed if draining or of an older generation. */
static void unpark_one_locked(resil_pool *p, resil_pool_conn *c, close_list *l) {
  p->in_use--;
  if (retire_unwanted_locked(p, c, l)) return;
  idle_insert_by_age_locked(p, c);
  if (p->wq_head) dispatch_locked(p);
}

static void unpark_all_locked(resil_pool *p, close_list *l) {
  for (unsigned i = 0; i < PARK_SLOTS; i++) {
    resil_pool_conn *c = park_grab(&p->park[i]);
    if (c) unpark_one_locked(p, c, l);
  }
}

/* Parked connections past their lifetime or idle timeout, to the idle list
 * (by age: the tail sweep that follows closes them). For the locked
 * release, which trims the tail as it goes. */
static void unpark_aged_locked(resil_pool *p, uint64_t now, close_list *l) {
  for (unsigned i = 0; i < PARK_SLOTS; i++) {
    struct park_slot *s = &p->park[i];
    uint64_t w = atomic_load_explicit(&s->w, memory_order_acquire);
    resil_pool_conn *c = park_conn(w);
    if (!c || !(lifetime_over(c, now) || idle_expired(p, c, now))) continue;
    if (atomic_compare_exchange_strong(&s->w, &w, w & ~PARK_PTR)) unpark_one_locked(p, c, l);
  }
}

/* The release without the mutex: park c in this thread's slot, if nobody
 * is queued, the pool is not draining, c is current and its slot is free.
 * False: not parked (release under the mutex). */
static bool park_put(resil_pool *p, resil_pool_conn *c, uint64_t now) {
  if (atomic_load_explicit(&p->park_block, memory_order_relaxed)) return false;
  uint64_t g = atomic_load_explicit(&p->gen, memory_order_relaxed);
  if (c->gen != g || lifetime_over(c, now)) return false;
  struct park_slot *s = my_slot(p);
  uint64_t w = atomic_load_explicit(&s->w, memory_order_relaxed);
  if (w & PARK_PTR) return false;
  atomic_store_explicit(&c->idle_since_ns, now, memory_order_relaxed);
#if RESIL_INVARIANTS_ON
  void (*fn)(void *) = atomic_exchange(&p->test_park_fn, NULL);
  if (fn) fn(p->test_park_arg); /* the race with a waiter, made to happen */
#endif
  if (!atomic_compare_exchange_strong(&s->w, &w, w | (uint64_t)(uintptr_t)c)) return false;
  if (!atomic_load(&p->park_block) && atomic_load(&p->gen) == g) return true;
  /* A waiter queued, a drain began or an eviction came meanwhile: take c
   * back unless their sweep took it already. */
  w = atomic_load(&s->w);
  while (park_conn(w) == c)
    if (atomic_compare_exchange_weak(&s->w, &w, w & ~PARK_PTR)) return false;
  return true;
}

/* The acquire without the mutex: the connection parked in this thread's
 * slot, if nobody is queued and it can be lent as it is (current, within
 * its lifetime, no validation due, not idle past idle_timeout_ms). One
 * that cannot goes back to the idle list, for the full acquire to vet. */
static bool park_take(resil_pool *p, uint64_t now, resil_pool_conn **out) {
  struct park_slot *s = my_slot(p);
  uint64_t w = atomic_load_explicit(&s->w, memory_order_relaxed);
  if (!(w & PARK_PTR) || atomic_load_explicit(&p->park_block, memory_order_relaxed)) return false;
  uint64_t nw = (w & ~PARK_PTR) + (UINT64_C(1) << 48); /* one more take, mod 2^16 */
  if (!atomic_compare_exchange_strong_explicit(&s->w, &w, nw, memory_order_acquire,
                                               memory_order_relaxed))
    return false;
  if (!(nw >> 48)) atomic_fetch_add_explicit(&s->takes_hi, 1, memory_order_relaxed);
  resil_pool_conn *c = park_conn(w);
  if (c->gen == atomic_load_explicit(&p->gen, memory_order_acquire) && !lifetime_over(c, now) &&
      !needs_validation(p, c, now) && !idle_expired(p, c, now)) {
    c->did_io = false;
    *out = c;
    return true;
  }
  close_list dead = {NULL};
  pthread_mutex_lock(&p->mu);
  p->park_undo++; /* not lent from the slot after all */
  unpark_one_locked(p, c, &dead);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  close_all(p, &dead);
  return false;
}

/* Close idle connections from the tail (the longest idle) while they are
 * past their lifetime or idle timeout. True if any slot was freed; the
 * caller then calls slot_freed_locked(). */
static bool sweep_tail_locked(resil_pool *p, uint64_t now, close_list *l) {
  bool freed = false;
  while (p->idle_tail) {
    resil_pool_conn *c = p->idle_tail;
    resil_pool_close_reason r;
    if (lifetime_over(c, now))
      r = RESIL_POOL_CLOSE_LIFETIME;
    else if (idle_over(p, c, now, p->idle - 1))
      r = RESIL_POOL_CLOSE_IDLE;
    else
      break;
    idle_unlink_locked(p, c);
    retire_locked(p, c, r, l);
    freed = true;
  }
  return freed;
}

/* The housekeeper's sweep: close every idle connection past its lifetime,
 * then trim idle-timed-out ones from the tail, then hand freed slots on. */
static void evict_locked(resil_pool *p, uint64_t now, close_list *l) {
  bool freed = false;
  for (resil_pool_conn *c = p->idle_head, *next; c; c = next) {
    next = c->next;
    if (lifetime_over(c, now)) {
      idle_unlink_locked(p, c);
      retire_locked(p, c, RESIL_POOL_CLOSE_LIFETIME, l);
      freed = true;
    }
  }
  if (sweep_tail_locked(p, now, l)) freed = true;
  if (freed) slot_freed_locked(p);
}

/* ---- Connecting ---------------------------------------------------------- */

/* Run the connector for a slot already reserved (counted in `connecting`).
 * Call without the lock. On return the slot is released and the counters
 * are updated; on success *out is a new conn counted open, not yet placed. */
static resil_status connect_slot(resil_pool *p, resil_deadline deadline, resil_pool_conn **out,
                                 resil_err *err) {
  *out = NULL;
  resil_pool_conn *c = calloc(1, sizeof *c);
  resil_err cerr = {.status = RESIL_OK, .msg = ""};
  resil_status st = RESIL_E_NOMEM;
  void *h = NULL;
  /* Read before the connector resolves the name: a connection whose connect
   * began before an eviction may reach the old address. */
  uint64_t gen = atomic_load_explicit(&p->gen, memory_order_acquire);
  if (c) {
    st = p->cn.connect(p->cn.ctx, resil_deadline_bound(deadline, p->cfg.connect_timeout_ms),
                       &h, &cerr);
    /* Local failures (no fd, no memory) stay local: never a dependency
     * failure, and not counted as a failed connect. */
    if (st != RESIL_OK && st != RESIL_E_TIMEOUT && st != RESIL_E_SYSTEM && st != RESIL_E_NOMEM &&
        st != RESIL_E_POOL_TIMEOUT) /* endpoint.c: no budget left among the addresses */
      st = RESIL_E_FAILURE;
  }
  uint64_t now = resil_now_ns();
  pthread_mutex_lock(&p->mu);
  p->connecting--;
  if (st == RESIL_OK) {
    p->connects_ok++;
    p->open++;
    c->fork_gen = p->fork_gen;
  } else {
    if (st == RESIL_E_TIMEOUT) p->connects_timed_out++;
    else if (st == RESIL_E_FAILURE) p->connects_failed++;
    slot_freed_locked(p);
  }
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  if (st == RESIL_E_NOMEM && !c)
    return resil_err_set(err, st, "pool '%s': out of memory", p->name);
  if (st != RESIL_OK) {
    free(c);
    return resil_err_set(err, st, "pool '%s': connect: %s", p->name,
                         cerr.msg[0] ? cerr.msg : st == RESIL_E_TIMEOUT ? "timed out" : "failed");
  }
  c->handle = h;
  c->gen = gen;
  c->expires_ns = lifetime_end(p, now);
  atomic_store_explicit(&c->idle_since_ns, now, memory_order_relaxed);
  *out = c;
  return RESIL_OK;
}

/* Open one connection on a reserved slot and make it idle (or hand it to
 * the oldest waiter). For prewarm and the housekeeper. */
static resil_status open_one(resil_pool *p, resil_deadline deadline, resil_err *err) {
  resil_pool_conn *c;
  resil_status st = connect_slot(p, deadline, &c, err);
  if (st != RESIL_OK) return st;
  close_list dead = {NULL};
  uint64_t now = pool_now();
  pthread_mutex_lock(&p->mu);
  add_idle_locked(p, c, now, &dead);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  close_all(p, &dead);
  return RESIL_OK;
}

/* ---- Fork ------------------------------------------------------------------ */

static void *housekeeper(void *arg);

/* Every live pool, for the atfork handler. */
static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;
static resil_pool *pools_head;

static void pools_add(resil_pool *p) {
  pthread_mutex_lock(&pools_mu);
  p->reg_prev = NULL;
  p->reg_next = pools_head;
  if (pools_head) pools_head->reg_prev = p;
  pools_head = p;
  pthread_mutex_unlock(&pools_mu);
}

static void pools_remove(resil_pool *p) {
  pthread_mutex_lock(&pools_mu);
  if (p->reg_prev) p->reg_prev->reg_next = p->reg_next; else pools_head = p->reg_next;
  if (p->reg_next) p->reg_next->reg_prev = p->reg_prev;
  p->reg_next = p->reg_prev = NULL;
  pthread_mutex_unlock(&pools_mu);
}

void resil__pool_fork_prepare(void) {
  pthread_mutex_lock(&pools_mu);
  for (resil_pool *p = pools_head; p; p = p->reg_next) {
    pthread_mutex_lock(&p->mu);
    if (p->group) resil__group_fork_prepare(p->group);
  }
}

void resil__pool_fork_parent(void) {
  for (resil_pool *p = pools_head; p; p = p->reg_next) {
    if (p->group) resil__group_fork_parent(p->group);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&pools_mu);
}

/* Single-threaded, every pool mutex held: no I/O, no free, no allocation. */
void resil__pool_fork_child(void) {
  for (resil_pool *p = pools_head; p; p = p->reg_next) {
    p->fork_gen++;
    if (p->idle_tail) {
      p->idle_tail->next = p->orphans;
      p->orphans = p->idle_head;
    }
    p->idle_head = p->idle_tail = NULL;
    for (unsigned i = 0; i < PARK_SLOTS; i++) { /* parked: the parent's too */
      uint64_t w = atomic_load_explicit(&p->park[i].w, memory_order_relaxed);
      resil_pool_conn *c = park_conn(w);
      if (!c) continue;
      c->next = p->orphans;
      p->orphans = c;
      atomic_store_explicit(&p->park[i].w, w & ~PARK_PTR, memory_order_relaxed);
    }
    atomic_store_explicit(&p->park_block, p->draining ? 1u : 0u, memory_order_relaxed);
    /* In use, connecting or queued: all by threads of the parent (the
     * forking thread's own borrowed connection comes back with an older
     * fork_gen). Their waiter nodes and condvars are never touched again. */
    p->open = p->idle = p->in_use = p->connecting = p->waiters = 0;
    p->wq_head = p->wq_tail = NULL;
    if (p->hk_running) {
      p->hk_running = false; /* the thread does not exist here: never join it */
      p->hk_restart = true;
    }
    p->forked = true;
    /* Waiters of the parent may be recorded in these (the housekeeper always
     * is in hk_cv): signalling or destroying them could block forever. */
    resil__cond_init(&p->drain_cv);
    resil__cond_init(&p->hk_cv);
    if (p->group) resil__group_fork_child(p->group);
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
  }
  pthread_mutex_unlock(&pools_mu);
}

/* Free a connection of the parent without I/O on its session. */
static void abandon_one(resil_pool *p, resil_pool_conn *c) {
  if (p->cn.abandon) p->cn.abandon(p->cn.ctx, c->handle);
  /* else: the driver handle (and its socket) stays allocated in this child:
   * closing it could end the parent's session. */
  free(c);
}

/* The first use in a child: take the orphans (abandon them after unlocking
 * with abandon_all) and restart the housekeeper unless draining. */
static void after_fork_locked(resil_pool *p, resil_pool_conn **orphans) {
  *orphans = p->orphans;
  p->orphans = NULL;
  p->forked = false;
  if (p->hk_restart && !p->draining && !p->hk_stop) {
    p->hk_restart = false;
    /* It waits for mu, which we hold, before doing anything. */
    if (pthread_create(&p->hk, NULL, housekeeper, p) == 0) p->hk_running = true;
  }
}

static void abandon_all(resil_pool *p, resil_pool_conn *c) {
  while (c) {
    resil_pool_conn *next = c->next;
    abandon_one(p, c);
    c = next;
  }
}

/* ---- Life cycle ---------------------------------------------------------- */

/* Destroy p's sync objects and free it (housekeeper not running). */
static void pool_destroy(resil_pool *p) {
  pthread_cond_destroy(&p->hk_cv);
  pthread_cond_destroy(&p->drain_cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* A pool object for cfg (a valid config): zeroed, its histogram, config,
 * name and locks set up; NULL with err set when out of memory or locks. */
static resil_pool *pool_alloc(const resil_pool_config *cfg, resil_err *err) {
  size_t size = (sizeof(resil_pool) + RESIL_CACHELINE - 1) / RESIL_CACHELINE * RESIL_CACHELINE;
  resil_pool *p = aligned_alloc(RESIL_CACHELINE, size);
  if (!p) {
    resil_err_set(err, RESIL_E_NOMEM, "pool '%s': out of memory", cfg->name);
    return NULL;
  }
  memset(p, 0, sizeof *p);
  resil__hist_init(&p->latency);
  p->cfg = *cfg;
  resil__strlcpy(p->name, cfg->name, sizeof p->name);
  p->cfg.name = p->name;
  if (pthread_mutex_init(&p->mu, NULL) || resil__cond_init(&p->drain_cv) ||
      resil__cond_init(&p->hk_cv)) {
    free(p); /* init failures leave nothing to destroy on Linux */
    resil_err_set(err, RESIL_E_SYSTEM, "pool '%s': cannot initialise locks", cfg->name);
    return NULL;
  }
  return p;
}

resil_pool *resil_pool_new(const resil_pool_config *cfg, const resil_pool_connector *connector,
                           resil_err *err) {
  resil__fork_init();
  resil_problems pr;
  resil__problems_init(&pr, NULL);
  if (!cfg)
    resil__problem(&pr, "pool", "config is NULL");
  else
    check_config(&pr, cfg);
  if (!connector) {
    resil__problem(&pr, "connector", "is NULL");
  } else {
    if (!connector->connect) resil__problem(&pr, "connector.connect", "is required");
    if (!connector->close) resil__problem(&pr, "connector.close", "is required");
  }
  if (resil__problems_finish(&pr, err) != RESIL_OK) return NULL;

  resil_pool *p = pool_alloc(cfg, err);
  if (!p) return NULL;
  p->cn = *connector;
  if (cfg->housekeeping_ms) {
    int rc = pthread_create(&p->hk, NULL, housekeeper, p);
    if (rc) {
      pool_destroy(p);
      resil_err_set(err, RESIL_E_SYSTEM, "pool '%s': housekeeper thread: %s", cfg->name,
                    strerror(rc));
      return NULL;
    }
    p->hk_running = true;
  }
  pools_add(p);
  return p;
}

resil_status resil_pool_prewarm(resil_pool *p, resil_deadline deadline, resil_err *err) {
  if (!p) return resil_err_set(err, RESIL_E_INVALID, "pool prewarm: pool is NULL");
  if (p->group) return resil__group_prewarm(p->group, deadline, err);
  /* Each round either fills a slot or fails; max_size rounds bound the loop
   * even if waiters keep taking the new connections. */
  for (uint32_t round = 0; round <= p->cfg.max_size; round++) {
    pthread_mutex_lock(&p->mu);
    if (p->forked) {
      resil_pool_conn *orphans;
      after_fork_locked(p, &orphans);
      pool_check_locked(p);
      pthread_mutex_unlock(&p->mu);
      abandon_all(p, orphans);
      pthread_mutex_lock(&p->mu);
    }
    if (p->draining) {
      pool_check_locked(p);
      pthread_mutex_unlock(&p->mu);
      return resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
    }
    if (p->idle >= p->cfg.min_idle || !slot_free_locked(p)) {
      pool_check_locked(p);
      pthread_mutex_unlock(&p->mu);
      return RESIL_OK;
    }
    if (resil_deadline_expired(deadline)) {
      uint32_t open = p->open;
      pool_check_locked(p);
      pthread_mutex_unlock(&p->mu);
      return resil_err_set(err, RESIL_E_TIMEOUT,
                           "pool '%s': prewarm: deadline passed with %u of %u open", p->name,
                           open, p->cfg.min_idle);
    }
    p->connecting++;
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    resil_status st = open_one(p, deadline, err);
    if (st != RESIL_OK) return st;
  }
  return RESIL_OK;
}

/* Bring idle connections up to min_idle, one connect at a time, stopping at
 * the first failure. Housekeeper thread. */
static void refill(resil_pool *p) {
  for (uint32_t round = 0; round < p->cfg.min_idle; round++) {
    pthread_mutex_lock(&p->mu);
    bool go = !p->hk_stop && !p->draining && p->idle < p->cfg.min_idle && !p->wq_head &&
              slot_free_locked(p);
    if (go) p->connecting++;
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    if (!go || open_one(p, RESIL_DEADLINE_UNSET, NULL) != RESIL_OK) return;
  }
}

/* Every housekeeping_ms: evict expired idle connections, refill min_idle. */
static void *housekeeper(void *arg) {
  resil_pool *p = arg;
  pthread_mutex_lock(&p->mu);
  while (!p->hk_stop) {
    resil_deadline next = resil_deadline_in_ms(p->cfg.housekeeping_ms);
    while (!p->hk_stop && !resil_deadline_expired(next))
      resil__cond_wait_until(&p->hk_cv, &p->mu, next);
    if (p->hk_stop || p->draining) continue;
    close_list dead = {NULL};
    unpark_all_locked(p, &dead); /* so that ages are judged for every idle connection */
    evict_locked(p, resil_now_ns(), &dead);
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    close_all(p, &dead);
    refill(p);
    pthread_mutex_lock(&p->mu);
  }
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

resil_status resil_pool_drain(resil_pool *p, resil_deadline deadline) {
  if (!p) return RESIL_E_INVALID;
  if (!resil_deadline_is_set(deadline)) deadline = resil_deadline_in_ms(DRAIN_UNSET_MS);
  if (p->group) return resil__group_drain(p->group, deadline);
  close_list dead = {NULL};
  resil_pool_conn *orphans = NULL;
  pthread_mutex_lock(&p->mu);
  if (!p->draining) atomic_fetch_add(&p->park_block, 1); /* for good */
  p->draining = true;
  if (p->forked) after_fork_locked(p, &orphans);
  unpark_all_locked(p, &dead);
  while (p->wq_head) {
    waiter *w = p->wq_head;
    waiter_unlink_locked(p, w);
    w->state = W_CLOSED;
    pthread_cond_signal(&w->cv);
  }
  while (p->idle_head) {
    resil_pool_conn *c = p->idle_head;
    idle_unlink_locked(p, c);
    retire_locked(p, c, RESIL_POOL_CLOSE_DRAIN, &dead);
  }
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  abandon_all(p, orphans);
  close_all(p, &dead);

  pthread_mutex_lock(&p->mu);
  while (p->open + p->connecting > 0)
    if (resil__cond_wait_until(&p->drain_cv, &p->mu, deadline) == ETIMEDOUT) break;
  bool done = p->open + p->connecting == 0;
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  return done ? RESIL_OK : RESIL_E_TIMEOUT;
}

void resil_pool_free(resil_pool *p) {
  if (!p) return;
  pools_remove(p);
  if (p->group) {
    resil__group_free(p->group);
    pool_destroy(p);
    return;
  }
  resil_pool_drain(p, resil_deadline_in_ms(0));
  pthread_mutex_lock(&p->mu);
  bool join = p->hk_running; /* false in a child until restarted */
  p->hk_stop = true;
  pthread_cond_signal(&p->hk_cv);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  if (join) pthread_join(p->hk, NULL); /* a refill connect in flight is closed as drained */
  pool_destroy(p);
}

/* ---- Acquire and release ------------------------------------------------- */

/* Queue as a waiter until handed a grant, the wait ends, or drain. */
static resil_status wait_locked(resil_pool *p, resil_deadline deadline, grant *g,
                                close_list *dead, resil_err *err) {
  if (p->waiters >= p->cfg.max_waiters) {
    p->acquire_timeouts++;
    return resil_err_set(err, RESIL_E_POOL_TIMEOUT,
                         "pool '%s': waiter queue is full (%u waiting, %u of %u connections busy)",
                         p->name, p->waiters, p->in_use + p->connecting, p->cfg.max_size);
  }
  waiter w = {.state = W_WAITING};
  if (resil__cond_init(&w.cv))
    return resil_err_set(err, RESIL_E_SYSTEM, "pool '%s': cannot initialise a condvar", p->name);
  w.prev = p->wq_tail;
  if (p->wq_tail) p->wq_tail->next = &w; else p->wq_head = &w;
  p->wq_tail = &w;
  p->waiters++;
  /* No parking while we wait, and what is parked comes to the idle list
   * (and to us, the oldest waiter first): see park_put(). */
  atomic_fetch_add(&p->park_block, 1);
  unpark_all_locked(p, dead);

  uint64_t t0 = resil_now_ns();
  resil_deadline until = resil_deadline_bound(deadline, p->cfg.acquire_timeout_ms);
  pool_check_locked(p);
  while (w.state == W_WAITING)
    if (resil__cond_wait_until(&w.cv, &p->mu, until) == ETIMEDOUT && w.state == W_WAITING) {
      waiter_unlink_locked(p, &w);
      break;
    }
  if (atomic_load_explicit(&w.waking, memory_order_acquire)) {
    /* granted by a thread that signals after unlocking: let it finish with
     * our node (a few instructions away unless it was preempted) */
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; atomic_load_explicit(&w.waking, memory_order_acquire); i++)
      if (i < 64) cpu_relax(); else sched_yield();
    pthread_mutex_lock(&p->mu);
  }
  pthread_cond_destroy(&w.cv);
  if (!p->forked) atomic_fetch_sub(&p->park_block, 1); /* (reset in a child of fork) */

  switch (w.state) {
  case W_CONN:
    g->kind = G_CONN;
    g->conn = w.conn;
    return RESIL_OK;
  case W_SLOT:
    g->kind = G_SLOT;
    return RESIL_OK;
  case W_CLOSED:
    return resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
  default:
    p->acquire_timeouts++;
    return resil_err_set(err, RESIL_E_POOL_TIMEOUT,
                         "pool '%s': no connection free within %llu ms (%u of %u busy)", p->name,
                         (unsigned long long)(since(resil_now_ns(), t0) / MS),
                         p->in_use + p->connecting, p->cfg.max_size);
  }
}

/* Why an idle connection just taken (already counted in_use) must not be
 * lent, or RESIL_POOL_CLOSE_REASON_COUNT_ if it may. */
static resil_pool_close_reason stale_reason_locked(const resil_pool *p,
                                                   const resil_pool_conn *c, uint64_t now) {
  if (c->gen != gen_locked(p)) return RESIL_POOL_CLOSE_EVICTED;
  if (lifetime_over(c, now)) return RESIL_POOL_CLOSE_LIFETIME;
  if (idle_over(p, c, now, p->idle)) return RESIL_POOL_CLOSE_IDLE;
  return RESIL_POOL_CLOSE_REASON_COUNT_;
}

static bool needs_validation(const resil_pool *p, const resil_pool_conn *c, uint64_t now) {
  return p->cn.validate && since(now, idle_since(c)) >= p->cfg.validate_after_idle_ms * MS;
}

/* Give back a reserved slot unused. */
static void unreserve_locked(resil_pool *p) {
  p->connecting--;
  slot_freed_locked(p);
}

/* The deadline ran out inside this acquire. Before any I/O against the
 * dependency it is a local rejection (RESIL_E_POOL_TIMEOUT: the time went
 * waiting for a connection); after a validation (*did_io) it is the
 * dependency's time, RESIL_E_TIMEOUT. Needs mu. */
static resil_status out_of_time_locked(resil_pool *p, bool did_io, bool connecting,
                                       resil_err *err) {
  if (did_io)
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "pool '%s': timed out: validating connections used the whole deadline "
                         "(none left for %s)",
                         p->name, connecting ? "a new connection" : "the next idle one");
  p->acquire_timeouts++;
  return resil_err_set(err, RESIL_E_POOL_TIMEOUT, "pool '%s': deadline passed before %s", p->name,
                       connecting ? "connecting" : "validating");
}

/* Lend the idle connection g->conn, or close it if it is being drained,
 * stale or fails validation and take the next idle one or the slot it
 * freed, until one is lent (*out set) or g holds a slot. Needs mu; drops it
 * around validate (and sets *did_io). Closed connections go on dead. */
static resil_status vet_locked(resil_pool *p, resil_deadline deadline, grant *g, close_list *dead,
                               resil_pool_conn **out, bool *did_io, resil_err *err) {
  while (g->kind == G_CONN) {
    resil_pool_conn *c = g->conn;
    uint64_t now = pool_now();
    resil_pool_close_reason r =
        p->draining ? RESIL_POOL_CLOSE_DRAIN : stale_reason_locked(p, c, now);
    if (r == RESIL_POOL_CLOSE_REASON_COUNT_ && needs_validation(p, c, now)) {
      if (resil_deadline_expired(deadline)) {
        /* A check with no time left would fail and close a good
         * connection: put it back untouched instead. */
        p->in_use--;
        give_back_locked(p, c);
        return out_of_time_locked(p, *did_io, false, err);
      }
      *did_io = true;
      pool_check_locked(p);
      pthread_mutex_unlock(&p->mu);
      bool ok = p->cn.validate(p->cn.ctx, c->handle,
                               resil_deadline_bound(deadline, p->cfg.validate_timeout_ms));
      pthread_mutex_lock(&p->mu);
      if (!ok) r = RESIL_POOL_CLOSE_VALIDATION;
      else if (p->draining) r = RESIL_POOL_CLOSE_DRAIN;
    }
    if (r == RESIL_POOL_CLOSE_REASON_COUNT_) {
      p->acquired++;
      c->did_io = *did_io;
      *out = c;
      return RESIL_OK;
    }
    p->in_use--;
    retire_locked(p, c, r, dead);
    if (p->draining) {
      slot_freed_locked(p);
      return resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
    }
    take_locked(p, g); /* cannot fail: we just freed a slot */
  }
  return RESIL_OK;
}

/* Before connecting on a reserved slot: give it back if the pool is
 * draining or the caller has no time left. Needs mu. */
static resil_status slot_check_locked(resil_pool *p, resil_deadline deadline, bool did_io,
                                      resil_err *err) {
  if (p->draining) {
    unreserve_locked(p);
    return resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
  }
  if (resil_deadline_expired(deadline)) {
    unreserve_locked(p);
    return out_of_time_locked(p, did_io, true, err);
  }
  return RESIL_OK;
}

/* Connect on our reserved slot and lend the new connection. Call without
 * mu. */
static resil_status connect_and_lend(resil_pool *p, resil_deadline deadline,
                                     resil_pool_conn **out, resil_err *err) {
  resil_pool_conn *c;
  resil_status st = connect_slot(p, deadline, &c, err);
  if (st != RESIL_OK) return st;
  close_list dead = {NULL};
  pthread_mutex_lock(&p->mu);
  if (p->draining) {
    retire_locked(p, c, RESIL_POOL_CLOSE_DRAIN, &dead);
    slot_freed_locked(p);
    st = resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
  } else {
    p->in_use++;
    p->acquired++;
    c->did_io = true;
    *out = c;
  }
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  close_all(p, &dead);
  return st;
}

/* The body of resil_pool_acquire (deadline already checked): take an idle
 * connection or a slot (queueing if needed), vet the connection, or
 * connect on the slot. */
static resil_status acquire(resil_pool *p, resil_deadline deadline, resil_pool_conn **out,
                            resil_err *err) {
  close_list dead = {NULL};
  grant g = {G_NONE, NULL};
  resil_status st = RESIL_OK;
  resil_pool_conn *orphans = NULL;
  bool did_io = false; /* validated a connection: the dependency's time from here on */
  pthread_mutex_lock(&p->mu);
  if (__builtin_expect(p->forked, 0)) after_fork_locked(p, &orphans);
  if (p->draining)
    st = resil_err_set(err, RESIL_E_CLOSED, "pool '%s': draining", p->name);
  else {
    if (!p->idle_head && !p->wq_head) unpark_all_locked(p, &dead); /* before connecting */
    if (p->wq_head || !take_locked(p, &g)) st = wait_locked(p, deadline, &g, &dead, err);
  }
  /* From here we hold a grant and keep our slot until we return. */
  if (st == RESIL_OK) st = vet_locked(p, deadline, &g, &dead, out, &did_io, err);
  if (st == RESIL_OK && g.kind == G_SLOT) st = slot_check_locked(p, deadline, did_io, err);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  if (orphans) abandon_all(p, orphans);
  close_all(p, &dead);
  if (st == RESIL_OK && g.kind == G_SLOT) st = connect_and_lend(p, deadline, out, err);
  return st;
}

/* Take mu without sleeping: up to 100 tries (glibc's adaptive mutexes spin
 * as long), a few microseconds at most; the lock is only ever held for
 * bookkeeping, never over I/O. */
static bool lock_quick(pthread_mutex_t *mu) {
  for (int i = 0; i < 100; i++) {
    if (pthread_mutex_trylock(mu) == 0) return true;
    cpu_relax();
  }
  return false;
}

/* The common acquire: the lock taken without sleeping, nobody queued, and
 * the idle head lendable as it is (stale_reason_locked() and
 * needs_validation() as vet_locked() applies them, at the coarse `now`).
 * Such an acquire lasts well under the latency histogram's first bound
 * (100 us; the spin above is bounded), so it is counted there without
 * reading a precise clock (quick_acquires, 0 ns in the sum). False: state
 * untouched, take the full path. */
static bool acquire_quick(resil_pool *p, uint64_t now, resil_pool_conn **out) {
  if (!lock_quick(&p->mu)) return false;
  grant g;
  bool ok = !p->forked && !p->draining && !p->wq_head && p->idle_head && take_locked(p, &g);
  if (ok) {
    resil_pool_conn *c = g.conn;
    if (stale_reason_locked(p, c, now) == RESIL_POOL_CLOSE_REASON_COUNT_ &&
        !needs_validation(p, c, now)) {
      p->acquired++;
      p->quick_acquires++;
      c->did_io = false;
      *out = c;
    } else { /* undo take_locked(): it goes back where it was, the head */
      p->in_use--;
      idle_push_head_locked(p, c);
      ok = false;
    }
  }
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  return ok;
}

static resil_status acquire_timed(resil_pool *p, resil_deadline deadline, resil_pool_conn **out,
                                  resil_err *err);

resil_status resil_pool_acquire(resil_pool *p, resil_deadline deadline, resil_pool_conn **out,
                                resil_err *err) {
  if (out) *out = NULL;
  if (!p || !out)
    return resil_err_set(err, RESIL_E_INVALID, "pool acquire: %s is NULL", p ? "out" : "pool");
  if (__builtin_expect(p->group != NULL, 0)) return resil__group_acquire(p->group, deadline, out, err);
  uint64_t now = pool_now();
  /* The coarse clock is behind: a deadline near it is checked precisely. */
  bool near = deadline.at_ns && deadline.at_ns <= now + COARSE_SLACK_NS;
  if (near && resil__now_fast_ns() >= deadline.at_ns)
    return resil_err_set(err, RESIL_E_DEADLINE, "pool '%s': deadline already passed", p->name);
  if (park_take(p, now, out) || acquire_quick(p, now, out)) return RESIL_OK;
  return acquire_timed(p, deadline, out, err);
}

/* The full acquire, timed: the latency histogram sees every attempt that got
 * this far (the quick try's few microseconds at most are not counted). Kept
 * out of line so that the quick path stays small. */
static __attribute__((noinline)) resil_status acquire_timed(resil_pool *p, resil_deadline deadline,
                                                            resil_pool_conn **out, resil_err *err) {
  uint64_t t0 = resil__now_fast_ns();
  if (deadline.at_ns && t0 >= deadline.at_ns)
    return resil_err_set(err, RESIL_E_DEADLINE, "pool '%s': deadline already passed", p->name);
  resil_status st = acquire(p, deadline, out, err);
  uint64_t t1 = resil__now_fast_ns();
  resil__hist_observe(&p->latency, t1 > t0 ? t1 - t0 : 0);
  return st;
}

void *resil_pool_conn_handle(const resil_pool_conn *c) { return c ? c->handle : NULL; }

bool resil_pool_conn_did_io(const resil_pool_conn *c) { return c && c->did_io; }

/* ---- Eviction ------------------------------------------------------------- */

uint64_t resil_pool_generation(const resil_pool *p) {
  return p ? atomic_load_explicit(&p->gen, memory_order_acquire) : 0;
}

uint64_t resil_pool_conn_generation(const resil_pool_conn *c) { return c ? c->gen : 0; }

bool resil_pool_evict(resil_pool *p, uint64_t generation) {
  if (!p) return false;
  if (p->group) return resil__group_evict(p->group, generation);
  close_list dead = {NULL};
  pthread_mutex_lock(&p->mu);
  uint64_t g = gen_locked(p);
  if (generation != RESIL_POOL_GEN_CURRENT && generation != g) {
    pool_check_locked(p);
    pthread_mutex_unlock(&p->mu);
    return false; /* an eviction since then already covered it */
  }
  atomic_store(&p->gen, g + 1); /* before the sweep: see park_put() */
  p->evictions++;
  unpark_all_locked(p, &dead);
  bool freed = false;
  while (p->idle_head) {
    resil_pool_conn *c = p->idle_head;
    idle_unlink_locked(p, c);
    retire_locked(p, c, RESIL_POOL_CLOSE_EVICTED, &dead);
    freed = true;
  }
  if (freed) slot_freed_locked(p);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  close_all(p, &dead);
  return true;
}

void resil_pool_release(resil_pool *p, resil_pool_conn *c, resil_pool_return how) {
  if (!p || !c) return;
  if (__builtin_expect(p->group != NULL, 0)) {
    resil__group_release(p->group, c, how);
    return;
  }
  if (__builtin_expect(c->fork_gen != p->fork_gen, 0)) {
    /* Borrowed before a fork, released in the child: the parent still uses
     * this session, and this child never counted it. */
    abandon_one(p, c);
    return;
  }
  uint64_t now = pool_now();
  if (how == RESIL_POOL_OK && park_put(p, c, now)) return;
  close_list dead = {NULL};
  wake_defer.open = true;
  pthread_mutex_lock(&p->mu);
  p->in_use--;
  bool stale = c->gen != gen_locked(p);
  if (how != RESIL_POOL_OK || p->draining || stale || lifetime_over(c, now)) {
    resil_pool_close_reason r = how != RESIL_POOL_OK ? RESIL_POOL_CLOSE_BROKEN
                                : p->draining        ? RESIL_POOL_CLOSE_DRAIN
                                : stale              ? RESIL_POOL_CLOSE_EVICTED
                                                     : RESIL_POOL_CLOSE_LIFETIME;
    retire_locked(p, c, r, &dead);
    slot_freed_locked(p);
  } else {
    add_idle_locked(p, c, now, &dead);
  }
  unpark_aged_locked(p, now, &dead);
  /* the tail (the longest idle) is checked first, inline: usually fresh */
  resil_pool_conn *tail = p->idle_tail;
  if (tail && (lifetime_over(tail, now) || idle_over(p, tail, now, p->idle - 1)) &&
      sweep_tail_locked(p, now, &dead))
    slot_freed_locked(p);
  pool_check_locked(p);
  pthread_mutex_unlock(&p->mu);
  wake_flush();
  if (dead.head) close_all(p, &dead);
}

/* ---- Test hooks (internal.h) -------------------------------------------- */

void resil__pool_test_open_add(resil_pool *p, int32_t delta) {
  pthread_mutex_lock(&p->mu);
  p->open += (uint32_t)delta;
  pthread_mutex_unlock(&p->mu);
}

void resil__pool_test_before_park(resil_pool *p, void (*fn)(void *), void *arg) {
#if RESIL_INVARIANTS_ON
  p->test_park_arg = arg;
  atomic_store(&p->test_park_fn, fn);
#else
  (void)p, (void)fn, (void)arg;
#endif
}

void resil__pool_test_skip_dispatch(resil_pool *p) {
  pthread_mutex_lock(&p->mu);
  p->test_skip_dispatch = true;
  pthread_mutex_unlock(&p->mu);
}

/* ---- Introspection ------------------------------------------------------- */

void resil_pool_get_stats(const resil_pool *p, resil_pool_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!p) return;
  if (p->group) {
    resil__group_stats(p->group, out);
    return;
  }
  resil_pool *m = (resil_pool *)p; /* the lock is not part of the value */
  pthread_mutex_lock(&m->mu);
  out->max = p->cfg.max_size;
  out->open = p->open;
  out->idle = p->idle;
  out->in_use = p->in_use;
  out->connecting = p->connecting;
  out->waiters = p->waiters;
  out->acquired = p->acquired;
  out->acquire_timeouts = p->acquire_timeouts;
  out->connects_ok = p->connects_ok;
  out->connects_failed = p->connects_failed;
  out->connects_timed_out = p->connects_timed_out;
  memcpy(out->closed, p->closed, sizeof p->closed);
  out->evictions = p->evictions;
  out->generation = gen_locked(p);
  uint64_t quick = p->quick_acquires - p->park_undo;
  for (unsigned i = 0; i < PARK_SLOTS; i++) {
    uint64_t w = atomic_load(&m->park[i].w);
    uint64_t takes = (atomic_load(&m->park[i].takes_hi) << 16) + (w >> 48);
    quick += takes;
    out->acquired += takes;
    if (park_conn(w)) { /* counted in_use under mu: show it idle */
      out->idle++;
      if (out->in_use) out->in_use--;
    }
  }
  out->acquired -= p->park_undo;
  pthread_mutex_unlock(&m->mu);
  resil__hist_read(&p->latency, &out->acquire_latency);
  out->acquire_latency.counts[0] += quick;
  out->acquire_latency.count += quick;
}

const char *resil_pool_name(const resil_pool *p) { return p ? p->name : NULL; }

/* ---- Several addresses (endpoint.c) ------------------------------------ */

resil_pool *resil__pool_new_front(const resil_pool_config *cfg, struct resil__group *g,
                                  uint64_t gen, resil_err *err) {
  resil_pool *p = pool_alloc(cfg, err);
  if (!p) return NULL;
  p->group = g;
  atomic_store(&p->gen, gen);
  pools_add(p);
  return p;
}

struct resil__group *resil__pool_group(const resil_pool *p) { return p->group; }

void resil__pool_set_generation(resil_pool *p, uint64_t gen) { atomic_store(&p->gen, gen); }

bool resil__pool_close_one_idle(resil_pool *p) {
  close_list dead = {NULL};
  pthread_mutex_lock(&p->mu);
  unpark_all_locked(p, &dead);
  resil_pool_conn *c = p->idle_tail;
  if (c) {
    idle_unlink_locked(p, c);
    retire_locked(p, c, RESIL_POOL_CLOSE_IDLE, &dead);
    slot_freed_locked(p);
  }
  pthread_mutex_unlock(&p->mu);
  close_all(p, &dead);
  return c != NULL;
}
