/* Name resolution under a deadline, with a short-TTL cache (resil/resolve.h).
 *
 * Numeric hosts are parsed in the caller's thread with inet_pton. Names go
 * to a lookup: one per host in flight, shared by every caller asking for
 * that host meanwhile. A lookup runs getaddrinfo() on a detached thread; at
 * most RESIL_RESOLVE_MAX_THREADS run at once, the rest queue (at most
 * RESIL_RESOLVE_MAX_QUEUED) and a thread that finishes takes the next one.
 * Callers wait on the lookup's condvar no longer than their deadline; a
 * lookup everybody gave up on still finishes and fills the cache.
 *
 * A lookup is reference-counted (its thread or queue slot + each waiting
 * caller) and freed by whoever drops the last reference. Successful answers
 * are cached per host (port-less) for the TTL; failures are not cached.
 * Everything shared lives under one mutex; answers are copied out.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "resolve_internal.h"

#define HOST_MAX 255           /* longest DNS name */
#define UNSET_WAIT_MS 5000     /* bound on a wait with an unset deadline */
#define DEFAULT_TTL_MS 5000
#define MS 1000000ull

typedef struct lookup {
  char host[HOST_MAX + 1];
  unsigned refs;          /* thread or queue slot, plus waiting callers */
  bool done;
  resil_status st;        /* valid once done */
  char msg[RESIL_ERR_MSG_MAX];
  resil_addr *addrs;      /* port 0 */
  size_t n;
  pthread_cond_t cv;      /* broadcast when done */
  struct lookup *next_in_flight, *next_queued;
} lookup;

typedef struct cache_entry {
  char host[HOST_MAX + 1];
  uint64_t expires_ns;
  resil_addr *addrs; /* port 0 */
  size_t n;
  struct cache_entry *next;
} cache_entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static lookup *in_flight;              /* every unfinished lookup */
static lookup *queue_head, *queue_tail; /* waiting for a thread */
static unsigned n_queued, n_threads, n_in_flight, n_waiting, n_cached;
static cache_entry *cache;
static uint64_t n_lookups, n_hits;
static _Atomic uint32_t ttl_ms = DEFAULT_TTL_MS;
static _Atomic(resil__gai_fn) gai_hook;
/* The hosts-file override (RESIL_HOSTS_FILE or resil_resolve_set_hosts_file);
 * empty = none. Under mu. */
static char hosts_path[PATH_MAX];
static pthread_once_t hosts_env_once = PTHREAD_ONCE_INIT;
static uint64_t n_invalidated;
_Atomic uint64_t resil__resolve_epoch;

static void hosts_env_read(void);

/* ---- Addresses ----------------------------------------------------------- */

/* Fill a from a socket address (port left as given); false if not IP. */
static bool addr_from_sockaddr(resil_addr *a, const struct sockaddr *sa, socklen_t len) {
  const void *ip;
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
    ip = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
    ip = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
  else
    return false;
  if ((size_t)len > sizeof a->sa) return false;
  memset(a, 0, sizeof *a);
  memcpy(&a->sa, sa, (size_t)len);
  a->len = len;
  a->family = sa->sa_family;
  if (!inet_ntop(a->family, ip, a->text, sizeof a->text)) a->text[0] = '\0';
  return true;
}

static void set_port(resil_addr *a, uint16_t port) {
  if (a->family == AF_INET)
    ((struct sockaddr_in *)(void *)&a->sa)->sin_port = htons(port);
  else
    ((struct sockaddr_in6 *)(void *)&a->sa)->sin6_port = htons(port);
}

/* Copy up to max answers into out with port set. */
static size_t copy_out(const resil_addr *src, size_t n, uint16_t port, resil_addr *out,
                       size_t max) {
  if (n > max) n = max;
  for (size_t i = 0; i < n; i++) {
    out[i] = src[i];
    set_port(&out[i], port);
  }
  return n;
}

/* Parse a numeric IPv4/IPv6 host into *a; false if host is a name. */
static bool parse_numeric(const char *host, uint16_t port, resil_addr *a) {
  struct sockaddr_in v4 = {.sin_family = AF_INET};
  struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
  bool ok;
  if (inet_pton(AF_INET, host, &v4.sin_addr) == 1)
    ok = addr_from_sockaddr(a, (const struct sockaddr *)(const void *)&v4, sizeof v4);
  else if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1)
    ok = addr_from_sockaddr(a, (const struct sockaddr *)(const void *)&v6, sizeof v6);
  else
    return false;
  if (ok) set_port(a, port);
  return ok;
}

/* ---- Cache (under mu) ---------------------------------------------------- */

static void cache_entry_free(cache_entry *e) {
  free(e->addrs);
  free(e);
}

/* Unlink and free the entry *pp points to. */
static void cache_remove_locked(cache_entry **pp) {
  cache_entry *e = *pp;
  *pp = e->next;
  cache_entry_free(e);
  n_cached--;
}

/* Copy a live cached answer for host into out (and its expiry into
 * *expires if not NULL); false on a miss. */
static bool cache_get_locked(const char *host, uint16_t port, resil_addr *out, size_t max,
                             size_t *count, uint64_t *expires) {
  if (atomic_load(&ttl_ms) == 0) return false;
  uint64_t now = resil_now_ns();
  for (cache_entry **pp = &cache; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->host, host) != 0) continue;
    if (now >= (*pp)->expires_ns) {
      cache_remove_locked(pp);
      return false;
    }
    *count = copy_out((*pp)->addrs, (*pp)->n, port, out, max);
    if (expires) *expires = (*pp)->expires_ns;
    return true;
  }
  return false;
}

/* Make room for one entry: drop expired ones, then the one expiring first. */
static void cache_make_room_locked(uint64_t now) {
  for (cache_entry **pp = &cache; *pp;)
    if (now >= (*pp)->expires_ns) cache_remove_locked(pp); else pp = &(*pp)->next;
  if (n_cached < RESIL_RESOLVE_CACHE_MAX) return;
  cache_entry **oldest = &cache;
  for (cache_entry **pp = &cache; *pp; pp = &(*pp)->next)
    if ((*pp)->expires_ns < (*oldest)->expires_ns) oldest = pp;
  cache_remove_locked(oldest);
}

/* Cache a finished lookup's answer (replacing any older one). Best effort. */
static void cache_put_locked(const lookup *lk) {
  uint32_t ttl = atomic_load(&ttl_ms);
  if (ttl == 0 || lk->st != RESIL_OK) return;
  for (cache_entry **pp = &cache; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->host, lk->host) == 0) {
      cache_remove_locked(pp);
      break;
    }
  uint64_t now = resil_now_ns();
  if (n_cached >= RESIL_RESOLVE_CACHE_MAX) cache_make_room_locked(now);
  cache_entry *e = calloc(1, sizeof *e);
  if (!e) return;
  e->addrs = malloc(lk->n * sizeof *e->addrs);
  if (!e->addrs) {
    free(e);
    return;
  }
  memcpy(e->addrs, lk->addrs, lk->n * sizeof *e->addrs);
  e->n = lk->n;
  memcpy(e->host, lk->host, sizeof e->host);
  e->expires_ns = now + ttl * MS;
  e->next = cache;
  cache = e;
  n_cached++;
}

void resil_resolve_set_ttl_ms(uint32_t ms) {
  atomic_store(&ttl_ms, ms);
  atomic_fetch_add(&resil__resolve_epoch, 1);
  if (ms == 0) resil_resolve_flush();
}

uint32_t resil__resolve_ttl_ms(void) { return atomic_load(&ttl_ms); }

void resil_resolve_flush(void) {
  pthread_mutex_lock(&mu);
  while (cache) cache_remove_locked(&cache);
  atomic_fetch_add(&resil__resolve_epoch, 1);
  pthread_mutex_unlock(&mu);
}

bool resil_resolve_invalidate(const char *host) {
  if (!host) return false;
  bool found = false;
  pthread_mutex_lock(&mu);
  for (cache_entry **pp = &cache; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->host, host) == 0) {
      cache_remove_locked(pp);
      found = true;
      break;
    }
  n_invalidated++;
  atomic_fetch_add(&resil__resolve_epoch, 1);
  pthread_mutex_unlock(&mu);
  return found;
}

resil_status resil_resolve_set_hosts_file(const char *path, resil_err *err) {
  pthread_once(&hosts_env_once, hosts_env_read); /* the environment never overrides this */
  if (path && *path) {
    if (strlen(path) >= sizeof hosts_path)
      return resil_err_set(err, RESIL_E_INVALID, "hosts file '%.60s...': path too long", path);
    FILE *f = fopen(path, "re");
    if (!f)
      return resil_err_set(err, RESIL_E_INVALID, "hosts file '%s': %s", path, strerror(errno));
    fclose(f);
  }
  pthread_mutex_lock(&mu);
  if (path && *path) resil__strlcpy(hosts_path, path, sizeof hosts_path);
  else hosts_path[0] = '\0';
  while (cache) cache_remove_locked(&cache); /* answers from the old source */
  atomic_fetch_add(&resil__resolve_epoch, 1);
  pthread_mutex_unlock(&mu);
  return RESIL_OK;
}

/* ---- Lookups ------------------------------------------------------------- */

static void lookup_free(lookup *lk) {
  pthread_cond_destroy(&lk->cv);
  free(lk->addrs);
  free(lk);
}

/* Drop one reference; the last one frees. */
static void unref_locked(lookup *lk) {
  if (--lk->refs == 0) lookup_free(lk);
}

/* ---- Hosts-file override ------------------------------------------------ */

static void hosts_env_read(void) {
  const char *v = getenv(RESIL_HOSTS_FILE_ENV);
  pthread_mutex_lock(&mu);
  if (v && *v && !hosts_path[0]) resil__strlcpy(hosts_path, v, sizeof hosts_path);
  pthread_mutex_unlock(&mu);
}

/* Look host up in the hosts file at path (format of /etc/hosts: an address,
 * then names; '#' starts a comment; names compare case-insensitively).
 * 1 found (lk->addrs filled, lk->st set), 0 not listed, -1 error (lk->st
 * and lk->msg set). */
static int hosts_file_lookup(lookup *lk, const char *path) {
  resil_err tmp;
  FILE *f = fopen(path, "re");
  if (!f) {
    int e = errno;
    lk->st = resil_err_set(&tmp, RESIL_E_FAILURE, "resolve '%s': hosts file '%s' (%s): %s",
                           lk->host, path, RESIL_HOSTS_FILE_ENV, strerror(e));
    memcpy(lk->msg, tmp.msg, sizeof lk->msg);
    return -1;
  }
  char line[1024];
  size_t cap = 0;
  while (fgets(line, sizeof line, f)) {
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *save = NULL, *addr = strtok_r(line, " \t\r\n", &save);
    if (!addr) continue;
    bool listed = false;
    for (char *name; (name = strtok_r(NULL, " \t\r\n", &save)) != NULL;)
      if (strcasecmp(name, lk->host) == 0) listed = true;
    if (!listed) continue;
    resil_addr a;
    if (!parse_numeric(addr, 0, &a)) continue; /* not an address: ignored, as glibc does */
    if (lk->n == cap) {
      size_t ncap = cap ? cap * 2 : 4;
      resil_addr *na = realloc(lk->addrs, ncap * sizeof *na);
      if (!na) break;
      lk->addrs = na;
      cap = ncap;
    }
    lk->addrs[lk->n++] = a;
  }
  fclose(f);
  if (lk->n == 0) return 0;
  lk->st = RESIL_OK;
  return 1;
}

/* Turn getaddrinfo's answer into lk's result. No lock needed: only the
 * lookup's thread touches these fields until `done` is published. */
static void lookup_run(lookup *lk) {
  char path[PATH_MAX];
  pthread_mutex_lock(&mu);
  memcpy(path, hosts_path, sizeof path);
  pthread_mutex_unlock(&mu);
  if (path[0] && hosts_file_lookup(lk, path) != 0) return;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  resil__gai_fn gai = atomic_load(&gai_hook);
  errno = 0;
  int rc = gai ? gai(lk->host, NULL, &hints, &res) : getaddrinfo(lk->host, NULL, &hints, &res);
  if (rc != 0) {
    int e = errno;
    /* glibc reports a lookup it could not even start for lack of file
     * descriptors (it could not open /etc/hosts or a DNS socket) as "Name or
     * service not known": that is this process's limit, not the name's. */
    bool local = e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
    lk->st = rc == EAI_MEMORY                ? RESIL_E_NOMEM
             : rc == EAI_SYSTEM || local ? RESIL_E_SYSTEM
                                             : RESIL_E_FAILURE;
    resil_err tmp;
    if (local)
      resil_err_set(&tmp, lk->st, "resolve '%s': %s (%s: a local resource limit)", lk->host,
                    rc == EAI_SYSTEM ? "lookup failed" : gai_strerror(rc), strerror(e));
    else
      resil_err_set(&tmp, lk->st, "resolve '%s': %s", lk->host,
                    rc == EAI_SYSTEM ? strerror(e) : gai_strerror(rc));
    memcpy(lk->msg, tmp.msg, sizeof lk->msg);
    return;
  }
  size_t n = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) n++;
  lk->addrs = n ? calloc(n, sizeof *lk->addrs) : NULL;
  for (struct addrinfo *ai = res; ai && lk->addrs; ai = ai->ai_next)
    if (addr_from_sockaddr(&lk->addrs[lk->n], ai->ai_addr, ai->ai_addrlen)) lk->n++;
  freeaddrinfo(res);
  resil_err tmp;
  if (n && !lk->addrs) {
    lk->st = resil_err_set(&tmp, RESIL_E_NOMEM, "resolve '%s': out of memory", lk->host);
  } else if (lk->n == 0) {
    lk->st = resil_err_set(&tmp, RESIL_E_FAILURE, "resolve '%s': no IPv4 or IPv6 address",
                           lk->host);
  } else {
    lk->st = RESIL_OK;
    return;
  }
  memcpy(lk->msg, tmp.msg, sizeof lk->msg);
}

/* Publish lk's result: cache it, wake its callers, drop the thread's
 * reference. */
static void lookup_finish_locked(lookup *lk) {
  for (lookup **pp = &in_flight; *pp; pp = &(*pp)->next_in_flight)
    if (*pp == lk) {
      *pp = lk->next_in_flight;
      break;
    }
  n_in_flight--;
  cache_put_locked(lk);
  lk->done = true;
  pthread_cond_broadcast(&lk->cv);
  unref_locked(lk);
}

static lookup *dequeue_locked(void) {
  lookup *lk = queue_head;
  if (!lk) return NULL;
  queue_head = lk->next_queued;
  if (!queue_head) queue_tail = NULL;
  n_queued--;
  return lk;
}

/* A lookup thread: run lookups until none is queued. */
static void *lookup_thread(void *arg) {
  lookup *lk = arg;
  while (lk) {
    lookup_run(lk);
    pthread_mutex_lock(&mu);
    lookup_finish_locked(lk);
    lk = dequeue_locked();
    if (lk)
      n_lookups++;
    else
      n_threads--;
    pthread_mutex_unlock(&mu);
  }
  return NULL;
}

static void enqueue_locked(lookup *lk) {
  if (queue_tail) queue_tail->next_queued = lk; else queue_head = lk;
  queue_tail = lk;
  n_queued++;
}

/* Start a detached lookup thread for lk; 0 or an errno value. */
static int spawn(lookup *lk) {
  pthread_attr_t attr;
  pthread_t t;
  int rc = pthread_attr_init(&attr);
  if (rc) return rc;
  rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (rc == 0) rc = pthread_create(&t, &attr, lookup_thread, lk);
  pthread_attr_destroy(&attr);
  return rc;
}

/* Create a lookup for host, start or queue it. On success *out has one
 * reference for its thread/queue slot. */
static resil_status lookup_start_locked(const char *host, lookup **out, resil_err *err) {
  bool thread_free = n_threads < RESIL_RESOLVE_MAX_THREADS;
  if (!thread_free && n_queued >= RESIL_RESOLVE_MAX_QUEUED)
    return resil_err_set(err, RESIL_E_TIMEOUT, "resolve '%s': resolver busy (%u lookups queued)",
                         host, n_queued);
  lookup *lk = calloc(1, sizeof *lk);
  if (!lk) return resil_err_set(err, RESIL_E_NOMEM, "resolve '%s': out of memory", host);
  if (resil__cond_init(&lk->cv)) {
    free(lk);
    return resil_err_set(err, RESIL_E_SYSTEM, "resolve '%s': cannot initialise a condvar", host);
  }
  resil__strlcpy(lk->host, host, sizeof lk->host);
  lk->refs = 1;
  int rc = thread_free ? spawn(lk) : EAGAIN;
  if (rc == 0) {
    n_threads++;
    n_lookups++;
  } else if (n_threads > 0) {
    enqueue_locked(lk); /* a running thread will take it */
  } else {
    lookup_free(lk);
    return resil_err_set(err, RESIL_E_SYSTEM, "resolve '%s': cannot start a thread: %s", host,
                         strerror(rc));
  }
  lk->next_in_flight = in_flight;
  in_flight = lk;
  n_in_flight++;
  *out = lk;
  return RESIL_OK;
}

static lookup *find_in_flight_locked(const char *host) {
  for (lookup *lk = in_flight; lk; lk = lk->next_in_flight)
    if (strcmp(lk->host, host) == 0) return lk;
  return NULL;
}

resil_status resil_resolve(const char *host, uint16_t port, resil_deadline deadline,
                           resil_addr *out, size_t max, size_t *count, resil_err *err) {
  if (count) *count = 0;
  if (!host || !*host) return resil_err_set(err, RESIL_E_INVALID, "resolve: host is empty");
  if (!out || !count || max == 0)
    return resil_err_set(err, RESIL_E_INVALID, "resolve '%.*s': no room for an answer",
                         HOST_MAX, host);
  if (strlen(host) > HOST_MAX)
    return resil_err_set(err, RESIL_E_INVALID, "resolve '%.40s...': longer than %d characters",
                         host, HOST_MAX);
  if (parse_numeric(host, port, out)) {
    *count = 1;
    return RESIL_OK;
  }
  pthread_once(&hosts_env_once, hosts_env_read);

  pthread_mutex_lock(&mu);
  if (cache_get_locked(host, port, out, max, count, NULL)) {
    n_hits++;
    pthread_mutex_unlock(&mu);
    return RESIL_OK;
  }
  if (resil_deadline_expired(deadline)) {
    pthread_mutex_unlock(&mu);
    return resil_err_set(err, RESIL_E_TIMEOUT, "resolve '%s': deadline already passed", host);
  }
  lookup *lk = find_in_flight_locked(host);
  if (!lk) {
    resil_status st = lookup_start_locked(host, &lk, err);
    if (st != RESIL_OK) {
      pthread_mutex_unlock(&mu);
      return st;
    }
  }
  lk->refs++;
  n_waiting++;
  resil_deadline until =
      resil_deadline_is_set(deadline) ? deadline : resil_deadline_in_ms(UNSET_WAIT_MS);
  uint64_t t0 = resil_now_ns();
  while (!lk->done)
    if (resil__cond_wait_until(&lk->cv, &mu, until) == ETIMEDOUT) break;
  n_waiting--;
  resil_status st;
  if (!lk->done) {
    uint64_t now = resil_now_ns();
    st = resil_err_set(err, RESIL_E_TIMEOUT, "resolve '%s': no answer within %llu ms", host,
                       (unsigned long long)((now > t0 ? now - t0 : 0) / MS));
  } else if (lk->st == RESIL_OK) {
    *count = copy_out(lk->addrs, lk->n, port, out, max);
    st = RESIL_OK;
  } else {
    st = resil_err_set(err, lk->st, "%s", lk->msg);
  }
  unref_locked(lk);
  pthread_mutex_unlock(&mu);
  return st;
}

/* ---- Without waiting (resolve_internal.h) ---------------------------------- */

resil_status resil__resolve_begin(const char *host, uint16_t port, resil_addr *out, size_t max,
                                  size_t *count, uint64_t *expires_ns, resil__lookup **pending,
                                  resil_err *err) {
  *pending = NULL;
  *count = 0;
  if (!host || !*host || strlen(host) > HOST_MAX || max == 0)
    return resil_err_set(err, RESIL_E_INVALID, "resolve: bad host or no room");
  if (parse_numeric(host, port, out)) {
    *count = 1;
    *expires_ns = UINT64_MAX;
    return RESIL_OK;
  }
  pthread_once(&hosts_env_once, hosts_env_read);
  pthread_mutex_lock(&mu);
  resil_status st = RESIL_OK;
  if (cache_get_locked(host, port, out, max, count, expires_ns)) {
    n_hits++;
  } else {
    lookup *lk = find_in_flight_locked(host);
    if (!lk) st = lookup_start_locked(host, &lk, err);
    if (st == RESIL_OK) {
      lk->refs++;
      *pending = lk;
    }
  }
  pthread_mutex_unlock(&mu);
  return st;
}

bool resil__resolve_poll(resil__lookup *lk, uint16_t port, resil_addr *out, size_t max,
                         size_t *count, uint64_t *expires_ns, resil_status *st, resil_err *err) {
  pthread_mutex_lock(&mu);
  bool done = lk->done;
  if (done) {
    *st = lk->st;
    if (lk->st == RESIL_OK) {
      *count = copy_out(lk->addrs, lk->n, port, out, max);
      *expires_ns = resil_now_ns() + (uint64_t)atomic_load(&ttl_ms) * MS;
    } else {
      *count = 0;
      resil_err_set(err, lk->st, "%s", lk->msg);
    }
    unref_locked(lk);
  }
  pthread_mutex_unlock(&mu);
  return done;
}

void resil__resolve_abandon(resil__lookup *lk) {
  if (!lk) return;
  pthread_mutex_lock(&mu);
  unref_locked(lk);
  pthread_mutex_unlock(&mu);
}

/* ---- Test hooks ---------------------------------------------------------- */

void resil__resolve_set_gai(resil__gai_fn fn) { atomic_store(&gai_hook, fn); }

void resil__resolve_counters_get(resil__resolve_counters *out) {
  pthread_mutex_lock(&mu);
  out->lookups = n_lookups;
  out->cache_hits = n_hits;
  out->threads = n_threads;
  out->in_flight = n_in_flight;
  out->waiting = n_waiting;
  out->cached = n_cached;
  out->invalidated = n_invalidated;
  pthread_mutex_unlock(&mu);
}
