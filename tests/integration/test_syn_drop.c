/* The connect deadline when a firewall rule drops the SYN (no server
 * needed; only 127.0.0.1 is ever used).
 *
 * The adapter tests prove the connect deadline against a listener whose
 * accept queue is full (testutil.h unanswered_listener). This is the other
 * way a SYN goes unanswered in production: a security group or firewall
 * silently drops it. At the very start of main(), while still
 * single-threaded, the program enters a private network namespace
 * (unshare(CLONE_NEWNET): it affects this process only, so the rest of the
 * suite is untouched), brings its loopback interface up (SIOCSIFFLAGS) and
 * installs
 *
 *   iptables -w 5 -A INPUT -p tcp --dport P --syn -j DROP
 *
 * for a port P picked by binding a socket. Then, for each adapter (Redis,
 * PostgreSQL, HTTP), a client pointed at 127.0.0.1:P with a 300 ms connect
 * timeout and a 1 s deadline must give up at the connect timeout (+ 100 ms
 * slack) with the status its header documents for a connect timeout
 * (RESIL_E_TIMEOUT; HTTP: phase "connect"), a message naming the connect
 * phase and the address, one timeout in the dependency's snapshot (not a
 * failure, not an ignored outcome), and no descriptor left open.
 *
 * A DNS server that never answers, the other network blackhole a
 * dependency's name can fall into: the program also enters a private mount
 * namespace (unshare(CLONE_NEWNS), mounts made private) and bind-mounts over
 * /etc/resolv.conf a file naming 127.0.0.1 (of the private network
 * namespace) as the only nameserver, where a UDP and a TCP socket are bound
 * to port 53 and never answer (glibc would wait 2 s x 2 attempts). A client
 * of each adapter for the name "dns-blackhole.resil-test", with a 300 ms
 * connect timeout and a 1 s deadline, must give up at the connect timeout
 * (+ slack) with RESIL_E_TIMEOUT (HTTP: phase "dns"), naming the host; HTTP
 * both with curl's threaded resolver (the default: curl must not wait for
 * its resolver thread when the transfer ends, CURLOPT_QUICK_EXIT) and with
 * resolve_with_resil.
 *
 * Without the permission (unshare fails, e.g. EPERM outside a privileged
 * container) or without a working iptables, every case skips saying why,
 * unless RESIL_REQUIRE_NETNS=1, which makes them fail instead. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "resil/http.h"
#include "resil/pg.h"
#include "resil/redis.h"
#include "testutil.h"

extern char **environ;

#define CONNECT_TIMEOUT_MS 300
#define DEADLINE_MS 1000
/* 100 ms, 300 ms under the sanitizers: below DEADLINE_MS - CONNECT_TIMEOUT_MS */
#define SLACK_MS test_slack_ms(CONNECT_TIMEOUT_MS)

static char netns_problem[512]; /* why the namespace could not be set up; "" if it was */
static char dns_problem[512];   /* why the DNS blackhole could not be set up; "" if it was */
static uint16_t drop_port;      /* SYNs to 127.0.0.1:drop_port are dropped */
static uint16_t open_port;      /* no rule, no listener: refused */

/* ---- set-up, in main() before any thread exists ---------------------- */

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(netns_problem, sizeof netns_problem, fmt, ap);
  va_end(ap);
}

static bool loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    problem("socket: %s", strerror(errno));
    return false;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  bool ok = false;
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
    problem("ioctl(SIOCGIFFLAGS, lo): %s", strerror(errno));
  } else {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
      problem("ioctl(SIOCSIFFLAGS, lo up): %s", strerror(errno));
    else
      ok = true;
  }
  close(s);
  return ok;
}

/* Two distinct free loopback ports of the new namespace. */
static bool pick_ports(void) {
  int s[2] = {-1, -1};
  uint16_t port[2] = {0, 0};
  for (int i = 0; i < 2; i++) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    s[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s[i] < 0 || bind(s[i], (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s[i], (struct sockaddr *)&a, &len) != 0) {
      problem("binding a loopback port: %s", strerror(errno));
      break;
    }
    port[i] = ntohs(a.sin_port);
  }
  for (int i = 0; i < 2; i++)
    if (s[i] >= 0) close(s[i]);
  drop_port = port[0];
  open_port = port[1];
  return drop_port && open_port;
}

/* Run iptables with the DROP rule; its output goes into the problem text
 * if it fails. */
static bool install_rule(void) {
  static const char *const paths[] = {"/usr/sbin/iptables", "/sbin/iptables"};
  const char *bin = NULL;
  for (size_t i = 0; i < sizeof paths / sizeof paths[0] && !bin; i++)
    if (access(paths[i], X_OK) == 0) bin = paths[i];
  if (!bin) {
    problem("iptables is not installed (Debian package iptables)");
    return false;
  }
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)drop_port);
  const char *argv[] = {bin, "-w", "5", "-A", "INPUT", "-p", "tcp", "--dport", port,
                        "--syn", "-j", "DROP", NULL};
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    problem("pipe2: %s", strerror(errno));
    return false;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out[1], 2);
  pid_t pid;
  int e = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  if (e != 0) {
    close(out[0]);
    problem("posix_spawn %s: %s", bin, strerror(e));
    return false;
  }
  char text[256];
  size_t len = 0;
  for (;;) {
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n && len + 1 < sizeof text; i++)
      text[len++] = buf[i] == '\n' ? ' ' : buf[i];
  }
  text[len] = 0;
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    problem("'%s -w 5 -A INPUT -p tcp --dport %s --syn -j DROP' failed (%s %d): %s", bin, port,
            WIFEXITED(status) ? "exit status" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), text);
    return false;
  }
  return true;
}

#define BLACKHOLE_NAME "dns-blackhole.resil-test"

/* In the private network namespace (loopback up): a private mount
 * namespace whose /etc/resolv.conf names 127.0.0.1:53, where nothing ever
 * answers. The sockets stay open (and unread) for the life of the process. */
static void setup_dns_blackhole(void) {
  if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
    snprintf(dns_problem, sizeof dns_problem, "private mount namespace: %s", strerror(errno));
    return;
  }
  static char path[] = "/tmp/resil-resolv.XXXXXX";
  int fd = mkstemp(path);
  static const char conf[] = "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n";
  bool wrote = fd >= 0 && write(fd, conf, sizeof conf - 1) == (ssize_t)(sizeof conf - 1);
  if (fd >= 0) close(fd);
  bool mounted = wrote && mount(path, "/etc/resolv.conf", NULL, MS_BIND, NULL) == 0;
  int e = errno;
  if (fd >= 0) unlink(path); /* the mount keeps the file */
  if (!mounted) {
    snprintf(dns_problem, sizeof dns_problem, "bind-mounting a resolv.conf: %s", strerror(e));
    return;
  }
  static const int types[] = {SOCK_DGRAM, SOCK_STREAM};
  for (int i = 0; i < 2; i++) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s53 = socket(AF_INET, types[i] | SOCK_CLOEXEC, 0);
    if (s53 < 0 || bind(s53, (struct sockaddr *)&a, sizeof a) != 0 ||
        (types[i] == SOCK_STREAM && listen(s53, 64) != 0)) {
      snprintf(dns_problem, sizeof dns_problem, "binding 127.0.0.1:53: %s", strerror(errno));
      return;
    }
  }
}

static void setup_netns(void) {
  if (unshare(CLONE_NEWNET) != 0) {
    problem("unshare(CLONE_NEWNET): %s (needs CAP_SYS_ADMIN, e.g. root outside an "
            "unprivileged container)",
            strerror(errno));
    return;
  }
  if (loopback_up() && pick_ports()) install_rule();
  if (netns_problem[0])
    snprintf(dns_problem, sizeof dns_problem, "no network namespace: %.400s", netns_problem);
  else
    setup_dns_blackhole();
}

/* Every case starts with this: skip (or fail with RESIL_REQUIRE_NETNS=1)
 * when the namespace or the rule is not in place. */
static void need_netns(void) {
  if (!netns_problem[0]) return;
  const char *req = test_env("RESIL_REQUIRE_NETNS");
  if (req && strcmp(req, "1") == 0)
    fail_msg("RESIL_REQUIRE_NETNS=1 but the SYN-drop namespace could not be set up: %s",
             netns_problem);
  print_message("# SKIP syn_drop: cannot drop SYNs in a private network namespace: %s\n",
                netns_problem);
  skip();
}

static void need_dns_blackhole(void) {
  if (!dns_problem[0]) return;
  const char *req = test_env("RESIL_REQUIRE_NETNS");
  if (req && strcmp(req, "1") == 0)
    fail_msg("RESIL_REQUIRE_NETNS=1 but the DNS blackhole could not be set up: %s", dns_problem);
  print_message("# SKIP dns blackhole: %s\n", dns_problem);
  skip();
}

static uint64_t ms_since(uint64_t t0_ns) { return (resil_now_ns() - t0_ns) / 1000000u; }

/* A non-blocking connect to 127.0.0.1:port: 1 if still in progress after
 * wait_ms, 0 if it finished (*soerr = its error, 0 = connected), -1 on a
 * local error (*soerr = errno). */
static int connect_pending_after(uint16_t port, int wait_ms, int *soerr) {
  *soerr = 0;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *soerr = errno;
    return -1;
  }
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
    rc = 0;
  } else if (errno != EINPROGRESS) {
    *soerr = errno;
    rc = 0;
  } else {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n;
    while ((n = poll(&p, 1, wait_ms)) < 0 && errno == EINTR) {
    }
    if (n == 0) {
      rc = 1;
    } else if (n < 0) {
      *soerr = errno;
    } else {
      socklen_t sl = sizeof *soerr;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, soerr, &sl) != 0) *soerr = errno;
      rc = 0;
    }
  }
  close(fd);
  return rc;
}

/* The dependency counted exactly one admitted call, as a timeout, and its
 * pool keeps `open` connections (an HTTP handle whose lookup by resil
 * failed made no connection and is kept). */
static void assert_one_timeout(resil_dep *dep, uint32_t open) {
  resil_dep_stats s;
  resil_dep_get_stats(dep, &s);
  if (s.admitted != 1 || s.calls[RESIL_OUTCOME_TIMEOUT] != 1 ||
      s.calls[RESIL_OUTCOME_FAILURE] != 0 || s.calls[RESIL_OUTCOME_IGNORED] != 0 ||
      s.calls[RESIL_OUTCOME_SUCCESS] != 0 || s.rejected_after_admit != 0 || s.in_flight != 0)
    fail_msg("%s: admitted %llu, success %llu, failure %llu, timeout %llu, ignored %llu, "
             "rejected after admit %llu, in flight %u",
             s.name, (unsigned long long)s.admitted,
             (unsigned long long)s.calls[RESIL_OUTCOME_SUCCESS],
             (unsigned long long)s.calls[RESIL_OUTCOME_FAILURE],
             (unsigned long long)s.calls[RESIL_OUTCOME_TIMEOUT],
             (unsigned long long)s.calls[RESIL_OUTCOME_IGNORED],
             (unsigned long long)s.rejected_after_admit, s.in_flight);
  assert_true(s.has_pool);
  assert_int_equal(s.pool.open, open); /* nothing half-connected is kept */
  assert_int_equal(s.pool.in_use, 0);
}

/* Redis and PostgreSQL: the pool's connect is the TCP connect, and it is
 * counted as timed out. */
static void assert_pool_connect_timed_out(resil_pool *pool) {
  resil_pool_stats ps;
  resil_pool_get_stats(pool, &ps);
  assert_int_equal(ps.connects_timed_out, 1);
  assert_int_equal(ps.connects_failed, 0);
  assert_int_equal(ps.connects_ok, 0);
}

/* The call took the connect timeout, not the deadline, and not less. */
static void assert_took_connect_timeout(uint64_t took_ms, const char *what, resil_status st,
                                        const char *msg) {
  if (took_ms + 10 < CONNECT_TIMEOUT_MS || took_ms > CONNECT_TIMEOUT_MS + SLACK_MS)
    fail_msg("%s returned %s after %llu ms, expected %d..%d ms: %s", what,
             resil_status_name(st), (unsigned long long)took_ms, CONNECT_TIMEOUT_MS - 10,
             (int)(CONNECT_TIMEOUT_MS + SLACK_MS), msg);
}

static void assert_msg_has(const char *msg, const char *needle) {
  if (!strstr(msg, needle)) fail_msg("message lacks \"%s\": %s", needle, msg);
}

/* A Redis client of host:port with a CONNECT_TIMEOUT_MS connect timeout;
 * one PING under a DEADLINE_MS deadline, its duration in *took_ms. */
static resil_redis *redis_client(const char *name, const char *host, uint16_t port) {
  resil_redis_config cfg;
  resil_redis_config_init(&cfg, name);
  cfg.host = host;
  cfg.port = port;
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  resil_err err = {0};
  resil_redis *r = resil_redis_new(&cfg, &err);
  if (!r) fail_msg("resil_redis_new: %s", err.msg);
  return r;
}

static resil_status redis_ping(resil_redis *r, uint64_t *took_ms, resil_err *err) {
  redisReply *rep = NULL;
  uint64_t t0 = resil_now_ns();
  resil_status st =
      resil_redis_command(r, resil_deadline_in_ms(DEADLINE_MS), 0, &rep, err, "PING");
  *took_ms = ms_since(t0);
  assert_null(rep);
  return st;
}

/* The same for PostgreSQL: a client of host:port, one SELECT 1. */
static resil_pg *pg_client(const char *name, const char *host, uint16_t port) {
  char conninfo[128];
  snprintf(conninfo, sizeof conninfo, "host=%s port=%u dbname=x user=x", host, (unsigned)port);
  resil_pg_config cfg;
  resil_pg_config_init(&cfg, name);
  cfg.conninfo = conninfo;
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  resil_err err = {0};
  resil_pg *pg = resil_pg_new(&cfg, &err);
  if (!pg) fail_msg("resil_pg_new: %s", err.msg);
  return pg;
}

static resil_status pg_select1(resil_pg *pg, uint64_t *took_ms, resil_err *err) {
  PGresult *res = NULL;
  uint64_t t0 = resil_now_ns();
  resil_status st =
      resil_pg_query(pg, resil_deadline_in_ms(DEADLINE_MS), 0, "SELECT 1", 0, NULL, &res, err);
  *took_ms = ms_since(t0);
  assert_null(res); /* pg.h: *res is NULL unless the server rejected the statement */
  return st;
}

/* ---- tests ------------------------------------------------------------ */

/* The rule is in force: a SYN to the dropped port stays unanswered (no
 * ECONNREFUSED, which would mean the rule did not apply), while one to a
 * port without the rule is refused at once (so loopback is up and the
 * difference is the rule's). */
static void the_rule_drops_the_syn(void **state) {
  (void)state;
  need_netns();
  int err = 0;
  int r = connect_pending_after(drop_port, 200, &err);
  if (r != 1)
    fail_msg("connect to 127.0.0.1:%u did not hang for 200 ms (%s): the DROP rule did not apply",
             (unsigned)drop_port, r == 0 ? (err ? strerror(err) : "connected") : strerror(err));
  r = connect_pending_after(open_port, 200, &err);
  if (r != 0 || err != ECONNREFUSED)
    fail_msg("connect to 127.0.0.1:%u (no rule) was not refused: %s", (unsigned)open_port,
             r == 1 ? "still pending after 200 ms" : strerror(err));
}

static void redis_connect_times_out_at_connect_timeout(void **state) {
  (void)state;
  need_netns();
  int fds_before = count_open_fds();
  resil_redis *r = redis_client("syn-drop-redis", "127.0.0.1", drop_port);
  resil_err err = {0};
  uint64_t took;
  resil_status st = redis_ping(r, &took, &err);
  /* redis.h: "RESIL_E_TIMEOUT  the deadline (or command_timeout_ms) passed
   * while connecting"; the message names the phase and the address:
   * "<name>: connect to 127.0.0.1:P: timed out after N ms (connect_timeout_ms)" */
  if (st != RESIL_E_TIMEOUT) fail_msg("status %s: %s", resil_status_name(st), err.msg);
  assert_int_equal(err.status, RESIL_E_TIMEOUT);
  assert_took_connect_timeout(took, "resil_redis_command", st, err.msg);
  char where[64];
  snprintf(where, sizeof where, "connect to 127.0.0.1:%u: timed out", (unsigned)drop_port);
  assert_msg_has(err.msg, where);
  assert_msg_has(err.msg, "syn-drop-redis");
  assert_one_timeout(resil_redis_dep(r), 0);
  assert_pool_connect_timed_out(resil_redis_pool(r));
  resil_redis_free(r);
  assert_int_equal(count_open_fds(), fds_before);
}

static void pg_connect_times_out_at_connect_timeout(void **state) {
  (void)state;
  need_netns();
  int fds_before = count_open_fds();
  resil_pg *pg = pg_client("syn-drop-pg", "127.0.0.1", drop_port);
  resil_err err = {0};
  uint64_t took;
  resil_status st = pg_select1(pg, &took, &err);
  /* pg.h: "RESIL_E_TIMEOUT  our deadline passed"; the connect is bounded
   * by min(connect_timeout_ms, the deadline). */
  if (st != RESIL_E_TIMEOUT) fail_msg("status %s: %s", resil_status_name(st), err.msg);
  assert_int_equal(err.status, RESIL_E_TIMEOUT);
  assert_took_connect_timeout(took, "resil_pg_query", st, err.msg);
  char where[64];
  snprintf(where, sizeof where, "127.0.0.1:%u", (unsigned)drop_port);
  assert_msg_has(err.msg, "connect");
  assert_msg_has(err.msg, where);
  assert_msg_has(err.msg, "syn-drop-pg");
  assert_one_timeout(resil_pg_dep(pg), 0);
  assert_pool_connect_timed_out(resil_pg_pool(pg));
  resil_pg_stats ps;
  resil_pg_get_stats(pg, &ps);
  assert_int_equal(ps.connects_timed_out, 1);
  assert_int_equal(ps.connects_failed, 0);
  assert_int_equal(ps.connects_ok, 0);
  resil_pg_free(pg);
  assert_int_equal(count_open_fds(), fds_before);
}

static void http_connect_times_out_at_connect_timeout(void **state) {
  (void)state;
  need_netns();
  /* The first client runs curl_global_init, which may keep descriptors of
   * its own (TLS library set-up) for the life of the process: count after. */
  resil_http_config cfg;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u", (unsigned)drop_port);
  resil_http_config_init(&cfg, "syn-drop-warmup");
  cfg.base_url = url;
  resil_http_free(resil_http_new(&cfg, NULL));

  int fds_before = count_open_fds();
  resil_http_config_init(&cfg, "syn-drop-http");
  cfg.base_url = url;
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  resil_http_response resp;
  uint64_t t0 = resil_now_ns();
  resil_status st = resil_http_get(h, resil_deadline_in_ms(DEADLINE_MS), "/x", &resp, &err);
  uint64_t took = ms_since(t0);
  /* http.h: "connect or transfer timeout ... RESIL_E_TIMEOUT", the
   * response records the phase (connect) and curl's code; nothing was
   * received. The message names the method, the URL (the address) and the
   * phase: "http '<name>': GET http://127.0.0.1:P/x: connect: ..." */
  if (st != RESIL_E_TIMEOUT || resp.phase != RESIL_HTTP_PHASE_CONNECT)
    fail_msg("status %s, phase %s: %s", resil_status_name(st), resil_http_phase_name(resp.phase),
             err.msg);
  assert_int_equal(err.status, RESIL_E_TIMEOUT);
  assert_int_equal(resp.curl_code, 28); /* CURLE_OPERATION_TIMEDOUT */
  assert_int_equal(resp.status, 0);
  assert_int_equal(resp.attempts, 1);
  assert_null(resp.body);
  assert_took_connect_timeout(took, "resil_http_get", st, err.msg);
  char where[96];
  snprintf(where, sizeof where, "GET http://127.0.0.1:%u/x: connect: ", (unsigned)drop_port);
  assert_msg_has(err.msg, where);
  assert_msg_has(err.msg, "syn-drop-http");
  resil_http_response_free(&resp);
  assert_one_timeout(resil_http_dep(h), 0);
  /* The pool's "connect" made the easy handle (no I/O); the handle whose
   * transfer failed was closed as broken, with its socket. */
  resil_pool_stats ps;
  resil_pool_get_stats(resil_http_pool(h), &ps);
  assert_int_equal(ps.closed[RESIL_POOL_CLOSE_BROKEN], 1);
  resil_http_free(h);
  assert_int_equal(count_open_fds(), fds_before);
}

/* ---- a DNS server that never answers ------------------------------------ */

typedef struct lookup {
  _Atomic bool done;
  int rc;
} lookup;

static void *lookup_main(void *arg) {
  lookup *l = arg;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  l->rc = getaddrinfo(BLACKHOLE_NAME, "80", &hints, &res);
  if (res) freeaddrinfo(res);
  atomic_store(&l->done, true);
  return NULL;
}

/* The set-up holds: a plain getaddrinfo() of the name is still waiting
 * after 500 ms (it did not fail at once: the name reaches the silent
 * nameserver). The lookup thread is left to end on its own. */
static void the_nameserver_never_answers(void **state) {
  (void)state;
  need_dns_blackhole();
  static lookup l; /* outlives the test: the thread may run on */
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, lookup_main, &l), 0);
  pthread_detach(th);
  test_sleep_ms(500);
  if (atomic_load(&l.done))
    fail_msg("getaddrinfo(\"%s\") returned within 500 ms (%s): the blackhole did not apply",
             BLACKHOLE_NAME, gai_strerror(l.rc));
}

/* The call took the connect timeout (the lookup is part of the connect),
 * ended RESIL_E_TIMEOUT and named the host. */
static void assert_dns_timeout(const char *what, resil_status st, uint64_t took,
                               const char *msg) {
  if (st != RESIL_E_TIMEOUT) fail_msg("%s: status %s: %s", what, resil_status_name(st), msg);
  assert_took_connect_timeout(took, what, st, msg);
  assert_msg_has(msg, BLACKHOLE_NAME);
}

static void redis_lookup_times_out_at_connect_timeout(void **state) {
  (void)state;
  need_dns_blackhole();
  resil_redis *r = redis_client("dns-blackhole-redis", BLACKHOLE_NAME, open_port);
  resil_err err = {0};
  uint64_t took;
  resil_status st = redis_ping(r, &took, &err);
  assert_dns_timeout("resil_redis_command", st, took, err.msg);
  assert_one_timeout(resil_redis_dep(r), 0);
  resil_redis_free(r);
}

static void pg_lookup_times_out_at_connect_timeout(void **state) {
  (void)state;
  need_dns_blackhole();
  resil_pg *pg = pg_client("dns-blackhole-pg", BLACKHOLE_NAME, open_port);
  resil_err err = {0};
  uint64_t took;
  resil_status st = pg_select1(pg, &took, &err);
  assert_dns_timeout("resil_pg_query", st, took, err.msg);
  assert_one_timeout(resil_pg_dep(pg), 0);
  resil_pg_free(pg);
}

static void http_lookup(bool with_resil) {
  need_dns_blackhole();
  char url[96];
  snprintf(url, sizeof url, "http://%s:%u", BLACKHOLE_NAME, (unsigned)open_port);
  resil_http_config cfg;
  resil_http_config_init(&cfg, with_resil ? "dns-blackhole-http-resil" : "dns-blackhole-http");
  cfg.base_url = url;
  cfg.connect_timeout_ms = CONNECT_TIMEOUT_MS;
  cfg.resolve_with_resil = with_resil;
  resil_err err = {0};
  resil_http *h = resil_http_new(&cfg, &err);
  if (!h) fail_msg("resil_http_new: %s", err.msg);
  resil_http_response resp;
  uint64_t t0 = resil_now_ns();
  resil_status st = resil_http_get(h, resil_deadline_in_ms(DEADLINE_MS), "/x", &resp, &err);
  assert_dns_timeout("resil_http_get", st, ms_since(t0), err.msg);
  if (resp.phase != RESIL_HTTP_PHASE_DNS)
    fail_msg("phase %s, expected dns: %s", resil_http_phase_name(resp.phase), err.msg);
  assert_msg_has(err.msg, "dns: ");
  resil_http_response_free(&resp);
  assert_one_timeout(resil_http_dep(h), with_resil ? 1 : 0);
  resil_http_free(h);
}

/* curl's threaded resolver (the default): the transfer ends at the connect
 * timeout, and neither it nor resil_http_free() waits for the resolver
 * thread, still blocked in getaddrinfo(). */
static void http_lookup_by_curl_times_out_at_connect_timeout(void **state) {
  (void)state;
  uint64_t t0 = resil_now_ns();
  http_lookup(false);
  uint64_t took = ms_since(t0);
  if (took > CONNECT_TIMEOUT_MS + SLACK_MS)
    fail_msg("the call and resil_http_free() took %llu ms: curl waited for its resolver thread",
             (unsigned long long)took);
}

static void http_lookup_by_resil_times_out_at_connect_timeout(void **state) {
  (void)state;
  http_lookup(true);
}

/* With --rule-check only the check of the set-up itself (meson suite
 * 'tools'); without, the adapters' cases (each fails, refused rather than
 * timed out, if the rule does not hold). */
int main(int argc, char **argv) {
  setup_netns(); /* first, while this process has a single thread */
  if (argc > 1 && strcmp(argv[1], "--rule-check") == 0) {
    const struct CMUnitTest rule[] = {
        cmocka_unit_test(the_rule_drops_the_syn),
        cmocka_unit_test(the_nameserver_never_answers),
    };
    return cmocka_run_group_tests_name("syn_drop_rule", rule, NULL, NULL);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(redis_connect_times_out_at_connect_timeout),
      cmocka_unit_test(pg_connect_times_out_at_connect_timeout),
      cmocka_unit_test(http_connect_times_out_at_connect_timeout),
      cmocka_unit_test(redis_lookup_times_out_at_connect_timeout),
      cmocka_unit_test(pg_lookup_times_out_at_connect_timeout),
      cmocka_unit_test(http_lookup_by_curl_times_out_at_connect_timeout),
      cmocka_unit_test(http_lookup_by_resil_times_out_at_connect_timeout),
  };
  return cmocka_run_group_tests_name("syn_drop", tests, NULL, NULL);
}
