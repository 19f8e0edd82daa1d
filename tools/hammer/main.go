// Command hammer sends continuous POST requests to a URL without retrying
// and prints how many failed when it is stopped (SIGINT/SIGTERM) or its
// -duration passes. The demo and the benchmarks use it to count dropped
// requests during swaps.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sprout-paas/sprout/internal/loadgen"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8080/", "URL to send requests to")
	workers := flag.Int("workers", 8, "concurrent connections")
	duration := flag.Duration("duration", 10*time.Minute, "stop after this long at the latest")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r := loadgen.Run(ctx, loadgen.Options{URL: *url, Workers: *workers, Duration: *duration})
	fmt.Println(r)
	for body, n := range r.Bodies {
		fmt.Printf("  %6d answered %q\n", n, body)
	}
	if r.Failed > 0 {
		os.Exit(1)
	}
}
