/* echoload: N TCP connections in lockstep against an echo server.
 * Each connection sends SIZE bytes, waits for all SIZE to come back, records the round trip,
 * and repeats until SECONDS have passed. Single-threaded epoll, so it costs little CPU.
 * usage: echoload HOST PORT CONNS SIZE SECONDS
 * prints one JSON object: messages, seconds, p50_us, p99_us, errors, cpu_seconds */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_US 1000000
static unsigned long hist[MAX_US + 1];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct conn { int fd; int got; double sent_at; };

static long percentile(unsigned long total, double q) {
    unsigned long want = (unsigned long)(total * q), seen = 0;
    for (long us = 0; us <= MAX_US; us++) { seen += hist[us]; if (seen > want) return us; }
    return MAX_US;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: echoload HOST PORT CONNS SIZE SECONDS\n"); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]), size = atoi(argv[4]);
    double seconds = atof(argv[5]);
    char *msg = malloc(size), *buf = malloc(65536);
    memset(msg, 'e', size);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    int ep = epoll_create1(0);
    struct conn *conns = calloc(nconn, sizeof *conns);
    unsigned long messages = 0, errors = 0;
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    double start = now(), end = start + seconds;
    for (int i = 0; i < nconn; i++) {
        conns[i].sent_at = now();
        if (write(conns[i].fd, msg, size) != size) errors++;
    }
    struct epoll_event events[256];
    while (now() < end) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t r = read(c->fd, buf, 65536);
            if (r <= 0) { errors++; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); continue; }
            c->got += r;
            if (c->got >= size) {
                double t = now();
                long us = (long)((t - c->sent_at) * 1e6);
                hist[us > MAX_US ? MAX_US : us]++;
                messages++;
                c->got = 0;
                c->sent_at = t;
                if (write(c->fd, msg, size) != size) errors++;
            }
        }
    }
    double elapsed = now() - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"messages\": %lu, \"seconds\": %.3f, \"p50_us\": %ld, \"p99_us\": %ld, \"errors\": %lu, \"cpu_seconds\": %.3f}\n",
           messages, elapsed, percentile(messages, 0.5), percentile(messages, 0.99), errors, cpu);
    return 0;
}
