/* The layer's test-visible entry points.  This file is read by cffi (`ffi.cdef`) in the
 * tests and benchmarks, and included by the C sources, so keep it to plain C declarations
 * without preprocessor conditionals. */

/* Encoders: write one message body (msgpack, no length prefix) into buf; return its
 * length, or -1 when cap is too small.  Each must produce exactly the bytes of the
 * matching vector in layer/protocol.json. */
long tl_encode_hello(unsigned char *buf, unsigned long cap, long pid, long ppid, const char *exe);
long tl_encode_env(unsigned char *buf, unsigned long cap, unsigned long id);

/* Decoders: parse a message body.  tl_decode_env_reply writes "NAME=VALUE\0" entries
 * back to back into out (sorted as received) and returns how many, or -1 if malformed. */
long tl_decode_env_reply(const unsigned char *buf, unsigned long len, unsigned long *id,
                         char *out, unsigned long out_cap);
long tl_decode_hello_ok(const unsigned char *buf, unsigned long len, long *session);

/* The layer's view of itself, for tests: 1 if a session socket is configured. */
int tl_layer_active(void);
int tl_layer_passthrough(void);
