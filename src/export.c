/* Prometheus text and JSON rendering of every registered dependency. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "resil/emf.h"

/* ---- snapshot of the registry ------------------------------------------ */
static void collect(void *ctx, resil_dep *d) {
  resil_stats_vec *s = ctx;
  if (s->oom) return;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    resil_dep_stats *nv = realloc(s->v, cap * sizeof *nv);
    if (!nv) {
      s->oom = true;
      return;
    }
    s->v = nv;
    s->cap = cap;
  }
  resil_dep_get_stats(d, &s->v[s->n++]);
}

resil_status resil__stats_snapshot(resil_stats_vec *out, const char *what, resil_err *err) {
  memset(out, 0, sizeof *out);
  resil_registry_foreach(collect, out);
  if (out->oom) {
    free(out->v);
    out->v = NULL;
    return resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", what);
  }
  return RESIL_OK;
}

/* Dependency names are restricted to [A-Za-z0-9_.-] so they need no
 * escaping in label values or JSON strings. */

/* ---- info labels --------------------------------------------------------- */
#define MAX_INFO 8
static pthread_mutex_t info_mu = PTHREAD_MUTEX_INITIALIZER;
static char info_name[MAX_INFO][64];
static char info_value[MAX_INFO][256];
static int info_n;

static bool label_name_ok(const char *n) {
  if (!n || !*n || strlen(n) >= 64) return false;
  for (const char *c = n; *c; c++) {
    bool alpha = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_';
    if (!alpha && !(c != n && *c >= '0' && *c <= '9')) return false;
  }
  return strncmp(n, "__", 2) != 0 && strcmp(n, "version") != 0 && strcmp(n, "clock") != 0;
}

resil_status resil_export_set_info_label(const char *name, const char *value, resil_err *err) {
  if (!label_name_ok(name))
    return resil_err_set(err, RESIL_E_INVALID,
                         "export: label name '%.64s' must match [a-zA-Z_][a-zA-Z0-9_]* "
                         "(not 'version' or 'clock', not starting with __)",
                         name ? name : "(null)");
  if (!value) return resil_err_set(err, RESIL_E_INVALID, "export: label %s: value is NULL", name);
  if (strlen(value) >= sizeof info_value[0])
    return resil_err_set(err, RESIL_E_INVALID, "export: label %s: value longer than %zu bytes",
                         name, sizeof info_value[0] - 1);
  pthread_mutex_lock(&info_mu);
  int i;
  for (i = 0; i < info_n; i++)
    if (strcmp(info_name[i], name) == 0) break;
  if (i == info_n) {
    if (info_n == MAX_INFO) {
      pthread_mutex_unlock(&info_mu);
      return resil_err_set(err, RESIL_E_INVALID, "export: at most %d info labels", MAX_INFO);
    }
    resil__strlcpy(info_name[info_n++], name, sizeof info_name[0]);
  }
  resil__strlcpy(info_value[i], value, sizeof info_value[0]);
  pthread_mutex_unlock(&info_mu);
  return RESIL_OK;
}

/* Prometheus label value escaping: backslash, quote, newline. */
static void sb_label_value(resil_sbuf *b, const char *v) {
  for (; *v; v++) {
    if (*v == '\\')
      resil__sb_printf(b, "\\\\");
    else if (*v == '"')
      resil__sb_printf(b, "\\\"");
    else if (*v == '\n')
      resil__sb_printf(b, "\\n");
    else
      resil__sb_printf(b, "%c", *v);
  }
}

/* ---- Prometheus ---------------------------------------------------------- */

static void family(resil_sbuf *b, const char *name, const char *type, const char *help) {
  resil__sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(resil_sbuf *b, const char *name, const char *dep,
                      const resil_hist_snapshot *h) {
  const uint64_t *bounds = resil_hist_bounds_ns();
  uint64_t cum = 0;
  for (unsigned i = 0; i < RESIL_HIST_BOUNDS; i++) {
    cum += h->counts[i];
    resil__sb_printf(b, "%s_bucket{dependency=\"%s\",le=\"%g\"} %llu\n", name, dep,
              (double)bounds[i] / 1e9, (unsigned long long)cum);
  }
  cum += h->counts[RESIL_HIST_BOUNDS];
  resil__sb_printf(b, "%s_bucket{dependency=\"%s\",le=\"+Inf\"} %llu\n", name, dep,
            (unsigned long long)cum);
  resil__sb_printf(b, "%s_sum{dependency=\"%s\"} %.9f\n", name, dep, (double)h->sum_ns / 1e9);
  resil__sb_printf(b, "%s_count{dependency=\"%s\"} %llu\n", name, dep, (unsigned long long)cum);
}

#define EACH(s) for (size_t i_ = 0; i_ < (s)->n; i_++)
#define D (&s->v[i_])

static void render_prometheus(resil_sbuf *b, const resil_stats_vec *s) {
  family(b, "resil_info", "gauge", "resil library version and deployment labels (always 1).");
  resil__sb_printf(b, "resil_info{version=\"%s\",clock=\"%s\"", resil_version(),
                   resil__fast_clock_source());
  pthread_mutex_lock(&info_mu);
  for (int i = 0; i < info_n; i++) {
    resil__sb_printf(b, ",%s=\"", info_name[i]);
    sb_label_value(b, info_value[i]);
    resil__sb_printf(b, "\"");
  }
  pthread_mutex_unlock(&info_mu);
  resil__sb_printf(b, "} 1\n");

  family(b, "resil_emf_dropped_lines_total", "counter",
         "CloudWatch EMF lines dropped because stdout had no room (never blocks the process).");
  resil__sb_printf(b, "resil_emf_dropped_lines_total %llu\n",
                   (unsigned long long)resil_emf_dropped_lines());

  family(b, "resil_calls_total", "counter", "Admitted calls by outcome.");
  EACH(s) for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++)
    resil__sb_printf(b, "resil_calls_total{dependency=\"%s\",outcome=\"%s\"} %llu\n", D->name,
              resil_outcome_name((resil_outcome)k), (unsigned long long)D->calls[k]);
  family(b, "resil_rejections_total", "counter", "Calls rejected locally, by reason.");
  EACH(s) for (int k = 0; k < RESIL_REJECT_COUNT_; k++)
    resil__sb_printf(b, "resil_rejections_total{dependency=\"%s\",reason=\"%s\"} %llu\n", D->name,
              resil_reject_reason_name((resil_reject_reason)k),
              (unsigned long long)D->rejections[k]);
  family(b, "resil_retries_total", "counter", "Extra attempts made by the retry policy.");
  EACH(s) resil__sb_printf(b, "resil_retries_total{dependency=\"%s\"} %llu\n", D->name,
                    (unsigned long long)D->retries);
  family(b, "resil_in_flight", "gauge", "Calls admitted and not yet done.");
  EACH(s) resil__sb_printf(b, "resil_in_flight{dependency=\"%s\"} %u\n", D->name, D->in_flight);
  family(b, "resil_concurrency_limit", "gauge",
         "Concurrent calls allowed now (limit.max_concurrent, or the adaptive limit).");
  EACH(s) resil__sb_printf(b, "resil_concurrency_limit{dependency=\"%s\"} %u\n", D->name, D->limit);
  family(b, "resil_concurrency_limit_min", "gauge",
         "Lowest concurrency limit in force over the last 60 s.");
  EACH(s) resil__sb_printf(b, "resil_concurrency_limit_min{dependency=\"%s\"} %u\n", D->name,
                           D->limit_min);
  family(b, "resil_concurrency_limit_max", "gauge",
         "Highest concurrency limit in force over the last 60 s.");
  EACH(s) resil__sb_printf(b, "resil_concurrency_limit_max{dependency=\"%s\"} %u\n", D->name,
                           D->limit_max);
  family(b, "resil_throttle_probability", "gauge",
         "Probability (0..1) that client-side throttling refuses a call now.");
  EACH(s) resil__sb_printf(b, "resil_throttle_probability{dependency=\"%s\"} %.4f\n", D->name,
                           D->throttle_probability);
  family(b, "resil_queue_waiters", "gauge", "Callers waiting for a concurrency slot.");
  EACH(s) resil__sb_printf(b, "resil_queue_waiters{dependency=\"%s\"} %u\n", D->name, D->waiters);
  family(b, "resil_saturation_ratio", "gauge",
         "Headline saturation: max of in-flight/limit and pool in-use/max; >= 1 means queueing.");
  EACH(s) resil__sb_printf(b, "resil_saturation_ratio{dependency=\"%s\"} %.4f\n", D->name,
                    D->saturation);
  family(b, "resil_breaker_state", "gauge", "1 for the breaker's current state, 0 otherwise.");
  EACH(s) for (int k = 0; k < RESIL_BREAKER_STATE_COUNT_; k++)
    resil__sb_printf(b, "resil_breaker_state{dependency=\"%s\",state=\"%s\"} %d\n", D->name,
              resil_breaker_state_name((resil_breaker_state)k), D->breaker.state == (resil_breaker_state)k);
  family(b, "resil_breaker_transitions_total", "counter", "Breaker state changes, by new state.");
  EACH(s) for (int k = 0; k < RESIL_BREAKER_STATE_COUNT_; k++)
    resil__sb_printf(b, "resil_breaker_transitions_total{dependency=\"%s\",to=\"%s\"} %llu\n", D->name,
              resil_breaker_state_name((resil_breaker_state)k),
              (unsigned long long)D->breaker.transitions[k]);
  family(b, "resil_probes_total", "counter",
         "Recovery probes run while the breaker was open, by result (never counted as calls).");
  EACH(s) for (int k = 0; k < RESIL_PROBE_RESULT_COUNT_; k++)
    resil__sb_printf(b, "resil_probes_total{dependency=\"%s\",result=\"%s\"} %llu\n", D->name,
                     resil_probe_result_name((resil_probe_result)k),
                     (unsigned long long)D->probes[k]);
  family(b, "resil_events_total", "counter", "State-change events delivered to the event hook.");
  EACH(s) resil__sb_printf(b, "resil_events_total{dependency=\"%s\"} %llu\n", D->name,
                           (unsigned long long)D->events);
  family(b, "resil_events_dropped_total", "counter",
         "State-change events dropped by the per-dependency rate limit.");
  EACH(s) resil__sb_printf(b, "resil_events_dropped_total{dependency=\"%s\"} %llu\n", D->name,
                           (unsigned long long)D->events_dropped);
  family(b, "resil_event_log_dropped_total", "counter",
         "Event log lines not written because stderr would have blocked.");
  resil__sb_printf(b, "resil_event_log_dropped_total %llu\n",
                   (unsigned long long)resil__event_log_dropped());
  family(b, "resil_rate_limit", "gauge",
         "Outbound rate limit in calls per second (rate_limit.per_s; 0 = off).");
  EACH(s) resil__sb_printf(b, "resil_rate_limit{dependency=\"%s\"} %u\n", D->name,
                           D->rate_limit_per_s);
  family(b, "resil_pause_remaining_seconds", "gauge",
         "Time left of the pause after server pushback (Retry-After); 0 = not paused.");
  EACH(s) resil__sb_printf(b, "resil_pause_remaining_seconds{dependency=\"%s\"} %.3f\n",
                           D->name, (double)D->pause_remaining_ms / 1e3);
  family(b, "resil_pauses_total", "counter", "Pauses started or grown after server pushback.");
  EACH(s) resil__sb_printf(b, "resil_pauses_total{dependency=\"%s\"} %llu\n", D->name,
                           (unsigned long long)D->pauses);
  family(b, "resil_memory_bytes", "gauge",
         "Bytes held now for calls in flight (reply, response and result buffers).");
  uint64_t mem_all = 0;
  EACH(s) {
    mem_all += D->memory_bytes;
    resil__sb_printf(b, "resil_memory_bytes{dependency=\"%s\"} %llu\n", D->name,
                     (unsigned long long)D->memory_bytes);
  }
  family(b, "resil_memory_process_bytes", "gauge",
         "Bytes held now for calls in flight, all dependencies together.");
  resil__sb_printf(b, "resil_memory_process_bytes %llu\n", (unsigned long long)mem_all);
  family(b, "resil_memory_bound_bytes", "gauge",
         "Worst-case bytes the dependency can hold, from its configuration (0 = not computed).");
  EACH(s) resil__sb_printf(b, "resil_memory_bound_bytes{dependency=\"%s\"} %llu\n", D->name,
                           (unsigned long long)D->memory_bound_bytes);
  family(b, "resil_call_duration_seconds", "histogram",
         "Latency of admitted calls, admit to done.");
  EACH(s) histogram(b, "resil_call_duration_seconds", D->name, &D->latency);

  bool pools = false;
  EACH(s) pools |= D->has_pool;
  if (!pools) return;
  family(b, "resil_pool_max_connections", "gauge", "Pool size limit (pool.max_size).");
  EACH(s) if (D->has_pool) resil__sb_printf(b, "resil_pool_max_connections{dependency=\"%s\"} %u\n",
                                     D->name, D->pool.max);
  family(b, "resil_pool_connections", "gauge", "Pool connections by state.");
  EACH(s) if (D->has_pool) {
    resil__sb_printf(b, "resil_pool_connections{dependency=\"%s\",state=\"idle\"} %u\n", D->name,
              D->pool.idle);
    resil__sb_printf(b, "resil_pool_connections{dependency=\"%s\",state=\"in_use\"} %u\n", D->name,
              D->pool.in_use);
    resil__sb_printf(b, "resil_pool_connections{dependency=\"%s\",state=\"connecting\"} %u\n", D->name,
              D->pool.connecting);
  }
  family(b, "resil_pool_waiters", "gauge", "Callers waiting for a pooled connection.");
  EACH(s) if (D->has_pool)
      resil__sb_printf(b, "resil_pool_waiters{dependency=\"%s\"} %u\n", D->name, D->pool.waiters);
  family(b, "resil_pool_acquire_timeouts_total", "counter",
         "Acquires that got no connection in time (pool_timeout).");
  EACH(s) if (D->has_pool)
      resil__sb_printf(b, "resil_pool_acquire_timeouts_total{dependency=\"%s\"} %llu\n", D->name,
                (unsigned long long)D->pool.acquire_timeouts);
  family(b, "resil_pool_connects_total", "counter", "Connection attempts by result.");
  EACH(s) if (D->has_pool) {
    resil__sb_printf(b, "resil_pool_connects_total{dependency=\"%s\",result=\"ok\"} %llu\n", D->name,
              (unsigned long long)D->pool.connects_ok);
    resil__sb_printf(b, "resil_pool_connects_total{dependency=\"%s\",result=\"failed\"} %llu\n", D->name,
              (unsigned long long)D->pool.connects_failed);
    resil__sb_printf(b, "resil_pool_connects_total{dependency=\"%s\",result=\"timeout\"} %llu\n",
              D->name, (unsigned long long)D->pool.connects_timed_out);
  }
  family(b, "resil_pool_closed_total", "counter", "Connections closed by the pool, by reason.");
  EACH(s) if (D->has_pool) for (int k = 0; k < RESIL_POOL_CLOSE_REASON_COUNT_; k++)
      resil__sb_printf(b, "resil_pool_closed_total{dependency=\"%s\",reason=\"%s\"} %llu\n", D->name,
                resil_pool_close_reason_name((resil_pool_close_reason)k),
                (unsigned long long)D->pool.closed[k]);
  family(b, "resil_pool_acquire_duration_seconds", "histogram",
         "Time spent waiting for a pooled connection.");
  EACH(s) if (D->has_pool)
      histogram(b, "resil_pool_acquire_duration_seconds", D->name, &D->pool.acquire_latency);
}

/* ---- per address (several addresses behind one dependency) --------------- */

/* The addresses of dependency `name`'s pool, into es (RESIL_ENDPOINTS_MAX);
 * 0 for a dependency with one address. With endpoints from DNS, *dns is
 * set and *ds filled (else *dns false). A removed address is not among
 * them: its series leave the output at once. */
static size_t endpoints_of(const char *name, resil_endpoint_stats *es, bool *dns,
                           resil_endpoints_dns_stats *ds) {
  resil_dep *d = resil_registry_find(name);
  resil_pool *p = d ? resil_dep_pool(d) : NULL;
  *dns = p && resil_pool_endpoints_dns_stats(p, ds);
  return p ? resil_pool_endpoint_stats(p, es, RESIL_ENDPOINTS_MAX) : 0;
}

typedef struct ep_snap {
  const char *dep;
  size_t n;
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  bool dns; /* endpoints from DNS: ds is filled */
  resil_endpoints_dns_stats ds;
} ep_snap;

/* Label endpoint="host:port": hosts are [A-Za-z0-9._:%-] (resil_endpoints_parse),
 * so the value needs no escaping; at most RESIL_ENDPOINTS_MAX per dependency. */
#define EP_EACH(v, nv) \
  for (size_t j_ = 0; j_ < (nv); j_++) for (size_t e_ = 0; e_ < (v)[j_].n; e_++)
#define EP (&v[j_].es[e_])
#define EP_LABELS "dependency=\"%s\",endpoint=\"%s\""
#define EP_ARGS v[j_].dep, EP->endpoint

/* Per dependency whose endpoints come from DNS (ENDPOINTS_FROM_DNS). */
static void render_endpoints_dns(resil_sbuf *b, const ep_snap *v, size_t nv) {
  bool any = false;
  for (size_t j = 0; j < nv; j++) any |= v[j].dns;
  if (!any) return;
  family(b, "resil_endpoint_dns_stale", "gauge",
         "1 while the last refresh of the dependency's name failed: its addresses are the "
         "last good answer.");
  for (size_t j = 0; j < nv; j++)
    if (v[j].dns)
      resil__sb_printf(b, "resil_endpoint_dns_stale{dependency=\"%s\"} %d\n", v[j].dep,
                       v[j].ds.stale);
  family(b, "resil_endpoint_dns_dropped", "gauge",
         "Addresses of the name's last answer left out: beyond the 16 a dependency may have.");
  for (size_t j = 0; j < nv; j++)
    if (v[j].dns)
      resil__sb_printf(b, "resil_endpoint_dns_dropped{dependency=\"%s\"} %u\n", v[j].dep,
                       v[j].ds.dropped);
}

static void render_endpoints(resil_sbuf *b, const resil_stats_vec *s) {
  size_t nv = 0;
  ep_snap *v = NULL;
  EACH(s) if (D->has_pool) {
    if (!v && !(v = calloc(s->n, sizeof *v))) {
      b->oom = true;
      return;
    }
    v[nv].dep = D->name;
    v[nv].n = endpoints_of(D->name, v[nv].es, &v[nv].dns, &v[nv].ds);
    if (v[nv].n > RESIL_ENDPOINTS_MAX) v[nv].n = RESIL_ENDPOINTS_MAX;
    if (v[nv].n || v[nv].dns) nv++;
  }
  if (!nv) {
    free(v);
    return;
  }
  render_endpoints_dns(b, v, nv);
  family(b, "resil_endpoint_ejected", "gauge",
         "1 while outlier detection has ejected this address of the dependency.");
  EP_EACH(v, nv) resil__sb_printf(b, "resil_endpoint_ejected{" EP_LABELS "} %d\n", EP_ARGS, EP->ejected);
  family(b, "resil_endpoint_ejections_total", "counter", "Ejections of this address.");
  EP_EACH(v, nv) resil__sb_printf(b, "resil_endpoint_ejections_total{" EP_LABELS "} %llu\n", EP_ARGS,
                                 (unsigned long long)EP->ejections);
  family(b, "resil_endpoint_ejections_skipped_total", "counter",
         "Ejections of this address refused by OUTLIER_MAX_EJECTION_PERCENT.");
  EP_EACH(v, nv) resil__sb_printf(b, "resil_endpoint_ejections_skipped_total{" EP_LABELS "} %llu\n",
                                 EP_ARGS, (unsigned long long)EP->ejections_skipped);
  family(b, "resil_endpoint_calls_total", "counter",
         "Outcomes seen on this address: connections handed back clean (success) or broken, "
         "and failed connects (failure).");
  EP_EACH(v, nv) {
    resil__sb_printf(b, "resil_endpoint_calls_total{" EP_LABELS ",result=\"success\"} %llu\n",
                     EP_ARGS, (unsigned long long)(EP->calls - EP->failures));
    resil__sb_printf(b, "resil_endpoint_calls_total{" EP_LABELS ",result=\"failure\"} %llu\n",
                     EP_ARGS, (unsigned long long)EP->failures);
  }
  family(b, "resil_endpoint_outstanding", "gauge", "Connections of this address lent out now.");
  EP_EACH(v, nv) resil__sb_printf(b, "resil_endpoint_outstanding{" EP_LABELS "} %u\n", EP_ARGS,
                                 EP->outstanding);
  family(b, "resil_endpoint_connections", "gauge", "This address's pooled connections by state.");
  EP_EACH(v, nv) {
    resil__sb_printf(b, "resil_endpoint_connections{" EP_LABELS ",state=\"idle\"} %u\n", EP_ARGS,
                     EP->idle);
    resil__sb_printf(b, "resil_endpoint_connections{" EP_LABELS ",state=\"in_use\"} %u\n",
                     EP_ARGS, EP->in_use);
  }
  free(v);
}

static void json_endpoints_dns(resil_sbuf *b, const resil_endpoints_dns_stats *ds) {
  resil__sb_printf(b,
                   ",\"endpoints_dns\":{\"host\":\"%s\",\"port\":%u,\"addresses\":%u,"
                   "\"draining\":%u,\"dropped\":%u,\"refreshes\":%llu,\"failures\":%llu,"
                   "\"added\":%llu,\"removed\":%llu,\"stale\":%s,\"last_error\":",
                   ds->host, ds->port, ds->addresses, ds->draining, ds->dropped,
                   (unsigned long long)ds->refreshes, (unsigned long long)ds->failures,
                   (unsigned long long)ds->added, (unsigned long long)ds->removed,
                   ds->stale ? "true" : "false");
  resil__sb_json_string(b, ds->last_error);
  resil__sb_printf(b, "}");
}

static void json_endpoints(resil_sbuf *b, const char *dep) {
  resil_endpoint_stats es[RESIL_ENDPOINTS_MAX];
  resil_endpoints_dns_stats ds;
  bool dns;
  size_t n = endpoints_of(dep, es, &dns, &ds);
  if (dns) json_endpoints_dns(b, &ds);
  if (!n) return;
  resil__sb_printf(b, ",\"endpoints\":[");
  for (size_t i = 0; i < n && i < RESIL_ENDPOINTS_MAX; i++)
    resil__sb_printf(b,
                     "%s{\"endpoint\":\"%s\",\"ejected\":%s,\"probation\":%s,"
                     "\"ejected_remaining_ms\":%llu,\"times_ejected\":%u,\"ejections\":%llu,"
                     "\"ejections_skipped\":%llu,\"calls\":%llu,\"failures\":%llu,"
                     "\"outstanding\":%u,\"open\":%u,\"idle\":%u,\"in_use\":%u}",
                     i ? "," : "", es[i].endpoint, es[i].ejected ? "true" : "false",
                     es[i].probation ? "true" : "false",
                     (unsigned long long)es[i].ejected_remaining_ms, es[i].times_ejected,
                     (unsigned long long)es[i].ejections,
                     (unsigned long long)es[i].ejections_skipped, (unsigned long long)es[i].calls,
                     (unsigned long long)es[i].failures, es[i].outstanding, es[i].open,
                     es[i].idle, es[i].in_use);
  resil__sb_printf(b, "]");
}

resil_status resil_export_prometheus(char **out, size_t *len, resil_err *err) {
  if (!out) return resil_err_set(err, RESIL_E_INVALID, "export: out is NULL");
  resil_stats_vec s;
  resil_status st = resil__stats_snapshot(&s, "export", err);
  if (st != RESIL_OK) return st;
  resil_sbuf b = {0};
  render_prometheus(&b, &s);
  render_endpoints(&b, &s);
  free(s.v);
  return resil__sb_finish(&b, out, len, err);
}

/* ---- JSON ----------------------------------------------------------------- */

static void json_hist(resil_sbuf *b, const resil_hist_snapshot *h) {
  resil__sb_printf(b, "{\"count\":%llu,\"sum_s\":%.9f,\"p50_s\":%.6f,\"p99_s\":%.6f,\"buckets\":[",
            (unsigned long long)h->count, (double)h->sum_ns / 1e9,
            (double)resil_hist_quantile_ns(h, 0.5) / 1e9,
            (double)resil_hist_quantile_ns(h, 0.99) / 1e9);
  for (unsigned i = 0; i <= RESIL_HIST_BOUNDS; i++)
    resil__sb_printf(b, "%s%llu", i ? "," : "", (unsigned long long)h->counts[i]);
  resil__sb_printf(b, "]}");
}

static void render_json(resil_sbuf *b, const resil_stats_vec *s) {
  resil__sb_printf(b, "{\"version\":\"%s\",\"dependencies\":[", resil_version());
  EACH(s) {
    resil__sb_printf(b, "%s{\"name\":\"%s\",\"critical\":%s,\"draining\":%s,\"admitted\":%llu,",
              i_ ? "," : "", D->name, D->critical ? "true" : "false",
              D->draining ? "true" : "false", (unsigned long long)D->admitted);
    resil__sb_printf(b, "\"calls\":{");
    for (int k = 0; k < RESIL_OUTCOME_COUNT_; k++)
      resil__sb_printf(b, "%s\"%s\":%llu", k ? "," : "", resil_outcome_name((resil_outcome)k),
                (unsigned long long)D->calls[k]);
    resil__sb_printf(b, "},\"rejections\":{");
    for (int k = 0; k < RESIL_REJECT_COUNT_; k++)
      resil__sb_printf(b, "%s\"%s\":%llu", k ? "," : "",
                resil_reject_reason_name((resil_reject_reason)k),
                (unsigned long long)D->rejections[k]);
    resil__sb_printf(b,
              "},\"retries\":%llu,\"in_flight\":%u,\"limit\":%u,\"limit_min\":%u,"
              "\"limit_max\":%u,\"throttle_probability\":%.4f,\"waiters\":%u,"
              "\"saturation\":%.4f,",
              (unsigned long long)D->retries, D->in_flight, D->limit, D->limit_min, D->limit_max,
              D->throttle_probability, D->waiters, D->saturation);
    resil__sb_printf(b,
              "\"breaker\":{\"state\":\"%s\",\"last_trip_reason\":\"%s\",\"trip_streak\":%u,"
              "\"window_calls\":%llu,\"window_failures\":%llu,\"window_slow\":%llu},",
              resil_breaker_state_name(D->breaker.state),
              resil_trip_reason_name(D->breaker.last_trip_reason), D->breaker.trip_streak,
              (unsigned long long)D->breaker.window_calls,
              (unsigned long long)D->breaker.window_failures,
              (unsigned long long)D->breaker.window_slow);
    resil__sb_printf(b, "\"probes\":{");
    for (int k = 0; k < RESIL_PROBE_RESULT_COUNT_; k++)
      resil__sb_printf(b, "%s\"%s\":%llu", k ? "," : "",
                       resil_probe_result_name((resil_probe_result)k),
                       (unsigned long long)D->probes[k]);
    resil__sb_printf(b, "},\"events\":%llu,\"events_dropped\":%llu,",
                     (unsigned long long)D->events, (unsigned long long)D->events_dropped);
    resil__sb_printf(b,
                     "\"rate_limit\":{\"per_s\":%u,\"burst\":%u},\"pause_remaining_ms\":%llu,"
                     "\"pauses\":%llu,\"memory_bytes\":%llu,\"memory_bound_bytes\":%llu,",
                     D->rate_limit_per_s, D->rate_limit_burst,
                     (unsigned long long)D->pause_remaining_ms, (unsigned long long)D->pauses,
                     (unsigned long long)D->memory_bytes,
                     (unsigned long long)D->memory_bound_bytes);
    resil__sb_printf(b, "\"latency\":");
    json_hist(b, &D->latency);
    if (D->has_pool) {
      const resil_pool_stats *p = &D->pool;
      resil__sb_printf(b,
                ",\"pool\":{\"max\":%u,\"open\":%u,\"idle\":%u,\"in_use\":%u,\"connecting\":%u,"
                "\"waiters\":%u,\"acquire_timeouts\":%llu,\"connects_ok\":%llu,"
                "\"connects_failed\":%llu,\"connects_timed_out\":%llu,\"acquire_latency\":",
                p->max, p->open, p->idle, p->in_use, p->connecting, p->waiters,
                (unsigned long long)p->acquire_timeouts, (unsigned long long)p->connects_ok,
                (unsigned long long)p->connects_failed,
                (unsigned long long)p->connects_timed_out);
      json_hist(b, &p->acquire_latency);
      resil__sb_printf(b, "}");
      json_endpoints(b, D->name);
    }
    resil__sb_printf(b, "}");
  }
  resil__sb_printf(b, "]}\n");
}

resil_status resil_export_json(char **out, size_t *len, resil_err *err) {
  if (!out) return resil_err_set(err, RESIL_E_INVALID, "export: out is NULL");
  resil_stats_vec s;
  resil_status st = resil__stats_snapshot(&s, "export", err);
  if (st != RESIL_OK) return st;
  resil_sbuf b = {0};
  render_json(&b, &s);
  free(s.v);
  return resil__sb_finish(&b, out, len, err);
}
