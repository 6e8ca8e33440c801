package dataplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/dataplane/originaldst"
)

// Timeouts of a connection's set-up; once spliced, a connection lives as
// long as its two sides.
const (
	dialTimeout      = 5 * time.Second
	handshakeTimeout = 10 * time.Second
	// maxAttempts bounds the instances tried for one outbound connection.
	maxAttempts = 3
)

// Proxy is one pod's sidecar: its configuration, identity and view of the
// mesh, and the connections it carries.
type Proxy struct {
	Config  Config
	Consul  *capi.Client
	ID      *Identity
	Catalog *Catalog
	Metrics *Metrics
	Log     *slog.Logger

	// ServerTLS is the public listener's, ID.ServerConfig() built once:
	// its callbacks read the identity of the moment.
	ServerTLS *tls.Config

	next    atomic.Uint64 // round robin over instances
	ejected ejections     // instances to try last (dial.go)
	conns   sync.WaitGroup
	mu      sync.Mutex
	open    map[net.Conn]struct{}
}

// track registers c until the returned func is called; Drain closes what
// is still tracked.
func (p *Proxy) track(c net.Conn, dir string) func() {
	p.mu.Lock()
	if p.open == nil {
		p.open = map[net.Conn]struct{}{}
	}
	p.open[c] = struct{}{}
	p.mu.Unlock()
	p.conns.Add(1)
	p.Metrics.active.WithLabelValues(dir).Inc()
	return func() {
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
		p.Metrics.active.WithLabelValues(dir).Dec()
		p.conns.Done()
	}
}

// Drain waits up to d for open connections to end, then closes them.
func (p *Proxy) Drain(d time.Duration) {
	done := make(chan struct{})
	go func() { p.conns.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(d):
	}
	p.mu.Lock()
	n := len(p.open)
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.Log.Info("closed connections still open after the drain", "count", n, "drain", d)
	<-done
}

// serve accepts on ln until it is closed, handling each connection on its
// own goroutine.
func (p *Proxy) serve(ln net.Listener, dir string, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.Log.Error("accept", "listener", ln.Addr().String(), "direction", dir, "err", err)
			}
			return
		}
		done := p.track(c, dir)
		go func() {
			defer done()
			handle(c)
		}()
	}
}

// inbound is a connection to the public listener: mTLS, then the caller
// authorized by the Consul agent (intentions, as of now), then the app.
func (p *Proxy) inbound(raw net.Conn) {
	log := p.Log.With("direction", dirInbound, "peer", raw.RemoteAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	conn := tls.Server(raw, p.ServerTLS)
	if err := conn.HandshakeContext(ctx); err != nil {
		res := resBadTLS
		if errors.Is(err, io.EOF) {
			res = resPortCheck
		}
		p.result(log, dirInbound, res, err)
		raw.Close()
		return
	}
	uri, serial, err := peerOf(conn.ConnectionState())
	if err != nil {
		p.result(log, dirInbound, resBadTLS, err)
		raw.Close()
		return
	}
	log = log.With("caller", uri.String())
	auth, err := p.Consul.Agent().ConnectAuthorize(&capi.AgentAuthorizeParams{
		Target: p.Config.Service.Name, ClientCertURI: uri.String(), ClientCertSerial: serial})
	switch {
	case err != nil:
		// Fail closed: a caller is let in only on the Consul agent's word.
		p.result(log, dirInbound, resError, fmt.Errorf("authorize with the Consul agent: %w", err))
		raw.Close()
		return
	case !auth.Authorized:
		// Closed without a byte: the caller's client sees an empty reply.
		p.result(log, dirInbound, resDenied, errors.New(auth.Reason))
		raw.Close()
		return
	}
	if p.Config.LocalApp == "" {
		p.result(log, dirInbound, resError, errors.New("the service has no port: nothing listens behind this proxy"))
		raw.Close()
		return
	}
	app, err := net.DialTimeout("tcp", p.Config.LocalApp, dialTimeout)
	if err != nil {
		p.result(log, dirInbound, resError, fmt.Errorf("dial the app at %s: %w", p.Config.LocalApp, err))
		raw.Close()
		return
	}
	p.result(log, dirInbound, resOK, nil)
	p.carry(dirInbound, conn, app)
}

// outbound is a connection the pod's NAT rules redirected: to a mesh
// service when its original destination is one's virtual address,
// otherwise on to where it was going.
func (p *Proxy) outbound(c net.Conn) {
	log := p.Log.With("direction", dirOutbound, "app", c.RemoteAddr().String())
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return
	}
	dst, err := originaldst.Get(tc)
	if err != nil {
		p.result(log, dirOutbound, resError, err)
		reset(c)
		return
	}
	log = log.With("destination", dst.String())
	if key, ok := p.Catalog.Lookup(dst.Addr()); ok {
		p.toService(log, dirOutbound, c, key.String(), p.Catalog.Instances(key))
		return
	}
	if key, in, ok := p.Catalog.LookupInstance(dst.Addr()); ok {
		// A pod's own IP (a StatefulSet's pod through its headless
		// Service): that very instance, over mTLS, whatever its health,
		// since the caller chose it. Its proxy serves the app's port.
		log = log.With("service", key.String(), "instance", in.Addr.String())
		up, err := p.dialInstance(in)
		if err != nil {
			p.result(log, dirOutbound, resError, err)
			reset(c)
			return
		}
		p.result(log, dirOutbound, resOK, nil)
		p.carry(dirOutbound, c, up)
		return
	}
	if local, _ := netip.ParseAddrPort(c.LocalAddr().String()); dst == local {
		// Straight to the listener, not redirected: it would loop.
		p.result(log, dirPassthrough, resError, errors.New("connection addressed to the outbound listener itself"))
		reset(c)
		return
	}
	up, err := net.DialTimeout("tcp", dst.String(), dialTimeout)
	if err != nil {
		p.result(log, dirPassthrough, resError, err)
		reset(c)
		return
	}
	p.result(log, dirPassthrough, resOK, nil)
	p.carry(dirPassthrough, c, up)
}

// toService carries c to a healthy one of a service's instances over mTLS.
func (p *Proxy) toService(log *slog.Logger, dir string, c net.Conn, service string, instances []Instance) {
	log = log.With("service", service)
	up, err := p.dialService(service, instances)
	if err != nil {
		res := resError
		if errors.Is(err, errNoHealthy) {
			res = resNoHealthy
		}
		p.result(log, dir, res, err)
		reset(c)
		return
	}
	p.result(log.With("instance", up.RemoteAddr().String()), dir, resOK, nil)
	p.carry(dir, c, up)
}

var errNoHealthy = errors.New("no healthy instance")

// dialService opens mTLS to a healthy one of a service's instances,
// trying up to maxAttempts of them, round robin, those whose dial failed
// lately last, a slow dial raced by the next (dial.go).
func (p *Proxy) dialService(service string, instances []Instance) (net.Conn, error) {
	var healthy []Instance
	for _, in := range instances {
		if in.Healthy {
			healthy = append(healthy, in)
		}
	}
	if len(healthy) == 0 {
		return nil, fmt.Errorf("service %s: %w", service, errNoHealthy)
	}
	start := int(p.next.Add(1) % uint64(len(healthy)))
	cands := p.ejected.order(healthy, start, maxAttempts, time.Now())
	c, err := raceDial(cands, hedgeDelay, p.dialInstance, p.outrun, p.dialed)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", service, err)
	}
	return c, nil
}

// outrun: another instance answered first while this one's dial was
// still under way; tried after the others for a while (dial.go).
func (p *Proxy) outrun(in Instance) {
	p.ejected.eject(in.Addr, time.Now())
	p.Metrics.dials.WithLabelValues(dialOutrun).Inc()
}

// dialed is the end of one instance's dial: failed, it is tried after the
// others for a while; connected, no longer.
func (p *Proxy) dialed(in Instance, err error) {
	if err != nil {
		p.ejected.eject(in.Addr, time.Now())
		p.Metrics.dials.WithLabelValues(dialFailed).Inc()
		p.Log.Debug("dial to an instance failed; tried after the others for a while", "instance", in.Addr.String(), "err", err, "for", ejectFor)
		return
	}
	p.ejected.restore(in.Addr)
	p.Metrics.dials.WithLabelValues(dialOK).Inc()
}

func (p *Proxy) dialInstance(in Instance) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout+handshakeTimeout)
	defer cancel()
	raw, err := (&net.Dialer{Timeout: dialTimeout}).DialContext(ctx, "tcp", in.Addr.String())
	if err != nil {
		return nil, err
	}
	want := in.ID
	want.TrustDomain = p.ID.TrustDomain()
	c := tls.Client(raw, p.ID.ClientConfig(want))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("%s: %w", in.Addr, err)
	}
	return c, nil
}

// upstream is a connection to an explicit upstream's listener: to the
// local catalog's instances of its service, or, for another datacenter's
// service or a prepared query, to those its resolver follows.
func (p *Proxy) upstream(u Upstream, r *Resolver) func(net.Conn) {
	name := u.Service.String()
	switch {
	case u.PreparedQuery:
		name = "prepared query " + u.Service.Name
	case u.Datacenter != "":
		name += " in datacenter " + u.Datacenter
	}
	return func(c net.Conn) {
		log := p.Log.With("direction", dirUpstream, "app", c.RemoteAddr().String())
		if r != nil {
			p.toService(log, dirUpstream, c, name, r.Instances())
			return
		}
		p.toService(log, dirUpstream, c, name, p.Catalog.Instances(u.Service))
	}
}

// carry splices two connections and counts their bytes.
func (p *Proxy) carry(dir string, caller, callee net.Conn) {
	sent, recv := splice(caller, callee)
	p.Metrics.bytes.WithLabelValues(dir, "sent").Add(float64(sent))
	p.Metrics.bytes.WithLabelValues(dir, "received").Add(float64(recv))
}

// result counts a connection's set-up and logs it: at debug level when it
// went through, at info when refused (a denial is news to whoever
// debugs an intention), at warn on failure.
func (p *Proxy) result(log *slog.Logger, dir, res string, err error) {
	p.Metrics.conns.WithLabelValues(dir, res).Inc()
	switch res {
	case resOK:
		log.Debug("connection")
	case resPortCheck:
		log.Debug("connection closed before its handshake: a port check")
	case resDenied:
		log.Info("connection denied", "reason", err)
	default:
		log.Warn("connection failed", "result", res, "err", err)
	}
}
