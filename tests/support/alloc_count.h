/* Count the heap allocations every thread of this process makes while
 * counting is on: used by tests/unit/test_alloc.c (zero allocations on the
 * admit/done and pool acquire/release paths) and bench/bench_core.c (its
 * "allocs" column).
 *
 *   alloc_count_start();  ...code under test...;  long n = alloc_count_stop();
 *
 * Include this header in exactly ONE .c file of a program: in a build
 * without a sanitizer it DEFINES malloc, calloc, realloc, aligned_alloc,
 * memalign and posix_memalign (the program's definitions win over libc's
 * for every shared library too, resil's and glibc's own included) and
 * forwards them to glibc's __libc_* entry points. Under ASan
 * or TSan the sanitizer owns malloc, so it counts through
 * __sanitizer_install_malloc_and_free_hooks() instead (every allocation
 * the sanitizer's allocator makes, aligned ones included).
 * alloc_count_works() says whether counting is active (a check that a 0
 * measured is not a 0 because nothing was counted). Thread-safe. */
#ifndef RESIL_ALLOC_COUNT_H
#define RESIL_ALLOC_COUNT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ALLOC_COUNT_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ALLOC_COUNT_SANITIZER 1
#endif

static _Atomic long alloc_count_n;
static _Atomic int alloc_count_on;

static inline void alloc_count_hit(void) {
  if (atomic_load_explicit(&alloc_count_on, memory_order_relaxed))
    atomic_fetch_add_explicit(&alloc_count_n, 1, memory_order_relaxed);
}

#ifdef ALLOC_COUNT_SANITIZER
#include <sanitizer/allocator_interface.h>

static void alloc_count_malloc_hook(const volatile void *p, size_t n) {
  (void)p;
  (void)n;
  alloc_count_hit();
}
static void alloc_count_free_hook(const volatile void *p) { (void)p; }

static inline void alloc_count_install(void) {
  static _Atomic int installed;
  if (!atomic_exchange(&installed, 1))
    __sanitizer_install_malloc_and_free_hooks(alloc_count_malloc_hook, alloc_count_free_hook);
}
#else
#include <errno.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
void *memalign(size_t align, size_t n); /* <malloc.h>, not included here */

void *malloc(size_t n) {
  alloc_count_hit();
  return __libc_malloc(n);
}
void *calloc(size_t a, size_t b) {
  alloc_count_hit();
  return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n) {
  alloc_count_hit();
  return __libc_realloc(p, n);
}
void *aligned_alloc(size_t align, size_t n) {
  alloc_count_hit();
  return __libc_memalign(align, n);
}
void *memalign(size_t align, size_t n) {
  alloc_count_hit();
  return __libc_memalign(align, n);
}
int posix_memalign(void **out, size_t align, size_t n) {
  alloc_count_hit();
  if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
  void *p = __libc_memalign(align, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}

static inline void alloc_count_install(void) {}
#endif

/* Zero the count and start counting. */
static inline void alloc_count_start(void) {
  alloc_count_install();
  atomic_store(&alloc_count_n, 0);
  atomic_store(&alloc_count_on, 1);
}

/* Stop counting; the allocations made since alloc_count_start(). */
static inline long alloc_count_stop(void) {
  atomic_store(&alloc_count_on, 0);
  return atomic_load(&alloc_count_n);
}

/* Whether an allocation made now would be counted: allocates once with
 * counting on and checks that it was seen. */
static inline int alloc_count_works(void) {
  alloc_count_start();
  void *volatile p = malloc(24);
  long n = alloc_count_stop();
  free(p);
  return n >= 1;
}

#endif
