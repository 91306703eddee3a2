/* Password files that rotate (resil/credentials.h).
 *
 * One mutex per file guards the password and the identity of the file it
 * came from (device, inode, size, mtime, ctime as fstat() saw them when it
 * was read). get() stats the path at most every check_ms, or at once after
 * an authentication failure, and reads it again when the identity changed
 * (an editor's rename gives a new inode, an in-place write a new mtime or
 * size), or after an authentication failure when the last read is check_ms
 * old. Connects are not a hot path: a mutex and, every few seconds, one
 * stat() are nothing next to a TCP and TLS handshake.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "resil/credentials.h"

#define MS 1000000ull

struct resil_password_file {
  pthread_mutex_t mu;
  char *path;
  uint64_t check_ns;
  uint64_t next_check_ns; /* no stat() before this, unless forced */
  uint64_t read_ns;       /* when the file was last read */
  struct stat id;         /* fstat() of what was read */
  char pw[RESIL_PASSWORD_MAX];
  size_t len;
  resil_password_file_stats st;
};

static void wipe(void *p, size_t n) { explicit_bzero(p, n); }

static bool same_file(const struct stat *a, const struct stat *b) {
  return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
         a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Read the password at path into out (size RESIL_PASSWORD_MAX) and *len,
 * its identity into *id. Errors name the file only. */
static resil_status read_password(const char *path, char *out, size_t *len, struct stat *id,
                                  resil_err *err) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return resil_err_set(err, RESIL_E_INVALID, "cannot read '%s': %s", path, strerror(errno));
  resil_status st = RESIL_OK;
  if (fstat(fd, id) != 0) {
    st = resil_err_set(err, RESIL_E_INVALID, "cannot read '%s': %s", path, strerror(errno));
  } else if (S_ISDIR(id->st_mode)) {
    st = resil_err_set(err, RESIL_E_INVALID, "cannot read '%s': is a directory", path);
  }
  char buf[RESIL_PASSWORD_MAX + 1];
  size_t got = 0;
  while (st == RESIL_OK && got < sizeof buf) {
    ssize_t n = read(fd, buf + got, sizeof buf - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      st = resil_err_set(err, RESIL_E_INVALID, "cannot read '%s': %s", path, strerror(errno));
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (st == RESIL_OK) {
    size_t n = 0;
    while (n < got && buf[n] != '\n') n++;
    bool whole_line = n < got; /* a line end was found */
    if (n > 0 && buf[n - 1] == '\r') n--;
    if (!whole_line && got == sizeof buf)
      st = resil_err_set(err, RESIL_E_INVALID, "'%s' is longer than %d bytes", path,
                         RESIL_PASSWORD_MAX - 1);
    else if (n == 0)
      st = resil_err_set(err, RESIL_E_INVALID, "'%s' is empty (no password on its first line)",
                         path);
    else if (n >= RESIL_PASSWORD_MAX)
      st = resil_err_set(err, RESIL_E_INVALID, "'%s' is longer than %d bytes", path,
                         RESIL_PASSWORD_MAX - 1);
    else if (memchr(buf, '\0', n))
      st = resil_err_set(err, RESIL_E_INVALID, "'%s' holds a NUL byte", path);
    if (st == RESIL_OK) {
      memcpy(out, buf, n);
      out[n] = '\0';
      *len = n;
    }
  }
  wipe(buf, sizeof buf);
  return st;
}

resil_status resil_password_file_check(const char *path, resil_err *err) {
  if (!path || !*path) return resil_err_set(err, RESIL_E_INVALID, "is empty");
  char pw[RESIL_PASSWORD_MAX];
  size_t len;
  struct stat id;
  resil_status st = read_password(path, pw, &len, &id, err);
  wipe(pw, sizeof pw);
  return st;
}

resil_password_file *resil_password_file_open(const char *path, uint32_t check_ms,
                                              resil_err *err) {
  if (!path || !*path) {
    resil_err_set(err, RESIL_E_INVALID, "password file: path is empty");
    return NULL;
  }
  resil_password_file *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    resil_err_set(err, RESIL_E_NOMEM, "password file: out of memory");
    return NULL;
  }
  if (read_password(path, f->pw, &f->len, &f->id, err) != RESIL_OK) {
    free(f->path);
    free(f);
    return NULL;
  }
  if (pthread_mutex_init(&f->mu, NULL) != 0) {
    wipe(f->pw, sizeof f->pw);
    free(f->path);
    free(f);
    resil_err_set(err, RESIL_E_SYSTEM, "password file: cannot initialise a mutex");
    return NULL;
  }
  f->check_ns = (uint64_t)(check_ms ? check_ms : RESIL_PASSWORD_FILE_CHECK_MS) * MS;
  uint64_t now = resil_now_ns();
  f->read_ns = now;
  f->next_check_ns = now + f->check_ns;
  f->st.reads = 1;
  return f;
}

/* The check itself, under f->mu. */
static void refresh_locked(resil_password_file *f, bool auth_failed, uint64_t now,
                           bool *changed) {
  f->next_check_ns = now + f->check_ns;
  f->st.checks++;
  struct stat cur;
  resil_err e;
  if (stat(f->path, &cur) != 0) {
    resil_err_set(&e, RESIL_E_INVALID, "cannot read '%s': %s (keeping the last password read)",
                  f->path, strerror(errno));
    f->st.errors++;
    memcpy(f->st.last_error, e.msg, sizeof f->st.last_error);
    return;
  }
  bool stale = !same_file(&cur, &f->id) ||
               (auth_failed && now - f->read_ns >= f->check_ns);
  if (!stale) return;
  char pw[RESIL_PASSWORD_MAX];
  size_t len = 0;
  struct stat id;
  if (read_password(f->path, pw, &len, &id, &e) != RESIL_OK) {
    f->st.errors++;
    snprintf(f->st.last_error, sizeof f->st.last_error, "%.400s (keeping the last password read)",
             e.msg);
    wipe(pw, sizeof pw);
    return;
  }
  f->st.reads++;
  f->read_ns = now;
  f->id = id;
  if (len != f->len || memcmp(pw, f->pw, len) != 0) {
    wipe(f->pw, sizeof f->pw);
    memcpy(f->pw, pw, len + 1);
    f->len = len;
    f->st.changes++;
    if (changed) *changed = true;
  }
  wipe(pw, sizeof pw);
}

resil_status resil_password_file_get(resil_password_file *f, unsigned flags, char *buf,
                                     size_t size, bool *changed, resil_err *err) {
  if (changed) *changed = false;
  if (!f || !buf) return resil_err_set(err, RESIL_E_INVALID, "password file: %s is NULL",
                                       f ? "buf" : "file");
  bool auth_failed = flags & RESIL_PASSWORD_AUTH_FAILED;
  uint64_t now = resil_now_ns();
  pthread_mutex_lock(&f->mu);
  if (auth_failed || now >= f->next_check_ns) refresh_locked(f, auth_failed, now, changed);
  resil_status st = RESIL_OK;
  if (f->len + 1 > size)
    st = resil_err_set(err, RESIL_E_INVALID, "password file '%s': the password does not fit "
                       "in %zu bytes", f->path, size);
  else
    memcpy(buf, f->pw, f->len + 1);
  pthread_mutex_unlock(&f->mu);
  return st;
}

void resil_password_file_get_stats(const resil_password_file *f, resil_password_file_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!f) return;
  resil_password_file *m = (resil_password_file *)(uintptr_t)f;
  pthread_mutex_lock(&m->mu);
  *out = f->st;
  pthread_mutex_unlock(&m->mu);
}

const char *resil_password_file_path(const resil_password_file *f) { return f ? f->path : NULL; }

void resil_password_file_free(resil_password_file *f) {
  if (!f) return;
  pthread_mutex_destroy(&f->mu);
  wipe(f->pw, sizeof f->pw);
  free(f->path);
  free(f);
}
