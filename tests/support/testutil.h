/* Shared helpers for resil's cmocka tests. Include after cmocka.h. */
#ifndef RESIL_TESTUTIL_H
#define RESIL_TESTUTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Number of open file descriptors of this process (counts /proc/self/fd). */
static inline int count_open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the DIR's own fd */
}

/* Environment variable or NULL if unset/empty. */
static inline const char *test_env(const char *name) {
  const char *v = getenv(name);
  return (v && *v) ? v : NULL;
}

#endif
