package api

import (
	"errors"
	"fmt"
)

// Error codes carried in {"code": ...}. They are stable: clients branch on
// them, messages are for people.
const (
	CodeNotFound         = "not_found"
	CodeExists           = "exists"
	CodeInvalid          = "invalid"
	CodeNoRoom           = "no_room"
	CodeConflict         = "conflict"
	CodeUnauthorized     = "unauthorized"
	CodeForbidden        = "forbidden" // a read-only token asked to change something
	CodeNoLeader         = "no_leader"
	CodeShuttingDown     = "shutting_down"
	CodeTimeout          = "timeout"
	CodeTooLarge         = "too_large"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	// CodeUpgradeRequired: the request needs rules that not every server
	// of the cluster runs yet.
	CodeUpgradeRequired = "upgrade_required"
)

// ErrorBody is the JSON shape of every error response.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error is an API error as the client sees it.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the Code* constants
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%s (HTTP %d)", e.Code, e.Status)
	}
	return e.Message
}

// IsCode reports whether err is (or wraps) an *Error with code.
func IsCode(err error, code string) bool {
	var ae *Error
	return errors.As(err, &ae) && ae.Code == code
}
