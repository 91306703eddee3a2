/* resil: an optional embedded admin HTTP endpoint.
 *
 * Off unless resil_admin_start() is called. One thread serves every
 * connection with poll() on non-blocking sockets, so a slow client cannot
 * block another; each connection must deliver its whole request within
 * read_timeout_ms of being accepted (a slowloris client is answered 408 and
 * closed), and at most max_connections requests are served at once (up to
 * as many connections again are answered 503 and closed; beyond that they
 * are closed at once). Every response closes the connection.
 *
 * Routes (GET; HEAD gets the same status and headers without a body):
 *   /metrics  200, Prometheus text 0.0.4 (resil_export_prometheus),
 *             Content-Type: text/plain; version=0.0.4; charset=utf-8
 *   /health   200 {"status":"ok"}                       (resil_health)
 *   /ready    200 {"ready":true} or 503 {"ready":false,"reason":"..."}
 *                                                       (resil_ready)
 *   /config   200 with the body from config_json_fn, 404 if none is set,
 *             500 if it fails
 * Errors: 400 malformed request line or header (or Transfer-Encoding),
 * 404 unknown path, 405 other methods (with Allow: GET, HEAD),
 * 408 request not complete within read_timeout_ms, 413 a declared body
 * (Content-Length) that would exceed max_request_bytes, 431 a request line
 * plus headers longer than max_request_bytes, 503 too many connections.
 * A query string is ignored.
 *
 * Bounds. Per connection: max_request_bytes of buffer, allocated once at
 * accept (nothing else is allocated per request but the response); the
 * request within read_timeout_ms of the accept, however slowly it trickles
 * in; the response within read_timeout_ms of being ready, however little
 * the client reads; then at most min(read_timeout_ms, 1 s) and 1 MiB of
 * lingering. Headers have no separate count limit: they are checked in one
 * pass over the buffer, with no per-header state or allocation, so
 * max_request_bytes bounds their number too (a minimal "X:" line takes 4
 * bytes) and more of them than fit is a 431. Connections: see above; a
 * flood of connects is accepted in batches, between which timers and the
 * other connections are served.
 *
 * Services with their own HTTP server can serve the same bodies with
 * resil_export_prometheus(), resil_health() and resil_ready().
 */
#ifndef RESIL_ADMIN_H
#define RESIL_ADMIN_H

#include "resil/status.h"

RESIL_BEGIN_DECLS

/* Produce the /config body (e.g. the effective configuration as JSON with
 * secrets redacted): on RESIL_OK *out is a NUL-terminated malloc'd string
 * that the admin endpoint free()s. Called on the admin thread; must not
 * block for long. */
typedef resil_status (*resil_admin_config_fn)(void *ctx, char **out);

typedef struct resil_admin_config {
  const char *bind_address;   /* default "127.0.0.1": a numeric IPv4 or IPv6
                                 address; NULL or "" means the default.
                                 "0.0.0.0" / "::" only if set explicitly. */
  uint16_t port;              /* default 0: an ephemeral port (see resil_admin_port) */
  uint32_t max_connections;   /* default 16; 1..4096 */
  uint32_t max_request_bytes; /* default 8192: request line + headers (+ any
                                 declared body); 256..1048576 */
  uint32_t read_timeout_ms;   /* default 2000: to receive a whole request, and
                                 again to send the response; 10..600000 */
  resil_admin_config_fn config_json_fn; /* default NULL: /config is 404 */
  void *config_ctx;           /* passed to config_json_fn */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[56];
} resil_admin_config;

/* Fill cfg with the defaults above. Thread-safe. */
RESIL_API void resil_admin_config_init(resil_admin_config *cfg);

/* Check every field, reporting all problems at once ("admin.port: ...").
 * RESIL_OK or RESIL_E_INVALID. Thread-safe. */
RESIL_API resil_status resil_admin_config_validate(const resil_admin_config *cfg,
                                                   resil_err *err);

/* Bind, listen and start the admin thread. The config's strings are copied.
 * Errors: RESIL_E_INVALID (bad config, or already running), RESIL_E_SYSTEM
 * (socket/bind/listen failed, e.g. the port is taken; errno text in the
 * message), RESIL_E_NOMEM. Thread-safe; one endpoint per process. */
RESIL_API resil_status resil_admin_start(const resil_admin_config *cfg, resil_err *err);

/* The port the endpoint listens on (useful with port 0), or 0 when not
 * running. Thread-safe. */
RESIL_API uint16_t resil_admin_port(void);

/* Stop the endpoint: wake and join its thread, close the listening socket
 * and every connection (responses not yet sent are dropped). No-op if not
 * running. Thread-safe; must not be called concurrently with
 * resil_admin_start(). */
RESIL_API void resil_admin_stop(void);

RESIL_END_DECLS
#endif
