package fsm

import (
	"reflect"
	"testing"
)

// TestCatalogVersionGate: a command newer than the recorded catalog
// version is refused on every replica alike, and accepted once the leader
// has recorded a version that has it. The version only goes up.
func TestCatalogVersionGate(t *testing.T) {
	// Pretend the no-op arrived in version 2 of the rules.
	since[CmdNoop] = 2
	t.Cleanup(func() { delete(since, CmdNoop) })

	f := New(nil)
	version := func() uint32 {
		var v uint32
		f.View(func(s *State) { v = s.CatalogVersion() })
		return v
	}
	steps := []struct {
		name    string
		typ     CommandType
		cmd     any
		wantErr error
		version uint32
	}{
		{"nothing recorded: version 1", CmdNoop, NoopCmd{Header: hdr()}, ErrUpgradeRequired, 1},
		{"a flagged newer command is refused too", CmdNoop | IgnoreUnknownFlag, NoopCmd{Header: hdr()}, ErrUpgradeRequired, 1},
		{"version 0 is invalid", CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr()}, ErrInvalid, 1},
		{"record 1", CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: 1}, nil, 1},
		{"still refused at 1", CmdNoop, NoopCmd{Header: hdr()}, ErrUpgradeRequired, 1},
		{"record 2", CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: 2}, nil, 2},
		{"accepted at 2", CmdNoop, NoopCmd{Header: hdr()}, nil, 2},
		{"a stale lower version changes nothing", CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: 1}, nil, 2},
		{"older commands still apply", CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost("h1", "r", false, GiB)}, nil, 2},
	}
	for _, st := range steps {
		res := apply(t, f, st.typ, st.cmd)
		if st.wantErr == nil && res.Err != nil || st.wantErr != nil && res.Err == nil {
			t.Fatalf("%s: err %v, want %v", st.name, res.Err, st.wantErr)
		}
		if st.wantErr != nil {
			wantErr(t, res.Err, st.wantErr)
		}
		if v := version(); v != st.version {
			t.Fatalf("%s: catalog version %d, want %d", st.name, v, st.version)
		}
	}
	g := testSnapshotRestore(t, f)
	var v uint32
	g.View(func(s *State) { v = s.CatalogVersion() })
	if v != 2 {
		t.Fatalf("restored catalog version %d, want 2", v)
	}
}

func TestSince(t *testing.T) {
	for _, typ := range []CommandType{CmdUpsertHost, CmdPruneForks, CmdSetCatalogVersion, CmdPruneForks | IgnoreUnknownFlag} {
		if got := typ.Since(); got != 1 || got > CatalogVersion {
			t.Errorf("%v.Since() = %d, want 1", typ, got)
		}
	}
	for typ, v := range since {
		if v > CatalogVersion {
			t.Errorf("%v needs version %d, above this build's %d", typ, v, CatalogVersion)
		}
	}
}

// TestRevokeToken: revocation needs catalog version 2; a revocation lasts
// until the token's own expiry and is dropped once a later command's time
// has passed it.
func TestRevokeToken(t *testing.T) {
	f := New(nil)
	at := func(sec int64) Header { h := hdr(); h.Time = sec * 1e9; return h }
	withToken := func(h Header, id string) Header { h.SetTokenID(id); return h }
	revoked := func() []RevokedToken {
		var out []RevokedToken
		f.View(func(s *State) { out = s.RevokedTokens() })
		return out
	}
	steps := []struct {
		name    string
		typ     CommandType
		cmd     any
		wantErr error
		want    []RevokedToken
	}{
		{"refused at version 1", CmdRevokeToken, RevokeTokenCmd{Header: at(100), ID: "tok_a"}, ErrUpgradeRequired, []RevokedToken{}},
		{"version 2", CmdSetCatalogVersion, SetCatalogVersionCmd{Header: at(100), Version: 2}, nil, []RevokedToken{}},
		{"no id", CmdRevokeToken, RevokeTokenCmd{Header: at(100)}, ErrInvalid, []RevokedToken{}},
		{"negative expiry", CmdRevokeToken, RevokeTokenCmd{Header: at(100), ID: "x", Expires: -1}, ErrInvalid, []RevokedToken{}},
		{"for ever", CmdRevokeToken, RevokeTokenCmd{Header: at(100), ID: "tok_a"}, nil, []RevokedToken{{ID: "tok_a"}}},
		{"until 200", CmdRevokeToken, RevokeTokenCmd{Header: at(110), ID: "tok_b", Expires: 200}, nil,
			[]RevokedToken{{ID: "tok_a"}, {ID: "tok_b", Expires: 200}}},
		{"already expired: nothing to keep", CmdRevokeToken, RevokeTokenCmd{Header: at(150), ID: "tok_c", Expires: 120}, nil,
			[]RevokedToken{{ID: "tok_a"}, {ID: "tok_b", Expires: 200}}},
		{"the cluster token", CmdRevokeToken, RevokeTokenCmd{Header: at(190), ID: "cluster"}, nil,
			[]RevokedToken{{ID: "cluster"}, {ID: "tok_a"}, {ID: "tok_b", Expires: 200}}},
		{"tok_b expired by then: dropped", CmdRevokeToken, RevokeTokenCmd{Header: at(200), ID: "tok_d", Expires: 900}, nil,
			[]RevokedToken{{ID: "cluster"}, {ID: "tok_a"}, {ID: "tok_d", Expires: 900}}},
		// A command that came with a revoked token (through a node whose
		// catalog lagged) is refused at apply; another token's is not.
		{"a revoked token's command", CmdUpsertHost, UpsertHostCmd{Header: withToken(at(300), "tok_a"), Host: mkHost("h1", "r", false, GiB)},
			ErrTokenRevoked, []RevokedToken{{ID: "cluster"}, {ID: "tok_a"}, {ID: "tok_d", Expires: 900}}},
		{"another token's command", CmdUpsertHost, UpsertHostCmd{Header: withToken(at(300), "tok_z"), Host: mkHost("h1", "r", false, GiB)},
			nil, []RevokedToken{{ID: "cluster"}, {ID: "tok_a"}, {ID: "tok_d", Expires: 900}}},
	}
	for _, st := range steps {
		res := apply(t, f, st.typ, st.cmd)
		if st.wantErr == nil && res.Err != nil {
			t.Fatalf("%s: %v", st.name, res.Err)
		}
		if st.wantErr != nil {
			wantErr(t, res.Err, st.wantErr)
		}
		if got := revoked(); !reflect.DeepEqual(got, st.want) {
			t.Fatalf("%s: revoked %v, want %v", st.name, got, st.want)
		}
	}
	testSnapshotRestore(t, f)
}
