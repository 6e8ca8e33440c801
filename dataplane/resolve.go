package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// queryRefresh is how often a prepared query is executed again: Consul
// has no blocking form of a query's execution, and its answer moves with
// health and failover.
const queryRefresh = 10 * time.Second

// Resolver follows the instances of one upstream that the local catalog
// does not hold: a service of another datacenter, followed by a blocking
// query of that datacenter's Connect-capable instances; or a prepared
// query, executed for its Connect-capable results every queryRefresh.
type Resolver struct {
	consul *capi.Client
	up     Upstream
	log    *slog.Logger

	instances atomic.Pointer[[]Instance]
	synced    chan struct{}
	once      sync.Once
}

// NewResolver is u's Resolver; Run fills it.
func NewResolver(consul *capi.Client, u Upstream, log *slog.Logger) *Resolver {
	r := &Resolver{consul: consul, up: u, synced: make(chan struct{}),
		log: log.With("upstream", u.Service.Name, "datacenter", u.Datacenter, "prepared_query", u.PreparedQuery)}
	r.instances.Store(&[]Instance{})
	return r
}

// Synced is closed once the first answer came, or the first attempt
// failed: a remote datacenter that cannot be reached must not hold the
// pod's local upstreams back.
func (r *Resolver) Synced() <-chan struct{} { return r.synced }

// Instances are the upstream's instances, last read.
func (r *Resolver) Instances() []Instance { return *r.instances.Load() }

// Run follows the upstream until ctx ends.
func (r *Resolver) Run(ctx context.Context) {
	var index uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		ins, next, err := r.read(ctx, index)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Error("resolve an upstream", "err", err, "retry_in", backoff)
				r.once.Do(func() { close(r.synced) })
				sleep(ctx, backoff)
				backoff = min(2*backoff, 30*time.Second)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		r.instances.Store(&ins)
		r.once.Do(func() { close(r.synced) })
		if r.up.PreparedQuery {
			sleep(ctx, queryRefresh)
			continue
		}
		// An index going back (a server's snapshot restored) starts over.
		if next < index {
			next = 0
		}
		index = next
	}
}

// read is one answer: the instances and the index to block on next.
func (r *Resolver) read(ctx context.Context, index uint64) ([]Instance, uint64, error) {
	k := r.up.Service
	if r.up.PreparedQuery {
		q := (&capi.QueryOptions{Connect: true, Namespace: k.Namespace, Partition: k.Partition, Datacenter: r.up.Datacenter}).WithContext(ctx)
		res, _, err := r.consul.PreparedQuery().Execute(k.Name, q)
		if err != nil {
			return nil, 0, fmt.Errorf("execute prepared query %s: %w", k.Name, err)
		}
		// The query's own health filter (critical instances left out,
		// warning ones kept unless it says OnlyPassing) decides.
		nodes := make([]*capi.ServiceEntry, len(res.Nodes))
		for i := range res.Nodes {
			nodes[i] = &res.Nodes[i]
		}
		return instancesOf(nodes, true), 0, nil
	}
	q := (&capi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute, Datacenter: r.up.Datacenter,
		Namespace: k.Namespace, Partition: k.Partition}).WithContext(ctx)
	entries, meta, err := r.consul.Health().Connect(k.Name, "", false, q)
	if err != nil {
		return nil, 0, fmt.Errorf("follow service %s in datacenter %s: %w", k.Name, r.up.Datacenter, err)
	}
	return instancesOf(entries, false), meta.LastIndex, nil
}

// instancesOf are the sidecar instances among entries; healthy marks them
// all healthy, as a prepared query's results are.
func instancesOf(entries []*capi.ServiceEntry, healthy bool) []Instance {
	var ins []Instance
	for _, e := range entries {
		if _, in, ok := instanceFrom(e); ok {
			in.Healthy = in.Healthy || healthy
			ins = append(ins, in)
		}
	}
	sortInstances(ins)
	return ins
}
