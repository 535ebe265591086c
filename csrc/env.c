/* Environment: keep the layer across exec, and a getenv supplement.
 *
 * The remote environment reaches the program at spawn (the orchestrator merges it into
 * the child's environment), because sh, Python, Node and Go read `environ` directly and
 * never call getenv.  Two things remain for the layer:
 *  - exec hooks put LD_PRELOAD and the session variables back when a program scrubs its
 *    environment before exec (env -i, sudo-like wrappers, build tools), so every
 *    descendant stays in the session.  They build the new envp on the caller's stack:
 *    they run between fork and exec, where malloc is unsafe.
 *  - getenv: when the environment was scrubbed (TETHER_ENV_APPLIED is absent), a name
 *    the program does not have is looked up in the session's environment. */
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"
#include "launch.h"

extern char **environ;

static size_t env_count(char *const *envp) {
    size_t n = 0;
    if (envp)
        while (envp[n]) n++;
    return n;
}

static int has_prefix(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Layer variables are rewritten from tl_cfg; LD_PRELOAD is kept when it already loads us,
 * else ours is put in front of whatever the program asked for. */
static char *const *env_fix(char *const *envp, char **out, size_t cap, char *preload_buf,
                            size_t preload_cap) {
    size_t n = 0;
    const char *their_preload = NULL;
    if (!tl_cfg.active || cap < 5) return envp;
    for (size_t i = 0; envp && envp[i] && n + 5 < cap; i++) {
        const char *e = envp[i];
        if (has_prefix(e, "LD_PRELOAD=")) {
            their_preload = e + 11;
            continue;
        }
        if (has_prefix(e, "TETHER_LAYER_SOCK=") || has_prefix(e, "TETHER_LAYER_CONFIG=") ||
            has_prefix(e, "TETHER_LAYER_SO=") || has_prefix(e, "TETHER_LIVENESS_FD="))
            continue;
        out[n++] = (char *)e;
    }
    if (their_preload && strstr(their_preload, tl_cfg.so_path)) {
        size_t l = strlen(their_preload) + 12;
        if (l <= preload_cap) {
            memcpy(preload_buf, "LD_PRELOAD=", 11);
            memcpy(preload_buf + 11, their_preload, l - 11);
            out[n++] = preload_buf;
        }
    } else if (their_preload && *their_preload) {
        size_t a = strlen(tl_cfg.preload), b = strlen(their_preload);
        if (a + b + 2 <= preload_cap) {
            memcpy(preload_buf, tl_cfg.preload, a);
            preload_buf[a] = ':';
            memcpy(preload_buf + a + 1, their_preload, b + 1);
            out[n++] = preload_buf;
        } else {
            out[n++] = tl_cfg.preload;
        }
    } else {
        out[n++] = tl_cfg.preload;
    }
    out[n++] = tl_cfg.sock_var;
    out[n++] = tl_cfg.so_var;
    out[n++] = tl_cfg.config_var;
    if (tl_live_fd >= 0 && tl_live_var[0]) out[n++] = tl_live_var;
    out[n] = NULL;
    return out;
}

/* Declares `fixed` (stack storage) and `name` (the envp to pass on). */
#define WITH_FIXED_ENV(name, envp)                                                     \
    size_t name##_cap = env_count(envp) + 7;                                           \
    char *name##_store[name##_cap];                                                    \
    char name##_preload[2048];                                                         \
    char *const *name = env_fix((envp), name##_store, name##_cap, name##_preload,      \
                                sizeof name##_preload)

/* Declares `name` (the path) and `name##_argv`: tether-launch's when `path` is a static or
 * Go binary the layer cannot reach (csrc/launch.c), else the caller's. */
#define WITH_LAUNCH(name, path, argv, envp)                                            \
    size_t name##_cap = env_count(argv) + 3;                                           \
    char *name##_store[name##_cap];                                                    \
    const char *name = (path);                                                         \
    char *const *name##_argv = (argv);                                                 \
    if (tl_launch_argv((path), (argv), (envp), name##_store, name##_cap)) {             \
        name = name##_store[0];                                                        \
        name##_argv = name##_store;                                                    \
    }

TL_EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    TL_REAL(execve);
    tl_init();
    WITH_FIXED_ENV(env, envp);
    WITH_LAUNCH(exe, path, argv, env);
    return real_execve(exe, exe_argv, env);
}

TL_EXPORT int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

TL_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    TL_REAL(execvpe);
    tl_init();
    WITH_FIXED_ENV(env, envp);
    char found[4096];
    const char *path = tl_cfg.launcher[0] ? tl_resolve_in_path(file, env, found, sizeof found)
                                          : NULL;
    if (path) {
        WITH_LAUNCH(exe, path, argv, env);
        if (exe != path) return real_execvpe(exe, exe_argv, env);
    }
    return real_execvpe(file, argv, env);
}

TL_EXPORT int execvp(const char *file, char *const argv[]) {
    return execvpe(file, argv, environ);
}

TL_EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
    TL_REAL(fexecve);
    tl_init();
    WITH_FIXED_ENV(env, envp);
    return real_fexecve(fd, argv, env);
}

/* execl family: gather the variadic arguments on the stack, then use the hooks above. */
#define GATHER_ARGS(arg, last_ap_action)                                               \
    va_list ap, ap2;                                                                   \
    size_t argc = 1;                                                                   \
    va_start(ap, arg);                                                                 \
    va_copy(ap2, ap);                                                                  \
    while (va_arg(ap2, char *)) argc++;                                                \
    va_end(ap2);                                                                       \
    char *argv[argc + 1];                                                              \
    argv[0] = (char *)arg;                                                             \
    for (size_t i = 1; i <= argc; i++) argv[i] = va_arg(ap, char *);                   \
    last_ap_action;                                                                    \
    va_end(ap)

TL_EXPORT int execl(const char *path, const char *arg, ...) {
    GATHER_ARGS(arg, (void)0);
    return execve(path, argv, environ);
}

TL_EXPORT int execlp(const char *file, const char *arg, ...) {
    GATHER_ARGS(arg, (void)0);
    return execvpe(file, argv, environ);
}

TL_EXPORT int execle(const char *path, const char *arg, ...) {
    char *const *envp;
    GATHER_ARGS(arg, envp = va_arg(ap, char *const *));
    return execve(path, argv, envp);
}

TL_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                          const posix_spawnattr_t *attr, char *const argv[],
                          char *const envp[]) {
    TL_REAL(posix_spawn);
    tl_init();
    WITH_FIXED_ENV(env, envp);
    WITH_LAUNCH(exe, path, argv, env);
    return real_posix_spawn(pid, exe, fa, attr, exe_argv, env);
}

TL_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                           const posix_spawnattr_t *attr, char *const argv[],
                           char *const envp[]) {
    TL_REAL(posix_spawnp);
    tl_init();
    WITH_FIXED_ENV(env, envp);
    char found[4096];
    const char *path = tl_cfg.launcher[0] ? tl_resolve_in_path(file, env, found, sizeof found)
                                          : NULL;
    if (path) {
        WITH_LAUNCH(exe, path, argv, env);
        TL_REAL(posix_spawn);
        if (exe != path) return real_posix_spawn(pid, exe, fa, attr, exe_argv, env);
    }
    return real_posix_spawnp(pid, file, fa, attr, argv, env);
}

/* ---- getenv supplement ---- */
static pthread_mutex_t remote_lock = PTHREAD_MUTEX_INITIALIZER;
static char *remote_block;  /* "NAME=VALUE\0..." as the orchestrator computed it */
static long remote_count = -1;

static void fetch_remote_env(void) {
    size_t cap = 1 << 20;
    uint8_t req[64];
    uint8_t *reply = malloc(cap);
    char *block;
    unsigned long id;
    long n, count;
    if (!reply) return;
    n = tl_encode_env(req, sizeof req, tl_channel_next_id());
    if (n > 0) n = tl_channel_call(req, (size_t)n, reply, cap);
    if (n > 0 && (block = malloc((size_t)n + 1)) != NULL) {
        count = tl_decode_env_reply(reply, (unsigned long)n, &id, block, (unsigned long)n + 1);
        if (count >= 0) {
            remote_block = block;
            remote_count = count;
        } else {
            free(block);
        }
    }
    free(reply);
    if (remote_count < 0) remote_count = 0; /* no session: do not ask again */
}

static char *remote_lookup(const char *name) {
    size_t nl = strlen(name);
    char *p;
    pthread_mutex_lock(&remote_lock);
    if (remote_count < 0) fetch_remote_env();
    pthread_mutex_unlock(&remote_lock);
    p = remote_block;
    for (long i = 0; p && i < remote_count; i++) {
        if (strncmp(p, name, nl) == 0 && p[nl] == '=') return p + nl + 1;
        p += strlen(p) + 1;
    }
    return NULL;
}

static char *scan_environ(const char *name) {
    size_t nl = strlen(name);
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, name, nl) == 0 && (*e)[nl] == '=') return *e + nl + 1;
    return NULL;
}

static char *(*real_getenv)(const char *);

__attribute__((noinline)) static char *getenv_slow(const char *name) {
    static __thread int resolving __attribute__((tls_model("initial-exec")));
    if (!real_getenv) {
        if (resolving) return scan_environ(name); /* dlsym asked for a variable */
        resolving = 1;
        real_getenv = (char *(*)(const char *))tl_real("getenv");
        resolving = 0;
    }
    char *v = real_getenv(name);
    if (v || tl_in_layer || !tl_cfg.env_fallback || tl_cfg.passthrough) return v;
    TL_ERRNO_SAVE;
    tl_in_layer++;
    v = remote_lookup(name);
    tl_in_layer--;
    TL_ERRNO_RESTORE;
    return v;
}

TL_EXPORT char *getenv(const char *name) {
    /* The common case is a tail call into libc: programs call getenv in hot loops. */
    if (__builtin_expect(real_getenv != NULL && !tl_cfg.env_fallback, 1))
        return real_getenv(name);
    return getenv_slow(name);
}
