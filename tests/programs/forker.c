/* Forks before its first getenv, so parent and child each need their own session. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "ONLY_REMOTE";
    pid_t pid = fork();
    const char *v = getenv(name);
    printf("%s pid=%d %s=%s\n", pid == 0 ? "child" : "parent", (int)getpid(), name,
           v ? v : "<unset>");
    fflush(stdout);
    if (pid == 0) _exit(0);
    int st;
    waitpid(pid, &st, 0);
    return 0;
}
