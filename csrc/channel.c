/* The process's session with the orchestrator: one Unix stream socket, connected lazily
 * on the first call that needs it, request/reply under a mutex.
 *
 * The socket is the program's to break: daemons close every descriptor, shells dup2
 * onto low numbers.  So it lives on a high descriptor, is close-on-exec (exec starts a
 * new session), and the fd hooks (fdguard.c) refuse to close it and move it away when a
 * program dup2()s onto its number.  After fork the child drops the inherited socket
 * (it belongs to the parent's session) and connects its own when it first needs one. */
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "layer.h"

#define TL_CHANNEL_MIN_FD 900

int tl_chan_fd = -1;
#define chan_fd tl_chan_fd

/* Our own closes bypass the fd guard (which would refuse to close the channel). */
static void raw_close(int fd) { syscall(SYS_close, fd); }
static uint32_t next_id = 1;
static pthread_mutex_t chan_lock = PTHREAD_MUTEX_INITIALIZER;


uint32_t tl_channel_next_id(void) { return __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED); }

static int move_high(int fd, int min) {
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, min);
    if (hi < 0) return fd; /* low RLIMIT_NOFILE: keep the original, still protected */
    raw_close(fd);
    return hi;
}

int tl_channel_evict(int fd) {
    if (fd != chan_fd) return 0;
    int moved = fcntl(chan_fd, F_DUPFD_CLOEXEC, chan_fd + 1);
    if (moved < 0) return -1;
    chan_fd = moved; /* the old number is about to be overwritten by the caller's dup2 */
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read exactly n bytes.  Descriptors that arrive (SCM_RIGHTS rides on the first byte of a
 * frame) are stored in *fd_out when it is free, else closed: a reply never leaks one. */
static int read_all_fd(int fd, uint8_t *p, size_t n, int *fd_out) {
    while (n) {
        union {
            char buf[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr align;
        } ctl;
        struct iovec iov = {p, n};
        struct msghdr mh = {0};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (r == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int got;
                memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                if (fd_out && *fd_out < 0)
                    *fd_out = got;
                else
                    raw_close(got);
            }
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int read_all(int fd, uint8_t *p, size_t n) { return read_all_fd(fd, p, n, NULL); }

static int send_frame(int fd, const uint8_t *body, size_t len) {
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    if (write_all(fd, hdr, 4)) return -1;
    return write_all(fd, body, len);
}

/* Read one frame into buf; frames larger than cap are drained and reported as EMSGSIZE. */
static long recv_frame_fd(int fd, uint8_t *buf, size_t cap, int *fd_out) {
    uint8_t hdr[4];
    if (read_all_fd(fd, hdr, 4, fd_out)) return -1;
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    if (len > TETHER_MAX_FRAME) {
        errno = EPROTO;
        return -1;
    }
    if (len > cap) {
        uint8_t sink[512];
        size_t left = len;
        while (left) {
            size_t n = left < sizeof sink ? left : sizeof sink;
            if (read_all(fd, sink, n)) return -1;
            left -= n;
        }
        errno = EMSGSIZE;
        return -1;
    }
    if (read_all(fd, buf, len)) return -1;
    return (long)len;
}

static long recv_frame(int fd, uint8_t *buf, size_t cap) {
    int extra = -1;
    long n = recv_frame_fd(fd, buf, cap, &extra);
    if (extra >= 0) raw_close(extra);
    return n;
}

static int connect_locked(int *hello_pending) {
    struct sockaddr_un addr;
    uint8_t buf[1024];
    char exe[512];
    long n;
    if (chan_fd >= 0) return 0;
    if (!tl_cfg.active) {
        errno = ENOTCONN;
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, tl_cfg.sock_path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        raw_close(fd);
        return -1;
    }
    fd = move_high(fd, TL_CHANNEL_MIN_FD);
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = '\0';
    n = tl_encode_hello(buf, sizeof buf, (long)getpid(), (long)getppid(), exe);
    if (n < 0 || send_frame(fd, buf, (size_t)n)) {
        raw_close(fd);
        errno = ECONNREFUSED;
        return -1;
    }
    /* hello_ok is read after the first request went out: the orchestrator handles frames
     * in order and installs the session's handlers with hello, so the request may follow
     * at once (one round trip less for every process's first remote call). */
    *hello_pending = 1;
    chan_fd = fd;
    return 0;
}

static int read_hello_ok(void) {
    uint8_t buf[256];
    long session, n = recv_frame(chan_fd, buf, sizeof buf);
    if (n < 0 || tl_decode_hello_ok(buf, (unsigned long)n, &session)) {
        errno = ECONNREFUSED;
        return -1;
    }
    return 0;
}

long tl_channel_call(const uint8_t *req, size_t req_len, uint8_t *reply, size_t reply_cap) {
    return tl_channel_call_fd(req, req_len, reply, reply_cap, NULL);
}

long tl_channel_call_fd(const uint8_t *req, size_t req_len, uint8_t *reply, size_t reply_cap,
                        int *fd_out) {
    long n = -1;
    int saved, hello_pending = 0;
    if (fd_out) *fd_out = -1;
    tl_in_layer++;
    pthread_mutex_lock(&chan_lock);
    if (connect_locked(&hello_pending) == 0) {
        if (send_frame(chan_fd, req, req_len) == 0 &&
            (!hello_pending || read_hello_ok() == 0)) {
            n = recv_frame_fd(chan_fd, reply, reply_cap, fd_out);
            if (n < 0 && fd_out && *fd_out >= 0) {
                raw_close(*fd_out);
                *fd_out = -1;
            }
        }
        if (n < 0 && errno != EMSGSIZE) {
            /* The orchestrator is gone or the stream is out of step: drop the session so
             * the next call fails fast instead of reading a stale reply. */
            saved = errno;
            raw_close(chan_fd);
            chan_fd = -1;
            errno = saved;
        }
    }
    saved = errno;
    pthread_mutex_unlock(&chan_lock);
    tl_in_layer--;
    errno = saved;
    return n;
}

void tl_channel_after_fork_child(void) {
    /* Async-signal-safe only: the parent may have held the lock mid-call. */
    if (chan_fd >= 0) raw_close(chan_fd);
    chan_fd = -1;
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&chan_lock, &fresh, sizeof fresh);
}
