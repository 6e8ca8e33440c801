package dataplane

import (
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// TestLoginFailureReported: on a Consul with ACLs (default deny), a login
// the auth method refuses, for want of a binding rule matching the pod's
// ServiceAccount or of the auth method itself, is reported to the node
// agent (a stand-in on loopback: the proxy is its client) once, naming the
// pod and Consul's reason and never the pod's token; meanwhile the proxy
// keeps retrying and serves nothing.
func TestLoginFailureReported(t *testing.T) {
	mgmt := newUUID(t)
	cl, port := consulAgentsIn(t, nil, "127.0.0.1", consulOpts{management: mgmt})
	jwt := authMethod(t, cl)
	for k, v := range map[string]string{contract.EnvPodNamespace: "shop", contract.EnvPodName: "web-1", contract.EnvPodUID: "web-1-uid"} {
		t.Setenv(k, v)
	}
	for _, c := range []struct {
		name, authMethod, serviceAccount string
		cause                            string // Consul's, in the report
	}{
		{"no binding rule", testAuthMethod, "default", "403 (rpc error making call: Permission denied)"},
		{"no auth method", "meshlet-missing", "web", `403 (rpc error making call: ACL not found: auth method "meshlet-missing" not found)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeNodeAgent{}
			nodeAgent := newFakeNodeAgent(t, f)
			tokenFile := jwt.tokenFile(t, c.serviceAccount)
			token, err := os.ReadFile(tokenFile)
			if err != nil {
				t.Fatal(err)
			}
			metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
			logs, done, _ := runProxy(t, []string{"-proxy-id", "shop_web-1-sidecar-proxy", "-http-addr", "127.0.0.1:" + strconv.Itoa(port),
				"-metrics-addr", metrics, "-acl-auth-method", c.authMethod, "-acl-bearer-token-file", tokenFile,
				"-node-agent-addr", nodeAgent})
			// Four attempts: three failures after the first, each a
			// chance to report again.
			eventually(t, 30*time.Second, "four login attempts", func() error {
				select {
				case err := <-done:
					t.Fatalf("the proxy stopped: %v\n%s", err, logs.String())
				default:
				}
				if !strings.Contains(logs.String(), `"attempt":4`) {
					return os.ErrNotExist
				}
				return nil
			})
			reports := f.reports(t)
			if len(reports) != 1 {
				t.Fatalf("%d reports after four failed logins, want 1: %+v\n%s", len(reports), reports, logs.String())
			}
			got := reports[0]
			if got.Namespace != "shop" || got.Pod != "web-1" || got.UID != "web-1-uid" || got.Reason != contract.ProblemLoginFailed {
				t.Errorf("report %+v: want pod shop/web-1, UID web-1-uid, reason %s", got, contract.ProblemLoginFailed)
			}
			if !strings.Contains(got.Message, "auth method "+c.authMethod) || !strings.Contains(got.Message, c.cause) {
				t.Errorf("report's message %q: want the auth method %s and Consul's %q", got.Message, c.authMethod, c.cause)
			}
			jwtText := strings.TrimSpace(string(token))
			for _, secret := range []string{jwtText, strings.Split(jwtText, ".")[1], "eyJ"} {
				if strings.Contains(f.raw(), secret) || strings.Contains(logs.String(), secret) {
					t.Errorf("the pod's token (%.12s…) was reported or logged:\n%s\n%s", secret, f.raw(), logs.String())
				}
			}
			if !strings.Contains(logs.String(), "reported the problem to the node agent") {
				t.Errorf("the proxy does not log the report:\n%s", logs.String())
			}
			// Still unserved, still retrying.
			if resp, err := http.Get("http://" + metrics + "/ready"); err == nil {
				resp.Body.Close()
				t.Errorf("the proxy answers /ready (%s) without a login", resp.Status)
			}
			select {
			case err := <-done:
				t.Fatalf("the proxy stopped: %v", err)
			default:
			}
		})
	}
}
