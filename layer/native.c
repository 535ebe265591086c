/* tether._native: system calls the orchestrator and the agent need that Python's `os`
 * lacks.  Compiled by cffi (API mode) from layer/native_build.py. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#include "seccomp_filter.h"

static int tether_pidfd_open(int pid, unsigned int flags) {
    return (int)syscall(SYS_pidfd_open, pid, flags);
}
static int tether_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}
static int tether_set_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }
static int tether_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }

/* System call numbers by name, for the few the supervisor traps. */
static int tether_sysno(const char *name) {
    if (!strcmp(name, "connect")) return SYS_connect;
    if (!strcmp(name, "bind")) return SYS_bind;
    if (!strcmp(name, "listen")) return SYS_listen;
    if (!strcmp(name, "sendto")) return SYS_sendto;
    if (!strcmp(name, "sendmsg")) return SYS_sendmsg;
    if (!strcmp(name, "openat")) return SYS_openat;
    if (!strcmp(name, "newfstatat")) return SYS_newfstatat;
    if (!strcmp(name, "statx")) return SYS_statx;
    if (!strcmp(name, "uname")) return SYS_uname;
    if (!strcmp(name, "readlinkat")) return SYS_readlinkat;
    if (!strcmp(name, "faccessat")) return SYS_faccessat;
#ifdef SYS_faccessat2
    if (!strcmp(name, "faccessat2")) return SYS_faccessat2;
#endif
#ifdef SYS_open
    if (!strcmp(name, "open")) return SYS_open;
    if (!strcmp(name, "stat")) return SYS_stat;
    if (!strcmp(name, "lstat")) return SYS_lstat;
    if (!strcmp(name, "readlink")) return SYS_readlink;
    if (!strcmp(name, "access")) return SYS_access;
#endif
    return -1;
}

/* The filter of layer/seccomp_filter.h, the same the launcher installs. */
static int tether_seccomp_listener(void) {
    return tether_install_listener(tether_trapped_syscalls, TETHER_N_TRAPPED);
}

struct tether_notif {
    uint64_t id;
    uint32_t pid;
    int32_t nr;
    uint64_t args[6];
    char exe[512];   /* the caller's executable, for path calls only ("" otherwise) */
    char path[4096]; /* the path argument of a path call ("" if unreadable) */
};

/* A NUL-terminated string of another process, page by page (it may end just before an
 * unmapped page).  Its length, or -1 if unreadable or longer than cap - 1. */
static long read_string(pid_t pid, uint64_t addr, char *out, size_t cap) {
    size_t got = 0;
    while (got < cap - 1) {
        size_t want = 4096 - (size_t)((addr + got) % 4096);
        if (want > cap - 1 - got) want = cap - 1 - got;
        struct iovec local = {out + got, want}, remote = {(void *)(uintptr_t)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0) return -1;
        char *nul = memchr(out + got, '\0', (size_t)n);
        if (nul) return (long)(nul - out);
        got += (size_t)n;
    }
    return -1;
}

/* Which argument of a path call is the path (-1: none). */
static int path_arg(int nr) {
    if (nr == SYS_uname) return -1;
#ifdef SYS_open
    if (nr == SYS_open || nr == SYS_stat || nr == SYS_lstat || nr == SYS_readlink ||
        nr == SYS_access)
        return 0;
#endif
    (void)nr;
    return 1; /* the *at calls and statx */
}

static int tether_notif_respond(int fd, uint64_t id, int64_t val, int32_t error, uint32_t flags);

static int is_path_call(int nr) {
    for (int i = 3; i < TETHER_N_TRAPPED; i++) /* after connect, bind, listen */
        if (tether_trapped_syscalls[i] == nr) return 1;
    return 0;
}

/* `name` is an item of the ","-separated `list` ("*": any name). */
static int in_names(const char *name, const char *list) {
    size_t nl = strlen(name);
    if (list && list[0] == '*' && !list[1]) return 1;
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l == nl && !memcmp(p, name, nl)) return 1;
        if (!end) break;
        p = end + 1;
    }
    return 0;
}

/* Block until a trapped call arrives that the supervisor must see; 0 or -errno (ENOENT:
 * the caller died meanwhile).  A path call (open, stat...) of an executable named in
 * `skip_names` (","-separated base names: build tools, debuggers; "*": all), with a path in
 * `skip_exes` (","-separated: programs the layer reaches, which decide their files
 * themselves) or from a Go toolchain's own tools (.../pkg/tool/...) continues here: a
 * build compiles thousands of files and must not wait for Python each time. */
static int tether_notif_recv_program(int fd, struct tether_notif *out, const char *skip_names,
                                     const char *skip_exes) {
    struct seccomp_notif req;
    char proc[40];
    for (;;) {
        memset(&req, 0, sizeof req);
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req)) return -errno;
        out->id = req.id;
        out->pid = req.pid;
        out->nr = req.data.nr;
        for (int i = 0; i < 6; i++) out->args[i] = req.data.args[i];
        out->exe[0] = '\0';
        out->path[0] = '\0';
        if (!is_path_call(req.data.nr)) return 0;
        snprintf(proc, sizeof proc, "/proc/%u/exe", req.pid);
        ssize_t n = readlink(proc, out->exe, sizeof out->exe - 1);
        if (n <= 0) return 0; /* gone, or not ours to read: Python answers */
        out->exe[n] = '\0';
        const char *base = strrchr(out->exe, '/');
        base = base ? base + 1 : out->exe;
        if (!in_names(base, skip_names) && !in_names(out->exe, skip_exes) &&
            !strstr(out->exe, "/pkg/tool/")) {
            int arg = path_arg(req.data.nr);
            if (arg < 0 || read_string((pid_t)req.pid, req.data.args[arg], out->path,
                                       sizeof out->path) < 0)
                out->path[0] = '\0';
            return 0;
        }
        tether_notif_respond(fd, req.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
    }
}

static int tether_notif_respond(int fd, uint64_t id, int64_t val, int32_t error, uint32_t flags) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    resp.val = val;
    resp.error = error;
    resp.flags = flags;
    return ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) ? -errno : 0;
}

static int tether_notif_id_valid(int fd, uint64_t id) {
    return ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) ? -errno : 0;
}

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS _IOW('!', 4, uint64_t)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

/* Linux >= 6.6: the supervisor's thread runs on the trapped thread's CPU as it blocks,
 * and the answer wakes that thread the same way, instead of two cross-CPU wake-ups per
 * trapped call.  0, or -errno on older kernels (harmless: only slower). */
static int tether_notif_sync_wakeup(int fd) {
    return ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, (uint64_t)SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
               ? -errno
               : 0;
}

/* Put srcfd into the trapped process at number newfd (SETFD) or any free number. */
static int tether_notif_addfd(int fd, uint64_t id, int srcfd, int newfd, uint32_t newfd_flags) {
    struct seccomp_notif_addfd add;
    memset(&add, 0, sizeof add);
    add.id = id;
    add.srcfd = (uint32_t)srcfd;
    add.newfd = newfd >= 0 ? (uint32_t)newfd : 0;
    add.flags = newfd >= 0 ? SECCOMP_ADDFD_FLAG_SETFD : 0;
    add.newfd_flags = newfd_flags;
    int r = ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
    return r < 0 ? -errno : r;
}
