/* The "http" configuration kind: RESIL_DEPS=payments:http and
 * RESIL_DEP_PAYMENTS_<KEY> settings build a resil_http. Registered when the
 * library is loaded. */
#include <stddef.h>

#include "resil/config.h"
#include "resil/http.h"


static void kind_init(void *cfg, const char *name) { resil_http_config_init(cfg, name); }
static resil_status kind_validate(const void *cfg, resil_err *err) {
  return resil_http_config_validate(cfg, err);
}
static resil_dep_config *kind_dep(void *cfg) { return &((resil_http_config *)cfg)->dep; }
static resil_pool_config *kind_pool(void *cfg) { return &((resil_http_config *)cfg)->pool; }
static void *kind_create(const void *cfg, resil_err *err) { return resil_http_new(cfg, err); }
static void kind_destroy(void *h) { resil_http_free(h); }
static resil_dep *kind_dep_of(void *h) { return resil_http_dep(h); }

#define K(k, t, f, req, h) {k, RESIL_KEY_##t, offsetof(resil_http_config, f), 0, 0, req, h}
static const resil_key_spec keys[] = {
    K("base_url", STRING, base_url, true, "http(s)://host[:port][/prefix]"),
    K("connect_timeout_ms", MS, connect_timeout_ms, false, "DNS + TCP + TLS bound"),
    K("request_timeout_ms", MS, request_timeout_ms, false, "whole-transfer bound"),
    K("tls_verify", BOOL, tls_verify, false, "verify the peer's certificate and name"),
    K("ca_file", STRING, ca_file, false, "PEM bundle to trust"),
    K("max_response_bytes", SIZE, max_response_bytes, false, "larger responses are errors"),
    K("low_speed_bytes_per_s", UINT, low_speed_bytes_per_s, false, "low-speed guard rate"),
    K("low_speed_time_s", UINT, low_speed_time_s, false, "low-speed guard time"),
    K("deadline_header", STRING, deadline_header, false, "header carrying the deadline"),
    K("resolve_with_resil", BOOL, resolve_with_resil, false, "resolve with resil_resolve()"),
};

static const resil_config_kind http_kind = {
    .name = "http",
    .size = sizeof(resil_http_config),
    .init = kind_init,
    .validate = kind_validate,
    .dep_config = kind_dep,
    .pool_config = kind_pool,
    .keys = keys,
    .nkeys = sizeof keys / sizeof keys[0],
    .create = kind_create,
    .destroy = kind_destroy,
    .dep_of = kind_dep_of,
};

const resil_config_kind *resil_http_config_kind(void) { return &http_kind; }

resil_status resil_http_register_kind(resil_err *err) {
  return resil_config_register_kind(&http_kind, err);
}

__attribute__((constructor)) static void register_at_load(void) {
  resil_http_register_kind(NULL);
}
