/* tether-launch PATH ARGV0 ARGS...: run a static or Go program under tether's seccomp
 * supervisor.  The layer's exec hooks use it when a program they reach starts one they
 * cannot (csrc/launch.c), and `go run`/`go test` start their program through it (go's
 * -exec, then the arguments are PROGRAM ARGS...).  It installs the filter, hands the listener to the session's
 * orchestrator (message "seccomp_attach" with the descriptor), waits until the supervisor
 * runs, then execs the program.  If any step fails it says so and runs the program
 * anyway, without the target's network. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "layer.h"
#include "seccomp_filter.h"

extern char **environ;

static int send_frame(int fd, const uint8_t *body, size_t len, int pass_fd) {
    uint8_t frame[512];
    if (len + 4 > sizeof frame) return -1;
    frame[0] = (uint8_t)(len >> 24);
    frame[1] = (uint8_t)(len >> 16);
    frame[2] = (uint8_t)(len >> 8);
    frame[3] = (uint8_t)len;
    memcpy(frame + 4, body, len);
    struct iovec iov = {frame, len + 4};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (pass_fd >= 0) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)(len + 4) ? 0 : -1;
}

static int recv_frame(int fd) {
    uint8_t hdr[4], body[1024];
    size_t got = 0;
    while (got < 4) {
        ssize_t r = recv(fd, hdr + got, 4 - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    for (got = 0; got < len;) {
        size_t want = len - got < sizeof body ? len - got : sizeof body;
        ssize_t r = recv(fd, body, want, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static const char *attach(void) {
    const char *sock_path = getenv("TETHER_LAYER_SOCK");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    uint8_t buf[512];
    char exe[256];
    if (!sock_path || strlen(sock_path) >= sizeof addr.sun_path) return "no tether session";
    strcpy(addr.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr)) return "no orchestrator";
    snprintf(exe, sizeof exe, "tether-launch");
    long n = tl_encode_hello(buf, sizeof buf, (long)getpid(), (long)getppid(), exe);
    if (n < 0 || send_frame(fd, buf, (size_t)n, -1) || recv_frame(fd)) return "no session";
    int listener = tether_install_listener(tether_trapped_syscalls, TETHER_N_TRAPPED);
    if (listener < 0) return "seccomp user notification is not available";
    mp_w w;
    mp_w_init(&w, buf, sizeof buf);
    mp_map(&w, 3);
    mp_cstr(&w, "t");
    mp_cstr(&w, "seccomp_attach");
    mp_cstr(&w, "id");
    mp_int(&w, 1);
    mp_cstr(&w, "fds");
    mp_int(&w, 1);
    if (w.err || send_frame(fd, buf, w.len, listener) || recv_frame(fd))
        return "the orchestrator did not take the supervision";
    close(listener);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    /* `go run`/`go test` under tether run their program through here (GOFLAGS=-exec=...,
     * set with TETHER_GO_EXEC by python/tether/starter.py): then the arguments are
     * PROGRAM ARGS..., the program's path being its argv[0] too. */
    int go_exec = getenv("TETHER_GO_EXEC") != NULL;
    if (argc < (go_exec ? 2 : 3)) {
        fprintf(stderr, "usage: tether-launch PATH ARGV0 [ARGS...]\n");
        return 127;
    }
    char **args = go_exec ? argv + 1 : argv + 2;
    const char *why = attach();
    if (why)
        fprintf(stderr, "tether: %s runs without the target's network: %s\n", argv[1], why);
    /* Present in any case, so the exec hooks never send this tree through here again (a
     * failed attach would otherwise loop: launch, fail, exec, launch...). */
    setenv("TETHER_SECCOMP_ACTIVE", why ? "0" : "1", 1);
    /* The raw system call: the layer's execve hook has nothing left to do here. */
    syscall(SYS_execve, argv[1], args, environ);
    perror(argv[1]);
    return 127;
}
