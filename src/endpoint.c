/* Several addresses behind one pool, with outlier ejection (see
 * resil/endpoint.h).
 *
 * Shape: a "front" resil_pool (pool.c: resil__pool_new_front) whose
 * acquire, release, prewarm, drain, stats, evict and free come here; one
 * ordinary member pool per address, whose connector is wrapped (ep_connect,
 * ep_close...) to charge the shared connection budget and to hand the
 * adapter's connect_to() its address.
 *
 * Slots: eps[] holds the addresses. From a host list, slots 0..n-1, all in
 * the set for the pool's life. From DNS (resil_pool_new_endpoints_dns),
 * any of SLOTS slots: the bitmask `live` says which are in the set, `gone`
 * which left it and still have a pool draining (no new call; idle
 * connections closed at once, borrowed ones on release); a gone slot's pool
 * is freed once nothing is borrowed from it and it has nothing open, and
 * the slot may then take a new address (with a new pool).
 *
 * Who may use a slot's pool: a thread that holds one unit of the slot's
 * `outstanding` and saw the slot live AFTER taking it (acquire and release;
 * the reaper frees only a gone slot whose outstanding it saw at 0, both
 * sides sequentially consistent), or a thread holding setlk for reading
 * (stats, evict, the budget's steal_idle), which then checks e->pool for
 * NULL. Installing or freeing a slot's pool takes setlk for writing, and
 * only ever for the pointer swap (never while calling into a pool).
 *
 * A borrowed connection is mapped back to its member by its generation:
 * slot i's generations are i << GEN_SHIFT + incarnation << INC_SHIFT + k
 * (resil__pool_set_generation when its pool is made; an eviction adds 1),
 * so resil_pool_conn_generation() names the member. The front's own
 * generation (GEN_NONE) names none.
 *
 * State per address: counters are atomics written on the call path;
 * ejection state (ejected, until, times_ejected, healthy_since) changes
 * under g->mu, and the set of ejected addresses is mirrored in the atomic
 * bitmask `ejected`, which the picker reads without a lock. The budget
 * (connections open or connecting over all members, removed ones included)
 * is an atomic count; a connect that finds it full closes another member's
 * idle connection or waits on bcv (bmu), woken by a close or a release.
 *
 * Following DNS (dns_state): the first acquire after the refresh time (the
 * resolver cache's expiry of the answer) or after resil__resolve_epoch
 * moved (resil_resolve_invalidate: a failover) takes d->mu with trylock and
 * starts the lookup without waiting (resil__resolve_begin); later acquires
 * poll it and the one that finds it done applies the answer. No caller ever
 * waits for DNS except while the set is still empty (the first resolution,
 * under the caller's deadline, as a single-address pool's connect does).
 *
 * Lock order: setlk (read) before g->mu; d->mu before setlk and g->mu.
 * g->mu, g->bmu and setlk are never held while calling into a member pool
 * (d->mu is: the maintainer creates, drains and frees pools), and a member
 * pool never calls back here with its lock held (pool.h: connector
 * callbacks run without the lock).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "resil/endpoint.h"
#include "resolve_internal.h"

#define GEN_SHIFT 56
#define INC_SHIFT 32
#define GEN_NONE ((uint64_t)0xFF << GEN_SHIFT)
#define MS 1000000ull
#define BUDGET_POLL_NS (10 * MS) /* a budget waiter looks for idle connections this often */
#define SLOTS (2 * RESIL_ENDPOINTS_MAX) /* the set, and as many removed ones draining */
#define BIT(i) (1u << (i))
_Static_assert(SLOTS <= 32, "the slot masks are uint32_t");
#define DNS_ANSWER_MAX 32    /* addresses of one answer looked at */
#define DNS_POLL_MS 2        /* a lookup in flight is checked this often, at most */
#define DNS_RETRY_MS 1000    /* after a failed refresh, the next one */
#define DNS_REAP_MS 20       /* removed addresses' pools are checked this often */
#define DNS_MIN_MS 100       /* refresh no more often than this */
#define DNS_NO_CACHE_MS 1000 /* refresh period with the resolver's cache off (TTL 0) */

typedef struct ep {
  _Atomic uint32_t outstanding;
  _Atomic uint32_t consecutive;
  _Atomic int last_ok;   /* -1 nothing yet, 0 last call failed, 1 succeeded */
  _Atomic bool probation;
  _Atomic uint64_t calls, failures, ejections, skipped;
  _Atomic uint64_t sr_calls, sr_ok; /* this success-rate interval */
  /* under g->mu */
  bool ejected;
  uint64_t until_ns, healthy_since_ns;
  uint32_t times_ejected;
  /* set while the slot is neither live nor gone (setlk for writing) */
  struct resil__group *g;
  unsigned idx;
  uint32_t incarnation;
  resil_pool *pool;
  resil_endpoint addr;
} __attribute__((aligned(64))) ep;

/* The name an endpoint set follows (resil_pool_new_endpoints_dns). */
typedef struct dns_state {
  char host[256];
  uint16_t port;
  _Atomic uint64_t due_ns;     /* next dns_maintain() from the call path */
  _Atomic uint64_t seen_epoch; /* resil__resolve_epoch at the last dns_maintain() */
  _Atomic bool stop;           /* draining or freed: the set no longer changes */
  pthread_mutex_t mu;          /* one maintainer at a time; what follows is under it */
  resil__lookup *lk;           /* a lookup in flight */
  uint64_t refresh_ns;         /* when the answer stops being fresh */
  uint64_t lookup_ns;          /* when the last lookup (not a cache hit) started */
  uint64_t refreshes, failures, added, removed;
  uint32_t dropped;
  bool stale, ever;
  char last_error[RESIL_ERR_MSG_MAX];
} dns_state;

struct resil__group {
  ep eps[SLOTS];
  unsigned n;              /* slots used: the host list's length, or SLOTS */
  resil_outlier_config oc;
  resil_pool_connector cn; /* the adapter's: validate, close, abandon, ctx */
  resil_endpoint_connect_fn connect_to;
  resil_pool *front;
  resil_pool_config mcfg;  /* a member pool's (min_idle spread); d->mu for DNS */
  uint32_t min_idle_total; /* the configured min_idle, spread over the members */
  dns_state *dns;          /* NULL for a host list */
  pthread_mutex_t mu;
  pthread_rwlock_t setlk;
  _Atomic uint32_t live;        /* bit i: eps[i] is in the set */
  _Atomic uint32_t gone;        /* bit i: eps[i] left the set, its pool drains */
  _Atomic uint32_t ejected;     /* bit i: eps[i] ejected */
  _Atomic uint64_t next_due_ns; /* earliest `until` of an ejected address */
  _Atomic uint64_t sr_due_ns;   /* next success-rate evaluation */
  _Atomic uint32_t rr;          /* resil_pool_endpoint_next */
  /* budget */
  uint32_t budget_max;
  _Atomic uint32_t used;
  _Atomic uint32_t bwaiters;
  pthread_mutex_t bmu;
  pthread_cond_t bcv;
};

static inline unsigned n_live(const struct resil__group *g) {
  return (unsigned)__builtin_popcount(atomic_load_explicit(&g->live, memory_order_relaxed));
}

/* Index of the k-th set bit of m (k < popcount(m)). */
static inline unsigned nth_bit(uint32_t m, unsigned k) {
  while (k--) m &= m - 1;
  return (unsigned)__builtin_ctz(m);
}

#define FOR_BITS(i, mask) \
  for (uint32_t m_ = (mask), i; m_ && ((i = (uint32_t)__builtin_ctz(m_)), 1); m_ &= m_ - 1)

/* ---- Host lists ------------------------------------------------------------ */

/* Letters, digits and . - _ : % (a zone id): also safe in a metric label. */
static bool host_char_ok(unsigned char c) {
  return isalnum(c) || c == '.' || c == '-' || c == '_' || c == ':' || c == '%';
}

/* Parse one entry [b, e) into *out. */
static resil_status parse_entry(const char *b, const char *e, uint32_t default_port,
                                unsigned idx, resil_endpoint *out, resil_err *err) {
  const char *hb = b, *he, *port = NULL;
  int elen = (int)(e - b);
  if (*b == '[') {
    const char *rb = memchr(b, ']', (size_t)(e - b));
    if (!rb || rb == b + 1)
      return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': unclosed or empty [", idx,
                           elen, b);
    hb = b + 1;
    he = rb;
    if (rb + 1 < e) {
      if (rb[1] != ':')
        return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': expected ':' after ']'",
                             idx, elen, b);
      port = rb + 2;
    }
  } else {
    const char *c1 = memchr(b, ':', (size_t)(e - b));
    if (c1 && memchr(c1 + 1, ':', (size_t)(e - c1 - 1)))
      return resil_err_set(err, RESIL_E_INVALID,
                           "entry %u '%.*s': an IPv6 address goes in brackets: [addr]:port", idx,
                           elen, b);
    he = c1 ? c1 : e;
    if (c1) port = c1 + 1;
  }
  size_t hl = (size_t)(he - hb);
  if (hl == 0)
    return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': no host", idx, elen, b);
  if (hl > 253)
    return resil_err_set(err, RESIL_E_INVALID, "entry %u: host longer than 253 bytes", idx);
  for (const char *q = hb; q < he; q++)
    if (!host_char_ok((unsigned char)*q))
      return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': bad character in the host",
                           idx, elen, b);
  unsigned long pv = default_port;
  if (port) {
    if (port == e)
      return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': empty port", idx, elen, b);
    pv = 0;
    for (const char *q = port; q < e; q++) {
      if (!isdigit((unsigned char)*q) || pv > 65535)
        return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': port is not a number 1..65535",
                             idx, elen, b);
      pv = pv * 10 + (unsigned long)(*q - '0');
    }
  }
  if (pv == 0 || pv > 65535)
    return resil_err_set(err, RESIL_E_INVALID, "entry %u '%.*s': %s", idx, elen, b,
                         port ? "port is not a number 1..65535" : "no port (host:port)");
  memcpy(out->host, hb, hl);
  out->host[hl] = '\0';
  out->port = (uint32_t)pv;
  bool v6 = memchr(out->host, ':', hl) != NULL;
  snprintf(out->text, sizeof out->text, v6 ? "[%s]:%u" : "%s:%u", out->host, (unsigned)pv);
  return RESIL_OK;
}

resil_status resil_endpoints_parse(const char *list, uint32_t default_port, resil_endpoint *out,
                                   size_t max, size_t *n, resil_err *err) {
  if (n) *n = 0;
  if (max > RESIL_ENDPOINTS_MAX || !out) max = RESIL_ENDPOINTS_MAX;
  if (!list) return resil_err_set(err, RESIL_E_INVALID, "is empty");
  resil_endpoint tmp[RESIL_ENDPOINTS_MAX];
  size_t count = 0;
  const char *p = list;
  bool blank = true;
  for (const char *q = list; *q; q++)
    if (!isspace((unsigned char)*q)) blank = false;
  if (blank) return resil_err_set(err, RESIL_E_INVALID, "is empty: list host:port,host:port");
  for (unsigned idx = 1;; idx++) {
    const char *comma = strchr(p, ',');
    const char *b = p, *e = comma ? comma : p + strlen(p);
    while (b < e && isspace((unsigned char)*b)) b++;
    while (e > b && isspace((unsigned char)e[-1])) e--;
    if (b == e) return resil_err_set(err, RESIL_E_INVALID, "entry %u is empty", idx);
    if (count == max)
      return resil_err_set(err, RESIL_E_INVALID, "more than %zu addresses (at most %d)", max,
                           RESIL_ENDPOINTS_MAX);
    resil_status st = parse_entry(b, e, default_port, idx, &tmp[count], err);
    if (st != RESIL_OK) return st;
    for (size_t k = 0; k < count; k++)
      if (tmp[k].port == tmp[count].port && strcasecmp(tmp[k].host, tmp[count].host) == 0)
        return resil_err_set(err, RESIL_E_INVALID, "'%s' is listed twice (entries %zu and %u)",
                             tmp[count].text, k + 1, idx);
    count++;
    if (!comma) break;
    p = comma + 1;
  }
  if (out) memcpy(out, tmp, count * sizeof *tmp);
  if (n) *n = count;
  return RESIL_OK;
}

/* ---- Outlier configuration ---------------------------------------------------- */

void resil_outlier_config_init(resil_outlier_config *c) {
  if (!c) return;
  memset(c, 0, sizeof *c);
  c->consecutive_failures = 5;
  c->base_ejection_ms = 30000;
  c->max_ejection_ms = 300000;
  c->max_ejection_percent = 50;
  c->interval_ms = 10000;
  c->success_rate_minimum_hosts = 0;
  c->success_rate_request_volume = 100;
  c->success_rate_stdev_factor = 1.9;
}

resil_status resil_outlier_config_validate(const resil_outlier_config *c, const char *prefix,
                                           resil_err *err) {
  resil_problems p;
  resil__problems_init(&p, prefix);
  if (!c) {
    resil__problem(&p, "outlier", "config is NULL");
    return resil__problems_finish(&p, err);
  }
  resil__check_range(&p, "outlier.consecutive_failures", c->consecutive_failures, 0, 1000);
  resil__check_range(&p, "outlier.base_ejection_ms", c->base_ejection_ms, 1, 3600000);
  resil__check_range(&p, "outlier.max_ejection_ms", c->max_ejection_ms, 1, 86400000);
  resil__check_range(&p, "outlier.max_ejection_percent", c->max_ejection_percent, 0, 100);
  resil__check_range(&p, "outlier.interval_ms", c->interval_ms, 100, 3600000);
  if (c->success_rate_minimum_hosts)
    resil__check_range(&p, "outlier.success_rate_minimum_hosts", c->success_rate_minimum_hosts,
                       2, RESIL_ENDPOINTS_MAX);
  resil__check_range(&p, "outlier.success_rate_request_volume", c->success_rate_request_volume,
                     1, 1000000);
  resil__check_range_d(&p, "outlier.success_rate_stdev_factor", c->success_rate_stdev_factor,
                       0.1, 100);
  return resil__problems_finish(&p, err);
}

/* ---- Ejection (g->mu held unless said otherwise) -------------------------------- */

static inline uint64_t ep_now(void) { return resil__now_coarse_inline_ns(); }

/* times_ejected after the decay: one less per interval spent un-ejected. */
static uint32_t decayed_locked(const struct resil__group *g, const ep *e, uint64_t now) {
  if (e->ejected || !e->times_ejected || now <= e->healthy_since_ns) return e->times_ejected;
  uint64_t k = (now - e->healthy_since_ns) / ((uint64_t)g->oc.interval_ms * MS);
  return k >= e->times_ejected ? 0 : e->times_ejected - (uint32_t)k;
}

static void recompute_due_locked(struct resil__group *g) {
  uint64_t due = UINT64_MAX;
  for (unsigned i = 0; i < g->n; i++)
    if (g->eps[i].ejected && g->eps[i].until_ns < due) due = g->eps[i].until_ns;
  atomic_store_explicit(&g->next_due_ns, due, memory_order_relaxed);
}

/* Eject e unless it is already ejected, not in the set, or the percentage
 * forbids it (of the addresses in the set). True if it was ejected (the
 * caller then evicts its pool, without g->mu). */
static bool eject_locked(struct resil__group *g, ep *e, uint64_t now) {
  uint32_t live = atomic_load_explicit(&g->live, memory_order_relaxed);
  if (e->ejected || !(live & BIT(e->idx))) return false;
  unsigned out = (unsigned)__builtin_popcount(
      atomic_load_explicit(&g->ejected, memory_order_relaxed) & live);
  if ((uint64_t)(out + 1) * 100 >
      (uint64_t)g->oc.max_ejection_percent * (unsigned)__builtin_popcount(live)) {
    atomic_fetch_add_explicit(&e->skipped, 1, memory_order_relaxed);
    return false;
  }
  e->times_ejected = decayed_locked(g, e, now) + 1;
  uint64_t cap = g->oc.max_ejection_ms > g->oc.base_ejection_ms ? g->oc.max_ejection_ms
                                                                 : g->oc.base_ejection_ms;
  uint64_t ms = (uint64_t)g->oc.base_ejection_ms * e->times_ejected;
  if (ms > cap) ms = cap;
  e->ejected = true;
  e->until_ns = now + ms * MS;
  atomic_store_explicit(&e->probation, false, memory_order_relaxed);
  atomic_fetch_or_explicit(&g->ejected, BIT(e->idx), memory_order_release);
  atomic_fetch_add_explicit(&e->ejections, 1, memory_order_relaxed);
  recompute_due_locked(g);
  return true;
}

static void eject(struct resil__group *g, ep *e) {
  uint64_t now = ep_now();
  pthread_mutex_lock(&g->mu);
  bool did = eject_locked(g, e, now);
  pthread_mutex_unlock(&g->mu);
  /* Close its idle connections now (budget for the others), borrowed ones
   * when they come back. */
  if (!did) return;
  pthread_rwlock_rdlock(&g->setlk);
  if (e->pool) resil_pool_evict(e->pool, RESIL_POOL_GEN_CURRENT);
  pthread_rwlock_unlock(&g->setlk);
}

/* Bring back every address whose ejection is over (on probation). */
static void readmit_due(struct resil__group *g, uint64_t now) {
  pthread_mutex_lock(&g->mu);
  for (unsigned i = 0; i < g->n; i++) {
    ep *e = &g->eps[i];
    if (!e->ejected || e->until_ns > now) continue;
    e->ejected = false;
    e->healthy_since_ns = now;
    atomic_store_explicit(&e->consecutive, 0, memory_order_relaxed);
    atomic_store_explicit(&e->probation, true, memory_order_relaxed);
    atomic_fetch_and_explicit(&g->ejected, ~BIT(i), memory_order_release);
  }
  recompute_due_locked(g);
  pthread_mutex_unlock(&g->mu);
}

/* The success-rate rule over the interval that just ended. */
static void success_rate_check(struct resil__group *g) {
  const resil_outlier_config *oc = &g->oc;
  double rate[SLOTS];
  bool use[SLOTS];
  unsigned k = 0;
  double sum = 0;
  uint32_t in = atomic_load_explicit(&g->live, memory_order_relaxed) &
                ~atomic_load_explicit(&g->ejected, memory_order_relaxed);
  for (unsigned i = 0; i < g->n; i++) {
    uint64_t c = atomic_exchange_explicit(&g->eps[i].sr_calls, 0, memory_order_relaxed);
    uint64_t ok = atomic_exchange_explicit(&g->eps[i].sr_ok, 0, memory_order_relaxed);
    use[i] = (in & BIT(i)) && c >= oc->success_rate_request_volume;
    if (!use[i]) continue;
    rate[i] = (double)(ok > c ? c : ok) / (double)c;
    sum += rate[i];
    k++;
  }
  if (k < oc->success_rate_minimum_hosts || k == 0) return;
  double mean = sum / k, var = 0;
  for (unsigned i = 0; i < g->n; i++)
    if (use[i]) var += (rate[i] - mean) * (rate[i] - mean);
  double limit = mean - oc->success_rate_stdev_factor * sqrt(var / k);
  for (unsigned i = 0; i < g->n; i++)
    if (use[i] && rate[i] < limit) eject(g, &g->eps[i]);
}

/* ---- The call path ---------------------------------------------------------- */

/* What the last outcome recorded on this thread was, for resil_dep_done()'s
 * breaker rule (resil__endpoints_failure_ignored). */
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
  const struct resil__group *g;
  unsigned idx;
  bool failed;
} last;

/* The caller holds one unit of e->outstanding. */
static void record(struct resil__group *g, ep *e, bool ok) {
  last.g = g;
  last.idx = e->idx;
  last.failed = !ok;
  atomic_fetch_add_explicit(&e->calls, 1, memory_order_relaxed);
  if (g->oc.success_rate_minimum_hosts) {
    atomic_fetch_add_explicit(&e->sr_calls, 1, memory_order_relaxed);
    if (ok) atomic_fetch_add_explicit(&e->sr_ok, 1, memory_order_relaxed);
    uint64_t now = ep_now();
    uint64_t due = atomic_load_explicit(&g->sr_due_ns, memory_order_relaxed);
    if (now >= due &&
        atomic_compare_exchange_strong(&g->sr_due_ns, &due, now + g->oc.interval_ms * MS))
      success_rate_check(g);
  }
  if (ok) {
    if (atomic_load_explicit(&e->last_ok, memory_order_relaxed) != 1)
      atomic_store_explicit(&e->last_ok, 1, memory_order_relaxed);
    if (atomic_load_explicit(&e->consecutive, memory_order_relaxed))
      atomic_store_explicit(&e->consecutive, 0, memory_order_relaxed);
    if (atomic_load_explicit(&e->probation, memory_order_relaxed))
      atomic_store_explicit(&e->probation, false, memory_order_relaxed);
    return;
  }
  atomic_fetch_add_explicit(&e->failures, 1, memory_order_relaxed);
  atomic_store_explicit(&e->last_ok, 0, memory_order_relaxed);
  uint32_t c = atomic_fetch_add_explicit(&e->consecutive, 1, memory_order_relaxed) + 1;
  uint32_t n = g->oc.consecutive_failures;
  if (n && (c >= n || atomic_load_explicit(&e->probation, memory_order_relaxed))) eject(g, e);
}

bool resil__endpoints_failure_ignored(const resil_pool *attached) {
  /* last.g may have been freed since (this thread's last call went to
   * another dependency, since freed): it is only compared, never read;
   * the group read is the attached pool's, alive while its dependency is. */
  const struct resil__group *g = attached ? resil__pool_group(attached) : NULL;
  bool mine = g && g == last.g;
  last.g = NULL;
  if (!mine || !last.failed) return false;
  uint32_t others = atomic_load_explicit(&g->live, memory_order_relaxed) &
                    ~atomic_load_explicit(&g->ejected, memory_order_relaxed) & ~BIT(last.idx);
  FOR_BITS(i, others)
  if (atomic_load_explicit(&g->eps[i].last_ok, memory_order_relaxed) == 1)
    return true; /* another address is healthy */
  return false;
}

/* Power of two choices, least outstanding, among the addresses in the set
 * and not ejected. NULL if the set is empty. */
static ep *pick(struct resil__group *g) {
  if (__builtin_expect(atomic_load_explicit(&g->ejected, memory_order_relaxed) != 0, 0)) {
    uint64_t now = ep_now();
    if (now >= atomic_load_explicit(&g->next_due_ns, memory_order_relaxed)) readmit_due(g, now);
  }
  uint32_t live = atomic_load_explicit(&g->live, memory_order_acquire);
  uint32_t mask = live & ~atomic_load_explicit(&g->ejected, memory_order_acquire);
  if (!mask) mask = live; /* all ejected (max_ejection_percent 100): panic, use them all */
  unsigned k = (unsigned)__builtin_popcount(mask);
  if (k == 0) return NULL;
  if (k == 1) return &g->eps[__builtin_ctz(mask)];
  uint64_t r = resil__rand();
  unsigned a = (unsigned)(r % k), b = (unsigned)((r >> 32) % (k - 1));
  if (b >= a) b++;
  ep *ea = &g->eps[nth_bit(mask, a)], *eb = &g->eps[nth_bit(mask, b)];
  return atomic_load_explicit(&eb->outstanding, memory_order_relaxed) <
                 atomic_load_explicit(&ea->outstanding, memory_order_relaxed)
             ? eb
             : ea;
}

static resil_status dns_before_acquire(struct resil__group *g, resil_deadline deadline,
                                       resil_err *err);

/* Picks this many times at most when the set changes under the picker. */
#define PICK_TRIES 64

resil_status resil__group_acquire(struct resil__group *g, resil_deadline deadline,
                                  resil_pool_conn **out, resil_err *err) {
  if (g->dns) {
    resil_status st = dns_before_acquire(g, deadline, err);
    if (st != RESIL_OK) {
      last.g = NULL;
      return st;
    }
  }
  for (int tries = 1;; tries++) {
    ep *e = pick(g);
    if (!e) {
      last.g = NULL;
      return resil_err_set(err, RESIL_E_FAILURE, "%s: no address to connect to",
                           resil_pool_name(g->front));
    }
    /* Hold the slot, then check it is still in the set (see the top). */
    atomic_fetch_add_explicit(&e->outstanding, 1, memory_order_seq_cst);
    bool in = atomic_load_explicit(&g->live, memory_order_seq_cst) & BIT(e->idx);
    resil_status st = in ? resil_pool_acquire(e->pool, deadline, out, err) : RESIL_E_CLOSED;
    if (st == RESIL_OK) return st;
    bool left = st == RESIL_E_CLOSED &&
                !(atomic_load_explicit(&g->live, memory_order_seq_cst) & BIT(e->idx));
    if (st == RESIL_E_FAILURE || st == RESIL_E_TIMEOUT) record(g, e, false);
    else last.g = NULL;
    atomic_fetch_sub_explicit(&e->outstanding, 1, memory_order_release);
    if (!left || tries == PICK_TRIES) return st; /* else: it left the set; another one */
  }
}

static ep *member_of(struct resil__group *g, const resil_pool_conn *c) {
  uint64_t i = resil_pool_conn_generation(c) >> GEN_SHIFT;
  return i < g->n ? &g->eps[i] : NULL;
}

void resil__group_release(struct resil__group *g, resil_pool_conn *c, resil_pool_return how) {
  ep *e = member_of(g, c);
  if (!e) return;
  resil_pool_release(e->pool, c, how); /* closed there if e left the set (drained) */
  record(g, e, how == RESIL_POOL_OK);
  atomic_fetch_sub_explicit(&e->outstanding, 1, memory_order_release);
  if (atomic_load_explicit(&g->bwaiters, memory_order_relaxed)) {
    pthread_mutex_lock(&g->bmu);
    pthread_cond_broadcast(&g->bcv);
    pthread_mutex_unlock(&g->bmu);
  }
}

/* ---- The budget and the wrapped connector ----------------------------------- */

static void budget_put(struct resil__group *g) {
  atomic_fetch_sub_explicit(&g->used, 1, memory_order_release);
  if (atomic_load_explicit(&g->bwaiters, memory_order_acquire)) {
    pthread_mutex_lock(&g->bmu);
    pthread_cond_broadcast(&g->bcv);
    pthread_mutex_unlock(&g->bmu);
  }
}

static bool budget_try(struct resil__group *g) {
  uint32_t u = atomic_load_explicit(&g->used, memory_order_relaxed);
  while (u < g->budget_max)
    if (atomic_compare_exchange_weak_explicit(&g->used, &u, u + 1, memory_order_acquire,
                                              memory_order_relaxed))
      return true;
  return false;
}

/* Close one idle connection of another address (ejected ones first). */
static bool steal_idle(struct resil__group *g, const ep *self) {
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_relaxed);
  bool got = false;
  pthread_rwlock_rdlock(&g->setlk);
  for (int pass = 0; pass < 2 && !got; pass++)
    for (unsigned i = 0; i < g->n && !got; i++) {
      if (&g->eps[i] == self || !g->eps[i].pool || (pass == 0) != !!(mask & BIT(i))) continue;
      got = resil__pool_close_one_idle(g->eps[i].pool);
    }
  pthread_rwlock_unlock(&g->setlk);
  return got;
}

/* One unit of the budget, waiting no longer than deadline. */
static bool budget_take(struct resil__group *g, const ep *self, resil_deadline deadline) {
  for (;;) {
    if (budget_try(g)) return true;
    if (steal_idle(g, self)) continue;
    if (resil_deadline_expired(deadline)) return false;
    uint64_t now = resil_now_ns();
    resil_deadline slice = {.at_ns = now + BUDGET_POLL_NS};
    if (resil_deadline_is_set(deadline) && deadline.at_ns < slice.at_ns) slice = deadline;
    pthread_mutex_lock(&g->bmu);
    atomic_fetch_add_explicit(&g->bwaiters, 1, memory_order_acq_rel);
    if (atomic_load_explicit(&g->used, memory_order_acquire) >= g->budget_max)
      resil__cond_wait_until(&g->bcv, &g->bmu, slice);
    atomic_fetch_sub_explicit(&g->bwaiters, 1, memory_order_relaxed);
    pthread_mutex_unlock(&g->bmu);
  }
}

static resil_status ep_connect(void *ctx, resil_deadline deadline, void **conn, resil_err *err) {
  ep *e = ctx;
  struct resil__group *g = e->g;
  if (!budget_take(g, e, deadline))
    return resil_err_set(err, RESIL_E_POOL_TIMEOUT,
                         "%s: no connection free: all %u of pool.max_size are open over the %u "
                         "addresses and in use",
                         e->addr.text, g->budget_max, n_live(g));
  resil_status st = g->connect_to(g->cn.ctx, &e->addr, deadline, conn, err);
  if (st != RESIL_OK) budget_put(g);
  return st;
}

static bool ep_validate(void *ctx, void *conn, resil_deadline deadline) {
  ep *e = ctx;
  return e->g->cn.validate ? e->g->cn.validate(e->g->cn.ctx, conn, deadline) : true;
}

static void ep_close(void *ctx, void *conn) {
  ep *e = ctx;
  e->g->cn.close(e->g->cn.ctx, conn);
  budget_put(e->g);
}

/* In a child of fork only: the budget was reset there (fork handler). */
static void ep_abandon(void *ctx, void *conn) {
  ep *e = ctx;
  if (e->g->cn.abandon) e->g->cn.abandon(e->g->cn.ctx, conn);
}

/* ---- Life cycle ------------------------------------------------------------- */

static void group_destroy(struct resil__group *g) {
  if (g->dns) {
    resil__resolve_abandon(g->dns->lk);
    pthread_mutex_destroy(&g->dns->mu);
    free(g->dns);
  }
  for (unsigned i = 0; i < g->n; i++) resil_pool_free(g->eps[i].pool);
  pthread_cond_destroy(&g->bcv);
  pthread_mutex_destroy(&g->bmu);
  pthread_rwlock_destroy(&g->setlk);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static resil_status check_common(resil_problems *p, const resil_pool_config *cfg,
                                 const resil_pool_connector *cn,
                                 resil_endpoint_connect_fn connect_to,
                                 const resil_outlier_config *oc) {
  resil_err e;
  if (resil_pool_config_validate(cfg, NULL, &e) != RESIL_OK) resil__problems_merge(p, e.msg);
  if (resil_outlier_config_validate(oc, NULL, &e) != RESIL_OK) resil__problems_merge(p, e.msg);
  if (!cn || !cn->close) resil__problem(p, "connector.close", "is required");
  if (!connect_to) resil__problem(p, "connect_to", "is required");
  return RESIL_OK;
}

/* A group with no address yet, n slots. */
static struct resil__group *group_new(const resil_pool_config *cfg,
                                      const resil_pool_connector *connector,
                                      resil_endpoint_connect_fn connect_to,
                                      const resil_outlier_config *outlier, unsigned n,
                                      resil_err *err) {
  struct resil__group *g = aligned_alloc(64, (sizeof *g + 63) / 64 * 64);
  if (!g) {
    resil_err_set(err, RESIL_E_NOMEM, "pool '%s': out of memory", cfg->name);
    return NULL;
  }
  memset(g, 0, sizeof *g);
  g->n = n;
  g->oc = *outlier;
  g->cn = *connector;
  g->connect_to = connect_to;
  g->budget_max = cfg->max_size;
  g->mcfg = *cfg;
  g->min_idle_total = cfg->min_idle;
  atomic_store(&g->next_due_ns, UINT64_MAX);
  atomic_store(&g->sr_due_ns, resil_now_ns() + (uint64_t)outlier->interval_ms * MS);
  pthread_mutex_init(&g->mu, NULL);
  pthread_rwlock_init(&g->setlk, NULL);
  pthread_mutex_init(&g->bmu, NULL);
  resil__cond_init(&g->bcv);
  for (unsigned i = 0; i < SLOTS; i++) {
    g->eps[i].g = g;
    g->eps[i].idx = i;
  }
  return g;
}

/* min_idle spread over k addresses, within max_size in total. */
static void spread_min_idle(struct resil__group *g, size_t k) {
  if (k == 0) k = 1;
  g->mcfg.min_idle = (uint32_t)((g->min_idle_total + k - 1) / k);
  while (g->mcfg.min_idle * k > g->budget_max && g->mcfg.min_idle) g->mcfg.min_idle--;
}

/* Give free slot i the address addr and a new pool, then put it in the set.
 * The slot is neither live nor gone and has no pool. */
static bool slot_install(struct resil__group *g, unsigned i, const resil_endpoint *addr,
                         resil_err *err) {
  ep *e = &g->eps[i];
  pthread_rwlock_wrlock(&g->setlk);
  e->addr = *addr;
  e->incarnation = (e->incarnation + 1) & 0xFFFFFF;
  pthread_rwlock_unlock(&g->setlk);
  atomic_store(&e->consecutive, 0);
  atomic_store(&e->last_ok, -1);
  atomic_store(&e->probation, false);
  atomic_store(&e->calls, 0);
  atomic_store(&e->failures, 0);
  atomic_store(&e->ejections, 0);
  atomic_store(&e->skipped, 0);
  atomic_store(&e->sr_calls, 0);
  atomic_store(&e->sr_ok, 0);
  pthread_mutex_lock(&g->mu);
  e->ejected = false;
  e->times_ejected = 0;
  e->until_ns = 0;
  e->healthy_since_ns = ep_now();
  pthread_mutex_unlock(&g->mu);
  resil_pool_connector wc = {.connect = ep_connect, .validate = ep_validate,
                             .close = ep_close, .abandon = ep_abandon, .ctx = e};
  resil_pool *p = resil_pool_new(&g->mcfg, &wc, err);
  if (!p) return false;
  resil__pool_set_generation(p, ((uint64_t)i << GEN_SHIFT) |
                                    ((uint64_t)e->incarnation << INC_SHIFT));
  pthread_rwlock_wrlock(&g->setlk);
  e->pool = p;
  pthread_rwlock_unlock(&g->setlk);
  atomic_fetch_or_explicit(&g->live, BIT(i), memory_order_seq_cst);
  return true;
}

/* The front pool over g, which it then owns; on failure g is freed. */
static resil_pool *group_front(struct resil__group *g, const resil_pool_config *cfg,
                               resil_err *err) {
  g->front = resil__pool_new_front(cfg, g, GEN_NONE, err);
  if (!g->front) {
    group_destroy(g);
    return NULL;
  }
  return g->front;
}

resil_pool *resil_pool_new_endpoints(const resil_pool_config *cfg,
                                     const resil_pool_connector *connector,
                                     resil_endpoint_connect_fn connect_to, const char *hosts,
                                     uint32_t default_port, const resil_outlier_config *outlier,
                                     resil_err *err) {
  resil_endpoint addrs[RESIL_ENDPOINTS_MAX];
  size_t n = 0;
  resil_problems p;
  resil__problems_init(&p, NULL);
  check_common(&p, cfg, connector, connect_to, outlier);
  resil_err e;
  if (resil_endpoints_parse(hosts, default_port, addrs, RESIL_ENDPOINTS_MAX, &n, &e) != RESIL_OK)
    resil__problem(&p, "hosts", "%s", e.msg);
  if (resil__problems_finish(&p, err) != RESIL_OK) return NULL;
  struct resil__group *g = group_new(cfg, connector, connect_to, outlier, (unsigned)n, err);
  if (!g) return NULL;
  spread_min_idle(g, n);
  for (unsigned i = 0; i < n; i++)
    if (!slot_install(g, i, &addrs[i], err)) {
      group_destroy(g);
      return NULL;
    }
  return group_front(g, cfg, err);
}

void resil__group_free(struct resil__group *g) {
  if (g->dns) {
    atomic_store(&g->dns->stop, true);
    pthread_mutex_lock(&g->dns->mu); /* a maintainer still at work finishes */
    pthread_mutex_unlock(&g->dns->mu);
  }
  group_destroy(g);
}

resil_status resil__group_prewarm(struct resil__group *g, resil_deadline deadline,
                                  resil_err *err) {
  if (g->dns) {
    resil_status st = dns_before_acquire(g, deadline, err);
    if (st != RESIL_OK) return st;
  }
  resil_status worst = RESIL_OK;
  uint32_t in = atomic_load(&g->live) & ~atomic_load(&g->ejected);
  FOR_BITS(i, in) {
    ep *e = &g->eps[i];
    /* held as a call holds it (see the top): the pool stays while we connect */
    atomic_fetch_add_explicit(&e->outstanding, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&g->live, memory_order_seq_cst) & BIT(i)) {
      resil_err e2;
      resil_status st = resil_pool_prewarm(e->pool, deadline, &e2);
      if (st != RESIL_OK && worst == RESIL_OK) {
        worst = st;
        resil_err_set(err, st, "%s: %s", e->addr.text, e2.msg);
      }
    }
    atomic_fetch_sub_explicit(&e->outstanding, 1, memory_order_release);
  }
  return worst;
}

resil_status resil__group_drain(struct resil__group *g, resil_deadline deadline) {
  if (g->dns) { /* the set no longer changes: no pool is freed from here on */
    atomic_store(&g->dns->stop, true);
    pthread_mutex_lock(&g->dns->mu);
    pthread_mutex_unlock(&g->dns->mu);
  }
  resil_status worst = RESIL_OK;
  for (unsigned i = 0; i < g->n; i++)
    if (g->eps[i].pool && resil_pool_drain(g->eps[i].pool, deadline) != RESIL_OK)
      worst = RESIL_E_TIMEOUT;
  return worst;
}

bool resil__group_evict(struct resil__group *g, uint64_t generation) {
  bool any = false;
  uint32_t live = atomic_load(&g->live);
  pthread_rwlock_rdlock(&g->setlk);
  if (generation == RESIL_POOL_GEN_CURRENT) {
    FOR_BITS(i, live)
    if (g->eps[i].pool) any |= resil_pool_evict(g->eps[i].pool, RESIL_POOL_GEN_CURRENT);
  } else {
    uint64_t i = generation >> GEN_SHIFT;
    any = i < g->n && g->eps[i].pool && resil_pool_evict(g->eps[i].pool, generation);
  }
  pthread_rwlock_unlock(&g->setlk);
  return any;
}

static void stats_add(resil_pool_stats *out, const resil_pool_stats *s) {
  out->open += s->open;
  out->idle += s->idle;
  out->in_use += s->in_use;
  out->connecting += s->connecting;
  out->waiters += s->waiters;
  out->acquired += s->acquired;
  out->acquire_timeouts += s->acquire_timeouts;
  out->connects_ok += s->connects_ok;
  out->connects_failed += s->connects_failed;
  out->connects_timed_out += s->connects_timed_out;
  for (int k = 0; k < RESIL_POOL_CLOSE_REASON_SLOTS; k++) out->closed[k] += s->closed[k];
  out->evictions += s->evictions;
  for (int k = 0; k <= RESIL_HIST_BOUNDS; k++)
    out->acquire_latency.counts[k] += s->acquire_latency.counts[k];
  out->acquire_latency.count += s->acquire_latency.count;
  out->acquire_latency.sum_ns += s->acquire_latency.sum_ns;
}

/* Sum of the members' stats (removed addresses still draining included:
 * their connections count against max); max is the shared bound. The
 * counters of a removed address's pool leave the sum when it is freed. */
void resil__group_stats(const struct resil__group *g, resil_pool_stats *out) {
  resil_pool_stats s;
  pthread_rwlock_rdlock((pthread_rwlock_t *)&g->setlk);
  for (unsigned i = 0; i < g->n; i++) {
    if (!g->eps[i].pool) continue;
    resil_pool_get_stats(g->eps[i].pool, &s);
    stats_add(out, &s);
  }
  pthread_rwlock_unlock((pthread_rwlock_t *)&g->setlk);
  out->max = g->budget_max;
  out->generation = GEN_NONE;
}

/* fork: no other thread inside g->mu or g->bmu across fork(); the child's
 * member pools start empty, and so does its budget. setlk and the DNS
 * maintainer's mutex are not taken here (a maintainer holds d->mu while it
 * creates pools, which takes the pool registry's lock that the fork handler
 * holds): the child re-creates them, and forgets a lookup in flight (its
 * thread is the parent's; the next refresh starts another). */
void resil__group_fork_prepare(struct resil__group *g) {
  pthread_mutex_lock(&g->mu);
  pthread_mutex_lock(&g->bmu);
}

void resil__group_fork_parent(struct resil__group *g) {
  pthread_mutex_unlock(&g->bmu);
  pthread_mutex_unlock(&g->mu);
}

void resil__group_fork_child(struct resil__group *g) {
  atomic_store(&g->used, 0);
  atomic_store(&g->bwaiters, 0);
  for (unsigned i = 0; i < g->n; i++) atomic_store(&g->eps[i].outstanding, 0);
  resil__cond_init(&g->bcv);
  pthread_rwlock_init(&g->setlk, NULL);
  if (g->dns) {
    pthread_mutex_init(&g->dns->mu, NULL);
    g->dns->lk = NULL;
    atomic_store(&g->dns->due_ns, 0);
  }
  pthread_mutex_unlock(&g->bmu);
  pthread_mutex_unlock(&g->mu);
}

/* ---- Following DNS ------------------------------------------------------------ */

/* addr as an endpoint: host the numeric address, the given port. */
static void endpoint_of(const resil_addr *a, uint16_t port, resil_endpoint *out) {
  memset(out, 0, sizeof *out);
  resil__strlcpy(out->host, a->text, sizeof out->host);
  out->port = port;
  snprintf(out->text, sizeof out->text, a->family == AF_INET6 ? "[%s]:%u" : "%s:%u", a->text,
           (unsigned)port);
}

/* Take slot i out of the set: no new call; its idle connections close now,
 * borrowed ones when they come back (its pool drains); dns_reap() frees
 * the pool once empty. d->mu held. */
static void slot_retire(struct resil__group *g, unsigned i) {
  ep *e = &g->eps[i];
  pthread_mutex_lock(&g->mu);
  e->ejected = false;
  atomic_fetch_and_explicit(&g->ejected, ~BIT(i), memory_order_relaxed);
  atomic_fetch_or_explicit(&g->gone, BIT(i), memory_order_relaxed);
  atomic_fetch_and_explicit(&g->live, ~BIT(i), memory_order_seq_cst);
  recompute_due_locked(g);
  pthread_mutex_unlock(&g->mu);
  resil_pool_drain(e->pool, resil_deadline_in_ms(0)); /* only d->mu's holder frees it */
}

/* Free the pools of removed addresses that nothing uses any more. d->mu held. */
static void dns_reap(struct resil__group *g) {
  FOR_BITS(i, atomic_load(&g->gone)) {
    ep *e = &g->eps[i];
    if (atomic_load_explicit(&e->outstanding, memory_order_seq_cst) != 0) continue;
    resil_pool_stats s;
    resil_pool_get_stats(e->pool, &s);
    if (s.open + s.connecting + s.in_use) continue;
    pthread_rwlock_wrlock(&g->setlk);
    resil_pool *p = e->pool;
    e->pool = NULL;
    atomic_fetch_and(&g->gone, ~BIT(i));
    pthread_rwlock_unlock(&g->setlk);
    resil_pool_free(p);
  }
}

static bool listed(const resil_endpoint *want, size_t n, const char *text) {
  for (size_t k = 0; k < n; k++)
    if (strcmp(want[k].text, text) == 0) return true;
  return false;
}

/* Make the set the answer a[0..count-1]: addresses that left it are
 * retired, new ones get a slot while the set has fewer than
 * RESIL_ENDPOINTS_MAX (addresses already in it keep theirs: a resolver
 * that rotates its answer does not churn the set); the others are
 * dropped (counted). d->mu held. */
static void dns_apply(struct resil__group *g, const resil_addr *a, size_t count) {
  dns_state *d = g->dns;
  resil_endpoint want[DNS_ANSWER_MAX];
  size_t nw = 0;
  for (size_t k = 0; k < count && nw < DNS_ANSWER_MAX; k++) {
    endpoint_of(&a[k], d->port, &want[nw]);
    if (!listed(want, nw, want[nw].text)) nw++;
  }
  uint32_t leaving = 0;
  FOR_BITS(i, atomic_load(&g->live))
  if (!listed(want, nw, g->eps[i].addr.text)) leaving |= BIT(i);
  spread_min_idle(g, nw < RESIL_ENDPOINTS_MAX ? nw : RESIL_ENDPOINTS_MAX);
  /* the new ones first, so the set is never empty in between */
  uint32_t dropped = 0;
  for (size_t k = 0; k < nw; k++) {
    uint32_t live = atomic_load(&g->live);
    bool have = false;
    FOR_BITS(i, live & ~leaving) have |= strcmp(g->eps[i].addr.text, want[k].text) == 0;
    if (have) continue;
    uint32_t free_slots = ~(live | atomic_load(&g->gone)) & (uint32_t)((1ull << g->n) - 1);
    resil_err e;
    if (__builtin_popcount(live & ~leaving) >= RESIL_ENDPOINTS_MAX || !free_slots ||
        !slot_install(g, (unsigned)__builtin_ctz(free_slots), &want[k], &e)) {
      dropped++;
      continue;
    }
    d->added++;
  }
  FOR_BITS(i, leaving) {
    slot_retire(g, i);
    d->removed++;
  }
  d->dropped = dropped;
}

/* What a finished resolution means for the set; returns when to refresh
 * next. d->mu held. */
static void dns_result(struct resil__group *g, resil_status st, const resil_addr *a,
                       size_t count, uint64_t expires, const resil_err *e, uint64_t now) {
  dns_state *d = g->dns;
  if (st == RESIL_OK && count > 0) {
    dns_apply(g, a, count);
    d->refreshes++;
    d->stale = false;
    d->ever = true;
    /* No lookup more often than DNS_MIN_MS; a cached answer (its expiry
     * read on another clock than ours: maybe not quite over yet) is looked
     * at again 1 ms later, not DNS_MIN_MS. */
    uint32_t ttl = resil__resolve_ttl_ms();
    uint64_t floor = d->lookup_ns + (uint64_t)(ttl ? DNS_MIN_MS : DNS_NO_CACHE_MS) * MS;
    if (floor < now + MS) floor = now + MS;
    d->refresh_ns = expires > floor ? expires : floor;
    return;
  }
  d->failures++;
  d->stale = d->ever; /* the last good set stays */
  snprintf(d->last_error, sizeof d->last_error, "%s",
           st == RESIL_OK ? "no address" : e->msg);
  d->refresh_ns = now + (uint64_t)DNS_RETRY_MS * MS;
}

/* From the call path, never waiting: start, check or apply a refresh, and
 * free the pools of removed addresses once empty. */
static void dns_maintain(struct resil__group *g) {
  dns_state *d = g->dns;
  if (pthread_mutex_trylock(&d->mu) != 0) return; /* another caller is at it */
  if (atomic_load(&d->stop)) {
    pthread_mutex_unlock(&d->mu);
    return;
  }
  uint64_t now = ep_now();
  uint64_t epoch = atomic_load(&resil__resolve_epoch);
  bool kicked = epoch != atomic_load(&d->seen_epoch);
  atomic_store(&d->seen_epoch, epoch);
  resil_addr a[DNS_ANSWER_MAX];
  size_t count = 0;
  uint64_t expires = 0;
  resil_status st = RESIL_OK;
  resil_err e;
  e.msg[0] = '\0';
  if (kicked && d->lk) { /* a lookup from before the invalidation: start afresh */
    resil__resolve_abandon(d->lk);
    d->lk = NULL;
  }
  if (d->lk) {
    if (resil__resolve_poll(d->lk, d->port, a, DNS_ANSWER_MAX, &count, &expires, &st, &e)) {
      d->lk = NULL;
      dns_result(g, st, a, count, expires, &e, now);
    }
  } else if (kicked || now >= d->refresh_ns) {
    st = resil__resolve_begin(d->host, d->port, a, DNS_ANSWER_MAX, &count, &expires, &d->lk, &e);
    if (d->lk) d->lookup_ns = now;
    if (st != RESIL_OK || !d->lk) dns_result(g, st, a, count, expires, &e, now);
  }
  if (atomic_load(&g->gone)) dns_reap(g);
  uint64_t due = d->refresh_ns;
  if (d->lk && due > now + DNS_POLL_MS * MS) due = now + DNS_POLL_MS * MS;
  if (atomic_load(&g->gone) && due > now + DNS_REAP_MS * MS) due = now + DNS_REAP_MS * MS;
  atomic_store(&d->due_ns, due);
  pthread_mutex_unlock(&d->mu);
}

/* The set is empty: nothing was ever resolved. Resolve under the caller's
 * deadline (as a single-address pool's connect does). */
static resil_status dns_first(struct resil__group *g, resil_deadline deadline, resil_err *err) {
  dns_state *d = g->dns;
  resil_addr a[DNS_ANSWER_MAX];
  size_t count = 0;
  resil_err e;
  e.msg[0] = '\0';
  resil_status st = resil_resolve(d->host, d->port, deadline, a, DNS_ANSWER_MAX, &count, &e);
  if (st == RESIL_OK && count == 0) st = RESIL_E_FAILURE;
  pthread_mutex_lock(&d->mu);
  if (st == RESIL_OK && !atomic_load(&d->stop) && !atomic_load(&g->live)) {
    uint64_t now = ep_now();
    d->lookup_ns = now;
    dns_result(g, st, a, count, now + (uint64_t)resil__resolve_ttl_ms() * MS, &e, now);
    resil__resolve_abandon(d->lk); /* a maintainer's lookup: this answer is as fresh */
    d->lk = NULL;
    atomic_store(&d->due_ns, d->refresh_ns);
  } else if (st != RESIL_OK) {
    d->failures++;
    snprintf(d->last_error, sizeof d->last_error, "%s", e.msg[0] ? e.msg : "no address");
  }
  pthread_mutex_unlock(&d->mu);
  if (st == RESIL_OK) return RESIL_OK;
  if (st != RESIL_E_TIMEOUT && st != RESIL_E_NOMEM && st != RESIL_E_SYSTEM) st = RESIL_E_FAILURE;
  return resil_err_set(err, st, "%s: resolve %s: %s", resil_pool_name(g->front), d->host,
                       e.msg[0] ? e.msg : "no address");
}

static resil_status dns_before_acquire(struct resil__group *g, resil_deadline deadline,
                                       resil_err *err) {
  dns_state *d = g->dns;
  if (ep_now() >= atomic_load_explicit(&d->due_ns, memory_order_relaxed) ||
      atomic_load_explicit(&resil__resolve_epoch, memory_order_relaxed) !=
          atomic_load_explicit(&d->seen_epoch, memory_order_relaxed))
    dns_maintain(g);
  if (__builtin_expect(atomic_load_explicit(&g->live, memory_order_acquire) != 0, 1))
    return RESIL_OK;
  return dns_first(g, deadline, err);
}

/* Letters, digits, . - _ : a name for DNS (or a numeric address): a host
 * of a host list without a zone id. */
static bool dns_host_ok(const char *h) {
  if (!h || !*h || strlen(h) > 253) return false;
  for (const char *c = h; *c; c++)
    if (!host_char_ok((unsigned char)*c) || *c == '%') return false;
  return true;
}

resil_pool *resil_pool_new_endpoints_dns(const resil_pool_config *cfg,
                                         const resil_pool_connector *connector,
                                         resil_endpoint_connect_fn connect_to, const char *host,
                                         uint32_t port, const resil_outlier_config *outlier,
                                         resil_err *err) {
  resil_problems p;
  resil__problems_init(&p, NULL);
  check_common(&p, cfg, connector, connect_to, outlier);
  if (!dns_host_ok(host))
    resil__problem(&p, "host", "'%.60s' is not a host name (letters, digits, . - _; at most 253)",
                   host ? host : "(null)");
  if (port == 0 || port > 65535) resil__problem(&p, "port", "%u is not 1..65535", port);
  if (resil__problems_finish(&p, err) != RESIL_OK) return NULL;
  struct resil__group *g = group_new(cfg, connector, connect_to, outlier, SLOTS, err);
  if (!g) return NULL;
  g->dns = calloc(1, sizeof *g->dns);
  if (!g->dns) {
    resil_err_set(err, RESIL_E_NOMEM, "pool '%s': out of memory", cfg->name);
    group_destroy(g);
    return NULL;
  }
  resil__strlcpy(g->dns->host, host, sizeof g->dns->host);
  g->dns->port = (uint16_t)port;
  pthread_mutex_init(&g->dns->mu, NULL);
  atomic_store(&g->dns->seen_epoch, atomic_load(&resil__resolve_epoch));
  return group_front(g, cfg, err);
}

/* ---- Introspection ------------------------------------------------------------ */

static struct resil__group *group_of(const resil_pool *p) {
  return p ? resil__pool_group(p) : NULL;
}

size_t resil_pool_endpoint_stats(const resil_pool *p, resil_endpoint_stats *out, size_t max) {
  struct resil__group *g = group_of(p);
  if (!g) return 0;
  uint64_t now = ep_now();
  pthread_rwlock_rdlock(&g->setlk);
  uint32_t live = atomic_load(&g->live);
  size_t k = 0;
  FOR_BITS(i, live) {
    if (k >= max || !out) break;
    ep *e = &g->eps[i];
    resil_endpoint_stats *o = &out[k++];
    memset(o, 0, sizeof *o);
    memcpy(o->endpoint, e->addr.text, sizeof o->endpoint);
    pthread_mutex_lock(&g->mu);
    o->ejected = e->ejected;
    o->times_ejected = decayed_locked(g, e, now);
    o->ejected_remaining_ms = e->ejected && e->until_ns > now ? (e->until_ns - now + MS - 1) / MS : 0;
    pthread_mutex_unlock(&g->mu);
    o->probation = atomic_load_explicit(&e->probation, memory_order_relaxed);
    o->outstanding = atomic_load_explicit(&e->outstanding, memory_order_relaxed);
    o->calls = atomic_load_explicit(&e->calls, memory_order_relaxed);
    o->failures = atomic_load_explicit(&e->failures, memory_order_relaxed);
    o->ejections = atomic_load_explicit(&e->ejections, memory_order_relaxed);
    o->ejections_skipped = atomic_load_explicit(&e->skipped, memory_order_relaxed);
    resil_pool_stats s;
    resil_pool_get_stats(e->pool, &s);
    o->open = s.open;
    o->idle = s.idle;
    o->in_use = s.in_use;
    o->connecting = s.connecting;
  }
  pthread_rwlock_unlock(&g->setlk);
  return (size_t)__builtin_popcount(live);
}

const resil_endpoint *resil_pool_endpoint_next(resil_pool *p) {
  static _Thread_local resil_endpoint copy;
  struct resil__group *g = group_of(p);
  if (!g) return NULL;
  pthread_rwlock_rdlock(&g->setlk);
  uint32_t live = atomic_load(&g->live);
  uint32_t in = live & ~atomic_load(&g->ejected);
  if (!in) in = live;
  const resil_endpoint *r = NULL;
  if (in) {
    uint32_t start = atomic_fetch_add_explicit(&g->rr, 1, memory_order_relaxed);
    copy = g->eps[nth_bit(in, start % (unsigned)__builtin_popcount(in))].addr;
    r = &copy;
  }
  pthread_rwlock_unlock(&g->setlk);
  return r;
}

bool resil_pool_endpoints_dns_stats(const resil_pool *p, resil_endpoints_dns_stats *out) {
  struct resil__group *g = group_of(p);
  if (!g || !g->dns || !out) return false;
  dns_state *d = g->dns;
  memset(out, 0, sizeof *out);
  pthread_mutex_lock(&d->mu);
  resil__strlcpy(out->host, d->host, sizeof out->host);
  out->port = d->port;
  out->refreshes = d->refreshes;
  out->failures = d->failures;
  out->added = d->added;
  out->removed = d->removed;
  out->dropped = d->dropped;
  out->stale = d->stale;
  resil__strlcpy(out->last_error, d->last_error, sizeof out->last_error);
  pthread_mutex_unlock(&d->mu);
  out->addresses = n_live(g);
  out->draining = (uint32_t)__builtin_popcount(atomic_load(&g->gone));
  return true;
}
