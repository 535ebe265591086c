/* Test entry points of the incoming feature (csrc/incoming.c), read by cffi in tests.
 * Plain C declarations only. */

/* {"t":"in_listen","id":id,"port":port,"local_port":local_port,"addr":addr,"family":family}
 * port: the target port to subscribe; local_port/addr: where the program really listens.
 * adopt=1 adds "adopt":true: a listener this process did not bind (port is a guess, 0 for
 * none; the orchestrator knows better from the bind). */
long tl_encode_in_listen(unsigned char *buf, unsigned long cap, unsigned long id, long port,
                         long local_port, const char *addr, long family, int adopt);
/* in_listen_reply: 1 ok, 0 not subscribed, -1 malformed; *port / *want: the target port
 * and the port getsockname reports (0 when absent). */
long tl_decode_in_listen_reply(const unsigned char *buf, unsigned long len, long *port,
                               long *want);
/* {"t":"in_bind","id":id,"port":port,"want":want,"local_port":local_port}: a socket bound
 * at local_port serves target port `port` (the program asked for `want`). */
long tl_encode_in_bind(unsigned char *buf, unsigned long cap, unsigned long id, long port,
                       long want, long local_port);
/* {"t":"in_peer","id":id,"port":port}: who is the orchestrator connection from local port
 * `port`, to the listener on local port `listen_port`? */
long tl_encode_in_peer(unsigned char *buf, unsigned long cap, unsigned long id, long port,
                       long listen_port);
/* in_peer_reply: 1 with the peer's address text in addr (NUL-terminated) and *port set,
 * 0 when the reply says "not one of ours" (addr nil), -1 when malformed. */
long tl_decode_in_peer_reply(const unsigned char *buf, unsigned long len, unsigned long *id,
                             char *addr, unsigned long addr_cap, long *port);
/* The port the layer decides to subscribe for a bind of `port` (loopback: 1 if the address
 * is a loopback one), or 0 when the bind stays purely local.  *local_port receives the
 * port to bind locally.  For tests of the port rules (ports, ignore_ports, port_mapping,
 * listen_ports, ignore_localhost) against the current TETHER_LAYER_CONFIG. */
long tl_incoming_decide(long port, int loopback, long *local_port);
long tl_incoming_decide_with(const char *config, long port, int loopback, long *local_port);
