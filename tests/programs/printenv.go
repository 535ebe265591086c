package main

import (
	"fmt"
	"os"
)

func main() {
	for _, name := range os.Args[1:] {
		v, ok := os.LookupEnv(name)
		if !ok {
			v = "<unset>"
		}
		fmt.Printf("%s=%s\n", name, v)
	}
}
