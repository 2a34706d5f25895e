// Command forknode is the whole of forknode in one binary:
//
//   - `forknode agent` runs a node (gossip, raft, the HTTP API and the fork
//     executor) on a storage host;
//   - `forknode dev` runs a three-node cluster in one process on 127.0.0.1,
//     with file backends, for trying forknode out (`--demo` forks through
//     every path and verifies each fork byte for byte);
//   - `forknode keygen` / `forknode token` make the cluster key and print the
//     API token derived from it;
//   - every other subcommand is a client of the HTTP API (internal/api):
//     status, volumes, forks.
//
// Errors go to stderr as "forknode: <message>" with exit code 1; usage
// errors exit 2.
package main
