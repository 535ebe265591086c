/* A daemon written like the old ones: fork, setsid, fork, then close every descriptor one
 * by one and dup2 /dev/null over every number up to 1023 (tether's own live at 900 and
 * above).  Once a writer opens the FIFO argv[1] it resolves argv[3] and writes "ok ADDR"
 * or "error" into the FIFO argv[2].
 *
 *     daemon-c GO_FIFO RESULT_FIFO NAME */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char c, addr[64] = "", line[128];
    if (argc < 4) return 2;
    if (fork()) return 0;
    setsid();
    if (fork()) return 0;
    for (int fd = 0; fd < 4096; fd++) close(fd);
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 1024; fd++)
        if (fd != null) dup2(null, fd);
    int go = open(argv[1], O_RDONLY);
    while (go >= 0 && read(go, &c, 1) > 0) {
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(argv[3], "80", &hints, &res) == 0) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, addr, sizeof addr);
        snprintf(line, sizeof line, "ok %s\n", addr);
    } else {
        snprintf(line, sizeof line, "error\n");
    }
    int out = open(argv[2], O_WRONLY);
    if (out >= 0 && write(out, line, strlen(line)) < 0) return 1;
    return 0;
}
