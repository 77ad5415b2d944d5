// fasync: reaches pipe_fasync() (fs/pipe.c) from user space, for `hvpatch build`'s tests of fix 09:
// O_ASYNC on both ends of a pipe and on a read-write open of it (/proc/self/fd: FMODE_READ and
// FMODE_WRITE, the path the fix changes), then a write must deliver SIGIO. Prints "fasync: ok".
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void on_io(int s) { (void)s; got = 1; }

static int set_async(int fd) {
  if (fcntl(fd, F_SETOWN, getpid()) < 0) return -1;
  return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
}

int main(void) {
  int p[2];
  char path[64];
  if (pipe(p) != 0) return perror("pipe"), 1;
  signal(SIGIO, on_io);
  if (set_async(p[0]) < 0 || set_async(p[1]) < 0) return perror("fcntl"), 2;
  snprintf(path, sizeof(path), "/proc/self/fd/%d", p[0]);
  int rw = open(path, O_RDWR);
  if (rw < 0) return perror("open rw"), 3;
  if (set_async(rw) < 0) return perror("fcntl rw"), 4;
  if (write(p[1], "x", 1) != 1) return perror("write"), 5;
  for (int i = 0; i < 200 && !got; i++) usleep(10000);
  printf(got ? "fasync: ok\n" : "fasync: no SIGIO\n");
  return got ? 0 : 6;
}
