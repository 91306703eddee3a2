/* brownout: the simulated dependency (--backend sim, the default without
 * libcurl). A request "is served" by sleeping for the phase's latency and
 * failing at its error rate; like a driver with a timeout it never sleeps
 * past the deadline it is given. The resil side goes through
 * resil_dep_call(). See brownout.c for the scenario. */
#include "brownout.h"

#include <resil/adapter.h> /* resil_err_set: the simulated dependency fills resil_attempt.err */

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

/* ---- A saturated dependency: at most N served at once ----------------------- */

/* The "saturated" phase: the dependency serves at most serve_max requests at
 * once and the rest wait their turn. A request served keeps its slot for its
 * whole service time even if the caller gave up meanwhile (the work is done
 * anyway), so a queue longer than the callers' deadline wastes the capacity
 * on answers nobody reads. */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned busy;
} gate;

static void gate_init(gate *g) {
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  g->busy = 0;
}

static void gate_destroy(gate *g) {
  pthread_cond_destroy(&g->cv);
  pthread_mutex_destroy(&g->mu);
}

/* Take a slot, waiting until until_ns at most. false: none by then. */
static bool gate_enter(gate *g, unsigned max, uint64_t until_ns) {
  pthread_mutex_lock(&g->mu);
  for (;;) {
    if (g->busy < max) {
      g->busy++;
      pthread_mutex_unlock(&g->mu);
      return true;
    }
    if (resil_now_ns() >= until_ns) break;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 5000000; /* look at the clock every 5 ms */
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&g->cv, &g->mu, &ts);
  }
  pthread_mutex_unlock(&g->mu);
  return false;
}

static void gate_leave(gate *g) {
  pthread_mutex_lock(&g->mu);
  g->busy--;
  pthread_cond_signal(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* ---- The simulated dependency ----------------------------------------------- */

typedef struct sim_backend {
  _Atomic(const phase_spec *) phase;
  const uint64_t *shutdown_ns; /* set before the first request */
  gate g;
} sim_backend;

static void *sim_open(const uint64_t *shutdown_ns, resil_err *err) {
  sim_backend *s = calloc(1, sizeof *s);
  if (!s) {
    resil_err_set(err, RESIL_E_NOMEM, "simulated dependency: out of memory");
    return NULL;
  }
  atomic_init(&s->phase, &PHASES[PH_HEALTHY]);
  s->shutdown_ns = shutdown_ns;
  gate_init(&s->g);
  return s;
}

static void sim_close(void *b) {
  sim_backend *s = b;
  gate_destroy(&s->g);
  free(s);
}

static void sim_set_phase(void *b, const phase_spec *ph) {
  atomic_store(&((sim_backend *)b)->phase, ph);
}

static void sim_describe(void *b, char *buf, size_t n) {
  (void)b;
  snprintf(buf, n, "simulated in this process");
}

static resil_status sim_request(void *b, resil_deadline deadline, uint64_t *rng, resil_err *err) {
  sim_backend *s = b;
  const phase_spec *ph = atomic_load(&s->phase);
  uint64_t start = resil_now_ns();
  double span = (double)(ph->lat_max_us - ph->lat_min_us);
  uint64_t lat_ns = (ph->lat_min_us + (uint64_t)(rand01(rng) * span)) * 1000ull;
  bool fail = rand01(rng) < ph->error_rate;
  /* Saturated: wait for a slot (a caller gives up at its deadline). */
  bool slot = false;
  if (ph->serve_max) {
    uint64_t until = min_u64(deadline.at_ns, *s->shutdown_ns);
    if (!gate_enter(&s->g, ph->serve_max, until))
      return resil_err_set(err, resil_now_ns() >= *s->shutdown_ns ? RESIL_E_FAILURE : RESIL_E_TIMEOUT,
                           "simulated dependency: still queued at the deadline");
    slot = true;
    start = resil_now_ns();
  }
  uint64_t end = start + lat_ns;
  /* A driver with a timeout gives up at the deadline. An unset deadline
   * would be "no timeout": the caller always passes one. */
  bool timed_out = resil_deadline_is_set(deadline) && deadline.at_ns < end;
  if (timed_out) end = deadline.at_ns;
  bool shut = end > *s->shutdown_ns;
  if (shut) end = *s->shutdown_ns;
  if (end > start) sleep_until_ns(end);
  if (slot) gate_leave(&s->g);
  if (shut)
    return resil_err_set(err, RESIL_E_FAILURE,
                         "simulated dependency: connection closed at shutdown");
  if (timed_out)
    return resil_err_set(err, RESIL_E_TIMEOUT,
                         "simulated dependency: no answer within %" PRIu64 " ms",
                         (end - start + 999999) / 1000000);
  if (fail)
    return resil_err_set(err, RESIL_E_FAILURE, "simulated dependency: 503 Service Unavailable");
  return RESIL_OK;
}

typedef struct sim_resil {
  sim_backend *s;
  resil_dep *dep;
  uint64_t probe_rng; /* the recovery probe's (one probe at a time) */
} sim_resil;

/* The recovery probe (resil_dep_set_probe): one request to the simulated
 * dependency while the breaker is open. The HTTP backend gets its probe
 * from the adapter (a GET of the base URL). */
static resil_status sim_probe(void *ctx, resil_deadline deadline, resil_err *err) {
  sim_resil *c = ctx;
  return sim_request(c->s, deadline, &c->probe_rng, err);
}

static void *sim_resil_open(void *b, const resil_dep_config *cfg, resil_dep **dep,
                            resil_err *err) {
  sim_resil *c = calloc(1, sizeof *c);
  if (!c) {
    resil_err_set(err, RESIL_E_NOMEM, "out of memory");
    return NULL;
  }
  c->s = b;
  if (!(c->dep = resil_dep_new(cfg, err))) {
    free(c);
    return NULL;
  }
  c->probe_rng = 0x9e3779b97f4a7c15ull;
  if (resil_dep_set_probe(c->dep, sim_probe, c) != RESIL_OK) {
    resil_err_set(err, RESIL_E_SYSTEM, "cannot start the recovery probe");
    resil_dep_free(c->dep);
    free(c);
    return NULL;
  }
  *dep = c->dep;
  return c;
}

static void sim_resil_close(void *client) {
  sim_resil *c = client;
  if (!c) return;
  resil_dep_free(c->dep);
  free(c);
}

typedef struct sim_attempt_ctx {
  sim_backend *s;
  uint64_t *rng;
  unsigned sent;
} sim_attempt_ctx;

/* One attempt through resil: the deadline is the permit's. */
static resil_status sim_attempt(void *ctx, resil_attempt *a) {
  sim_attempt_ctx *x = ctx;
  x->sent++;
  return sim_request(x->s, a->deadline, x->rng, a->err);
}

static resil_status sim_resil_request(void *client, resil_deadline deadline, uint64_t *rng,
                                      unsigned *sent, resil_err *err) {
  sim_resil *c = client;
  sim_attempt_ctx x = {c->s, rng, 0};
  resil_status st = resil_dep_call(c->dep, deadline, RESIL_CALL_IDEMPOTENT, sim_attempt, &x, err);
  *sent = x.sent;
  return st;
}

static void *sim_naive_open(void *b, resil_err *err) {
  (void)err;
  return b;
}

static void sim_naive_close(void *client) { (void)client; }

static resil_status sim_naive_request(void *client, uint64_t *rng, resil_err *err) {
  return sim_request(client, resil_deadline_in_ms(NAIVE_DRIVER_TIMEOUT_MS), rng, err);
}

const backend_ops SIM_BACKEND = {
    .name = "sim",
    .open = sim_open,
    .close = sim_close,
    .set_phase = sim_set_phase,
    .describe = sim_describe,
    .resil_open = sim_resil_open,
    .resil_close = sim_resil_close,
    .resil_request = sim_resil_request,
    .naive_open = sim_naive_open,
    .naive_close = sim_naive_close,
    .naive_request = sim_naive_request,
    .where = "simulated in this process",
    .resil_desc = "resil_dep_call() around the simulated request",
    .naive_desc = "a simulated driver call with a 30 s timeout",
};
