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

RESIL_END_DECLS
#endif
