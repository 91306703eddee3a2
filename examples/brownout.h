/* brownout: what the demo's files share (examples/brownout.c is the story:
 * the scenario, the three sides, the table; the rest helps it). */
#ifndef BROWNOUT_H
#define BROWNOUT_H

#include <resil/resil.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* ---- The scenario (brownout.c) ------------------------------------------- */

#define NPHASES 6
enum { PH_HEALTHY, PH_BROWNOUT, PH_SATURATED, PH_PARTIAL, PH_OUTAGE, PH_RECOVERY };

/* How the dependency behaves in one phase. */
typedef struct phase_spec {
  const char *name;
  uint64_t lat_min_us, lat_max_us; /* latency, uniform in [min, max] */
  double error_rate;               /* 0..1: share answered with an error */
  unsigned serve_max;              /* > 0: serves at most this many at once, queues the rest */
  unsigned tenths;                 /* length: tenths of --phase-seconds */
  const char *story;               /* one line for people */
  const char *brief;               /* a few words */
} phase_spec;

extern const phase_spec PHASES[NPHASES];

#define DEADLINE_MS 200u              /* resil side: per request */
#define NAIVE_DRIVER_TIMEOUT_MS 30000 /* naive side: a typical driver default */
#define STUCK_NS 1000000000ull        /* in one call for >= 1 s = stuck */
#define DEFAULT_PHASE_S 10
#define QUICK_PHASE_S 2
#define DEFAULT_WORKERS 16
#define DEFAULT_RATE 800 /* requests/s offered to each side */
#define MAX_TRANSITIONS 4096

/* resil with every feature on (adaptive limit, throttling, probes); the same
 * with a static limit; the naive client. */
enum { SIDE_RESIL, SIDE_STATIC, SIDE_NAIVE, NSIDES };
#define FR_BITS 6 /* bits of a status in first_reject */
_Static_assert(RESIL_STATUS_COUNT_ <= (1 << FR_BITS), "a status must fit in FR_BITS bits (first_reject)");
extern const char *const SIDE_NAME[NSIDES];

/* ---- The dependency, behind an interface ---------------------------------- */

/* What the demo needs from a dependency: one copy of it per side (open),
 * told how to behave per phase (set_phase); a resil client over it, shared
 * by the resil side's workers; and a plain client per naive worker. The
 * requests must honour their deadline or timeout like a real driver. */
typedef struct backend_ops {
  const char *name; /* the --backend value */
  /* *shutdown_ns (set before the first request): no request is held past
   * this instant. */
  void *(*open)(const uint64_t *shutdown_ns, resil_err *err);
  /* Called at *shutdown_ns by the main thread (NULL: nothing to do): cut
   * what the dependency still holds. */
  void (*shutdown)(void *b);
  /* Stops the dependency; no client may still be calling it. */
  void (*close)(void *b);
  void (*set_phase)(void *b, const phase_spec *ph);
  /* One line for the header about the copy b ("testhttpd on ..."). */
  void (*describe)(void *b, char *buf, size_t n);
  /* The resil side's client over b, configured by cfg; *dep gets the
   * resil_dep it goes through (for stats and breaker state). */
  void *(*resil_open)(void *b, const resil_dep_config *cfg, resil_dep **dep, resil_err *err);
  void (*resil_close)(void *client);
  /* One request through resil. *sent: attempts that went to the dependency
   * (retries included). rng is the calling thread's. */
  resil_status (*resil_request)(void *client, resil_deadline deadline, uint64_t *rng,
                                unsigned *sent, resil_err *err);
  /* A naive client for one worker thread, and one request with its timeout. */
  void *(*naive_open)(void *b, resil_err *err);
  void (*naive_close)(void *client);
  resil_status (*naive_request)(void *client, uint64_t *rng, resil_err *err);
  const char *where;      /* what the dependency is, for the header */
  const char *resil_desc; /* how the resil side calls it */
  const char *naive_desc; /* how the naive side calls it */
} backend_ops;

extern const backend_ops SIM_BACKEND; /* brownout_sim.c */
const backend_ops *find_backend(const char *name); /* brownout.c; NULL: unknown */
extern const char *const DEFAULT_BACKEND, *const BACKEND_NAMES, *const BACKEND_NOTE;

/* ---- Run state ------------------------------------------------------------ */

typedef struct options {
  unsigned phase_s;
  unsigned workers;
  unsigned rate;
  bool quick;
  const char *out_dir;
  const char *backend;
  bool summary;      /* --summary: machine-readable lines too */
  bool with_servers; /* --with-servers: the servers section after the table */
} options;

/* Latency histogram: 100 log-spaced buckets per decade from 1 us to 100 s
 * (bucket i holds [10^(i/100), 10^((i+1)/100)) us), so quantiles are within
 * about 2% and memory stays fixed however long or fast the run. */
#define LAT_BUCKETS 801

/* What one worker saw in one phase (requests attributed to the phase they started in). */
typedef struct cell {
  uint64_t done, ok, failed, rejected, sent;
  uint64_t max_ns;
  uint64_t hist[LAT_BUCKETS];
} cell;

struct demo;

typedef struct worker {
  struct demo *demo;
  int side;
  pthread_t thread;
  bool running;
  uint64_t rng;
  void *naive; /* this worker's naive client (naive side) */
  _Atomic uint64_t call_start_ns; /* 0 when not in a call */
  cell cells[NPHASES];
} worker;

typedef struct side_state {
  void *backend;
  void *client;   /* the resil client (resil side) */
  resil_dep *dep; /* NULL for naive */
  worker *workers;
  /* The phase this side's dependency is in, set by the main thread right
   * after it switches it; requests count in the phase they started in. */
  _Atomic int cur_phase;
  _Atomic uint64_t live_done;
  /* First local rejection per phase: (time << FR_BITS) | status, so that one
   * compare-and-swap keeps the pair consistent; UINT64_MAX: none yet. */
  _Atomic uint64_t first_reject[NPHASES];
  /* The end of the last local rejection by the breaker or the throttle (the
   * outage's rejections; a concurrency_full is a scheduling hiccup), 0: none. */
  _Atomic uint64_t last_reject[NPHASES];
  /* Taken by the main thread at each phase's end. */
  unsigned stuck[NPHASES];
  resil_breaker_state breaker[NPHASES];
  uint64_t rejections[NPHASES][RESIL_REJECT_COUNT_];
  uint64_t retries[NPHASES];
  uint64_t prev_rejections[RESIL_REJECT_COUNT_];
  uint64_t prev_retries;
  /* The dependency's stats at the start and at each phase's end, and the
   * wall-clock time of each (for the EMF lines). */
  resil_dep_stats snap[NPHASES + 1];
  int64_t snap_ms[NPHASES + 1];
} side_state;

/* The timeline (brownout-timeline.tsv, drawn by scripts/demo-plot.gp): per
 * 100 ms of start time and per side, the outcomes and a coarse latency
 * histogram (10 buckets per decade from 10 us to 100 s), and per resil side
 * the breaker state and the limit in force, sampled by the main thread. */
#define TL_NS 100000000ull
#define TL_HB 71
typedef struct tl_cell {
  _Atomic uint32_t ok, failed, rejected;
  _Atomic uint32_t hist[TL_HB];
} tl_cell;

typedef struct transition {
  uint64_t at_ns;
  resil_breaker_state to;
  resil_trip_reason reason;
} transition;

typedef struct demo {
  options opt;
  const backend_ops *ops;
  uint64_t t0, phase_ns, interval_ns;
  _Atomic uint64_t end_ns; /* workers start no request after it */
  uint64_t shutdown_ns;    /* the dependencies hold no request past it */
  uint64_t phase_start[NPHASES + 1]; /* when each phase really began; [NPHASES]: the end */
  side_state side[NSIDES];
  transition log[MAX_TRANSITIONS];
  _Atomic unsigned nlog;
  resil_breaker_config bcfg; /* as used, for the header */
  uint32_t limit;
  uint64_t phase_len[NPHASES]; /* each phase's planned length */
  unsigned tl_n;               /* timeline buckets */
  tl_cell *tl;                 /* [tl_n][NSIDES] */
  int8_t *tl_breaker;          /* [tl_n][NSIDES]: state, -1 not sampled */
  uint16_t *tl_limit;          /* [tl_n][NSIDES] */
} demo;

/* One phase and side of the table. */
typedef struct row {
  uint64_t done, ok, failed, rejected, sent;
  uint64_t p50, p99, max;
  double rate;
} row;

/* ---- Helpers (brownout_report.c) ------------------------------------------ */

uint64_t xorshift(uint64_t *s);
double rand01(uint64_t *s); /* uniform in [0, 1) */
void sleep_until_ns(uint64_t at_ns); /* the monotonic instant (resil's clock) */
uint64_t min_u64(uint64_t a, uint64_t b);
const char *fmt_dur(char *buf, size_t n, uint64_t ns);    /* "1.2 s", "201 ms", "87 us" */
const char *fmt_count(char *buf, size_t n, uint64_t v);   /* "12,345" */
void cell_add_latency(cell *c, uint64_t ns);
uint64_t hist_quantile(const uint64_t *h, uint64_t n, double q);
int64_t wall_ms(void);

/* The transition log (written by whichever thread moves the breaker). */
void on_transition(void *ctx, const char *name, resil_breaker_state from, resil_breaker_state to,
                   resil_trip_reason reason);
unsigned count_trips(const demo *d, uint64_t from_ns, uint64_t to_ns);

/* After the table: the summary paragraph (and --summary's lines), the
 * exports (Prometheus, JSON, EMF) and the timeline. false: a file failed. */
void print_summary(const demo *d, row rows[NPHASES][NSIDES], bool tty);
void print_machine_summary(const demo *d, row rows[NPHASES][NSIDES]);
bool write_outputs(const demo *d);
void sample_timeline(demo *d, uint64_t now);

/* The command line: -1 to go on, else an exit status. */
int parse_args(int argc, char **argv, options *o);

/* --with-servers (brownout_servers.c): 0, or 1 on a run-time error. */
int run_servers_section(unsigned phase_s);

#endif
