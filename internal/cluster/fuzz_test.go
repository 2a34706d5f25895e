package cluster

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/forknode/forknode/internal/api"
)

// FuzzAPIRequest sends arbitrary bodies to the two write routes of a real
// handler over an in-memory catalog: the handler must never panic, and must
// always answer JSON with a 2xx or 4xx status (bad input is the caller's
// fault, never a 5xx).
func FuzzAPIRequest(f *testing.F) {
	for _, seed := range []struct {
		route uint8
		body  string
	}{
		{0, `{"source":"db","name":"pr-1"}`},
		{0, `{"source":"shop","name":"pr-2","via":"stream","host":"h2"}`},
		{0, `{"source":"shop:vol_db","name":"x","region":"r2","app":"a"}`},
		{0, `{"source":"db","name":"db"}`},
		{1, `{"name":"vol","size":4096}`},
		{1, `{"name":"big","size":9007199254740992,"host":"h2"}`},
		{1, `{"name":"a","size":4096,"region":"r2","app":"shop"}`},
		{1, `{"name":"a","size":1e3}`},
		{0, `{"source":"\u0000","name":"\ud800"}`},
		{1, `[]`},
		{1, `{"name":`},
		{0, ``},
		{0, `null`},
		{1, `{"name":"a","size":4096}{"x":1}`},
	} {
		f.Add(seed.route, []byte(seed.body))
	}
	handler := newEnv(f).h1
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := "/v1/forks"
		if route%2 == 1 {
			path = "/v1/volumes"
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code >= 500 || rec.Code < 200 || (rec.Code >= 300 && rec.Code < 400) {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body.Bytes())
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("non-JSON response %q for %q", rec.Body.Bytes(), body)
		}
		if rec.Code >= 400 {
			var eb api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error == "" || eb.Code == "" {
				t.Fatalf("error response without message/code: %s", rec.Body.Bytes())
			}
		}
	})
}
