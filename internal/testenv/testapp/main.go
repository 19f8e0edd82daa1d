// Command testapp is the app Sprout's integration tests deploy. Its
// behaviour is set through environment variables, so that one binary can
// boot slowly, crash, fail its health check, answer slowly or log each
// request (APP_LOG_REQUESTS); a POST to
// /healthz/fail makes a running one fail its health check from then on.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if slices.Contains(os.Args[1:], "-check") {
		// For a Dockerfile HEALTHCHECK: exit 0 when /healthz answers 200.
		resp, err := http.Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv("APP_CRASH") != "" {
		log.Print("crashing on purpose (APP_CRASH is set)")
		os.Exit(3)
	}
	if d, err := time.ParseDuration(os.Getenv("APP_BOOT_DELAY")); err == nil {
		log.Printf("booting slowly: %s", d)
		time.Sleep(d)
	}
	version := os.Getenv("SPROUT_VERSION")
	healthStatus, _ := strconv.Atoi(os.Getenv("APP_HEALTH"))
	if healthStatus == 0 {
		healthStatus = 200
	}
	// APP_HEALTHY_ONLY_FIRST names a file on a volume the instances
	// share: the first instance to create it is healthy, the others are
	// not (a version that breaks on its second instance). With
	// APP_HEALTHY_FIRST_N=n, the first n are (files <name>.1 to .n): a
	// version that breaks on the later hosts of a fleet.
	if mark := os.Getenv("APP_HEALTHY_ONLY_FIRST"); mark != "" {
		slots := []string{mark}
		if n, _ := strconv.Atoi(os.Getenv("APP_HEALTHY_FIRST_N")); n > 0 {
			slots = nil
			for i := 1; i <= n; i++ {
				slots = append(slots, fmt.Sprintf("%s.%d", mark, i))
			}
		}
		healthStatus = http.StatusInternalServerError
		for _, slot := range slots {
			if f, err := os.OpenFile(slot, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
				healthStatus = 200
				break
			}
		}
		if healthStatus != 200 {
			log.Printf("not among the first %d instances: unhealthy", len(slots))
		}
	}
	mux := http.NewServeMux()
	// APP_FAIL_EVERY=n makes every nth answer to / a 500: a version
	// that fails a share of its requests while passing its checks.
	failEvery, _ := strconv.ParseInt(os.Getenv("APP_FAIL_EVERY"), 10, 64)
	var served atomic.Int64
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if n := served.Add(1); failEvery > 0 && n%failEvery == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
		fmt.Fprintf(w, "%s %s", version, os.Getenv("GREETING"))
	})
	// A POST to /healthz/fail makes /healthz answer 500 from then on, as
	// an app gone bad, until the process restarts.
	var failing atomic.Bool
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(healthStatus)
	})
	mux.HandleFunc("POST /healthz/fail", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(true)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getenv(r.URL.Query().Get("k")))
	})
	// For volume and Dockerrun tests: the arguments the app got, and
	// files it reads and writes.
	mux.HandleFunc("/args", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, strings.Join(os.Args, " "))
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		if r.Method == http.MethodPost {
			b, _ := io.ReadAll(r.Body)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
			return
		}
		b, err := os.ReadFile(p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(w, "%s slow", version)
	})
	var handler http.Handler = mux
	if dir := os.Getenv("APP_LOG_DIR"); dir != "" {
		// One line per request in a log file, as apps that write their
		// own logs (Dockerrun Logging) do.
		f, err := os.OpenFile(filepath.Join(dir, "requests.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(f, "%s %s %s\n", version, r.Method, r.URL.Path)
			mux.ServeHTTP(w, r)
		})
	}
	if os.Getenv("APP_LOG_REQUESTS") != "" {
		// One line per request on stderr, for tests that follow logs.
		next := handler
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			log.Printf("%s %s %s", version, r.Method, r.URL.Path)
			next.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{Addr: ":" + port, Handler: handler}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		log.Print("SIGTERM: draining")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	log.Printf("%s listening on :%s", version, port)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
