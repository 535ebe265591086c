/* Internal declarations shared by the layer's C files.  Nothing here is exported:
 * the only exported symbols of libtether_layer.so are the hooked libc entry points and
 * the tl_* test entry points declared in layer/tether_layer_api.h. */
#ifndef TETHER_LAYER_H
#define TETHER_LAYER_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "protocol_gen.h"
#include "tether_layer_api.h"

#define TL_HIDDEN __attribute__((visibility("hidden")))
#define TL_EXPORT __attribute__((visibility("default")))

/* Per-thread "inside the layer" flag: a hook entered while set goes straight to libc,
 * so the layer's own calls (connect of its channel, close of a stale fd, getenv from
 * inside libc) never loop back into policy. */
extern __thread int tl_in_layer TL_HIDDEN __attribute__((tls_model("initial-exec")));

/* Saves errno on entry, restores on exit unless the hook sets a new one. */
#define TL_ERRNO_SAVE int tl_saved_errno_ = errno
#define TL_ERRNO_RESTORE errno = tl_saved_errno_

/* ---- init.c: configuration parsed once from the environment at load time ---- */
struct tl_config {
    int active;        /* a tether session is present (TETHER_LAYER_SOCK set) */
    int passthrough;   /* skipped process: hooks do nothing but keep the layer for children */
    int env_fallback;  /* environment was scrubbed before exec: getenv consults the session */
    char sock_path[108];
    char so_path[512];     /* this library, to restore LD_PRELOAD across exec */
    char preload[1024];    /* LD_PRELOAD=... as given to the first process */
    char sock_var[160];    /* TETHER_LAYER_SOCK=... */
    char so_var[560];      /* TETHER_LAYER_SO=... */
    char config_var[8192]; /* TETHER_LAYER_CONFIG=... */
    char skip[512];        /* comma separated program names */
    char launcher[560];    /* tether-launch next to this library ("" if absent) */
};
extern struct tl_config tl_cfg TL_HIDDEN;

TL_HIDDEN void tl_init(void);
/* The value of `key` in TETHER_LAYER_CONFIG ("k=v;k=v"): a pointer into the config with its
 * length in *len (not NUL-terminated), or NULL when absent.  Features parse their own keys
 * once, at their own first use. */
TL_HIDDEN const char *tl_config_value(const char *key, size_t *len);
/* The same lookup in a given config text (the supervisor's and the tests' entry points). */
TL_HIDDEN const char *tl_config_lookup(const char *config, const char *key, size_t *len);
TL_HIDDEN void *tl_real(const char *name);
#define TL_REAL(name)                                                                \
    static __typeof__(name) *real_##name;                                            \
    if (!real_##name) real_##name = (__typeof__(name) *)tl_real(#name)

/* ---- incoming.c ---- */
/* The remote client an accepted relay connection stands for; 1 if fd is one. */
TL_HIDDEN int tl_in_getpeername(int fd, struct sockaddr *addr, socklen_t *alen);

/* ---- outgoing.c ---- */
/* A socket outgoing made remote in relay mode: its target-side address; 1 if fd is one. */
TL_HIDDEN int tl_out_getsockname(int fd, struct sockaddr *addr, socklen_t *alen);

/* ---- unix.c ---- */
/* connect() of a Unix socket: served in the target if its name matches unix_streams
 * (*handled = 1, the result returned), else *handled = 0. */
TL_HIDDEN int tl_unix_connect(int fd, const struct sockaddr *addr, socklen_t len,
                              int (*real_connect)(int, const struct sockaddr *, socklen_t),
                              int *handled);

/* ---- channel.c: the per-process session with the orchestrator ---- */
/* The channel's descriptor (-1: none); read on every close(), so a plain variable. */
extern int tl_chan_fd TL_HIDDEN;
static inline int tl_channel_fd(void) { return tl_chan_fd; }
static inline int tl_channel_is(int fd) { return fd >= 0 && fd == tl_chan_fd; }
/* Move the channel off `fd` (a program wants that number). 0 on success. */
TL_HIDDEN int tl_channel_evict(int fd);

/* ---- liveness.c: the descriptor that keeps the session while the program's tree lives ---- */
extern int tl_live_fd TL_HIDDEN;     /* -1: none */
extern char tl_live_var[48] TL_HIDDEN; /* TETHER_LIVENESS_FD=<n>, for the exec hooks */
TL_HIDDEN void tl_liveness_init(void);
/* Move the liveness descriptor off `fd` (a program wants that number). 0 on success. */
TL_HIDDEN int tl_liveness_evict(int fd);
/* Descriptors the program cannot close or reuse: the channel and the liveness pipe. */
static inline int tl_fd_protected(int fd) {
    return fd >= 0 && (fd == tl_chan_fd || fd == tl_live_fd);
}
static inline int tl_fd_evict(int fd) {
    return fd == tl_live_fd ? tl_liveness_evict(fd) : tl_channel_evict(fd);
}
/* Send one request frame and wait for the reply with the same id.  Returns the reply
 * body length written to `reply`, or -1 (errno set) when there is no session. */
TL_HIDDEN long tl_channel_call(const uint8_t *req, size_t req_len, uint8_t *reply,
                               size_t reply_cap);
/* The same, for replies that carry a descriptor (SCM_RIGHTS): *fd_out receives it (close-
 * on-exec) or -1.  The caller owns it. */
TL_HIDDEN long tl_channel_call_fd(const uint8_t *req, size_t req_len, uint8_t *reply,
                                  size_t reply_cap, int *fd_out);
TL_HIDDEN uint32_t tl_channel_next_id(void);
TL_HIDDEN void tl_channel_after_fork_child(void);

/* ---- codec.c: a minimal msgpack writer/reader over caller buffers (no malloc) ---- */
typedef struct {
    uint8_t *p;
    size_t len, cap;
    int err;
} mp_w;
typedef struct {
    const uint8_t *p;
    size_t len, pos;
    int err;
} mp_r;

TL_HIDDEN void mp_w_init(mp_w *w, uint8_t *buf, size_t cap);
TL_HIDDEN void mp_map(mp_w *w, uint32_t n);
TL_HIDDEN void mp_arr(mp_w *w, uint32_t n);
TL_HIDDEN void mp_str(mp_w *w, const char *s, size_t n);
TL_HIDDEN void mp_cstr(mp_w *w, const char *s);
TL_HIDDEN void mp_bin(mp_w *w, const void *s, size_t n);
TL_HIDDEN void mp_int(mp_w *w, int64_t v);
TL_HIDDEN void mp_nil(mp_w *w);
TL_HIDDEN void mp_bool(mp_w *w, int v);

TL_HIDDEN void mp_r_init(mp_r *r, const uint8_t *buf, size_t len);
TL_HIDDEN int mp_r_map(mp_r *r, uint32_t *n);
TL_HIDDEN int mp_r_arr(mp_r *r, uint32_t *n);
TL_HIDDEN int mp_r_str(mp_r *r, const char **s, uint32_t *n);
TL_HIDDEN int mp_r_bin(mp_r *r, const uint8_t **s, uint32_t *n);
TL_HIDDEN int mp_r_int(mp_r *r, int64_t *v);
TL_HIDDEN int mp_r_skip(mp_r *r);
TL_HIDDEN int mp_r_is_nil(mp_r *r);
/* Find key `key` in the map at the reader's position; leaves the reader on its value. */
TL_HIDDEN int mp_r_find(mp_r *r, const char *key);
TL_HIDDEN int mp_str_eq(const char *s, uint32_t n, const char *lit);

#endif
