// uptr valid|bad: write(2)s 4 bytes to /dev/null from a valid buffer ("hvp!") or from an
// unmapped user address, and prints "rc=N errno=E". The user-access test patch replaces
// /dev/null's write with one that reads the user buffer: a bad pointer must give EFAULT (the
// exception table), a valid one must be read (STAC under SMAP: the alternatives).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2 || (strcmp(argv[1], "valid") != 0 && strcmp(argv[1], "bad") != 0)) {
    fprintf(stderr, "usage: uptr valid|bad\n");
    return 2;
  }
  int fd = open("/dev/null", O_WRONLY);
  if (fd < 0) {
    perror("open /dev/null");
    return 1;
  }
  static const char buf[4] = {'h', 'v', 'p', '!'};
  const void* p = strcmp(argv[1], "valid") == 0 ? (const void*)buf : (const void*)0x1000;
  errno = 0;
  ssize_t rc = write(fd, p, 4);
  printf("rc=%zd errno=%d\n", rc, rc < 0 ? errno : 0);
  return 0;
}
