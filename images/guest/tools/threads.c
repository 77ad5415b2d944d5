// threads N: starts N-1 extra threads named "worker-K", then everything sleeps forever.
// The task-walk tests need a multi-threaded process, which busybox cannot provide.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void* worker(void* arg) {
  char name[16];
  snprintf(name, sizeof name, "worker-%ld", (long)arg);
  pthread_setname_np(pthread_self(), name);
  for (;;) pause();
  return NULL;
}

int main(int argc, char** argv) {
  long n = argc > 1 ? atol(argv[1]) : 4;
  if (n < 1 || n > 64) {
    fprintf(stderr, "usage: threads N (1..64)\n");
    return 2;
  }
  for (long i = 1; i < n; i++) {
    pthread_t t;
    if (pthread_create(&t, NULL, worker, (void*)i) != 0) return 1;
  }
  printf("threads: pid %d with %ld threads\n", getpid(), n);
  fflush(stdout);
  for (;;) pause();
}
