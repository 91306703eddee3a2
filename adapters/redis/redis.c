/* resil-redis: the Redis adapter. See include/resil/redis.h.
 *
 * Shape: a resil_dep + a resil_pool whose handles are non-blocking hiredis
 * contexts. Each public call formats its command(s) once into one buffer,
 * then runs resil_dep_call() with an attempt that borrows a connection,
 * sends the buffer with send(MSG_NOSIGNAL | MSG_DONTWAIT) and reads with
 * recv() + redisReaderFeed / redisGetReplyFromReader until every reply is
 * parsed or the attempt's deadline passes. A blocking recv() is bounded by
 * SO_RCVTIMEO (a short slice) and used only while more than a slice
 * remains; the last slice waits in poll() for exactly the time left.
 *
 * Only the core's public API is used.
 */
#include "resil/redis.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <strings.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "reply.h"
#include "resil/adapter.h"
#include "resil/lifecycle.h"
#include "resil/resolve.h"
#include "xutil.h"

#define MAX_ADDRS 8
#define MAX_PIPELINE 100000u
#define READ_CHUNK (16 * 1024) /* bytes read per recv() */
/* Connected sockets are blocking with SO_RCVTIMEO = RECV_SLICE_MS: a read
 * blocks in recv() itself (no poll() first, so a command costs the same two
 * system calls as hiredis's blocking API) only while more than a slice
 * remains before the deadline; recv() then returns by the slice's end at the
 * latest and the deadline is re-checked. In the last slice the read waits in
 * poll() for exactly the time left. Sends never block (MSG_DONTWAIT). */
#define RECV_SLICE_MS 10
/* One connection besides its replies: the hiredis context and reader (its
 * buffer is released after a large reply, see reply.h) and the socket
 * buffers the process owns. */
#define REDIS_CONN_BYTES (64u * 1024u)

struct resil_redis {
  resil_dep *dep;
  resil_pool *pool;
  const char *name; /* the dependency's (owned by it) */
  char *host, *unix_path, *username, *password;
  uint32_t port, database, connect_timeout_ms, command_timeout_ms;
  size_t max_reply_bytes;
  resil_password_file *pwfile; /* password_file, or NULL */
  resil_password_fn pw_cb;
  void *pw_ctx;
  _Atomic uint64_t connects_ok, failovers, read_only, replays, auth_failures;
};

/* ---- Config ------------------------------------------------------------ */

RESIL_X_PULL_KIND(redis); /* see xutil.h */

void resil_redis_config_init(resil_redis_config *cfg, const char *name) {
  if (!cfg) return;
  resil_x_config_init(cfg, sizeof *cfg, &cfg->dep, &cfg->pool, name);
  cfg->host = "127.0.0.1";
  cfg->port = 6379;
  cfg->connect_timeout_ms = 500;
  cfg->pool.connect_timeout_ms = cfg->connect_timeout_ms;
  cfg->command_timeout_ms = 0;
  cfg->max_reply_bytes = RESIL_REDIS_DEFAULT_MAX_REPLY_BYTES;
  cfg->password_file = NULL;
  cfg->password_file_check_ms = RESIL_PASSWORD_FILE_CHECK_MS;
  cfg->password_cb = NULL;
  cfg->password_ctx = NULL;
  cfg->hosts = NULL;
  resil_outlier_config_init(&cfg->outlier);
}

resil_status resil_redis_config_validate(const resil_redis_config *cfg, resil_err *err) {
  if (!cfg) return resil_err_set(err, RESIL_E_INVALID, "redis config is NULL");
  const char *name = cfg->dep.name ? cfg->dep.name : "(unnamed)";
  char prefix[96];
  snprintf(prefix, sizeof prefix, "%s: ", name); /* the pool adds "pool." */
  resil_problems p;
  resil_problems_init(&p, prefix);
  resil_err sub;
  if (resil_dep_config_validate(&cfg->dep, &sub) != RESIL_OK) resil_problems_merge(&p, sub.msg);
  /* The pool's connect timeout is ours: validate what it will be. */
  resil_pool_config pc = cfg->pool;
  pc.connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 1;
  if (!pc.name) pc.name = cfg->dep.name;
  if (resil_pool_config_validate(&pc, prefix, &sub) != RESIL_OK)
    resil_problems_merge(&p, sub.msg);
  if (cfg->unix_path) {
    if (!cfg->unix_path[0]) resil_problem(&p, "unix_path", "is empty");
    else if (strlen(cfg->unix_path) >= 108)
      resil_problem(&p, "unix_path", "longer than 107 bytes");
  } else {
    if (!cfg->host || !cfg->host[0])
      resil_problem(&p, "host", "is required (or set unix_path)");
    else if (strlen(cfg->host) > 253)
      resil_problem(&p, "host", "longer than 253 characters");
    resil_problems_check_range(&p, "port", cfg->port, 1, 65535);
  }
  if (cfg->username && !cfg->password && !cfg->password_file && !cfg->password_cb)
    resil_problem(&p, "username", "set without password");
  if (cfg->password && !cfg->password[0])
    resil_problem(&p, "password", "is empty (use NULL for no AUTH)");
  if (cfg->password_file) {
    if (cfg->password || cfg->password_cb)
      resil_problem(&p, "password_file", "set together with %s: use one",
                    cfg->password ? "password" : "password_cb");
    resil_err fe;
    if (resil_password_file_check(cfg->password_file, &fe) != RESIL_OK)
      resil_problem(&p, "password_file", "%s", fe.msg);
  } else if (cfg->password_cb && cfg->password) {
    resil_problem(&p, "password_cb", "set together with password: use one");
  }
  resil_problems_check_range(&p, "password_file_check_ms", cfg->password_file_check_ms, 100,
                             3600000);
  if (cfg->hosts) { /* several addresses: resil/endpoint.h */
    resil_err he;
    if (cfg->unix_path) resil_problem(&p, "hosts", "set together with unix_path: use one");
    else if (resil_endpoints_parse(cfg->hosts, cfg->port, NULL, 0, NULL, &he) != RESIL_OK)
      resil_problem(&p, "hosts", "%s", he.msg);
    if (cfg->endpoints_from_dns) { /* named both ways: the loader names each variable */
      resil_problem(&p, "hosts", "set together with endpoints_from_dns: use one");
      resil_problem(&p, "endpoints_from_dns", "set together with hosts: use one");
    }
  }
  if (cfg->endpoints_from_dns && cfg->unix_path)
    resil_problem(&p, "endpoints_from_dns", "set together with unix_path: use one");
  if (cfg->hosts || cfg->endpoints_from_dns) {
    resil_err he;
    if (resil_outlier_config_validate(&cfg->outlier, prefix, &he) != RESIL_OK)
      resil_problems_merge(&p, he.msg);
  }
  resil_problems_check_range(&p, "database", cfg->database, 0, 100000);
  resil_problems_check_range(&p, "connect_timeout_ms", cfg->connect_timeout_ms, 1, 600000);
  if (cfg->command_timeout_ms)
    resil_problems_check_range(&p, "command_timeout_ms", cfg->command_timeout_ms, 1, 600000);
  resil_problems_check_range(&p, "max_reply_bytes", cfg->max_reply_bytes,
                             RESIL_REDIS_MIN_MAX_REPLY_BYTES, RESIL_REDIS_MAX_MAX_REPLY_BYTES);
  return resil_problems_finish(&p, err);
}

/* ---- Error helpers ----------------------------------------------------- */

static uint64_t ms_since(uint64_t start_ns) {
  uint64_t now = resil_now_ns();
  return now > start_ns ? (now - start_ns + 500000) / 1000000 : 0;
}

/* resil_x_wait_fd (deadline and drain cutoff bounded) in this file's
 * convention: 1 ready (revents in *got), 0 timed out, -1 error (errno). */
static int wait_fd(int fd, short events, resil_deadline dl, short *got) {
  int r = resil_x_wait_fd(fd, events, dl);
  if (r <= 0) return r;
  *got = (short)r;
  return 1;
}

/* ---- The command driver ------------------------------------------------- */

/* Read once into c's reader under the reply bound b: blocking (bounded by
 * SO_RCVTIMEO) or not. 1 = bytes fed, 0 = nothing yet (EAGAIN/EINTR), -1 =
 * error/EOF (c->err set) or refused by the bound (b->refused set). */
static int read_some(redisContext *c, resil_redis_bound *b, bool block) {
  char buf[READ_CHUNK];
  ssize_t n = recv(c->fd, buf, sizeof buf, block ? 0 : MSG_DONTWAIT);
  if (n > 0) {
    if (resil_redis_bound_feed(b, buf, (size_t)n) != REDIS_OK) {
      if (b->refused) return -1;
      c->err = c->reader->err;
      snprintf(c->errstr, sizeof c->errstr, "%s", c->reader->errstr);
      return -1;
    }
    return 1;
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
  c->err = n == 0 ? REDIS_ERR_EOF : REDIS_ERR_IO;
  snprintf(c->errstr, sizeof c->errstr, "%s",
           n == 0 ? "Server closed the connection" : strerror(errno));
  return -1;
}

/* The dependency whose memory gauge (resil_dep_memory_add) the command
 * driver reports to on this thread: set by attempt() around drive(); NULL
 * (handshakes, probes) reports nothing. */
static _Thread_local resil_dep *mem_dep;

/* Report what the bound holds now to mem_dep's gauge; *reported is what
 * was reported before. */
static void mem_report(const resil_redis_bound *b, size_t *reported) {
  if (!mem_dep) return;
  size_t held = resil_redis_bound_held(b);
  resil_dep_memory_add(mem_dep, (int64_t)held - (int64_t)*reported);
  *reported = held;
}

/* Send buf (already formatted) on c and read n replies into out[], all before
 * dl, the n replies together holding at most max_bytes (see reply.h). On any
 * failure every reply read so far is freed, out[] is NULLed, err gets
 * "<name>: <phase>: ..." and the caller must destroy c. timeout_why names
 * what set dl ("deadline", "command_timeout_ms"). Every read loop re-checks
 * dl after each read: a server streaming without pause cannot hold the
 * call. */
static resil_status drive(redisContext *c, const char *name, const char *buf, size_t len,
                          size_t n, redisReply **out, size_t max_bytes, resil_deadline dl,
                          const char *timeout_why, const char *phase_send,
                          const char *phase_recv, resil_err *err) {
  uint64_t start = resil_now_ns();
  const char *phase = phase_send;
  size_t got = 0;
  resil_status st = RESIL_OK;
  resil_redis_bound b;
  size_t reported = 0; /* bytes held, as last told to mem_dep's gauge */
  resil_redis_bound_begin(&b, c->reader, max_bytes);
  for (size_t i = 0; i < n; i++) out[i] = NULL;
  if (c->err) {
    st = resil_err_set(err, RESIL_E_FAILURE, "%s: %s: connection in error state: %s", name,
                       phase, c->errstr);
    goto fail;
  }
  if (resil_deadline_expired(dl)) goto timeout;
  /* Send straight from buf with MSG_NOSIGNAL: hiredis's redisBufferWrite
   * uses write(), which raises SIGPIPE on a connection the server reset and
   * would kill a service that did not ignore it. Read meanwhile, so a long
   * pipeline cannot deadlock against a server whose replies fill our
   * receive buffer. */
  size_t off = 0;
  while (off < len) {
    ssize_t w = send(c->fd, buf + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      off += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      st = resil_err_set(err, RESIL_E_FAILURE, "%s: %s: %s", name, phase,
                         w == 0 ? "send returned 0" : strerror(errno));
      goto fail;
    }
    short ev = 0;
    int pw = wait_fd(c->fd, POLLOUT | POLLIN, dl, &ev);
    if (pw == 0) goto timeout;
    if (pw < 0) {
      st = resil_err_set(err, RESIL_E_FAILURE, "%s: %s: poll: %s", name, phase, strerror(errno));
      goto fail;
    }
    if ((ev & (POLLIN | POLLHUP | POLLERR)) && !(ev & POLLOUT)) {
      if (read_some(c, &b, false) < 0) goto io_error;
    }
  }
  phase = phase_recv;
  while (got < n) {
    void *reply = NULL;
    if (resil_redis_bound_get(&b, &reply) != REDIS_OK) {
      if (!b.refused) {
        c->err = c->reader->err;
        snprintf(c->errstr, sizeof c->errstr, "%s", c->reader->errstr);
      }
      goto io_error;
    }
    if (reply) {
      out[got++] = reply;
      continue;
    }
    int64_t left = resil_deadline_remaining_ns(resil_drain_bound(dl)); /* 10 ms slices */
    if (left <= 0) goto timeout;
    int rd;
    if (left > (int64_t)(RECV_SLICE_MS + 1) * 1000000) {
      rd = read_some(c, &b, true); /* returns within RECV_SLICE_MS */
    } else {
      short ev = 0;
      int w = wait_fd(c->fd, POLLIN, dl, &ev);
      if (w == 0) goto timeout;
      if (w < 0) {
        st = resil_err_set(err, RESIL_E_FAILURE, "%s: %s: poll: %s", name, phase,
                           strerror(errno));
        goto fail;
      }
      rd = read_some(c, &b, false);
    }
    /* Parse what came and re-check the deadline before reading more, even
     * when more is waiting: a server that never pauses cannot keep us. */
    if (rd < 0) goto io_error;
    if (rd > 0) mem_report(&b, &reported);
  }
  if (mem_dep) resil_dep_memory_add(mem_dep, -(int64_t)reported); /* now the caller's */
  resil_redis_bound_end(&b);
  return RESIL_OK;

io_error:
  if (b.refused) {
    st = resil_redis_bound_error(&b, name, phase, err);
    goto fail;
  }
  st = resil_err_set(err, c->err == REDIS_ERR_OOM ? RESIL_E_NOMEM : RESIL_E_FAILURE,
                     "%s: %s: %s", name, phase,
                     c->errstr[0] ? c->errstr : "I/O error");
  goto fail;
timeout:
  st = resil_err_set(err, RESIL_E_TIMEOUT, "%s: %s: timed out after %llu ms (%s)", name, phase,
                     (unsigned long long)ms_since(start), timeout_why);
fail:
  if (mem_dep) resil_dep_memory_add(mem_dep, -(int64_t)reported);
  resil_redis_bound_end(&b);
  for (size_t i = 0; i < got; i++) {
    freeReplyObject(out[i]);
    out[i] = NULL;
  }
  return st;
}

/* ---- Memory bound -------------------------------------------------------- */

uint64_t resil_redis_config_memory_bound(const resil_redis_config *cfg) {
  if (!cfg) return 0;
  /* A call holds at most max_reply_bytes (reply objects + unparsed bytes,
   * see reply.h), plus, for an instant, the copy hiredis makes of a bulk
   * string out of its buffer: 2x. */
  return resil_x_memory_bound(&cfg->dep, cfg->pool.max_size, REDIS_CONN_BYTES,
                              2 * (uint64_t)cfg->max_reply_bytes);
}

/* ---- Reply classification ---------------------------------------------- */

static bool word_is(const char *s, size_t len, const char *w) {
  size_t wl = strlen(w);
  return len >= wl && memcmp(s, w, wl) == 0 && (len == wl || s[wl] == ' ');
}

resil_status resil_redis_classify_reply(const redisReply *r) {
  if (!r) return RESIL_E_INVALID;
  if (r->type != REDIS_REPLY_ERROR) return RESIL_OK;
  const char *s = r->str ? r->str : "";
  size_t len = r->str ? r->len : 0;
  if (word_is(s, len, "LOADING") || word_is(s, len, "BUSY") || word_is(s, len, "TRYAGAIN"))
    return RESIL_E_OVERLOAD;
  if (word_is(s, len, "MASTERDOWN") || word_is(s, len, "OOM") || word_is(s, len, "READONLY") ||
      word_is(s, len, "CLUSTERDOWN"))
    return RESIL_E_FAILURE;
  return RESIL_E_CALLER;
}

/* READONLY / MASTERDOWN: this endpoint is no longer (or not yet) the primary.
 * Drop the connection so the next connect re-resolves the name. */
static bool reply_moves_endpoint(const redisReply *r) {
  if (!r || r->type != REDIS_REPLY_ERROR || !r->str) return false;
  return word_is(r->str, r->len, "READONLY") || word_is(r->str, r->len, "MASTERDOWN");
}

/* ---- Failover ------------------------------------------------------------ */

/* The endpoint moved: resolve the name afresh at the next connect (first:
 * see adapters/pg/pg.c) and end the pool's generation gen. */
static void failover(resil_redis *r, uint64_t gen) {
  if (r->host) resil_resolve_invalidate(r->host);
  if (r->pool && resil_pool_evict(r->pool, gen)) resil_x_bump(&r->failovers);
}

/* An AUTH error reply that means the password is wrong (rotated). */
static bool auth_refused(const char *msg) {
  return strstr(msg, "WRONGPASS") || strstr(msg, "NOAUTH") || strstr(msg, "invalid password");
}

/* The password for a new connection into buf: the fixed one, the
 * callback's or the file's. NULL (err set) if none could be had. */
static const char *get_password(resil_redis *r, unsigned flags, char *buf, resil_err *err) {
  if (r->pw_cb) {
    buf[0] = '\0';
    if (r->pw_cb(r->pw_ctx, flags, buf, RESIL_PASSWORD_MAX) != 0 ||
        !memchr(buf, '\0', RESIL_PASSWORD_MAX) || !buf[0]) {
      explicit_bzero(buf, RESIL_PASSWORD_MAX);
      resil_err_set(err, RESIL_E_FAILURE, "%s: auth: password callback failed", r->name);
      return NULL;
    }
    return buf;
  }
  if (r->pwfile) {
    if (resil_password_file_get(r->pwfile, flags, buf, RESIL_PASSWORD_MAX, NULL, err) !=
        RESIL_OK)
      return NULL;
    return buf;
  }
  return r->password;
}

/* ---- Connector ---------------------------------------------------------- */

/* What the last connect on this thread said, so the attempt that triggered
 * it can report the connector's own message (not the pool's wrapping) and
 * refuse to retry a refused AUTH/SELECT. */
static _Thread_local struct {
  bool set;
  bool no_retry;
  resil_err err;
} last_connect;

static resil_status connect_fail(resil_status st, bool no_retry, resil_err *err) {
  last_connect.set = true;
  last_connect.no_retry = no_retry;
  if (err) last_connect.err = *err;
  else resil_err_set(&last_connect.err, st, "%s", resil_strerror(st));
  return st;
}

/* Run a handshake command (AUTH, SELECT) on a fresh context. */
static resil_status handshake(resil_redis *r, redisContext *c, int argc, const char **argv,
                              const char *phase, resil_deadline dl, const char *why,
                              resil_err *err) {
  char *cmd = NULL;
  int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
  if (len < 0) return resil_err_set(err, RESIL_E_NOMEM, "%s: %s: out of memory", r->name, phase);
  redisReply *reply = NULL;
  resil_status st =
      drive(c, r->name, cmd, (size_t)len, 1, &reply, r->max_reply_bytes, dl, why, phase, phase, err);
  redisFreeCommand(cmd);
  if (st != RESIL_OK) return st;
  if (reply->type == REDIS_REPLY_ERROR) {
    st = resil_err_set(err, RESIL_E_FAILURE, "%s: %s: %.*s", r->name, phase, (int)reply->len,
                       reply->str);
    freeReplyObject(reply);
    return connect_fail(st, true, err);
  }
  freeReplyObject(reply);
  return RESIL_OK;
}

/* Wait for a non-blocking connect to finish. sock_errno is errno right
 * after hiredis tried to create and connect the socket. */
static resil_status finish_connect(resil_redis *r, redisContext *c, const char *where,
                                   int sock_errno, resil_deadline dl, const char *why,
                                   uint64_t start, resil_err *err) {
  if (c->err) {
    /* hiredis 0.14 reports a failed socket() as "Can't create socket: <strerror>"
     * (TCP) or "<strerror>" (Unix): no fd left is this process's limit, not a
     * dependency failure. */
    if (resil_x_local_errno(sock_errno) && strstr(c->errstr, strerror(sock_errno)))
      return resil_err_set(err, RESIL_E_SYSTEM,
                           "%s: connect to %s: cannot create a socket: %s (a local resource "
                           "limit; not counted against the dependency)",
                           r->name, where, strerror(sock_errno));
    return resil_err_set(err, RESIL_E_FAILURE, "%s: connect to %s: %s", r->name, where,
                         c->errstr);
  }
  short ev = 0;
  int w = wait_fd(c->fd, POLLOUT, dl, &ev);
  if (w == 0)
    return resil_err_set(err, RESIL_E_TIMEOUT, "%s: connect to %s: timed out after %llu ms (%s)",
                         r->name, where, (unsigned long long)ms_since(start), why);
  if (w < 0)
    return resil_err_set(err, RESIL_E_FAILURE, "%s: connect to %s: poll: %s", r->name, where,
                         strerror(errno));
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = errno;
  if (soerr)
    return resil_err_set(err, RESIL_E_FAILURE, "%s: connect to %s: %s", r->name, where,
                         strerror(soerr));
  return RESIL_OK;
}

/* The address a connect of a several-address pool goes to (rconnect_to),
 * NULL for the configured host. */
static _Thread_local const resil_endpoint *cur_ep;

/* Give c a reader whose reply functions check the bound of each call
 * (reply.h); false when out of memory. */
static bool use_bounded_reader(redisContext *c) {
  redisReader *rd = resil_redis_reader_new();
  if (!rd) return false;
  redisReaderFree(c->reader);
  c->reader = rd;
  return true;
}

static resil_status rconnect(void *ctx, resil_deadline deadline, void **conn, resil_err *err) {
  resil_redis *r = ctx;
  const char *host = cur_ep ? cur_ep->host : r->host;
  uint32_t port = cur_ep ? cur_ep->port : r->port;
  uint64_t start = resil_now_ns();
  resil_deadline dl = resil_deadline_bound(deadline, r->connect_timeout_ms);
  /* Which bound is binding, for the message. The pool already bounds
   * deadline by the same connect timeout (a few us ago), so a deadline
   * within 2 ms of it is the connect timeout's. */
  int64_t rem = resil_deadline_remaining_ns(deadline);
  const char *why = rem + 2000000 < (int64_t)r->connect_timeout_ms * 1000000
                        ? "deadline"
                        : "connect_timeout_ms";
  redisContext *c = NULL;
  resil_status st = RESIL_E_FAILURE;
  last_connect.set = false;
  uint64_t gen = r->pool ? resil_pool_generation(r->pool) : 0;
  bool had_good = atomic_load_explicit(&r->connects_ok, memory_order_relaxed) > 0;
  if (r->unix_path) {
    errno = 0;
    c = redisConnectUnixNonBlock(r->unix_path);
    int sock_errno = errno;
    if (!c) return connect_fail(resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", r->name),
                                false, err);
    st = finish_connect(r, c, r->unix_path, sock_errno, dl, why, start, err);
  } else {
    resil_addr addrs[MAX_ADDRS];
    size_t count = 0;
    resil_err rerr;
    rerr.msg[0] = '\0';
    st = resil_resolve(host, (uint16_t)port, dl, addrs, MAX_ADDRS, &count, &rerr);
    if (st != RESIL_OK) {
      if (st != RESIL_E_TIMEOUT && st != RESIL_E_NOMEM && st != RESIL_E_SYSTEM)
        st = RESIL_E_FAILURE;
      return connect_fail(resil_err_set(err, st, "%s: resolve %s: %s", r->name, host,
                                        rerr.msg[0] ? rerr.msg : resil_strerror(st)),
                          false, err);
    }
    if (count == 0)
      return connect_fail(resil_err_set(err, RESIL_E_FAILURE, "%s: resolve %s: no address",
                                        r->name, host),
                          false, err);
    for (size_t i = 0; i < count; i++) {
      char where[RESIL_ADDR_TEXT_MAX + 16];
      if (addrs[i].family == AF_INET6)
        snprintf(where, sizeof where, "[%s]:%u", addrs[i].text, (unsigned)port);
      else
        snprintf(where, sizeof where, "%s:%u", addrs[i].text, (unsigned)port);
      errno = 0;
      c = redisConnectNonBlock(addrs[i].text, (int)port);
      int sock_errno = errno;
      if (!c) {
        st = resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", r->name);
        break;
      }
      st = finish_connect(r, c, where, sock_errno, dl, why, start, err);
      if (st == RESIL_OK || st == RESIL_E_TIMEOUT || st == RESIL_E_SYSTEM) break;
      redisFree(c);
      c = NULL;
    }
  }
  if (st != RESIL_OK) {
    if (c) redisFree(c);
    if (st == RESIL_E_FAILURE && had_good && err &&
        (strstr(err->msg, "refused") || strstr(err->msg, "reset")))
      failover(r, gen);
    return connect_fail(st, false, err);
  }
  c->flags &= ~REDIS_BLOCK;
  if (!use_bounded_reader(c)) {
    redisFree(c);
    return connect_fail(resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", r->name), false,
                        err);
  }
  /* Blocking socket with a receive slice (see RECV_SLICE_MS). */
  struct timeval slice = {.tv_sec = 0, .tv_usec = RECV_SLICE_MS * 1000};
  int fl = fcntl(c->fd, F_GETFL);
  if (fl < 0 || fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK) != 0 ||
      setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof slice) != 0) {
    st = resil_err_set(err, RESIL_E_SYSTEM, "%s: connect: socket options: %s", r->name,
                       strerror(errno));
    redisFree(c);
    return connect_fail(st, false, err);
  }
  if (!r->unix_path && redisEnableKeepAlive(c) != REDIS_OK) {
    st = resil_err_set(err, RESIL_E_FAILURE, "%s: connect: keepalive: %s", r->name, c->errstr);
    redisFree(c);
    return connect_fail(st, false, err);
  }
  if (r->password || r->pwfile || r->pw_cb) {
    char buf[RESIL_PASSWORD_MAX], buf2[RESIL_PASSWORD_MAX];
    const char *pw = get_password(r, 0, buf, err);
    if (!pw) {
      redisFree(c);
      return connect_fail(RESIL_E_FAILURE, true, err);
    }
    const char *argv[3] = {"AUTH", r->username ? r->username : pw, pw};
    st = handshake(r, c, r->username ? 3 : 2, argv, "auth", dl, why, err);
    if (st == RESIL_E_FAILURE && last_connect.set && (r->pwfile || r->pw_cb) &&
        auth_refused(err ? err->msg : "")) {
      /* Rotated? Ask again at once; if the answer changed, AUTH again on
       * this connection. */
      resil_x_bump(&r->auth_failures);
      resil_err e2;
      const char *pw2 = get_password(r, RESIL_PASSWORD_AUTH_FAILED, buf2, &e2);
      if (pw2 && strcmp(pw, pw2) != 0 && !resil_deadline_expired(dl)) {
        const char *argv2[3] = {"AUTH", r->username ? r->username : pw2, pw2};
        last_connect.set = false;
        st = handshake(r, c, r->username ? 3 : 2, argv2, "auth", dl, why, err);
        if (st == RESIL_E_FAILURE && last_connect.set && auth_refused(err ? err->msg : ""))
          resil_x_bump(&r->auth_failures);
      }
      explicit_bzero(buf2, sizeof buf2);
    } else if (st == RESIL_E_FAILURE && last_connect.set && auth_refused(err ? err->msg : "")) {
      resil_x_bump(&r->auth_failures);
    }
    explicit_bzero(buf, sizeof buf);
    if (st != RESIL_OK) {
      redisFree(c);
      return last_connect.set ? st : connect_fail(st, false, err);
    }
  }
  if (r->database) {
    char db[16];
    snprintf(db, sizeof db, "%u", (unsigned)r->database);
    const char *argv[2] = {"SELECT", db};
    st = handshake(r, c, 2, argv, "select", dl, why, err);
    if (st != RESIL_OK) {
      redisFree(c);
      return last_connect.set ? st : connect_fail(st, false, err);
    }
  }
  resil_x_bump(&r->connects_ok);
  *conn = c;
  return RESIL_OK;
}

/* The connector of a several-address pool (resil_pool_new_endpoints). */
static resil_status rconnect_to(void *ctx, const resil_endpoint *ep, resil_deadline deadline,
                                void **conn, resil_err *err) {
  cur_ep = ep;
  resil_status st = rconnect(ctx, deadline, conn, err);
  cur_ep = NULL;
  return st;
}

static bool rvalidate(void *ctx, void *conn, resil_deadline deadline) {
  resil_redis *r = ctx;
  static const char ping[] = "*1\r\n$4\r\nPING\r\n";
  redisReply *reply = NULL;
  resil_err e;
  if (drive(conn, r->name, ping, sizeof ping - 1, 1, &reply, r->max_reply_bytes, deadline,
            "validate_timeout_ms", "validate", "validate", &e) != RESIL_OK)
    return false;
  bool ok = reply->type == REDIS_REPLY_STATUS;
  freeReplyObject(reply);
  return ok;
}

static void rclose(void *ctx, void *conn) {
  (void)ctx;
  redisFree(conn);
}

/* A child of fork frees the parent's connection: hiredis' redisFree() only
 * closes the descriptor (no QUIT), and the descriptor is silenced first in
 * case a driver version ever writes on the way out. */
static void rabandon(void *ctx, void *conn) {
  (void)ctx;
  redisContext *c = conn;
  if (c->fd >= 0) resil_x_silence_fd(c->fd);
  redisFree(c);
}

/* Recovery probe (resil_dep_set_probe): PING on a FRESH connection, after
 * AUTH and SELECT, all under the probe's deadline; never a pooled one (a
 * pooled connection says nothing about whether new ones work). */
static resil_status rprobe(void *ctx, resil_deadline deadline, resil_err *err) {
  resil_redis *r = ctx;
  void *conn = NULL;
  /* several addresses: a fresh connection to the next one not ejected */
  resil_status st = rconnect_to(r, resil_pool_endpoint_next(r->pool), deadline, &conn, err);
  if (st != RESIL_OK) return st;
  static const char ping[] = "*1\r\n$4\r\nPING\r\n";
  redisReply *reply = NULL;
  st = drive(conn, r->name, ping, sizeof ping - 1, 1, &reply, r->max_reply_bytes, deadline,
             "probe_timeout_ms", "probe", "probe", err);
  if (st == RESIL_OK) {
    if (reply->type != REDIS_REPLY_STATUS)
      st = resil_err_set(err, RESIL_E_FAILURE, "%s: probe: PING answered %.*s", r->name,
                         reply->type == REDIS_REPLY_ERROR ? (int)reply->len : 0,
                         reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    freeReplyObject(reply);
  }
  redisFree(conn);
  return st;
}

/* ---- Lifecycle ---------------------------------------------------------- */

static char *dup_opt(const char *s, bool *oom) {
  if (!s) return NULL;
  char *d = resil_x_strdup(s);
  if (!d) *oom = true;
  return d;
}

static void free_strings(resil_redis *r) {
  free(r->host);
  free(r->unix_path);
  free(r->username);
  if (r->password) {
    volatile char *p = r->password;
    while (*p) *p++ = 0;
  }
  free(r->password);
  resil_password_file_free(r->pwfile);
  r->pwfile = NULL;
}

resil_redis *resil_redis_new(const resil_redis_config *cfg, resil_err *err) {
  if (resil_redis_config_validate(cfg, err) != RESIL_OK) return NULL;
  resil_redis *r = resil_x_client_alloc(sizeof *r, cfg->dep.name, err);
  if (!r) return NULL;
  bool oom = false;
  r->unix_path = dup_opt(cfg->unix_path, &oom);
  r->host = cfg->unix_path ? NULL : dup_opt(cfg->host, &oom);
  r->username = dup_opt(cfg->username, &oom);
  r->password = dup_opt(cfg->password, &oom);
  r->port = cfg->port;
  r->database = cfg->database;
  r->connect_timeout_ms = cfg->connect_timeout_ms;
  r->command_timeout_ms = cfg->command_timeout_ms;
  r->max_reply_bytes = cfg->max_reply_bytes;
  r->pw_cb = cfg->password_cb;
  r->pw_ctx = cfg->password_ctx;
  if (!oom && cfg->password_file) {
    resil_err fe;
    r->pwfile = resil_password_file_open(cfg->password_file, cfg->password_file_check_ms, &fe);
    if (!r->pwfile) {
      resil_err_set(err, fe.status, "%s: password_file: %s", cfg->dep.name, fe.msg);
      goto fail;
    }
  }
  if (oom) {
    resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", cfg->dep.name);
    goto fail;
  }
  r->dep = resil_dep_new(&cfg->dep, err);
  if (!r->dep) goto fail;
  r->name = resil_dep_name(r->dep);
  resil_x_client c = {
      .label = r->name,
      .name = r->name,
      .pool = cfg->pool,
      .connect_timeout_ms = cfg->connect_timeout_ms,
      .connector = {.connect = rconnect, .validate = rvalidate, .close = rclose, .ctx = r,
                    .abandon = rabandon},
      .memory_bound = resil_redis_config_memory_bound(cfg),
      .probe = rprobe,
      .hosts = cfg->hosts,
      .default_port = cfg->port,
      .outlier = &cfg->outlier,
      .connect_to = rconnect_to,
      .dns_host = cfg->endpoints_from_dns ? cfg->host : NULL,
      .dns_port = cfg->port};
  if (resil_x_start_pool(&c, r->dep, &r->pool, err) != RESIL_OK) {
    resil_dep_attach_pool(r->dep, NULL);
    resil_pool_free(r->pool);
    goto fail;
  }
  return r;
fail:
  resil_dep_free(r->dep);
  free_strings(r);
  free(r);
  return NULL;
}

void resil_redis_free(resil_redis *r) {
  if (!r) return;
  resil_dep_set_probe(r->dep, NULL, NULL); /* waits for a running probe */
  resil_dep_attach_pool(r->dep, NULL);
  resil_pool_free(r->pool);
  resil_dep_free(r->dep);
  free_strings(r);
  free(r);
}

resil_dep *resil_redis_dep(resil_redis *r) { return r ? r->dep : NULL; }

void resil_redis_get_stats(const resil_redis *r, resil_redis_stats *out) {
  if (!resil_x_stats_begin(out, sizeof *out, r)) return;
  resil_redis *m = (resil_redis *)(uintptr_t)r;
  out->failovers = atomic_load_explicit(&m->failovers, memory_order_relaxed);
  out->read_only = atomic_load_explicit(&m->read_only, memory_order_relaxed);
  out->replays = atomic_load_explicit(&m->replays, memory_order_relaxed);
  out->auth_failures = atomic_load_explicit(&m->auth_failures, memory_order_relaxed);
  if (r->pwfile) {
    resil_password_file_stats ps;
    resil_password_file_get_stats(r->pwfile, &ps);
    out->password_changes = ps.changes;
    out->password_errors = ps.errors;
  }
}
resil_pool *resil_redis_pool(resil_redis *r) { return r ? r->pool : NULL; }

/* ---- Calls --------------------------------------------------------------- */

typedef struct call_ctx {
  resil_redis *r;
  const char *buf;
  size_t len;
  size_t n;
  redisReply **replies;
} call_ctx;

static void free_replies(redisReply **rs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (rs[i]) freeReplyObject(rs[i]);
    rs[i] = NULL;
  }
}

static resil_status attempt_once(call_ctx *cc, resil_attempt *a, bool *readonly);

/* Is the formatted command a script (EVAL, EVALSHA, FCALL...)? A script
 * may have had effects (PUBLISH) before a write was refused. */
static bool is_script(const char *buf, size_t len) {
  /* "*<argc>\r\n$<len>\r\n<name>\r\n" */
  const char *p = memchr(buf, '\n', len);
  if (!p || (size_t)(p - buf) + 1 >= len) return true;
  p = memchr(p + 1, '\n', len - (size_t)(p + 1 - buf));
  if (!p) return true;
  size_t rest = len - (size_t)(p + 1 - buf);
  return (rest >= 4 && strncasecmp(p + 1, "EVAL", 4) == 0) ||
         (rest >= 5 && strncasecmp(p + 1, "FCALL", 5) == 0);
}

/* One attempt; a single command refused with READONLY (not executed: the
 * server is a demoted primary) is sent again once at once on a fresh
 * connection, after the eviction and re-resolution attempt_once did. */
static resil_status attempt(void *vctx, resil_attempt *a) {
  call_ctx *cc = vctx;
  resil_redis *r = cc->r;
  bool readonly = false;
  resil_status st = attempt_once(cc, a, &readonly);
  if (readonly && cc->n == 1 && !resil_deadline_expired(a->deadline) &&
      !is_script(cc->buf, cc->len)) {
    resil_x_bump(&r->replays);
    readonly = false;
    st = attempt_once(cc, a, &readonly);
  }
  return st;
}

static resil_status attempt_once(call_ctx *cc, resil_attempt *a, bool *readonly) {
  resil_redis *r = cc->r;
  free_replies(cc->replies, cc->n); /* a previous attempt's error replies */
  resil_pool_conn *pc = NULL;
  last_connect.set = false;
  resil_status st = resil_pool_acquire(r->pool, a->deadline, &pc, a->err);
  if (st != RESIL_OK) {
    if (last_connect.set &&
        (st == RESIL_E_FAILURE || st == RESIL_E_TIMEOUT || st == RESIL_E_SYSTEM)) {
      *a->err = last_connect.err; /* the connector's own words */
      a->err->status = st;
      if (last_connect.no_retry) a->retry = 0;
    }
    last_connect.set = false;
    return st;
  }
  redisContext *c = resil_pool_conn_handle(pc);
  if (resil_deadline_expired(a->deadline)) {
    /* Nothing sent yet. Spent connecting or validating: the dependency's
     * time (a timeout); spent waiting for the connection: the caller's. */
    bool io = resil_pool_conn_did_io(pc);
    resil_pool_release(r->pool, pc, RESIL_POOL_OK);
    return resil_err_set(a->err, io ? RESIL_E_TIMEOUT : RESIL_E_DEADLINE,
                         io ? "%s: send: timed out: the connect or validation used the whole "
                              "deadline"
                            : "%s: send: deadline passed while waiting for a connection",
                         r->name);
  }
  resil_deadline dl = a->deadline;
  const char *why = "deadline";
  if (r->command_timeout_ms) {
    resil_deadline cap = resil_deadline_in_ms(r->command_timeout_ms);
    if (cap.at_ns < dl.at_ns || !resil_deadline_is_set(dl)) {
      dl = cap;
      why = "command_timeout_ms";
    }
  }
  mem_dep = r->dep;
  st = drive(c, r->name, cc->buf, cc->len, cc->n, cc->replies, r->max_reply_bytes, dl, why,
             "send", "receive", a->err);
  mem_dep = NULL;
  if (st != RESIL_OK) {
    /* Reset, or closed by the server mid-call (not a timeout, nor a reply
     * too large): the endpoint may have moved. */
    if (st == RESIL_E_FAILURE && c->err) failover(r, resil_pool_conn_generation(pc));
    resil_pool_release(r->pool, pc, RESIL_POOL_BROKEN);
    return st;
  }
  /* Classify: first failure-class error reply wins, else caller error. */
  resil_status worst = RESIL_OK;
  bool broken = false;
  const redisReply *first_err = NULL;
  for (size_t i = 0; i < cc->n; i++) {
    redisReply *rep = cc->replies[i];
    resil_status k = resil_redis_classify_reply(rep);
    if (reply_moves_endpoint(rep)) broken = true;
    if (rep->type == REDIS_REPLY_ERROR && rep->str && word_is(rep->str, rep->len, "READONLY")) {
      resil_x_bump(&r->read_only);
      *readonly = true;
    }
    if (k == RESIL_OK) continue;
    if (k == RESIL_E_CALLER) {
      if (worst == RESIL_OK) {
        worst = k;
        first_err = rep;
      }
    } else if (worst == RESIL_OK || worst == RESIL_E_CALLER) {
      worst = k;
      first_err = rep;
    }
  }
  if (broken) failover(r, resil_pool_conn_generation(pc));
  resil_pool_release(r->pool, pc, broken ? RESIL_POOL_BROKEN : RESIL_POOL_OK);
  if (worst != RESIL_OK) {
    resil_err_set(a->err, worst, "%s: reply: %.*s", r->name, (int)first_err->len,
                  first_err->str);
    /* LOADING (a replica loading its data set) and BUSY (a script running)
     * say "not now" without saying how long: pause every call for
     * pushback.pause_ms (a no-op while it is 0, the default). */
    if (worst == RESIL_E_OVERLOAD && (word_is(first_err->str, first_err->len, "LOADING") ||
                                      word_is(first_err->str, first_err->len, "BUSY")))
      resil_dep_pushback(r->dep, "overload", a->err->msg);
  }
  return worst;
}

static resil_status run(resil_redis *r, resil_deadline deadline, unsigned flags,
                        const char *buf, size_t len, size_t n, redisReply **replies,
                        resil_err *err) {
  call_ctx cc = {.r = r, .buf = buf, .len = len, .n = n, .replies = replies};
  for (size_t i = 0; i < n; i++) replies[i] = NULL;
  resil_status st = resil_dep_call(r->dep, deadline, flags, attempt, &cc, err);
  /* Replies survive only when the server answered everything. */
  if (st != RESIL_OK && st != RESIL_E_CALLER && st != RESIL_E_FAILURE &&
      st != RESIL_E_OVERLOAD)
    free_replies(replies, n);
  return st;
}

resil_status resil_redis_vcommand(resil_redis *r, resil_deadline deadline, unsigned flags,
                                  redisReply **reply, resil_err *err, const char *fmt,
                                  va_list ap) {
  if (reply) *reply = NULL;
  if (!r || !reply || !fmt)
    return resil_err_set(err, RESIL_E_INVALID, "resil_redis_command: %s is NULL",
                         !r ? "r" : !reply ? "reply" : "fmt");
  char *cmd = NULL;
  int len = redisvFormatCommand(&cmd, fmt, ap);
  if (len == -1)
    return resil_err_set(err, RESIL_E_NOMEM, "%s: format: out of memory", r->name);
  if (len < 0)
    return resil_err_set(err, RESIL_E_INVALID, "%s: format: invalid format string \"%s\"",
                         r->name, fmt);
  resil_status st = run(r, deadline, flags, cmd, (size_t)len, 1, reply, err);
  redisFreeCommand(cmd);
  return st;
}

resil_status resil_redis_command(resil_redis *r, resil_deadline deadline, unsigned flags,
                                 redisReply **reply, resil_err *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  resil_status st = resil_redis_vcommand(r, deadline, flags, reply, err, fmt, ap);
  va_end(ap);
  return st;
}

resil_status resil_redis_command_argv(resil_redis *r, resil_deadline deadline, unsigned flags,
                                      int argc, const char **argv, const size_t *argvlen,
                                      redisReply **reply, resil_err *err) {
  if (reply) *reply = NULL;
  if (!r || !reply || !argv || argc < 1)
    return resil_err_set(err, RESIL_E_INVALID, "resil_redis_command_argv: %s",
                         !r       ? "r is NULL"
                         : !reply ? "reply is NULL"
                         : !argv  ? "argv is NULL"
                                  : "argc must be >= 1");
  char *cmd = NULL;
  int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
  if (len < 0) return resil_err_set(err, RESIL_E_NOMEM, "%s: format: out of memory", r->name);
  resil_status st = run(r, deadline, flags, cmd, (size_t)len, 1, reply, err);
  redisFreeCommand(cmd);
  return st;
}

resil_status resil_redis_pipeline(resil_redis *r, resil_deadline deadline, unsigned flags,
                                  size_t n, const resil_redis_cmd *cmds, redisReply **replies,
                                  resil_err *err) {
  if (!r || !cmds || !replies || n == 0 || n > MAX_PIPELINE)
    return resil_err_set(err, RESIL_E_INVALID, "resil_redis_pipeline: %s",
                         !r ? "r is NULL"
                         : !cmds || !replies ? "cmds/replies is NULL"
                                             : "n must be 1..100000");
  for (size_t i = 0; i < n; i++) replies[i] = NULL;
  /* One buffer holding every formatted command. */
  size_t cap = 0, len = 0;
  char *buf = NULL;
  for (size_t i = 0; i < n; i++) {
    if (cmds[i].argc < 1 || !cmds[i].argv) {
      free(buf);
      return resil_err_set(err, RESIL_E_INVALID, "%s: pipeline: command %zu has no arguments",
                           r->name, i);
    }
    char *cmd = NULL;
    int l = redisFormatCommandArgv(&cmd, cmds[i].argc, cmds[i].argv, cmds[i].argvlen);
    if (l < 0) {
      free(buf);
      return resil_err_set(err, RESIL_E_NOMEM, "%s: format: out of memory", r->name);
    }
    if (len + (size_t)l > cap) {
      size_t ncap = cap ? cap * 2 : 4096;
      while (ncap < len + (size_t)l) ncap *= 2;
      char *nb = realloc(buf, ncap);
      if (!nb) {
        redisFreeCommand(cmd);
        free(buf);
        return resil_err_set(err, RESIL_E_NOMEM, "%s: format: out of memory", r->name);
      }
      buf = nb;
      cap = ncap;
    }
    memcpy(buf + len, cmd, (size_t)l);
    len += (size_t)l;
    redisFreeCommand(cmd);
  }
  resil_status st = run(r, deadline, flags, buf, len, n, replies, err);
  free(buf);
  return st;
}
