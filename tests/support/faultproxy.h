/* faultproxy — an in-process loopback TCP proxy that injects faults.
 *
 * A test starts one proxy between the code under test and a real server on loopback
 * (Redis, PostgreSQL, the test HTTP server) and points the client at fp_port(). The proxy
 * forwards bytes both ways until the test switches it into a fault mode, which takes effect
 * at once for new connections and, where it makes sense, for connections already open.
 *
 * Shape: one background thread per proxy runs a poll() loop over the listening socket and
 * every proxied connection (at most FP_MAX_CONNS at a time; further clients wait in the
 * listen backlog). Nothing ever blocks that thread: delays and throttling are timers in the
 * loop, so a delayed connection never holds up another one. Each direction of a connection
 * buffers up to FP_BUF_CAP bytes (plus one read of 16 KiB at most); past that the proxy stops
 * reading from the sender, so
 * back-pressure reaches it as it would through a real slow hop.
 *
 * Safety: the proxy listens only on 127.0.0.1 and connects only to the upstream it was
 * started with, which must be a loopback address (127.0.0.0/8, ::1 or "localhost").
 *
 * Thread safety: every function may be called from any thread, concurrently, except that
 * fp_stop() must be the last call on a proxy. Linux only (uses SIOCOUTQ, POLLRDHUP and
 * re-listening on a shut-down listening socket).
 */
#ifndef RESIL_TEST_FAULTPROXY_H
#define RESIL_TEST_FAULTPROXY_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Most connections a proxy serves at once; more clients wait in the listen backlog. */
#define FP_MAX_CONNS 128
/* Bytes buffered per direction per connection at which the proxy stops reading. */
#define FP_BUF_CAP (256 * 1024)

typedef struct fp_proxy fp_proxy;

/* What the proxy does to traffic. `arg` is the second argument of fp_set_mode(). */
typedef enum fp_mode {
  /* Forward everything both ways, as fast as the sockets allow. Half-closes (FIN) are
   * forwarded; a reset from either side resets the other. arg is ignored. */
  FP_PASS = 0,
  /* Hold every chunk, in both directions, for arg milliseconds after the proxy read it, then
   * forward it; a FIN is delayed the same way. Order is kept. Applies to existing
   * connections, including chunks already buffered (their release time is "read time + the
   * current delay"). Other connections are not slowed. */
  FP_DELAY,
  /* Forward nothing in either direction and never answer: connections are accepted (and an
   * upstream connection is still made) but the proxy stops reading and writing, so a client
   * waits until its own timeout. Data sent meanwhile stays queued in the kernel and is
   * forwarded if the mode changes back. The only thing the proxy still watches is the
   * client hanging up (FIN/RST), which closes that proxied connection. arg is ignored. */
  FP_BLACKHOLE,
  /* Let arg more bytes through from server to client on each connection (counted from the
   * moment the mode is set for existing connections, from accept for new ones), then abort
   * both sides with RST (SO_LINGER 0). The proxy stops reading from both sides once the
   * budget is spent and waits (at most 2 s) until the client's kernel has taken those bytes
   * before it resets, so a client that reads gets exactly arg bytes, then ECONNRESET.
   * arg == 0 resets each connection at once (new ones right after the upstream connect). */
  FP_RESET_AFTER,
  /* On each connection, forward only the first half (len / 2 bytes, rounded down) of the next
   * chunk the server sends — one read() of up to 16 KiB, normally one reply — then close
   * cleanly: FIN to the client after those bytes, the upstream connection closed. The proxy
   * drains whatever the client still sends until the client closes (or 2 s pass), so the
   * client sees EOF rather than a reset. arg is ignored. */
  FP_CLOSE_MID_REPLY,
  /* Limit server→client to arg bytes per second per connection (token bucket with a burst of
   * 20 ms worth of bytes, at least 1 byte). Client→server is not limited. arg must be > 0
   * (0 is treated as 1). */
  FP_THROTTLE,
  /* Refuse new connections: the listening socket stops listening (it keeps its port), so a
   * connect() fails with ECONNREFUSED; clients that were waiting in the backlog are reset.
   * Connections already open are forwarded as in FP_PASS; use fp_kill_all() to drop them.
   * Leaving this mode listens again on the same port. arg is ignored. */
  FP_REFUSE,
} fp_mode;

/* Start a proxy to upstream_host:upstream_port. upstream_host is a numeric loopback address
 * ("127.0.0.1", any 127.x.y.z, "::1") or "localhost" (taken as 127.0.0.1). The proxy listens
 * on 127.0.0.1 at an ephemeral port (see fp_port()) in mode FP_PASS. The upstream is not
 * contacted until a client connects; if that connect fails, the client is closed (FIN).
 * Returns NULL with errno set on error: EINVAL for a bad port or an address that does not
 * parse, EPERM for a non-loopback upstream, or the error of the failing system call. */
fp_proxy *fp_start(const char *upstream_host, uint16_t upstream_port);

/* The port the proxy listens on (127.0.0.1), in host byte order. Never changes. */
uint16_t fp_port(const fp_proxy *p);

/* Switch the proxy to `mode` with argument `arg` (see fp_mode). Returns once the proxy
 * thread has applied the mode to every existing connection and to the listener, so the
 * caller can rely on it right away (e.g. a connect() after fp_set_mode(p, FP_REFUSE, 0)
 * is refused). An unknown mode is ignored. */
void fp_set_mode(fp_proxy *p, fp_mode mode, uint64_t arg);

/* The current mode; *arg (if non-NULL) receives its argument. */
fp_mode fp_get_mode(fp_proxy *p, uint64_t *arg);

/* Abort every current connection: RST to the client and to the upstream (SO_LINGER 0).
 * Returns once all are closed (fp_active() is then 0, barring a client that connected in
 * the meantime). The mode is unchanged. */
void fp_kill_all(fp_proxy *p);

/* Client connections accepted since fp_start(), including ones whose upstream connect
 * failed. */
unsigned fp_accepted(const fp_proxy *p);

/* Client connections currently open through the proxy (accepted and not yet closed by the
 * proxy). */
unsigned fp_active(const fp_proxy *p);

/* Wait up to timeout_ms for fp_active() to become exactly n. Returns true if it did.
 * Useful because the proxy notices a client's close asynchronously. */
bool fp_wait_active(const fp_proxy *p, unsigned n, int timeout_ms);

/* Total bytes the proxy has written to clients (server→client) and to the upstream
 * (client→server) since fp_start(). */
uint64_t fp_bytes_to_client(const fp_proxy *p);
uint64_t fp_bytes_to_server(const fp_proxy *p);

/* Stop the proxy: close the listener and every connection (plainly, not with RST), join
 * the thread and free everything. p may be NULL. p must not be used afterwards. */
void fp_stop(fp_proxy *p);

/* A short name for a mode ("pass", "delay", ...), for messages. */
const char *fp_mode_name(fp_mode mode);

#ifdef __cplusplus
}
#endif

#endif
