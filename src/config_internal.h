/* resil internals shared by the configuration's source files, not
 * installed:
 *   config_keys.c  the core's key tables, the core kind, the kind registry
 *                  and finding a dependency's keys by name;
 *   config.c       loading: the environment, the KEY=VALUE file,
 *                  RESIL_DEPS, setting values, every check, the problems;
 *   config_out.c   output: the dump, its JSON form and hash, the Markdown
 *                  key documentation. */
#ifndef RESIL_CONFIG_INTERNAL_H
#define RESIL_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "resil/config.h"
#include "internal.h"

#define RESIL__ENV_PREFIX "RESIL_DEP_"
#define RESIL__COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* One dependency of a loaded configuration. */
typedef struct dep_entry {
  char name[64];
  char env[64]; /* ORDERS_DB */
  const resil_config_kind *kind;
  void *cfg;
  const char *set_keys[128]; /* keys given explicitly (for consistency checks) */
  size_t nset;
} dep_entry;

struct resil_config {
  dep_entry *deps;
  size_t n;
  resil_service_config svc;
  char **strings;
  size_t nstrings, capstrings;
  char hash[17];
};

/* ---- key types and fields ------------------------------------------------ */

/* The C type of the field each key type reads and writes. */
#define RESIL__KEY_CTYPE_UINT uint32_t
#define RESIL__KEY_CTYPE_MS uint32_t
#define RESIL__KEY_CTYPE_BOOL bool
#define RESIL__KEY_CTYPE_DOUBLE double
#define RESIL__KEY_CTYPE_STRING const char *
#define RESIL__KEY_CTYPE_SECRET const char *
#define RESIL__KEY_CTYPE_SIZE size_t

/* offsetof(T, f) for a key of type RESIL_KEY_<t>, which fails to compile
 * ("negative width in bit-field 'key_type_does_not_match_field'") unless
 * field f has the C type that key type writes: the core's key tables use
 * it, so a wrong row cannot build. */
#define RESIL__KEY_OFFSET(T, f, t)                                                          \
  (offsetof(T, f) +                                                                         \
   0 * sizeof(struct {                                                                      \
     int key_type_does_not_match_field : _Generic(((T *)0)->f, RESIL__KEY_CTYPE_##t: 1,     \
                                                  default: -1);                             \
   }))

/* Size and alignment (*align) of the field of a key type; 0 for a value
 * outside the enum. */
size_t resil__cfg_key_size(resil_key_type t, size_t *align);

/* ---- config_keys.c ------------------------------------------------------- */

/* The process keys (RESIL_SERVICE...), offsets into resil_service_config. */
const resil_key_spec *resil__cfg_svc_keys(size_t *n);
/* Fill the process settings' defaults. */
void resil__cfg_service_defaults(resil_service_config *s);

/* The kind called name[0..len) ("core" or a registered one), or NULL. */
const resil_config_kind *resil__cfg_find_kind(const char *name, size_t len);
/* Append "core, redis, ..." (every known kind) to b. */
void resil__cfg_kind_names(resil_sbuf *b);

/* A dependency's key tables: the core's, the pool's (if its kind has a
 * pool) and its kind's own, each with the struct its offsets are into. */
typedef struct resil__cfg_table {
  const resil_key_spec *keys;
  size_t n;
  void *base;
} resil__cfg_table;
int resil__cfg_tables(const dep_entry *d, resil__cfg_table t[3]);

/* A pool key "pool.X" is hidden when the kind has its own key "X". */
bool resil__cfg_shadowed(const dep_entry *d, const resil_key_spec *ks);

/* "breaker.window_ms" -> "BREAKER_WINDOW_MS"; "orders-db" -> "ORDERS_DB" */
void resil__cfg_env_form(char *out, size_t size, const char *in);
/* The variable of d's key: RESIL_DEP_<NAME>_<KEY>. */
void resil__cfg_var_name(char *out, size_t size, const dep_entry *d, const char *key);

/* d's key whose env form is envkey (shadowed keys excluded); *base is the
 * struct its offset is into. NULL if none. */
const resil_key_spec *resil__cfg_find_key(const dep_entry *d, const char *envkey, void **base);
/* d's key whose path is field[0..len), or NULL. */
const resil_key_spec *resil__cfg_find_field(const dep_entry *d, const char *field, size_t len);
/* Append " (did you mean RESIL_DEP_...?)" for the nearest key, if any. */
void resil__cfg_suggest_key(resil_sbuf *b, const dep_entry *d, const char *envkey);

/* ---- config_out.c ------------------------------------------------------- */

/* Set c->hash from the redacted dump. */
void resil__cfg_compute_hash(resil_config *c);

#endif
