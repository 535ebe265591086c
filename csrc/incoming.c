/* Incoming traffic (feature.network.incoming): the program listens, tether brings it the
 * target's traffic on that port.
 *
 * bind()   TCP sockets of the program that would serve a target port (any address, a
 *          non-loopback one, or loopback unless ignore_localhost) bind locally for real:
 *          on the same port if it is free, else on listen_ports' port or an ephemeral one.
 *          The socket is remembered (fd + inode, so a reused number is never mistaken).
 * listen() after the real listen, one round trip "in_listen": the orchestrator subscribes
 *          the target port (mirror or steal) and answers when traffic can flow.
 * accept() connections the orchestrator makes to the listener come from loopback; one
 *          round trip "in_peer" (keyed by the orchestrator's local port) returns the real
 *          remote peer, which accept reports instead of 127.0.0.1.
 * getsockname() reports the port the program asked for, not the one it really got.
 *
 * Listeners change hands (reloaders, pre-fork servers, spawned workers, sockets passed over
 * a Unix socket or by socket activation): a process that listens on, accepts from, or asks
 * getsockname of a listening socket it did not bind itself *adopts* it with one round trip
 * ("in_listen" with adopt): the orchestrator knows which target port that local port serves
 * (it saw the bind, "in_bind", or another process's listen) and subscribes it if needed.
 * Every bind of a served port is reported ("in_bind"), so a process that only binds and
 * hands the socket on (uvicorn's reloader) keeps the port subscribed while workers come
 * and go.  Accepted connections that reach a process without its accept (Node's cluster
 * workers get them over IPC) learn their real client in getpeername, once per socket.
 *
 * Decisions come from TETHER_LAYER_CONFIG (see features/incoming.py layer_config):
 *   in_mode=mirror|steal  (absent or off: nothing here does anything)
 *   in_ports=P,P          only these target ports (absent: all)
 *   in_ignore=P,P         never these
 *   in_map=L:R,L:R        port_mapping: local port L serves target port R
 *   in_listen=R:L,R:L     listen_ports: target port R is served by a local listen on L
 *   in_ignore_lo=1        loopback binds stay local */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "incoming_api.h"
#include "layer.h"

#define IN_MAX_PORTS 64
#define IN_MAX_SOCKS 128

struct port_pair {
    uint16_t a, b;
};

struct in_config {
    int enabled;
    int ignore_lo;
    int n_ports, n_ignore, n_map, n_listen;
    int ports_set;
    uint16_t ports[IN_MAX_PORTS];
    uint16_t ignore[IN_MAX_PORTS];
    struct port_pair map[IN_MAX_PORTS];    /* local -> remote */
    struct port_pair listen[IN_MAX_PORTS]; /* remote -> local */
};
static struct in_config in_cfg;

struct in_sock {
    int used;
    int fd;
    ino_t ino;
    uint16_t want_port;   /* what the program asked for (getsockname reports it) */
    uint16_t remote_port; /* the target port it serves */
    uint16_t local_port;  /* what it really got */
    int subscribed;
    /* remote_port 0: looked at and not ours (a local-only bind or an adopted socket the
     * orchestrator does not serve): never ask again for this socket. */
};

static struct in_sock socks[IN_MAX_SOCKS];
static pthread_mutex_t socks_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t in_once = PTHREAD_ONCE_INIT;

static int parse_u16(const char **p, const char *end, uint16_t *out) {
    unsigned long v = 0;
    int digits = 0;
    while (*p < end && **p >= '0' && **p <= '9') {
        v = v * 10 + (unsigned long)(**p - '0');
        if (v > 65535) return -1;
        (*p)++;
        digits++;
    }
    if (!digits) return -1;
    *out = (uint16_t)v;
    return 0;
}

static int parse_list(const char *config, const char *key, uint16_t *out) {
    size_t len;
    const char *v = tl_config_lookup(config, key, &len);
    int n = 0;
    if (!v) return -1;
    const char *p = v, *end = v + len;
    while (p < end && n < IN_MAX_PORTS) {
        if (parse_u16(&p, end, &out[n]) == 0) n++;
        while (p < end && *p != ',') p++;
        if (p < end) p++;
    }
    return n;
}

static int parse_pairs(const char *config, const char *key, struct port_pair *out) {
    size_t len;
    const char *v = tl_config_lookup(config, key, &len);
    int n = 0;
    if (!v) return 0;
    const char *p = v, *end = v + len;
    while (p < end && n < IN_MAX_PORTS) {
        if (parse_u16(&p, end, &out[n].a) == 0 && p < end && *p == ':') {
            p++;
            if (parse_u16(&p, end, &out[n].b) == 0) n++;
        }
        while (p < end && *p != ',') p++;
        if (p < end) p++;
    }
    return n;
}

static void in_parse_from(const char *config, struct in_config *c) {
    size_t len;
    const char *mode = tl_config_lookup(config, "in_mode", &len);
    c->enabled = mode && ((len == 6 && memcmp(mode, "mirror", 6) == 0) ||
                          (len == 5 && memcmp(mode, "steal", 5) == 0));
    const char *lo = tl_config_lookup(config, "in_ignore_lo", &len);
    c->ignore_lo = lo && len == 1 && lo[0] == '1';
    int n = parse_list(config, "in_ports", c->ports);
    c->ports_set = n >= 0;
    c->n_ports = n > 0 ? n : 0;
    n = parse_list(config, "in_ignore", c->ignore);
    c->n_ignore = n > 0 ? n : 0;
    c->n_map = parse_pairs(config, "in_map", c->map);
    c->n_listen = parse_pairs(config, "in_listen", c->listen);
}

static void in_parse(void) { in_parse_from(tl_cfg.config_var, &in_cfg); }

static void in_init(void) {
    tl_init();
    pthread_once(&in_once, in_parse);
}

static int in_active(void) {
    if (tl_in_layer || !tl_cfg.active || tl_cfg.passthrough) return 0;
    in_init();
    return in_cfg.enabled;
}

static int in_list(const uint16_t *list, int n, uint16_t port) {
    for (int i = 0; i < n; i++)
        if (list[i] == port) return 1;
    return 0;
}

/* The target port a bind of `port` serves (0: stays local), and where to bind locally. */
static uint16_t decide_with(const struct in_config *c, uint16_t port, int loopback,
                            uint16_t *local_port) {
    uint16_t remote = port;
    *local_port = port;
    if (port == 0 || (loopback && c->ignore_lo)) return 0;
    for (int i = 0; i < c->n_map; i++)
        if (c->map[i].a == port) remote = c->map[i].b;
    if (c->ports_set && !in_list(c->ports, c->n_ports, remote)) return 0;
    if (in_list(c->ignore, c->n_ignore, remote)) return 0;
    for (int i = 0; i < c->n_listen; i++)
        if (c->listen[i].a == remote) *local_port = c->listen[i].b;
    return remote;
}

/* Does port_mapping name `port` as a local port? */
static int mapped(uint16_t port) {
    for (int i = 0; i < in_cfg.n_map; i++)
        if (in_cfg.map[i].a == port) return 1;
    return 0;
}

static uint16_t decide(uint16_t port, int loopback, uint16_t *local_port) {
    return decide_with(&in_cfg, port, loopback, local_port);
}

/* The target port a socket already bound at local `port` serves, as far as the port rules
 * tell (adopted sockets: the bind happened in another process image).  listen_ports names
 * its local ports; an ephemeral port is only ours if port_mapping names it (else the
 * orchestrator may know it from the bind). */
static uint16_t remote_of_local(uint16_t port, int loopback) {
    uint16_t unused;
    for (int i = 0; i < in_cfg.n_listen; i++)
        if (in_cfg.listen[i].b == port) return in_cfg.listen[i].a;
    if (port >= 32768 && !mapped(port)) return 0;
    return decide(port, loopback, &unused);
}

/* The same decision for a given TETHER_LAYER_CONFIG text ("k=v;..."): the seccomp
 * supervisor decides for programs the layer cannot reach with this very code.  Returns
 * the target port served (0: stays local) or -1 when incoming traffic is off. */
TL_EXPORT long tl_incoming_decide_with(const char *config, long port, int loopback,
                                       long *local_port) {
    struct in_config c;
    uint16_t lp;
    memset(&c, 0, sizeof c);
    in_parse_from(config, &c);
    if (!c.enabled) return -1;
    if (port <= 0 || port > 65535) return 0;
    uint16_t r = decide_with(&c, (uint16_t)port, loopback, &lp);
    *local_port = lp;
    return r;
}

TL_EXPORT long tl_incoming_decide(long port, int loopback, long *local_port) {
    uint16_t lp;
    in_init();
    if (port <= 0 || port > 65535) return 0;
    uint16_t r = decide((uint16_t)port, loopback, &lp);
    *local_port = lp;
    return r;
}

static int is_loopback(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return 1;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return in6->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

static uint16_t sa_port(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

static void sa_set_port(struct sockaddr *sa, uint16_t port) {
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)sa)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
}

static ino_t fd_ino(int fd) {
    struct stat st;
    if (fstat(fd, &st)) return 0;
    return st.st_ino;
}

/* The entry for fd, if it is the very socket we recorded.  Caller holds socks_lock. */
static struct in_sock *find_locked(int fd, ino_t ino) {
    for (int i = 0; i < IN_MAX_SOCKS; i++)
        if (socks[i].used && socks[i].fd == fd) {
            if (socks[i].ino == ino) return &socks[i];
            socks[i].used = 0; /* the number was reused: forget the stale entry */
        }
    return NULL;
}

static int lookup(int fd, struct in_sock *out) {
    ino_t ino = fd_ino(fd);
    int found = 0;
    if (!ino) return 0;
    pthread_mutex_lock(&socks_lock);
    struct in_sock *s = find_locked(fd, ino);
    if (s) {
        *out = *s;
        found = 1;
    }
    pthread_mutex_unlock(&socks_lock);
    return found;
}

static void record(int fd, uint16_t want, uint16_t remote, uint16_t local) {
    ino_t ino = fd_ino(fd);
    if (!ino) return;
    pthread_mutex_lock(&socks_lock);
    struct in_sock *s = find_locked(fd, ino);
    for (int i = 0; !s && i < IN_MAX_SOCKS; i++)
        if (!socks[i].used) s = &socks[i];
    for (int i = 0; !s && i < IN_MAX_SOCKS; i++)
        if (fd_ino(socks[i].fd) != socks[i].ino) s = &socks[i]; /* full: drop a closed one */
    if (s) {
        s->used = 1;
        s->fd = fd;
        s->ino = ino;
        s->want_port = want;
        s->remote_port = remote;
        s->local_port = local;
        s->subscribed = 0;
    }
    pthread_mutex_unlock(&socks_lock);
}

static void mark_subscribed(int fd) {
    ino_t ino = fd_ino(fd);
    pthread_mutex_lock(&socks_lock);
    struct in_sock *s = find_locked(fd, ino);
    if (s) s->subscribed = 1;
    pthread_mutex_unlock(&socks_lock);
}

TL_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    TL_REAL(bind);
    TL_ERRNO_SAVE;
    if (!addr || !in_active()) return real_bind(fd, addr, len);
    if (!((addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
          (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))))
        return real_bind(fd, addr, len);
    int type = 0;
    socklen_t tl = sizeof type;
    tl_in_layer++;
    int r = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl);
    tl_in_layer--;
    if (r || type != SOCK_STREAM) {
        TL_ERRNO_RESTORE;
        return real_bind(fd, addr, len);
    }
    uint16_t want = sa_port(addr), local;
    uint16_t remote = decide(want, is_loopback(addr), &local);
    if (!remote) {
        TL_ERRNO_RESTORE;
        int rc = real_bind(fd, addr, len);
        if (rc == 0) {
            TL_ERRNO_SAVE;
            tl_in_layer++;
            record(fd, want, 0, want); /* stays local: no round trip at listen */
            tl_in_layer--;
            TL_ERRNO_RESTORE;
        }
        return rc;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, addr, len < sizeof ss ? len : sizeof ss);
    sa_set_port((struct sockaddr *)&ss, local);
    int rc = real_bind(fd, (struct sockaddr *)&ss, len);
    if (rc && errno == EADDRINUSE) {
        /* The port is taken on this machine: serve the target's port from another one;
         * getsockname keeps reporting the requested port. */
        sa_set_port((struct sockaddr *)&ss, 0);
        rc = real_bind(fd, (struct sockaddr *)&ss, len);
    }
    if (rc) return rc;
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    TL_REAL(getsockname);
    if (real_getsockname(fd, (struct sockaddr *)&got, &gl) == 0) local = sa_port((struct sockaddr *)&got);
    tl_in_layer++;
    record(fd, want, remote, local);
    tl_in_layer--;
    /* Tell the orchestrator which target port this local port serves: a process that
     * only binds and hands the socket on (a reloader) holds the subscription while its
     * workers come and go, and they adopt the socket by its local port. */
    uint8_t req[128], reply[256];
    long n = tl_encode_in_bind(req, sizeof req, tl_channel_next_id(), remote, want, local);
    if (n > 0) tl_channel_call(req, (size_t)n, reply, sizeof reply);
    TL_ERRNO_RESTORE;
    return 0;
}

TL_EXPORT long tl_encode_in_listen(unsigned char *buf, unsigned long cap, unsigned long id,
                                   long port, long local_port, const char *addr,
                                   long family, int adopt) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, adopt ? 7 : 6);
    mp_cstr(&w, "t");
    mp_cstr(&w, "in_listen");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "port");
    mp_int(&w, port);
    mp_cstr(&w, "local_port");
    mp_int(&w, local_port);
    mp_cstr(&w, "addr");
    mp_cstr(&w, addr);
    mp_cstr(&w, "family");
    mp_int(&w, family);
    if (adopt) {
        mp_cstr(&w, "adopt");
        mp_bool(&w, 1);
    }
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_in_bind(unsigned char *buf, unsigned long cap, unsigned long id,
                                 long port, long want, long local_port) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 5);
    mp_cstr(&w, "t");
    mp_cstr(&w, "in_bind");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "port");
    mp_int(&w, port);
    mp_cstr(&w, "want");
    mp_int(&w, want);
    mp_cstr(&w, "local_port");
    mp_int(&w, local_port);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_in_peer(unsigned char *buf, unsigned long cap, unsigned long id,
                                 long port, long listen_port) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 4);
    mp_cstr(&w, "t");
    mp_cstr(&w, "in_peer");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "port");
    mp_int(&w, port);
    mp_cstr(&w, "listen_port");
    mp_int(&w, listen_port);
    return w.err ? -1 : (long)w.len;
}

static int reply_is(const unsigned char *buf, unsigned long len, const char *type) {
    mp_r r;
    const char *s;
    uint32_t n;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "t") || mp_r_str(&r, &s, &n)) return 0;
    return mp_str_eq(s, n, type);
}

TL_EXPORT long tl_decode_in_peer_reply(const unsigned char *buf, unsigned long len,
                                       unsigned long *id, char *addr, unsigned long addr_cap,
                                       long *port) {
    mp_r r;
    int64_t v;
    const char *s;
    uint32_t n;
    if (!reply_is(buf, len, "in_peer_reply")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "id") || mp_r_int(&r, &v)) return -1;
    *id = (unsigned long)v;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "addr")) return -1;
    if (mp_r_is_nil(&r)) return 0;
    if (mp_r_str(&r, &s, &n) || n + 1 > addr_cap) return -1;
    memcpy(addr, s, n);
    addr[n] = '\0';
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "port") || mp_r_int(&r, &v) || v < 0 || v > 65535) return -1;
    *port = (long)v;
    return 1;
}

/* in_listen_reply: 1 when subscribed (ok), 0 when not, -1 when malformed.  *port and
 * *want receive the target port served and the port getsockname reports (adopted sockets:
 * the orchestrator knows them; 0 when the reply does not say). */
TL_EXPORT long tl_decode_in_listen_reply(const unsigned char *buf, unsigned long len,
                                         long *port, long *want) {
    mp_r r;
    int64_t v;
    if (!reply_is(buf, len, "in_listen_reply")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "ok") || r.pos >= r.len) return -1;
    int ok = r.p[r.pos] == 0xc3;
    *port = *want = 0;
    mp_r_init(&r, buf, len);
    if (!mp_r_find(&r, "port") && !mp_r_int(&r, &v) && v > 0 && v <= 65535) *port = (long)v;
    mp_r_init(&r, buf, len);
    if (!mp_r_find(&r, "want") && !mp_r_int(&r, &v) && v > 0 && v <= 65535) *want = (long)v;
    return ok;
}

static void sa_text(const struct sockaddr_storage *ss, char *text, size_t cap) {
    text[0] = '\0';
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, text, (socklen_t)cap);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, text, (socklen_t)cap);
}

/* Ask the orchestrator to serve the target port through this listener.  1: subscribed. */
static int ask_listen(int fd, uint16_t port, uint16_t local, int adopt, long *port_out,
                      long *want_out) {
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    char text[INET6_ADDRSTRLEN] = "";
    TL_REAL(getsockname);
    memset(&got, 0, sizeof got);
    if (real_getsockname(fd, (struct sockaddr *)&got, &gl) == 0) sa_text(&got, text, sizeof text);
    uint8_t req[256], reply[512];
    long n = tl_encode_in_listen(req, sizeof req, tl_channel_next_id(), port, local, text,
                                 got.ss_family == AF_INET6 ? 6 : 4, adopt);
    *port_out = port;
    *want_out = port;
    if (n <= 0 || (n = tl_channel_call(req, (size_t)n, reply, sizeof reply)) <= 0) return 0;
    long p, w;
    int ok = (int)tl_decode_in_listen_reply(reply, (unsigned long)n, &p, &w);
    if (p) *port_out = p;
    if (w) *want_out = w;
    return ok == 1;
}

/* A listening socket this process did not bind (inherited across exec, passed over a Unix
 * socket, socket activation): ask whether it serves a target port, and remember the answer
 * either way (one round trip per socket).  Caller checked it is not known. */
static void adopt(int fd) {
    int type = 0;
    socklen_t tl = sizeof type;
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    TL_REAL(getsockname);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM ||
        real_getsockname(fd, (struct sockaddr *)&got, &gl) ||
        (got.ss_family != AF_INET && got.ss_family != AF_INET6)) {
        record(fd, 0, 0, 0); /* not a TCP listener: never look again */
        return;
    }
    uint16_t local = sa_port((struct sockaddr *)&got);
    /* Our guess from the port rules (the orchestrator knows better if it saw the bind). */
    uint16_t guess = remote_of_local(local, is_loopback((struct sockaddr *)&got));
    long port, want;
    int ok = ask_listen(fd, guess, local, 1, &port, &want);
    record(fd, ok ? (uint16_t)want : local, ok ? (uint16_t)port : 0, local);
    if (ok) mark_subscribed(fd);
}

/* The socket's entry, adopting it first if it listens and we never saw it.  0: not ours. */
static int lookup_or_adopt(int fd, struct in_sock *out, int check_listening) {
    tl_in_layer++;
    int known = lookup(fd, out);
    if (!known) {
        int acc = 0;
        socklen_t al = sizeof acc;
        if (!check_listening ||
            (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) == 0 && acc)) {
            adopt(fd);
            known = lookup(fd, out);
        }
    }
    tl_in_layer--;
    return known && out->remote_port;
}

/* listen() failed with EADDRINUSE on a socket bound for a target port: something else on
 * this machine started listening on that port after the bind (with SO_REUSEADDR both
 * binds succeed, only one may listen).  Serve the target port from another local port:
 * a new socket with the same options, bound to the same address on port 0, listening,
 * installed over the program's descriptor (its number and flags kept); getsockname keeps
 * reporting the asked port.  0 on success. */
static int listen_elsewhere(int fd, int backlog) {
    TL_REAL(listen);
    TL_REAL(bind);
    TL_REAL(getsockname);
    struct sockaddr_storage addr;
    socklen_t al = sizeof addr;
    if (real_getsockname(fd, (struct sockaddr *)&addr, &al) ||
        (addr.ss_family != AF_INET && addr.ss_family != AF_INET6))
        return -1;
    int nfd = (int)syscall(SYS_socket, addr.ss_family, SOCK_STREAM, 0);
    if (nfd < 0) return -1;
    static const int opts[][2] = {{SOL_SOCKET, SO_REUSEADDR}, {SOL_SOCKET, SO_REUSEPORT},
                                  {SOL_SOCKET, SO_KEEPALIVE}, {IPPROTO_TCP, TCP_NODELAY},
                                  {IPPROTO_TCP, TCP_DEFER_ACCEPT}, {IPPROTO_IPV6, IPV6_V6ONLY}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        int v = 0;
        socklen_t vl = sizeof v;
        if (opts[i][0] == IPPROTO_IPV6 && addr.ss_family != AF_INET6) continue;
        if (getsockopt(fd, opts[i][0], opts[i][1], &v, &vl) == 0)
            setsockopt(nfd, opts[i][0], opts[i][1], &v, sizeof v);
    }
    sa_set_port((struct sockaddr *)&addr, 0);
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (real_bind(nfd, (struct sockaddr *)&addr, al) || real_listen(nfd, backlog) ||
        (fl >= 0 && fcntl(nfd, F_SETFL, fl) < 0) ||
        syscall(SYS_dup3, nfd, fd, fdfl >= 0 && (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) {
        syscall(SYS_close, nfd);
        return -1;
    }
    syscall(SYS_close, nfd);
    return 0;
}

TL_EXPORT int listen(int fd, int backlog) {
    TL_REAL(listen);
    int rc = real_listen(fd, backlog);
    if (rc && errno == EADDRINUSE && in_active()) {
        struct in_sock s;
        TL_ERRNO_SAVE;
        tl_in_layer++;
        int known = lookup(fd, &s), ours = known && s.remote_port;
        if (!known) { /* bound in another process image (a reloader): the port rules say */
            struct sockaddr_storage b;
            socklen_t bl = sizeof b;
            TL_REAL(getsockname);
            if (real_getsockname(fd, (struct sockaddr *)&b, &bl) == 0 &&
                (b.ss_family == AF_INET || b.ss_family == AF_INET6)) {
                uint16_t port = sa_port((struct sockaddr *)&b);
                s.remote_port = remote_of_local(port, is_loopback((struct sockaddr *)&b));
                s.want_port = s.remote_port;
                ours = s.remote_port != 0;
            }
        }
        if (ours && listen_elsewhere(fd, backlog) == 0) {
            struct sockaddr_storage got;
            socklen_t gl = sizeof got;
            TL_REAL(getsockname);
            if (real_getsockname(fd, (struct sockaddr *)&got, &gl) == 0) {
                /* the descriptor is a new socket now: record it under its inode */
                record(fd, s.want_port, s.remote_port, sa_port((struct sockaddr *)&got));
                rc = 0;
            }
        }
        tl_in_layer--;
        if (rc) TL_ERRNO_RESTORE;
    }
    if (rc || !in_active()) return rc;
    TL_ERRNO_SAVE;
    struct in_sock s;
    tl_in_layer++;
    int known = lookup(fd, &s);
    tl_in_layer--;
    if (!known) {
        lookup_or_adopt(fd, &s, 0); /* bound elsewhere: adopt (subscribes if it serves) */
        TL_ERRNO_RESTORE;
        return rc;
    }
    if (s.subscribed || !s.remote_port) {
        TL_ERRNO_RESTORE;
        return rc;
    }
    /* The orchestrator answers once traffic can flow (or says why it cannot, in its log:
     * the program's own listen still succeeds, locally). */
    long port, want;
    if (ask_listen(fd, s.remote_port, s.local_port, 0, &port, &want)) {
        tl_in_layer++;
        mark_subscribed(fd);
        tl_in_layer--;
    }
    TL_ERRNO_RESTORE;
    return rc;
}

/* The remote client of each accepted relay connection, for getpeername() later: Node and
 * others accept with a NULL address and ask getpeername (libuv). Indexed by descriptor,
 * checked by inode so a reused number is not mistaken. */
#define IN_MAX_PEERS 4096
struct in_peer {
    ino_t ino;
    socklen_t len; /* 0 with ino set: asked, not one of ours */
    struct sockaddr_storage addr;
};
static struct in_peer peers[IN_MAX_PEERS];

static void remember_peer(int fd, const struct sockaddr_storage *addr, socklen_t len) {
    if (fd < 0 || fd >= IN_MAX_PEERS) return;
    peers[fd].ino = fd_ino(fd);
    peers[fd].len = len;
    if (len) memcpy(&peers[fd].addr, addr, len);
}

/* Is local port `port` one a target port is served on?  The port rules say so, or a
 * listener this process knows. */
static int serves_local_port(uint16_t port) {
    /* An ephemeral port may be a busy port moved (the bind happened in another process):
     * only the orchestrator knows, so ask. */
    if (port >= 32768 || remote_of_local(port, 0)) return 1;
    int found = 0;
    pthread_mutex_lock(&socks_lock);
    for (int i = 0; i < IN_MAX_SOCKS && !found; i++)
        found = socks[i].used && socks[i].remote_port && socks[i].local_port == port;
    pthread_mutex_unlock(&socks_lock);
    return found;
}

static int ask_peer(int cfd, const struct sockaddr_storage *peer, uint16_t listen_port,
                    struct sockaddr_storage *out, socklen_t *ol);

/* Called by the getpeername hook (tl_in_layer set) after the real call succeeded. */
int tl_in_getpeername(int fd, struct sockaddr *addr, socklen_t *alen) {
    if (fd < 0 || fd >= IN_MAX_PEERS || !addr || !alen) return 0;
    ino_t ino = fd_ino(fd);
    if (peers[fd].ino && ino != peers[fd].ino) peers[fd].ino = 0, peers[fd].len = 0;
    if (!peers[fd].ino) {
        /* A connection this process did not accept itself (Node's cluster workers get
         * them from the primary): if it came from the orchestrator to a served port, ask
         * who it stands for, once. */
        in_init();
        if (!in_cfg.enabled || !tl_cfg.active || tl_cfg.passthrough) return 0;
        struct sockaddr_storage peer, local, out;
        socklen_t pl = sizeof peer, ll = sizeof local, ol = 0;
        TL_REAL(getpeername);
        TL_REAL(getsockname);
        if (real_getpeername(fd, (struct sockaddr *)&peer, &pl) ||
            !is_loopback((struct sockaddr *)&peer) ||
            real_getsockname(fd, (struct sockaddr *)&local, &ll) ||
            !serves_local_port(sa_port((struct sockaddr *)&local)))
            return 0;
        if (!ask_peer(fd, &peer, sa_port((struct sockaddr *)&local), &out, &ol)) ol = 0;
        remember_peer(fd, &out, ol);
        if (!ol) return 0;
    }
    if (!peers[fd].len) return 0;
    memcpy(addr, &peers[fd].addr, peers[fd].len < *alen ? peers[fd].len : *alen);
    *alen = peers[fd].len;
    return 1;
}

/* in_peer: the remote client the orchestrator's connection from `peer` stands for, in
 * the family of `peer` (v4-mapped on a dual-stack listener).  1 with *out set. */
static int ask_peer(int cfd, const struct sockaddr_storage *peer, uint16_t listen_port,
                    struct sockaddr_storage *out, socklen_t *ol) {
    (void)cfd;
    uint8_t req[128], reply[256];
    char text[INET6_ADDRSTRLEN + 1];
    unsigned long id;
    long port;
    long n = tl_encode_in_peer(req, sizeof req, tl_channel_next_id(),
                               sa_port((const struct sockaddr *)peer), listen_port);
    if (n <= 0 || (n = tl_channel_call(req, (size_t)n, reply, sizeof reply)) <= 0 ||
        tl_decode_in_peer_reply(reply, (unsigned long)n, &id, text, sizeof text, &port) != 1)
        return 0;
    memset(out, 0, sizeof *out);
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        if (peer->ss_family == AF_INET6) { /* dual-stack listener: v4-mapped */
            struct sockaddr_in6 *o = (struct sockaddr_in6 *)out;
            o->sin6_family = AF_INET6;
            o->sin6_port = htons((uint16_t)port);
            o->sin6_addr.s6_addr[10] = 0xff;
            o->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&o->sin6_addr.s6_addr[12], &a4, 4);
            *ol = sizeof *o;
        } else {
            struct sockaddr_in *o = (struct sockaddr_in *)out;
            o->sin_family = AF_INET;
            o->sin_port = htons((uint16_t)port);
            o->sin_addr = a4;
            *ol = sizeof *o;
        }
    } else if (inet_pton(AF_INET6, text, &a6) == 1 && peer->ss_family == AF_INET6) {
        struct sockaddr_in6 *o = (struct sockaddr_in6 *)out;
        o->sin6_family = AF_INET6;
        o->sin6_port = htons((uint16_t)port);
        o->sin6_addr = a6;
        *ol = sizeof *o;
    } else {
        return 0;
    }
    return 1;
}

/* accept() on a subscribed listener: replace a loopback peer that is the orchestrator's
 * relay with the remote client it stands for (also when the caller passed no address). */
static void fix_peer(int lfd, int cfd, struct sockaddr *addr, socklen_t *alen) {
    struct sockaddr_storage scratch;
    socklen_t scratch_len = sizeof scratch;
    if (cfd < 0 || !in_active()) return;
    if (!addr || !alen) {
        addr = (struct sockaddr *)&scratch;
        alen = &scratch_len;
    }
    TL_ERRNO_SAVE;
    struct in_sock s;
    tl_in_layer++;
    int known = lookup(lfd, &s);
    tl_in_layer--;
    if (!known || !s.subscribed) return;
    /* The kernel may have truncated the address; ask for the full one. */
    struct sockaddr_storage peer, out;
    socklen_t pl = sizeof peer, ol = 0;
    tl_in_layer++;
    int r = getpeername(cfd, (struct sockaddr *)&peer, &pl);
    tl_in_layer--;
    if (r || !is_loopback((struct sockaddr *)&peer) ||
        !ask_peer(cfd, &peer, s.local_port, &out, &ol)) {
        TL_ERRNO_RESTORE;
        return;
    }
    memcpy(addr, &out, ol < *alen ? ol : *alen);
    *alen = ol;
    tl_in_layer++;
    remember_peer(cfd, &out, ol);
    tl_in_layer--;
    TL_ERRNO_RESTORE;
}

/* Before a real accept on a listener this process never saw (it would wait forever if
 * nothing subscribed its port): adopt it. */
static void before_accept(int fd) {
    if (!in_active()) return;
    TL_ERRNO_SAVE;
    struct in_sock s;
    lookup_or_adopt(fd, &s, 1);
    TL_ERRNO_RESTORE;
}

TL_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *alen) {
    TL_REAL(accept);
    before_accept(fd);
    int c = real_accept(fd, addr, alen);
    fix_peer(fd, c, addr, alen);
    return c;
}

TL_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
    TL_REAL(accept4);
    before_accept(fd);
    int c = real_accept4(fd, addr, alen, flags);
    fix_peer(fd, c, addr, alen);
    return c;
}

TL_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *alen) {
    TL_REAL(getsockname);
    int rc = real_getsockname(fd, addr, alen);
    if (rc || !addr || !alen) return rc;
    {
        TL_ERRNO_SAVE;
        int answered = tl_out_getsockname(fd, addr, alen); /* outgoing over the relay */
        TL_ERRNO_RESTORE;
        if (answered) return rc;
    }
    if (!in_active()) return rc;
    if (!(addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) return rc;
    if (*alen < (addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                            : sizeof(struct sockaddr_in6)))
        return rc;
    TL_ERRNO_SAVE;
    struct in_sock s;
    /* A listener handed to this process (Werkzeug's reloader child, socket activation)
     * is usually first asked its address: adopt it here, before anyone waits on it. */
    int known = lookup_or_adopt(fd, &s, 1);
    if (known && s.want_port && s.want_port != s.local_port) sa_set_port(addr, s.want_port);
    TL_ERRNO_RESTORE;
    return rc;
}
