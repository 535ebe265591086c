"""cffi API-mode build of ``tether._native`` (source: layer/native.c): the system calls the
orchestrator and the agent need that Python 3.11's ``os`` lacks: setns, pidfd_getfd,
prctl, and seccomp user notification for programs the layer cannot reach (static and
Go binaries).

Unlike the layer, this *is* a CPython extension: it is only ever imported by tether's own
Python processes.
"""

from pathlib import Path

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int setns(int fd, int nstype);
    int tether_pidfd_open(int pid, unsigned int flags);
    int tether_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
    int tether_set_name(const char *name);
    int tether_set_pdeathsig(int sig);
    int tether_sysno(const char *name);
    int tether_seccomp_listener(void);
    struct tether_notif { uint64_t id; uint32_t pid; int32_t nr; uint64_t args[6];
                          char exe[512]; char path[4096]; };
    int tether_notif_recv_program(int fd, struct tether_notif *out, const char *skip_names,
                                  const char *skip_exes);
    int tether_notif_respond(int fd, uint64_t id, int64_t val, int32_t error, uint32_t flags);
    int tether_notif_id_valid(int fd, uint64_t id);
    int tether_notif_sync_wakeup(int fd);
    int tether_notif_addfd(int fd, uint64_t id, int srcfd, int newfd, uint32_t newfd_flags);
    #define CLONE_NEWNET ...
    #define CLONE_NEWNS ...
    #define SECCOMP_USER_NOTIF_FLAG_CONTINUE ...
    """
)
HERE = Path(__file__).resolve().parent
ffibuilder.set_source(
    "tether._native",
    (HERE / "native.c").read_text(),
    include_dirs=[str(HERE)],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
