/* resil-http: an HTTP dependency over libcurl, with deadlines on every
 * transfer, a bounded pool of reused connections and a status-aware breaker.
 *
 *   resil_http_config cfg;
 *   resil_http_config_init(&cfg, "orders-api");
 *   cfg.base_url = "http://orders.internal:8080/v1";
 *   cfg.pool.max_size = 8;                    // at most 8 connections open
 *   resil_http *h = resil_http_new(&cfg, &err);
 *
 *   resil_http_response resp;
 *   st = resil_http_get(h, resil_deadline_in_ms(300), "/orders/42", &resp, &err);
 *   if (st == RESIL_OK) use(resp.status, resp.body, resp.body_len);
 *   resil_http_response_free(&resp);          // always, whatever st is
 *
 * Connections. The client keeps a resil_pool of CURL easy handles, at most
 * pool.max_size of them; each handle keeps at most one connection open
 * (CURLOPT_MAXCONNECTS = 1) and reuses it from call to call, so no more than
 * pool.max_size connections to the dependency are ever open. A caller that
 * finds every handle busy waits in the pool's bounded queue (pool.max_waiters,
 * pool.acquire_timeout_ms, never past its deadline): RESIL_E_POOL_TIMEOUT. A
 * handle whose transfer failed or timed out part-way is closed
 * (RESIL_POOL_BROKEN), so a half-read connection is never reused.
 *
 * Time. Every attempt runs under the earlier of the caller's deadline and
 * dep.timeout_ms from its start (see resil_dep_call()). The transfer gets
 * CURLOPT_CONNECTTIMEOUT_MS = min(connect_timeout_ms, remaining) - name
 * lookup, TCP and TLS handshakes included - and CURLOPT_TIMEOUT_MS =
 * min(request_timeout_ms, remaining) for the whole transfer; neither is ever
 * 0 (curl's "no limit"): an attempt with no time left is not started
 * (RESIL_E_DEADLINE: no work with the dependency had begun; a deadline that
 * runs out in the lookup, the TCP or TLS handshake or the transfer is
 * RESIL_E_TIMEOUT). Name lookups use curl's threaded resolver, which obeys
 * those timeouts, or resil_resolve() (see resolve_with_resil), which is used
 * anyway when libcurl was built without it. Transfers set CURLOPT_NOSIGNAL,
 * and a low-speed guard aborts a transfer that moves fewer than
 * low_speed_bytes_per_s for low_speed_time_s (RESIL_E_TIMEOUT). The time
 * left is sent to the callee in deadline_header (grpc-timeout format, e.g.
 * "grpc-timeout: 298m") so that it can give up early too.
 *
 * Outcomes (what the call returns and what the breaker sees):
 *   2xx, 3xx (redirects are not followed)           RESIL_OK
 *   429, or 503 with a Retry-After header           RESIL_E_OVERLOAD; a retry
 *                       waits at least Retry-After (delta-seconds or HTTP-date)
 *   a status in failure_statuses (default 500, 502, 503, 504)   RESIL_E_FAILURE
 *   any other 4xx or 5xx (404, 400, 409, 501...)    RESIL_E_CALLER: never trips
 *                                                   the breaker, never retried
 *   refused, reset, cut body, TLS handshake failure RESIL_E_FAILURE (a failed
 *                       certificate check is not retried)
 *   connect or transfer timeout, low-speed abort    RESIL_E_TIMEOUT
 *   body larger than max_response_bytes             RESIL_E_FAILURE, not
 *                       retried; the message names the limit
 *   a header line over curl's 100 KiB limit         RESIL_E_FAILURE, not
 *                       retried: "response header too large" (curl 7.88
 *                       reports it as CURLE_OUT_OF_MEMORY; the adapter tells
 *                       it from a real out-of-memory)
 *   no fd for the socket (EMFILE, ENFILE, ENOBUFS)  RESIL_E_SYSTEM: a local
 *                       limit, never counted by the breaker
 *   out of memory here                              RESIL_E_NOMEM (ignored)
 *   unreadable ca_file                              RESIL_E_INVALID (ignored
 *                       by the breaker: it is our configuration)
 * 500 is in the default failure set because on the services this is meant
 * for, a 500 means the callee broke, not that the request was wrong; remove
 * it from failure_statuses for a callee that answers 500 to bad input.
 *
 * Retries go through resil_dep_call(): only for idempotent methods (GET,
 * HEAD, PUT, DELETE, OPTIONS, TRACE) or requests flagged
 * RESIL_HTTP_IDEMPOTENT, and never for RESIL_HTTP_NO_RETRY; within the
 * dependency's attempt count, retry budget and the deadline.
 *
 * Errors. err->msg names the dependency, the method and URL (without its
 * query, which may carry secrets), the phase the attempt failed in (dns,
 * connect, tls, send, receive) and curl's own error text, e.g.
 *   "http 'orders-api': GET http://127.0.0.1:9/x: connect: Failed to
 *    connect to 127.0.0.1 port 9 after 0 ms: Couldn't connect to server
 *    (curl 7)".
 * The response records the phase and the curl code too.
 *
 * Thread safety: a resil_http may be used by any number of threads at once;
 * each call borrows its own easy handle. Configuration is fixed at _new.
 * The library calls curl_global_init() once, in the first resil_http_new(),
 * under a lock; call it yourself earlier if other code uses libcurl too.
 */
#ifndef RESIL_HTTP_H
#define RESIL_HTTP_H

#include "resil/dep.h"
#include "resil/pool.h"

RESIL_BEGIN_DECLS

/* One header: name and value, without the ": " or line end. */
typedef struct resil_http_header {
  const char *name;
  const char *value;
} resil_http_header;

/* Most statuses in failure_statuses. */
#define RESIL_HTTP_MAX_FAILURE_STATUSES 16

typedef struct resil_http_config {
  /* The dependency: name (required), timeout_ms (each attempt's cap and the
   * call's deadline when the caller gives none), breaker, concurrency limit,
   * retries. Defaults from resil_dep_config_init(). */
  resil_dep_config dep;
  /* The pool of easy handles: max_size is the most connections open to the
   * dependency (default 10); max_waiters and acquire_timeout_ms bound the
   * wait for one; max_lifetime_ms recycles a handle (and its connection and
   * DNS cache) after that long. name is ignored (the dependency's is used);
   * connect_timeout_ms, min_idle and the validate_* fields have no effect on
   * the network (creating an easy handle does no I/O). */
  resil_pool_config pool;
  /* Required: "http://host[:port][/prefix]" or "https://...". No query,
   * fragment or user info. Request paths are joined to it with one '/'. */
  const char *base_url;
  /* Sent with every request, before the request's own headers; copied. */
  const resil_http_header *headers;
  size_t nheaders;
  uint32_t connect_timeout_ms;  /* default 500; 1..600000: DNS + TCP + TLS */
  uint32_t request_timeout_ms;  /* default 1000; 1..3600000: the whole transfer */
  bool tls_verify;              /* default true: verify the peer and host name */
  const char *ca_file;          /* default NULL (system CAs): PEM bundle to trust; copied */
  size_t max_response_bytes;    /* default 8 MiB; 1..1 GiB: a larger body is an error */
  uint32_t low_speed_bytes_per_s; /* default 1; 0 disables the low-speed guard */
  uint32_t low_speed_time_s;    /* default 10; 1..3600 when the guard is on */
  /* Statuses that count as dependency failures (default 500, 502, 503, 504;
   * 503 with Retry-After is overload regardless). Each 400..599. */
  uint16_t failure_statuses[RESIL_HTTP_MAX_FAILURE_STATUSES];
  size_t nfailure_statuses;
  /* Header carrying the remaining deadline downstream, in grpc-timeout
   * format; default "grpc-timeout"; "" or NULL sends none; copied. */
  const char *deadline_header; /* at most 64 characters */
  /* Default false: host names are looked up by curl's threaded resolver,
   * bounded by the connect timeout (a lookup still running then is left to
   * finish on its own thread: CURLOPT_QUICK_EXIT; before curl 7.87 this
   * field is forced true), cached per handle (60 s). true: looked
   * up with resil_resolve() (bounded the same way, cached process-wide for
   * its short TTL, so a failover's new address is seen within seconds) and
   * handed to curl with CURLOPT_RESOLVE; lookups left running by timed-out
   * calls then share resil's few resolver threads instead of one curl
   * thread each, which matters when a DNS server stops answering. Always on
   * when libcurl was built without the threaded resolver. No effect for a
   * numeric host. */
  bool resolve_with_resil;
  /* The recovery probe (see resil_dep_set_probe()): while the breaker is
   * open, a GET of this path (joined to base_url like a request's; NULL or
   * "" = base_url itself) on a fresh connection with the default headers,
   * within dep.probe_timeout_ms. Any response other than 5xx or 429 counts
   * as healthy (a 404 still proves the server answers); the body is not
   * read. Default NULL; copied. */
  const char *probe_path;
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[256];
} resil_http_config;

/* Fill cfg with safe defaults (see each field) and set the dependency's name
 * (may be NULL; set cfg->dep.name later). Call first, then change what you
 * need. Thread-safe. */
RESIL_API void resil_http_config_init(resil_http_config *cfg, const char *name);

/* Check every field - the dependency's and the pool's included - and report
 * all problems at once in err->msg, each named by its field ("orders-api:
 * base_url: \"ftp://x\": scheme must be http or https; orders-api:
 * pool.max_size: 0 is outside 1..10000"). RESIL_OK or RESIL_E_INVALID.
 * Thread-safe. */
RESIL_API resil_status resil_http_config_validate(const resil_http_config *cfg, resil_err *err);

/* The most memory a client with this config can hold at once, in bytes,
 * for sizing a task: the dependency object (resil_dep_config_memory_bound())
 * + pool.max_size x 512 KiB (easy handle, connection and TLS buffers, header
 * scratch space) + min(pool.max_size, limit.max_concurrent) x 4 x
 * max_response_bytes (a body and its buffer's growth, header lines and
 * their copy). Responses the caller keeps after a call are the caller's.
 * resil-config prints it. Thread-safe, pure. */
RESIL_API uint64_t resil_http_config_memory_bound(const resil_http_config *cfg);

typedef struct resil_http resil_http;

/* Create a client: validates cfg, creates its dependency (registered under
 * cfg->dep.name) and its pool, and attaches the pool to the dependency so
 * that its gauges are exported with it. Opens no connection. Errors:
 * RESIL_E_INVALID (bad config, or the name is taken), RESIL_E_NOMEM,
 * RESIL_E_SYSTEM (curl_global_init failed).
 * Thread-safe. */
RESIL_API resil_http *resil_http_new(const resil_http_config *cfg, resil_err *err);

/* Drain the pool (closing every connection), remove the dependency from the
 * registry and free everything. No call may be in progress. NULL is a
 * no-op. */
RESIL_API void resil_http_free(resil_http *h);

/* The client's dependency (for stats, draining, breaker overrides) and its
 * pool. Valid until resil_http_free(). Thread-safe. */
RESIL_API resil_dep *resil_http_dep(resil_http *h);
RESIL_API resil_pool *resil_http_pool(resil_http *h);

/* The "http" configuration kind (config.h), so that RESIL_DEPS=name:http
 * with RESIL_DEP_<NAME>_BASE_URL, _CONNECT_TIMEOUT_MS, _REQUEST_TIMEOUT_MS,
 * _TLS_VERIFY, _CA_FILE, _MAX_RESPONSE_BYTES, _LOW_SPEED_BYTES_PER_S,
 * _LOW_SPEED_TIME_S, _DEADLINE_HEADER, _RESOLVE_WITH_RESIL, _PROBE_PATH (plus the core's
 * and pool's keys) configure a client and resil_service builds it. It is
 * registered automatically when libresil-http is loaded, also in a static
 * link of a program that calls any resil_http_* function; a program that
 * only names the kind in RESIL_DEPS calls resil_http_register_kind() first.
 * Default headers and
 * the failure status set are set in C only. Thread-safe. */
RESIL_API const struct resil_config_kind *resil_http_config_kind(void);
RESIL_API resil_status resil_http_register_kind(resil_err *err);

/* Request flags (resil_http_request.flags). */
#define RESIL_HTTP_IDEMPOTENT RESIL_CALL_IDEMPOTENT /* retry even a POST/PATCH */
#define RESIL_HTTP_NO_RETRY 0x100u                  /* never retry, even a GET */

typedef struct resil_http_request {
  const char *method;      /* "GET" when NULL; any token ("PATCH", "PURGE") */
  const char *path;        /* joined to base_url; NULL or "" = base_url itself.
                              A "." or ".." segment, also percent-encoded (%2e,
                              %2E) or next to an encoded separator (%2f, %5c, \),
                              is RESIL_E_INVALID: it could leave base_url's path */
  const char *query;       /* already encoded, without '?'; NULL = none */
  const resil_http_header *headers; /* after the defaults; same name = sent twice */
  size_t nheaders;
  const void *body;        /* sent as is, with Content-Length; NULL = none */
  size_t body_len;
  unsigned flags;          /* RESIL_HTTP_IDEMPOTENT, RESIL_HTTP_NO_RETRY */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[68];
} resil_http_request;

/* Where an attempt failed. */
typedef enum resil_http_phase {
  RESIL_HTTP_PHASE_NONE = 0, /* it did not fail in the transport (or never ran) */
  RESIL_HTTP_PHASE_DNS,
  RESIL_HTTP_PHASE_CONNECT,
  RESIL_HTTP_PHASE_TLS,
  RESIL_HTTP_PHASE_SEND,
  RESIL_HTTP_PHASE_RECEIVE,
  RESIL_HTTP_PHASE_COUNT_
} resil_http_phase;

/* "none", "dns", "connect", "tls", "send", "receive". Never NULL. */
RESIL_API const char *resil_http_phase_name(resil_http_phase p);

/* The last attempt's response, owned by the caller. Always initialised by a
 * call (even one that failed before sending) and released with
 * resil_http_response_free(). When the transfer itself failed (no
 * connection, timeout, cut body, oversize body) status is 0 and there are
 * no headers and no body: nothing half-received is handed out. */
typedef struct resil_http_response {
  long status;                /* HTTP status; 0 when no response arrived */
  resil_http_header *headers; /* the final response's headers, in order */
  size_t nheaders;
  char *body;                 /* body_len bytes plus a NUL; NULL when empty */
  size_t body_len;
  uint32_t attempts;          /* attempts made (0 if rejected before any) */
  uint32_t retry_after_ms;    /* Retry-After of the last response, 0 if none */
  resil_http_phase phase;     /* where the last attempt failed, if in transport */
  int curl_code;              /* CURLcode of the last transfer (0 = CURLE_OK) */
  bool reused;                /* the last attempt reused an open connection */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[71];
} resil_http_response;

/* Perform req through the dependency: admission (breaker, concurrency,
 * deadline), a pooled handle, the transfer, classification (see the top of
 * this file) and retries. deadline may be RESIL_DEADLINE_UNSET (then
 * dep.timeout_ms bounds the whole call). *resp is overwritten (not freed
 * first) and must be released with resil_http_response_free() whatever the
 * result; it holds the last attempt's response, if any, also when the
 * status is not RESIL_OK (a 404 comes back as RESIL_E_CALLER with
 * resp->status 404 and its body). Returns RESIL_OK, an outcome
 * (RESIL_E_FAILURE, _TIMEOUT, _OVERLOAD, _CALLER), a local rejection
 * (RESIL_E_BREAKER_OPEN, _CONCURRENCY_FULL, _QUEUE_TIMEOUT, _POOL_TIMEOUT,
 * _DEADLINE, _DRAINING), RESIL_E_INVALID (bad request: NULL argument,
 * header with CR/LF, a dot segment in the path), RESIL_E_NOMEM or RESIL_E_CLOSED. err (optional) gets
 * the sentence. Blocks no longer than the deadline (by at most a
 * millisecond, curl's timer resolution). Thread-safe. */
RESIL_API resil_status resil_http_request_do(resil_http *h, resil_deadline deadline,
                                             const resil_http_request *req,
                                             resil_http_response *resp, resil_err *err);

/* resil_http_request_do() with a GET of path (which may carry "?query").
 * Thread-safe. */
RESIL_API resil_status resil_http_get(resil_http *h, resil_deadline deadline, const char *path,
                                      resil_http_response *resp, resil_err *err);

/* The value of the first response header named name (ASCII
 * case-insensitive), or NULL. Valid until resil_http_response_free(). */
RESIL_API const char *resil_http_response_header(const resil_http_response *resp,
                                                 const char *name);

/* Free what a call put in resp and zero it. Safe on a zeroed response and
 * twice in a row. NULL is a no-op. */
RESIL_API void resil_http_response_free(resil_http_response *resp);

RESIL_END_DECLS
#endif
