package cluster

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/keys"
)

// With APITLS the API answers only TLS, with a certificate the cluster's
// CA verifies, and still wants the token.
func TestClusterAPITLS(t *testing.T) {
	tc := newTestClusterWith(t, []int64{64 * MiB}, nil, func(c *Config) { c.APITLS = true })
	n := tc.nodes[0]
	ctx := context.Background()

	plain, err := api.NewClient("http://"+n.APIAddr(), n.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Status(ctx); err == nil {
		t.Fatal("plain HTTP answered on a TLS API")
	}

	other, _ := keys.Generate()
	for _, c := range []struct {
		name, token string
		ca          []byte
		errText     string
	}{
		{"the cluster's CA", n.APIToken(), tc.key.CAPEM(), ""},
		{"another cluster's CA", n.APIToken(), other.CAPEM(), "certificate"},
		{"no token", "wrong", tc.key.CAPEM(), "bearer token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := keys.APIClientTLS(c.ca)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := api.NewClient("https://"+n.APIAddr(), c.token)
			if err != nil {
				t.Fatal(err)
			}
			cl.SetTransport(&http.Transport{TLSClientConfig: cfg})
			st, err := cl.Status(ctx)
			if c.errText == "" {
				if err != nil || st.Node != n.Name() {
					t.Fatalf("status over TLS: %v %+v", err, st)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.errText) {
				t.Fatalf("err %v, want one about %q", err, c.errText)
			}
		})
	}
}
