/* resil: name resolution under a deadline, with a short-TTL cache.
 *
 * getaddrinfo() blocks with no timeout of its own, and neither hiredis nor
 * libpq bound it. resil_resolve() runs it on a small pool of resolver
 * threads and waits for the answer no longer than the deadline; a lookup
 * abandoned at its deadline finishes in the background and fills the cache.
 * Answers are cached for a few seconds (default 5 s) so that a failover's new
 * address is picked up quickly. Numeric addresses ("127.0.0.1", "::1")
 * never touch a thread. Adapters then connect to the numeric address.
 *
 * Thread safety: all functions are thread-safe.
 */
#ifndef RESIL_RESOLVE_H
#define RESIL_RESOLVE_H

#include <sys/socket.h>

#include "resil/deadline.h"

RESIL_BEGIN_DECLS

/* Longest numeric address text, with NUL ("ffff:...:255.255.255.255"). */
#define RESIL_ADDR_TEXT_MAX 64

typedef struct resil_addr {
  struct sockaddr_storage sa; /* port filled in */
  socklen_t len;
  int family;                    /* AF_INET or AF_INET6 */
  char text[RESIL_ADDR_TEXT_MAX]; /* numeric host, no port: "10.0.0.5" */
} resil_addr;

/* Resolve host (name or numeric) for a TCP connect to port, filling up to
 * max entries of out (IPv4 and IPv6, in getaddrinfo's order) and *count.
 * Waits no longer than deadline (an unset deadline is bounded by 5 s).
 * Errors: RESIL_E_INVALID (NULL/empty host, max 0), RESIL_E_TIMEOUT (no
 * answer by the deadline), RESIL_E_FAILURE (name not found; message has
 * gai_strerror's text and the host), RESIL_E_NOMEM, RESIL_E_SYSTEM. */
RESIL_API resil_status resil_resolve(const char *host, uint16_t port, resil_deadline deadline,
                                     resil_addr *out, size_t max, size_t *count, resil_err *err);

/* Set how long answers are cached (ms; 0 disables the cache). Default 5000. */
RESIL_API void resil_resolve_set_ttl_ms(uint32_t ttl_ms);

/* Drop every cached answer. */
RESIL_API void resil_resolve_flush(void);

/* Drop the cached answer for host (exactly as passed to resil_resolve), so
 * the next resil_resolve() of it looks it up afresh whatever its TTL. The
 * adapters call it when a connection to host shows a failover (PostgreSQL
 * 25006 / 57P01 / 57P02, Redis READONLY / MASTERDOWN, a reset or refused
 * connection after good ones): a cluster endpoint that moved by DNS is
 * followed at once, not after the TTL. A lookup already in flight is not
 * stopped and its answer is cached as usual. Returns whether an answer was
 * cached. Thread-safe; cheap (one mutex, a list walk). */
RESIL_API bool resil_resolve_invalidate(const char *host);

/* The environment variable naming a hosts-file override. */
#define RESIL_HOSTS_FILE_ENV "RESIL_HOSTS_FILE"

/* Use the file at path, in /etc/hosts format ("ADDRESS NAME [NAME...]",
 * '#' comments; names compared case-insensitively), before getaddrinfo():
 * a name listed there resolves to every address listed for it, in file
 * order; any other name goes to getaddrinfo() as before. The file is read
 * again at every lookup (a cache miss), so editing it (ideally by rename,
 * atomically) moves a name within the cache TTL, or at once after
 * resil_resolve_invalidate(). Answers are cached like DNS answers. A file
 * that cannot be read at lookup time fails the lookup (RESIL_E_FAILURE,
 * naming the file), never falls back to DNS silently. Unless this function
 * was called first, the path comes from the environment variable
 * RESIL_HOSTS_FILE at the first resil_resolve() of a name (the config
 * loader checks that file is readable). path NULL or "" turns the override
 * off. Flushes the cache. Errors: RESIL_E_INVALID (the file cannot be
 * opened now: the message names it; the setting is unchanged).
 * Thread-safe. For pinning names without DNS, and for tests that move a
 * name between loopback addresses. */
RESIL_API resil_status resil_resolve_set_hosts_file(const char *path, resil_err *err);

RESIL_END_DECLS
#endif
