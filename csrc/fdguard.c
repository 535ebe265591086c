/* Keep the layer's descriptors alive in programs that close or reuse every descriptor:
 * the channel (channel.c) and the liveness pipe (liveness.c).
 *
 * close() of one answers EBADF as if the number were free (the program did not open it,
 * so it cannot rely on it); close_range()/closefrom() skip them; dup2()/dup3() onto their
 * number first move them to another high descriptor, then do what the program asked. */
#include <unistd.h>

#include "layer.h"

TL_EXPORT int close(int fd) {
    TL_REAL(close);
    if (!tl_in_layer && tl_fd_protected(fd)) {
        errno = EBADF;
        return -1;
    }
    return real_close(fd);
}

/* close_range over [first, last] minus the protected descriptors in it. */
static int close_range_around(unsigned first, unsigned last, int flags) {
    TL_REAL(close_range);
    int keep[2] = {tl_chan_fd, tl_live_fd};
    if (keep[0] > keep[1]) {
        int t = keep[0];
        keep[0] = keep[1];
        keep[1] = t;
    }
    unsigned from = first;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < 0 || (unsigned)keep[i] < from || (unsigned)keep[i] > last) continue;
        if ((unsigned)keep[i] > from) {
            int r = real_close_range(from, (unsigned)keep[i] - 1, flags);
            if (r) return r;
        }
        if ((unsigned)keep[i] == last) return 0;
        from = (unsigned)keep[i] + 1;
    }
    return real_close_range(from, last, flags);
}

TL_EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
    TL_REAL(close_range);
    if (tl_in_layer || first > last) return real_close_range(first, last, flags);
    return close_range_around(first, last, flags);
}

TL_EXPORT void closefrom(int lowfd) {
    TL_REAL(closefrom);
    if (tl_in_layer || (tl_chan_fd < lowfd && tl_live_fd < lowfd)) {
        real_closefrom(lowfd);
        return;
    }
    TL_ERRNO_SAVE;
    close_range_around(lowfd < 0 ? 0 : (unsigned)lowfd, ~0U, 0);
    TL_ERRNO_RESTORE;
}

TL_EXPORT int dup2(int oldfd, int newfd) {
    TL_REAL(dup2);
    if (!tl_in_layer && tl_fd_protected(newfd)) {
        if (oldfd == newfd) { /* dup2(x, x) checks x is open: for the program it is not */
            errno = EBADF;
            return -1;
        }
        if (tl_fd_evict(newfd)) {
            errno = EBUSY;
            return -1;
        }
    }
    return real_dup2(oldfd, newfd);
}

TL_EXPORT int dup3(int oldfd, int newfd, int flags) {
    TL_REAL(dup3);
    if (!tl_in_layer && tl_fd_protected(newfd) && oldfd != newfd && tl_fd_evict(newfd)) {
        errno = EBUSY;
        return -1;
    }
    return real_dup3(oldfd, newfd, flags);
}
