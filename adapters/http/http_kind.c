/* The "http" configuration kind: RESIL_DEPS=payments:http and
 * RESIL_DEP_PAYMENTS_<KEY> settings build a resil_http. Registered when the
 * library is loaded. */
#include <stddef.h>

#include "resil/adapter.h"
#include "resil/http.h"
#include "xutil.h"

#define K(k, t, f, req, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_http_config, f), .required = req, .help = h}
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
    K("probe_path", STRING, probe_path, false,
      "recovery probe: GET this path while the breaker is open (default: base_url)"),
};

RESIL_X_ADAPTER_KIND(http)
