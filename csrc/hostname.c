/* feature.hostname: gethostname() and uname() answer the target's hostname.
 *
 * The orchestrator puts the name in TETHER_LAYER_CONFIG ("hn=<name>", absent when the
 * feature is off); the hooks answer from it with no round trip.  glibc's own callers of
 * uname (its gethostname among them) are not interposable, hence both hooks. */
#include <pthread.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "layer.h"

static char host[65];
static pthread_once_t host_once = PTHREAD_ONCE_INIT;

static void host_setup(void) {
    size_t len;
    tl_in_layer++;
    tl_init();
    if (tl_cfg.active && !tl_cfg.passthrough) {
        const char *v = tl_config_value("hn", &len);
        if (v && len > 0 && len < sizeof host) {
            memcpy(host, v, len);
            host[len] = '\0';
        }
    }
    tl_in_layer--;
}

static const char *target_host(void) {
    if (tl_in_layer) return NULL;
    pthread_once(&host_once, host_setup);
    return host[0] ? host : NULL;
}

TL_EXPORT int gethostname(char *name, size_t len) {
    TL_REAL(gethostname);
    const char *h = target_host();
    if (!h) return real_gethostname(name, len);
    size_t n = strlen(h);
    if (n + 1 > len) { /* what glibc does: copy what fits, say it did not */
        if (len) memcpy(name, h, len);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(name, h, n + 1);
    return 0;
}

TL_EXPORT int uname(struct utsname *buf) {
    TL_REAL(uname);
    int rc = real_uname(buf);
    const char *h = target_host();
    if (rc == 0 && h) {
        size_t n = strlen(h); /* < 65: host_setup keeps it so */
        memset(buf->nodename, 0, sizeof buf->nodename);
        memcpy(buf->nodename, h, n < sizeof buf->nodename ? n : sizeof buf->nodename - 1);
    }
    return rc;
}
