/* Test entry points of the outgoing-traffic and DNS hooks (read by cffi in the tests). */

/* The local/remote decision for a config string ("k=v;k=v", as in TETHER_LAYER_CONFIG):
 * 1 remote, 0 local.  proto is "tcp" or "udp"; ip is a numeric IPv4/IPv6 address. */
int tl_outgoing_decide(const char *config, const char *proto, const char *ip, int port);
/* 1 when the name is resolved by the target under that config. */
int tl_dns_decide(const char *config, const char *name);

/* Encoders (msgpack body, no length prefix); -1 when cap is too small. */
long tl_encode_out_connect(unsigned char *buf, unsigned long cap, unsigned long id,
                           const char *proto, int family, const unsigned char *addr,
                           unsigned long addr_len, int port, int do_connect);
long tl_encode_dns_lookup(unsigned char *buf, unsigned long cap, unsigned long id,
                          const char *name, int family, int addrconfig);

/* Decoders.  out_connect_reply: *mode 1 fd, 2 relay; *result 0 or an errno; relay_addr
 * (16 bytes) / relay_len / relay_port filled in relay mode.  An error reply returns -2 with
 * *result set to its errno.  dns_lookup_reply: families[i] and addrs (16 bytes each) for up
 * to max entries, canon copied (NUL-terminated); returns the count, -2 for an error reply
 * (*eai set to its negated errno), -1 when malformed. */
long tl_decode_out_connect_reply(const unsigned char *buf, unsigned long len, int *mode,
                                 int *result, unsigned char *relay_addr, int *relay_len,
                                 int *relay_port);
/* out_connect_reply's ``local`` (the target-side address of the agent's socket): addr (16
 * bytes) / addr_len (4 or 16) / port; -1 when absent or malformed. */
long tl_decode_out_connect_local(const unsigned char *buf, unsigned long len,
                                 unsigned char *addr, int *addr_len, int *port);
long tl_decode_dns_lookup_reply(const unsigned char *buf, unsigned long len, int *families,
                                unsigned char *addrs, long max, char *canon,
                                unsigned long canon_cap, int *eai);
