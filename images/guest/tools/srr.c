// srr: reaches ip_options_get() (net/ipv4/ip_options.c) from user space, for `hvpatch build`'s
// tests of fix 33: as an unprivileged user (uid/gid 65534, so without CAP_NET_RAW), set a
// loose source route (IPOPT_LSRR via 127.0.0.1) on a UDP socket with IP_OPTIONS. Prints
// "srr: ok" when the kernel takes it (before the fix) or "srr: EPERM" (the fix refuses it).
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
  if (setgid(65534) != 0 || setuid(65534) != 0) return perror("setuid"), 1;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) return perror("socket"), 2;
  // type 131 (LSRR), length 7, pointer 4, one hop; padded with IPOPT_END to 8 bytes.
  const unsigned char opt[8] = {131, 7, 4, 127, 0, 0, 1, 0};
  if (setsockopt(s, IPPROTO_IP, IP_OPTIONS, opt, sizeof(opt)) == 0) {
    printf("srr: ok\n");
  } else {
    printf("srr: %s\n", errno == EPERM ? "EPERM" : strerror(errno));
  }
  close(s);
  return 0;
}
