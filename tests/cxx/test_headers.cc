// Every installed header, compiled as C++17 with -pedantic-errors, and every
// public macro used (tests/cxx/check_cxx.py checks that each macro defined
// in an installed header appears here). Run, it checks that the C names link
// from C++ and that a configuration kind defined in C++ with
// RESIL_DEFINE_CONFIG_KIND loads through RESIL_DEPS.
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <resil/adapter.h>
#include <resil/admin.h>
#include <resil/breaker.h>
#include <resil/common.h>
#include <resil/config.h>
#include <resil/credentials.h>
#include <resil/deadline.h>
#include <resil/dep.h>
#include <resil/emf.h>
#include <resil/endpoint.h>
#include <resil/event.h>
#include <resil/export.h>
#include <resil/lifecycle.h>
#include <resil/metrics.h>
#include <resil/pool.h>
#include <resil/resil.h>
#include <resil/resolve.h>
#include <resil/service.h>
#include <resil/status.h>
#include <resil/version.h>
#ifdef RESIL_TEST_HAVE_REDIS
#include <resil/redis.h>
#endif
#ifdef RESIL_TEST_HAVE_PG
#include <resil/pg.h>
#endif
#ifdef RESIL_TEST_HAVE_HTTP
#include <resil/http.h>
#endif

static int failures;
#define CHECK(c)                                                     \
  do {                                                               \
    if (!(c)) {                                                      \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c); \
      failures++;                                                    \
    }                                                                \
  } while (0)

// RESIL_API, RESIL_BEGIN_DECLS, RESIL_END_DECLS: a C-linkage declaration of
// our own, as a header built on resil would write it.
RESIL_BEGIN_DECLS
RESIL_API int cxx_probe_answer(void);
RESIL_END_DECLS
int cxx_probe_answer(void) { return 42; }

// A configuration kind defined in C++.
struct cxx_cfg {
  resil_dep_config dep;
  resil_pool_config pool;
  uint32_t answer;
};
static void cxx_init(cxx_cfg *c, const char *name) {
  resil_dep_config_init(&c->dep, name);
  resil_pool_config_init(&c->pool);
  c->answer = 7;
}
static resil_status cxx_validate(const cxx_cfg *c, resil_err *err) {
  return resil_dep_config_validate(&c->dep, err);
}
static resil_dep *cxx_new(const cxx_cfg *c, resil_err *err) { return resil_dep_new(&c->dep, err); }
static resil_dep *cxx_dep_of(resil_dep *d) { return d; }
static const resil_key_spec cxx_keys[] = {
    {"answer", RESIL_KEY_UINT, offsetof(cxx_cfg, answer), 0, 100, false, "the answer", {0}},
};
RESIL_DEFINE_CONFIG_KIND(cxxkind, cxx_cfg, cxx_init, cxx_validate, cxx_new, resil_dep_free,
                         cxx_dep_of, cxx_keys);
static uint64_t cxx_mem(const cxx_cfg *c) { return 1000u + c->answer; }
RESIL_DEFINE_CONFIG_KIND_MEM(cxxmem, cxx_cfg, cxx_init, cxx_validate, cxx_new, resil_dep_free,
                             cxx_dep_of, cxx_keys, cxx_mem);

#ifdef RESIL_TEST_HAVE_REDIS
static const resil_key_spec cxx_redis_keys[] = {
    {"host", RESIL_KEY_STRING, offsetof(resil_redis_config, host), 0, 0, false, "host", {0}},
    RESIL_OUTLIER_KEY_SPECS(resil_redis_config, outlier),
};
RESIL_DEFINE_CONFIG_KIND(cxxredis, resil_redis_config, resil_redis_config_init,
                         resil_redis_config_validate, resil_redis_new, resil_redis_free,
                         resil_redis_dep, cxx_redis_keys);
#endif

int main() {
  // Version macros and the library's own.
  static_assert(RESIL_VERSION_NUMBER ==
                    ((RESIL_VERSION_MAJOR << 16) | (RESIL_VERSION_MINOR << 8) | RESIL_VERSION_PATCH),
                "version number");
  CHECK(std::strcmp(resil_version(), RESIL_VERSION_STRING) == 0);
  CHECK(resil_version_number() == RESIL_VERSION_NUMBER);
  CHECK(cxx_probe_answer() == 42);

  // Deadlines: RESIL_DEADLINE_UNSET in an expression, a default argument
  // position and an initializer.
  resil_deadline d = RESIL_DEADLINE_UNSET;
  CHECK(!resil_deadline_is_set(d));
  CHECK(!resil_deadline_is_set(RESIL_DEADLINE_UNSET));
  CHECK(resil_deadline_min(RESIL_DEADLINE_UNSET, resil_deadline_in_ms(5)).at_ns != 0);

  // Sizes and constants.
  resil_err err;
  static_assert(sizeof err.msg == RESIL_ERR_MSG_MAX, "resil_err.msg");
  resil_hist_snapshot h{};
  static_assert(sizeof h.counts / sizeof h.counts[0] == RESIL_HIST_BOUNDS + 1, "buckets");
  resil_dep_stats st{};
  static_assert(sizeof st.calls / sizeof st.calls[0] == RESIL_OUTCOME_SLOTS, "calls");
  static_assert(sizeof st.rejections / sizeof st.rejections[0] == RESIL_REJECT_SLOTS, "rej");
  static_assert(sizeof st.probes / sizeof st.probes[0] == RESIL_PROBE_RESULT_SLOTS, "probes");
  static_assert(sizeof st.pool.closed / sizeof st.pool.closed[0] == RESIL_POOL_CLOSE_REASON_SLOTS,
                "closed");
  static_assert(sizeof st.breaker.transitions / sizeof st.breaker.transitions[0] ==
                    RESIL_BREAKER_STATE_SLOTS,
                "transitions");
  resil_addr a{};
  static_assert(sizeof a.text == RESIL_ADDR_TEXT_MAX, "addr text");
  static_assert(RESIL_CALL_IDEMPOTENT == 1u, "idempotent flag");
  static_assert(RESIL_PROBE_THREADS > 0 && RESIL_EVENT_BURST > 0 && RESIL_EVENT_RATE_PER_S > 0,
                "event and probe limits");
  static_assert(RESIL_EMF_MAX_METRICS == 100 && RESIL_EMF_WRITE_BUDGET_MS > 0, "emf");
  static_assert(RESIL_DRAIN_CHECK_MS > 0, "drain check");
  static_assert(RESIL_PASSWORD_MAX >= 1024 && RESIL_PASSWORD_FILE_CHECK_MS > 0 &&
                    (RESIL_PASSWORD_AUTH_FAILED & 1u),
                "credentials");
  static_assert(sizeof(RESIL_HOSTS_FILE_ENV) > 1, "hosts file variable");
  (void)(RESIL_POOL_GEN_CURRENT + 0);
  static_assert(RESIL_ENDPOINTS_MAX == 16 && RESIL_ENDPOINT_TEXT_MAX >= 262, "endpoints");
#ifdef RESIL_TEST_HAVE_REDIS
  static_assert(RESIL_REDIS_MIN_MAX_REPLY_BYTES <= RESIL_REDIS_DEFAULT_MAX_REPLY_BYTES &&
                    RESIL_REDIS_DEFAULT_MAX_REPLY_BYTES <= RESIL_REDIS_MAX_MAX_REPLY_BYTES,
                "redis reply bounds");
#endif
#ifdef RESIL_TEST_HAVE_PG
  static_assert(RESIL_PG_MIN_MAX_RESULT_BYTES <= RESIL_PG_DEFAULT_MAX_RESULT_BYTES &&
                    RESIL_PG_DEFAULT_MAX_RESULT_BYTES <= RESIL_PG_MAX_MAX_RESULT_BYTES,
                "pg result bounds");
  static_assert(RESIL_PG_MAX_STUCK_CANCELS > 0, "cancels");
#endif
#ifdef RESIL_TEST_HAVE_HTTP
  resil_http_config hc;
  resil_http_config_init(&hc, "cxx-http");
  static_assert(sizeof hc.failure_statuses / sizeof hc.failure_statuses[0] ==
                    RESIL_HTTP_MAX_FAILURE_STATUSES,
                "failure statuses");
  static_assert(RESIL_HTTP_IDEMPOTENT == RESIL_CALL_IDEMPOTENT && RESIL_HTTP_NO_RETRY == 0x100u,
                "http flags");
  CHECK(hc.nfailure_statuses > 0);
#endif

  // Statuses through the C names.
  CHECK(std::strcmp(resil_status_name(RESIL_E_BREAKER_OPEN), "breaker_open") == 0);
  CHECK(resil_status_is_rejection(RESIL_E_DRAINING));
  CHECK(resil_err_set(&err, RESIL_E_INVALID, "cxx %d", 1) == RESIL_E_INVALID);
  CHECK(std::strcmp(err.msg, "cxx 1") == 0);

  // The kinds defined here load through RESIL_DEPS.
  CHECK(resil_config_register_kind(&cxxkind_kind, &err) == RESIL_OK);
  CHECK(cxxkind_kind.memory_bound == nullptr);
  {
    cxx_cfg mc;
    cxx_init(&mc, "mem");
    CHECK(cxxmem_kind.memory_bound && cxxmem_kind.memory_bound(&mc) == 1007u);
  }
  const char *deps = "RESIL_DEPS=cxx-dep:cxxkind"
#ifdef RESIL_TEST_HAVE_REDIS
                     ",cxx-cache:cxxredis"
#endif
      ;
  char *envp[] = {const_cast<char *>(deps), const_cast<char *>("RESIL_DEP_CXX_DEP_ANSWER=41"),
                  nullptr};
#ifdef RESIL_TEST_HAVE_REDIS
  CHECK(resil_config_register_kind(&cxxredis_kind, &err) == RESIL_OK);
#endif
  resil_config *cfg = nullptr;
  char *report = nullptr;
  resil_status s = resil_config_load(envp, nullptr, &cfg, &report, &err);
  if (s != RESIL_OK) std::fprintf(stderr, "load: %s\n", report ? report : err.msg);
  CHECK(s == RESIL_OK);
  if (cfg) {
    const cxx_cfg *c = static_cast<const cxx_cfg *>(resil_config_find(cfg, "cxx-dep", "cxxkind"));
    CHECK(c && c->answer == 41);
    // create/destroy through the macro's wrappers (void * to the handle).
    resil_dep *dep = static_cast<resil_dep *>(cxxkind_kind.create(c, &err));
    CHECK(dep && cxxkind_kind.dep_of(dep) == dep);
    if (dep) cxxkind_kind.destroy(dep);
#ifdef RESIL_TEST_HAVE_REDIS
    CHECK(resil_config_find(cfg, "cxx-cache", "cxxredis") != nullptr);
#endif
    resil_config_free(cfg);
  }
  std::free(report);
  if (failures) return 1;
  std::puts("cxx headers: ok");
  return 0;
}
