package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrUnknownCommand: the entry's type byte names no command this node knows.
// Decode wraps both it and ErrInvalid.
var ErrUnknownCommand = errors.New("unknown command type")

// commander is implemented by every command through its embedded Header.
type commander interface{ header() *Header }

func (h *Header) header() *Header { return h }

// newCommand returns a zero command for t (flag bit cleared), or nil.
func newCommand(t CommandType) commander {
	switch t {
	case CmdUpsertHost:
		return &UpsertHostCmd{}
	case CmdRemoveHost:
		return &RemoveHostCmd{}
	case CmdCreateVolume:
		return &CreateVolumeCmd{}
	case CmdSetVolumeState:
		return &SetVolumeStateCmd{}
	case CmdDeleteVolume:
		return &DeleteVolumeCmd{}
	case CmdCreateFork:
		return &CreateForkCmd{}
	case CmdForkProgress:
		return &ForkProgressCmd{}
	case CmdFinishFork:
		return &FinishForkCmd{}
	case CmdSetHostAlive:
		return &SetHostAliveCmd{}
	case CmdNoop:
		return &NoopCmd{}
	case CmdSetVolumeTTL:
		return &SetVolumeTTLCmd{}
	case CmdPruneForks:
		return &PruneForksCmd{}
	case CmdSetCatalogVersion:
		return &SetCatalogVersionCmd{}
	case CmdRevokeToken:
		return &RevokeTokenCmd{}
	}
	return nil
}

// String names a command type for logs.
func (t CommandType) String() string {
	names := map[CommandType]string{
		CmdUpsertHost: "UpsertHost", CmdRemoveHost: "RemoveHost", CmdCreateVolume: "CreateVolume",
		CmdSetVolumeState: "SetVolumeState", CmdDeleteVolume: "DeleteVolume", CmdCreateFork: "CreateFork",
		CmdForkProgress: "ForkProgress", CmdFinishFork: "FinishFork", CmdSetHostAlive: "SetHostAlive",
		CmdNoop: "Noop", CmdSetVolumeTTL: "SetVolumeTTL", CmdPruneForks: "PruneForks",
		CmdSetCatalogVersion: "SetCatalogVersion", CmdRevokeToken: "RevokeToken",
	}
	flag := ""
	if t&IgnoreUnknownFlag != 0 {
		flag = "|IgnoreUnknown"
	}
	if n, ok := names[t&^IgnoreUnknownFlag]; ok {
		return n + flag
	}
	return fmt.Sprintf("CommandType(%d)%s", uint8(t&^IgnoreUnknownFlag), flag)
}

// Encode builds a log entry: one type byte, then the JSON body.
func Encode(t CommandType, body any) ([]byte, error) {
	js, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %v: %w", t, err)
	}
	out := make([]byte, 0, len(js)+1)
	out = append(out, byte(t))
	return append(out, js...), nil
}

// Decode splits a log entry into its type (IgnoreUnknownFlag cleared) and a
// pointer to the decoded command (*UpsertHostCmd, …). An unknown type returns
// an error wrapping ErrUnknownCommand and ErrInvalid; a malformed body an
// error wrapping ErrInvalid.
func Decode(data []byte) (CommandType, any, error) {
	if len(data) == 0 {
		return 0, nil, fmt.Errorf("%w: empty log entry", ErrInvalid)
	}
	t := CommandType(data[0]) &^ IgnoreUnknownFlag
	cmd := newCommand(t)
	if cmd == nil {
		return t, nil, fmt.Errorf("%w: %w %d", ErrInvalid, ErrUnknownCommand, data[0])
	}
	if err := json.Unmarshal(data[1:], cmd); err != nil {
		return t, nil, fmt.Errorf("%w: %v body: %v", ErrInvalid, t, err)
	}
	return t, cmd, nil
}
