/* Load-time set-up: read the session's variables once, decide pass-through for skipped
 * programs, resolve libc's real functions, and register the fork handler.
 *
 * Variables (set by the orchestrator, restored by the exec hooks when a program scrubs
 * its environment):
 *   TETHER_LAYER_SOCK    Unix socket of the orchestrator
 *   TETHER_LAYER_SO      path of this library (LD_PRELOAD is rebuilt from it)
 *   TETHER_LAYER_CONFIG  "key=value;..." decisions the layer makes without a round trip
 *   TETHER_ENV_APPLIED   set only at spawn; absent after a scrub => getenv falls back
 *   TETHER_LIVENESS_FD   the session's liveness pipe (liveness.c) */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"

__thread int tl_in_layer __attribute__((tls_model("initial-exec")));
struct tl_config tl_cfg;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

void *tl_real(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        /* A missing mandatory libc symbol means nothing can work; say so once, plainly. */
        static const char msg[] = "tether layer: libc lacks a required symbol\n";
        ssize_t r = write(2, msg, sizeof msg - 1);
        (void)r;
        abort();
    }
    return f;
}

static void copy_var(char *dst, size_t cap, const char *name) {
    const char *v = getenv(name); /* tl_in_layer is set: our hook passes straight through */
    dst[0] = '\0';
    if (v && strlen(v) < cap) strcpy(dst, v);
}

static void fmt_var(char *dst, size_t cap, const char *name, const char *value) {
    int n = snprintf(dst, cap, "%s=%s", name, value);
    if (n < 0 || (size_t)n >= cap) dst[0] = '\0';
}

static int name_in_list(const char *name, const char *list) {
    size_t nl = strlen(name);
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == nl && strncmp(p, name, l) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

const char *tl_config_value(const char *key, size_t *len) {
    return tl_config_lookup(tl_cfg.config_var, key, len);
}

const char *tl_config_lookup(const char *config, const char *key, size_t *len) {
    /* Unknown keys are ignored, so an older layer can run under a newer orchestrator.
     * `config` may carry a "TETHER_LAYER_CONFIG=" prefix. */
    const char *p = config;
    size_t kl = strlen(key);
    if (!p) return NULL;
    if (strncmp(p, "TETHER_LAYER_CONFIG=", 20) == 0) p += 20;
    while (*p) {
        const char *e = strchr(p, ';');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            *len = l - kl - 1;
            return p + kl + 1;
        }
        if (!e) break;
        p = e + 1;
    }
    return NULL;
}

static void parse_config(void) {
    size_t l;
    const char *v = tl_config_value("skip", &l);
    if (v && l < sizeof tl_cfg.skip) {
        memcpy(tl_cfg.skip, v, l);
        tl_cfg.skip[l] = '\0';
    }
}

static void do_init(void) {
    char value[sizeof tl_cfg.config_var];
    tl_in_layer++;
    copy_var(tl_cfg.sock_path, sizeof tl_cfg.sock_path, "TETHER_LAYER_SOCK");
    copy_var(tl_cfg.so_path, sizeof tl_cfg.so_path, "TETHER_LAYER_SO");
    tl_cfg.active = tl_cfg.sock_path[0] != '\0';
    if (tl_cfg.active) {
        fmt_var(tl_cfg.sock_var, sizeof tl_cfg.sock_var, "TETHER_LAYER_SOCK", tl_cfg.sock_path);
        fmt_var(tl_cfg.so_var, sizeof tl_cfg.so_var, "TETHER_LAYER_SO", tl_cfg.so_path);
        copy_var(value, sizeof value, "LD_PRELOAD");
        if (!value[0] || !strstr(value, tl_cfg.so_path)) {
            /* LD_PRELOAD was rewritten by someone: ours is what must survive. */
            snprintf(value, sizeof value, "%s", tl_cfg.so_path);
        }
        fmt_var(tl_cfg.preload, sizeof tl_cfg.preload, "LD_PRELOAD", value);
        copy_var(value, sizeof value, "TETHER_LAYER_CONFIG");
        fmt_var(tl_cfg.config_var, sizeof tl_cfg.config_var, "TETHER_LAYER_CONFIG", value);
        parse_config();
        /* tether-launch lives next to this library (static/Go programs, csrc/launch.c) */
        const char *slash = strrchr(tl_cfg.so_path, '/');
        if (slash && (size_t)(slash - tl_cfg.so_path) + 15 < sizeof tl_cfg.launcher) {
            memcpy(tl_cfg.launcher, tl_cfg.so_path, (size_t)(slash - tl_cfg.so_path) + 1);
            strcpy(tl_cfg.launcher + (slash - tl_cfg.so_path) + 1, "tether-launch");
            if (access(tl_cfg.launcher, X_OK)) tl_cfg.launcher[0] = '\0';
        }
        tl_cfg.env_fallback = getenv("TETHER_ENV_APPLIED") == NULL;
        tl_liveness_init();
        if (tl_cfg.skip[0] && name_in_list(program_invocation_short_name, tl_cfg.skip))
            tl_cfg.passthrough = 1;
    }
    tl_in_layer--;
}

void tl_init(void) { pthread_once(&init_once, do_init); }

static void atfork_child(void) { tl_channel_after_fork_child(); }

__attribute__((constructor)) static void tl_constructor(void) {
    tl_init();
    pthread_atfork(NULL, NULL, atfork_child);
}

TL_EXPORT int tl_layer_active(void) {
    tl_init();
    return tl_cfg.active;
}

TL_EXPORT int tl_layer_passthrough(void) {
    tl_init();
    return tl_cfg.passthrough;
}
