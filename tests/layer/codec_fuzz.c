/* Feeds every truncation and every single-byte corruption of the given messages to the
 * layer's decoders.  Built with AddressSanitizer and UBSan by test_codec_sanitized.py:
 * any out-of-bounds read or undefined behaviour aborts the run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tether_layer_api.h"

static unsigned char *unhex(const char *hex, size_t *len) {
    size_t n = strlen(hex) / 2;
    unsigned char *out = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) sscanf(hex + 2 * i, "%2hhx", &out[i]);
    *len = n;
    return out;
}

static void decode_all(const unsigned char *buf, size_t len) {
    /* exact-size heap copies, so a read past the end is caught */
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    char out[256];
    unsigned long id;
    long session;
    tl_decode_env_reply(copy, len, &id, out, sizeof out);
    tl_decode_hello_ok(copy, len, &session);
    free(copy);
}

int main(int argc, char **argv) {
    long runs = 0;
    for (int a = 1; a < argc; a++) {
        size_t len;
        unsigned char *msg = unhex(argv[a], &len);
        for (size_t cut = 0; cut <= len; cut++, runs++) decode_all(msg, cut);
        for (size_t i = 0; i < len; i++)
            for (int v = 0; v < 256; v += 7, runs++) {
                unsigned char saved = msg[i];
                msg[i] = (unsigned char)v;
                decode_all(msg, len);
                msg[i] = saved;
            }
        free(msg);
    }
    printf("%ld\n", runs);
    return 0;
}
