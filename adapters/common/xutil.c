/* Helpers shared by the adapters: see xutil.h. */
#include "xutil.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "resil/lifecycle.h"

bool resil_x_silence_fd(int fd) {
  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (nul < 0) return false;
  int r;
  do r = dup2(nul, fd);
  while (r < 0 && errno == EINTR);
  close(nul);
  return r >= 0;
}

bool resil_x_local_errno(int e) {
  return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

char *resil_x_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

resil_status resil_x_start_pool(const resil_x_client *c, resil_dep *dep, resil_pool **pool,
                                resil_err *err) {
  resil_pool_config pc = c->pool;
  if (!pc.name) pc.name = c->name;
  if (c->connect_timeout_ms) pc.connect_timeout_ms = c->connect_timeout_ms;
  *pool = c->hosts ? resil_pool_new_endpoints(&pc, &c->connector, c->connect_to, c->hosts,
                                              c->default_port, c->outlier, err)
          : c->dns_host ? resil_pool_new_endpoints_dns(&pc, &c->connector, c->connect_to,
                                                       c->dns_host, c->dns_port, c->outlier, err)
                        : resil_pool_new(&pc, &c->connector, err);
  if (!*pool) return err ? err->status : RESIL_E_NOMEM;
  resil_dep_attach_pool(dep, *pool);
  resil_dep_set_memory_bound(dep, c->memory_bound);
  if (resil_dep_set_probe(dep, c->probe, c->connector.ctx) != RESIL_OK)
    return resil_err_set(err, RESIL_E_SYSTEM, "%s: cannot start the recovery probe", c->label);
  return RESIL_OK;
}

void *resil_x_client_alloc(size_t size, const char *name, resil_err *err) {
  void *p = calloc(1, size);
  if (!p) resil_err_set(err, RESIL_E_NOMEM, "%s: out of memory", name);
  return p;
}

bool resil_x_stats_begin(void *out, size_t size, const void *client) {
  if (!out) return false;
  memset(out, 0, size);
  return client != NULL;
}

void resil_x_config_init(void *cfg, size_t size, resil_dep_config *dep, resil_pool_config *pool,
                         const char *name) {
  memset(cfg, 0, size);
  resil_dep_config_init(dep, name);
  resil_pool_config_init(pool);
}

uint64_t resil_x_memory_bound(const resil_dep_config *dep, uint64_t pool_max,
                              uint64_t conn_bytes, uint64_t per_call) {
  uint64_t calls = pool_max < dep->limit.max_concurrent ? pool_max : dep->limit.max_concurrent;
  return resil_dep_config_memory_bound(dep) + pool_max * conn_bytes + calls * per_call;
}

int resil_x_wait_fd(int fd, short events, resil_deadline d) {
  if (fd < 0) {
    errno = EBADF;
    return -1;
  }
  for (;;) {
    resil_deadline b = resil_drain_bound(d);
    int64_t ms = resil_deadline_remaining_ms(b);
    if (ms <= 0) return 0;
    if (ms > RESIL_DRAIN_CHECK_MS && !resil_deadline_is_set(resil_drain_cutoff()))
      ms = RESIL_DRAIN_CHECK_MS;
    if (ms > INT_MAX) ms = INT_MAX;
    struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
    int r = poll(&pfd, 1, (int)ms);
    if (r > 0) return pfd.revents ? pfd.revents : events;
    if (r == 0) {
      /* poll rounds ms up: the bound has passed unless the clock is coarse */
      if (resil_deadline_expired(b)) return 0;
      continue;
    }
    if (errno == EINTR) continue;
    return -1;
  }
}
