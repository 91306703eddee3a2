/* Helpers shared by the adapters (as curl's lib/curlx): compiled into a
 * static library linked into each adapter and into the tests that include an
 * adapter's source; never installed, never exported (the project builds with
 * -fvisibility=hidden). Not part of resil's API. */
#ifndef RESIL_ADAPTER_XUTIL_H
#define RESIL_ADAPTER_XUTIL_H

#include <stdbool.h>

#include "resil/deadline.h"

/* Point fd at /dev/null, so that whatever a driver sends while freeing a
 * connection inherited from the parent of a fork goes nowhere (and a read
 * sees end of file): the parent's session on the shared socket is
 * untouched. False if that could not be done (the caller then leaks the
 * driver handle rather than risk ending the parent's session). */
bool resil_x_silence_fd(int fd);

/* A malloc'd copy of s, or NULL (s NULL, or out of memory). */
char *resil_x_strdup(const char *s);

/* Wait for events (poll(2) flags) on fd until d (always set), or the
 * process's drain cutoff if earlier (resil_drain_bound; re-checked every
 * RESIL_DRAIN_CHECK_MS while no drain has started, so a long wait that
 * began before a drain notices it). Returns the revents (> 0), 0 when the
 * bound passed, -1 on a poll error or a negative fd (errno set). */
int resil_x_wait_fd(int fd, short events, resil_deadline d);

#endif
