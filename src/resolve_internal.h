/* Test hooks of the resolver (src/resolve.c). Not installed. */
#ifndef RESIL_RESOLVE_INTERNAL_H
#define RESIL_RESOLVE_INTERNAL_H

#include <netdb.h>
#include <stdint.h>

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

#endif
