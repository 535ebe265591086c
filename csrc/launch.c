/* Programs the layer cannot reach, started by a program it does reach.
 *
 * A static binary has no dynamic loader and Go makes its system calls itself, so
 * LD_PRELOAD does nothing for them.  When a program under the layer execs one, the exec
 * hooks run it through tether-launch instead, which puts it under the seccomp supervisor
 * first (see python/tether/seccomp.py).  A tree already under the supervisor carries
 * TETHER_SECCOMP_ACTIVE=1 and is left alone (the filter is inherited).
 *
 * This runs between fork and exec: system calls and stack buffers only. */
#include <elf.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "layer.h"
#include "launch.h"

static long sys_pread(int fd, void *buf, size_t n, off_t off) {
    return syscall(SYS_pread64, fd, buf, n, off);
}

static int section_is_go(int fd, const Elf64_Ehdr *eh) {
    Elf64_Shdr strtab, sh;
    char name[20];
    if (!eh->e_shoff || eh->e_shstrndx >= eh->e_shnum || eh->e_shentsize < sizeof sh) return 0;
    if (sys_pread(fd, &strtab, sizeof strtab,
                  (off_t)(eh->e_shoff + (uint64_t)eh->e_shstrndx * eh->e_shentsize)) !=
        (long)sizeof strtab)
        return 0;
    for (int i = 0; i < eh->e_shnum && i < 512; i++) {
        if (sys_pread(fd, &sh, sizeof sh, (off_t)(eh->e_shoff + (uint64_t)i * eh->e_shentsize)) !=
            (long)sizeof sh)
            return 0;
        long n = sys_pread(fd, name, sizeof name - 1, (off_t)(strtab.sh_offset + sh.sh_name));
        if (n <= 0) continue;
        name[n] = '\0';
        if (!strcmp(name, ".go.buildinfo") || !strcmp(name, ".gopclntab") ||
            !strcmp(name, ".note.go.buildid"))
            return 1;
    }
    return 0;
}

int tl_needs_seccomp(const char *path) {
    Elf64_Ehdr eh;
    Elf64_Phdr ph;
    int interp = 0, result = 0;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    if (sys_pread(fd, &eh, sizeof eh, 0) == (long)sizeof eh &&
        memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 && eh.e_ident[EI_CLASS] == ELFCLASS64 &&
        eh.e_phentsize >= sizeof ph) {
        for (int i = 0; i < eh.e_phnum && i < 64; i++) {
            if (sys_pread(fd, &ph, sizeof ph,
                          (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) != (long)sizeof ph)
                break;
            if (ph.p_type == PT_INTERP) interp = 1;
        }
        result = !interp || section_is_go(fd, &eh);
    }
    syscall(SYS_close, fd);
    return result;
}

static const char *env_get(char *const envp[], const char *name) {
    size_t nl = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, nl) == 0 && envp[i][nl] == '=') return envp[i] + nl + 1;
    return NULL;
}

const char *tl_resolve_in_path(const char *file, char *const envp[], char *buf, size_t cap) {
    if (strchr(file, '/')) return file;
    const char *path = env_get(envp, "PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    size_t fl = strlen(file);
    while (*path) {
        const char *end = strchr(path, ':');
        size_t dl = end ? (size_t)(end - path) : strlen(path);
        if (dl + fl + 2 <= cap) {
            memcpy(buf, dl ? path : ".", dl ? dl : 1);
            size_t at = dl ? dl : 1;
            buf[at] = '/';
            memcpy(buf + at + 1, file, fl + 1);
            if (syscall(SYS_faccessat, AT_FDCWD, buf, X_OK) == 0) return buf;
        }
        if (!end) break;
        path = end + 1;
    }
    return NULL;
}

int tl_launch_argv(const char *path, char *const argv[], char *const envp[], char **out,
                   size_t cap) {
    size_t n = 0;
    /* Set (to 1, or 0 after a failed attach) once a tree went through tether-launch. */
    if (!tl_cfg.active || !tl_cfg.launcher[0] || env_get(envp, "TETHER_SECCOMP_ACTIVE"))
        return 0;
    while (argv && argv[n]) n++;
    if (n + 3 > cap || !tl_needs_seccomp(path)) return 0;
    out[0] = tl_cfg.launcher;
    out[1] = (char *)path;
    for (size_t i = 0; i < n; i++) out[2 + i] = argv[i];
    out[2 + n] = NULL;
    return 1;
}
