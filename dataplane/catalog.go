package dataplane

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// ServiceKey names a mesh service.
type ServiceKey struct{ Partition, Namespace, Name string }

func (k ServiceKey) String() string {
	if k.Namespace == "" && k.Partition == "" {
		return k.Name
	}
	return orDefault(k.Partition) + "/" + orDefault(k.Namespace) + "/" + k.Name
}

// Instance is one sidecar of a mesh service: where its public listener
// is, the identity it must present, and whether the service is healthy
// there (the instance's checks and its node's, as Consul aggregates them).
type Instance struct {
	Addr    netip.AddrPort
	ID      ServiceID // TrustDomain left empty: the roots' is used
	Healthy bool
}

// meshIndex is what a connection needs to find its upstream: the virtual
// addresses of mesh services, and each service's instances.
type meshIndex struct {
	byVIP     map[netip.Addr]ServiceKey
	instances map[ServiceKey][]Instance
	// byAddr is each instance by its address (a pod's IP): a connection
	// to a pod IP, as a StatefulSet's clients make through a headless
	// Service (web-0.web), goes to that very instance.
	byAddr map[netip.Addr]instanceOf
}

// instanceOf is one instance and its service.
type instanceOf struct {
	key ServiceKey
	in  Instance
}

// virtualTags are the tagged addresses that name a service's virtual IP:
// the node agent's (the Kubernetes Service's ClusterIP) and the one
// Consul's servers assign in transparent mode.
var virtualTags = []string{"virtual", "consul-virtual"}

// buildIndex indexes the connect-proxy entries of every proxy service.
// A virtual address claimed by two services goes to neither: sending a
// connection to the wrong service is worse than passing it through.
func buildIndex(byProxy map[string][]*capi.ServiceEntry) *meshIndex {
	idx := &meshIndex{byVIP: map[netip.Addr]ServiceKey{}, instances: map[ServiceKey][]Instance{}, byAddr: map[netip.Addr]instanceOf{}}
	conflict := map[netip.Addr]bool{}
	addrConflict := map[netip.Addr]bool{}
	for _, entries := range byProxy {
		for _, e := range entries {
			s := e.Service
			if s == nil || s.Kind != capi.ServiceKindConnectProxy || s.Proxy == nil || s.Proxy.DestinationServiceName == "" {
				continue
			}
			key, in, ok := instanceFrom(e)
			for _, tag := range virtualTags {
				ta, ok := s.TaggedAddresses[tag]
				if !ok {
					continue
				}
				vip, err := netip.ParseAddr(ta.Address)
				if err != nil {
					continue
				}
				vip = vip.Unmap()
				if prev, ok := idx.byVIP[vip]; ok && prev != key {
					conflict[vip] = true
				}
				idx.byVIP[vip] = key
			}
			if !ok {
				continue
			}
			idx.instances[key] = append(idx.instances[key], in)
			// An address the service has no address of its own for is its
			// node's, shared by every service there: not one instance's.
			if s.Address != "" {
				if prev, ok := idx.byAddr[in.Addr.Addr()]; ok && prev.key != key {
					addrConflict[in.Addr.Addr()] = true
				}
				idx.byAddr[in.Addr.Addr()] = instanceOf{key, in}
			}
		}
	}
	for vip := range conflict {
		delete(idx.byVIP, vip)
	}
	for a := range addrConflict {
		delete(idx.byAddr, a)
	}
	for k := range idx.instances {
		sortInstances(idx.instances[k])
	}
	return idx
}

// instanceFrom is the instance a sidecar proxy's entry describes, and
// the service it fronts; false for an entry that is not a sidecar's or
// has no address to dial.
func instanceFrom(e *capi.ServiceEntry) (ServiceKey, Instance, bool) {
	s := e.Service
	if s == nil || s.Kind != capi.ServiceKindConnectProxy || s.Proxy == nil || s.Proxy.DestinationServiceName == "" {
		return ServiceKey{}, Instance{}, false
	}
	key := ServiceKey{Partition: s.Partition, Namespace: s.Namespace, Name: s.Proxy.DestinationServiceName}
	addr := s.Address
	if addr == "" && e.Node != nil {
		addr = e.Node.Address
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || s.Port <= 0 || s.Port > 65535 {
		return key, Instance{}, false
	}
	dc := ""
	if e.Node != nil {
		dc = e.Node.Datacenter
	}
	return key, Instance{
		Addr:    netip.AddrPortFrom(ip.Unmap(), uint16(s.Port)),
		ID:      ServiceID{Partition: s.Partition, Namespace: orDefault(s.Namespace), Datacenter: dc, Service: key.Name},
		Healthy: e.Checks.AggregatedStatus() == capi.HealthPassing,
	}, true
}

func sortInstances(ins []Instance) {
	sort.Slice(ins, func(i, j int) bool { return ins[i].Addr.Compare(ins[j].Addr) < 0 })
}

// Catalog keeps a meshIndex current: per Consul namespace it follows,
// one blocking query lists the proxy services, and one per proxy service
// follows its instances and health. Connections read the index; they
// never query Consul themselves.
type Catalog struct {
	consul *capi.Client
	log    *slog.Logger
	// Namespaces are the Consul Enterprise namespaces followed, set
	// before Run: the proxy's own and its upstreams' (followedNamespaces).
	// Empty: the client's own alone, with no ns= sent, as Consul without
	// Enterprise namespaces requires.
	Namespaces []string

	idx     atomic.Pointer[meshIndex]
	mu      sync.Mutex
	entries map[string][]*capi.ServiceEntry // by entryKey
	synced  chan struct{}
	once    sync.Once
}

// NewCatalog is a Catalog; Run fills it.
func NewCatalog(consul *capi.Client, log *slog.Logger) *Catalog {
	c := &Catalog{consul: consul, log: log, entries: map[string][]*capi.ServiceEntry{}, synced: make(chan struct{})}
	c.idx.Store(buildIndex(nil))
	return c
}

// followedNamespaces are the Consul namespaces a proxy of cfg follows:
// its own (its transparent proxy's reach, as its Kubernetes namespace's
// Services) and each explicit upstream's. Without Enterprise namespaces
// every one is "", and so is the only one.
func followedNamespaces(cfg Config) []string {
	nss := []string{cfg.Service.Namespace}
	for _, u := range cfg.Upstreams {
		if !slices.Contains(nss, u.Service.Namespace) {
			nss = append(nss, u.Service.Namespace)
		}
	}
	return nss
}

// entryKey is a proxy service's key in entries: its name is unique
// within its namespace only.
func entryKey(ns, name string) string { return ns + "/" + name }

// Synced is closed once the list of proxy services and each one's
// instances have been read once, in every namespace followed.
func (c *Catalog) Synced() <-chan struct{} { return c.synced }

// Lookup is the mesh service whose virtual address is ip.
func (c *Catalog) Lookup(ip netip.Addr) (ServiceKey, bool) {
	k, ok := c.idx.Load().byVIP[ip.Unmap()]
	return k, ok
}

// LookupInstance is the mesh instance at ip (a pod's IP), and its service.
func (c *Catalog) LookupInstance(ip netip.Addr) (ServiceKey, Instance, bool) {
	i, ok := c.idx.Load().byAddr[ip.Unmap()]
	return i.key, i.in, ok
}

// Instances are the service's sidecars, healthy or not.
func (c *Catalog) Instances(k ServiceKey) []Instance { return c.idx.Load().instances[k] }

// proxyFilter selects the services that are sidecar proxies.
const proxyFilter = `ServiceKind == "connect-proxy"`

// Run follows the catalog until ctx ends.
func (c *Catalog) Run(ctx context.Context) {
	nss := c.Namespaces
	if len(nss) == 0 {
		nss = []string{""}
	}
	var first, all sync.WaitGroup
	first.Add(len(nss))
	all.Add(len(nss))
	for _, ns := range nss {
		go func() {
			defer all.Done()
			c.follow(ctx, ns, sync.OnceFunc(first.Done))
		}()
	}
	go func() {
		first.Wait()
		if ctx.Err() == nil {
			c.once.Do(func() { close(c.synced) })
		}
	}()
	all.Wait()
}

// follow lists namespace ns's proxy services ("": the client's own) and
// follows each one's instances until ctx ends; synced is called once
// the first list and its services were read, or when follow returns.
func (c *Catalog) follow(ctx context.Context, ns string, synced func()) {
	defer synced()
	log := c.log
	if ns != "" {
		log = log.With("consul_namespace", ns)
	}
	watching := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range watching {
			cancel()
		}
	}()
	var index uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		q := (&capi.QueryOptions{Namespace: ns, WaitIndex: index, WaitTime: 5 * time.Minute, Filter: proxyFilter}).WithContext(ctx)
		names, meta, err := c.consul.Catalog().Services(q)
		if err != nil {
			if ctx.Err() == nil {
				log.Error("list the mesh's proxy services", "err", err, "retry_in", backoff)
				sleep(ctx, backoff)
				backoff = min(2*backoff, 30*time.Second)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		index = meta.LastIndex
		var first sync.WaitGroup
		for name := range names {
			if _, ok := watching[name]; ok {
				continue
			}
			wctx, cancel := context.WithCancel(ctx)
			watching[name] = cancel
			first.Add(1)
			go c.watchService(wctx, log, ns, name, &first)
		}
		for name, cancel := range watching {
			if _, ok := names[name]; !ok {
				cancel()
				delete(watching, name)
				c.set(context.Background(), entryKey(ns, name), nil)
			}
		}
		first.Wait()
		synced()
	}
}

// watchService follows one proxy service's instances; first is told once
// they were read (or could not be).
func (c *Catalog) watchService(ctx context.Context, log *slog.Logger, ns, name string, first *sync.WaitGroup) {
	var index uint64
	backoff := 100 * time.Millisecond
	told := false
	tell := func() {
		if !told {
			told = true
			first.Done()
		}
	}
	defer tell()
	for ctx.Err() == nil {
		q := (&capi.QueryOptions{Namespace: ns, WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx)
		entries, meta, err := c.consul.Health().Service(name, "", false, q)
		if err != nil {
			if ctx.Err() == nil {
				log.Error("follow a proxy service", "service", name, "err", err, "retry_in", backoff)
				tell()
				sleep(ctx, backoff)
				backoff = min(2*backoff, 30*time.Second)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		if meta.LastIndex < index {
			index = 0
		} else {
			index = meta.LastIndex
		}
		c.set(ctx, entryKey(ns, name), entries)
		tell()
	}
}

// set stores a proxy service's entries; from a watcher whose service left
// the list (ctx cancelled, checked under the lock the removal takes too) it
// stores nothing, so a late answer cannot bring the service back.
func (c *Catalog) set(ctx context.Context, key string, entries []*capi.ServiceEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	if entries == nil {
		delete(c.entries, key)
	} else {
		c.entries[key] = entries
	}
	c.idx.Store(buildIndex(c.entries))
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
