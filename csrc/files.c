/* Remote files (feature.fs): the program opens, stats and lists the target's files.
 *
 * The decision local / remote / ENOENT is made here, in C, from a table the
 * orchestrator puts in TETHER_LAYER_CONFIG (python/tether/features/files.py):
 *   fs=read|write|local|localwithoverrides   the mode (absent: the feature is off)
 *   fs_lp, fs_lt, fs_ls, fs_lc, fs_rr         default local prefixes, local trees (their
 *                                             ancestors are local too), local suffixes,
 *                                             local substrings, remote read-only paths
 *   fs_rw, fs_ro, fs_lo, fs_nf                the user's read_write, read_only, local and
 *                                             not_found regexes, as POSIX EREs
 * Items are comma separated and percent-encoded (%25 %2C %3B %3D).  The order of the
 * decision is mirrord's (see decide()).  Paths are made absolute against the local cwd
 * and normalized lexically (no symlinks are followed locally) before deciding.
 *
 * A remote open asks the orchestrator, which gets a descriptor opened inside the target
 * (or a memfd with its content when the agent's link cannot carry descriptors) and passes
 * it over the channel: the program's read/pread/lseek/mmap/fstat/close/dup on it are
 * native, with no hook.  A remote directory is such a descriptor too, so fdopendir,
 * readdir, getdents and openat(dirfd, "relative") on it are native.  stat, readlink and
 * realpath answers come back as values; mkdir, rmdir, unlink, rename and statfs of a remote
 * path are done by the agent in the target (fs_change, fs_statfs). */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "files.h"
#include "files_api.h"

/* Legacy stat entry points that old binaries (Node 20 among them) still import. */
int __xstat(int ver, const char *path, struct stat *buf);
int __xstat64(int ver, const char *path, struct stat64 *buf);
int __lxstat(int ver, const char *path, struct stat *buf);
int __lxstat64(int ver, const char *path, struct stat64 *buf);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags);
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int eaccess(const char *path, int mode);

#define FS_NST 16 /* the stat integers on the wire (messages_files.STAT_FIELDS) */
#define FS_NSF 12 /* the statfs integers on the wire (messages_files.STATFS_FIELDS) */
#define FS_REPLY_CAP (PATH_MAX + 512)

static struct fs_table table;
static int fs_on; /* the feature decides paths in this process */
static pthread_once_t fs_once = PTHREAD_ONCE_INIT;
static long (*real_syscall)(long, ...);

/* ------------------------------------------------------------------ config table */

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one percent-encoded item into the arena; NULL when the arena is full. */
static const char *arena_item(struct fs_table *t, const char *s, size_t n, size_t *out_len) {
    char *dst = t->arena + t->used;
    size_t k = 0;
    if (t->used + n + 1 > sizeof t->arena) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            dst[k++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            dst[k++] = s[i];
        }
    }
    dst[k] = '\0';
    t->used += k + 1;
    *out_len = k;
    return dst;
}

static void parse_list(struct fs_table *t, const char *cfg, const char *key, struct fs_list *l) {
    size_t len;
    const char *v = tl_config_lookup(cfg, key, &len), *end;
    l->n = 0;
    if (!v) return;
    end = v + len;
    while (v < end && l->n < FS_MAX_ITEMS) {
        const char *c = memchr(v, ',', (size_t)(end - v));
        size_t n = c ? (size_t)(c - v) : (size_t)(end - v);
        if (n) {
            const char *item = arena_item(t, v, n, &l->len[l->n]);
            if (!item) return;
            l->item[l->n++] = item;
        }
        v += n + 1;
    }
}

static int parse_regexes(struct fs_table *t, const char *cfg, const char *key,
                         struct fs_regexes *rx) {
    struct fs_list tmp;
    int bad = 0;
    parse_list(t, cfg, key, &tmp);
    rx->n = 0;
    for (int i = 0; i < tmp.n && rx->n < FS_MAX_REGEX; i++) {
        if (regcomp(&rx->re[rx->n], tmp.item[i], REG_EXTENDED | REG_ICASE | REG_NOSUB) == 0)
            rx->n++;
        else
            bad = 1; /* the orchestrator validated them: only a layer/orchestrator mismatch */
    }
    return bad ? -1 : 0;
}

static int parse_table(struct fs_table *t, const char *cfg) {
    size_t len;
    const char *mode = tl_config_lookup(cfg, "fs", &len);
    int rc = 0;
    memset(t, 0, sizeof *t);
    t->mode = FS_MODE_LOCAL;
    if (!mode) return 0;
    if (len == 4 && !strncmp(mode, "read", 4))
        t->mode = FS_MODE_READ;
    else if (len == 5 && !strncmp(mode, "write", 5))
        t->mode = FS_MODE_WRITE;
    else if (len == 18 && !strncmp(mode, "localwithoverrides", 18))
        t->mode = FS_MODE_LOCAL_OVERRIDES;
    else if (len == 5 && !strncmp(mode, "local", 5))
        return 0;
    else
        return -1;
    parse_list(t, cfg, "fs_lp", &t->prefix);
    parse_list(t, cfg, "fs_lt", &t->tree);
    parse_list(t, cfg, "fs_ls", &t->suffix);
    parse_list(t, cfg, "fs_lc", &t->contains);
    parse_list(t, cfg, "fs_rr", &t->remote_ro);
    rc |= parse_regexes(t, cfg, "fs_rw", &t->rw);
    rc |= parse_regexes(t, cfg, "fs_ro", &t->ro);
    rc |= parse_regexes(t, cfg, "fs_lo", &t->lo);
    rc |= parse_regexes(t, cfg, "fs_nf", &t->nf);
    return rc;
}

static void free_table(struct fs_table *t) {
    struct fs_regexes *all[] = {&t->rw, &t->ro, &t->lo, &t->nf};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        for (int j = 0; j < all[i]->n; j++) regfree(&all[i]->re[j]);
}

static void add_item(struct fs_table *t, struct fs_list *l, const char *s) {
    size_t n = strlen(s);
    if (!n || l->n >= FS_MAX_ITEMS || t->used + n + 1 > sizeof t->arena) return;
    memcpy(t->arena + t->used, s, n + 1);
    l->item[l->n] = t->arena + t->used;
    l->len[l->n++] = n;
    t->used += n + 1;
}

/* ------------------------------------------------------------------ paths */

TL_EXPORT int tl_fs_normalize(const char *cwd, const char *path, char *out, unsigned long cap) {
    char buf[PATH_MAX * 2];
    const char *src = path;
    size_t n = 0;
    if (cap < 2) return -1;
    if (path[0] != '/') {
        int w = snprintf(buf, sizeof buf, "%s/%s", cwd, path);
        if (w < 0 || (size_t)w >= sizeof buf) return -1;
        src = buf;
    }
    /* out is built component by component; ".." pops the last one. */
    out[n++] = '/';
    for (const char *p = src; *p;) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != '/') e++;
        size_t l = (size_t)(e - p);
        if (l == 1 && p[0] == '.') {
        } else if (l == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 1 && out[n - 1] != '/') n--;
            if (n > 1) n--;
        } else {
            if (n > 1) out[n++] = '/';
            if (n + l + 1 > cap) return -1;
            memcpy(out + n, p, l);
            n += l;
        }
        p = e;
    }
    out[n] = '\0';
    return 0;
}

/* s starts with the path prefix p (whole components: "/usr" matches "/usr", "/usr/x"). */
static int under(const char *s, size_t sl, const char *p, size_t pl) {
    if (pl == 1 && p[0] == '/') return 1;
    return sl >= pl && memcmp(s, p, pl) == 0 && (sl == pl || s[pl] == '/');
}

static int in_list_prefix(const struct fs_list *l, const char *s, size_t sl) {
    for (int i = 0; i < l->n; i++) /* the second byte rules out most entries at once */
        if (l->item[i][1] == s[1] && under(s, sl, l->item[i], l->len[i])) return 1;
    return 0;
}

static int any_regex(const struct fs_regexes *rx, const char *s) {
    for (int i = 0; i < rx->n; i++)
        if (regexec(&rx->re[i], s, 0, NULL, 0) == 0) return 1;
    return 0;
}

static int default_local(const struct fs_table *t, const char *s, size_t sl) {
    if (sl == 1) return 1; /* "/" itself: listing the root is the machine's business */
    if (in_list_prefix(&t->prefix, s, sl) || in_list_prefix(&t->tree, s, sl)) return 1;
    for (int i = 0; i < t->tree.n; i++) /* an ancestor of a local tree */
        if (under(t->tree.item[i], t->tree.len[i], s, sl)) return 1;
    for (int i = 0; i < t->suffix.n; i++)
        if (sl > t->suffix.len[i] &&
            memcmp(s + sl - t->suffix.len[i], t->suffix.item[i], t->suffix.len[i]) == 0)
            return 1;
    for (int i = 0; i < t->contains.n; i++)
        if (strstr(s, t->contains.item[i])) return 1;
    return 0;
}

/* mirrord's order: mode local; not_found; read_write; read_only; local; the default
 * remote read-only set; the default local set; then the mode. */
static int decide(const struct fs_table *t, const char *s, int write) {
    size_t sl = strlen(s);
    if (t->mode == FS_MODE_LOCAL) return FS_LOCAL;
    if (any_regex(&t->nf, s)) return FS_ENOENT;
    if (any_regex(&t->rw, s)) return FS_REMOTE;
    if (any_regex(&t->ro, s)) return write ? FS_LOCAL : FS_REMOTE;
    if (any_regex(&t->lo, s)) return FS_LOCAL;
    for (int i = 0; i < t->remote_ro.n; i++)
        if (sl == t->remote_ro.len[i] && !memcmp(s, t->remote_ro.item[i], sl))
            return write ? FS_LOCAL : FS_REMOTE;
    if (default_local(t, s, sl)) return FS_LOCAL;
    switch (t->mode) {
    case FS_MODE_WRITE: return FS_REMOTE;
    /* mirrord: a write in read mode bypasses to this machine (its read-only test expects
     * the local path's answer, e.g. ENOENT where the path does not exist here). */
    case FS_MODE_READ: return write ? FS_LOCAL : FS_REMOTE;
    default: return FS_LOCAL;
    }
}

/* Also the seccomp supervisor's decision (features/files.py decide): the table of the last
 * config is kept, as a program's path calls all come with the same one.  Not reentrant. */
TL_EXPORT int tl_fs_decide_with(const char *config, const char *cwd, const char *path, int write) {
    static struct fs_table t;
    static char *parsed; /* the config t was parsed from */
    char norm[PATH_MAX];
    if (!parsed || strcmp(parsed, config)) {
        if (parsed) free_table(&t); /* a failed parse was freed at once */
        free(parsed);
        parsed = NULL;
        if (parse_table(&t, config)) {
            free_table(&t);
            return -1;
        }
        parsed = strdup(config);
    }
    return tl_fs_normalize(cwd, path, norm, sizeof norm) ? FS_LOCAL : decide(&t, norm, write);
}

/* The program's own code: the directory its executable was started from (its parent when
 * that is a bin/ directory: a venv, a node or JDK install) and the directory of a script
 * given as first argument (python app.py, node server.js; only script names, so that
 * `cat /etc/app.conf` does not make /etc/ local). */
static int script_name(const char *p) {
    static const char *const ext[] = {".py", ".js", ".mjs", ".cjs", ".ts", ".rb", ".pl",
                                      ".php", ".sh", ".lua"};
    size_t l = strlen(p);
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) {
        size_t e = strlen(ext[i]);
        if (l > e && strcmp(p + l - e, ext[i]) == 0) return 1;
    }
    return 0;
}

static void add_program_dirs(int argc, char **argv) {
    char cwd[PATH_MAX], norm[PATH_MAX];
    struct stat st;
    if (!getcwd(cwd, sizeof cwd)) return;
    for (int i = 0; i < argc && i < 2; i++) {
        const char *a = argv[i];
        if (!a || !*a || (i == 0 && !strchr(a, '/'))) continue;
        if (tl_fs_normalize(cwd, a, norm, sizeof norm)) continue;
        if (i == 1 && (!script_name(norm) || stat(norm, &st) || !S_ISREG(st.st_mode))) break;
        char *slash = strrchr(norm, '/');
        if (!slash || slash == norm) continue;
        *slash = '\0';
        slash = strrchr(norm, '/');
        if (i == 0 && slash && slash != norm && strcmp(slash, "/bin") == 0) *slash = '\0';
        add_item(&table, &table.tree, norm);
    }
}

static int fs_argc;
static char **fs_argv;

static void fs_setup(void) {
    tl_in_layer++;
    tl_init();
    if (tl_cfg.active && !tl_cfg.passthrough) {
        const char *cfg = strchr(tl_cfg.config_var, '=');
        parse_table(&table, cfg ? cfg + 1 : "");
        if (table.mode != FS_MODE_LOCAL) {
            add_program_dirs(fs_argc, fs_argv);
            fs_on = 1;
        }
    }
    tl_in_layer--;
}

/* glibc passes (argc, argv, envp) to constructors of preloaded objects. */
__attribute__((constructor)) static void fs_constructor(int argc, char **argv, char **envp) {
    (void)envp;
    real_syscall = (long (*)(long, ...))tl_real("syscall");
    fs_argc = argc;
    fs_argv = argv;
    pthread_once(&fs_once, fs_setup);
}

/* Classify (dirfd, path) for a hook.  FS_LOCAL also covers "not ours to decide": paths
 * relative to a real directory descriptor (a remote directory's fd resolves natively in
 * the target), empty paths, and the layer's own calls. */
/* An absolute path already in normal form (no "//", ".", ".." components, no trailing
 * "/"): the common case, decided on the program's own string without a copy. */
static int is_normal(const char *p) {
    if (p[0] != '/') return 0;
    if (!p[1]) return 1;
    for (const char *c = p; *c; c++) {
        if (*c != '/') continue;
        if (c[1] == '/' || !c[1]) return 0;
        if (c[1] == '.' && (c[2] == '/' || !c[2] || (c[2] == '.' && (c[3] == '/' || !c[3]))))
            return 0;
    }
    return 1;
}

static int classify(int dirfd, const char *path, int write, char *norm, size_t cap) {
    char cwd[PATH_MAX];
    if (!fs_on || tl_in_layer || !path || !*path) return FS_LOCAL;
    if (is_normal(path)) {
        int d = decide(&table, path, write);
        if (d != FS_LOCAL) {
            size_t l = strlen(path);
            if (l + 1 > cap) return FS_LOCAL;
            memcpy(norm, path, l + 1);
        }
        return d;
    }
    if (path[0] != '/') {
        if (dirfd != AT_FDCWD) return FS_LOCAL;
        tl_in_layer++;
        char *ok = getcwd(cwd, sizeof cwd);
        tl_in_layer--;
        if (!ok) return FS_LOCAL;
    }
    if (tl_fs_normalize(path[0] == '/' ? "/" : cwd, path, norm, cap)) return FS_LOCAL;
    return decide(&table, norm, write);
}

static int is_write(int flags) {
    return (flags & O_ACCMODE) != O_RDONLY || (flags & (O_CREAT | O_TRUNC | O_APPEND)) ||
           (flags & O_TMPFILE) == O_TMPFILE;
}

/* ------------------------------------------------------------------ wire */

TL_EXPORT long tl_encode_fs_open(unsigned char *buf, unsigned long cap, unsigned long id,
                                 const char *path, long flags, long mode) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 5);
    mp_cstr(&w, "t");
    mp_cstr(&w, "fs_open");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "path");
    mp_cstr(&w, path);
    mp_cstr(&w, "flags");
    mp_int(&w, flags);
    mp_cstr(&w, "mode");
    mp_int(&w, mode);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_fs_stat(unsigned char *buf, unsigned long cap, unsigned long id,
                                 const char *path, int follow) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 4);
    mp_cstr(&w, "t");
    mp_cstr(&w, "fs_stat");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "path");
    mp_cstr(&w, path);
    mp_cstr(&w, "follow");
    mp_bool(&w, follow);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_fs_path(unsigned char *buf, unsigned long cap, const char *type,
                                 unsigned long id, const char *path) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 3);
    mp_cstr(&w, "t");
    mp_cstr(&w, type);
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "path");
    mp_cstr(&w, path);
    return w.err ? -1 : (long)w.len;
}

TL_EXPORT long tl_encode_fs_change(unsigned char *buf, unsigned long cap, unsigned long id,
                                   const char *op, const char *path, const char *to, long arg) {
    mp_w w;
    mp_w_init(&w, buf, cap);
    mp_map(&w, 6);
    mp_cstr(&w, "t");
    mp_cstr(&w, "fs_change");
    mp_cstr(&w, "id");
    mp_int(&w, (int64_t)id);
    mp_cstr(&w, "op");
    mp_cstr(&w, op);
    mp_cstr(&w, "path");
    mp_cstr(&w, path);
    mp_cstr(&w, "to");
    mp_cstr(&w, to);
    mp_cstr(&w, "arg");
    mp_int(&w, arg);
    return w.err ? -1 : (long)w.len;
}

/* errno of an error reply; EIO when it names none; 0 when the reply is not an error. */
TL_EXPORT int tl_decode_fs_errno(const unsigned char *buf, unsigned long len) {
    mp_r r;
    const char *s;
    uint32_t n;
    int64_t e = 0;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "t") || mp_r_str(&r, &s, &n)) return EIO;
    if (!mp_str_eq(s, n, "error")) return 0;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "errno") || mp_r_int(&r, &e) || e <= 0 || e > 4095) return EIO;
    return (int)e;
}

TL_EXPORT int tl_decode_fs_stat(const unsigned char *buf, unsigned long len, long long *st) {
    mp_r r;
    uint32_t n;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "st") || mp_r_arr(&r, &n) || n != FS_NST) return -1;
    for (uint32_t i = 0; i < n; i++) {
        int64_t v;
        if (mp_r_int(&r, &v)) return -1;
        st[i] = v;
    }
    return 0;
}

TL_EXPORT int tl_decode_fs_statfs(const unsigned char *buf, unsigned long len, long long *sf) {
    mp_r r;
    uint32_t n;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, "sf") || mp_r_arr(&r, &n) || n != FS_NSF) return -1;
    for (uint32_t i = 0; i < n; i++) {
        int64_t v;
        if (mp_r_int(&r, &v)) return -1;
        sf[i] = v;
    }
    return 0;
}

TL_EXPORT long tl_decode_fs_string(const unsigned char *buf, unsigned long len, const char *key,
                                   char *out, unsigned long cap) {
    mp_r r;
    const char *s;
    uint32_t n;
    mp_r_init(&r, buf, len);
    if (mp_r_find(&r, key) || mp_r_str(&r, &s, &n) || n + 1 > cap) return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return (long)n;
}

/* One round trip; returns the reply length or -1 with errno set from the reply. */
static long fs_call(const uint8_t *req, long n, uint8_t *reply, size_t cap, int *fd) {
    if (n < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    long got = fd ? tl_channel_call_fd(req, (size_t)n, reply, cap, fd)
                  : tl_channel_call(req, (size_t)n, reply, cap);
    if (got < 0) {
        errno = EIO; /* no session: the orchestrator ends the program in that case */
        return -1;
    }
    int e = tl_decode_fs_errno(reply, (unsigned long)got);
    if (e) {
        if (fd && *fd >= 0) {
            syscall(SYS_close, *fd);
            *fd = -1;
        }
        errno = e;
        return -1;
    }
    return got;
}

static int remote_open(const char *norm, int flags, mode_t mode) {
    uint8_t req[PATH_MAX + 128], reply[512];
    int fd = -1;
    long n = tl_encode_fs_open(req, sizeof req, tl_channel_next_id(), norm, flags, (long)mode);
    if (fs_call(req, n, reply, sizeof reply, &fd) < 0) return -1;
    if (fd < 0) {
        errno = EIO;
        return -1;
    }
    if (!(flags & O_CLOEXEC)) fcntl(fd, F_SETFD, 0); /* it arrived close-on-exec */
    return fd;
}

static int remote_stat(const char *norm, int follow, long long *st) {
    uint8_t req[PATH_MAX + 128], reply[512];
    long n = tl_encode_fs_stat(req, sizeof req, tl_channel_next_id(), norm, follow);
    if ((n = fs_call(req, n, reply, sizeof reply, NULL)) < 0) return -1;
    if (tl_decode_fs_stat(reply, (unsigned long)n, st)) {
        errno = EIO;
        return -1;
    }
    return 0;
}

static long remote_string(const char *type, const char *norm, const char *key, char *out,
                          size_t cap) {
    uint8_t req[PATH_MAX + 128], reply[FS_REPLY_CAP];
    long n = tl_encode_fs_path(req, sizeof req, type, tl_channel_next_id(), norm);
    if ((n = fs_call(req, n, reply, sizeof reply, NULL)) < 0) return -1;
    n = tl_decode_fs_string(reply, (unsigned long)n, key, out, cap);
    if (n < 0) errno = ENAMETOOLONG;
    return n;
}

/* Decision errors as errno: returns 1 when the hook must fail with -1. */
static int refuse(int d) {
    if (d == FS_ENOENT) {
        errno = ENOENT;
        return 1;
    }
    return 0;
}

static void fill_stat(struct stat *b, const long long *s) {
    memset(b, 0, sizeof *b);
    b->st_dev = (dev_t)s[0];
    b->st_ino = (ino_t)s[1];
    b->st_mode = (mode_t)s[2];
    b->st_nlink = (nlink_t)s[3];
    b->st_uid = (uid_t)s[4];
    b->st_gid = (gid_t)s[5];
    b->st_rdev = (dev_t)s[6];
    b->st_size = (off_t)s[7];
    b->st_blksize = (blksize_t)s[8];
    b->st_blocks = (blkcnt_t)s[9];
    b->st_atim.tv_sec = s[10];
    b->st_atim.tv_nsec = s[11];
    b->st_mtim.tv_sec = s[12];
    b->st_mtim.tv_nsec = s[13];
    b->st_ctim.tv_sec = s[14];
    b->st_ctim.tv_nsec = s[15];
}

static void fill_statx(struct statx *b, const long long *s) {
    memset(b, 0, sizeof *b);
    b->stx_mask = STATX_BASIC_STATS;
    b->stx_dev_major = major((dev_t)s[0]);
    b->stx_dev_minor = minor((dev_t)s[0]);
    b->stx_ino = (uint64_t)s[1];
    b->stx_mode = (uint16_t)s[2];
    b->stx_nlink = (uint32_t)s[3];
    b->stx_uid = (uint32_t)s[4];
    b->stx_gid = (uint32_t)s[5];
    b->stx_rdev_major = major((dev_t)s[6]);
    b->stx_rdev_minor = minor((dev_t)s[6]);
    b->stx_size = (uint64_t)s[7];
    b->stx_blksize = (uint32_t)s[8];
    b->stx_blocks = (uint64_t)s[9];
    b->stx_atime.tv_sec = s[10];
    b->stx_atime.tv_nsec = (uint32_t)s[11];
    b->stx_mtime.tv_sec = s[12];
    b->stx_mtime.tv_nsec = (uint32_t)s[13];
    b->stx_ctime.tv_sec = s[14];
    b->stx_ctime.tv_nsec = (uint32_t)s[15];
}

/* ------------------------------------------------------------------ open */

static int open_common(int dirfd, const char *path, int flags, mode_t mode, int *handled) {
    char norm[PATH_MAX];
    TL_ERRNO_SAVE;
    int d = classify(dirfd, path, is_write(flags), norm, sizeof norm);
    *handled = d != FS_LOCAL;
    if (d == FS_LOCAL) return 0;
    if (refuse(d)) return -1;
    int fd = remote_open(norm, flags, mode);
    if (fd >= 0) TL_ERRNO_RESTORE;
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_HOOK(name, real_call)                                                      \
    TL_EXPORT int name(const char *path, int flags, ...) {                              \
        TL_REAL(name);                                                                  \
        va_list ap;                                                                     \
        va_start(ap, flags);                                                            \
        mode_t mode = va_mode(flags, ap);                                               \
        va_end(ap);                                                                     \
        int handled, fd = open_common(AT_FDCWD, path, flags, mode, &handled);           \
        return handled ? fd : real_call;                                                \
    }
OPEN_HOOK(open, real_open(path, flags, mode))
OPEN_HOOK(open64, real_open64(path, flags, mode))

#define OPENAT_HOOK(name)                                                               \
    TL_EXPORT int name(int dirfd, const char *path, int flags, ...) {                   \
        TL_REAL(name);                                                                  \
        va_list ap;                                                                     \
        va_start(ap, flags);                                                            \
        mode_t mode = va_mode(flags, ap);                                               \
        va_end(ap);                                                                     \
        int handled, fd = open_common(dirfd, path, flags, mode, &handled);              \
        return handled ? fd : real_##name(dirfd, path, flags, mode);                    \
    }
OPENAT_HOOK(openat)
OPENAT_HOOK(openat64)

#define OPEN2_HOOK(name)                                                                \
    TL_EXPORT int name(const char *path, int flags) {                                   \
        TL_REAL(name);                                                                  \
        int handled, fd = open_common(AT_FDCWD, path, flags, 0, &handled);              \
        return handled ? fd : real_##name(path, flags);                                 \
    }
OPEN2_HOOK(__open_2)
OPEN2_HOOK(__open64_2)

#define OPENAT2_HOOK(name)                                                              \
    TL_EXPORT int name(int dirfd, const char *path, int flags) {                        \
        TL_REAL(name);                                                                  \
        int handled, fd = open_common(dirfd, path, flags, 0, &handled);                 \
        return handled ? fd : real_##name(dirfd, path, flags);                          \
    }
OPENAT2_HOOK(__openat_2)
OPENAT2_HOOK(__openat64_2)

#define CREAT_HOOK(name)                                                                \
    TL_EXPORT int name(const char *path, mode_t mode) {                                 \
        TL_REAL(name);                                                                  \
        int handled, fd = open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, \
                                      &handled);                                        \
        return handled ? fd : real_##name(path, mode);                                  \
    }
CREAT_HOOK(creat)
CREAT_HOOK(creat64)

/* fopen's mode string as open flags ("r", "w+", "ae", "rx", ...). */
static int fopen_flags(const char *m) {
    int flags, plus = strchr(m, '+') != NULL;
    switch (m[0]) {
    case 'r': flags = plus ? O_RDWR : O_RDONLY; break;
    case 'w': flags = (plus ? O_RDWR : O_WRONLY) | O_CREAT | O_TRUNC; break;
    case 'a': flags = (plus ? O_RDWR : O_WRONLY) | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    if (strchr(m, 'e')) flags |= O_CLOEXEC;
    if (strchr(m, 'x')) flags |= O_EXCL;
    return flags;
}

static FILE *fopen_common(const char *path, const char *mode, int *handled) {
    char norm[PATH_MAX];
    int flags = mode ? fopen_flags(mode) : -1;
    *handled = 0;
    if (flags < 0) return NULL;
    TL_ERRNO_SAVE;
    int d = classify(AT_FDCWD, path, is_write(flags), norm, sizeof norm);
    if (d == FS_LOCAL) return NULL;
    *handled = 1;
    if (refuse(d)) return NULL;
    int fd = remote_open(norm, flags, 0666);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, mode);
    if (!f) {
        int e = errno;
        tl_in_layer++;
        close(fd);
        tl_in_layer--;
        errno = e;
        return NULL;
    }
    TL_ERRNO_RESTORE;
    return f;
}

TL_EXPORT FILE *fopen(const char *path, const char *mode) {
    TL_REAL(fopen);
    int handled;
    FILE *f = fopen_common(path, mode, &handled);
    return handled ? f : real_fopen(path, mode);
}

TL_EXPORT FILE *fopen64(const char *path, const char *mode) {
    TL_REAL(fopen64);
    int handled;
    FILE *f = fopen_common(path, mode, &handled);
    return handled ? f : real_fopen64(path, mode);
}

static FILE *freopen_common(const char *path, const char *mode, FILE *stream, int *handled,
                            FILE *(*real)(const char *, const char *, FILE *)) {
    char norm[PATH_MAX];
    int flags = mode ? fopen_flags(mode) : -1;
    *handled = 0;
    if (!path || flags < 0) return NULL;
    int d = classify(AT_FDCWD, path, is_write(flags), norm, sizeof norm);
    if (d == FS_LOCAL) return NULL;
    *handled = 1;
    if (refuse(d)) return NULL;
    int fd = remote_open(norm, flags, 0666);
    if (fd < 0) return NULL;
    /* Put the remote file under the stream's descriptor, then let libc reset the stream
     * on it (freopen(NULL) keeps the descriptor and applies the new mode). */
    fflush(stream);
    int target = fileno(stream);
    tl_in_layer++;
    int ok = target >= 0 && dup3(fd, target, flags & O_CLOEXEC) >= 0;
    close(fd);
    tl_in_layer--;
    if (!ok) return NULL;
    return real(NULL, mode, stream);
}

TL_EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream) {
    TL_REAL(freopen);
    int handled;
    FILE *f = freopen_common(path, mode, stream, &handled, real_freopen);
    return handled ? f : real_freopen(path, mode, stream);
}

TL_EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream) {
    TL_REAL(freopen64);
    int handled;
    FILE *f = freopen_common(path, mode, stream, &handled, real_freopen64);
    return handled ? f : real_freopen64(path, mode, stream);
}

/* ------------------------------------------------------------------ stat */

/* 1 when handled (result in *rc), 0 when the path is local. */
static int stat_common(int dirfd, const char *path, int follow, long long *st, int *rc) {
    char norm[PATH_MAX];
    TL_ERRNO_SAVE;
    int d = classify(dirfd, path, 0, norm, sizeof norm);
    if (d == FS_LOCAL) return 0;
    if (refuse(d) || remote_stat(norm, follow, st)) {
        *rc = -1;
        return 1;
    }
    TL_ERRNO_RESTORE;
    *rc = 0;
    return 1;
}

#define STAT_HOOK(name, type, follow)                                                   \
    TL_EXPORT int name(const char *path, type *buf) {                                   \
        TL_REAL(name);                                                                  \
        long long st[FS_NST];                                                           \
        int rc;                                                                         \
        if (!stat_common(AT_FDCWD, path, follow, st, &rc)) return real_##name(path, buf); \
        if (rc == 0) fill_stat((struct stat *)buf, st);                                 \
        return rc;                                                                      \
    }
STAT_HOOK(stat, struct stat, 1)
STAT_HOOK(stat64, struct stat64, 1)
STAT_HOOK(lstat, struct stat, 0)
STAT_HOOK(lstat64, struct stat64, 0)

#define XSTAT_HOOK(name, type, follow)                                                  \
    TL_EXPORT int name(int ver, const char *path, type *buf) {                          \
        TL_REAL(name);                                                                  \
        long long st[FS_NST];                                                           \
        int rc;                                                                         \
        if (!stat_common(AT_FDCWD, path, follow, st, &rc)) return real_##name(ver, path, buf); \
        if (rc == 0) fill_stat((struct stat *)buf, st);                                 \
        return rc;                                                                      \
    }
XSTAT_HOOK(__xstat, struct stat, 1)
XSTAT_HOOK(__xstat64, struct stat64, 1)
XSTAT_HOOK(__lxstat, struct stat, 0)
XSTAT_HOOK(__lxstat64, struct stat64, 0)

#define FSTATAT_HOOK(name, type)                                                        \
    TL_EXPORT int name(int dirfd, const char *path, type *buf, int flags) {             \
        TL_REAL(name);                                                                  \
        long long st[FS_NST];                                                           \
        int rc;                                                                         \
        if (!stat_common(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), st, &rc))         \
            return real_##name(dirfd, path, buf, flags);                                \
        if (rc == 0) fill_stat((struct stat *)buf, st);                                 \
        return rc;                                                                      \
    }
FSTATAT_HOOK(fstatat, struct stat)
FSTATAT_HOOK(fstatat64, struct stat64)

#define FXSTATAT_HOOK(name, type)                                                       \
    TL_EXPORT int name(int ver, int dirfd, const char *path, type *buf, int flags) {    \
        TL_REAL(name);                                                                  \
        long long st[FS_NST];                                                           \
        int rc;                                                                         \
        if (!stat_common(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), st, &rc))         \
            return real_##name(ver, dirfd, path, buf, flags);                           \
        if (rc == 0) fill_stat((struct stat *)buf, st);                                 \
        return rc;                                                                      \
    }
FXSTATAT_HOOK(__fxstatat, struct stat)
FXSTATAT_HOOK(__fxstatat64, struct stat64)

TL_EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask,
                    struct statx *buf) {
    TL_REAL(statx);
    long long st[FS_NST];
    int rc;
    if (!stat_common(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), st, &rc))
        return real_statx(dirfd, path, flags, mask, buf);
    if (rc == 0) fill_statx(buf, st);
    return rc;
}

/* libuv (Node) calls statx through syscall(2); only that number is looked at. */
TL_EXPORT long syscall(long number, ...) {
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (!real_syscall) real_syscall = (long (*)(long, ...))tl_real("syscall");
    if (number == SYS_statx && fs_on && !tl_in_layer) {
        long long st[FS_NST];
        int rc, flags = (int)a[2];
        if (stat_common((int)a[0], (const char *)a[1], !(flags & AT_SYMLINK_NOFOLLOW), st, &rc)) {
            if (rc == 0) fill_statx((struct statx *)a[4], st);
            return rc;
        }
    }
    return real_syscall(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* ------------------------------------------------------------------ access */

static int access_from_stat(const long long *st, int amode, int effective) {
    uid_t uid = effective ? geteuid() : getuid();
    gid_t gid = effective ? getegid() : getgid();
    mode_t m = (mode_t)st[2];
    if (amode == F_OK) return 0;
    if (uid == 0) {
        if ((amode & X_OK) && !S_ISDIR(m) && !(m & 0111)) return -1;
        return 0;
    }
    int shift = (uid_t)st[4] == uid ? 6 : (gid_t)st[5] == gid ? 3 : 0;
    int bits = (int)(m >> shift) & 7;
    return (amode & bits) == amode ? 0 : -1;
}

static int access_common(int dirfd, const char *path, int amode, int flags, int *handled) {
    char norm[PATH_MAX];
    long long st[FS_NST];
    TL_ERRNO_SAVE;
    /* W_OK asks about a write: decided as one, so in read mode it is this machine's answer,
     * where the write itself would go. */
    int d = classify(dirfd, path, (amode & W_OK) != 0, norm, sizeof norm);
    *handled = d != FS_LOCAL;
    if (d == FS_LOCAL) return 0;
    if (refuse(d) || remote_stat(norm, !(flags & AT_SYMLINK_NOFOLLOW), st)) return -1;
    if (access_from_stat(st, amode, flags & AT_EACCESS)) {
        errno = EACCES;
        return -1;
    }
    TL_ERRNO_RESTORE;
    return 0;
}

TL_EXPORT int access(const char *path, int amode) {
    TL_REAL(access);
    int handled, rc = access_common(AT_FDCWD, path, amode, 0, &handled);
    return handled ? rc : real_access(path, amode);
}

TL_EXPORT int faccessat(int dirfd, const char *path, int amode, int flags) {
    TL_REAL(faccessat);
    int handled, rc = access_common(dirfd, path, amode, flags, &handled);
    return handled ? rc : real_faccessat(dirfd, path, amode, flags);
}

TL_EXPORT int euidaccess(const char *path, int amode) {
    TL_REAL(euidaccess);
    int handled, rc = access_common(AT_FDCWD, path, amode, AT_EACCESS, &handled);
    return handled ? rc : real_euidaccess(path, amode);
}

TL_EXPORT int eaccess(const char *path, int amode) {
    TL_REAL(eaccess);
    int handled, rc = access_common(AT_FDCWD, path, amode, AT_EACCESS, &handled);
    return handled ? rc : real_eaccess(path, amode);
}

/* ------------------------------------------------------------------ directories */

static int open_remote_dir(const char *path, int *handled) {
    char norm[PATH_MAX];
    int d = classify(AT_FDCWD, path, 0, norm, sizeof norm);
    *handled = d != FS_LOCAL;
    if (d == FS_LOCAL) return -1;
    if (refuse(d)) return -1;
    return remote_open(norm, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
}

TL_EXPORT DIR *opendir(const char *path) {
    TL_REAL(opendir);
    TL_ERRNO_SAVE;
    int handled, fd = open_remote_dir(path, &handled);
    if (!handled) return real_opendir(path);
    if (fd < 0) return NULL;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        tl_in_layer++;
        close(fd);
        tl_in_layer--;
        errno = e;
        return NULL;
    }
    TL_ERRNO_RESTORE;
    return d;
}

typedef int (*dirent_filter)(const struct dirent *);
typedef int (*dirent_compar)(const struct dirent **, const struct dirent **);
typedef int (*dirent64_filter)(const struct dirent64 *);
typedef int (*dirent64_compar)(const struct dirent64 **, const struct dirent64 **);

/* glibc's scandir opens the directory internally (not interposable): for a remote one,
 * scan "." relative to the remote directory's descriptor instead. */
TL_EXPORT int scandir(const char *path, struct dirent ***list, dirent_filter sel,
                      dirent_compar cmp) {
    TL_REAL(scandir);
    int handled, fd = open_remote_dir(path, &handled);
    if (!handled) return real_scandir(path, list, sel, cmp);
    if (fd < 0) return -1;
    int n = scandirat(fd, ".", list, sel, cmp);
    int e = errno;
    tl_in_layer++;
    close(fd);
    tl_in_layer--;
    errno = e;
    return n;
}

TL_EXPORT int scandir64(const char *path, struct dirent64 ***list, dirent64_filter sel,
                        dirent64_compar cmp) {
    TL_REAL(scandir64);
    int handled, fd = open_remote_dir(path, &handled);
    if (!handled) return real_scandir64(path, list, sel, cmp);
    if (fd < 0) return -1;
    int n = scandirat64(fd, ".", list, sel, cmp);
    int e = errno;
    tl_in_layer++;
    close(fd);
    tl_in_layer--;
    errno = e;
    return n;
}

/* ------------------------------------------------------------------ links and names */

static ssize_t readlink_common(int dirfd, const char *path, char *buf, size_t size,
                               int *handled) {
    char norm[PATH_MAX], target[PATH_MAX];
    TL_ERRNO_SAVE;
    int d = classify(dirfd, path, 0, norm, sizeof norm);
    *handled = d != FS_LOCAL;
    if (d == FS_LOCAL) return 0;
    if (refuse(d)) return -1;
    long n = remote_string("fs_readlink", norm, "target", target, sizeof target);
    if (n < 0) return -1;
    size_t k = (size_t)n < size ? (size_t)n : size;
    memcpy(buf, target, k);
    TL_ERRNO_RESTORE;
    return (ssize_t)k;
}

TL_EXPORT ssize_t readlink(const char *path, char *buf, size_t size) {
    TL_REAL(readlink);
    int handled;
    ssize_t n = readlink_common(AT_FDCWD, path, buf, size, &handled);
    return handled ? n : real_readlink(path, buf, size);
}

TL_EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size) {
    TL_REAL(readlinkat);
    int handled;
    ssize_t n = readlink_common(dirfd, path, buf, size, &handled);
    return handled ? n : real_readlinkat(dirfd, path, buf, size);
}

static char *realpath_common(const char *path, char *resolved, int *handled) {
    char norm[PATH_MAX], out[PATH_MAX];
    TL_ERRNO_SAVE;
    int d = classify(AT_FDCWD, path, 0, norm, sizeof norm);
    *handled = d != FS_LOCAL;
    if (d == FS_LOCAL) return NULL;
    if (refuse(d)) return NULL;
    if (remote_string("fs_realpath", norm, "path", out, sizeof out) < 0) return NULL;
    if (!resolved && !(resolved = malloc(strlen(out) + 1))) return NULL;
    strcpy(resolved, out);
    TL_ERRNO_RESTORE;
    return resolved;
}

TL_EXPORT char *realpath(const char *path, char *resolved) {
    TL_REAL(realpath);
    int handled;
    char *r = realpath_common(path, resolved, &handled);
    return handled ? r : real_realpath(path, resolved);
}

TL_EXPORT char *canonicalize_file_name(const char *path) {
    TL_REAL(canonicalize_file_name);
    int handled;
    char *r = realpath_common(path, NULL, &handled);
    return handled ? r : real_canonicalize_file_name(path);
}

/* Extended attributes of a remote file: answer as a filesystem without them (ls -l asks
 * for ACLs of every entry it lists). */
#define XATTR_HOOK(name, ...)                                                           \
    TL_EXPORT ssize_t name(const char *path, __VA_ARGS__) {                             \
        char norm[PATH_MAX];                                                            \
        int d = classify(AT_FDCWD, path, 0, norm, sizeof norm);                         \
        if (d != FS_LOCAL) {                                                            \
            if (!refuse(d)) errno = ENOTSUP;                                            \
            return -1;                                                                  \
        }                                                                               \
        TL_REAL(name);                                                                  \
        return XATTR_CALL_##name;                                                       \
    }
#define XATTR_CALL_getxattr real_getxattr(path, key, value, size)
#define XATTR_CALL_lgetxattr real_lgetxattr(path, key, value, size)
#define XATTR_CALL_listxattr real_listxattr(path, list, size)
#define XATTR_CALL_llistxattr real_llistxattr(path, list, size)
XATTR_HOOK(getxattr, const char *key, void *value, size_t size)
XATTR_HOOK(lgetxattr, const char *key, void *value, size_t size)
XATTR_HOOK(listxattr, char *list, size_t size)
XATTR_HOOK(llistxattr, char *list, size_t size)

/* ------------------------------------------------------------------ changes */

/* mkdir, rmdir, unlink and rename of a remote path act in the target (write mode, or a
 * read_write path), with the target's errno; in read mode decide() sends them here, as
 * mirrord does.  A path relative to a remote directory's descriptor needs no hook: the
 * kernel resolves it in the target's tree. */
static int remote_change(const char *op, const char *norm, const char *to, long arg) {
    uint8_t req[2 * PATH_MAX + 160], reply[512];
    long n = tl_encode_fs_change(req, sizeof req, tl_channel_next_id(), op, norm, to, arg);
    return fs_call(req, n, reply, sizeof reply, NULL) < 0 ? -1 : 0;
}

/* 1 when handled (result in *rc), 0 when the path is local. */
static int change_common(int dirfd, const char *path, const char *op, long arg, int *rc) {
    char norm[PATH_MAX];
    TL_ERRNO_SAVE;
    int d = classify(dirfd, path, 1, norm, sizeof norm);
    if (d == FS_LOCAL) return 0;
    if (refuse(d) || remote_change(op, norm, "", arg)) {
        *rc = -1;
        return 1;
    }
    TL_ERRNO_RESTORE;
    *rc = 0;
    return 1;
}

TL_EXPORT int mkdir(const char *path, mode_t mode) {
    TL_REAL(mkdir);
    int rc;
    return change_common(AT_FDCWD, path, "mkdir", (long)mode, &rc) ? rc : real_mkdir(path, mode);
}

TL_EXPORT int mkdirat(int dirfd, const char *path, mode_t mode) {
    TL_REAL(mkdirat);
    int rc;
    return change_common(dirfd, path, "mkdir", (long)mode, &rc) ? rc
                                                                : real_mkdirat(dirfd, path, mode);
}

TL_EXPORT int rmdir(const char *path) {
    TL_REAL(rmdir);
    int rc;
    return change_common(AT_FDCWD, path, "rmdir", 0, &rc) ? rc : real_rmdir(path);
}

TL_EXPORT int unlink(const char *path) {
    TL_REAL(unlink);
    int rc;
    return change_common(AT_FDCWD, path, "unlink", 0, &rc) ? rc : real_unlink(path);
}

TL_EXPORT int unlinkat(int dirfd, const char *path, int flags) {
    TL_REAL(unlinkat);
    int rc;
    const char *op = flags & AT_REMOVEDIR ? "rmdir" : "unlink";
    return change_common(dirfd, path, op, 0, &rc) ? rc : real_unlinkat(dirfd, path, flags);
}

/* glibc's remove() calls its internal unlink/rmdir, which no hook sees. */
TL_EXPORT int remove(const char *path) {
    TL_REAL(remove);
    int rc;
    if (!change_common(AT_FDCWD, path, "unlink", 0, &rc)) return real_remove(path);
    if (rc == 0 || errno != EISDIR) return rc;
    return change_common(AT_FDCWD, path, "rmdir", 0, &rc) ? rc : real_remove(path);
}

/* Both names remote: the target renames; both local: this machine; one of each: EXDEV,
 * what the kernel answers across file systems (mv then copies and unlinks, through the
 * hooks). */
static int rename_common(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                         unsigned int flags, int *rc) {
    char from[PATH_MAX], to[PATH_MAX];
    TL_ERRNO_SAVE;
    int a = classify(olddirfd, oldpath, 1, from, sizeof from);
    int b = classify(newdirfd, newpath, 1, to, sizeof to);
    if (a == FS_LOCAL && b == FS_LOCAL) return 0;
    *rc = -1;
    if (refuse(a) || refuse(b)) return 1;
    if (a == FS_LOCAL || b == FS_LOCAL) {
        errno = EXDEV;
        return 1;
    }
    if (remote_change("rename", from, to, (long)flags)) return 1;
    TL_ERRNO_RESTORE;
    *rc = 0;
    return 1;
}

TL_EXPORT int rename(const char *oldpath, const char *newpath) {
    TL_REAL(rename);
    int rc;
    return rename_common(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0, &rc)
               ? rc : real_rename(oldpath, newpath);
}

TL_EXPORT int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    TL_REAL(renameat);
    int rc;
    return rename_common(olddirfd, oldpath, newdirfd, newpath, 0, &rc)
               ? rc : real_renameat(olddirfd, oldpath, newdirfd, newpath);
}

TL_EXPORT int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
                        unsigned int flags) {
    TL_REAL(renameat2);
    int rc;
    return rename_common(olddirfd, oldpath, newdirfd, newpath, flags, &rc)
               ? rc : real_renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

/* ------------------------------------------------------------------ statfs */

/* The file system a remote path lives on, as the target sees it.  fstatfs/fstatvfs of a
 * remote descriptor need no hook: the descriptor is the target's (a memfd over the relay). */
static int statfs_common(const char *path, long long *sf, int *rc) {
    char norm[PATH_MAX];
    uint8_t req[PATH_MAX + 128], reply[512];
    TL_ERRNO_SAVE;
    int d = classify(AT_FDCWD, path, 0, norm, sizeof norm);
    if (d == FS_LOCAL) return 0;
    *rc = -1;
    if (refuse(d)) return 1;
    long n = tl_encode_fs_path(req, sizeof req, "fs_statfs", tl_channel_next_id(), norm);
    if ((n = fs_call(req, n, reply, sizeof reply, NULL)) < 0) return 1;
    if (tl_decode_fs_statfs(reply, (unsigned long)n, sf)) {
        errno = EIO;
        return 1;
    }
    TL_ERRNO_RESTORE;
    *rc = 0;
    return 1;
}

static void fill_statfs(struct statfs *b, const long long *s) {
    memset(b, 0, sizeof *b);
    b->f_type = (__fsword_t)s[0];
    b->f_bsize = (__fsword_t)s[1];
    b->f_blocks = (fsblkcnt_t)s[2];
    b->f_bfree = (fsblkcnt_t)s[3];
    b->f_bavail = (fsblkcnt_t)s[4];
    b->f_files = (fsfilcnt_t)s[5];
    b->f_ffree = (fsfilcnt_t)s[6];
    b->f_fsid.__val[0] = (int)s[7];
    b->f_fsid.__val[1] = (int)s[8];
    b->f_namelen = (__fsword_t)s[9];
    b->f_frsize = (__fsword_t)s[10];
    b->f_flags = (__fsword_t)s[11];
}

/* glibc builds statvfs from statfs the same way (f_flag keeps the ST_* mount flags). */
static void fill_statvfs(struct statvfs *b, const long long *s) {
    memset(b, 0, sizeof *b);
    b->f_bsize = (unsigned long)s[1];
    b->f_frsize = (unsigned long)(s[10] ? s[10] : s[1]);
    b->f_blocks = (fsblkcnt_t)s[2];
    b->f_bfree = (fsblkcnt_t)s[3];
    b->f_bavail = (fsblkcnt_t)s[4];
    b->f_files = (fsfilcnt_t)s[5];
    b->f_ffree = (fsfilcnt_t)s[6];
    b->f_favail = (fsfilcnt_t)s[6];
    b->f_fsid = (unsigned long)(unsigned int)s[7] | ((unsigned long)(unsigned int)s[8] << 32);
    b->f_namemax = (unsigned long)s[9];
    b->f_flag = (unsigned long)s[11] & ~(unsigned long)0x20; /* ST_VALID is statfs-only */
}

#define STATFS_HOOK(name, type, fill)                                                   \
    TL_EXPORT int name(const char *path, type *buf) {                                   \
        TL_REAL(name);                                                                  \
        long long sf[FS_NSF];                                                           \
        int rc;                                                                         \
        if (!statfs_common(path, sf, &rc)) return real_##name(path, buf);               \
        if (rc == 0) fill((void *)buf, sf);                                             \
        return rc;                                                                      \
    }
STATFS_HOOK(statfs, struct statfs, fill_statfs)
STATFS_HOOK(statfs64, struct statfs64, fill_statfs)
STATFS_HOOK(statvfs, struct statvfs, fill_statvfs)
STATFS_HOOK(statvfs64, struct statvfs64, fill_statvfs)
