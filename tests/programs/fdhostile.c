/* A program that closes and overwrites every descriptor it did not open, like a daemon,
 * after its first getenv opened the layer's channel; then it forks and the child asks
 * again.  Prints what it got and whether the layer's channel survived. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int count_sockets(void) {
    int n = 0;
    char path[64], link[256];
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(path, link, sizeof link - 1);
        if (l > 0) { link[l] = 0; if (strncmp(link, "socket:", 7) == 0) n++; }
    }
    if (d) closedir(d);
    return n;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "ONLY_REMOTE";
    const char *v = getenv(name);
    printf("first=%s sockets=%d\n", v ? v : "<unset>", count_sockets());
    fflush(stdout);
    for (int fd = 3; fd < 4096; fd++) close(fd);
    close_range(3, ~0U, 0);
    for (int fd = 3; fd < 1100; fd++) dup2(2, fd);
    for (int fd = 3; fd < 1100; fd++) close(fd);
    printf("after-close sockets=%d\n", count_sockets());
    fflush(stdout);
    return 0;
}
