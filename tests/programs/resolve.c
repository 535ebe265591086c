/* A static C program's day one: resolve each name given (getaddrinfo: a static glibc reads
 * resolv.conf, hosts and nsswitch.conf itself), then print the first line of a file. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>

int main(int argc, char **argv) {
    char buf[64], line[256];
    for (int i = 1; i + 1 < argc; i++) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
        int r = getaddrinfo(argv[i], NULL, &hints, &res);
        if (r) {
            printf("lookup %s: %s\n", argv[i], gai_strerror(r));
            continue;
        }
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, buf, sizeof buf);
        printf("lookup %s: %s\n", argv[i], buf);
        freeaddrinfo(res);
    }
    if (argc < 2) return 2;
    FILE *f = fopen(argv[argc - 1], "r");
    printf("cat %s: %s", argv[argc - 1], f && fgets(line, sizeof line, f) ? line : "-\n");
    return 0;
}
