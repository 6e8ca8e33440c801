package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
)

// envoyAdmin stands in for Envoy's admin listener, which cannot run here:
// the two calls the login sidecar makes, the xDS connection's stat and
// /quitquitquit.
type envoyAdmin struct {
	connected atomic.Bool
	quits     atomic.Int32
	addr      string
}

func newEnvoyAdmin(t *testing.T) *envoyAdmin {
	a := &envoyAdmin{}
	a.connected.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/stats" && r.URL.Query().Get("filter") == `^control_plane\.connected_state$`:
			v := 0
			if a.connected.Load() {
				v = 1
			}
			fmt.Fprintf(w, "control_plane.connected_state: %d\n", v)
		case r.URL.Path == "/quitquitquit" && r.Method == http.MethodPost:
			a.quits.Add(1)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	a.addr = strings.TrimPrefix(srv.URL, "http://")
	return a
}

// TestEnvoyLogin: on a Consul with ACLs, `meshlet-proxy login` logs in with
// the pod's ServiceAccount token and writes Envoy's ADS part with that
// token, mode 0400; run again (its container restarted) it keeps that
// token; when Consul no longer knows the token and Envoy is disconnected,
// it logs in again, rewrites the file and restarts Envoy; on SIGTERM it
// logs out, leaving no token of the auth method.
func TestEnvoyLogin(t *testing.T) {
	mgmt := newUUID(t)
	cl, port := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{management: mgmt})
	jwt := authMethod(t, cl)
	for k, v := range map[string]string{contract.EnvPodNamespace: "default", contract.EnvPodName: "web-1", contract.EnvPodUID: "web-1-uid"} {
		t.Setenv(k, v)
	}
	admin := newEnvoyAdmin(t)
	file := filepath.Join(t.TempDir(), "envoy-ads.json")
	args := []string{"-http-addr", "127.0.0.1:" + strconv.Itoa(port), "-acl-auth-method", testAuthMethod,
		"-acl-bearer-token-file", jwt.tokenFile(t, "web"), "-envoy-ads-file", file,
		"-envoy-admin-addr", admin.addr, "-watch-interval", "50ms", "-node-agent-addr", ""}
	start := func() (logs *syncBuffer, stop func() error) {
		logs = &syncBuffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- EnvoyLoginMain(ctx, args, logs) }()
		return logs, func() error {
			cancel()
			select {
			case err := <-done:
				return err
			case <-time.After(20 * time.Second):
				return errors.New("did not stop")
			}
		}
	}
	waitToken := func(not string) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if s, err := readADSToken(file); err == nil && s != not {
				return s
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no new token in %s", file)
		return ""
	}

	a, stopA := start()
	first := waitToken("")
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o400 {
		t.Errorf("token file mode %v, want 0400", fi.Mode().Perm())
	}
	own, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:" + strconv.Itoa(port), Token: first})
	if err != nil {
		t.Fatal(err)
	}
	self, _, err := own.ACL().TokenReadSelf(nil)
	if err != nil {
		t.Fatalf("the file's token: %v", err)
	}
	if len(self.ServiceIdentities) != 1 || self.ServiceIdentities[0].ServiceName != "web" || !strings.Contains(self.Description, `"pod":"default/web-1"`) {
		t.Errorf("the file's token: identities %+v, description %q; want web's, naming the pod", self.ServiceIdentities, self.Description)
	}
	b, _ := os.ReadFile(file)
	if want, _ := contract.EnvoyADSBootstrap(first); !bytes.Equal(b, want) {
		t.Errorf("the file holds\n%s\nwant\n%s", b, want)
	}
	if admin.quits.Load() != 0 {
		t.Error("Envoy was asked to restart after the first login, before it could have started")
	}
	if err := stopA(); err != nil {
		t.Fatalf("the login sidecar stopped with %v", err)
	}
	if toks := loginTokens(t, cl); len(toks) != 0 {
		t.Fatalf("%d tokens left after SIGTERM, want none\n%s", len(toks), a.String())
	}

	// The file's token is gone (logged out): the next run logs in again
	// and restarts the Envoy that may run with the old one.
	b2, stopB := start()
	second := waitToken(first)
	waitQuits(t, admin, 1)
	if err := stopB(); err != nil {
		t.Fatalf("the login sidecar stopped with %v", err)
	}

	// A crashed container leaves the file and a live token: the next run
	// keeps them rather than log in again (Envoy runs with that token, and
	// the reaper would delete it as superseded by a newer login).
	anon, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:" + strconv.Itoa(port)})
	if err != nil {
		t.Fatal(err)
	}
	crashed, err := login(anon, Login{AuthMethod: testAuthMethod, BearerTokenFile: jwt.tokenFile(t, "web"), Meta: podMeta()})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeADSFile(file, crashed.SecretID); err != nil {
		t.Fatal(err)
	}
	c, stopC := start()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.String(), "keeping the token of a previous run") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s, _ := readADSToken(file); s != crashed.SecretID || len(loginTokens(t, cl)) != 1 || admin.quits.Load() != 1 {
		t.Fatalf("the run after a crash changed the token, logged in again or restarted Envoy (%d tokens, %d restarts)\n%s",
			len(loginTokens(t, cl)), admin.quits.Load(), c.String())
	}

	// Revoked while Envoy runs: Envoy loses its stream; the sidecar logs
	// in again and restarts Envoy. A connected Envoy is not asked about.
	if _, err := cl.ACL().TokenDelete(crashed.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if s, _ := readADSToken(file); s != crashed.SecretID {
		t.Fatal("the token was replaced while Envoy was connected")
	}
	admin.connected.Store(false)
	third := waitToken(crashed.SecretID)
	admin.connected.Store(true)
	waitQuits(t, admin, 2)
	if err := stopC(); err != nil {
		t.Fatalf("the login sidecar stopped with %v", err)
	}
	for _, l := range []*syncBuffer{a, b2, c} {
		for _, s := range []string{first, second, crashed.SecretID, third} {
			if strings.Contains(l.String(), s) {
				t.Fatal("the login sidecar logged a token's secret")
			}
		}
	}
	if toks := loginTokens(t, cl); len(toks) != 0 {
		t.Errorf("%d tokens of the auth method left after the runs stopped, want none\n%s", len(toks), c.String())
	}
}

func waitQuits(t *testing.T, a *envoyAdmin, n int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for a.quits.Load() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := a.quits.Load(); got != n {
		t.Fatalf("Envoy asked to restart %d times, want %d", got, n)
	}
}

// TestConnectedState reads Envoy's stat; an answer without it counts as
// connected (nothing to act on).
func TestConnectedState(t *testing.T) {
	for in, want := range map[string]bool{
		"control_plane.connected_state: 1\n": true,
		"control_plane.connected_state: 0\n": false,
		"control_plane.connected_state: 0":   false,
		"other: 0\n":                         true,
		"":                                   true,
	} {
		if got := connectedState(in); got != want {
			t.Errorf("connectedState(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestWaitFile: `meshlet-proxy wait -file` (the login sidecar's startup
// probe) passes once the file holds something, and fails naming it when it
// is missing or empty.
func TestWaitFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "envoy-ads.json")
	var out bytes.Buffer
	if err := WaitMain(context.Background(), []string{"-file", f, "-timeout", "100ms"}, &out); err == nil || !strings.Contains(err.Error(), f) {
		t.Errorf("missing file: %v, want an error naming it", err)
	}
	if err := os.WriteFile(f, nil, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := WaitMain(context.Background(), []string{"-file", f, "-timeout", "100ms"}, &out); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty file: %v, want an error saying so", err)
	}
	if err := writeADSFile(f, "tok"); err != nil {
		t.Fatal(err)
	}
	if err := WaitMain(context.Background(), []string{"-file", f, "-timeout", "100ms"}, &out); err != nil {
		t.Errorf("written file: %v", err)
	}
}

// TestEnvoyLoginWaitsForConsul: restarted while Consul does not answer,
// the login sidecar keeps asking about the token it wrote before rather
// than log in again (which would leave that token behind), and leaves the
// file alone.
func TestEnvoyLoginWaitsForConsul(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	file := filepath.Join(t.TempDir(), "envoy-ads.json")
	if err := writeADSFile(file, "6a1b9c2e-0d3f-4e5a-8b7c-9d0e1f2a3b4c"); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(file)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	var logs bytes.Buffer
	err = EnvoyLoginMain(ctx, []string{"-http-addr", closed, "-acl-auth-method", "m", "-acl-bearer-token-file", file,
		"-envoy-ads-file", file, "-node-agent-addr", ""}, &logs)
	if err == nil || !strings.Contains(err.Error(), "the token of a previous run") {
		t.Fatalf("err %v, want it still asking about the previous run's token\n%s", err, logs.String())
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(before, after) {
		t.Error("the token file changed while Consul did not answer")
	}
	if !aclNotFound(errors.New(`Unexpected response code: 403 (ACL not found)`)) || aclNotFound(errors.New("connection refused")) || aclNotFound(nil) {
		t.Error("aclNotFound misreads Consul's answers")
	}
}
