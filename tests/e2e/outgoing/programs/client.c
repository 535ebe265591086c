/* Resolve argv[1], connect to port argv[2] (blocking, or non-blocking + poll with "nb"),
 * send "ping", print the reply and the peer; on failure print the errno name. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    default: return strerror(e);
    }
}

int main(int argc, char **argv) {
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_STREAM;
    int nb = argc > 3 && !strcmp(argv[3], "nb");
    int rc = getaddrinfo(argv[1], argv[2], &hints, &res);
    if (rc) { printf("resolve: %s\n", gai_strerror(rc)); return 2; }
    char host[64];
    void *a = res->ai_family == AF_INET ? (void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr
                                        : (void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr;
    inet_ntop(res->ai_family, a, host, sizeof host);
    printf("resolved: %s\n", host);
    int fd = socket(res->ai_family, SOCK_STREAM | (nb ? SOCK_NONBLOCK : 0), 0);
    if (connect(fd, res->ai_addr, res->ai_addrlen)) {
        if (!(nb && errno == EINPROGRESS)) { printf("connect: %s\n", ename(errno)); return 3; }
        struct pollfd p = {fd, POLLOUT, 0};
        poll(&p, 1, 10000);
        int err = 0; socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { printf("connect: %s\n", ename(err)); return 3; }
        fcntl(fd, F_SETFL, 0);
    }
    if (nb && !(fcntl(fd, F_GETFL) & 0)) {}
    struct sockaddr_storage peer; socklen_t pl = sizeof peer;
    getpeername(fd, (struct sockaddr *)&peer, &pl);
    char ph[64];
    inet_ntop(peer.ss_family, peer.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&peer)->sin_addr
              : (void *)&((struct sockaddr_in6 *)&peer)->sin6_addr, ph, sizeof ph);
    printf("peer: %s\n", ph);
    struct sockaddr_storage me; socklen_t ml = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &ml);
    inet_ntop(me.ss_family, me.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&me)->sin_addr
              : (void *)&((struct sockaddr_in6 *)&me)->sin6_addr, ph, sizeof ph);
    printf("local: %s\n", ph);
    write(fd, "ping\n", 5);
    char buf[256]; int n, got = 0;
    while ((n = read(fd, buf + got, sizeof buf - 1 - got)) > 0) {
        got += n;
        if (memchr(buf, '\n', got)) break;
    }
    buf[got] = 0;
    printf("reply: %s", buf);
    return 0;
}
