/* UDP both ways from C: an unconnected socket (sendmsg/recvmsg, the source reported) and
 * then connected to the same destination; a connected one (connect/send/recv: two datagrams keep their boundaries; getpeername and
 * getsockname).  argv: host port. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char *ntop(struct sockaddr_storage *ss, char *buf) {
    inet_ntop(ss->ss_family, ss->ss_family == AF_INET
                  ? (void *)&((struct sockaddr_in *)ss)->sin_addr
                  : (void *)&((struct sockaddr_in6 *)ss)->sin6_addr, buf, 64);
    return buf;
}

static int mksock(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

int main(int argc, char **argv) {
    struct addrinfo hints = {0}, *res;
    char buf[256], h[64];
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_DGRAM;
    if (argc < 3 || getaddrinfo(argv[1], argv[2], &hints, &res)) return 2;

    int u = mksock();
    struct iovec iov = {"one", 3};
    struct msghdr mh = {0};
    mh.msg_name = res->ai_addr;
    mh.msg_namelen = res->ai_addrlen;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (sendmsg(u, &mh, 0) != 3) { perror("sendmsg"); return 3; }
    struct sockaddr_storage src;
    struct iovec riov = {buf, sizeof buf - 1};
    struct msghdr rh = {0};
    rh.msg_name = &src;
    rh.msg_namelen = sizeof src;
    rh.msg_iov = &riov;
    rh.msg_iovlen = 1;
    ssize_t n = recvmsg(u, &rh, 0);
    if (n < 0) { perror("recvmsg"); return 3; }
    buf[n] = 0;
    printf("unconnected: %s from %s\n", buf, ntop(&src, h));
    struct sockaddr_storage none;
    socklen_t nl = sizeof none;
    int e = getpeername(u, (struct sockaddr *)&none, &nl) ? errno : 0;
    printf("unconnected peer: %s\n", e == ENOTCONN ? "ENOTCONN" : e ? "other error" : "set");
    if (connect(u, res->ai_addr, res->ai_addrlen)) { perror("connect again"); return 3; }
    send(u, "three", 5, 0);
    n = recv(u, buf, sizeof buf - 1, 0);
    if (n < 0) { perror("recv again"); return 3; }
    buf[n] = 0;
    printf("then connected: %s\n", buf);

    int c = mksock();
    if (connect(c, res->ai_addr, res->ai_addrlen)) { perror("connect"); return 3; }
    send(c, "a", 1, 0);
    send(c, "bb", 2, 0);
    for (int i = 0; i < 2; i++) {
        n = recv(c, buf, sizeof buf - 1, 0);
        if (n < 0) { perror("recv"); return 3; }
        buf[n] = 0;
        printf("datagram: %s\n", buf);
    }
    struct sockaddr_storage peer, me;
    socklen_t pl = sizeof peer, ml = sizeof me;
    getpeername(c, (struct sockaddr *)&peer, &pl);
    printf("peer: %s\n", ntop(&peer, h));
    getsockname(c, (struct sockaddr *)&me, &ml);
    printf("local: %s\n", ntop(&me, h));
    return 0;
}
