/* Running one statement on a non-blocking libpq connection under a
 * deadline, with the result-size bound, and classifying its outcome (see
 * stmt.h). */
#include "stmt.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
/* struct tcp_info with tcpi_bytes_received (glibc's netinet/tcp.h lacks it) */
#include <linux/tcp.h>

#include "xutil.h"

void pg_flatten(char *dst, size_t size, const char *src) {
  size_t n = 0;
  bool space = false;
  if (!src) src = "";
  while (*src && n + 1 < size) {
    if (strncmp(src, "LOCATION:", 9) == 0 && (n == 0 || space)) {
      while (*src && *src != '\n') src++;
      continue;
    }
    unsigned char ch = (unsigned char)*src++;
    if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
      space = true;
      continue;
    }
    if (space && n > 0 && n + 2 < size) dst[n++] = ' ';
    space = false;
    dst[n++] = (char)ch;
  }
  dst[n] = '\0';
}

static bool is_sqlstate(const char *s) {
  if (!s || strlen(s) != 5) return false;
  for (int i = 0; i < 5; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z'))) return false;
  return true;
}

resil_status resil_pg_classify_sqlstate(const char *s, bool *retryable) {
  if (retryable) *retryable = false;
  if (!is_sqlstate(s)) return RESIL_E_FAILURE;
  if (strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0) {
    if (retryable) *retryable = true;
    return RESIL_E_CALLER;
  }
  if (strcmp(s, "57014") == 0) return RESIL_E_TIMEOUT;
  if (strcmp(s, "25006") == 0) return RESIL_E_FAILURE; /* read-only: a demoted writer */
  if (strncmp(s, "08", 2) == 0 || strncmp(s, "58", 2) == 0 || strncmp(s, "XX", 2) == 0 ||
      strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 || strcmp(s, "57P03") == 0 ||
      strcmp(s, "53300") == 0)
    return RESIL_E_FAILURE;
  if (strncmp(s, "53", 2) == 0) return RESIL_E_OVERLOAD;
  return RESIL_E_CALLER;
}

const char *resil_pg_sqlstate(const PGresult *res) {
  return res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
}

/* Status and message for an error result. */
static resil_status result_error(const pg_stmt_env *env, const char *phase, const PGresult *r,
                                 bool *retryable, resil_err *err) {
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (!sev) sev = PQresultErrorField(r, PG_DIAG_SEVERITY);
  const char *prim = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  char msg[RESIL_ERR_MSG_MAX - 100];
  pg_flatten(msg, sizeof msg, prim ? prim : PQresultErrorMessage(r));
  resil_status st = resil_pg_classify_sqlstate(state, retryable);
  if (!is_sqlstate(state))
    return resil_err_set(err, st, "%s: %s: %s", env->name, phase, msg);
  return resil_err_set(err, st, "%s: %s: %s %s %s", env->name, phase, sev ? sev : "ERROR", state,
                       msg);
}

static resil_status conn_error(const pg_stmt_env *env, const char *phase, PGconn *c, resil_err *err) {
  char msg[RESIL_ERR_MSG_MAX - 100];
  pg_flatten(msg, sizeof msg, PQerrorMessage(c));
  return resil_err_set(err, RESIL_E_FAILURE, "%s: %s: %s", env->name, phase,
                       msg[0] ? msg : "connection error");
}

static resil_status timed_out(const pg_stmt_env *env, const char *phase, resil_err *err) {
  return resil_err_set(err, RESIL_E_TIMEOUT, "%s: %s: deadline passed; statement cancelled",
                       env->name, phase);
}

/* ---- Bounding what one statement receives -------------------------------
 * libpq 15 buffers a whole result (and each whole DataRow message) before
 * handing it over, and has no limit. Single-row mode would let us count rows
 * as they come, but the caller is promised one ordinary PGresult (with its
 * command tag), so every row would have to be copied into an assembled
 * result, and one huge value is still buffered whole by libpq before its row
 * appears. Instead the adapter counts the bytes libpq has taken from the
 * socket since the statement was sent: the kernel's count of bytes received
 * on the TCP connection (TCP_INFO tcpi_bytes_received, Linux >= 4.1) minus
 * what is still queued unread (FIONREAD). It is checked after every
 * PQconsumeInput(), so a result is stopped within one read of
 * max_result_bytes, and the statement is then cancelled and the connection
 * closed (the reaper, as for a timeout). One read fills at most libpq's
 * input buffer: 16-32 KiB for ordinary rows, but libpq sizes it for a whole
 * DataRow, and keeps reading while the socket is not empty, so a single row
 * larger than the bound can come in whole in one read when the server
 * sends faster than we take (then it is refused right after, before libpq
 * copies it into a PGresult). One getsockopt() per read, and one ioctl() only once the
 * bound may have been passed; the count when the statement starts is the one
 * its connection's last statement ended with (pg_stmt.rx_mark: nothing is
 * read between statements, so a statement that needs one read costs one
 * getsockopt(), ~0.6 us, instead of two), measured only on a connection's
 * first statement. The count is of protocol bytes (with TLS:
 * encrypted bytes); the PGresult libpq builds from them is about as large for
 * wide values and up to ~2-3x for many narrow rows. Connections without byte
 * counters (Unix-domain sockets) are not bounded this way, only by the
 * deadline. */
typedef struct rx_meter {
  int fd;
  bool on;       /* the socket counts received bytes (TCP) */
  uint64_t base; /* received when the statement was sent */
  uint64_t last; /* received, as last measured */
  uint64_t used; /* taken by libpq since, as last measured */
  uint64_t *mark; /* the connection's rx_mark: base on entry, last on release */
  resil_dep *dep;    /* whose memory gauge the received bytes are reported to */
  uint64_t reported; /* bytes reported to it so far */
} rx_meter;

/* When the statement is over (every return of stmt_run_raw: a cleanup
 * attribute), its result is the caller's or freed: no longer in flight. */
static void meter_release(rx_meter *m) {
  if (m->reported) resil_dep_memory_add(m->dep, -(int64_t)m->reported);
  m->reported = 0;
  if (m->mark) *m->mark = m->on ? m->last : 0;
}

static bool tcp_received(int fd, uint64_t *out) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return false;
  if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
    return false; /* a kernel older than 4.1 */
  *out = ti.tcpi_bytes_received;
  return true;
}

static void meter_start(rx_meter *m, PGconn *c, uint64_t *mark) {
  m->fd = PQsocket(c);
  m->used = 0;
  m->base = mark ? *mark : 0;
  m->mark = mark;
  m->on = m->fd >= 0 && (m->base || tcp_received(m->fd, &m->base));
  m->last = m->base;
}

/* After libpq read from the socket: has the statement taken at most max
 * bytes? (Anything queued but unread when it was sent counts as its own:
 * a few bytes of notices at most.) */
static bool meter_ok(rx_meter *m, size_t max) {
  uint64_t now;
  if (!m->on || !tcp_received(m->fd, &now)) return true;
  m->last = now;
  uint64_t got = now > m->base ? now - m->base : 0; /* received, read or not */
  /* What libpq holds for the statement (its input buffer, the result it
   * builds) is about what it received: the memory gauge's figure. */
  if (m->dep && got != m->reported) {
    resil_dep_memory_add(m->dep, (int64_t)got - (int64_t)m->reported);
    m->reported = got;
  }
  if (got <= max) return true;
  int inq = 0;
  if (ioctl(m->fd, FIONREAD, &inq) != 0 || inq < 0) inq = 0;
  m->used = got > (uint64_t)inq ? got - (uint64_t)inq : 0;
  return m->used <= max;
}

static resil_status too_large(const pg_stmt_env *env, const char *phase, const rx_meter *m,
                              resil_err *err) {
  return resil_err_set(err, RESIL_E_CALLER,
                       "%s: %s: result larger than max_result_bytes %zu (%" PRIu64
                       " bytes received; statement cancelled, connection closed)",
                       env->name, phase, env->max_result_bytes, m->used);
}

/* ---- One statement, phase by phase ------------------------------------ */

/* Wait for events on the socket until the statement's deadline, hand what
 * came to libpq, and check the size bound. RESIL_OK to go on; else s->d
 * and err are set. */
static resil_status stmt_wait(const pg_stmt_env *env, pg_stmt *s, rx_meter *m, short events,
                              resil_err *err) {
  int w = resil_x_wait_fd(PQsocket(s->conn), events, s->deadline);
  if (w == 0) {
    s->d = DISP_REAP;
    return timed_out(env, s->phase, err);
  }
  /* While flushing, read only what came; while reading, always. */
  bool consume = events == POLLIN || (w & POLLIN);
  if (w < 0 || (consume && !PQconsumeInput(s->conn))) {
    s->d = DISP_BROKEN;
    return conn_error(env, s->phase, s->conn, err);
  }
  if (!meter_ok(m, env->max_result_bytes)) {
    s->d = DISP_REAP;
    return too_large(env, s->phase, m, err);
  }
  return RESIL_OK;
}

/* Send the statement and flush it, reading meanwhile. */
static resil_status stmt_send(const pg_stmt_env *env, pg_stmt *s, rx_meter *m, resil_err *err) {
  PGconn *c = s->conn;
  const resil_pg_query_args *q = s->q;
  int ok;
  if (!q)
    ok = PQsendQuery(c, s->sql);
  else if (s->kind == SEND_PREPARE)
    ok = PQsendPrepare(c, s->name, q->sql, q->nparams, q->types);
  else if (s->kind == SEND_PREPARED)
    ok = PQsendQueryPrepared(c, s->name, q->nparams, q->values, q->lengths, q->formats,
                             q->result_format);
  else
    ok = PQsendQueryParams(c, q->sql, q->nparams, q->types, q->values, q->lengths, q->formats,
                           q->result_format);
  int r = ok ? 1 : -1;
  resil_status st = RESIL_OK;
  while (ok && st == RESIL_OK && (r = PQflush(c)) == 1)
    st = stmt_wait(env, s, m, POLLIN | POLLOUT, err);
  if (st != RESIL_OK) return st;
  if (r < 0) {
    s->d = DISP_BROKEN;
    return conn_error(env, s->phase, c, err);
  }
  return RESIL_OK;
}

/* Read every result until PQgetResult() returns NULL: s->res is the first
 * error result (*is_err true), else the last result. */
static resil_status stmt_collect(const pg_stmt_env *env, pg_stmt *s, rx_meter *m, bool *is_err,
                                 resil_err *err) {
  PGresult *keep = NULL;
  resil_status st = RESIL_OK;
  for (;;) {
    while (st == RESIL_OK && PQisBusy(s->conn)) st = stmt_wait(env, s, m, POLLIN, err);
    if (st != RESIL_OK) break;
    PGresult *res = PQgetResult(s->conn);
    if (!res) break;
    ExecStatusType k = PQresultStatus(res);
    if (k == PGRES_COPY_IN || k == PGRES_COPY_OUT || k == PGRES_COPY_BOTH) {
      PQclear(res);
      s->d = DISP_BROKEN;
      st = resil_err_set(err, RESIL_E_CALLER, "%s: %s: COPY is not supported", env->name,
                         s->phase);
      break;
    }
    if (*is_err) {
      PQclear(res);
      continue;
    }
    PQclear(keep);
    keep = res;
    *is_err = k == PGRES_FATAL_ERROR || k == PGRES_BAD_RESPONSE;
  }
  if (st != RESIL_OK) {
    PQclear(keep);
    return st;
  }
  s->res = keep;
  return RESIL_OK;
}

/* The outcome of a statement whose results are all in. */
static resil_status stmt_outcome(const pg_stmt_env *env, pg_stmt *s, bool is_err,
                                 resil_err *err) {
  if (PQstatus(s->conn) != CONNECTION_OK) s->d = DISP_BROKEN;
  if (is_err) {
    resil_status st = result_error(env, s->phase, s->res, &s->retryable, err);
    if (s->d == DISP_BROKEN && st != RESIL_E_TIMEOUT) {
      /* The server ended the session (FATAL) or libpq lost it. */
      st = RESIL_E_FAILURE;
      if (err) err->status = st;
      s->retryable = false;
    }
    return st;
  }
  if (!s->res) {
    s->d = DISP_BROKEN;
    return resil_err_set(err, RESIL_E_FAILURE, "%s: %s: no result", env->name, s->phase);
  }
  return RESIL_OK; /* with DISP_BROKEN: the answer is in, only the connection is lost */
}

static resil_status stmt_run_raw(const pg_stmt_env *env, pg_stmt *s, resil_err *err) {
  s->res = NULL;
  s->d = DISP_KEEP;
  s->retryable = false;
  if (PQstatus(s->conn) != CONNECTION_OK) {
    s->d = DISP_BROKEN;
    return conn_error(env, s->phase, s->conn, err);
  }
  __attribute__((cleanup(meter_release))) rx_meter m = {.dep = env->dep};
  meter_start(&m, s->conn, s->rx_mark);
  bool is_err = false;
  resil_status st = stmt_send(env, s, &m, err);
  if (st == RESIL_OK) st = stmt_collect(env, s, &m, &is_err, err);
  if (st != RESIL_OK) return st;
  return stmt_outcome(env, s, is_err, err);
}

resil_status pg_stmt_run(const pg_stmt_env *env, pg_stmt *s, resil_err *err) {
  resil_status st = stmt_run_raw(env, s, err);
  if (st == RESIL_OK || s->d == DISP_REAP) return st;
  const char *state = resil_pg_sqlstate(s->res);
  if (state && strcmp(state, "25006") == 0) {
    atomic_fetch_add_explicit(env->read_only, 1, memory_order_relaxed);
    s->d = DISP_MOVED;
  } else if (s->d == DISP_BROKEN && st == RESIL_E_FAILURE &&
             (!state || strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
              strncmp(state, "08", 2) == 0)) {
    s->d = DISP_MOVED;
  }
  return st;
}

resil_status pg_stmt_simple(const pg_stmt_env *env, pg_stmt *s, char *tag, size_t tagsz,
                            resil_err *err) {
  resil_status st = pg_stmt_run(env, s, err);
  if (tag && tagsz) {
    tag[0] = '\0';
    if (s->res && st == RESIL_OK) snprintf(tag, tagsz, "%s", PQcmdStatus(s->res));
  }
  PQclear(s->res);
  s->res = NULL;
  return st;
}
