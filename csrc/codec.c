/* A minimal msgpack codec over caller-provided buffers.  It never allocates, so it is safe
 * in a child between fork and exec.  Integers, strings and containers use the smallest
 * encoding, exactly as Python's msgpack does, so both sides produce identical bytes for
 * the vectors in layer/protocol.json. */
#include <string.h>

#include "layer.h"

void mp_w_init(mp_w *w, uint8_t *buf, size_t cap) {
    w->p = buf;
    w->len = 0;
    w->cap = cap;
    w->err = 0;
}

static void put(mp_w *w, const void *s, size_t n) {
    if (w->err || w->cap - w->len < n) {
        w->err = 1;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void put_be(mp_w *w, uint8_t tag, uint64_t v, int bytes) {
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++) b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(w, b, (size_t)bytes + 1);
}

static void put_len(mp_w *w, uint32_t n, uint8_t fix, uint32_t fixmax, uint8_t t8, uint8_t t16,
                    uint8_t t32) {
    if (n <= fixmax) {
        uint8_t b = (uint8_t)(fix | n);
        put(w, &b, 1);
    } else if (t8 && n <= 0xff) {
        put_be(w, t8, n, 1);
    } else if (n <= 0xffff) {
        put_be(w, t16, n, 2);
    } else {
        put_be(w, t32, n, 4);
    }
}

void mp_map(mp_w *w, uint32_t n) { put_len(w, n, 0x80, 15, 0, 0xde, 0xdf); }
void mp_arr(mp_w *w, uint32_t n) { put_len(w, n, 0x90, 15, 0, 0xdc, 0xdd); }
void mp_str(mp_w *w, const char *s, size_t n) {
    put_len(w, (uint32_t)n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    put(w, s, n);
}
void mp_cstr(mp_w *w, const char *s) { mp_str(w, s, strlen(s)); }
void mp_bin(mp_w *w, const void *s, size_t n) {
    if (n <= 0xff)
        put_be(w, 0xc4, n, 1);
    else if (n <= 0xffff)
        put_be(w, 0xc5, n, 2);
    else
        put_be(w, 0xc6, n, 4);
    put(w, s, n);
}
void mp_nil(mp_w *w) {
    uint8_t b = 0xc0;
    put(w, &b, 1);
}
void mp_bool(mp_w *w, int v) {
    uint8_t b = v ? 0xc3 : 0xc2;
    put(w, &b, 1);
}
void mp_int(mp_w *w, int64_t v) {
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u <= 0x7f) {
            uint8_t b = (uint8_t)u;
            put(w, &b, 1);
        } else if (u <= 0xff)
            put_be(w, 0xcc, u, 1);
        else if (u <= 0xffff)
            put_be(w, 0xcd, u, 2);
        else if (u <= 0xffffffffu)
            put_be(w, 0xce, u, 4);
        else
            put_be(w, 0xcf, u, 8);
    } else if (v >= -32) {
        uint8_t b = (uint8_t)(int8_t)v;
        put(w, &b, 1);
    } else if (v >= -128)
        put_be(w, 0xd0, (uint8_t)(int8_t)v, 1);
    else if (v >= -32768)
        put_be(w, 0xd1, (uint16_t)(int16_t)v, 2);
    else if (v >= INT32_MIN)
        put_be(w, 0xd2, (uint32_t)(int32_t)v, 4);
    else
        put_be(w, 0xd3, (uint64_t)v, 8);
}

/* ---- reader ---- */
void mp_r_init(mp_r *r, const uint8_t *buf, size_t len) {
    r->p = buf;
    r->len = len;
    r->pos = 0;
    r->err = 0;
}

static int need(mp_r *r, size_t n) {
    if (r->err || r->len - r->pos < n) {
        r->err = 1;
        return 0;
    }
    return 1;
}

static uint64_t get_be(mp_r *r, int bytes) {
    uint64_t v = 0;
    if (!need(r, (size_t)bytes)) return 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[r->pos++];
    return v;
}

static int get_tag(mp_r *r, uint8_t *tag) {
    if (!need(r, 1)) return -1;
    *tag = r->p[r->pos++];
    return 0;
}

static int get_len(mp_r *r, uint8_t fix, uint8_t fixmask, uint8_t t8, uint8_t t16, uint8_t t32,
                   uint32_t *n) {
    uint8_t t;
    if (get_tag(r, &t)) return -1;
    if (fixmask && (t & (uint8_t)~fixmask) == fix)
        *n = t & fixmask;
    else if (t8 && t == t8)
        *n = (uint32_t)get_be(r, 1);
    else if (t == t16)
        *n = (uint32_t)get_be(r, 2);
    else if (t == t32)
        *n = (uint32_t)get_be(r, 4);
    else {
        r->pos--;
        r->err = 1;
        return -1;
    }
    return r->err ? -1 : 0;
}

int mp_r_map(mp_r *r, uint32_t *n) { return get_len(r, 0x80, 0x0f, 0, 0xde, 0xdf, n); }
int mp_r_arr(mp_r *r, uint32_t *n) { return get_len(r, 0x90, 0x0f, 0, 0xdc, 0xdd, n); }
int mp_r_str(mp_r *r, const char **s, uint32_t *n) {
    if (get_len(r, 0xa0, 0x1f, 0xd9, 0xda, 0xdb, n)) return -1;
    if (!need(r, *n)) return -1;
    *s = (const char *)r->p + r->pos;
    r->pos += *n;
    return 0;
}
int mp_r_bin(mp_r *r, const uint8_t **s, uint32_t *n) {
    if (get_len(r, 0x00, 0x00, 0xc4, 0xc5, 0xc6, n)) return -1;
    if (!need(r, *n)) return -1;
    *s = r->p + r->pos;
    r->pos += *n;
    return 0;
}
int mp_r_is_nil(mp_r *r) { return need(r, 1) && r->p[r->pos] == 0xc0; }

int mp_r_int(mp_r *r, int64_t *v) {
    uint8_t t;
    if (get_tag(r, &t)) return -1;
    if (t <= 0x7f)
        *v = t;
    else if (t >= 0xe0)
        *v = (int8_t)t;
    else
        switch (t) {
        case 0xcc: *v = (int64_t)get_be(r, 1); break;
        case 0xcd: *v = (int64_t)get_be(r, 2); break;
        case 0xce: *v = (int64_t)get_be(r, 4); break;
        case 0xcf: *v = (int64_t)get_be(r, 8); break;
        case 0xd0: *v = (int8_t)get_be(r, 1); break;
        case 0xd1: *v = (int16_t)get_be(r, 2); break;
        case 0xd2: *v = (int32_t)get_be(r, 4); break;
        case 0xd3: *v = (int64_t)get_be(r, 8); break;
        default: r->err = 1; return -1;
        }
    return r->err ? -1 : 0;
}

int mp_r_skip(mp_r *r) {
    uint8_t t;
    uint32_t n;
    if (!need(r, 1)) return -1;
    t = r->p[r->pos];
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
        r->pos++;
        return 0;
    }
    if ((t & 0xe0) == 0xa0 || t == 0xd9 || t == 0xda || t == 0xdb) {
        const char *s;
        return mp_r_str(r, &s, &n);
    }
    if (t == 0xc4 || t == 0xc5 || t == 0xc6) {
        const uint8_t *s;
        return mp_r_bin(r, &s, &n);
    }
    if ((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf) {
        if (mp_r_map(r, &n)) return -1;
        for (uint32_t i = 0; i < 2 * n; i++)
            if (mp_r_skip(r)) return -1;
        return 0;
    }
    if ((t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd) {
        if (mp_r_arr(r, &n)) return -1;
        for (uint32_t i = 0; i < n; i++)
            if (mp_r_skip(r)) return -1;
        return 0;
    }
    int64_t v;
    switch (t) {
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
    case 0xd0: case 0xd1: case 0xd2: case 0xd3:
        return mp_r_int(r, &v);
    case 0xca: r->pos += need(r, 5) ? 5 : 0; return r->err ? -1 : 0;
    case 0xcb: r->pos += need(r, 9) ? 9 : 0; return r->err ? -1 : 0;
    default: r->err = 1; return -1;
    }
}

int mp_str_eq(const char *s, uint32_t n, const char *lit) {
    size_t l = strlen(lit);
    return l == n && memcmp(s, lit, n) == 0;
}

int mp_r_find(mp_r *r, const char *key) {
    mp_r save = *r;
    uint32_t n;
    if (mp_r_map(r, &n)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t kl;
        if (mp_r_str(r, &k, &kl)) break;
        if (mp_str_eq(k, kl, key)) return 0;
        if (mp_r_skip(r)) break;
    }
    *r = save;
    r->err = 1;
    return -1;
}

/* ---- message encoders and decoders (checked against layer/protocol.json) ---- */
TL_EXPORT long tl_encode_hello(unsigned char *buf, unsigned long cap, long pid, long ppid,
                               const char *exe) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 5);
    mp_cstr(&w, "t");
    mp_cstr(&w, "hello");
    mp_cstr(&w, "v");
    mp_int(&w, TETHER_PROTOCOL_VERSION);
    mp_cstr(&w, "pid");
    mp_int(&w, pid);
    mp_cstr(&w, "ppid");
    mp_int(&w, ppid);
    mp_cstr(&w, "exe");
    mp_cstr(&w, exe);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_env(unsigned char *buf, unsigned long cap, unsigned long id) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 2);
    mp_cstr(&w, "t");
    mp_cstr(&w, "env");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    return w.err ? -1 : (long)w.len;
}

static int expect_type(const unsigned char *buf, unsigned long len, const char *type) {
    mp_r r;
    const char *s;
    uint32_t n;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "t") || mp_r_str(&r, &s, &n)) return -1;
    return mp_str_eq(s, n, type) ? 0 : -1;
}

TL_EXPORT long tl_decode_hello_ok(const unsigned char *buf, unsigned long len, long *session) {
    mp_r r;
    int64_t v;
    if (expect_type(buf, len, "hello_ok")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "session") || mp_r_int(&r, &v)) return -1;
    *session = (long)v;
    return 0;
}

TL_EXPORT long tl_decode_env_reply(const unsigned char *buf, unsigned long len,
                                   unsigned long *id, char *out, unsigned long out_cap) {
    mp_r r;
    int64_t v;
    uint32_t n;
    size_t used = 0;
    if (expect_type(buf, len, "env_reply")) return -1;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "id") || mp_r_int(&r, &v)) return -1;
    *id = (unsigned long)v;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "env") || mp_r_map(&r, &n)) return -1;
    for (uint32_t i = 0; i < n; i++) {
        const char *k, *val;
        uint32_t kl, vl;
        if (mp_r_str(&r, &k, &kl) || mp_r_str(&r, &val, &vl)) return -1;
        if (used + kl + vl + 2 > out_cap) return -1;
        memcpy(out + used, k, kl);
        out[used + kl] = '=';
        memcpy(out + used + kl + 1, val, vl);
        out[used + kl + 1 + vl] = '\0';
        used += kl + vl + 2;
    }
    return (long)n;
}
