/* Private declarations of the remote-files feature (csrc/files.c). */
#ifndef TETHER_FILES_H
#define TETHER_FILES_H

#include <regex.h>

#include "layer.h"

enum { FS_LOCAL = 0, FS_REMOTE = 1, FS_ENOENT = 2 };
enum { FS_MODE_LOCAL = 0, FS_MODE_READ, FS_MODE_WRITE, FS_MODE_LOCAL_OVERRIDES };

#define FS_MAX_ITEMS 96
#define FS_MAX_REGEX 32
#define FS_ARENA 12288

struct fs_list {
    const char *item[FS_MAX_ITEMS];
    size_t len[FS_MAX_ITEMS];
    int n;
};

struct fs_regexes {
    regex_t re[FS_MAX_REGEX];
    int n;
};

/* The decision table, parsed once from TETHER_LAYER_CONFIG (see files.c for the keys). */
struct fs_table {
    int mode;
    struct fs_list prefix;   /* fs_lp: local path prefixes (whole components) */
    struct fs_list tree;     /* fs_lt: local trees: prefixes whose ancestors are local too */
    struct fs_list suffix;   /* fs_ls: local name suffixes (.so, .py, ...) */
    struct fs_list contains; /* fs_lc: local if the path contains it (/node_modules/) */
    struct fs_list remote_ro;/* fs_rr: remote for reading even if under a local prefix */
    struct fs_regexes rw, ro, lo, nf; /* user regexes: read_write, read_only, local, not_found */
    char arena[FS_ARENA];
    size_t used;
};

#endif
