// Package api is the contract of forknode's HTTP API: the JSON request and
// response types that the server (internal/cluster/http.go), the CLI
// (cmd/forknode) and the end-to-end tests share, and a typed Client.
//
// The API lives under /v1 and speaks JSON. Every request carries
// "Authorization: Bearer <token>" (the token is derived from the cluster key:
// `forknode token --key FILE`). Every error, whatever the route, is a JSON
// object {"error": "...", "code": "..."}; Client turns it into an *Error, so
// callers test the code (IsCode) rather than parse messages.
//
// Status codes: 400 invalid input, 401 missing or bad token (on every path,
// so an unauthenticated caller learns nothing about which routes exist),
// 404 unknown volume, fork or route, 405 wrong method, 409 duplicate name,
// conflicting state or no room (code "no_room": a capacity refusal is a
// conflict with the current catalog and may succeed later, and keeping it 4xx
// stops proxies and retry loops from treating it as a server fault), 413 body
// over 64 KiB, 503 no leader reachable or node shutting down.
//
// Reads catch up with the leader before answering, so a change made through
// any node shows at once (a list that could not catch up carries
// "X-Forknode-Stale: true"). GET /v1/forks/{id}?stale=1 skips that for
// pollers: a fork's state only moves forward, so the answer may be late
// but is never wrong. POST /v1/volumes and /v1/forks take ?wait=1.
//
// A node run with --api-tls serves the API over TLS with its certificate
// from the cluster CA; clients verify it with the CA (keys.APIClientTLS) and
// still send the token.
//
// Expiry: "ttl_seconds" on POST /v1/volumes and /v1/forks makes the new
// volume expire that long after the leader commits it (its "expires_at",
// unix nanoseconds); POST /v1/volumes/{id}/ttl {"ttl_seconds": N} sets it
// from now, or clears it with 0. The leader deletes expired ready volumes
// that are neither attached nor read by a fork in flight.
package api
