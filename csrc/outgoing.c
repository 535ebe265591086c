/* Outgoing traffic through the target: connect() and, for unconnected UDP, the first
 * sendto()/sendmsg()/sendmmsg() to a remote address.
 *
 * The decision is made here, from the table the orchestrator wrote into
 * TETHER_LAYER_CONFIG (out.* keys), without a round trip.  A remote connection is made by
 * the agent inside the target's network namespace:
 *  - fd mode (process targets): the agent starts a non-blocking connect there and the reply
 *    carries that socket; it is installed over the program's descriptor with dup3(), with
 *    the program's O_NONBLOCK, close-on-exec and socket options.  From then on the socket is
 *    simply the pod's socket: EINPROGRESS, SO_ERROR, getpeername, getsockname, refused and
 *    unreachable are the kernel's, and no byte crosses Python.
 *  - relay mode (links that cannot carry descriptors): the agent connects and relays; the
 *    reply carries one end of a loopback pair the orchestrator connected to itself (TCP or
 *    UDP, private: no listener another process could reach), installed the same way, and
 *    getpeername() answers the address the program asked for.
 * A small table (by descriptor, checked against the socket's inode so a reused number is
 * never mistaken) remembers the sockets made remote. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "outgoing.h"

/* ---- configuration ---- */
static struct tl_out_config out_cfg;
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static int cfg_flag(const char *config, const char *key, int dflt) {
    size_t l;
    const char *v = tl_config_lookup(config, key, &l);
    if (!v || !l) return dflt;
    return v[0] == '1';
}

static int cfg_kind(const char *config, const char *key) {
    size_t l;
    const char *v = tl_config_lookup(config, key, &l);
    if (!v) return 0;
    if (l == 6 && !strncmp(v, "remote", 6)) return 1;
    if (l == 5 && !strncmp(v, "local", 5)) return 2;
    return 0;
}

/* "proto|net/prefix|port" */
static int parse_rule(struct tl_rule *r, const char *s, size_t n) {
    char tmp[128], *bar1, *bar2;
    if (n >= sizeof tmp) return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(r, 0, sizeof *r);
    bar1 = strchr(tmp, '|');
    if (!bar1) return -1;
    *bar1++ = '\0';
    bar2 = strchr(bar1, '|');
    if (!bar2) return -1;
    *bar2++ = '\0';
    r->proto = !strcmp(tmp, "tcp") ? TL_PROTO_TCP : !strcmp(tmp, "udp") ? TL_PROTO_UDP : 0;
    r->port = atoi(bar2);
    if (*bar1) {
        char *slash = strchr(bar1, '/');
        if (slash) *slash++ = '\0';
        if (inet_pton(AF_INET, bar1, r->addr) == 1) {
            r->family = AF_INET;
            r->prefix = slash ? atoi(slash) : 32;
        } else if (inet_pton(AF_INET6, bar1, r->addr) == 1) {
            r->family = AF_INET6;
            r->prefix = slash ? atoi(slash) : 128;
        } else {
            return -1;
        }
    }
    return 0;
}

void tl_out_parse(struct tl_out_config *c, const char *config) {
    size_t l;
    const char *v;
    memset(c, 0, sizeof *c);
    c->dns = cfg_flag(config, "dns", 1);
    c->tcp = cfg_flag(config, "out.tcp", 1);
    c->udp = cfg_flag(config, "out.udp", 1);
    c->ignore_lo = cfg_flag(config, "out.ignore_lo", 0);
    c->dns_filter = cfg_kind(config, "dns.filter");
    c->filter = cfg_kind(config, "out.filter");
    if ((v = tl_config_lookup(config, "dns.names", &l))) {
        const char *end = v + l;
        while (v < end && c->ndns_names < TL_MAX_DNS_NAMES) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            size_t n = comma ? (size_t)(comma - v) : (size_t)(end - v);
            if (n && n < sizeof c->dns_names[0]) {
                memcpy(c->dns_names[c->ndns_names], v, n);
                c->dns_names[c->ndns_names++][n] = '\0';
            }
            v += n + 1;
        }
    }
    if ((v = tl_config_lookup(config, "out.rules", &l))) {
        const char *end = v + l;
        while (v < end && c->nrules < TL_MAX_RULES) {
            const char *comma = memchr(v, ',', (size_t)(end - v));
            size_t n = comma ? (size_t)(comma - v) : (size_t)(end - v);
            if (n && parse_rule(&c->rules[c->nrules], v, n) == 0) c->nrules++;
            v += n + 1;
        }
    }
}

static void out_init(void) {
    const char *p;
    tl_init();
    p = strchr(tl_cfg.config_var, '=');
    tl_out_parse(&out_cfg, p ? p + 1 : "");
}

const struct tl_out_config *tl_out_cfg(void) {
    pthread_once(&out_once, out_init);
    return &out_cfg;
}

/* ---- the decision ---- */
static int prefix_match(const uint8_t *a, const uint8_t *net, int prefix) {
    int full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, net, (size_t)full)) return 0;
    if (!rest) return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

/* Normalise to (family, 16-byte address, port); v4-mapped IPv6 counts as IPv4. */
static int sa_parts(const struct sockaddr *sa, socklen_t len, int *family, uint8_t *addr,
                    int *port) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(addr, 0, 16);
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        *family = AF_INET;
        memcpy(addr, &s->sin_addr, 4);
        *port = ntohs(s->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        *port = ntohs(s->sin6_port);
        if (!memcmp(&s->sin6_addr, mapped, 12)) {
            *family = AF_INET;
            memcpy(addr, (const uint8_t *)&s->sin6_addr + 12, 4);
        } else {
            *family = AF_INET6;
            memcpy(addr, &s->sin6_addr, 16);
        }
        return 0;
    }
    return -1;
}

static int is_loopback(int family, const uint8_t *a) {
    static const uint8_t lo6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (family == AF_INET) return a[0] == 127;
    return !memcmp(a, lo6, 16);
}

static int is_unspecified(int family, const uint8_t *a) {
    static const uint8_t zero[16];
    return !memcmp(a, zero, family == AF_INET ? 4 : 16);
}

static int rule_matches(const struct tl_rule *r, int proto, int family, const uint8_t *a,
                        int port) {
    if (r->proto && r->proto != proto) return 0;
    if (r->port && r->port != port) return 0;
    if (r->family) {
        if (r->family != family) return 0;
        if (!prefix_match(a, r->addr, r->prefix)) return 0;
    }
    return 1;
}

/* A rule that names loopback explicitly (not "any address") is the user asking for it. */
static int rule_names_address(const struct tl_rule *r) { return r->family != 0; }

int tl_out_remote(const struct tl_out_config *c, int proto, const struct sockaddr *sa,
                  socklen_t len) {
    int family, port, matched = 0, named = 0;
    uint8_t a[16];
    if (proto == TL_PROTO_TCP && !c->tcp) return 0;
    if (proto == TL_PROTO_UDP && !c->udp) return 0;
    if (proto != TL_PROTO_TCP && proto != TL_PROTO_UDP) return 0;
    if (!sa || sa_parts(sa, len, &family, a, &port)) return 0;
    if (is_unspecified(family, a)) return 0; /* connect(0.0.0.0) means this host */
    for (int i = 0; i < c->nrules; i++) {
        if (rule_matches(&c->rules[i], proto, family, a, port)) {
            matched = 1;
            if (rule_names_address(&c->rules[i])) named = 1;
            break;
        }
    }
    if (is_loopback(family, a)) {
        /* Loopback is this machine's unless a remote filter names it (and ignore_localhost
         * is off): local databases, the layer's own sockets, dev servers stay local. */
        return !c->ignore_lo && c->filter == 1 && matched && named;
    }
    if (c->filter == 1) return matched;
    if (c->filter == 2) return !matched;
    return 1;
}

int tl_dns_remote(const struct tl_out_config *c, const char *name) {
    size_t n = strlen(name);
    int matched = 0;
    if (!c->dns || !n) return 0;
    while (n && name[n - 1] == '.') n--;
    /* localhost and its subdomains are this machine's (RFC 6761). */
    if ((n == 9 && !strncasecmp(name, "localhost", 9)) ||
        (n > 10 && !strncasecmp(name + n - 10, ".localhost", 10)))
        return 0;
    for (int i = 0; i < c->ndns_names; i++) {
        if (strlen(c->dns_names[i]) == n && !strncasecmp(c->dns_names[i], name, n)) {
            matched = 1;
            break;
        }
    }
    if (c->dns_filter == 1) return matched;
    if (c->dns_filter == 2) return !matched;
    return 1;
}

TL_EXPORT int tl_outgoing_decide(const char *config, const char *proto, const char *ip,
                                 int port) {
    static struct tl_out_config c; /* tests only: large, keep it off the stack */
    struct sockaddr_in6 s6;
    struct sockaddr_in s4;
    int p = !strcmp(proto, "tcp") ? TL_PROTO_TCP : !strcmp(proto, "udp") ? TL_PROTO_UDP : 0;
    tl_out_parse(&c, config);
    memset(&s4, 0, sizeof s4);
    memset(&s6, 0, sizeof s6);
    if (inet_pton(AF_INET, ip, &s4.sin_addr) == 1) {
        s4.sin_family = AF_INET;
        s4.sin_port = htons((uint16_t)port);
        return tl_out_remote(&c, p, (struct sockaddr *)&s4, sizeof s4);
    }
    if (inet_pton(AF_INET6, ip, &s6.sin6_addr) == 1) {
        s6.sin6_family = AF_INET6;
        s6.sin6_port = htons((uint16_t)port);
        return tl_out_remote(&c, p, (struct sockaddr *)&s6, sizeof s6);
    }
    return -1;
}

TL_EXPORT int tl_dns_decide(const char *config, const char *name) {
    static struct tl_out_config c;
    tl_out_parse(&c, config);
    return tl_dns_remote(&c, name);
}

/* ---- codec ---- */
TL_EXPORT long tl_encode_out_connect(unsigned char *buf, unsigned long cap, unsigned long id,
                                     const char *proto, int family, const unsigned char *addr,
                                     unsigned long addr_len, int port, int do_connect) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 7);
    mp_cstr(&w, "t");
    mp_cstr(&w, "out_connect");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "proto");
    mp_cstr(&w, proto);
    mp_cstr(&w, "family");
    mp_int(&w, family);
    mp_cstr(&w, "addr");
    mp_bin(&w, addr, addr_len);
    mp_cstr(&w, "port");
    mp_int(&w, port);
    mp_cstr(&w, "connect");
    mp_bool(&w, do_connect);
    return w.err ? -1 : (long)w.len;
}

static int reply_type(const unsigned char *buf, unsigned long len, const char **t, uint32_t *n) {
    mp_r r;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "t") || mp_r_str(&r, t, n)) return -1;
    return 0;
}

static int error_errno(const unsigned char *buf, unsigned long len) {
    mp_r r;
    int64_t v = 0;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "errno") || mp_r_int(&r, &v)) return 0;
    return (int)v;
}

TL_EXPORT long tl_decode_out_connect_reply(const unsigned char *buf, unsigned long len,
                                           int *mode, int *result, unsigned char *relay_addr,
                                           int *relay_len, int *relay_port) {
    mp_r r;
    const char *s;
    uint32_t n;
    int64_t v;
    if (reply_type(buf, len, &s, &n)) return -1;
    if (mp_str_eq(s, n, "error")) {
        *result = error_errno(buf, len);
        return -2;
    }
    if (!mp_str_eq(s, n, "out_connect_reply")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "mode") || mp_r_str(&r, &s, &n)) return -1;
    *mode = mp_str_eq(s, n, "fd") ? 1 : mp_str_eq(s, n, "relay") ? 2 : 0;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "result") || mp_r_int(&r, &v)) return -1;
    *result = (int)v;
    *relay_len = 0;
    *relay_port = 0;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "relay") == 0 && !mp_r_is_nil(&r)) {
        const uint8_t *a;
        uint32_t an;
        if (mp_r_arr(&r, &n) || n != 2 || mp_r_bin(&r, &a, &an) || (an != 4 && an != 16) ||
            mp_r_int(&r, &v))
            return -1;
        memcpy(relay_addr, a, an);
        *relay_len = (int)an;
        *relay_port = (int)v;
    }
    return 0;
}

TL_EXPORT long tl_decode_out_connect_local(const unsigned char *buf, unsigned long len,
                                           unsigned char *addr, int *addr_len, int *port) {
    mp_r r;
    uint32_t n, an;
    const uint8_t *a;
    int64_t v;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "local") || mp_r_is_nil(&r)) return -1;
    if (mp_r_arr(&r, &n) || n != 2 || mp_r_bin(&r, &a, &an) || (an != 4 && an != 16) ||
        mp_r_int(&r, &v))
        return -1;
    memcpy(addr, a, an);
    *addr_len = (int)an;
    *port = (int)v;
    return 0;
}

/* ---- the table of sockets made remote ---- */
#define TL_OUT_MAXFD 4096
#define MODE_FD 1
#define MODE_RELAY 2

struct out_sock {
    uint64_t ino;
    int mode;
    socklen_t peer_len;
    struct sockaddr_in6 peer; /* large enough for sockaddr_in too */
    socklen_t local_len;      /* relay mode: the target-side address the agent reported */
    struct sockaddr_in6 local;
    int dgram;                /* relay mode, UDP: datagrams go to the relay's port */
    int implicit;             /* ... moved by sendto, not connect: getpeername is ENOTCONN */
};
/* Relayed UDP sockets ever made: recvfrom/recvmsg look at the table only when non-zero. */
static int relay_dgrams;
static struct out_sock table[TL_OUT_MAXFD];

static uint64_t sock_ino(int fd) {
    struct stat st;
    if (fstat(fd, &st)) return 0;
    return (uint64_t)st.st_ino;
}

static struct out_sock *lookup(int fd) {
    if (fd < 0 || fd >= TL_OUT_MAXFD || !table[fd].mode) return NULL;
    if (sock_ino(fd) != table[fd].ino) {
        table[fd].mode = 0; /* closed and reused: forget it */
        return NULL;
    }
    return &table[fd];
}

static void remember(int fd, int mode, const struct sockaddr *peer, socklen_t plen,
                     const struct sockaddr_in6 *local, socklen_t llen) {
    if (fd < 0 || fd >= TL_OUT_MAXFD) return;
    table[fd].ino = sock_ino(fd);
    table[fd].peer_len = 0;
    table[fd].local_len = 0;
    table[fd].dgram = table[fd].implicit = 0;
    if (local && llen && llen <= (socklen_t)sizeof table[fd].local) {
        memcpy(&table[fd].local, local, llen);
        table[fd].local_len = llen;
    }
    if (peer && plen <= (socklen_t)sizeof table[fd].peer) {
        memcpy(&table[fd].peer, peer, plen);
        table[fd].peer_len = plen;
    }
    __atomic_store_n(&table[fd].mode, mode, __ATOMIC_RELEASE);
}

/* TCP or UDP over IPv4/IPv6, else 0. */
static int sock_proto(int fd, int *domain) {
    int type = 0, dom = 0;
    socklen_t l = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l)) return 0;
    l = sizeof dom;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l)) return 0;
    if (dom != AF_INET && dom != AF_INET6) return 0;
    *domain = dom;
    if (type == SOCK_STREAM) return TL_PROTO_TCP;
    if (type == SOCK_DGRAM) return TL_PROTO_UDP;
    return 0;
}

/* Options a program sets before connect and would miss on the replacement socket.
 * Buffer sizes are left alone: copying the kernel's defaults would lock them and turn off
 * autotuning. */
static const struct {
    int level, name, len;
} copied_opts[] = {
    {SOL_SOCKET, SO_KEEPALIVE, sizeof(int)},
    {SOL_SOCKET, SO_LINGER, sizeof(struct linger)},
    {SOL_SOCKET, SO_RCVTIMEO, sizeof(struct timeval)},
    {SOL_SOCKET, SO_SNDTIMEO, sizeof(struct timeval)},
    {SOL_SOCKET, SO_PRIORITY, sizeof(int)},
    {SOL_SOCKET, SO_BROADCAST, sizeof(int)},
    {SOL_SOCKET, SO_OOBINLINE, sizeof(int)},
    {IPPROTO_TCP, TCP_NODELAY, sizeof(int)},
    {IPPROTO_TCP, TCP_KEEPIDLE, sizeof(int)},
    {IPPROTO_TCP, TCP_KEEPINTVL, sizeof(int)},
    {IPPROTO_TCP, TCP_KEEPCNT, sizeof(int)},
    {IPPROTO_TCP, TCP_USER_TIMEOUT, sizeof(int)},
};

static void copy_options(int from, int to, int proto) {
    for (size_t i = 0; i < sizeof copied_opts / sizeof copied_opts[0]; i++) {
        uint8_t a[32], b[32];
        socklen_t la = (socklen_t)copied_opts[i].len, lb = la;
        if (copied_opts[i].level == IPPROTO_TCP && proto != TL_PROTO_TCP) continue;
        if (getsockopt(from, copied_opts[i].level, copied_opts[i].name, a, &la)) continue;
        if (getsockopt(to, copied_opts[i].level, copied_opts[i].name, b, &lb)) continue;
        if (la == lb && !memcmp(a, b, la)) continue;
        setsockopt(to, copied_opts[i].level, copied_opts[i].name, a, la);
    }
}

/* Put `newfd` (made in the target) where the program's `fd` is; consumes newfd. */
static int install(int newfd, int fd, int proto) {
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0) {
        syscall(SYS_close, newfd);
        return -1;
    }
    copy_options(fd, newfd, proto);
    int nfl = fcntl(newfd, F_GETFL);
    if (nfl >= 0) fcntl(newfd, F_SETFL, (nfl & ~(O_NONBLOCK | O_ASYNC)) |
                                            (fl & (O_NONBLOCK | O_ASYNC)));
    long r = syscall(SYS_dup3, newfd, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0);
    int saved = errno;
    syscall(SYS_close, newfd);
    errno = saved;
    return r < 0 ? -1 : 0;
}

/* Blocking connect: wait as the kernel would (SO_SNDTIMEO bounds it), then SO_ERROR. */
static int wait_connected(int fd) {
    struct timeval tv = {0, 0};
    socklen_t l = sizeof tv;
    int timeout = -1;
    if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &l) == 0 && (tv.tv_sec || tv.tv_usec))
        timeout = (int)(tv.tv_sec * 1000 + tv.tv_usec / 1000);
    struct pollfd p = {fd, POLLOUT, 0};
    for (;;) {
        int r = poll(&p, 1, timeout);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) {
            errno = EINPROGRESS;
            return -1;
        }
        if (r < 0) return -1;
        break;
    }
    int err = 0;
    l = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l)) return -1;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* A relayed UDP socket (the program's socket is connected to the orchestrator's loopback
 * UDP port): sendto() must not name the real destination, recvfrom() reports it. */
static void mark_dgram(int fd, int implicit) {
    if (fd < 0 || fd >= TL_OUT_MAXFD) return;
    table[fd].dgram = 1;
    table[fd].implicit = implicit;
    __atomic_store_n(&relay_dgrams, 1, __ATOMIC_RELEASE);
}

/* A sockaddr of the socket's family from a packed address (4 or 16 bytes) and port; a
 * 4-byte address for an IPv6 socket becomes v4-mapped.  Returns its length. */
static socklen_t make_sa(int family, const uint8_t *a, int alen, int port,
                         struct sockaddr_in6 *out) {
    memset(out, 0, sizeof *out);
    if (family == AF_INET && alen == 4) {
        struct sockaddr_in *s = (struct sockaddr_in *)out;
        s->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        s->sin_port = htons((uint16_t)port);
        return sizeof *s;
    }
    out->sin6_family = AF_INET6;
    out->sin6_port = htons((uint16_t)port);
    if (alen == 4) {
        ((uint8_t *)&out->sin6_addr)[10] = 0xff;
        ((uint8_t *)&out->sin6_addr)[11] = 0xff;
        memcpy((uint8_t *)&out->sin6_addr + 12, a, 4);
    } else {
        memcpy(&out->sin6_addr, a, 16);
    }
    return sizeof *out;
}

/* Ask for a socket in the target.  Returns 0 with *result (0/EINPROGRESS/errno), or -1
 * (errno set) when there is no answer.  *newfd: the target's socket (fd mode) or the
 * program's end of the relay's private pair (relay mode); *relay: an older orchestrator's
 * listener address, no longer used. */
static int ask_connect(int proto, int family, const struct sockaddr *sa, int do_connect,
                       int *mode, int *result, int *newfd, struct sockaddr_in6 *relay,
                       socklen_t *relay_len, struct sockaddr_in6 *local, socklen_t *local_len) {
    uint8_t req[256], reply[1024];
    const uint8_t *addr;
    size_t alen;
    int port;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        addr = (const uint8_t *)&s->sin_addr;
        alen = 4;
        port = ntohs(s->sin_port);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        addr = (const uint8_t *)&s->sin6_addr;
        alen = 16;
        port = ntohs(s->sin6_port);
    }
    long n = tl_encode_out_connect(req, sizeof req, tl_channel_next_id(),
                                   proto == TL_PROTO_TCP ? "tcp" : "udp", family, addr, alen,
                                   port, do_connect);
    if (n < 0) {
        errno = EINVAL;
        return -1;
    }
    long got = tl_channel_call_fd(req, (size_t)n, reply, sizeof reply, newfd);
    if (got < 0) {
        errno = ENETUNREACH; /* no session: the target is out of reach */
        return -1;
    }
    uint8_t ra[16];
    int rlen = 0, rport = 0;
    long d = tl_decode_out_connect_reply(reply, (unsigned long)got, mode, result, ra, &rlen,
                                         &rport);
    if (d == -2) {
        if (*newfd >= 0) syscall(SYS_close, *newfd);
        *newfd = -1;
        *mode = 0;
        if (!*result) *result = ECONNREFUSED;
        return 0;
    }
    if (d < 0) {
        if (*newfd >= 0) syscall(SYS_close, *newfd);
        *newfd = -1;
        errno = EPROTO;
        return -1;
    }
    if (*mode == 2 && rlen) *relay_len = make_sa(family, ra, rlen, rport, relay);
    *local_len = 0;
    if (*mode == 2 &&
        tl_decode_out_connect_local(reply, (unsigned long)got, ra, &rlen, &rport) == 0)
        *local_len = make_sa(family, ra, rlen, rport, local);
    return 0;
}

static int remote_connect(int fd, int proto, int domain, const struct sockaddr *addr,
                          socklen_t len) {
    TL_REAL(connect);
    int mode = 0, result = 0, newfd = -1, rc;
    struct sockaddr_in6 relay, local;
    socklen_t relay_len = 0, local_len = 0;
    tl_in_layer++;
    int nonblock = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    if (ask_connect(proto, domain, addr, 1, &mode, &result, &newfd, &relay, &relay_len, &local,
                    &local_len)) {
        tl_in_layer--;
        return -1;
    }
    if (mode == 1 && newfd >= 0 && (result == 0 || result == EINPROGRESS)) {
        if (install(newfd, fd, proto)) {
            tl_in_layer--;
            return -1;
        }
        remember(fd, MODE_FD, addr, len, NULL, 0);
        if (result == 0) {
            rc = 0;
        } else if (nonblock) {
            errno = EINPROGRESS;
            rc = -1;
        } else {
            rc = wait_connected(fd);
        }
        tl_in_layer--;
        return rc;
    }
    if (mode == 2 && result == 0 && newfd >= 0) {
        /* The orchestrator's end of a private loopback pair, already connected: installed
         * like a target's socket, so no other process can take the relayed connection. */
        if (install(newfd, fd, proto)) {
            tl_in_layer--;
            return -1;
        }
        remember(fd, MODE_RELAY, addr, len, &local, local_len);
        if (proto == TL_PROTO_UDP) mark_dgram(fd, 0);
        tl_in_layer--;
        return 0;
    }
    if (newfd >= 0) syscall(SYS_close, newfd);
    tl_in_layer--;
    errno = result ? result : ECONNREFUSED;
    return -1;
}

static int same_addr(const struct sockaddr *a, socklen_t al, const struct sockaddr *b,
                     socklen_t bl) {
    int fa, fb, pa, pb;
    uint8_t xa[16], xb[16];
    if (sa_parts(a, al, &fa, xa, &pa) || sa_parts(b, bl, &fb, xb, &pb)) return 0;
    return fa == fb && pa == pb && !memcmp(xa, xb, 16);
}

static int hooks_on(void) { return !tl_in_layer && tl_cfg.active && !tl_cfg.passthrough; }

TL_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    TL_REAL(connect);
    int domain = 0, proto;
    if (addr && addr->sa_family == AF_UNIX && hooks_on()) { /* unix_streams: csrc/unix.c */
        int handled, rc = tl_unix_connect(fd, addr, len, real_connect, &handled);
        return handled ? rc : real_connect(fd, addr, len);
    }
    if (!hooks_on() || !addr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
        return real_connect(fd, addr, len);
    TL_ERRNO_SAVE;
    tl_in_layer++;
    const struct tl_out_config *c = tl_out_cfg();
    proto = sock_proto(fd, &domain);
    struct out_sock *known = lookup(fd);
    if (known && known->mode == MODE_RELAY && known->dgram) {
        /* A relayed UDP socket is connected to the relay already: connecting it to its
         * destination is a no-op (it stops being "moved by sendto"); another destination
         * is not supported (one per relayed socket). */
        int same = same_addr(addr, len, (struct sockaddr *)&known->peer, known->peer_len);
        if (same) known->implicit = 0;
        tl_in_layer--;
        TL_ERRNO_RESTORE;
        if (same) return 0;
        errno = EOPNOTSUPP;
        return -1;
    }
    int remote = proto && !known && tl_out_remote(c, proto, addr, len);
    tl_in_layer--;
    TL_ERRNO_RESTORE;
    if (!remote) return real_connect(fd, addr, len);
    return remote_connect(fd, proto, domain, addr, len);
}

/* Unconnected UDP: the first datagram to a remote address moves the socket into the
 * target (only while it is unbound: a socket bound to a port here serves this machine).
 * In relay mode the program's socket is replaced by one connected to the orchestrator's
 * loopback UDP socket (and only to it) instead.  Returns 0: send as asked; 1: a relayed socket, send without the address;
 * -1: a relayed socket asked to send elsewhere (errno EOPNOTSUPP: one destination per
 * relayed socket). */
static int udp_maybe_move(int fd, const struct sockaddr *dest, socklen_t dlen) {
    int domain = 0, ret = 0;
    struct sockaddr_in6 me;
    socklen_t ml = sizeof me;
    struct out_sock *known;
    if (!dest || (dest->sa_family != AF_INET && dest->sa_family != AF_INET6)) return 0;
    TL_ERRNO_SAVE;
    tl_in_layer++;
    if (sock_proto(fd, &domain) != TL_PROTO_UDP) goto out;
    if ((known = lookup(fd))) {
        if (known->mode == MODE_RELAY && known->dgram)
            ret = same_addr(dest, dlen, (struct sockaddr *)&known->peer, known->peer_len) ? 1
                                                                                       : -1;
        goto out;
    }
    if (!tl_out_remote(tl_out_cfg(), TL_PROTO_UDP, dest, dlen)) goto out;
    if (getsockname(fd, (struct sockaddr *)&me, &ml) || me.sin6_port != 0) goto out;
    int mode = 0, result = 0, newfd = -1;
    struct sockaddr_in6 relay, local;
    socklen_t relay_len = 0, local_len = 0;
    if (ask_connect(TL_PROTO_UDP, domain, dest, 0, &mode, &result, &newfd, &relay, &relay_len,
                    &local, &local_len))
        goto out;
    if (mode == 1 && newfd >= 0 && result == 0) {
        if (install(newfd, fd, TL_PROTO_UDP) == 0) remember(fd, MODE_FD, NULL, 0, NULL, 0);
    } else if (mode == 2 && result == 0 && newfd >= 0) {
        if (install(newfd, fd, TL_PROTO_UDP) == 0) {
            remember(fd, MODE_RELAY, dest, dlen, &local, local_len);
            mark_dgram(fd, 1);
            ret = 1;
        }
    } else if (newfd >= 0) {
        syscall(SYS_close, newfd);
    }
out:
    tl_in_layer--;
    TL_ERRNO_RESTORE;
    if (ret < 0) errno = EOPNOTSUPP;
    return ret;
}

TL_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                         const struct sockaddr *dest, socklen_t dlen) {
    TL_REAL(sendto);
    if (hooks_on() && dest) {
        int r = udp_maybe_move(fd, dest, dlen);
        if (r < 0) return -1;
        if (r > 0) return real_sendto(fd, buf, n, flags, NULL, 0);
    }
    return real_sendto(fd, buf, n, flags, dest, dlen);
}

TL_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    TL_REAL(sendmsg);
    if (hooks_on() && msg && msg->msg_name) {
        int r = udp_maybe_move(fd, (const struct sockaddr *)msg->msg_name, msg->msg_namelen);
        if (r < 0) return -1;
        if (r > 0) {
            struct msghdr copy = *msg;
            copy.msg_name = NULL;
            copy.msg_namelen = 0;
            return real_sendmsg(fd, &copy, flags);
        }
    }
    return real_sendmsg(fd, msg, flags);
}

TL_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
    TL_REAL(sendmmsg);
    if (hooks_on() && vec && vlen && vec[0].msg_hdr.msg_name) {
        int r = udp_maybe_move(fd, (const struct sockaddr *)vec[0].msg_hdr.msg_name,
                               vec[0].msg_hdr.msg_namelen);
        if (r < 0) return -1;
        if (r > 0) {
            /* A relayed socket: send the datagrams one by one without their address (each
             * must name the same destination; the first that does not ends the batch). */
            unsigned int i;
            for (i = 0; i < vlen; i++) {
                struct msghdr copy = vec[i].msg_hdr;
                if (i && udp_maybe_move(fd, (const struct sockaddr *)copy.msg_name,
                                        copy.msg_namelen) <= 0)
                    break;
                copy.msg_name = NULL;
                copy.msg_namelen = 0;
                TL_REAL(sendmsg);
                ssize_t s = real_sendmsg(fd, &copy, flags);
                if (s < 0) break;
                vec[i].msg_len = (unsigned int)s;
            }
            return i ? (int)i : -1;
        }
    }
    return real_sendmmsg(fd, vec, vlen, flags);
}

/* Relay mode only: the peer is the address the program connected to, not the relay. */
TL_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *alen) {
    TL_REAL(getpeername);
    int rc = real_getpeername(fd, addr, alen);
    if (rc || !hooks_on() || !addr || !alen) return rc;
    TL_ERRNO_SAVE;
    tl_in_layer++;
    struct out_sock *s = lookup(fd);
    if (s && s->mode == MODE_RELAY && s->implicit) {
        tl_in_layer--;
        errno = ENOTCONN; /* moved by sendto: the program never connected it */
        return -1;
    }
    if (s && s->mode == MODE_RELAY && s->peer_len) {
        socklen_t n = *alen < s->peer_len ? *alen : s->peer_len;
        memcpy(addr, &s->peer, n);
        *alen = s->peer_len;
    } else {
        tl_in_getpeername(fd, addr, alen); /* an accepted relay connection: its client */
    }
    tl_in_layer--;
    TL_ERRNO_RESTORE;
    return rc;
}

/* Relay mode only: the socket's own address is the one the agent's socket has in the
 * target, not the loopback end of the relay.  Called by the getsockname hook
 * (incoming.c); 1 when it answered. */
int tl_out_getsockname(int fd, struct sockaddr *addr, socklen_t *alen) {
    if (!hooks_on() || !addr || !alen) return 0;
    tl_in_layer++;
    struct out_sock *s = lookup(fd);
    int answered = 0;
    if (s && s->mode == MODE_RELAY && s->local_len) {
        memcpy(addr, &s->local, *alen < s->local_len ? *alen : s->local_len);
        *alen = s->local_len;
        answered = 1;
    }
    tl_in_layer--;
    return answered;
}

/* A relayed UDP socket receives from the relay's loopback port: report the real peer. */
static void fix_source(int fd, struct sockaddr *addr, socklen_t *alen) {
    if (!addr || !alen || !__atomic_load_n(&relay_dgrams, __ATOMIC_ACQUIRE) || !hooks_on())
        return;
    TL_ERRNO_SAVE;
    tl_in_layer++;
    struct out_sock *s = lookup(fd);
    if (s && s->mode == MODE_RELAY && s->dgram && s->peer_len) {
        memcpy(addr, &s->peer, *alen < s->peer_len ? *alen : s->peer_len);
        *alen = s->peer_len;
    }
    tl_in_layer--;
    TL_ERRNO_RESTORE;
}

TL_EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *src,
                           socklen_t *slen) {
    TL_REAL(recvfrom);
    ssize_t r = real_recvfrom(fd, buf, n, flags, src, slen);
    if (r >= 0) fix_source(fd, src, slen);
    return r;
}

TL_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    TL_REAL(recvmsg);
    ssize_t r = real_recvmsg(fd, msg, flags);
    if (r >= 0 && msg && msg->msg_name) fix_source(fd, msg->msg_name, &msg->msg_namelen);
    return r;
}
