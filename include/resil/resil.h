/* resil: umbrella header for the core library.
 *
 *   #include <resil/resil.h>
 *
 * brings in deadlines, the breaker, dependencies, the pool, the resolver and
 * metric types. Adapters have their own headers (resil/redis.h, resil/pg.h,
 * resil/http.h), installed only when built.
 */
#ifndef RESIL_H
#define RESIL_H

#include "resil/common.h"
#include "resil/status.h"
#include "resil/deadline.h"
#include "resil/metrics.h"
#include "resil/breaker.h"
#include "resil/pool.h"
#include "resil/endpoint.h"
#include "resil/resolve.h"
#include "resil/credentials.h"
#include "resil/dep.h"
#include "resil/event.h"
#include "resil/export.h"
#include "resil/config.h"
#include "resil/service.h"
#include "resil/emf.h"
#include "resil/lifecycle.h"
#include "resil/admin.h"

#endif
