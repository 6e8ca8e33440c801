package dataplane

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/logs"
)

// Main is `meshlet proxy`: it serves until ctx ends. `meshlet proxy wait`
// waits for a proxy to serve (WaitMain); `login` is data plane envoy's
// login sidecar (EnvoyLoginMain), `merge-metrics` its metrics sidecar
// (MergeMetricsMain).
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	started := time.Now()
	if len(args) > 0 && args[0] == "wait" {
		return WaitMain(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "login" {
		return EnvoyLoginMain(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "merge-metrics" {
		return MergeMetricsMain(ctx, args[1:], stderr)
	}
	o := Options{Started: started}
	var consul consulclient.Flags
	var lf logs.Flags
	fs := flag.NewFlagSet("meshlet proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.ProxyID, "proxy-id", os.Getenv(contract.EnvProxyID), "the proxy's service ID on the node's Consul agent (default $PROXY_ID, set by the webhook)")
	fs.StringVar(&o.Metrics, "metrics-addr", net.JoinHostPort("127.0.0.1", strconv.Itoa(contract.ProxyMetricsPort)), "HTTP address of /metrics and /ready; empty: none")
	fs.StringVar(&o.MetricsPath, "metrics-path", "/metrics", "the path of the metrics on -metrics-addr (prometheus-scrape-path)")
	fs.StringVar(&o.MergeAppMetrics, "merge-app-metrics", "", "the app's metrics page, http://host:port/path: each scrape returns the proxy's metrics and the app's (enable-metrics-merging); empty: the proxy's alone")
	fs.DurationVar(&o.Drain, "drain", 5*time.Second, "on SIGTERM, how long open connections may finish")
	fs.DurationVar(&o.Linger, "linger", 0, "on SIGTERM, keep serving until the app has stopped (its port refuses, no connection open), at most this long; for a sidecar stopped together with the app")
	var lg Login
	fs.StringVar(&lg.AuthMethod, "acl-auth-method", "", "log in to this Consul Kubernetes auth method with the pod's ServiceAccount token and use the token it gives for every Consul call (docs/identity.md); empty: no login")
	fs.StringVar(&lg.BearerTokenFile, "acl-bearer-token-file", contract.ServiceAccountTokenFile, "the pod's ServiceAccount token, for -acl-auth-method")
	fs.StringVar(&lg.Namespace, "acl-auth-method-namespace", "", "Consul Enterprise: the namespace of -acl-auth-method; empty: -consul-namespace")
	var consulNS string
	fs.StringVar(&consulNS, "consul-namespace", os.Getenv("CONSUL_NAMESPACE"), "Consul Enterprise: the namespace of the proxy's registration, sent with every Consul call (default $CONSUL_NAMESPACE); empty: none, as Consul without Enterprise namespaces requires")
	var nodeAgent string
	if ip := os.Getenv(contract.EnvHostIP); ip != "" {
		nodeAgent = net.JoinHostPort(ip, strconv.Itoa(contract.NodeAgentHTTPPort))
	}
	fs.StringVar(&nodeAgent, "node-agent-addr", nodeAgent, "host:port of the node's meshlet node agent, told of a failed -acl-auth-method login so that it records an Event on the pod (default $HOST_IP:"+strconv.Itoa(contract.NodeAgentHTTPPort)+"); empty: not told")
	consul.Register(fs, "for the proxy's certificate and authorizations")
	lf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.ProxyID == "":
		return fmt.Errorf("-proxy-id is empty: give the proxy's service ID, or set $PROXY_ID")
	case o.Drain < 0:
		return fmt.Errorf("-drain %s: expected a duration ≥ 0", o.Drain)
	case o.Linger < 0:
		return fmt.Errorf("-linger %s: expected a duration ≥ 0", o.Linger)
	case !strings.HasPrefix(o.MetricsPath, "/") || o.MetricsPath == "/ready":
		return fmt.Errorf("-metrics-path %q: expected a path starting with '/', other than /ready", o.MetricsPath)
	case o.MergeAppMetrics != "" && !validAppMetricsURL(o.MergeAppMetrics):
		return fmt.Errorf("-merge-app-metrics %q: expected http://host:port/path", o.MergeAppMetrics)
	case lg.AuthMethod != "" && consul.TokenFile != "":
		return fmt.Errorf("-acl-auth-method %s and -token-file %s exclude each other: the proxy acts with the token its login gives", lg.AuthMethod, consul.TokenFile)
	case lg.AuthMethod != "" && lg.BearerTokenFile == "":
		return fmt.Errorf("-acl-auth-method %s needs -acl-bearer-token-file, the pod's ServiceAccount token", lg.AuthMethod)
	case lg.Namespace != "" && lg.AuthMethod == "":
		return fmt.Errorf("-acl-auth-method-namespace %s without -acl-auth-method: no login to place", lg.Namespace)
	case lg.Namespace != "" && consulNS == "":
		return fmt.Errorf("-acl-auth-method-namespace %s without -consul-namespace: Consul namespaces are off", lg.Namespace)
	}
	consul.Namespace = consulNS
	if nodeAgent != "" {
		if _, _, err := net.SplitHostPort(nodeAgent); err != nil {
			return fmt.Errorf("-node-agent-addr %q: expected host:port", nodeAgent)
		}
	}
	if err := consul.Validate(); err != nil {
		return err
	}
	log, err := lf.Logger(stderr)
	if err != nil {
		return err
	}
	// No per-request timeout: the watches are blocking queries of minutes,
	// bounded by their wait time and by ctx.
	client, err := consul.Client(0)
	if err != nil {
		return err
	}
	if lg.AuthMethod != "" {
		lg.Meta = podMeta()
		tok, err := loginUntil(ctx, client, lg, newNodeAgentReporter(nodeAgent, log), log)
		if err != nil {
			return err
		}
		consul.Token = tok.SecretID
		if client, err = consul.Client(0); err != nil {
			return err
		}
		// The token goes with the pod: logged out once the proxy has
		// stopped serving (after its linger and drain).
		defer func() {
			if err := logout(client, tok.SecretID, lg.Namespace); err != nil {
				log.Warn("the proxy's Consul token is left for the reaper", "accessor_id", tok.AccessorID, "err", err)
				return
			}
			log.Info("logged out of Consul", "accessor_id", tok.AccessorID)
		}()
	}
	o.Registry = prometheus.NewRegistry()
	o.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return Run(ctx, client, o, log)
}

// validAppMetricsURL: an http URL with a host and port (the app on the
// pod's loopback).
func validAppMetricsURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme == "http" && u.Port() != "" && u.Hostname() != "" && strings.HasPrefix(u.Path, "/")
}
