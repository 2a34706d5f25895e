package fsm

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/hashicorp/raft"
)

// Snapshot format: the magic "FKNSNAP", a version byte, then records, each
// a type byte, a uvarint body length and a JSON body, closed by recEnd.
// Record types are append-only; Restore skips types it does not know, which
// the length prefix makes possible.
const (
	snapMagic   = "FKNSNAP"
	snapVersion = 1

	recEnd    byte = 0
	recHost   byte = 1
	recVolume byte = 2
	recFork   byte = 3
	recResult byte = 4
	// recApplied holds the raft index the snapshot was taken at, so a
	// restored FSM knows how far it has applied (see AppliedIndex).
	recApplied byte = 5
	// recVersion holds the recorded catalog version, when there is one.
	recVersion byte = 6
	// recRevoked is one revoked API token.
	recRevoked byte = 7

	// maxRecord guards Restore against a corrupt length asking for gigabytes.
	maxRecord = 16 << 20
)

// ErrBadSnapshot wraps every Restore failure caused by the snapshot's bytes.
var ErrBadSnapshot = errors.New("bad snapshot")

type snapshot struct {
	// Records are immutable once stored (see state.go), so the snapshot
	// shares them: Snapshot copies pointers only.
	hosts   []*Host
	volumes []*Volume
	forks   []*Fork
	results []*resultRecord
	applied uint64
	version uint32
	revoked []RevokedToken
}

// Snapshot takes the record pointers under the read lock (no struct copies,
// no encoding); Persist does the slow part on raft's goroutine while Apply
// goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.state
	snap := &snapshot{
		hosts:   make([]*Host, 0, len(s.hosts)),
		volumes: make([]*Volume, 0, len(s.volumes)),
		forks:   make([]*Fork, 0, len(s.forks)),
		results: s.rememberedResults(),
		applied: s.applied,
		version: s.version,
		revoked: s.RevokedTokens(), // a copy: the map changes under Apply
	}
	for _, h := range s.hosts {
		snap.hosts = append(snap.hosts, h)
	}
	for _, v := range s.volumes {
		snap.volumes = append(snap.volumes, v)
	}
	for _, fk := range s.forks {
		snap.forks = append(snap.forks, fk)
	}
	return snap, nil
}

func (sn *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := sn.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist fsm snapshot: %w", err)
	}
	return sink.Close()
}

func (sn *snapshot) Release() {}

// write emits records sorted by id, so equal catalogs give equal bytes.
func (sn *snapshot) write(w io.Writer) error {
	sort.Slice(sn.hosts, func(i, j int) bool { return sn.hosts[i].ID < sn.hosts[j].ID })
	sort.Slice(sn.volumes, func(i, j int) bool { return sn.volumes[i].ID < sn.volumes[j].ID })
	sort.Slice(sn.forks, func(i, j int) bool { return sn.forks[i].ID < sn.forks[j].ID })

	bw := bufio.NewWriterSize(w, 256<<10)
	bw.WriteString(snapMagic)
	bw.WriteByte(snapVersion)
	var lenBuf [binary.MaxVarintLen64]byte
	rec := func(t byte, body any) error {
		js, err := json.Marshal(body)
		if err != nil {
			return err
		}
		bw.WriteByte(t)
		bw.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(js)))])
		_, err = bw.Write(js)
		return err
	}
	for _, h := range sn.hosts {
		if err := rec(recHost, h); err != nil {
			return err
		}
	}
	for _, v := range sn.volumes {
		if err := rec(recVolume, v); err != nil {
			return err
		}
	}
	for _, fk := range sn.forks {
		if err := rec(recFork, fk); err != nil {
			return err
		}
	}
	for _, r := range sn.results {
		if err := rec(recResult, r); err != nil {
			return err
		}
	}
	if err := rec(recApplied, appliedRecord{Index: sn.applied}); err != nil {
		return err
	}
	if sn.version != 0 {
		if err := rec(recVersion, versionRecord{Version: sn.version}); err != nil {
			return err
		}
	}
	for _, r := range sn.revoked {
		if err := rec(recRevoked, r); err != nil {
			return err
		}
	}
	bw.WriteByte(recEnd)
	bw.WriteByte(0)
	return bw.Flush()
}

// Restore builds a fresh State from the snapshot and swaps it in; on any
// error the current state is left untouched.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := readSnapshot(rc, f.maxResults)
	if err != nil {
		f.logger.Error("restore failed", "error", err)
		return err
	}
	f.mu.Lock()
	f.state = s
	f.notifyLocked()
	f.mu.Unlock()
	f.logger.Info("restored catalog", "hosts", len(s.hosts), "volumes", len(s.volumes), "forks", len(s.forks))
	return nil
}

func readSnapshot(r io.Reader, maxResults int) (*State, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	head := make([]byte, len(snapMagic)+1)
	if _, err := io.ReadFull(br, head); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	if string(head[:len(snapMagic)]) != snapMagic {
		return nil, fmt.Errorf("%w: not an fsm snapshot (magic %q)", ErrBadSnapshot, head[:len(snapMagic)])
	}
	if v := head[len(snapMagic)]; v != snapVersion {
		return nil, fmt.Errorf("%w: version %d, this node reads %d", ErrBadSnapshot, v, snapVersion)
	}
	s := newState(maxResults)
	var body []byte
	for n := 0; ; n++ {
		t, err := br.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: truncated (%v)", ErrBadSnapshot, n, err)
		}
		size, err := binary.ReadUvarint(br)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: length: %v", ErrBadSnapshot, n, err)
		}
		if t == recEnd {
			return s, nil
		}
		if size > maxRecord {
			return nil, fmt.Errorf("%w: record %d: %d bytes is too large", ErrBadSnapshot, n, size)
		}
		if cap(body) < int(size) {
			body = make([]byte, size)
		}
		body = body[:size]
		if _, err := io.ReadFull(br, body); err != nil {
			return nil, fmt.Errorf("%w: record %d: truncated body: %v", ErrBadSnapshot, n, err)
		}
		if err := s.restoreRecord(t, body); err != nil {
			return nil, fmt.Errorf("%w: record %d (type %d): %v", ErrBadSnapshot, n, t, err)
		}
	}
}

type appliedRecord struct {
	Index uint64 `json:"index"`
}

type versionRecord struct {
	Version uint32 `json:"version"`
}

func (s *State) restoreRecord(t byte, body []byte) error {
	switch t {
	case recApplied:
		var a appliedRecord
		if err := json.Unmarshal(body, &a); err != nil {
			return err
		}
		s.applied = a.Index
	case recVersion:
		var v versionRecord
		if err := json.Unmarshal(body, &v); err != nil {
			return err
		}
		s.version = v.Version
	case recRevoked:
		var r RevokedToken
		if err := json.Unmarshal(body, &r); err != nil {
			return err
		}
		if r.ID == "" {
			return errors.New("revoked token without id")
		}
		s.revoked[r.ID] = r.Expires
	case recHost:
		h := &Host{}
		if err := json.Unmarshal(body, h); err != nil {
			return err
		}
		if _, dup := s.hosts[h.ID]; dup {
			return fmt.Errorf("duplicate host %s", h.ID)
		}
		s.hosts[h.ID] = h
	case recVolume:
		v := &Volume{}
		if err := json.Unmarshal(body, v); err != nil {
			return err
		}
		if _, dup := s.volumes[v.ID]; dup {
			return fmt.Errorf("duplicate volume %s", v.ID)
		}
		if _, dup := s.byName[v.Name]; dup {
			return fmt.Errorf("duplicate volume name %q", v.Name)
		}
		s.addVolume(v)
	case recFork:
		fk := &Fork{}
		if err := json.Unmarshal(body, fk); err != nil {
			return err
		}
		if _, dup := s.forks[fk.ID]; dup {
			return fmt.Errorf("duplicate fork %s", fk.ID)
		}
		s.putFork(fk)
	case recResult:
		r := &resultRecord{}
		if err := json.Unmarshal(body, r); err != nil {
			return err
		}
		if r.RequestID == "" {
			return errors.New("result without request id")
		}
		if _, dup := s.results[r.RequestID]; dup {
			return fmt.Errorf("duplicate request id %q", r.RequestID)
		}
		s.remember(r)
	default:
		// A newer node's record type: skip it, as the format promises.
	}
	return nil
}
