/* Convoy egress relay: runs INSIDE a sandbox that has no network but loopback.
 *
 *   relay SOCKET PORT
 *
 * Listens on 127.0.0.1:PORT and [::1]:PORT (PORT 0 picks one) and forwards every TCP
 * connection to the UNIX socket SOCKET (the host's egress proxy, mounted into the sandbox).
 * Prints "listening PORT" on stdout once ready. Exits on SIGTERM/SIGINT/SIGHUP or when its
 * parent dies; each connection's process dies with the relay. Built static by relay.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (256 * 1024)

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int listen_on(int family, int port) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (family == AF_INET) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        a.sin6_addr = in6addr_loopback;
        rc = bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (rc < 0 || listen(fd, 128) < 0) { close(fd); return -1; }
    return fd;
}

static int bound_port(int fd) {
    struct sockaddr_in a;
    socklen_t n = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &n) < 0) return -1;
    return ntohs(a.sin_port);
}

static int connect_unix(const char *path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) return -1;
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
    return fd;
}

static int write_all(int fd, const char *p, ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= w;
    }
    return 0;
}

/* Copy both ways until both sides have closed; half-close is passed on with shutdown(). */
static void shuttle(int a, int b) {
    static char buf[BUF];
    int open_ab = 1, open_ba = 1;
    while (open_ab || open_ba) {
        struct pollfd p[2] = {{.fd = open_ab ? a : -1, .events = POLLIN},
                              {.fd = open_ba ? b : -1, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) { if (errno == EINTR) continue; return; }
        for (int i = 0; i < 2; i++) {
            if (!p[i].revents) continue;
            int from = i ? b : a, to = i ? a : b;
            ssize_t n = read(from, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                shutdown(to, SHUT_WR);
                if (i) open_ba = 0; else open_ab = 0;
                if (n < 0) return;
                continue;
            }
            if (write_all(to, buf, n) < 0) return;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET PORT\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int port = atoi(argv[2]);
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) return 0; /* the parent died before prctl took effect */

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGCHLD, SIG_IGN); /* connection processes are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);

    int fds[2], nfds = 0;
    fds[nfds] = listen_on(AF_INET, port);
    if (fds[nfds] < 0) { perror("relay: listen 127.0.0.1"); return 1; }
    port = bound_port(fds[nfds++]);
    int v6 = listen_on(AF_INET6, port); /* optional: some sandboxes have no IPv6 loopback */
    if (v6 >= 0) fds[nfds++] = v6;
    printf("listening %d\n", port);
    fflush(stdout);

    while (!stop) {
        struct pollfd p[2];
        for (int i = 0; i < nfds; i++) p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        if (poll(p, nfds, 1000) < 0) continue;
        if (getppid() != parent) break;
        for (int i = 0; i < nfds; i++) {
            if (!(p[i].revents & POLLIN)) continue;
            int c = accept4(fds[i], NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) continue;
            pid_t pid = fork();
            if (pid == 0) {
                pid_t relay = getppid();
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != relay) _exit(0);
                signal(SIGTERM, SIG_DFL);
                for (int j = 0; j < nfds; j++) close(fds[j]);
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                int u = connect_unix(path);
                if (u < 0) {
                    static const char msg[] =
                        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 29\r\nConnection: close"
                        "\r\n\r\negress proxy is not running\r\n";
                    write_all(c, msg, sizeof msg - 1);
                    _exit(1);
                }
                shuttle(c, u);
                _exit(0);
            }
            close(c);
        }
    }
    return 0;
}
