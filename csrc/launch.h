/* Exec of static and Go binaries through tether-launch (csrc/launch.c). */
#ifndef TETHER_LAUNCH_H
#define TETHER_LAUNCH_H

#include <stddef.h>

/* 1 if the ELF file at path has no interpreter (static) or is a Go binary. */
TL_HIDDEN int tl_needs_seccomp(const char *path);
/* PATH search like execvp's, into buf; NULL if not found. */
TL_HIDDEN const char *tl_resolve_in_path(const char *file, char *const envp[], char *buf,
                                         size_t cap);
/* When path must run under the supervisor: out = {launcher, path, argv...}, returns 1. */
TL_HIDDEN int tl_launch_argv(const char *path, char *const argv[], char *const envp[],
                             char **out, size_t cap);

#endif
