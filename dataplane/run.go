package dataplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options are Run's settings beyond the registration.
type Options struct {
	ProxyID string
	// Metrics is the HTTP address of /metrics and /ready; "" for none.
	Metrics string
	// MetricsPath is where the metrics are served there ("": /metrics).
	MetricsPath string
	// MergeAppMetrics, when set, is the app's metrics page (a URL): each
	// scrape returns the proxy's metrics and the app's together.
	MergeAppMetrics string
	// Drain is how long open connections may finish after SIGTERM.
	Drain time.Duration
	// Linger, when > 0, keeps every listener open after SIGTERM while the
	// app may still use them, at most this long (linger): for a sidecar
	// that is a regular container, stopped together with the app.
	Linger time.Duration
	// Registry takes the proxy's metrics (a new one when nil).
	Registry *prometheus.Registry
	// Ready, when set, is called once every listener is open.
	Ready func(Config)
	// Started is when the process started, for the start-up times the
	// "proxy ready" log gives; zero: when Run was called.
	Started time.Time
}

// Run serves the proxy registered as o.ProxyID until ctx ends. It waits
// for the registration (the node agent makes it once meshlet-cni or
// kubelet tells it the pod's IP), then for its certificate and the mesh's
// services, and only then opens its listeners, the public one last: its
// answering is the sidecar's readiness (`meshlet proxy wait`, probes).
func Run(ctx context.Context, consul *capi.Client, o Options, log *slog.Logger) error {
	log = log.With("proxy_id", o.ProxyID)
	if o.Started.IsZero() {
		o.Started = time.Now()
	}
	reg, err := waitRegistration(ctx, consul.Agent(), o.ProxyID, log)
	if err != nil {
		return err
	}
	registered := time.Since(o.Started)
	cfg, err := ConfigFrom(reg)
	if err != nil {
		return err
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	wctx, stopWatches := context.WithCancel(context.Background())
	defer stopWatches()
	metrics := NewMetrics(o.Registry)
	id := NewIdentity(consul.Agent(), cfg.Service.Name, log)
	id.Namespace = cfg.Service.Namespace
	id.Loaded = metrics.loaded
	cat := NewCatalog(consul, log)
	cat.Namespaces = followedNamespaces(cfg)
	go id.Run(wctx)
	go cat.Run(wctx)
	waits := map[string]<-chan struct{}{"certificate and CA roots": id.Ready(), "mesh services": cat.Synced()}
	resolvers := map[string]*Resolver{}
	for _, u := range cfg.Upstreams {
		if u.remote() {
			r := NewResolver(consul, u, log)
			resolvers[u.Bind] = r
			go r.Run(wctx)
			waits["upstream on "+u.Bind] = r.Synced()
		}
	}
	for what, ch := range waits {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(30 * time.Second):
			log.Warn("still waiting for the Consul agent", "for", what)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-ch:
			}
		}
	}
	loaded := time.Since(o.Started)
	p := &Proxy{Config: cfg, Consul: consul, ID: id, Catalog: cat, Metrics: metrics, Log: log,
		ServerTLS: id.ServerConfig()}
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	listen := func(addr, dir string, handle func(net.Conn)) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s listener on %s: %w", dir, addr, err)
		}
		closers = append(closers, func() { ln.Close() })
		go p.serve(ln, dir, handle)
		return nil
	}
	if cfg.Outbound != "" {
		if err := listen(cfg.Outbound, dirOutbound, p.outbound); err != nil {
			return err
		}
	}
	for _, u := range cfg.Upstreams {
		if err := listen(u.Bind, dirUpstream, p.upstream(u, resolvers[u.Bind])); err != nil {
			return err
		}
	}
	for _, srv := range exposeServers(cfg.Expose) {
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			return fmt.Errorf("expose listener on %s: %w", srv.Addr, err)
		}
		closers = append(closers, func() { _ = srv.Close() })
		go func() { _ = srv.Serve(ln) }()
	}
	if o.Metrics != "" {
		mux := http.NewServeMux()
		path := cmp.Or(o.MetricsPath, "/metrics")
		if o.MergeAppMetrics != "" {
			mux.Handle(path, newMergeHandler(o.Registry, "", o.MergeAppMetrics))
		} else {
			mux.Handle(path, promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
		}
		mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
		srv := &http.Server{Addr: o.Metrics, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", o.Metrics)
		if err != nil {
			return fmt.Errorf("-metrics-addr %s: %w", o.Metrics, err)
		}
		closers = append(closers, func() { _ = srv.Close() })
		go func() { _ = srv.Serve(ln) }()
	}
	// The public listener last: its answering is the sign that the proxy
	// serves (the startup probe, `meshlet proxy wait`), so every listener
	// the app may use is bound by then.
	if err := listen(cfg.Public, dirInbound, p.inbound); err != nil {
		return err
	}
	log.Info("proxy ready", "service", cfg.Service.String(), "public", cfg.Public, "outbound", cfg.Outbound,
		"upstreams", len(cfg.Upstreams), "expose_paths", len(cfg.Expose),
		// Where a slow start went: the registration (the node agent), the
		// certificate and catalog (the Consul agent), the listeners.
		"registration_after", registered.Round(time.Millisecond), "loaded_after", loaded.Round(time.Millisecond),
		"ready_after", time.Since(o.Started).Round(time.Millisecond))
	if o.Ready != nil {
		o.Ready(cfg)
	}
	<-ctx.Done()
	if o.Linger > 0 {
		start := time.Now()
		why := linger(o.Linger, cfg.LocalApp, p.openCount)
		log.Info("stopping", "lingered", time.Since(start).Round(time.Millisecond), "because", why)
	}
	// Stop accepting first, then let what is open finish.
	for _, c := range closers {
		c()
	}
	closers = nil
	p.Drain(o.Drain)
	return nil
}

// waitRegistration polls for the proxy's registration (registrationPoll).
func waitRegistration(ctx context.Context, consul *capi.Agent, id string, log *slog.Logger) (*capi.AgentService, error) {
	start := time.Now()
	lastLog := start
	for {
		s, _, err := consul.Service(id, (&capi.QueryOptions{}).WithContext(ctx))
		if err == nil {
			return s, nil
		}
		var se capi.StatusError
		switch {
		case errors.As(err, &se) && se.Code == http.StatusBadRequest && strings.Contains(se.Body, "Consul Enterprise feature"):
			// -consul-namespace on a Consul without them: no retry helps.
			return nil, fmt.Errorf("proxy %s: the Consul agent refuses Consul Enterprise namespaces (is it Consul Enterprise? without it, turn global.enableConsulNamespaces off): %w", id, err)
		case !errors.As(err, &se) || se.Code != http.StatusNotFound:
			log.Warn("read the proxy's registration", "err", err)
		case time.Since(lastLog) >= 10*time.Second:
			lastLog = time.Now()
			log.Info("waiting for the node agent to register the proxy", "waited", time.Since(start).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("proxy %s not registered on the node's Consul agent: %w", id, ctx.Err())
		case <-time.After(registrationPoll(time.Since(start))):
		}
	}
}

// registrationPoll is how long to wait before asking again: 20 ms in the
// first second, when a new pod's registration is due (the node agent makes it
// on meshlet-cni's notice, before this container starts, and every poll
// saved is start time of the pod: its app waits for this proxy; a poll is
// one local HTTP request to the node's Consul agent), 100 ms until 10 s (the
// node agent missed the notice and waits for kubelet's IP), then 1 s.
func registrationPoll(waited time.Duration) time.Duration {
	switch {
	case waited < time.Second:
		return 20 * time.Millisecond
	case waited < 10*time.Second:
		return 100 * time.Millisecond
	}
	return time.Second
}

// exposeServers serve each expose path alone on its port, in plain HTTP,
// to the app's port: what kubelet's rewritten probes call.
func exposeServers(paths []ExposePath) []*http.Server {
	byPort := map[string]exposeHandler{}
	var out []*http.Server
	for _, e := range paths {
		h, ok := byPort[e.Listen]
		if !ok {
			h = exposeHandler{}
			byPort[e.Listen] = h
			out = append(out, &http.Server{Addr: e.Listen, Handler: h, ReadHeaderTimeout: 10 * time.Second})
		}
		h[e.Path] = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: e.Local})
	}
	return out
}

// exposeHandler forwards the exact paths it holds, nothing under them.
type exposeHandler map[string]http.Handler

func (h exposeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if next, ok := h[r.URL.Path]; ok {
		next.ServeHTTP(w, r)
		return
	}
	http.NotFound(w, r)
}
