GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: build test unit e2e bench fuzz dev clean

build:
	$(GO) build -o bin/forknode ./cmd/forknode

# Everything CI runs (installs missing Debian packages first).
test:
	./scripts/test.sh

unit:
	./scripts/test.sh build vet unit

e2e:
	./scripts/test.sh e2e

fuzz:
	./scripts/test.sh fuzz

bench:
	./scripts/bench.sh

dev: build
	./bin/forknode dev

clean:
	rm -rf bin
