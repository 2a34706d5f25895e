// Package bench holds the benchmark tooling that `make bench`
// (scripts/bench.sh) drives: the shared PostgreSQL image generator
// (mkpgimage.sh), the network-namespace stream benchmark (stream.sh), the
// fork-latency benchmark (forklat.sh) and two small programs:
//
//   - cmd/imgstat: size, allocated bytes and all-zero 1 MiB blocks of an image;
//   - cmd/streambench: internal/transfer between real processes (serve/pull).
//
// Nothing here is imported by the product; the package exists so that
// `go vet ./test/e2e/bench/...` covers the programs.
package bench
