/* The "pg" configuration kind: RESIL_DEPS=orders-db:pg and
 * RESIL_DEP_ORDERS_DB_<KEY> settings build a resil_pg. Registered when the
 * library is loaded. */
#include <stddef.h>

#include "resil/adapter.h"
#include "resil/pg.h"
#include "xutil.h"

#define K(k, t, f, lo, hi, req, h)                                                   \
  {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_pg_config, f), .min = lo, .max = hi, \
   .required = req, .help = h}
static const resil_key_spec keys[] = {
    K("conninfo", SECRET, conninfo, 0, 0, true,
      "libpq key=value string or postgresql:// URL (may hold the password)"),
    K("connect_timeout_ms", MS, connect_timeout_ms, 1, 600000, false, "bound on one connect"),
    K("query_timeout_ms", MS, query_timeout_ms, 1, 86400000, false,
      "bound on one statement's I/O"),
    K("application_name", STRING, application_name, 0, 0, false,
      "default: the dependency's name"),
    K("statement_timeout", BOOL, statement_timeout, 0, 0, false,
      "set statement_timeout = query_timeout_ms (off behind pgbouncer)"),
    K("tcp_user_timeout_ms", MS, tcp_user_timeout_ms, 0, 3600000, false,
      "TCP_USER_TIMEOUT unless the conninfo sets it; 0 = kernel's"),
    K("keepalives", BOOL, keepalives, 0, 0, false, "TCP keepalives unless the conninfo sets them"),
    K("keepalives_idle_s", UINT, keepalives_idle_s, 1, 86400, false, "idle time before probes"),
    K("keepalives_interval_s", UINT, keepalives_interval_s, 1, 86400, false,
      "time between probes"),
    K("keepalives_count", UINT, keepalives_count, 1, 100, false, "probes before giving up"),
    K("cancel_timeout_ms", MS, cancel_timeout_ms, 1, 60000, false,
      "how long the reaper waits for a cancel request"),
    K("reaper_queue_max", UINT, reaper_queue_max, 1, 100000, false,
      "timed-out connections waiting for the reaper"),
    K("rollback_timeout_ms", MS, rollback_timeout_ms, 1, 60000, false,
      "bound on the ROLLBACK of a connection returned inside a transaction"),
    K("alive_bypass_ms", MS, alive_bypass_ms, 0, 60000, false,
      "skip the liveness poll() on a connection returned this recently"),
    K("max_result_bytes", SIZE, max_result_bytes, 0, 0, false,
      "most bytes one statement's results may bring; larger is a caller error"),
    K("probe_sql", STRING, probe_sql, 0, 0, false,
      "recovery probe statement, run on a fresh connection while the breaker is open"),
    K("password_file", STRING, password_file, 0, 0, false,
      "file holding the password (first line), re-read when it changes (rotation)"),
    K("password_file_check_ms", MS, password_file_check_ms, 100, 3600000, false,
      "how often, at most, password_file is checked before new connections"),
    K("hosts", STRING, hosts, 0, 0, false,
      "several addresses host:port,host:port (at most 16; 5432 for entries without one): calls "
      "spread over them, each with outlier ejection; replace the conninfo's host and port"),
    K("endpoints_from_dns", BOOL, endpoints_from_dns, 0, 0, false,
      "every address the conninfo's host resolves to is an address of its own (as with HOSTS), "
      "the set following DNS (cache TTL, failover); not with HOSTS"),
    RESIL_OUTLIER_KEY_SPECS(resil_pg_config, outlier),
};

RESIL_X_ADAPTER_KIND(pg)
