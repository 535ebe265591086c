"""cffi API-mode build of ``tether._native``: the few system calls the orchestrator and
the agent need that Python 3.11's ``os`` lacks (setns, pidfd_getfd, prctl).

Unlike the layer, this *is* a CPython extension: it is only ever imported by tether's own
Python processes.
"""

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int setns(int fd, int nstype);
    int tether_pidfd_open(int pid, unsigned int flags);
    int tether_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
    int tether_set_name(const char *name);
    int tether_set_pdeathsig(int sig);
    #define CLONE_NEWNET ...
    #define CLONE_NEWNS ...
    """
)
ffibuilder.set_source(
    "tether._native",
    """
    #define _GNU_SOURCE
    #include <sched.h>
    #include <signal.h>
    #include <sys/prctl.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #ifndef SYS_pidfd_open
    #define SYS_pidfd_open 434
    #endif
    #ifndef SYS_pidfd_getfd
    #define SYS_pidfd_getfd 438
    #endif
    static int tether_pidfd_open(int pid, unsigned int flags) {
        return (int)syscall(SYS_pidfd_open, pid, flags);
    }
    static int tether_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
        return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
    }
    static int tether_set_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }
    static int tether_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
    """,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
