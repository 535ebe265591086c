/* Waits until a writer opens and closes the FIFO argv[1], then exits.  Built static: a
 * process of the program's tree that tether's layer never loads into. */
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char c;
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 1;
    while (read(fd, &c, 1) > 0) {
    }
    return 0;
}
