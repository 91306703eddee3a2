/* The raw baseline of the threaded adapter benchmarks: a connection pool as a
 * user writes one without resil - a mutex, a stack of free connections and a
 * condition variable; a thread that finds none free waits on the condvar,
 * and a release signals it. No FIFO order (the releasing thread may take its
 * connection straight back: the mutex is unfair), no deadline, no checks.
 * Header-only: each benchmark program is one file. */
#ifndef RESIL_BENCH_RAWPOOL_H
#define RESIL_BENCH_RAWPOOL_H

#include <pthread.h>

#define RAWPOOL_MAX 16

typedef struct rawpool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  void *free[RAWPOOL_MAX];
  int nfree;
} rawpool;

/* conns: n (<= RAWPOOL_MAX) connections, all free. */
static inline void rawpool_init(rawpool *p, void *const *conns, int n) {
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->nfree = 0;
  for (int i = 0; i < n && i < RAWPOOL_MAX; i++) p->free[p->nfree++] = conns[i];
}

static inline void rawpool_destroy(rawpool *p) {
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
}

static inline void *rawpool_get(rawpool *p) {
  pthread_mutex_lock(&p->mu);
  while (p->nfree == 0) pthread_cond_wait(&p->cv, &p->mu);
  void *c = p->free[--p->nfree];
  pthread_mutex_unlock(&p->mu);
  return c;
}

static inline void rawpool_put(rawpool *p, void *c) {
  pthread_mutex_lock(&p->mu);
  p->free[p->nfree++] = c;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

#endif
