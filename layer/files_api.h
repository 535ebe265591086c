/* Test entry points of the remote-files feature (csrc/files.c), read by cffi in tests. */

/* Decide a path the way the layer does, under `config` (a TETHER_LAYER_CONFIG value,
 * "k=v;k=v"), with `cwd` as the current directory for relative paths.  Returns
 * 0 local, 1 remote, 2 ENOENT (not_found), -1 bad config (a write in read mode is local). */
int tl_fs_decide_with(const char *config, const char *cwd, const char *path, int write);

/* Lexical normalization of `path` against `cwd` (".", "..", "//"); 0 or -1 if too long. */
int tl_fs_normalize(const char *cwd, const char *path, char *out, unsigned long cap);

/* Encoders of the fs_* requests (each checked against the vectors in layer/protocol.json). */
long tl_encode_fs_open(unsigned char *buf, unsigned long cap, unsigned long id, const char *path,
                       long flags, long mode);
long tl_encode_fs_stat(unsigned char *buf, unsigned long cap, unsigned long id, const char *path,
                       int follow);
long tl_encode_fs_path(unsigned char *buf, unsigned long cap, const char *type, unsigned long id,
                       const char *path);

/* Decoders: the errno of an `error` reply (0 if none), the 16 stat integers of an
 * fs_stat_reply (0, or -1 if malformed), the string of an fs_readlink/fs_realpath reply
 * (its length, or -1). */
int tl_decode_fs_errno(const unsigned char *buf, unsigned long len);
int tl_decode_fs_stat(const unsigned char *buf, unsigned long len, long long *st);
long tl_decode_fs_string(const unsigned char *buf, unsigned long len, const char *key, char *out,
                         unsigned long cap);

/* fs_change (mkdir, rmdir, unlink, rename of a remote path) and the 12 integers of an
 * fs_statfs_reply (messages_files.STATFS_FIELDS; 0, or -1 if malformed). */
long tl_encode_fs_change(unsigned char *buf, unsigned long cap, unsigned long id, const char *op,
                         const char *path, const char *to, long arg);
int tl_decode_fs_statfs(const unsigned char *buf, unsigned long len, long long *sf);
