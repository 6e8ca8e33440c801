package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/rest"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/kubeclient"
	"github.com/meshlet/meshlet/logs"
)

// options are `meshlet agent`'s flags beyond Config.
type options struct {
	cfg        Config
	kubeconfig string
	consul     consulclient.Flags
	servers    consulclient.ServerFlags
	log        logs.Flags
}

func flags(args []string, stderr io.Writer) (options, error) {
	o := options{}
	c := &o.cfg
	fs := flag.NewFlagSet("meshlet agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "the node this agent serves (default $NODE_NAME)")
	fs.StringVar(&c.PodName, "pod-name", os.Getenv("POD_NAME"), "the agent's own pod (default $POD_NAME)")
	fs.IntVar(&c.Workers, "workers", 4, "pods synced concurrently")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", 5*time.Second, "how often the Consul agent's registrations are compared with the node's pods")
	fs.BoolVar(&c.ConsulNamespaces, "enable-namespaces", false, "Consul Enterprise namespaces (global.enableConsulNamespaces): a pod's namespace is created when missing")
	fs.StringVar(&c.CrossNamespacePolicy, "consul-cross-namespace-acl-policy", "", "with -enable-namespaces and ACLs: the policy made a default of each namespace the agent creates, so that its pods may read the others' services (the official Consul chart's cross-namespace-policy)")
	fs.StringVar(&c.Listen, "listen", ":"+strconv.Itoa(contract.NodeAgentHTTPPort), "HTTP address of /healthz, /readyz, /metrics and the sidecars' problem reports ("+contract.SidecarProblemPath+"); empty: none")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig; empty: in-cluster")

	o.consul.Register(fs, "for registrations")
	o.servers.Register(fs)

	n := &c.CNI
	fs.BoolVar(&n.Enabled, "cni-install", true, "install meshlet-cni on the node and keep it chained")
	fs.StringVar(&n.BinDir, "cni-bin-dir", "/host/opt/cni/bin", "the runtime's CNI bin dir as mounted in the container")
	fs.StringVar(&n.ConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "the runtime's CNI conf dir as mounted in the container")
	fs.StringVar(&n.Binary, "cni-binary", "/usr/local/bin/meshlet-cni", "meshlet-cni in the agent's image")
	// The path goes into the conflist as it is and meshlet-cni reads it on
	// the host, so it must be the host's path, mounted at the same path in
	// the node agent's container (not under /host like the CNI dirs).
	fs.StringVar(&n.KubeconfigPath, "cni-kubeconfig", "/var/lib/meshlet/meshlet-cni.kubeconfig", "where the plugin's kubeconfig is written, outside the conf dir: the host's path, which the agent's container must mount at the same path")
	fs.StringVar(&n.LogFile, "cni-log-file", "", "meshlet-cni's log file on the host (empty: the runtime's log)")
	fs.StringVar(&n.LogLevel, "cni-log-level", "", "meshlet-cni's log level (empty: info)")
	fs.StringVar(&n.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the agent's namespace (default $POD_NAMESPACE)")
	fs.StringVar(&n.ServiceAccount, "cni-service-account", "meshlet-cni", "ServiceAccount whose tokens meshlet-cni uses; it may only get pods")
	fs.DurationVar(&n.TokenTTL, "cni-token-ttl", 24*time.Hour, "life of meshlet-cni's tokens; renewed at 80%")
	fs.StringVar(&n.APIServer, "cni-api-server", "", "the API server's URL as meshlet-cni on the host reaches it (default: the agent's in-cluster address)")
	fs.BoolVar(&n.UninstallOnDelete, "cni-uninstall", true, "remove meshlet-cni when the agent's DaemonSet is deleted (never on a rolling update)")
	fs.StringVar(&c.Socket, "cni-agent-socket", contract.NodeAgentSocket, "unix socket serving pods' annotations to meshlet-cni from the agent's cache; same path on the host; empty: none")
	fs.StringVar(&c.IptablesMode, "iptables-mode", "auto", "the host's iptables backend: auto (read from the host's iptables symlinks under -host-root), nft or legacy")
	fs.StringVar(&c.HostRoot, "host-root", "/proc/1/root", "the host's root file system (with hostPID, /proc/1/root)")
	fs.StringVar(&c.Repair.Mode, "repair-mode", "auto", "injected pods found running without redirection: auto (delete those with a controller, repair bare ones in place), repair, delete or off (report only)")
	fs.DurationVar(&c.Repair.Interval, "repair-interval", 5*time.Minute, "time between checks of running pods' redirection (also checked after install and re-chaining)")
	fs.StringVar(&c.Repair.ProcRoot, "proc-root", "/proc", "the host's /proc (needs hostPID)")
	fs.BoolVar(&c.Repair.Disabled, "repair-disable", false, "do not check running pods' redirection at all")
	o.log.Register(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, errors.Join(o.consul.Validate(), o.servers.Validate())
}

// restConfig is the node agent's own API access; the plugin's API server URL
// and CA default to it.
func (o *options) restConfig() (*rest.Config, error) {
	rc, err := kubeclient.Config(o.kubeconfig, "meshlet-agent")
	if err != nil {
		return nil, err
	}
	n := &o.cfg.CNI
	if n.APIServer == "" {
		n.APIServer = rc.Host
	}
	if n.CAData == nil {
		n.CAData = rc.CAData
		if rc.CAFile != "" {
			if n.CAData, err = os.ReadFile(rc.CAFile); err != nil {
				return nil, fmt.Errorf("read the API server's CA for meshlet-cni: %w", err)
			}
		}
	}
	return rc, nil
}

// consulTimeout bounds one request to the node's Consul agent, which
// answers local requests in milliseconds: a Consul agent that hangs must
// not hold a worker, and with it a pod's sync, for ever; the queue
// retries.
const consulTimeout = 10 * time.Second

// gcPercent: the node agent's heap is small and mostly its caches, which live
// as long as it does; collecting at 50% growth rather than Go's 100%
// keeps a DaemonSet on every node lean for a little CPU. $GOGC overrides.
const gcPercent = 50

// Main is `meshlet agent`: it runs until ctx ends.
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	o, err := flags(args, stderr)
	if err != nil {
		return err
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	rc, err := o.restConfig()
	if err != nil {
		return err
	}
	cs, err := kubeclient.New(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if err := o.consul.UseConnectRoots(ctx, o.servers, log); err != nil {
		return err
	}
	consul, err := o.consul.Client(consulTimeout)
	if err != nil {
		return err
	}
	a, err := New(o.cfg, cs, consul, log)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	a.Registry().MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	log.Info("starting", "node", o.cfg.NodeName, "consul", o.consul.Addr, "cni_install", o.cfg.CNI.Enabled)
	return a.Run(ctx)
}
