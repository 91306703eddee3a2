/* Several addresses behind one pool, with outlier ejection (see
 * resil/endpoint.h).
 *
 * Shape: a "front" resil_pool (pool.c: resil__pool_new_front) whose
 * acquire, release, prewarm, drain, stats, evict and free come here; one
 * ordinary member pool per address, whose connector is wrapped (ep_connect,
 * ep_close...) to charge the shared connection budget and to hand the
 * adapter's connect_to() its address.
 *
 * A borrowed connection is mapped back to its member by its generation:
 * member i's generations are i << GEN_SHIFT + k (resil__pool_set_generation
 * at creation; an eviction adds 1), so resil_pool_conn_generation() names
 * the member. The front's own generation (GEN_NONE) names none.
 *
 * State per address: counters are atomics written on the call path;
 * ejection state (ejected, until, times_ejected, healthy_since) changes
 * under g->mu, and the set of ejected addresses is mirrored in the atomic
 * bitmask `ejected`, which the picker reads without a lock. The budget
 * (connections open or connecting over all members) is an atomic count; a
 * connect that finds it full closes another member's idle connection or
 * waits on bcv (bmu), woken by a close or a release.
 *
 * Lock order: g->mu and g->bmu are never held while calling into a member
 * pool, and a member pool never calls back here with its lock held (pool.h:
 * connector callbacks run without the lock).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "resil/endpoint.h"

#define GEN_SHIFT 56
#define GEN_NONE ((uint64_t)0xFF << GEN_SHIFT)
#define MS 1000000ull
#define BUDGET_POLL_NS (10 * MS) /* a budget waiter looks for idle connections this often */

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
  /* fixed */
  struct resil__group *g;
  unsigned idx;
  resil_pool *pool;
  resil_endpoint addr;
} __attribute__((aligned(64))) ep;

struct resil__group {
  ep eps[RESIL_ENDPOINTS_MAX];
  unsigned n;
  resil_outlier_config oc;
  resil_pool_connector cn; /* the adapter's: validate, close, abandon, ctx */
  resil_endpoint_connect_fn connect_to;
  resil_pool *front;
  pthread_mutex_t mu;
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

/* Eject e unless it is already ejected or the percentage forbids it. True
 * if it was ejected (the caller then evicts its pool, without g->mu). */
static bool eject_locked(struct resil__group *g, ep *e, uint64_t now) {
  if (e->ejected) return false;
  unsigned out = (unsigned)__builtin_popcount(atomic_load_explicit(&g->ejected,
                                                                    memory_order_relaxed));
  if ((uint64_t)(out + 1) * 100 > (uint64_t)g->oc.max_ejection_percent * g->n) {
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
  atomic_fetch_or_explicit(&g->ejected, 1u << e->idx, memory_order_release);
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
  if (did) resil_pool_evict(e->pool, RESIL_POOL_GEN_CURRENT);
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
    atomic_fetch_and_explicit(&g->ejected, ~(1u << i), memory_order_release);
  }
  recompute_due_locked(g);
  pthread_mutex_unlock(&g->mu);
}

/* The success-rate rule over the interval that just ended. */
static void success_rate_check(struct resil__group *g, uint64_t now) {
  const resil_outlier_config *oc = &g->oc;
  double rate[RESIL_ENDPOINTS_MAX];
  bool use[RESIL_ENDPOINTS_MAX];
  unsigned k = 0;
  double sum = 0;
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_relaxed);
  for (unsigned i = 0; i < g->n; i++) {
    uint64_t c = atomic_exchange_explicit(&g->eps[i].sr_calls, 0, memory_order_relaxed);
    uint64_t ok = atomic_exchange_explicit(&g->eps[i].sr_ok, 0, memory_order_relaxed);
    use[i] = !(mask & (1u << i)) && c >= oc->success_rate_request_volume;
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
  (void)now;
}

/* ---- The call path ---------------------------------------------------------- */

/* What the last outcome recorded on this thread was, for resil_dep_done()'s
 * breaker rule (resil__endpoints_breaker_outcome). */
static _Thread_local __attribute__((tls_model("initial-exec"))) struct {
  const struct resil__group *g;
  unsigned idx;
  bool failed;
} last;

static void record(struct resil__group *g, ep *e, bool ok) {
  last.g = g;
  last.idx = e->idx;
  last.failed = !ok;
  atomic_fetch_add_explicit(&e->calls, 1, memory_order_relaxed);
  uint64_t now = 0;
  if (g->oc.success_rate_minimum_hosts) {
    atomic_fetch_add_explicit(&e->sr_calls, 1, memory_order_relaxed);
    if (ok) atomic_fetch_add_explicit(&e->sr_ok, 1, memory_order_relaxed);
    now = ep_now();
    uint64_t due = atomic_load_explicit(&g->sr_due_ns, memory_order_relaxed);
    if (now >= due &&
        atomic_compare_exchange_strong(&g->sr_due_ns, &due, now + g->oc.interval_ms * MS))
      success_rate_check(g, now);
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

resil_status resil__endpoints_breaker_outcome(const resil_pool *attached, resil_status outcome) {
  const struct resil__group *g = last.g;
  last.g = NULL;
  if (!g || !last.failed || !attached || g->front != attached) return outcome;
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_relaxed);
  for (unsigned i = 0; i < g->n; i++)
    if (i != last.idx && !(mask & (1u << i)) &&
        atomic_load_explicit(&g->eps[i].last_ok, memory_order_relaxed) == 1)
      return RESIL_E_CALLER; /* another address is healthy: ignored by the breaker */
  return outcome;
}

/* Power of two choices, least outstanding, among the addresses not ejected. */
static ep *pick(struct resil__group *g) {
  if (__builtin_expect(atomic_load_explicit(&g->ejected, memory_order_relaxed) != 0, 0)) {
    uint64_t now = ep_now();
    if (now >= atomic_load_explicit(&g->next_due_ns, memory_order_relaxed)) readmit_due(g, now);
  }
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_acquire);
  unsigned cand[RESIL_ENDPOINTS_MAX], k = 0;
  for (unsigned i = 0; i < g->n; i++)
    if (!(mask & (1u << i))) cand[k++] = i;
  if (k == 0) /* all ejected (max_ejection_percent 100): panic, use them all */
    for (unsigned i = 0; i < g->n; i++) cand[k++] = i;
  if (k == 1) return &g->eps[cand[0]];
  uint64_t r = resil__rand();
  unsigned a = (unsigned)(r % k), b = (unsigned)((r >> 32) % (k - 1));
  if (b >= a) b++;
  ep *ea = &g->eps[cand[a]], *eb = &g->eps[cand[b]];
  return atomic_load_explicit(&eb->outstanding, memory_order_relaxed) <
                 atomic_load_explicit(&ea->outstanding, memory_order_relaxed)
             ? eb
             : ea;
}

resil_status resil__group_acquire(struct resil__group *g, resil_deadline deadline,
                                  resil_pool_conn **out, resil_err *err) {
  ep *e = pick(g);
  atomic_fetch_add_explicit(&e->outstanding, 1, memory_order_relaxed);
  resil_status st = resil_pool_acquire(e->pool, deadline, out, err);
  if (st == RESIL_OK) return st;
  atomic_fetch_sub_explicit(&e->outstanding, 1, memory_order_relaxed);
  if (st == RESIL_E_FAILURE || st == RESIL_E_TIMEOUT) record(g, e, false);
  else last.g = NULL;
  return st;
}

static ep *member_of(struct resil__group *g, const resil_pool_conn *c) {
  uint64_t i = resil_pool_conn_generation(c) >> GEN_SHIFT;
  return i < g->n ? &g->eps[i] : NULL;
}

void resil__group_release(struct resil__group *g, resil_pool_conn *c, resil_pool_return how) {
  ep *e = member_of(g, c);
  if (!e) return;
  resil_pool_release(e->pool, c, how);
  atomic_fetch_sub_explicit(&e->outstanding, 1, memory_order_relaxed);
  record(g, e, how == RESIL_POOL_OK);
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
  for (int pass = 0; pass < 2; pass++)
    for (unsigned i = 0; i < g->n; i++) {
      if (&g->eps[i] == self || (pass == 0) != !!(mask & (1u << i))) continue;
      if (resil__pool_close_one_idle(g->eps[i].pool)) return true;
    }
  return false;
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
                         e->addr.text, g->budget_max, g->n);
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
  for (unsigned i = 0; i < g->n; i++) resil_pool_free(g->eps[i].pool);
  pthread_cond_destroy(&g->bcv);
  pthread_mutex_destroy(&g->bmu);
  pthread_mutex_destroy(&g->mu);
  free(g);
}

static resil_status check_args(const resil_pool_config *cfg, const resil_pool_connector *cn,
                               resil_endpoint_connect_fn connect_to, const char *hosts,
                               uint32_t default_port, const resil_outlier_config *oc,
                               resil_endpoint *eps, size_t *n, resil_err *err) {
  resil_problems p;
  resil__problems_init(&p, NULL);
  resil_err e;
  if (resil_pool_config_validate(cfg, NULL, &e) != RESIL_OK) resil__problems_merge(&p, e.msg);
  if (resil_outlier_config_validate(oc, NULL, &e) != RESIL_OK) resil__problems_merge(&p, e.msg);
  if (!cn || !cn->close) resil__problem(&p, "connector.close", "is required");
  if (!connect_to) resil__problem(&p, "connect_to", "is required");
  if (resil_endpoints_parse(hosts, default_port, eps, RESIL_ENDPOINTS_MAX, n, &e) != RESIL_OK)
    resil__problem(&p, "hosts", "%s", e.msg);
  return resil__problems_finish(&p, err);
}

resil_pool *resil_pool_new_endpoints(const resil_pool_config *cfg,
                                     const resil_pool_connector *connector,
                                     resil_endpoint_connect_fn connect_to, const char *hosts,
                                     uint32_t default_port, const resil_outlier_config *outlier,
                                     resil_err *err) {
  resil_endpoint addrs[RESIL_ENDPOINTS_MAX];
  size_t n = 0;
  if (check_args(cfg, connector, connect_to, hosts, default_port, outlier, addrs, &n, err) !=
      RESIL_OK)
    return NULL;
  struct resil__group *g = aligned_alloc(64, (sizeof *g + 63) / 64 * 64);
  if (!g) {
    resil_err_set(err, RESIL_E_NOMEM, "pool '%s': out of memory", cfg->name);
    return NULL;
  }
  memset(g, 0, sizeof *g);
  g->n = (unsigned)n;
  g->oc = *outlier;
  g->cn = *connector;
  g->connect_to = connect_to;
  g->budget_max = cfg->max_size;
  atomic_store(&g->next_due_ns, UINT64_MAX);
  atomic_store(&g->sr_due_ns, resil_now_ns() + (uint64_t)outlier->interval_ms * MS);
  pthread_mutex_init(&g->mu, NULL);
  pthread_mutex_init(&g->bmu, NULL);
  resil__cond_init(&g->bcv);
  resil_pool_config mc = *cfg;
  /* min_idle spread over the addresses, within max_size in total */
  mc.min_idle = (uint32_t)((cfg->min_idle + n - 1) / n);
  while (mc.min_idle * n > cfg->max_size && mc.min_idle) mc.min_idle--;
  for (unsigned i = 0; i < n; i++) {
    ep *e = &g->eps[i];
    atomic_store(&e->last_ok, -1);
    e->g = g;
    e->idx = i;
    e->addr = addrs[i];
    resil_pool_connector wc = {.connect = ep_connect, .validate = ep_validate,
                               .close = ep_close, .abandon = ep_abandon, .ctx = e};
    e->pool = resil_pool_new(&mc, &wc, err);
    if (!e->pool) {
      g->n = i;
      group_destroy(g);
      return NULL;
    }
    resil__pool_set_generation(e->pool, (uint64_t)i << GEN_SHIFT);
  }
  g->front = resil__pool_new_front(cfg, g, GEN_NONE, err);
  if (!g->front) {
    group_destroy(g);
    return NULL;
  }
  return g->front;
}

void resil__group_free(struct resil__group *g) { group_destroy(g); }

resil_status resil__group_prewarm(struct resil__group *g, resil_deadline deadline,
                                  resil_err *err) {
  resil_status worst = RESIL_OK;
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_relaxed);
  for (unsigned i = 0; i < g->n; i++) {
    if (mask & (1u << i)) continue;
    resil_err e;
    resil_status st = resil_pool_prewarm(g->eps[i].pool, deadline, &e);
    if (st != RESIL_OK && worst == RESIL_OK) {
      worst = st;
      resil_err_set(err, st, "%s: %s", g->eps[i].addr.text, e.msg);
    }
  }
  return worst;
}

resil_status resil__group_drain(struct resil__group *g, resil_deadline deadline) {
  resil_status worst = RESIL_OK;
  for (unsigned i = 0; i < g->n; i++)
    if (resil_pool_drain(g->eps[i].pool, deadline) != RESIL_OK) worst = RESIL_E_TIMEOUT;
  return worst;
}

bool resil__group_evict(struct resil__group *g, uint64_t generation) {
  if (generation == RESIL_POOL_GEN_CURRENT) {
    bool any = false;
    for (unsigned i = 0; i < g->n; i++)
      any |= resil_pool_evict(g->eps[i].pool, RESIL_POOL_GEN_CURRENT);
    return any;
  }
  uint64_t i = generation >> GEN_SHIFT;
  return i < g->n && resil_pool_evict(g->eps[i].pool, generation);
}

/* Sum of the members' stats; max is the shared bound. */
void resil__group_stats(const struct resil__group *g, resil_pool_stats *out) {
  resil_pool_stats s;
  for (unsigned i = 0; i < g->n; i++) {
    resil_pool_get_stats(g->eps[i].pool, &s);
    out->open += s.open;
    out->idle += s.idle;
    out->in_use += s.in_use;
    out->connecting += s.connecting;
    out->waiters += s.waiters;
    out->acquired += s.acquired;
    out->acquire_timeouts += s.acquire_timeouts;
    out->connects_ok += s.connects_ok;
    out->connects_failed += s.connects_failed;
    out->connects_timed_out += s.connects_timed_out;
    for (int k = 0; k < RESIL_POOL_CLOSE_REASON_SLOTS; k++) out->closed[k] += s.closed[k];
    out->evictions += s.evictions;
    for (int k = 0; k <= RESIL_HIST_BOUNDS; k++)
      out->acquire_latency.counts[k] += s.acquire_latency.counts[k];
    out->acquire_latency.count += s.acquire_latency.count;
    out->acquire_latency.sum_ns += s.acquire_latency.sum_ns;
  }
  out->max = g->budget_max;
  out->generation = GEN_NONE;
}

/* fork: no other thread inside g->mu or g->bmu across fork(); the child's
 * member pools start empty, and so does its budget. */
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
  pthread_mutex_unlock(&g->bmu);
  pthread_mutex_unlock(&g->mu);
}

/* ---- Introspection ------------------------------------------------------------ */

static struct resil__group *group_of(const resil_pool *p) {
  return p ? resil__pool_group(p) : NULL;
}

size_t resil_pool_endpoint_stats(const resil_pool *p, resil_endpoint_stats *out, size_t max) {
  struct resil__group *g = group_of(p);
  if (!g) return 0;
  uint64_t now = ep_now();
  for (unsigned i = 0; i < g->n && i < max && out; i++) {
    ep *e = &g->eps[i];
    resil_endpoint_stats *o = &out[i];
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
  return g->n;
}

const resil_endpoint *resil_pool_endpoint_next(resil_pool *p) {
  struct resil__group *g = group_of(p);
  if (!g) return NULL;
  uint32_t mask = atomic_load_explicit(&g->ejected, memory_order_relaxed);
  uint32_t start = atomic_fetch_add_explicit(&g->rr, 1, memory_order_relaxed);
  for (unsigned k = 0; k < g->n; k++) {
    unsigned i = (start + k) % g->n;
    if (!(mask & (1u << i))) return &g->eps[i].addr;
  }
  return &g->eps[start % g->n].addr;
}
