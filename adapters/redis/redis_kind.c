/* The "redis" configuration kind: RESIL_DEPS=session-cache:redis and
 * RESIL_DEP_SESSION_CACHE_<KEY> settings build a resil_redis. Registered
 * when the library is loaded. */
#include <stddef.h>

#include "resil/adapter.h"
#include "resil/redis.h"
#include "xutil.h"

#define K(k, t, f, h) \
  {.key = k, .type = RESIL_KEY_##t, .offset = offsetof(resil_redis_config, f), .help = h}
static const resil_key_spec keys[] = {
    K("host", STRING, host, "server name or address"),
    K("port", UINT, port, "server port"),
    K("unix_path", STRING, unix_path, "unix socket path (instead of host and port)"),
    K("username", STRING, username, "ACL user name (Redis 6+), with password"),
    K("password", SECRET, password, "AUTH password"),
    K("database", UINT, database, "SELECT this database"),
    K("connect_timeout_ms", MS, connect_timeout_ms, "resolve + connect + AUTH + SELECT bound"),
    K("command_timeout_ms", MS, command_timeout_ms, "cap on one attempt's I/O (0: the deadline)"),
    K("max_reply_bytes", SIZE, max_reply_bytes,
      "most bytes one call's replies may hold; larger is a caller error"),
    K("password_file", STRING, password_file,
      "file holding the AUTH password (first line), re-read when it changes (rotation)"),
    K("password_file_check_ms", MS, password_file_check_ms,
      "how often, at most, password_file is checked before new connections"),
    K("hosts", STRING, hosts,
      "several addresses host:port,host:port (at most 16; PORT for entries without one): calls "
      "spread over them, each with outlier ejection; replaces HOST"),
    K("endpoints_from_dns", BOOL, endpoints_from_dns,
      "every address HOST resolves to is an address of its own (as with HOSTS), the set "
      "following DNS (cache TTL, failover); not with HOSTS"),
    RESIL_OUTLIER_KEY_SPECS(resil_redis_config, outlier),
};

RESIL_X_ADAPTER_KIND(redis)
