package reaper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/meshlet/meshlet/consulclient"
	"github.com/meshlet/meshlet/kubeclient"
	"github.com/meshlet/meshlet/logs"
)

// options are `meshlet reaper`'s flags.
type options struct {
	cfg        Config
	listen     string
	namespace  string
	leaseName  string
	kubeconfig string
	consul     consulclient.Flags
	servers    consulclient.ServerFlags
	log        logs.Flags
}

func flags(args []string, stderr io.Writer) (options, error) {
	o := options{cfg: Config{Debounce: time.Second}}
	fs := flag.NewFlagSet("meshlet reaper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.cfg.AuthMethod, "auth-method", "", "the Consul auth method whose login tokens are reaped (consul.acl.authMethod); required")
	fs.DurationVar(&o.cfg.Interval, "interval", 30*time.Second, "time between passes over the auth method's tokens; a pod's deletion brings one sooner")
	fs.DurationVar(&o.cfg.Grace, "grace", 5*time.Second, "a token younger than this is kept whatever pod it names (the pod cache may not have seen a brand new pod)")
	fs.StringVar(&o.listen, "listen", ":9403", "HTTP address of /healthz, /readyz, /metrics; empty: none")
	fs.StringVar(&o.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the leader election's Lease (default $POD_NAMESPACE)")
	fs.StringVar(&o.leaseName, "lease-name", "meshlet-token-reaper", "the leader election's Lease: only its holder reaps")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig; empty: in-cluster")
	o.consul.Register(fs, "with acl = \"write\" (deploy/consul/token-reaper-policy.hcl)")
	o.servers.Register(fs)
	o.log.Register(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return o, o.validate()
}

// validate names every bad flag and what was expected.
func (o options) validate() error {
	errs := []error{o.servers.Validate()}
	if o.cfg.AuthMethod == "" {
		errs = append(errs, errors.New("-auth-method is empty: give the Consul auth method the sidecars log in with (consul.acl.authMethod)"))
	}
	if o.cfg.Interval < time.Second {
		errs = append(errs, fmt.Errorf("-interval %s: expected at least 1s", o.cfg.Interval))
	}
	if o.cfg.Grace < 0 {
		errs = append(errs, fmt.Errorf("-grace %s: expected 0 or more", o.cfg.Grace))
	}
	if o.listen != "" {
		if _, _, err := net.SplitHostPort(o.listen); err != nil {
			errs = append(errs, fmt.Errorf("-listen %q: expected host:port", o.listen))
		}
	}
	if o.namespace == "" {
		errs = append(errs, errors.New("-namespace is empty: set it or $POD_NAMESPACE (the downward API's metadata.namespace), where the Lease lives"))
	} else if msgs := validation.IsDNS1123Label(o.namespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("-namespace %q: expected a namespace name (%s)", o.namespace, msgs[0]))
	}
	if msgs := validation.IsDNS1123Subdomain(o.leaseName); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("-lease-name %q: expected an object name (%s)", o.leaseName, msgs[0]))
	}
	if _, err := o.log.Logger(io.Discard); err != nil {
		errs = append(errs, err)
	}
	if err := o.consul.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.consul.TokenFile == "" && os.Getenv("CONSUL_HTTP_TOKEN") == "" {
		errs = append(errs, errors.New("-token-file is empty and $CONSUL_HTTP_TOKEN unset: the reaper needs a token with acl = \"write\" (deploy/consul/token-reaper-policy.hcl)"))
	}
	return errors.Join(errs...)
}

// consulTimeout bounds one request to Consul: a hung request must not
// hold the pass, and with it every later one, for ever.
const consulTimeout = 30 * time.Second

// Main is `meshlet reaper`: it runs until ctx ends.
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := flags(args, stderr)
	if err != nil {
		return err
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	rc, err := kubeclient.Config(o.kubeconfig, "meshlet-reaper")
	if err != nil {
		return err
	}
	kube, err := kubeclient.New(rc)
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	inf := NewPodInformer(kube.Pods(metav1.NamespaceAll))
	r := New(o.cfg, consul.ACL(), corelisters.NewPodLister(inf.GetIndexer()), log, NewMetrics(reg))
	if err := onPodGone(inf, r.PodGone, r.ContainerRestarted); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	id, err := identity()
	if err != nil {
		return err
	}
	e := &Elector{Leases: kube.Leases(o.namespace), Name: o.leaseName, Identity: id, Log: log}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	httpErr := make(chan error, 1)
	if o.listen != "" {
		ln, err := net.Listen("tcp", o.listen)
		if err != nil {
			return fmt.Errorf("-listen %s: %w", o.listen, err)
		}
		go func() { httpErr <- serveHTTP(ctx, ln, r, reg) }()
	}
	log.Info("starting", "auth_method", o.cfg.AuthMethod, "consul", o.consul.Addr, "lease", o.namespace+"/"+o.leaseName, "identity", id)
	// Run returns once ctx has ended and the Lease is given up: waiting
	// for it lets the other replica take over at once.
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx, inf, e) }()
	select {
	case err := <-runDone:
		return err
	case err := <-httpErr:
		cancel()
		<-runDone
		return err
	}
}

// identity names this process in the Lease: the pod's name and a random
// suffix, so that a replica started again under the same name does not
// take for its own a Lease its previous process held.
func identity() (string, error) {
	name := os.Getenv("POD_NAME")
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("leader election identity: %w", err)
		}
		name = h
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("leader election identity: %w", err)
	}
	return name + "_" + hex.EncodeToString(b), nil
}

// serveHTTP serves /healthz (the process runs), /readyz (the pod cache is
// filled; a standby replica is ready too, or a rollout would wait on the
// election) and /metrics.
func serveHTTP(ctx context.Context, ln net.Listener, r *Reaper, reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Synced() {
			http.Error(w, "pod cache not filled yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}
