package server

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/kubeclient"
	"github.com/meshlet/meshlet/logs"
	"github.com/meshlet/meshlet/webhook"
	"github.com/meshlet/meshlet/webhook/certs"
)

// options are `meshlet webhook`'s flags. Their names are consul-k8s'
// inject-connect flags where one exists, so a chart or a script that
// passes those carries over.
type options struct {
	cfg          webhook.Config
	native       string // auto, true, false
	resources    [len(resourceFlags)]string
	listen       string
	kubeconfig   string
	certFile     string
	keyFile      string
	selfManaged  bool
	serviceName  string
	serviceNS    string
	webhookName  string
	secretName   string
	certValidity time.Duration
	log          logs.Flags
	shutdown     time.Duration
	consulCA     string // file of the Consul agent's CA
	dnsService   string // namespace/name of the Consul DNS Service
	servers      consulclient.ServerFlags
}

// resourceFlags are the sidecar's default resources, one flag each;
// options.resources holds their values in this order.
var resourceFlags = [4]struct {
	name  string
	res   corev1.ResourceName
	limit bool
}{
	{"default-sidecar-proxy-cpu-request", corev1.ResourceCPU, false},
	{"default-sidecar-proxy-cpu-limit", corev1.ResourceCPU, true},
	{"default-sidecar-proxy-memory-request", corev1.ResourceMemory, false},
	{"default-sidecar-proxy-memory-limit", corev1.ResourceMemory, true},
}

type listFlag struct{ dst *[]string }

func (l listFlag) String() string {
	if l.dst == nil {
		return ""
	}
	return strings.Join(*l.dst, ",")
}

// Set takes a repeated flag or a comma list; the first use replaces the
// default.
func (l listFlag) Set(v string) error {
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			*l.dst = append(*l.dst, e)
		}
	}
	return nil
}

func flags(args []string, stderr io.Writer) (options, error) {
	o := options{cfg: webhook.DefaultConfig()}
	fs := flag.NewFlagSet("meshlet webhook", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.BoolVar(&c.DefaultInject, "default-inject", c.DefaultInject, "inject pods without a connect-inject annotation (connectInject.default)")
	c.AllowNamespaces = nil
	fs.Var(listFlag{&c.AllowNamespaces}, "allow-k8s-namespace", "namespace whose pods may be injected; repeat or comma-separate; * for all (connectInject.k8sAllowNamespaces; default *)")
	fs.Var(listFlag{&c.DenyNamespaces}, "deny-k8s-namespace", "namespace never injected; wins over allow (connectInject.k8sDenyNamespaces)")
	fs.StringVar(&c.DataPlane, "data-plane", c.DataPlane, "the sidecar: envoy, consul (Consul's built-in proxy) or meshlet (meshlet proxy, L4 with transparent proxy)")
	fs.StringVar(&c.EnvoyImage, "envoy-image", c.EnvoyImage, "Envoy image (imageEnvoy)")
	fs.StringVar(&c.ConsulImage, "consul-image", c.ConsulImage, "image with the consul binary, for data plane consul")
	fs.StringVar(&c.MeshletImage, "meshlet-image", c.MeshletImage, "meshlet's image (entrypoint: the meshlet binary): data plane meshlet's sidecar, data plane envoy's login and metrics-merging sidecars")
	fs.StringVar(&o.native, "native-sidecar", "auto", "run the proxy as a native sidecar: auto (when the API server is 1.29 or newer, except where a regular container starts the pod faster), true (always) or false (never)")
	fs.BoolVar(&c.TransparentProxy, "enable-transparent-proxy", c.TransparentProxy, "transparent proxy unless a pod says otherwise (connectInject.transparentProxy.defaultEnabled)")
	fs.BoolVar(&c.OverwriteProbes, "transparent-proxy-default-overwrite-probes", c.OverwriteProbes, "rewrite HTTP probes to expose paths (connectInject.transparentProxy.defaultOverwriteProbes)")
	for i, r := range resourceFlags {
		def := c.Resources.Requests // webhook.DefaultConfig's
		if r.limit {
			def = c.Resources.Limits
		}
		q := def[r.res]
		fs.StringVar(&o.resources[i], r.name, q.String(), "sidecar resources (connectInject.sidecarProxy.resources); empty: none")
	}
	m := &c.Metrics
	fs.BoolVar(&m.DefaultEnabled, "default-enable-metrics", m.DefaultEnabled, "connectInject.metrics.defaultEnabled")
	fs.BoolVar(&m.DefaultEnableMerging, "default-enable-metrics-merging", m.DefaultEnableMerging, "connectInject.metrics.defaultEnableMerging")
	fs.IntVar(&m.DefaultMergedMetricsPort, "default-merged-metrics-port", m.DefaultMergedMetricsPort, "connectInject.metrics.defaultMergedMetricsPort")
	fs.IntVar(&m.DefaultPrometheusScrapePort, "default-prometheus-scrape-port", m.DefaultPrometheusScrapePort, "connectInject.metrics.defaultPrometheusScrapePort")
	fs.StringVar(&m.DefaultPrometheusScrapePath, "default-prometheus-scrape-path", m.DefaultPrometheusScrapePath, "connectInject.metrics.defaultPrometheusScrapePath")
	n := &c.ConsulNamespaces
	fs.BoolVar(&n.Enabled, "enable-namespaces", n.Enabled, "Consul Enterprise namespaces (global.enableConsulNamespaces)")
	fs.StringVar(&n.DestinationNamespace, "consul-destination-namespace", n.DestinationNamespace, "connectInject.consulNamespaces.consulDestinationNamespace")
	fs.BoolVar(&n.MirroringK8S, "enable-k8s-namespace-mirroring", n.MirroringK8S, "connectInject.consulNamespaces.mirroringK8S")
	fs.StringVar(&n.MirroringK8SPrefix, "k8s-namespace-mirroring-prefix", n.MirroringK8SPrefix, "connectInject.consulNamespaces.mirroringK8SPrefix")
	fs.IntVar(&c.AgentHTTPPort, "consul-http-port", c.AgentHTTPPort, "the node's Consul client agent HTTP port, on the node's IP")
	fs.IntVar(&c.AgentGRPCPort, "consul-grpc-port", c.AgentGRPCPort, "the node's Consul client agent gRPC port, on the node's IP")
	fs.IntVar(&c.AgentTLS.HTTPSPort, "consul-https-port", 0, "the node's Consul client agent HTTPS port, on the node's IP, for the sidecars; 0: they use -consul-http-port")
	fs.IntVar(&c.AgentTLS.GRPCPort, "consul-grpc-tls-port", 0, "the node's Consul client agent gRPC TLS port (8503), on the node's IP, for data plane envoy's Envoy with -consul-https-port; 0: none")
	fs.StringVar(&o.consulCA, "consul-ca-file", "", "the CA of the Consul agent's HTTPS certificate (PEM), given to the sidecars in their environment, for -consul-https-port")
	fs.StringVar(&c.AgentTLS.ServerName, "consul-tls-server-name", "", "the name the sidecars check in the Consul agent's certificate; empty: the node's IP")
	o.servers.Register(fs)
	fs.IntVar(&c.NodeAgentPort, "node-agent-port", c.NodeAgentPort, "meshlet's node agent's HTTP port on the node's IP (agent.port), where data plane meshlet's sidecars report a refused login")
	fs.BoolVar(&c.ConsulDNS.Default, "enable-consul-dns", c.ConsulDNS.Default, "send injected pods' DNS to Consul DNS unless a pod's consul-dns annotation says otherwise (dns.enableRedirection); needs transparent proxy")
	fs.StringVar(&o.dnsService, "consul-dns-service", "", "namespace/name of the Service in front of the Consul agents' DNS on port 53 (the official chart's <release>-dns), whose ClusterIP pods' DNS is sent to")
	fs.StringVar(&c.ConsulDNS.IP, "consul-dns-ip", "", "Consul DNS's address on port 53, instead of -consul-dns-service (dns.clusterIP)")
	fs.StringVar(&c.ACLAuthMethod, "acl-auth-method", c.ACLAuthMethod, "the Consul Kubernetes auth method sidecars log in with (consul.acl.authMethod); empty: Consul without ACLs. With one, a pod's Consul service must be named like its ServiceAccount")

	fs.StringVar(&o.listen, "listen", ":8080", "HTTPS address: /mutate, /healthz, /readyz, /metrics")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig; empty: in-cluster")
	fs.StringVar(&o.certFile, "tls-cert-file", "", "serving certificate (PEM), reloaded when it changes (cert-manager)")
	fs.StringVar(&o.keyFile, "tls-key-file", "", "its private key (PEM)")
	fs.BoolVar(&o.selfManaged, "tls-self-managed", false, "generate the CA and serving certificate, keep them in a Secret shared by the replicas, patch the webhook configuration's caBundle, rotate before expiry")
	fs.StringVar(&o.serviceName, "service-name", "", "the webhook's Service (self-managed certificate's DNS names)")
	fs.StringVar(&o.serviceNS, "service-namespace", os.Getenv("POD_NAMESPACE"), "its namespace (default: $POD_NAMESPACE)")
	fs.StringVar(&o.webhookName, "webhook-config-name", "", "MutatingWebhookConfiguration whose caBundle is kept current")
	fs.StringVar(&o.secretName, "tls-secret-name", "", "Secret holding the self-managed CA and certificate (default <service-name>-tls)")
	fs.DurationVar(&o.certValidity, "tls-cert-validity", 30*24*time.Hour, "self-managed serving certificate validity; rotated after two thirds")
	o.log.Register(fs)
	fs.DurationVar(&o.shutdown, "shutdown-delay", 5*time.Second, "after SIGTERM, stay up unready this long before draining")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(c.AllowNamespaces) == 0 {
		c.AllowNamespaces = []string{"*"}
	}
	return o, o.finish()
}

// finish validates what the flag package cannot.
func (o *options) finish() error {
	if err := o.servers.Validate(); err != nil {
		return err
	}
	if o.servers.Addr != "" && o.consulCA == "" {
		return fmt.Errorf("-consul-server-addr %s needs -consul-ca-file, the CA that verifies the Consul servers and the client agents", o.servers.Addr)
	}
	if o.consulCA != "" {
		pem, err := readCA(o.consulCA)
		if err != nil {
			return fmt.Errorf("-consul-ca-file: %w", err)
		}
		o.cfg.AgentTLS.CAPEM = pem
	}
	switch d := &o.cfg.ConsulDNS; {
	case o.dnsService != "" && d.IP != "":
		return errors.New("-consul-dns-service and -consul-dns-ip exclude each other: give the Service, or its address")
	case o.dnsService != "":
		if _, _, err := parseServiceRef(o.dnsService); err != nil {
			return fmt.Errorf("-consul-dns-service %w", err)
		}
	case d.IP == "" && d.Default:
		return errors.New("-enable-consul-dns needs Consul DNS's address: -consul-dns-service or -consul-dns-ip")
	case d.IP == "":
		d.Unavailable = webhook.NoConsulDNS
	}
	res := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for i, f := range resourceFlags {
		if o.resources[i] == "" {
			continue
		}
		q, err := resource.ParseQuantity(o.resources[i])
		if err != nil {
			return fmt.Errorf("-%s %q: expected a resource quantity such as 100m or 128Mi", f.name, o.resources[i])
		}
		list := res.Requests
		if f.limit {
			list = res.Limits
		}
		list[f.res] = q
	}
	o.cfg.Resources = res
	if o.native != "auto" && o.native != "true" && o.native != "false" {
		return fmt.Errorf("-native-sidecar %q: expected auto, true or false", o.native)
	}
	o.cfg.NativeSidecar = o.native == "true"
	// auto picks per pod (webhook.Config.FastStart); true forces native.
	o.cfg.FastStart = o.native == "auto"
	switch files := o.certFile != "" || o.keyFile != ""; {
	case files && o.selfManaged:
		return errors.New("-tls-cert-file/-tls-key-file and -tls-self-managed exclude each other")
	case files && (o.certFile == "" || o.keyFile == ""):
		return errors.New("-tls-cert-file and -tls-key-file go together")
	case !files && !o.selfManaged:
		return errors.New("no serving certificate: give -tls-cert-file and -tls-key-file, or -tls-self-managed")
	case o.selfManaged && (o.serviceName == "" || o.serviceNS == "" || o.webhookName == ""):
		return errors.New("-tls-self-managed needs -service-name, -service-namespace (or $POD_NAMESPACE) and -webhook-config-name")
	}
	if o.secretName == "" {
		o.secretName = o.serviceName + "-tls"
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return fmt.Errorf("-listen %q: expected host:port: %w", o.listen, err)
	}
	return nil
}

func (o options) kubeClient() (kubeclient.Interface, error) {
	rc, err := kubeclient.Config(o.kubeconfig, "meshlet-webhook")
	if err != nil {
		return nil, err
	}
	return kubeclient.New(rc)
}

// Main is `meshlet webhook`: it serves until ctx ends.
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := flags(args, stderr)
	if err != nil {
		return err
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	needClient := o.selfManaged || o.native == "auto" || o.dnsService != ""
	var client kubeclient.Interface
	if needClient {
		if client, err = o.kubeClient(); err != nil {
			return err
		}
	}
	if o.native == "auto" {
		if o.cfg.NativeSidecar, err = nativeSidecarSupported(client); err != nil {
			return err
		}
	}
	if err := o.cfg.Validate(); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	var roots *consulclient.ConnectRoots
	if o.servers.Addr != "" {
		// A sidecar handed the chart's CA alone could not verify a client
		// agent whose certificate the Connect CA signed: no pod is
		// injected before the roots are in the bundle.
		if roots, err = consulclient.NewConnectRoots(o.servers, []byte(o.cfg.AgentTLS.CAPEM)); err != nil {
			return err
		}
		if err := roots.Wait(ctx, log); err != nil {
			return err
		}
		go roots.Run(ctx, consulclient.RootsRefresh, log)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var dns *consulDNS
	if o.dnsService != "" {
		if dns, err = newConsulDNS(client, o.dnsService, !o.cfg.ConsulDNS.Default, log); err != nil {
			return err
		}
		reg.MustRegister(dns.known)
		// Known before the first admission where it can be: a pod denied
		// for the webhook's own start would be a surprise.
		first, cancel := context.WithTimeout(ctx, 5*time.Second)
		dns.refresh(first)
		cancel()
		go dns.Run(ctx)
	}
	var src CertSource
	if o.selfManaged {
		src, err = certs.NewSelfManaged(certs.SelfManagedConfig{ServiceName: o.serviceName, ServiceNamespace: o.serviceNS,
			WebhookConfigName: o.webhookName, SecretName: o.secretName, Validity: o.certValidity}, client, log, reg)
	} else {
		src, err = certs.NewFiles(o.certFile, o.keyFile, log, reg)
	}
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	h := &Handler{Config: o.cfg, Roots: roots, Log: log, Metrics: NewMetrics(reg, o.cfg.DataPlane)}
	if dns != nil {
		h.ConsulDNS = dns
	}
	s := &Server{
		Handler:       h,
		Certs:         src,
		Registry:      reg,
		Log:           log,
		ShutdownDelay: o.shutdown,
		ShutdownGrace: 10 * time.Second,
	}
	return s.Serve(ctx, ln)
}

// readCA reads a PEM file of CA certificates, refusing one that holds
// none: a sidecar given it could never verify the Consul agent.
func readCA(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	certs := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return "", fmt.Errorf("%s holds a %s block: expected only CERTIFICATE blocks", path, blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "", fmt.Errorf("%s: certificate %d: %w", path, certs+1, err)
		}
		certs++
	}
	if certs == 0 {
		return "", fmt.Errorf("%s holds no PEM certificate", path)
	}
	return strings.TrimSpace(string(b)) + "\n", nil
}
