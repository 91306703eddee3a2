/* faultproxy — see faultproxy.h. One thread per proxy, one poll() loop, no blocking I/O. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "faultproxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK 16384
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define CONNECT_TIMEOUT_NS (5 * NS_PER_S) /* upstream connect */
#define RESET_DRAIN_NS (2 * NS_PER_S)     /* FP_RESET_AFTER: wait for the client to take bytes */
#define LINGER_NS (2 * NS_PER_S)          /* FP_CLOSE_MID_REPLY: drain the client after FIN */
#define RESET_POLL_NS NS_PER_MS

typedef struct chunk {
  struct chunk *next;
  uint64_t t_ns; /* when the proxy read it */
  size_t len, off;
  unsigned char data[];
} chunk;

/* One direction of a connection: bytes read from the source, waiting for the destination. */
typedef struct dirq {
  chunk *head, *tail;
  size_t bytes;
  bool eof;      /* the source sent FIN */
  uint64_t eof_ns;
  bool shut;     /* the FIN was passed on (shutdown(dst, SHUT_WR)) */
  bool want_out; /* the last write to the destination hit EAGAIN */
} dirq;

typedef enum cstate {
  CS_CONNECTING, /* upstream connect in progress; client data is buffered */
  CS_OPEN,
  CS_RESETTING,  /* FP_RESET_AFTER budget spent: waiting for the client's kernel, then RST */
  CS_LINGER,     /* FP_CLOSE_MID_REPLY fired: FIN sent to the client, draining it */
} cstate;

typedef struct conn {
  int cfd, ufd;
  cstate st;
  dirq c2s, s2c;
  uint64_t budget;      /* FP_RESET_AFTER: bytes still allowed server→client */
  bool cut;             /* FP_CLOSE_MID_REPLY fired on this connection */
  uint64_t thr_next_ns; /* FP_THROTTLE: earliest time of the next server→client write */
  uint64_t deadline_ns; /* CS_CONNECTING / CS_RESETTING / CS_LINGER */
} conn;

typedef enum verdict { V_KEEP, V_CLOSE, V_ABORT } verdict;

struct fp_proxy {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* guarded by mu */
  fp_mode mode;
  uint64_t arg;
  uint64_t gen, applied_gen;
  uint64_t kill_req, kill_done;
  bool stop;
  /* immutable after start */
  int wake[2];
  uint16_t port;
  struct sockaddr_storage up;
  socklen_t uplen;
  pthread_t th;
  /* counters */
  _Atomic unsigned accepted, active;
  _Atomic uint64_t to_client, to_server;
  /* owned by the proxy thread */
  int lfd;
  bool listening;
  fp_mode cur_mode; /* the loop's snapshot */
  uint64_t cur_arg;
  conn *conns[FP_MAX_CONNS];
  int nconns;
};

/* ---------------------------------------------------------------- helpers */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void close_rst(int fd) {
  if (fd < 0) return;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static void close_plain(int fd) {
  if (fd >= 0) close(fd);
}

static void set_nodelay(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void min_u64(uint64_t *a, uint64_t b) {
  if (b < *a) *a = b;
}

static void dirq_free(dirq *q) {
  chunk *c = q->head;
  while (c) {
    chunk *n = c->next;
    free(c);
    c = n;
  }
  q->head = q->tail = NULL;
  q->bytes = 0;
}

static bool dirq_push(dirq *q, const unsigned char *data, size_t len, uint64_t now) {
  chunk *c = malloc(sizeof *c + len);
  if (!c) return false;
  c->next = NULL;
  c->t_ns = now;
  c->len = len;
  c->off = 0;
  memcpy(c->data, data, len);
  if (q->tail) q->tail->next = c;
  else q->head = c;
  q->tail = c;
  q->bytes += len;
  return true;
}

const char *fp_mode_name(fp_mode mode) {
  switch (mode) {
  case FP_PASS: return "pass";
  case FP_DELAY: return "delay";
  case FP_BLACKHOLE: return "blackhole";
  case FP_RESET_AFTER: return "reset_after";
  case FP_CLOSE_MID_REPLY: return "close_mid_reply";
  case FP_THROTTLE: return "throttle";
  case FP_REFUSE: return "refuse";
  }
  return "unknown";
}

/* ---------------------------------------------------------------- connections */

static void conn_destroy(fp_proxy *p, int i, verdict how) {
  conn *c = p->conns[i];
  if (how == V_ABORT) {
    close_rst(c->cfd);
    close_rst(c->ufd);
  } else {
    close_plain(c->cfd);
    close_plain(c->ufd);
  }
  dirq_free(&c->c2s);
  dirq_free(&c->s2c);
  free(c);
  p->conns[i] = p->conns[--p->nconns];
  p->conns[p->nconns] = NULL;
  atomic_fetch_sub(&p->active, 1);
}

/* Write what is due from q to dst. Returns false on a fatal socket error. */
static bool flush_dir(fp_proxy *p, conn *c, dirq *q, int dst, bool s2c, uint64_t now,
                      uint64_t *next) {
  const fp_mode m = p->cur_mode;
  const uint64_t delay_ns = m == FP_DELAY ? p->cur_arg * NS_PER_MS : 0;
  q->want_out = false;
  while (q->head) {
    chunk *h = q->head;
    if (m == FP_DELAY && now < h->t_ns + delay_ns) {
      min_u64(next, h->t_ns + delay_ns);
      return true;
    }
    size_t n = h->len - h->off;
    if (s2c && m == FP_THROTTLE) {
      if (now < c->thr_next_ns) {
        min_u64(next, c->thr_next_ns);
        return true;
      }
      uint64_t bps = p->cur_arg ? p->cur_arg : 1;
      uint64_t slice = bps / 50;
      if (slice < 1) slice = 1;
      if (slice > READ_CHUNK) slice = READ_CHUNK;
      if (n > slice) n = (size_t)slice;
    }
    if (s2c && m == FP_RESET_AFTER) {
      if (c->budget == 0) return true;
      if (n > c->budget) n = (size_t)c->budget;
    }
    ssize_t w = send(dst, h->data + h->off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        q->want_out = true;
        return true;
      }
      return false;
    }
    h->off += (size_t)w;
    q->bytes -= (size_t)w;
    if (s2c) {
      atomic_fetch_add(&p->to_client, (uint64_t)w);
      if (m == FP_THROTTLE) {
        uint64_t bps = p->cur_arg ? p->cur_arg : 1;
        uint64_t base = c->thr_next_ns > now ? c->thr_next_ns : now;
        c->thr_next_ns = base + (uint64_t)w * NS_PER_S / bps;
      }
      if (m == FP_RESET_AFTER) c->budget -= (uint64_t)w;
    } else {
      atomic_fetch_add(&p->to_server, (uint64_t)w);
    }
    if (h->off == h->len) {
      q->head = h->next;
      if (!q->head) q->tail = NULL;
      free(h);
    }
  }
  if (q->eof && !q->shut) {
    if (m == FP_DELAY && now < q->eof_ns + delay_ns) {
      min_u64(next, q->eof_ns + delay_ns);
      return true;
    }
    (void)shutdown(dst, SHUT_WR);
    q->shut = true;
  }
  return true;
}

static size_t outq_bytes(int fd) {
  int n = 0;
  if (ioctl(fd, SIOCOUTQ, &n) != 0) return 0;
  return n > 0 ? (size_t)n : 0;
}

/* Make progress on a connection that needs no I/O readiness: writes that are due, timers,
 * state changes. */
static verdict pump(fp_proxy *p, conn *c, uint64_t now, uint64_t *next) {
  const fp_mode m = p->cur_mode;
  if ((c->st == CS_CONNECTING || c->st == CS_OPEN) && m == FP_RESET_AFTER && c->budget == 0) {
    c->st = CS_RESETTING;
    c->deadline_ns = now + RESET_DRAIN_NS;
  }
  switch (c->st) {
  case CS_CONNECTING:
    if (now >= c->deadline_ns) return V_CLOSE;
    min_u64(next, c->deadline_ns);
    return V_KEEP;
  case CS_RESETTING:
    if (outq_bytes(c->cfd) == 0 || now >= c->deadline_ns) return V_ABORT;
    min_u64(next, now + RESET_POLL_NS);
    return V_KEEP;
  case CS_LINGER:
    if (now >= c->deadline_ns) return V_CLOSE;
    min_u64(next, c->deadline_ns);
    return V_KEEP;
  case CS_OPEN:
    break;
  }
  if (m == FP_BLACKHOLE) return V_KEEP;
  if (!flush_dir(p, c, &c->c2s, c->ufd, false, now, next)) return V_ABORT;
  if (!flush_dir(p, c, &c->s2c, c->cfd, true, now, next)) return V_ABORT;
  if (m == FP_RESET_AFTER && c->budget == 0) {
    c->st = CS_RESETTING;
    c->deadline_ns = now + RESET_DRAIN_NS;
    if (outq_bytes(c->cfd) == 0) return V_ABORT;
    min_u64(next, now + RESET_POLL_NS);
    return V_KEEP;
  }
  if (c->cut && !c->s2c.head) {
    /* FP_CLOSE_MID_REPLY: the half reply is out; FIN the client, drop the upstream. */
    (void)shutdown(c->cfd, SHUT_WR);
    close_plain(c->ufd);
    c->ufd = -1;
    dirq_free(&c->c2s);
    if (c->c2s.eof) return V_CLOSE;
    c->st = CS_LINGER;
    c->deadline_ns = now + LINGER_NS;
    min_u64(next, c->deadline_ns);
    return V_KEEP;
  }
  if (c->c2s.shut && c->s2c.shut) return V_CLOSE;
  return V_KEEP;
}

/* Read one chunk from fd into q. Returns false on a fatal socket error. */
static bool read_into(fp_proxy *p, conn *c, int fd, dirq *q, bool s2c, uint64_t now) {
  unsigned char buf[READ_CHUNK];
  ssize_t r;
  do r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  while (r < 0 && errno == EINTR);
  if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
  if (r == 0) {
    q->eof = true;
    q->eof_ns = now;
    return true;
  }
  size_t n = (size_t)r;
  if (s2c && p->cur_mode == FP_CLOSE_MID_REPLY && !c->cut) {
    c->cut = true;
    n /= 2;
  }
  if (n > 0 && !dirq_push(q, buf, n, now)) return false;
  return true;
}

static void accept_new(fp_proxy *p, uint64_t now) {
  while (p->nconns < FP_MAX_CONNS) {
    int cfd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return; /* EAGAIN, or EMFILE and friends: try again on the next wakeup */
    }
    atomic_fetch_add(&p->accepted, 1);
    set_nodelay(cfd);
    int ufd = socket(p->up.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ufd < 0) {
      close_plain(cfd);
      continue;
    }
    set_nodelay(ufd);
    cstate st = CS_OPEN;
    if (connect(ufd, (const struct sockaddr *)&p->up, p->uplen) != 0) {
      if (errno == EINPROGRESS || errno == EINTR) {
        st = CS_CONNECTING;
      } else {
        close_plain(ufd);
        close_plain(cfd); /* upstream unreachable: close the client */
        continue;
      }
    }
    conn *c = calloc(1, sizeof *c);
    if (!c) {
      close_plain(ufd);
      close_plain(cfd);
      continue;
    }
    c->cfd = cfd;
    c->ufd = ufd;
    c->st = st;
    c->deadline_ns = now + CONNECT_TIMEOUT_NS;
    c->budget = p->cur_mode == FP_RESET_AFTER ? p->cur_arg : 0;
    p->conns[p->nconns++] = c;
    atomic_fetch_add(&p->active, 1);
  }
}

static void apply_mode(fp_proxy *p) {
  for (int i = 0; i < p->nconns; i++)
    if (p->cur_mode == FP_RESET_AFTER) p->conns[i]->budget = p->cur_arg;
  if (p->cur_mode == FP_REFUSE && p->listening) {
    /* Linux: shutting down a listening socket stops it listening but keeps its port
     * (the port was bound explicitly); SYNs are then answered with RST. */
    (void)shutdown(p->lfd, SHUT_RD);
    p->listening = false;
  } else if (p->cur_mode != FP_REFUSE && !p->listening) {
    if (listen(p->lfd, 128) == 0) p->listening = true;
    else fprintf(stderr, "faultproxy: re-listen on port %u failed: %s\n", p->port, strerror(errno));
  }
}

/* ---------------------------------------------------------------- the loop */

static void *loop_main(void *arg) {
  fp_proxy *p = arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);

  struct pollfd pfd[2 + 2 * FP_MAX_CONNS];
  int ci[FP_MAX_CONNS], ui[FP_MAX_CONNS]; /* pollfd index of each conn's fds, or -1 */

  for (;;) {
    pthread_mutex_lock(&p->mu);
    bool stop = p->stop;
    uint64_t gen = p->gen, kill = p->kill_req;
    bool new_gen = gen != p->applied_gen, new_kill = kill != p->kill_done;
    p->cur_mode = p->mode;
    p->cur_arg = p->arg;
    pthread_mutex_unlock(&p->mu);
    if (stop) break;

    if (new_gen) apply_mode(p);
    if (new_kill)
      while (p->nconns > 0) conn_destroy(p, p->nconns - 1, V_ABORT);
    if (new_gen || new_kill) {
      pthread_mutex_lock(&p->mu);
      p->applied_gen = gen;
      p->kill_done = kill;
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
    }

    uint64_t now = mono_ns();
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < p->nconns;) {
      verdict v = pump(p, p->conns[i], now, &next);
      if (v == V_KEEP) i++;
      else conn_destroy(p, i, v);
    }

    int n = 0;
    pfd[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
    int li = -1;
    if (p->listening && p->nconns < FP_MAX_CONNS) {
      li = n;
      pfd[n++] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
    }
    const fp_mode m = p->cur_mode;
    for (int i = 0; i < p->nconns; i++) {
      conn *c = p->conns[i];
      short ce = 0, ue = 0;
      switch (c->st) {
      case CS_CONNECTING:
        ue = POLLOUT;
        if (m == FP_BLACKHOLE) ce = c->c2s.eof ? 0 : POLLRDHUP;
        else if (!c->c2s.eof && c->c2s.bytes < FP_BUF_CAP) ce = POLLIN;
        break;
      case CS_OPEN:
        if (m == FP_BLACKHOLE) {
          ce = c->c2s.eof ? 0 : POLLRDHUP;
          break;
        }
        if (!c->c2s.eof && c->c2s.bytes < FP_BUF_CAP) ce |= POLLIN;
        if (c->s2c.want_out) ce |= POLLOUT;
        if (!c->s2c.eof && !c->cut && c->s2c.bytes < FP_BUF_CAP) ue |= POLLIN;
        if (c->c2s.want_out) ue |= POLLOUT;
        break;
      case CS_RESETTING: break;
      case CS_LINGER: ce = POLLIN; break;
      }
      ci[i] = ui[i] = -1;
      if (ce) {
        ci[i] = n;
        pfd[n++] = (struct pollfd){.fd = c->cfd, .events = ce};
      }
      if (ue) {
        ui[i] = n;
        pfd[n++] = (struct pollfd){.fd = c->ufd, .events = ue};
      }
    }

    int timeout = -1;
    if (next != UINT64_MAX) {
      uint64_t t = mono_ns();
      uint64_t d = next > t ? next - t : 0;
      uint64_t ms = (d + NS_PER_MS - 1) / NS_PER_MS;
      timeout = ms > 60000 ? 60000 : (int)ms;
    }
    int pr = poll(pfd, (nfds_t)n, timeout);
    if (pr < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "faultproxy: poll: %s\n", strerror(errno));
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL);
      continue;
    }
    if (pr == 0) continue;
    now = mono_ns();

    if (pfd[0].revents) {
      char buf[64];
      while (read(p->wake[0], buf, sizeof buf) > 0) {}
    }

    /* Connections first (their indices refer to this poll set), then new ones. */
    int count = p->nconns;
    for (int i = count - 1; i >= 0; i--) {
      conn *c = p->conns[i];
      short cr = ci[i] >= 0 ? pfd[ci[i]].revents : 0;
      short ur = ui[i] >= 0 ? pfd[ui[i]].revents : 0;
      verdict v = V_KEEP;
      if (c->st == CS_CONNECTING && ur) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err == 0) c->st = CS_OPEN;
        else v = V_CLOSE; /* upstream unreachable: close the client */
        ur = 0;
      }
      if (v == V_KEEP && cr) {
        if (c->st == CS_LINGER) {
          unsigned char buf[4096];
          ssize_t r = recv(c->cfd, buf, sizeof buf, MSG_DONTWAIT);
          if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            v = V_CLOSE;
        } else if (m == FP_BLACKHOLE) {
          v = V_CLOSE; /* the client hung up */
        } else if (cr & POLLERR) {
          v = V_ABORT;
        } else if ((cr & (POLLIN | POLLHUP | POLLRDHUP)) && (pfd[ci[i]].events & POLLIN)) {
          if (!read_into(p, c, c->cfd, &c->c2s, false, now)) v = V_ABORT;
        }
      }
      if (v == V_KEEP && ur && c->st == CS_OPEN) {
        if (ur & POLLERR) v = V_ABORT;
        else if ((ur & (POLLIN | POLLHUP | POLLRDHUP)) && (pfd[ui[i]].events & POLLIN)) {
          if (!read_into(p, c, c->ufd, &c->s2c, true, now)) v = V_ABORT;
        }
      }
      if (v != V_KEEP) conn_destroy(p, i, v);
    }

    if (li >= 0 && (pfd[li].revents & POLLIN)) accept_new(p, now);
  }

  while (p->nconns > 0) conn_destroy(p, p->nconns - 1, V_CLOSE);
  return NULL;
}

/* ---------------------------------------------------------------- public API */

static int parse_upstream(const char *host, uint16_t port, struct sockaddr_storage *ss,
                          socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  if (!host || port == 0) return EINVAL;
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127) return EPERM;
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    *len = sizeof *a4;
    return 0;
  }
  if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr)) return EPERM;
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    *len = sizeof *a6;
    return 0;
  }
  return EINVAL;
}

/* A listening socket on 127.0.0.1 at an ephemeral port that is bound *explicitly*, so that
 * FP_REFUSE can stop listening without giving the port up (Linux releases an automatically
 * chosen port when a listening socket is shut down). */
static int make_listener(uint16_t *port_out) {
  for (int attempt = 0; attempt < 32; attempt++) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return -1;
    socklen_t sl = sizeof a;
    if (bind(probe, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(probe, (struct sockaddr *)&a, &sl) != 0) {
      int e = errno;
      close(probe);
      errno = e;
      return -1;
    }
    close(probe);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 128) == 0) {
      *port_out = ntohs(a.sin_port);
      return fd;
    }
    int e = errno;
    close(fd);
    if (e != EADDRINUSE) {
      errno = e;
      return -1;
    }
  }
  errno = EADDRINUSE;
  return -1;
}

fp_proxy *fp_start(const char *upstream_host, uint16_t upstream_port) {
  struct sockaddr_storage up;
  socklen_t uplen = 0;
  int err = parse_upstream(upstream_host, upstream_port, &up, &uplen);
  if (err) {
    errno = err;
    return NULL;
  }
  fp_proxy *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->up = up;
  p->uplen = uplen;
  p->mode = p->cur_mode = FP_PASS;
  p->wake[0] = p->wake[1] = -1;
  p->lfd = make_listener(&p->port);
  if (p->lfd < 0) goto fail;
  p->listening = true;
  if (pipe2(p->wake, O_NONBLOCK | O_CLOEXEC) != 0) goto fail;
  if ((err = pthread_mutex_init(&p->mu, NULL)) != 0) goto fail_err;
  if ((err = pthread_cond_init(&p->cv, NULL)) != 0) {
    pthread_mutex_destroy(&p->mu);
    goto fail_err;
  }
  if ((err = pthread_create(&p->th, NULL, loop_main, p)) != 0) {
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    goto fail_err;
  }
  return p;
fail_err:
  errno = err;
fail:
  err = errno;
  if (p->lfd >= 0) close(p->lfd);
  if (p->wake[0] >= 0) close(p->wake[0]);
  if (p->wake[1] >= 0) close(p->wake[1]);
  free(p);
  errno = err;
  return NULL;
}

uint16_t fp_port(const fp_proxy *p) { return p->port; }

static void wake(fp_proxy *p) {
  char b = 1;
  ssize_t r;
  do r = write(p->wake[1], &b, 1);
  while (r < 0 && errno == EINTR);
  /* EAGAIN: the pipe is full, so the loop is already awake. */
}

void fp_set_mode(fp_proxy *p, fp_mode mode, uint64_t arg) {
  if ((unsigned)mode > (unsigned)FP_REFUSE) return;
  pthread_mutex_lock(&p->mu);
  p->mode = mode;
  p->arg = arg;
  uint64_t my = ++p->gen;
  wake(p);
  while (p->applied_gen < my && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

fp_mode fp_get_mode(fp_proxy *p, uint64_t *arg) {
  pthread_mutex_lock(&p->mu);
  fp_mode m = p->mode;
  if (arg) *arg = p->arg;
  pthread_mutex_unlock(&p->mu);
  return m;
}

void fp_kill_all(fp_proxy *p) {
  pthread_mutex_lock(&p->mu);
  uint64_t my = ++p->kill_req;
  wake(p);
  while (p->kill_done < my && !p->stop) pthread_cond_wait(&p->cv, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

unsigned fp_accepted(const fp_proxy *p) { return atomic_load(&p->accepted); }
unsigned fp_active(const fp_proxy *p) { return atomic_load(&p->active); }
uint64_t fp_bytes_to_client(const fp_proxy *p) { return atomic_load(&p->to_client); }
uint64_t fp_bytes_to_server(const fp_proxy *p) { return atomic_load(&p->to_server); }

bool fp_wait_active(const fp_proxy *p, unsigned n, int timeout_ms) {
  uint64_t end = mono_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * NS_PER_MS;
  for (;;) {
    if (atomic_load(&p->active) == n) return true;
    if (mono_ns() >= end) return false;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

void fp_stop(fp_proxy *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  wake(p);
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  pthread_join(p->th, NULL);
  close(p->lfd);
  close(p->wake[0]);
  close(p->wake[1]);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
