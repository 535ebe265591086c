/* The seccomp filter tether installs for programs the layer cannot reach (static and Go
 * binaries): connect, bind, listen and the calls that open or stat a path go to a
 * supervisor (user notification), every other system call runs.  One definition, included by the native helper module (layer/native.c,
 * used by `tether exec`) and by the launcher (csrc/launcher/main.c, used when a program
 * that has the layer execs a static or Go binary). */
#ifndef TETHER_SECCOMP_FILTER_H
#define TETHER_SECCOMP_FILTER_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif

#if defined(__x86_64__)
#define TETHER_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TETHER_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp support needs an audit arch for this machine"
#endif

/* The system calls the supervisor sees (python/tether/seccomp.py reads this list through
 * tether._native).  The path calls are x86-64's and arm64's: open, stat, lstat, readlink
 * and access exist only on x86-64.  Build tools pay one round trip into the supervisor's C loop per path call
 * (layer/native.c tether_notif_recv_program), never one into Python. */
static const int tether_trapped_syscalls[] = {
    SYS_connect, SYS_bind, SYS_listen, SYS_openat, SYS_newfstatat, SYS_statx, SYS_readlinkat,
    SYS_faccessat,
#ifdef SYS_faccessat2
    SYS_faccessat2,
#endif
#ifdef SYS_open
    SYS_open, SYS_stat, SYS_lstat, SYS_readlink, SYS_access,
#endif
    SYS_uname, /* answered per program like the path calls: the target's hostname */
};
#define TETHER_N_TRAPPED (int)(sizeof tether_trapped_syscalls / sizeof tether_trapped_syscalls[0])

/* Install a filter that sends `nrs` to a supervisor and lets every other call through,
 * for this thread and every process it starts.  Returns the listener descriptor, or
 * -errno.  Sets no_new_privs, which the filter requires. */
static inline int tether_install_listener(const int *nrs, int n) {
    struct sock_filter prog[72];
    int len = 0;
    if (n < 1 || n > 32) return -EINVAL;
    prog[len++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                               offsetof(struct seccomp_data, arch));
    prog[len++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TETHER_AUDIT_ARCH, 1, 0);
    prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog[len++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                               offsetof(struct seccomp_data, nr));
    for (int i = 0; i < n; i++) {
        /* match: fall through to USER_NOTIF; else skip it */
        prog[len++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nrs[i],
                                                   0, 1);
        prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
    }
    prog[len++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog fprog = {(unsigned short)len, prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -errno;
    /* Go preempts goroutines with SIGURG all the time: with WAIT_KILLABLE_RECV a signal
     * that arrives before the supervisor read the notification does not abort the call. */
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                      SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                      &fprog);
    if (fd < 0 && errno == EINVAL)
        fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                     &fprog);
    return fd < 0 ? -errno : (int)fd;
}

#endif
