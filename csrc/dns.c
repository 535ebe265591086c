/* Name resolution through the target: getaddrinfo and the gethostbyname family.
 *
 * A name goes to the target (its /etc/hosts, its resolv.conf, from inside its network
 * namespace; see python/tether/agent/dns.py) when feature.network.dns says so; numeric
 * addresses, NULL nodes and localhost never leave this machine.  Services, socket types
 * and protocols are expanded by the real getaddrinfo on a numeric placeholder, so the
 * program gets exactly the entries libc would build, with the target's addresses.
 * Results are allocated the way glibc's freeaddrinfo frees them (entry and address in one
 * block, canonical name separately), so the real freeaddrinfo releases them. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "outgoing.h"

#define MAX_ADDRS 32

struct lookup {
    int n;
    int families[MAX_ADDRS];
    uint8_t addrs[MAX_ADDRS][16];
    char canon[256];
};

TL_EXPORT long tl_encode_dns_lookup(unsigned char *buf, unsigned long cap, unsigned long id,
                                    const char *name, int family, int addrconfig) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 5);
    mp_cstr(&w, "t");
    mp_cstr(&w, "dns_lookup");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "name");
    mp_cstr(&w, name);
    mp_cstr(&w, "family");
    mp_int(&w, family);
    mp_cstr(&w, "addrconfig");
    mp_bool(&w, addrconfig);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_decode_dns_lookup_reply(const unsigned char *buf, unsigned long len,
                                          int *families, unsigned char *addrs, long max,
                                          char *canon, unsigned long canon_cap, int *eai) {
    mp_r r;
    const char *s;
    uint32_t n, cnt;
    int64_t v;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "t") || mp_r_str(&r, &s, &n)) return -1;
    if (mp_str_eq(s, n, "error")) {
        mp_r_init(&r, buf, len);
        *eai = EAI_FAIL;
        if (mp_r_find(&r, "errno") == 0 && mp_r_int(&r, &v) == 0 && v > 0) *eai = -(int)v;
        return -2;
    }
    if (!mp_str_eq(s, n, "dns_lookup_reply")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "canon") || mp_r_str(&r, &s, &n)) return -1;
    if (canon_cap) {
        size_t c = n < canon_cap - 1 ? n : canon_cap - 1;
        memcpy(canon, s, c);
        canon[c] = '\0';
    }
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "addrs") || mp_r_arr(&r, &cnt)) return -1;
    long out = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t two, an;
        const uint8_t *a;
        if (mp_r_arr(&r, &two) || two != 2 || mp_r_int(&r, &v) || mp_r_bin(&r, &a, &an))
            return -1;
        if (!((v == AF_INET && an == 4) || (v == AF_INET6 && an == 16))) return -1;
        if (out < max) {
            families[out] = (int)v;
            memset(addrs + 16 * out, 0, 16);
            memcpy(addrs + 16 * out, a, an);
            out++;
        }
    }
    return out;
}

static int is_numeric(const char *name) {
    uint8_t buf[16];
    char tmp[64];
    const char *pct = strchr(name, '%');
    if (inet_aton(name, (struct in_addr *)buf)) return 1;
    if (pct && (size_t)(pct - name) < sizeof tmp) { /* fe80::1%eth0 */
        memcpy(tmp, name, (size_t)(pct - name));
        tmp[pct - name] = '\0';
        name = tmp;
    }
    return inet_pton(AF_INET6, name, buf) == 1;
}

/* 0 with l filled, or an EAI_* code (EAI_SYSTEM with errno when the session is gone). */
static int remote_lookup(const char *name, int family, int addrconfig, struct lookup *l) {
    uint8_t req[512], reply[4096];
    int eai = 0;
    long n = tl_encode_dns_lookup(req, sizeof req, tl_channel_next_id(), name, family,
                                  addrconfig);
    if (n < 0) return EAI_NONAME; /* a name that long does not exist */
    long got = tl_channel_call(req, (size_t)n, reply, sizeof reply);
    if (got < 0) return EAI_AGAIN;
    long c = tl_decode_dns_lookup_reply(reply, (unsigned long)got, l->families,
                                        (unsigned char *)l->addrs, MAX_ADDRS, l->canon,
                                        sizeof l->canon, &eai);
    if (c == -2) return eai ? eai : EAI_FAIL;
    if (c < 0) return EAI_FAIL;
    if (c == 0) return EAI_NONAME;
    l->n = (int)c;
    return 0;
}

/* Called with tl_in_layer raised by the hook (the check of the caller's flag is done
 * before). */
static int dns_hooked(const char *name) {
    return tl_cfg.active && !tl_cfg.passthrough && name && !is_numeric(name) &&
           tl_dns_remote(tl_out_cfg(), name);
}

TL_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                          struct addrinfo **res) {
    TL_REAL(getaddrinfo);
    int family = hints ? hints->ai_family : AF_UNSPEC;
    int flags = hints ? hints->ai_flags : (AI_V4MAPPED | AI_ADDRCONFIG);
    if (!node || (flags & AI_NUMERICHOST) ||
        (family != AF_UNSPEC && family != AF_INET && family != AF_INET6))
        return real_getaddrinfo(node, service, hints, res);
    if (tl_in_layer) return real_getaddrinfo(node, service, hints, res);
    tl_init();
    tl_in_layer++;
    int hooked = dns_hooked(node);
    tl_in_layer--;
    if (!hooked) return real_getaddrinfo(node, service, hints, res);

    TL_ERRNO_SAVE;
    /* The entries libc would build for this service and hints, on a placeholder address. */
    struct addrinfo th, *tmpl = NULL;
    memset(&th, 0, sizeof th);
    th.ai_family = AF_INET;
    th.ai_socktype = hints ? hints->ai_socktype : 0;
    th.ai_protocol = hints ? hints->ai_protocol : 0;
    th.ai_flags = AI_NUMERICHOST | (flags & AI_NUMERICSERV);
    tl_in_layer++;
    int rc = real_getaddrinfo("127.0.0.1", service, &th, &tmpl);
    if (rc) {
        tl_in_layer--;
        return rc;
    }
    struct lookup l;
    int v4mapped = family == AF_INET6 && (flags & AI_V4MAPPED);
    memset(&l, 0, sizeof l);
    rc = remote_lookup(node, v4mapped ? AF_UNSPEC : family, (flags & AI_ADDRCONFIG) != 0, &l);
    tl_in_layer--;
    if (rc) {
        freeaddrinfo(tmpl);
        return rc;
    }
    if (v4mapped) {
        int have6 = 0;
        for (int i = 0; i < l.n; i++) have6 |= l.families[i] == AF_INET6;
        int k = 0;
        for (int i = 0; i < l.n; i++) {
            if (l.families[i] == AF_INET6) {
                memmove(l.addrs[k], l.addrs[i], 16);
            } else if (!have6 || (flags & AI_ALL)) {
                uint8_t v4[4];
                memcpy(v4, l.addrs[i], 4);
                memset(l.addrs[k], 0, 16);
                l.addrs[k][10] = l.addrs[k][11] = 0xff;
                memcpy(l.addrs[k] + 12, v4, 4);
            } else {
                continue;
            }
            l.families[k++] = AF_INET6;
        }
        l.n = k;
    }
    struct addrinfo *head = NULL, **tail = &head;
    for (int i = 0; i < l.n; i++) {
        for (struct addrinfo *t = tmpl; t; t = t->ai_next) {
            int fam = l.families[i];
            socklen_t alen = fam == AF_INET ? sizeof(struct sockaddr_in)
                                            : sizeof(struct sockaddr_in6);
            struct addrinfo *ai = calloc(1, sizeof *ai + sizeof(struct sockaddr_in6));
            if (!ai) {
                freeaddrinfo(head);
                freeaddrinfo(tmpl);
                return EAI_MEMORY;
            }
            uint16_t port = ((struct sockaddr_in *)t->ai_addr)->sin_port;
            ai->ai_family = fam;
            ai->ai_socktype = t->ai_socktype;
            ai->ai_protocol = t->ai_protocol;
            ai->ai_addrlen = alen;
            ai->ai_addr = (struct sockaddr *)(ai + 1);
            if (fam == AF_INET) {
                struct sockaddr_in *s = (struct sockaddr_in *)ai->ai_addr;
                s->sin_family = AF_INET;
                s->sin_port = port;
                memcpy(&s->sin_addr, l.addrs[i], 4);
            } else {
                struct sockaddr_in6 *s = (struct sockaddr_in6 *)ai->ai_addr;
                s->sin6_family = AF_INET6;
                s->sin6_port = port;
                memcpy(&s->sin6_addr, l.addrs[i], 16);
            }
            if (!head && (flags & AI_CANONNAME)) ai->ai_canonname = strdup(l.canon);
            *tail = ai;
            tail = &ai->ai_next;
        }
    }
    freeaddrinfo(tmpl);
    if (!head) return EAI_NONAME;
    *res = head;
    TL_ERRNO_RESTORE;
    return 0;
}

/* Fill a hostent in buf; ERANGE when it does not fit. */
static int fill_hostent(const struct lookup *l, int af, struct hostent *h, char *buf,
                        size_t buflen) {
    int alen = af == AF_INET ? 4 : 16, n = 0;
    for (int i = 0; i < l->n; i++) n += l->families[i] == af;
    size_t canon = strlen(l->canon) + 1;
    uintptr_t p = (uintptr_t)buf, end = p + buflen;
    p = (p + sizeof(char *) - 1) & ~(uintptr_t)(sizeof(char *) - 1);
    size_t need = sizeof(char *) * ((size_t)n + 2) + (size_t)n * (size_t)alen + canon;
    if (p + need > end) return ERANGE;
    char **list = (char **)p, **aliases = list + n + 1;
    char *data = (char *)(aliases + 1);
    int k = 0;
    for (int i = 0; i < l->n; i++) {
        if (l->families[i] != af) continue;
        memcpy(data, l->addrs[i], (size_t)alen);
        list[k++] = data;
        data += alen;
    }
    list[k] = NULL;
    aliases[0] = NULL;
    memcpy(data, l->canon, canon);
    h->h_name = data;
    h->h_aliases = aliases;
    h->h_addrtype = af;
    h->h_length = alen;
    h->h_addr_list = list;
    return 0;
}

TL_EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf,
                               size_t buflen, struct hostent **result, int *h_errnop) {
    TL_REAL(gethostbyname2_r);
    if (af != AF_INET && af != AF_INET6)
        return real_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
    if (tl_in_layer) return real_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
    tl_init();
    tl_in_layer++;
    int hooked = dns_hooked(name);
    tl_in_layer--;
    if (!hooked) return real_gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
    struct lookup l;
    memset(&l, 0, sizeof l);
    *result = NULL;
    tl_in_layer++;
    int rc = remote_lookup(name, af, 0, &l);
    tl_in_layer--;
    if (rc) {
        *h_errnop = rc == EAI_AGAIN ? TRY_AGAIN : rc == EAI_FAIL ? NO_RECOVERY : HOST_NOT_FOUND;
        return rc == EAI_AGAIN ? EAGAIN : ENOENT;
    }
    if (fill_hostent(&l, af, ret, buf, buflen)) {
        *h_errnop = NETDB_INTERNAL;
        return ERANGE;
    }
    if (!ret->h_addr_list[0]) {
        *h_errnop = NO_DATA;
        return ENOENT;
    }
    *result = ret;
    return 0;
}

TL_EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t buflen,
                              struct hostent **result, int *h_errnop) {
    return gethostbyname2_r(name, AF_INET, ret, buf, buflen, result, h_errnop);
}

TL_EXPORT struct hostent *gethostbyname2(const char *name, int af) {
    /* Not reentrant, like libc's: one static result, as POSIX allows. */
    static struct hostent h;
    static char buf[2048];
    struct hostent *result = NULL;
    int herr = 0;
    gethostbyname2_r(name, af, &h, buf, sizeof buf, &result, &herr);
    if (!result) h_errno = herr;
    return result;
}

TL_EXPORT struct hostent *gethostbyname(const char *name) {
    return gethostbyname2(name, AF_INET);
}
