/* The session's liveness descriptor: the write end of a pipe that every process of the
 * program's tree inherits (not close-on-exec).  The orchestrator holds the read end and
 * keeps the session while anyone holds this one: daemons that fork, setsid and exit their
 * parent keep the target's context (python/tether/lifetime.py).
 *
 * Like the channel it must survive programs that close every descriptor they did not
 * open: fdguard.c refuses to close it and moves it away from dup2() targets.  Unlike the
 * channel it is inherited across exec, and its number travels in TETHER_LIVENESS_FD,
 * which the exec hooks put back when a program scrubs its environment (env.c). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "layer.h"

int tl_live_fd = -1;
char tl_live_var[48];

static void set_var(void) {
    int n = snprintf(tl_live_var, sizeof tl_live_var, "TETHER_LIVENESS_FD=%d", tl_live_fd);
    if (n < 0 || (size_t)n >= sizeof tl_live_var) tl_live_var[0] = '\0';
}

void tl_liveness_init(void) {
    const char *v = getenv("TETHER_LIVENESS_FD");
    struct stat st;
    char *end;
    if (!v || !*v) return;
    long fd = strtol(v, &end, 10);
    /* Only a pipe we were really given: a number some ancestor closed (with a raw system
     * call) may since hold one of the program's own files, which we must not pin. */
    if (*end || fd < 0 || fd > 1 << 20 || fstat((int)fd, &st) || !S_ISFIFO(st.st_mode))
        return;
    tl_live_fd = (int)fd;
    set_var();
}

int tl_liveness_evict(int fd) {
    if (fd != tl_live_fd) return 0;
    int moved = fcntl(tl_live_fd, F_DUPFD, tl_live_fd + 1); /* inherited, like the original */
    if (moved < 0) return -1;
    tl_live_fd = moved; /* the old number is about to be overwritten by the caller's dup2 */
    set_var();
    return 0;
}
