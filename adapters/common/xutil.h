/* Helpers shared by the adapters (as curl's lib/curlx): compiled into a
 * static library linked into each adapter and into the tests that include an
 * adapter's source; never installed, never exported (the project builds with
 * -fvisibility=hidden). Not part of resil's API. */
#ifndef RESIL_ADAPTER_XUTIL_H
#define RESIL_ADAPTER_XUTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resil/adapter.h"
#include "resil/deadline.h"
#include "resil/dep.h"
#include "resil/endpoint.h"
#include "resil/pool.h"

/* Point fd at /dev/null, so that whatever a driver sends while freeing a
 * connection inherited from the parent of a fork goes nowhere (and a read
 * sees end of file): the parent's session on the shared socket is
 * untouched. False if that could not be done (the caller then leaks the
 * driver handle rather than risk ending the parent's session). */
bool resil_x_silence_fd(int fd);

/* errno values that mean this process ran out of something (descriptors,
 * buffers, memory): its own limit, not a dependency's failure. */
bool resil_x_local_errno(int e);

/* A malloc'd copy of s, or NULL (s NULL, or out of memory). */
char *resil_x_strdup(const char *s);

/* Wait for events (poll(2) flags) on fd until d (always set), or the
 * process's drain cutoff if earlier (resil_drain_bound; re-checked every
 * RESIL_DRAIN_CHECK_MS while no drain has started, so a long wait that
 * began before a drain notices it). Returns the revents (> 0), 0 when the
 * bound passed, -1 on a poll error or a negative fd (errno set). */
int resil_x_wait_fd(int fd, short events, resil_deadline d);

/* Add one to a statistics counter (relaxed: counters order nothing). */
static inline void resil_x_bump(_Atomic uint64_t *c) {
  atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

/* What an adapter's _new() wires after creating its dependency. */
typedef struct resil_x_client {
  const char *label;            /* "<name>" as messages start, e.g. "http 'payments'" */
  const char *name;             /* the dependency's: the pool's name when it has none */
  resil_pool_config pool;       /* the pool's configuration */
  uint32_t connect_timeout_ms;  /* the pool's connect timeout, unless 0 */
  resil_pool_connector connector;
  uint64_t memory_bound;        /* resil_dep_set_memory_bound() */
  resil_probe_fn probe;         /* the recovery probe, with connector.ctx */
  /* Several addresses (resil/endpoint.h): with hosts set, the pool is
   * resil_pool_new_endpoints() over them; else with dns_host set,
   * resil_pool_new_endpoints_dns() over the addresses dns_host resolves to
   * (port dns_port); both connect with connect_to. */
  const char *hosts;
  uint32_t default_port;
  const char *dns_host;
  uint32_t dns_port;
  const resil_outlier_config *outlier;
  resil_endpoint_connect_fn connect_to;
} resil_x_client;

/* The end of every adapter's _new(): a pool of c's connections attached to
 * dep with the memory bound, then the recovery probe. RESIL_OK with *pool
 * set; otherwise err says why ("<label>: ...") and *pool holds what was
 * made (the adapter's free() unwinds it). */
resil_status resil_x_start_pool(const resil_x_client *c, resil_dep *dep, resil_pool **pool,
                                resil_err *err);

/* An adapter's client object: size bytes zeroed, or NULL with err
 * "<name>: out of memory". */
void *resil_x_client_alloc(size_t size, const char *name, resil_err *err);

/* The start of every adapter's resil_<name>_get_stats(): out (size bytes,
 * if not NULL) zeroed; true when there is a client to read (out and
 * client not NULL). */
bool resil_x_stats_begin(void *out, size_t size, const void *client);

/* The start of every adapter's resil_<name>_config_init(): cfg (size
 * bytes) zeroed, then its dep and pool members (inside cfg) at their
 * defaults. */
void resil_x_config_init(void *cfg, size_t size, resil_dep_config *dep, resil_pool_config *pool,
                         const char *name);

/* An adapter's resil_<name>_config_memory_bound(): what the dependency
 * holds itself, plus conn_bytes for each of the pool's pool_max
 * connections, plus per_call bytes for each call that can hold a
 * connection at once (the smaller of pool_max and the concurrency limit). */
uint64_t resil_x_memory_bound(const resil_dep_config *dep, uint64_t pool_max,
                              uint64_t conn_bytes, uint64_t per_call);

/* In an adapter's main source file: pull its configuration kind
 * (<name>_kind.c) into every program that uses the adapter, also from a
 * static archive, where the linker takes only the members a program
 * references: the kind's constructor registers it, so RESIL_DEPS=x:<name>
 * works without calling resil_<name>_register_kind(). */
#define RESIL_X_PULL_KIND(NAME)                                          \
  __attribute__((used)) static resil_status (*const pull_kind_)(resil_err *) = \
      resil_##NAME##_register_kind

/* In <name>_kind.c, after its key table `keys`: the kind NAME##_kind over
 * resil_<name>_config and the adapter's functions (adapter.h,
 * RESIL_DEFINE_CONFIG_KIND_MEM), its accessor resil_<name>_config_kind(),
 * resil_<name>_register_kind(), and a constructor registering it when the
 * library is loaded. */
#define RESIL_X_ADAPTER_KIND(NAME)                                                              \
  RESIL_DEFINE_CONFIG_KIND_MEM(NAME, resil_##NAME##_config, resil_##NAME##_config_init,        \
                               resil_##NAME##_config_validate, resil_##NAME##_new,             \
                               resil_##NAME##_free, resil_##NAME##_dep, keys,                  \
                               resil_##NAME##_config_memory_bound);                            \
  const resil_config_kind *resil_##NAME##_config_kind(void) { return &NAME##_kind; }            \
  resil_status resil_##NAME##_register_kind(resil_err *err) {                                   \
    return resil_config_register_kind(&NAME##_kind, err);                                       \
  }                                                                                             \
  __attribute__((constructor)) static void register_at_load(void) {                            \
    resil_##NAME##_register_kind(NULL);                                                         \
  }

#endif
