package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
)

// Login is how the proxy gets its own ACL token on a Consul with ACLs: a
// login to a Kubernetes auth method with the pod's ServiceAccount token
// (docs/identity.md). The token it gets has the service identity of the
// pod's ServiceAccount and lives only in the proxy's memory.
type Login struct {
	// AuthMethod is the Consul auth method; empty: no login (a Consul
	// without ACLs).
	AuthMethod string
	// BearerTokenFile holds the pod's ServiceAccount token, read at each
	// attempt: kubelet rotates it.
	BearerTokenFile string
	// Meta goes on the token, so that a token left by a pod that went
	// without logging out names it (pod=<namespace>/<name>, pod-uid).
	Meta map[string]string
	// Namespace is the Consul Enterprise namespace the auth method is in
	// ("": the client's own): with namespace mirroring one auth method in
	// "default" serves every namespace, its rules placing each token.
	Namespace string
}

// loginRetry bounds the wait between attempts: a login refused for a
// reason someone can fix (a binding rule, the auth method, TokenReview)
// should succeed soon after the fix, not after a long back-off.
const loginRetry = 5 * time.Second

// loginUntil logs in, retrying until it succeeds or ctx ends. Until then
// the proxy binds no listener: the pod's traffic, already redirected to
// it by meshlet-cni, goes nowhere rather than around it. Each refusal is
// logged with Consul's reason, the first at error level, and reported to
// the node agent through rep (nil: not reported), which makes it an Event
// on the pod.
func loginUntil(ctx context.Context, consul *capi.Client, l Login, rep *nodeAgentReporter, log *slog.Logger) (*capi.ACLToken, error) {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		tok, err := login(consul, l)
		if err == nil {
			rep.recovered(contract.ProblemLoginFailed)
			log.Info("logged in to Consul", "auth_method", l.AuthMethod, "accessor_id", tok.AccessorID, "attempts", attempt)
			return tok, nil
		}
		// The cause as people read it, in the log and the pod's Event:
		// Consul's answer, never the pod's token.
		cause := contract.ProblemMessage(fmt.Sprintf("login to Consul auth method %s: %v", l.AuthMethod, err))
		rep.failed(contract.ProblemLoginFailed, cause)
		level := slog.LevelWarn
		if attempt == 1 {
			level = slog.LevelError
		}
		log.Log(ctx, level, "Consul login failed; the proxy serves nothing until it succeeds", "auth_method", l.AuthMethod, "attempt", attempt, "err", cause)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("login to Consul auth method %s: %w (last: %w)", l.AuthMethod, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, loginRetry)
	}
}

func login(consul *capi.Client, l Login) (*capi.ACLToken, error) {
	jwt, err := os.ReadFile(l.BearerTokenFile)
	if err != nil {
		return nil, fmt.Errorf("the pod's ServiceAccount token: %w", err)
	}
	bearer := strings.TrimSpace(string(jwt))
	if bearer == "" {
		return nil, fmt.Errorf("the pod's ServiceAccount token %s is empty", l.BearerTokenFile)
	}
	tok, _, err := consul.ACL().Login(&capi.ACLLoginParams{AuthMethod: l.AuthMethod, BearerToken: bearer, Meta: l.Meta},
		&capi.WriteOptions{Namespace: l.Namespace})
	if err != nil {
		return nil, err
	}
	if tok == nil || tok.SecretID == "" {
		return nil, errors.New("the login's answer holds no token")
	}
	return tok, nil
}

// logout destroys the proxy's token, so that it does not outlive the pod;
// it is sent to the namespace the login went to (ns, "": the client's).
func logout(consul *capi.Client, secret, ns string) error {
	if _, err := consul.ACL().Logout(&capi.WriteOptions{Token: secret, Namespace: ns}); err != nil {
		return fmt.Errorf("logout from Consul: %w", err)
	}
	return nil
}

// podMeta is the login's meta from the sidecar's downward-API environment.
func podMeta() map[string]string {
	m := map[string]string{}
	if ns, name := os.Getenv(contract.EnvPodNamespace), os.Getenv(contract.EnvPodName); ns != "" && name != "" {
		m["pod"] = ns + "/" + name
	}
	if uid := os.Getenv(contract.EnvPodUID); uid != "" {
		m["pod-uid"] = uid
	}
	return m
}
