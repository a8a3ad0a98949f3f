// The anchor of agent_steady_bench.py: the least any TCP prober can cost, a non-blocking
// connect, a poll and an RST close per probe, with nothing else. Usage: probe_floor FIRST_PORT COUNT SECONDS
#include <arpa/inet.h>
#include <stdlib.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int first = argc > 1 ? atoi(argv[1]) : 21000, count = argc > 2 ? atoi(argv[2]) : 200, seconds = argc > 3 ? atoi(argv[3]) : 10;
  struct timespec t0; clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int sec = 0; sec < seconds; sec++) {
    for (int i = 0; i < count; i++) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(first + i)};
      inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
      connect(fd, (struct sockaddr *)&a, sizeof a);
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      poll(&p, 1, 500);
      struct linger l = {1, 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      close(fd);
      usleep(1000000 / count);
    }
  }
  struct rusage u; getrusage(RUSAGE_SELF, &u);
  struct timespec t1; clock_gettime(CLOCK_MONOTONIC, &t1);
  double cpu = u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
  double wall = t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("%.4f\n", 100 * cpu / wall);
  return 0;
}
