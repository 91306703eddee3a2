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

char *resil_x_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
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
