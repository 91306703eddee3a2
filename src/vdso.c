/* Calling the kernel's vDSO clock_gettime directly (see internal.h).
 *
 * glibc's clock_gettime() reaches the vDSO through the PLT and a wrapper
 * that loads the vDSO pointer and checks its result: ~1-1.5 ns of a ~5 ns
 * CLOCK_MONOTONIC_COARSE read on the machine of README "Benchmarks", and
 * the pool reads that clock twice per acquire+release. At load time this
 * file looks the function up in the vDSO's own ELF image (the auxiliary
 * vector's AT_SYSINFO_EHDR; its DT_HASH table gives the symbol count: the
 * kernel's tools/testing/selftests/vDSO/parse_vdso.c does the same), checks
 * that it answers as glibc does, and publishes it in resil__vdso_gettime;
 * until then, and wherever any step fails (no vDSO, no DT_HASH, no such
 * symbol, a different answer), resil__vdso_gettime is glibc's
 * clock_gettime. The vDSO function handles every clock itself (a system
 * call for those it cannot read, time namespaces included). */
#include <elf.h>
#include <link.h>
#include <string.h>
#include <sys/auxv.h>

#include "internal.h"

resil__gettime_fn resil__vdso_gettime = clock_gettime;
static const char *vdso_source = "libc";

/* The address of the function `name` in the vDSO, or NULL. */
static void *vdso_sym(const char *name) {
  uintptr_t base = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
  if (!base) return NULL;
  const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)base;
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64)
    return NULL;
  const ElfW(Phdr) *ph = (const ElfW(Phdr) *)(base + eh->e_phoff);
  const ElfW(Dyn) *dyn = NULL;
  uintptr_t bias = 0;
  bool have_load = false;
  for (unsigned i = 0; i < eh->e_phnum; i++) {
    if (ph[i].p_type == PT_LOAD && !have_load) {
      bias = base + ph[i].p_offset - ph[i].p_vaddr;
      have_load = true;
    } else if (ph[i].p_type == PT_DYNAMIC) {
      dyn = (const ElfW(Dyn) *)(base + ph[i].p_offset);
    }
  }
  if (!have_load || !dyn) return NULL;
  const ElfW(Sym) *sym = NULL;
  const char *str = NULL;
  const ElfW(Word) *hash = NULL;
  for (; dyn->d_tag != DT_NULL; dyn++) {
    if (dyn->d_tag == DT_SYMTAB) sym = (const ElfW(Sym) *)(dyn->d_un.d_ptr + bias);
    else if (dyn->d_tag == DT_STRTAB) str = (const char *)(dyn->d_un.d_ptr + bias);
    else if (dyn->d_tag == DT_HASH) hash = (const ElfW(Word) *)(dyn->d_un.d_ptr + bias);
  }
  if (!sym || !str || !hash) return NULL;
  for (ElfW(Word) i = 0; i < hash[1]; i++) { /* hash[1]: nchain = number of symbols */
    unsigned type = ELF64_ST_TYPE(sym[i].st_info), bind = ELF64_ST_BIND(sym[i].st_info);
    if (type != STT_FUNC || sym[i].st_shndx == SHN_UNDEF) continue;
    if (bind != STB_GLOBAL && bind != STB_WEAK) continue;
    if (strcmp(str + sym[i].st_name, name) == 0) return (void *)(sym[i].st_value + bias);
  }
  return NULL;
}

static uint64_t ts_ns(const struct timespec *ts) {
  return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

/* Both clocks the core reads must answer as glibc's do (read in between:
 * within 10 ms, more than a coarse tick at HZ=100). */
static bool agrees(resil__gettime_fn f) {
  static const clockid_t ids[] = {CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE};
  for (unsigned i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    struct timespec a, b, c;
    if (clock_gettime(ids[i], &a) || f(ids[i], &b) || clock_gettime(ids[i], &c)) return false;
    if (ts_ns(&b) + 10000000ull < ts_ns(&a) || ts_ns(&b) > ts_ns(&c) + 10000000ull) return false;
  }
  return true;
}

__attribute__((constructor)) static void vdso_init(void) {
  /* x86-64 exports __vdso_clock_gettime, arm64 __kernel_clock_gettime */
  void *sym = vdso_sym("__vdso_clock_gettime");
  if (!sym) sym = vdso_sym("__kernel_clock_gettime");
  if (!sym) return;
  resil__gettime_fn f;
  memcpy(&f, &sym, sizeof f); /* ISO C has no cast from object to function pointer */
  if (agrees(f)) {
    resil__vdso_gettime = f;
    vdso_source = "vdso";
  }
}

const char *resil__vdso_gettime_source(void) { return vdso_source; }
