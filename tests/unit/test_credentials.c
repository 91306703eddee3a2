/* Password files that rotate (resil/credentials.h): what is read, when the
 * file is checked again (fake clock), and that errors name the file but
 * never show what it holds. Real files under /tmp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#include <stdio.h>
#include <sys/stat.h>

#include "fake_clock.h"
#include "resil/resil.h"

#define SECRET "s3cr3t-Value-71b2"

static char path[128];

/* Write text at path by rename (a new inode), as a secrets agent does. */
static void put(const char *text) {
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(rename(tmp, path), 0);
}

/* Overwrite in place (same inode). */
static void overwrite(const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state) {
  (void)state;
  snprintf(path, sizeof path, "/tmp/resil-test-pw-%d", (int)getpid());
  fake_clock_install();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  unlink(path);
  fake_clock_uninstall();
  return 0;
}

static const char *get(resil_password_file *f, unsigned flags, bool *changed) {
  static char buf[RESIL_PASSWORD_MAX];
  resil_err err = {0};
  assert_int_equal(resil_password_file_get(f, flags, buf, sizeof buf, changed, &err), RESIL_OK);
  return buf;
}

static void no_secret(const char *text) {
  if (strstr(text, SECRET) || strstr(text, "rotated-")) fail_msg("the secret leaked: %s", text);
}

static void the_first_line_is_the_password(void **state) {
  (void)state;
  put(SECRET "\r\nsecond line ignored\n");
  resil_err err = {0};
  assert_int_equal(resil_password_file_check(path, &err), RESIL_OK);
  resil_password_file *f = resil_password_file_open(path, 0, &err);
  assert_non_null(f);
  assert_string_equal(get(f, 0, NULL), SECRET);
  assert_string_equal(resil_password_file_path(f), path);
  put(SECRET); /* no line end at all */
  fake_clock_advance_ms(RESIL_PASSWORD_FILE_CHECK_MS);
  assert_string_equal(get(f, 0, NULL), SECRET);
  resil_password_file_stats st;
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.reads, 2); /* renamed: read again, same password */
  assert_int_equal(st.changes, 0);
  resil_password_file_free(f);
}

static void bad_files_are_refused_naming_the_file_never_the_content(void **state) {
  (void)state;
  resil_err err = {0};
  unlink(path);
  assert_int_equal(resil_password_file_check(path, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, path));
  assert_non_null(strstr(err.msg, "No such file"));
  assert_null(resil_password_file_open(path, 0, &err));
  assert_non_null(strstr(err.msg, path));
  put("\n" SECRET "\n"); /* an empty first line */
  assert_int_equal(resil_password_file_check(path, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "is empty"));
  no_secret(err.msg);
  static char big[RESIL_PASSWORD_MAX + 10];
  memset(big, 'x', sizeof big - 1);
  memcpy(big, SECRET, strlen(SECRET));
  put(big);
  assert_int_equal(resil_password_file_check(path, &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "longer than 4095 bytes"));
  no_secret(err.msg);
  assert_int_equal(resil_password_file_check("/tmp", &err), RESIL_E_INVALID);
  assert_non_null(strstr(err.msg, "'/tmp'"));
  if (geteuid() != 0) { /* root reads anything */
    put(SECRET);
    chmod(path, 0);
    assert_int_equal(resil_password_file_check(path, &err), RESIL_E_INVALID);
    assert_non_null(strstr(err.msg, "Permission denied"));
  }
}

static void a_change_is_seen_at_the_next_check_not_before(void **state) {
  (void)state;
  put(SECRET "\n");
  resil_err err = {0};
  resil_password_file *f = resil_password_file_open(path, 2000, &err);
  assert_non_null(f);
  overwrite("rotated-1\n"); /* in place: the same inode, a new size and mtime */
  fake_clock_advance_ms(1999);
  bool changed = true;
  assert_string_equal(get(f, 0, &changed), SECRET); /* not checked yet: no stat() */
  assert_false(changed);
  resil_password_file_stats st;
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.checks, 0);
  fake_clock_advance_ms(1);
  assert_string_equal(get(f, 0, &changed), "rotated-1");
  assert_true(changed);
  /* Unchanged file: one stat() per interval, no read. */
  for (int i = 0; i < 5; i++) {
    fake_clock_advance_ms(2000);
    assert_string_equal(get(f, 0, &changed), "rotated-1");
    assert_false(changed);
  }
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.checks, 6);
  assert_int_equal(st.reads, 2);
  assert_int_equal(st.changes, 1);
  resil_password_file_free(f);
}

static void an_auth_failure_checks_at_once(void **state) {
  (void)state;
  put(SECRET "\n");
  resil_err err = {0};
  resil_password_file *f = resil_password_file_open(path, 2000, &err);
  assert_non_null(f);
  put("rotated-2\n");
  fake_clock_advance_ms(10);
  bool changed = false;
  assert_string_equal(get(f, RESIL_PASSWORD_AUTH_FAILED, &changed), "rotated-2");
  assert_true(changed);
  /* Refused again with the file unchanged and just read: no re-read. */
  assert_string_equal(get(f, RESIL_PASSWORD_AUTH_FAILED, &changed), "rotated-2");
  assert_false(changed);
  resil_password_file_stats st;
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.reads, 2);
  /* ...but once the last read is an interval old it is read again (a file
   * rewritten with the same size within the same mtime tick). */
  fake_clock_advance_ms(2000);
  get(f, RESIL_PASSWORD_AUTH_FAILED, NULL);
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.reads, 3);
  resil_password_file_free(f);
}

static void a_vanished_file_keeps_the_last_password_and_counts(void **state) {
  (void)state;
  put(SECRET "\n");
  resil_err err = {0};
  resil_password_file *f = resil_password_file_open(path, 2000, &err);
  assert_non_null(f);
  unlink(path);
  fake_clock_advance_ms(2000);
  assert_string_equal(get(f, 0, NULL), SECRET);
  assert_string_equal(get(f, RESIL_PASSWORD_AUTH_FAILED, NULL), SECRET);
  resil_password_file_stats st;
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.errors, 2);
  assert_non_null(strstr(st.last_error, path));
  assert_non_null(strstr(st.last_error, "keeping the last password"));
  no_secret(st.last_error);
  put("\n"); /* back, but empty: still the last good one */
  fake_clock_advance_ms(2000);
  assert_string_equal(get(f, 0, NULL), SECRET);
  resil_password_file_get_stats(f, &st);
  assert_int_equal(st.errors, 3);
  assert_non_null(strstr(st.last_error, "is empty"));
  put("rotated-3\n");
  fake_clock_advance_ms(2000);
  assert_string_equal(get(f, 0, NULL), "rotated-3");
  char small[4];
  assert_int_equal(resil_password_file_get(f, 0, small, sizeof small, NULL, &err),
                   RESIL_E_INVALID);
  no_secret(err.msg);
  resil_password_file_free(f);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(the_first_line_is_the_password),
      T(bad_files_are_refused_naming_the_file_never_the_content),
      T(a_change_is_seen_at_the_next_check_not_before),
      T(an_auth_failure_checks_at_once),
      T(a_vanished_file_keeps_the_last_password_and_counts),
  };
  return cmocka_run_group_tests_name("credentials", tests, NULL, NULL);
}
