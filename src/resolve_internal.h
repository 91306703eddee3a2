/* Test hooks of the resolver (src/resolve.c). Not installed. */
#ifndef RESIL_RESOLVE_INTERNAL_H
#define RESIL_RESOLVE_INTERNAL_H

#include <netdb.h>
#include <stdatomic.h>
#include <stdint.h>

#include "resil/resolve.h"

/* Bounds of the resolver's background work. */
#define RESIL_RESOLVE_MAX_THREADS 4 /* lookup threads alive at once */
#define RESIL_RESOLVE_MAX_QUEUED 64 /* lookups waiting for a thread */
#define RESIL_RESOLVE_CACHE_MAX 256 /* cached hosts */

/* The getaddrinfo() the resolver threads call. Whatever it returns in *res
 * is released with the system's freeaddrinfo(), so a replacement must get
 * its list from the real getaddrinfo(). */
typedef int (*resil__gai_fn)(const char *node, const char *service,
                             const struct addrinfo *hints, struct addrinfo **res);

/* Replace getaddrinfo (tests); NULL restores the real one. Thread-safe. */
void resil__resolve_set_gai(resil__gai_fn fn);

typedef struct resil__resolve_counters {
  uint64_t lookups;    /* getaddrinfo calls started */
  uint64_t cache_hits; /* answers served from the cache */
  unsigned threads;    /* lookup threads alive */
  unsigned in_flight;  /* lookups started or queued, not finished */
  unsigned waiting;    /* callers blocked waiting for a lookup */
  unsigned cached;     /* hosts in the cache (expired ones included) */
  uint64_t invalidated; /* resil_resolve_invalidate() calls */
} resil__resolve_counters;

/* A consistent snapshot of the counters above. Thread-safe. */
void resil__resolve_counters_get(resil__resolve_counters *out);

/* ---- Asynchronous use, for the several-address pool (src/endpoint.c) ---- */

/* Bumped by every resil_resolve_invalidate(), resil_resolve_flush(),
 * resil_resolve_set_ttl_ms() and resil_resolve_set_hosts_file(): a reader
 * that sees it change knows a cached answer may have gone. */
extern _Atomic uint64_t resil__resolve_epoch;

/* A lookup in flight, held by a caller of resil__resolve_begin(). */
typedef struct lookup resil__lookup;

/* resil_resolve() without waiting. A numeric host or a live cached answer:
 * RESIL_OK with out/count filled, *expires_ns when the answer stops being
 * fresh (UINT64_MAX for a numeric host) and *pending NULL. Otherwise the
 * lookup of host is started (or joined): RESIL_OK with *pending set, to be
 * passed to resil__resolve_poll() until it is done (or to
 * resil__resolve_abandon()). Errors as resil_resolve() (busy, memory...).
 * Thread-safe; never blocks on the network. */
resil_status resil__resolve_begin(const char *host, uint16_t port, resil_addr *out, size_t max,
                                  size_t *count, uint64_t *expires_ns, resil__lookup **pending,
                                  resil_err *err);

/* Whether lk is done; if it is, its answer is copied out as by
 * resil__resolve_begin() (or its error into *st and err) and lk is
 * released (do not use it again). Thread-safe; never blocks. */
bool resil__resolve_poll(resil__lookup *lk, uint16_t port, resil_addr *out, size_t max,
                         size_t *count, uint64_t *expires_ns, resil_status *st, resil_err *err);

/* Release lk without waiting for it (it finishes and fills the cache). */
void resil__resolve_abandon(resil__lookup *lk);

/* The cache TTL (resil_resolve_set_ttl_ms), ms. */
uint32_t resil__resolve_ttl_ms(void);

#endif
