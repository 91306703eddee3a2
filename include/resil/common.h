/* resil: shared definitions for every public header (export macro, version). */
#ifndef RESIL_COMMON_H
#define RESIL_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "resil/version.h"

#if defined(RESIL_BUILDING) && defined(__GNUC__)
#define RESIL_API __attribute__((visibility("default")))
#else
#define RESIL_API
#endif

#ifdef __cplusplus
#define RESIL_BEGIN_DECLS extern "C" {
#define RESIL_END_DECLS }
#else
#define RESIL_BEGIN_DECLS
#define RESIL_END_DECLS
#endif

RESIL_BEGIN_DECLS

/* The version of the library linked at run time, e.g. "0.1.0". Thread-safe. */
RESIL_API const char *resil_version(void);
/* RESIL_VERSION_NUMBER of the library linked at run time. Thread-safe. */
RESIL_API unsigned resil_version_number(void);

RESIL_END_DECLS
#endif
