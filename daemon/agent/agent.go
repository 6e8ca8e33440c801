// Package agent is `meshlet agent`, the node agent: it installs
// meshlet-cni on its node and keeps it chained, registers the node's
// injected pods with the node's Consul client agent and keeps their health
// in step with readiness, removes registrations no pod backs, and repairs
// pods that started before the plugin. See docs/agent.md.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/daemon/podcache"
	"github.com/meshlet/meshlet/daemon/register"
	"github.com/meshlet/meshlet/daemon/repair"
	"github.com/meshlet/meshlet/kubeclient"
)

// Agent is the node agent of one node, built by New and run by Run.
type Agent struct {
	cfg     Config
	client  kubeclient.Interface
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *Metrics
	events  record.EventRecorder
	inf     *informerSet
	queue   workqueue.TypedRateLimitingInterface[string]
	sync    *Syncer
	podc    *podcache.Server
	// repairer is nil when the check is off; repairNow asks for a pass.
	repairer  *repair.Repairer
	brake     *repair.Brake
	repairNow chan struct{}
	ipt       *hostIptables

	synced    atomic.Bool // caches filled
	installed atomic.Bool // meshlet-cni chained (or installing disabled)
}

// New builds the node agent from its configuration and clients; nothing runs
// until Run.
func New(cfg Config, client kubeclient.Interface, consul *capi.Client, log *slog.Logger) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	a := &Agent{cfg: cfg, client: client, log: log.With("node", cfg.NodeName), reg: reg}
	a.metrics = NewMetrics(reg)
	a.inf = newInformers(client, cfg.NodeName)
	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshlet-agent"})
	if err := a.inf.wire(a.queue); err != nil {
		return nil, fmt.Errorf("watch pods and Services: %w", err)
	}
	if !cfg.Repair.Disabled {
		mode, _ := repair.ParseMode(cfg.Repair.Mode) // validated
		a.repairer = &repair.Repairer{Mode: mode, Node: cfg.NodeName}
		a.brake = repair.DefaultBrake()
		a.repairNow = make(chan struct{}, 1)
	}
	a.ipt = newHostIptables(a.detectIptablesMode, a.log)
	a.resolveIptablesModeAtStart()
	if cfg.Socket != "" {
		a.podc = podcache.New(cfg.Socket, podcache.ListerLookup{Lister: a.inf.podLister()})
		a.podc.Log, a.podc.Metrics = a.log, podcache.NewMetrics(reg)
		if _, err := a.inf.podInf.AddEventHandler(a.podc.EventHandler()); err != nil {
			return nil, fmt.Errorf("watch pods: %w", err)
		}
	}
	a.sync = &Syncer{
		Consul: consul.Agent(), Pods: a.inf.podLister(), Services: a.inf.serviceLister(),
		Metrics: a.metrics, Log: a.log, ListNamespace: cfg.consulListNamespace(),
		Requeue: func(key string) { a.queue.Add(key) },
	}
	if cfg.ConsulNamespaces {
		a.sync.Namespaces = &register.Namespaces{API: consul.Namespaces(), CrossNamespacePolicy: cfg.CrossNamespacePolicy}
	}
	if a.podc != nil {
		a.podc.Sandboxes = a.sync
	}
	return a, nil
}

// Registry is the node agent's Prometheus registry, for callers adding series.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Run runs the node agent until ctx ends. The HTTP server comes first, so that
// /healthz answers while the rest starts; /readyz turns ready when the
// plugin is chained and the caches are in sync.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(kubeclient.EventSink(a.client))
	defer broadcaster.Shutdown()
	a.events = broadcaster.NewRecorder(kubeclient.Scheme, corev1.EventSource{Component: "meshlet-agent", Host: a.cfg.NodeName})
	a.sync.Events = a.events

	errc := make(chan error, 3) // HTTP server, installer, pod cache
	if a.cfg.Listen != "" {
		ln, err := net.Listen("tcp", a.cfg.Listen)
		if err != nil {
			return fmt.Errorf("-listen %s: %w", a.cfg.Listen, err)
		}
		go func() { errc <- a.serveHTTP(ctx, ln) }()
	}
	installerDone := make(chan struct{})
	if a.cfg.CNI.Enabled {
		go func() {
			defer close(installerDone)
			if err := a.runInstaller(ctx); err != nil {
				errc <- err
			}
		}()
	} else {
		close(installerDone)
		a.installed.Store(true)
	}
	// On the way out the installer decides whether to uninstall: wait
	// for it.
	defer func() { cancel(); <-installerDone }()

	a.inf.start(ctx)
	defer func() { cancel(); a.inf.wait() }()
	defer a.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), a.inf.podInf.HasSynced, a.inf.svcInf.HasSynced) {
		return ctx.Err()
	}
	a.synced.Store(true)
	a.log.Info("caches synced", "pods", len(a.inf.podInf.GetStore().ListKeys()), "services", len(a.inf.svcInf.GetStore().ListKeys()))
	for range a.cfg.Workers {
		go a.work()
	}
	go a.resyncLoop(ctx)
	if a.repairer != nil {
		go a.runRepair(ctx)
	}
	if a.podc != nil {
		go func() {
			if err := a.podc.Serve(ctx); err != nil {
				errc <- err
			}
		}()
	}

	select {
	case <-ctx.Done():
		a.log.Info("stopping: registrations stay with the Consul agent for the next agent to take over")
		return nil
	case err := <-errc:
		return err
	}
}

// work takes pod keys off the queue; the queue hands a key to one worker
// at a time.
func (a *Agent) work() {
	for {
		key, quit := a.queue.Get()
		if quit {
			return
		}
		t0 := time.Now()
		err := a.sync.Reconcile(key)
		a.metrics.reconcile.Observe(time.Since(t0).Seconds())
		if err != nil {
			a.metrics.failures.WithLabelValues("error").Inc()
			a.log.Warn("sync failed; retrying", "pod", key, "err", err, "retries", a.queue.NumRequeues(key))
			a.queue.AddRateLimited(key)
		} else {
			a.queue.Forget(key)
		}
		a.queue.Done(key)
	}
}

// resyncLoop compares the Consul agent's registrations with the pods at
// start and every ResyncInterval: that catches a Consul agent that
// restarted without its services within seconds, and removes what pods
// deleted while the node agent was down left behind.
func (a *Agent) resyncLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResyncInterval)
	defer t.Stop()
	failing := false
	for {
		err := a.sync.Resync()
		switch {
		case err != nil && !failing:
			a.log.Warn("resync with the Consul agent failed; retrying", "err", err)
		case err == nil && failing:
			a.log.Info("resync with the Consul agent works again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serveHTTP serves /healthz (the process runs), /readyz (the plugin is
// chained and the caches are filled), /metrics, and the node's sidecars'
// problem reports (contract.SidecarProblemPath). A Consul agent that is
// down does not make the node agent unready: that would stall the DaemonSet's
// rollouts, and with them plugin updates, while Consul is out; the logs
// and meshlet_agent_consul_requests_total say it.
func (a *Agent) serveHTTP(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !a.installed.Load():
			http.Error(w, "meshlet-cni is not installed yet", http.StatusServiceUnavailable)
		case !a.synced.Load():
			http.Error(w, "pod and Service caches not filled yet", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ok\n"))
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.Handle(contract.SidecarProblemPath, &sidecarProblems{pods: a.inf.podLister(), events: a.events, metrics: a.metrics, log: a.log})
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
