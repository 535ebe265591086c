/* feature.network.outgoing.unix_streams: connect() of a Unix stream socket whose path
 * matches one of the user's regexes reaches the socket in the target.
 *
 * The orchestrator puts the regexes (translated to POSIX EREs, comma separated and
 * percent-encoded like the files table) in TETHER_LAYER_CONFIG as "ux".  A matching
 * connect asks the orchestrator ("unix_connect"); the agent connects a socket inside the
 * target's file system and the reply carries it (SCM_RIGHTS), which replaces the
 * program's descriptor: from then on the stream is the kernel's.  Over a link that cannot
 * carry descriptors the reply names a Unix listener of the orchestrator's instead, which
 * relays the stream, and the program's socket is connected to it.  Abstract socket names
 * ("\0name", the target's network namespace's) are matched as "@name". */
#include <fcntl.h>
#include <pthread.h>
#include <regex.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "files_api.h"
#include "layer.h"

#define UX_MAX 16

static regex_t ux_re[UX_MAX];
static int ux_n;
static pthread_once_t ux_once = PTHREAD_ONCE_INIT;

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void ux_setup(void) {
    size_t len;
    char item[1024];
    tl_in_layer++;
    tl_init();
    const char *v = tl_cfg.active && !tl_cfg.passthrough ? tl_config_value("ux", &len) : NULL;
    const char *end = v ? v + len : NULL;
    while (v && v < end && ux_n < UX_MAX) {
        const char *c = memchr(v, ',', (size_t)(end - v));
        size_t n = c ? (size_t)(c - v) : (size_t)(end - v), k = 0;
        for (size_t i = 0; i < n && k + 1 < sizeof item; i++) {
            if (v[i] == '%' && i + 2 < n && hexval(v[i + 1]) >= 0 && hexval(v[i + 2]) >= 0) {
                item[k++] = (char)(hexval(v[i + 1]) * 16 + hexval(v[i + 2]));
                i += 2;
            } else {
                item[k++] = v[i];
            }
        }
        item[k] = '\0';
        if (k && regcomp(&ux_re[ux_n], item, REG_EXTENDED | REG_NOSUB) == 0) ux_n++;
        v += n + 1;
    }
    tl_in_layer--;
}

/* The socket's name as the user's regexes see it; 0 if there is none to match. */
static int ux_name(const struct sockaddr *addr, socklen_t len, char *out, size_t cap) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len <= off || cap < 2) return 0;
    size_t n = len - off, k = 0;
    if (n > sizeof un->sun_path) n = sizeof un->sun_path;
    const char *p = un->sun_path;
    if (p[0] == '\0') { /* abstract: every byte counts, up to len */
        out[k++] = '@';
        for (size_t i = 1; i < n && k + 1 < cap; i++) out[k++] = p[i] ? p[i] : '@';
    } else {
        for (size_t i = 0; i < n && p[i] && k + 1 < cap; i++) out[k++] = p[i];
    }
    out[k] = '\0';
    return k > 0;
}

static int ux_stream(int fd) {
    int type = 0;
    socklen_t tl = sizeof type;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM;
}

/* Put `got` (a connected socket) where the program's `fd` is, with fd's O_NONBLOCK and
 * close-on-exec. */
static int ux_install(int fd, int got) {
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(got, F_SETFL, fcntl(got, F_GETFL) | O_NONBLOCK);
    int rc = dup3(got, fd, (fdfl >= 0 && (fdfl & FD_CLOEXEC)) ? O_CLOEXEC : 0);
    int e = errno;
    close(got);
    errno = e;
    return rc < 0 ? -1 : 0;
}

TL_HIDDEN int tl_unix_connect(int fd, const struct sockaddr *addr, socklen_t len,
                              int (*real_connect)(int, const struct sockaddr *, socklen_t),
                              int *handled) {
    char name[sizeof ((struct sockaddr_un *)0)->sun_path + 2];
    uint8_t req[512], reply[512];
    int got = -1, matched = 0;
    *handled = 0;
    if (tl_in_layer) return 0;
    pthread_once(&ux_once, ux_setup);
    if (!ux_n || !ux_name(addr, len, name, sizeof name)) return 0;
    for (int i = 0; i < ux_n && !matched; i++) matched = regexec(&ux_re[i], name, 0, NULL, 0) == 0;
    if (!matched || !ux_stream(fd)) return 0;
    *handled = 1;
    TL_ERRNO_SAVE;
    tl_in_layer++;
    long n = tl_encode_fs_path(req, sizeof req, "unix_connect", tl_channel_next_id(), name);
    long r = n < 0 ? -1 : tl_channel_call_fd(req, (size_t)n, reply, sizeof reply, &got);
    int rc = -1;
    if (r < 0) {
        errno = ECONNREFUSED; /* no session: the orchestrator is ending the program */
    } else if ((rc = tl_decode_fs_errno(reply, (unsigned long)r)) != 0) {
        errno = rc;
        rc = -1;
    } else if (got >= 0) {
        rc = ux_install(fd, got);
        got = -1;
    } else {
        struct sockaddr_un relay = {.sun_family = AF_UNIX};
        if (tl_decode_fs_string(reply, (unsigned long)r, "relay", relay.sun_path,
                                sizeof relay.sun_path) <= 0) {
            errno = EIO;
        } else {
            tl_in_layer--; /* the program's own connect, to our relay (blocking or not) */
            rc = real_connect(fd, (struct sockaddr *)&relay, sizeof relay);
            tl_in_layer++;
        }
    }
    if (got >= 0) close(got);
    if (rc == 0) TL_ERRNO_RESTORE;
    tl_in_layer--;
    return rc;
}
