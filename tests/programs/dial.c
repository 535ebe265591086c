/* Connects to HOST:PORT (numeric), sends "ping\n", prints the reply line.  Built static
 * (gcc -static) by the tests: no dynamic loader, so LD_PRELOAD cannot reach it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - argv[1]), argv[1]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        perror("connect");
        return 1;
    }
    write(fd, "ping\n", 5);
    char buf[128] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    printf("reply=%s", n > 0 ? buf : "(none)\n");
    return 0;
}
