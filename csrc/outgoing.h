/* Private to outgoing.c and dns.c: the decision table and the remote calls they share. */
#ifndef TETHER_OUTGOING_H
#define TETHER_OUTGOING_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "layer.h"
#include "outgoing_api.h"

#define TL_PROTO_TCP 1
#define TL_PROTO_UDP 2

struct tl_rule {
    int proto;         /* 0 any, TL_PROTO_TCP, TL_PROTO_UDP */
    int family;        /* 0: any address */
    uint8_t addr[16];
    int prefix;
    int port;          /* 0: any */
};

#define TL_MAX_RULES 64
#define TL_MAX_DNS_NAMES 32

struct tl_out_config {
    int dns;            /* feature.network.dns.enabled */
    int dns_filter;     /* 0 none, 1 remote, 2 local */
    int ndns_names;
    char dns_names[TL_MAX_DNS_NAMES][256];
    int tcp, udp, ignore_lo;
    int filter;         /* 0 none, 1 remote, 2 local */
    int nrules;
    struct tl_rule rules[TL_MAX_RULES];
};

/* The table parsed from TETHER_LAYER_CONFIG once. */
TL_HIDDEN const struct tl_out_config *tl_out_cfg(void);
/* Parse "k=v;k=v" (the TETHER_LAYER_CONFIG value) into c. */
TL_HIDDEN void tl_out_parse(struct tl_out_config *c, const char *config);
/* 1 when a connection of `proto` to `sa` goes through the target. */
TL_HIDDEN int tl_out_remote(const struct tl_out_config *c, int proto, const struct sockaddr *sa,
                            socklen_t len);
/* 1 when `name` is resolved by the target. */
TL_HIDDEN int tl_dns_remote(const struct tl_out_config *c, const char *name);

#endif
