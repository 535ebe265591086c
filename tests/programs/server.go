// The seed's backend in miniature: answers GET / with its message and logs each request.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	message := "This is a silly demo from Go"
	if len(os.Args) > 1 {
		message = os.Args[1]
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("Handling request URI=%s", r.URL.RequestURI())
		fmt.Fprintln(w, message)
	})
	log.Printf("Starting server...")
	log.Fatal(http.ListenAndServe(":8080", nil))
}
