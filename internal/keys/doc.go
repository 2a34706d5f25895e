// Package keys holds the cluster's key material: one file, made by
// `forknode keygen`, that every node of a cluster shares.
//
// The file carries a CA (an ECDSA P-256 key and self-signed certificate) and
// a 32-byte secret. From it each node derives:
//   - the memberlist gossip key (HMAC of the secret), so gossip is encrypted;
//   - its own TLS certificate, signed by the CA at start with the node's name
//     as CommonName, for mutually authenticated TLS 1.3 on raft, forwarding
//     and transfer connections. A peer without a CA-signed certificate cannot
//     complete a handshake, so it cannot join, vote, read or pull.
//   - the cluster's API bearer token (HMAC of the secret), and the key that
//     signs issued tokens (token.go): scoped (admin or read), expiring,
//     revocable by id through the catalog.
//
// Holding the file is holding the cluster: it is written 0600.
package keys
