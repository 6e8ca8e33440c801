package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// checkSecureACLs: the client agent's token carries its node identity; with
// default deny, a service the management token registers is invisible to
// an anonymous reader, and an anonymous registration is refused.
func checkSecureACLs(t *testing.T, ctx context.Context, s SecureConsul, f secureConsulFiles, tok *capi.ACLToken) {
	b, err := os.ReadFile(f.managementToken())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := secureConsulAPI(s.Client, "localhost", f.caBundle(), strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	q := (&capi.QueryOptions{}).WithContext(ctx)
	got, _, err := cli.ACL().TokenRead(tok.AccessorID, q)
	if err != nil {
		t.Fatalf("read the client agent's token: %v", err)
	}
	if len(got.NodeIdentities) != 1 || *got.NodeIdentities[0] != (capi.ACLNodeIdentity{NodeName: s.Client.Node, Datacenter: s.Datacenter}) {
		t.Errorf("client agent token's node identities = %+v, want %s in %s", got.NodeIdentities, s.Client.Node, s.Datacenter)
	}

	const probe = "secure-probe"
	if err := cli.Agent().ServiceRegisterOpts(&capi.AgentServiceRegistration{Name: probe, Port: 9},
		capi.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("register %s with the management token: %v", probe, err)
	}
	// Seen in the catalog by the management token first, so that the
	// anonymous reader's not seeing it means something.
	deadline := time.Now().Add(30 * time.Second)
	for {
		svcs, _, err := cli.Catalog().Service(probe, "", q)
		if err == nil && len(svcs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not in the catalog: %v", probe, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pemPool(t, f.caBundle())}}}
	base := "https://" + net.JoinHostPort(s.Client.ClientAddrs[0], strconv.Itoa(s.Client.HTTPS))
	code, body := anonRequest(t, anon, http.MethodGet, base+"/v1/catalog/services", "")
	var services map[string][]string
	if err := json.Unmarshal([]byte(body), &services); code != http.StatusOK || err != nil {
		t.Fatalf("anonymous catalog read: %d %s (%v)", code, body, err)
	}
	if _, seen := services[probe]; seen {
		t.Errorf("anonymous catalog read shows %s: %s", probe, body)
	}
	code, body = anonRequest(t, anon, http.MethodPut, base+"/v1/agent/service/register", `{"Name":"anonymous-probe","Port":9}`)
	if code != http.StatusForbidden {
		t.Errorf("anonymous service registration: %d %s, want 403", code, body)
	}
}

func anonRequest(t *testing.T, cl *http.Client, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}
