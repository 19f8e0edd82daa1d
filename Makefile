# Sprout's build, demo, tests and benchmarks. `make demo` and `make test`
# work on a fresh Debian host: they install and start a Docker engine when
# none answers (as root).
GO        ?= go
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/sprout-paas/sprout/cli.Version=$(VERSION)
TEST_TIMEOUT ?= 18m

.PHONY: all build tools example docker testdeps base-image test unit lint demo bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/sprout ./cmd/sprout

tools:
	$(GO) build -o bin/hammer ./tools/hammer
	$(GO) build -o bin/benchd ./tools/benchd
	$(GO) build -o bin/handshakes ./tools/handshakes

# The example's binary is built on the host: images start FROM scratch.
example:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o examples/hello/hello ./examples/hello

docker:
	@scripts/ensure-docker.sh

testdeps:
	@scripts/ensure-test-deps.sh

# debian:bookworm-slim for examples/flask, made with debootstrap when no
# registry answers (about 40 s once; then cached).
base-image: docker
	@scripts/base-image.sh

STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Everything, against the real Docker engine, with the race detector.
test: docker testdeps base-image lint
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Only what needs no engine.
unit:
	$(GO) test -race -count=1 ./bundle/... ./platform/... ./health/... ./proxy/... ./store/... ./runtime/...

demo: docker build tools example
	@scripts/demo.sh

bench: docker build tools example
	$(GO) test -run '^$$' -bench . -benchmem ./proxy/
	@scripts/bench.sh
	@scripts/fleet-bench.sh
	@echo "==> agent upgrade: the longest wait of a new connection during 10 upgrades (max-conn-wait-ms, target <= 50)"
	$(GO) test -run '^$$' -bench BenchmarkUpgrade -benchtime 10x ./e2e/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzUnpack -fuzztime 60s ./bundle/

clean:
	rm -rf bin .demo .bench examples/hello/hello
