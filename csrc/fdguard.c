/* Keep the layer's channel alive in programs that close or reuse every descriptor.
 *
 * close() of the channel answers EBADF as if the number were free (the program did not
 * open it, so it cannot rely on it); close_range()/closefrom() skip it; dup2()/dup3()
 * onto its number first move the channel to another high descriptor, then do what the
 * program asked. */
#include <unistd.h>

#include "layer.h"

TL_EXPORT int close(int fd) {
    TL_REAL(close);
    if (!tl_in_layer && tl_channel_is(fd)) {
        errno = EBADF;
        return -1;
    }
    return real_close(fd);
}

TL_EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
    TL_REAL(close_range);
    int ch = tl_channel_fd();
    if (tl_in_layer || ch < 0 || (unsigned)ch < first || (unsigned)ch > last)
        return real_close_range(first, last, flags);
    int r = 0;
    if ((unsigned)ch > first) r = real_close_range(first, (unsigned)ch - 1, flags);
    if (r == 0 && (unsigned)ch < last) r = real_close_range((unsigned)ch + 1, last, flags);
    return r;
}

TL_EXPORT void closefrom(int lowfd) {
    TL_REAL(closefrom);
    int ch = tl_channel_fd();
    if (tl_in_layer || ch < 0 || ch < lowfd) {
        real_closefrom(lowfd);
        return;
    }
    TL_ERRNO_SAVE;
    if (ch > lowfd) close_range((unsigned)lowfd, (unsigned)ch - 1, 0);
    close_range((unsigned)ch + 1, ~0U, 0);
    TL_ERRNO_RESTORE;
}

TL_EXPORT int dup2(int oldfd, int newfd) {
    TL_REAL(dup2);
    if (!tl_in_layer && tl_channel_is(newfd)) {
        if (oldfd == newfd) { /* dup2(x, x) checks x is open: for the program it is not */
            errno = EBADF;
            return -1;
        }
        if (tl_channel_evict(newfd)) {
            errno = EBUSY;
            return -1;
        }
    }
    return real_dup2(oldfd, newfd);
}

TL_EXPORT int dup3(int oldfd, int newfd, int flags) {
    TL_REAL(dup3);
    if (!tl_in_layer && tl_channel_is(newfd) && oldfd != newfd && tl_channel_evict(newfd)) {
        errno = EBUSY;
        return -1;
    }
    return real_dup3(oldfd, newfd, flags);
}
