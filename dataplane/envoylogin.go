package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/logs"
)

// Data plane envoy's login sidecar, `meshlet-proxy login`: a native
// sidecar placed before Envoy. It logs in to Consul with the pod's
// ServiceAccount token, writes the token into the part of Envoy's
// bootstrap Envoy reads with -c (contract.EnvoyADSBootstrap), on a memory
// volume only it and Envoy mount, and stays to log out when the pod goes
// (native sidecars stop after the containers started after them, so
// Envoy is gone by then). docs/identity.md weighs this against the other
// places a login could happen.

// EnvoyLoginMain is `meshlet-proxy login`.
func EnvoyLoginMain(ctx context.Context, args []string, stderr io.Writer) error {
	var consul consulclient.Flags
	var lf logs.Flags
	var l envoyLogin
	fs := flag.NewFlagSet("meshlet proxy login", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&l.login.AuthMethod, "acl-auth-method", "", "the Consul Kubernetes auth method to log in to with the pod's ServiceAccount token")
	fs.StringVar(&l.login.BearerTokenFile, "acl-bearer-token-file", contract.ServiceAccountTokenFile, "the pod's ServiceAccount token")
	fs.StringVar(&l.login.Namespace, "acl-auth-method-namespace", "", "Consul Enterprise: the namespace of -acl-auth-method, where the login and logout go; empty: none, as Consul without Enterprise namespaces requires")
	fs.StringVar(&l.file, "envoy-ads-file", contract.EnvoyADSFile, "where to write Envoy's ADS gRPC service with the token, for Envoy's -c")
	fs.StringVar(&l.envoyAdmin, "envoy-admin-addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(contract.EnvoyAdminPort)), "Envoy's admin listener: its xDS connection is watched there, and Envoy is restarted there after a new login")
	fs.DurationVar(&l.interval, "watch-interval", 10*time.Second, "how often Envoy's xDS connection is looked at; the token is checked with Consul only while Envoy is disconnected")
	var nodeAgent string
	if ip := os.Getenv(contract.EnvHostIP); ip != "" {
		nodeAgent = net.JoinHostPort(ip, strconv.Itoa(contract.NodeAgentHTTPPort))
	}
	fs.StringVar(&nodeAgent, "node-agent-addr", nodeAgent, "host:port of the node's meshlet node agent, told of a failed login so that it records an Event on the pod; empty: not told")
	consul.Register(fs, "(not used: the login gives the token)")
	lf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case l.login.AuthMethod == "":
		return errors.New("-acl-auth-method is empty: give the Consul auth method to log in to")
	case l.login.BearerTokenFile == "":
		return errors.New("-acl-bearer-token-file is empty: give the pod's ServiceAccount token")
	case consul.TokenFile != "":
		return fmt.Errorf("-token-file %s: the login gives the token; give none", consul.TokenFile)
	case !filepath.IsAbs(l.file):
		return fmt.Errorf("-envoy-ads-file %q: expected an absolute path", l.file)
	case l.interval <= 0:
		return fmt.Errorf("-watch-interval %s: expected a duration > 0", l.interval)
	}
	if _, _, err := net.SplitHostPort(l.envoyAdmin); err != nil {
		return fmt.Errorf("-envoy-admin-addr %q: expected host:port", l.envoyAdmin)
	}
	if err := consul.Validate(); err != nil {
		return err
	}
	log, err := lf.Logger(stderr)
	if err != nil {
		return err
	}
	l.consul, l.log = consul, log
	l.login.Meta = podMeta()
	l.rep = newNodeAgentReporter(nodeAgent, log)
	return l.run(ctx)
}

type envoyLogin struct {
	consul     consulclient.Flags // without a token
	login      Login
	file       string
	envoyAdmin string
	interval   time.Duration
	rep        *nodeAgentReporter
	log        *slog.Logger
}

// consulTimeout bounds each of the login sidecar's Consul calls: none is
// a blocking query.
const consulTimeout = 10 * time.Second

func (l *envoyLogin) client(token string) (*capi.Client, error) {
	f := l.consul
	f.Token = token
	return f.Client(consulTimeout)
}

// run logs in (or keeps the token a previous run of this container wrote,
// while Consul still knows it), then watches until ctx ends and logs out.
func (l *envoyLogin) run(ctx context.Context) error {
	tok, err := l.start(ctx)
	if err != nil {
		return err
	}
	t := time.NewTicker(l.interval)
	defer t.Stop()
	disconnected := 0
	for {
		select {
		case <-ctx.Done():
			l.logout(tok)
			return nil
		case <-t.C:
		}
		if l.envoyConnected() {
			disconnected = 0
			continue
		}
		// Twice in a row: a stream being re-established is no reason to
		// ask Consul.
		if disconnected++; disconnected < 2 {
			continue
		}
		if !l.revoked(tok) {
			continue
		}
		l.log.Warn("Consul no longer knows the login's token (revoked or reaped); logging in again and restarting Envoy", "accessor_id", tok.AccessorID)
		if tok, err = l.newLogin(ctx, true); err != nil {
			return err
		}
		disconnected = 0
	}
}

// start keeps the token in the file when Consul still knows it (this
// container restarted; Envoy runs with that token), else logs in.
func (l *envoyLogin) start(ctx context.Context) (*capi.ACLToken, error) {
	secret, err := readADSToken(l.file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return l.newLogin(ctx, false)
	case err != nil:
		l.log.Warn("the token file of a previous run is unreadable; logging in again", "file", l.file, "err", err)
		return l.newLogin(ctx, true)
	}
	c, err := l.client(secret)
	if err != nil {
		return nil, err
	}
	// Until Consul says whether it knows the token: a new login while it
	// is only unreachable would leave Envoy's token behind.
	wait := 100 * time.Millisecond
	for {
		tok, _, err := c.ACL().TokenReadSelf(nil)
		switch {
		case err == nil && tok != nil:
			l.log.Info("keeping the token of a previous run, which Consul still knows", "accessor_id", tok.AccessorID)
			tok.SecretID = secret
			return tok, nil
		case aclNotFound(err):
			l.log.Info("the token of a previous run is gone; logging in again")
			return l.newLogin(ctx, true)
		}
		l.log.Warn("cannot ask Consul about the token of a previous run yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the token of a previous run: %w (last: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, loginRetry)
	}
}

// aclNotFound: Consul answered that it does not know the token.
func aclNotFound(err error) bool { return err != nil && strings.Contains(err.Error(), "ACL not found") }

// newLogin logs in until it succeeds, writes the file and, when Envoy may
// be running with an older token, makes it restart with the new one.
func (l *envoyLogin) newLogin(ctx context.Context, envoyMayRun bool) (*capi.ACLToken, error) {
	c, err := l.client("")
	if err != nil {
		return nil, err
	}
	tok, err := loginUntil(ctx, c, l.login, l.rep, l.log)
	if err != nil {
		return nil, err
	}
	if err := writeADSFile(l.file, tok.SecretID); err != nil {
		l.logout(tok)
		return nil, err
	}
	if envoyMayRun {
		l.restartEnvoy()
	}
	return tok, nil
}

func (l *envoyLogin) logout(tok *capi.ACLToken) {
	c, err := l.client(tok.SecretID)
	if err == nil {
		err = logout(c, tok.SecretID, l.login.Namespace)
	}
	if err != nil {
		l.log.Warn("Envoy's Consul token is left for the reaper", "accessor_id", tok.AccessorID, "err", err)
		return
	}
	l.log.Info("logged out of Consul", "accessor_id", tok.AccessorID)
}

// revoked: Consul says it does not know tok. Any other answer, an
// unreachable Consul included, keeps it.
func (l *envoyLogin) revoked(tok *capi.ACLToken) bool {
	c, err := l.client(tok.SecretID)
	if err != nil {
		return false
	}
	_, _, err = c.ACL().TokenReadSelf(nil)
	return aclNotFound(err)
}

// adminClient reaches Envoy's admin listener on the pod's loopback.
var adminClient = &http.Client{Timeout: 2 * time.Second}

// envoyConnected: Envoy's admin says its xDS stream is up. An Envoy that
// does not answer counts as connected: it is starting or stopping, and
// its token is not the question.
func (l *envoyLogin) envoyConnected() bool {
	resp, err := adminClient.Get("http://" + l.envoyAdmin + "/stats?filter=" + `^control_plane\.connected_state$`)
	if err != nil {
		return true
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil || resp.StatusCode != http.StatusOK {
		return true
	}
	return connectedState(string(body))
}

// connectedState reads Envoy's "control_plane.connected_state: 0|1".
func connectedState(stats string) bool {
	for _, line := range strings.Split(stats, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "control_plane.connected_state:"); ok {
			return strings.TrimSpace(v) != "0"
		}
	}
	return true
}

// restartEnvoy asks Envoy to exit; kubelet starts it again, and it reads
// the new token. Envoy not answering is not running: it will read the new
// file when it starts.
func (l *envoyLogin) restartEnvoy() {
	resp, err := adminClient.Post("http://"+l.envoyAdmin+"/quitquitquit", "text/plain", nil)
	if err != nil {
		l.log.Info("Envoy's admin does not answer; it reads the new token when it starts", "err", err)
		return
	}
	resp.Body.Close()
	l.log.Info("asked Envoy to restart with the new token")
}

// writeADSFile writes the file whole or not at all (Envoy may start at any
// moment), readable by the proxy's UID alone.
func writeADSFile(path, secret string) error {
	b, err := contract.EnvoyADSBootstrap(secret)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".envoy-ads-*")
	if err != nil {
		return fmt.Errorf("write Envoy's token file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write Envoy's token file: %w", err)
	}
	if err := tmp.Chmod(0o400); err != nil {
		tmp.Close()
		return fmt.Errorf("write Envoy's token file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write Envoy's token file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write Envoy's token file: %w", err)
	}
	return nil
}

// readADSToken is the token in a file writeADSFile wrote.
func readADSToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var doc struct {
		DynamicResources struct {
			AdsConfig struct {
				GrpcServices []struct {
					InitialMetadata []struct{ Key, Value string } `json:"initial_metadata"`
				} `json:"grpc_services"`
			} `json:"ads_config"`
		} `json:"dynamic_resources"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for _, g := range doc.DynamicResources.AdsConfig.GrpcServices {
		for _, h := range g.InitialMetadata {
			if h.Key == contract.ConsulTokenHeader && h.Value != "" {
				return h.Value, nil
			}
		}
	}
	return "", fmt.Errorf("%s holds no %s", path, contract.ConsulTokenHeader)
}
