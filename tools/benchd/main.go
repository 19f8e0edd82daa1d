// Command benchd is the benchmarks' backend: it answers every request with
// the same 100 bytes, as the figures in TARGETS.md were measured.
package main

import (
	"flag"
	"log"
	"net/http"
	"os"
	"strings"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address")
	flag.Parse()
	if port := os.Getenv("PORT"); port != "" {
		*addr = ":" + port // in a container deployed by sprout
	}
	body := []byte(strings.Repeat("x", 99) + "\n")
	log.Fatal(http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})))
}
