// goprobe: what a Go service does on day one, one step per argument, each printing one line.
//
//	dial=HOST:PORT   connect (names go through Go's own resolver), send "ping", print the reply
//	lookup=NAME      net.LookupHost
//	cat=PATH         os.ReadFile
//	stat=PATH        os.Stat (size)
//	ls=PATH          os.ReadDir (names)
//	readlink=PATH    os.Readlink
//	access=PATH      syscall.Access for reading, then for writing
//	write=PATH       os.WriteFile
//	hostname=        os.Hostname
//	exec=PATH ARGS   run another program (the rest of the arguments) and wait for it
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

func main() {
	for i, arg := range os.Args[1:] {
		verb, what, _ := strings.Cut(arg, "=")
		switch verb {
		case "dial":
			conn, err := net.DialTimeout("tcp", what, 5*time.Second)
			if err != nil {
				fmt.Println("dial error:", err)
				continue
			}
			fmt.Fprintf(conn, "ping\n")
			line, err := bufio.NewReader(conn).ReadString('\n')
			fmt.Printf("dial %s: %q %v\n", what, line, err)
			conn.Close()
		case "lookup":
			addrs, err := net.LookupHost(what)
			fmt.Println("lookup", what, addrs, err)
		case "cat":
			data, err := os.ReadFile(what)
			fmt.Printf("cat %s: %q %v\n", what, data, err)
		case "stat":
			st, err := os.Stat(what)
			if err != nil {
				fmt.Println("stat", what, "error:", err)
			} else {
				fmt.Println("stat", what, "size", st.Size())
			}
		case "ls":
			entries, err := os.ReadDir(what)
			names := []string{}
			for _, e := range entries {
				names = append(names, e.Name())
			}
			fmt.Println("ls", what, names, err)
		case "readlink":
			target, err := os.Readlink(what)
			fmt.Println("readlink", what, target, err)
		case "access":
			fmt.Println("access", what, "r:", syscall.Access(what, 4), "w:", syscall.Access(what, 2))
		case "hostname":
			name, err := os.Hostname()
			fmt.Println("hostname", name, err)
		case "write":
			err := os.WriteFile(what, []byte("from the laptop\n"), 0o644)
			fmt.Println("write", what, err)
		case "exec":
			cmd := exec.Command(what, os.Args[i+2:]...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			fmt.Println("exec", what, cmd.Run())
			return
		default:
			fmt.Println("unknown step", arg)
			os.Exit(2)
		}
	}
}
