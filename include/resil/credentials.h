/* resil: passwords that rotate.
 *
 * Two ways for an adapter (Redis, PostgreSQL) to get the password of each
 * NEW connection instead of a fixed one from its configuration, so that a
 * rotated secret is picked up without restarting the process:
 *
 *   - a password file (PASSWORD_FILE keys; e.g. a Secrets Manager secret
 *     mounted by a sidecar, a Kubernetes/ECS volume): resil_password_file
 *     below. It is checked cheaply (one stat(): inode, size, mtime, ctime) at
 *     most every check_ms before a connect, and at once when the server has
 *     just refused the password; it is read again only when it changed (or,
 *     after a refusal, when it was last read check_ms ago or more). A file
 *     that vanished or became unreadable at run time keeps the last good
 *     password in use; the problem is counted and kept as last_error (it
 *     names the file, never its content).
 *   - a callback (resil_password_fn) called for each new connection, e.g. an
 *     RDS IAM token generator (tokens live 15 minutes: cache one and renew
 *     it ahead of expiry in the callback).
 *
 * Connections already open stay open: servers keep authenticated sessions
 * when a password changes, so a rotation fails no call that does not need a
 * new connection between the server's change and the file's.
 *
 * Secrets never appear in an error message, a metric, a stats struct or a
 * configuration dump: messages name the file (and the errno text), never
 * what it holds.
 *
 * Thread safety: all functions are thread-safe.
 */
#ifndef RESIL_CREDENTIALS_H
#define RESIL_CREDENTIALS_H

#include <stddef.h>
#include <stdint.h>

#include "resil/status.h"

RESIL_BEGIN_DECLS

/* Longest password or token resil handles, including the NUL. */
#define RESIL_PASSWORD_MAX 4096

/* Flag for resil_password_fn and resil_password_file_get: the server has
 * just refused the password given for the previous connect (PostgreSQL
 * 28P01; Redis WRONGPASS, NOAUTH or "invalid password"). */
#define RESIL_PASSWORD_AUTH_FAILED 0x1u

/* A password supplier: write the password for a new connection into buf as
 * a NUL-terminated string of at most size - 1 bytes (size is
 * RESIL_PASSWORD_MAX) and return 0; return non-zero when none is available
 * (the connect then fails with RESIL_E_FAILURE "password callback failed";
 * do not put the secret in any message). flags: RESIL_PASSWORD_AUTH_FAILED
 * when the server refused the previous password (renew a cached token);
 * after such a call the adapter retries the connect once if the answer
 * differs. Called on the connecting thread (a caller's, the pool's
 * housekeeper or a recovery probe), possibly from several threads at once,
 * inside the connect's deadline: return quickly (no network call per
 * connect: cache the token). */
typedef int (*resil_password_fn)(void *ctx, unsigned flags, char *buf, size_t size);

/* Default for check_ms: how often, at most, the file is stat()ed before
 * new connections. */
#define RESIL_PASSWORD_FILE_CHECK_MS 2000

typedef struct resil_password_file resil_password_file;

/* Check that path names a readable, non-empty file whose first line fits
 * (what resil_password_file_open() needs), without keeping anything. Errors
 * (RESIL_E_INVALID) name the file: "cannot read '/run/secrets/db': No such
 * file or directory", "'/run/secrets/db' is empty", "'...' is longer than
 * 4095 bytes". Never shows the content. */
RESIL_API resil_status resil_password_file_check(const char *path, resil_err *err);

/* Read the password file at path (copied) and watch it (see the top of
 * this file). The password is the file's content up to the first line end
 * ("\n" or "\r\n"); anything after it is ignored; it must be 1..4095 bytes.
 * check_ms: 0 = RESIL_PASSWORD_FILE_CHECK_MS. NULL on error (as
 * resil_password_file_check, or RESIL_E_NOMEM). Free with
 * resil_password_file_free(). */
RESIL_API resil_password_file *resil_password_file_open(const char *path, uint32_t check_ms,
                                                        resil_err *err);

/* Copy the current password into buf (NUL-terminated), first checking the
 * file if check_ms has passed since the last check, or at once with
 * RESIL_PASSWORD_AUTH_FAILED in flags; re-reads it when it changed. When the
 * file cannot be read any more the last good password is returned and the
 * error counted (RESIL_OK still). Errors: RESIL_E_INVALID (NULL f or buf, or
 * size too small for the password). Sets *changed (may be NULL) when this
 * call read a different password than the previous one. */
RESIL_API resil_status resil_password_file_get(resil_password_file *f, unsigned flags, char *buf,
                                               size_t size, bool *changed, resil_err *err);

typedef struct resil_password_file_stats {
  uint64_t checks;  /* stat() calls */
  uint64_t reads;   /* times the file was read (the first included) */
  uint64_t changes; /* reads that found a different password */
  uint64_t errors;  /* checks or reads that failed (the old password kept) */
  char last_error[RESIL_ERR_MSG_MAX]; /* the latest failure ("" if none); names
                                         the file, never its content */
  /* ABI: sizeof is frozen; new fields come out of this tail (docs/abi.md). */
  unsigned char reserved_[220];
} resil_password_file_stats;

/* A snapshot of f's counters. */
RESIL_API void resil_password_file_get_stats(const resil_password_file *f,
                                             resil_password_file_stats *out);

/* The path (as given). */
RESIL_API const char *resil_password_file_path(const resil_password_file *f);

/* Wipe the password from memory and free f. NULL is a no-op. */
RESIL_API void resil_password_file_free(resil_password_file *f);

RESIL_END_DECLS
#endif
