package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	conn, err := net.DialTimeout("tcp", os.Args[1], 5*time.Second)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Fprintf(conn, "ping\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	fmt.Printf("reply=%q err=%v\n", line, err)
	if len(os.Args) > 2 {
		addrs, err := net.LookupHost(os.Args[2])
		fmt.Println("lookup", os.Args[2], addrs, err)
	}
}
