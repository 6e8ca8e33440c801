package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/contract"
	podreg "github.com/meshlet/meshlet/daemon/register"
	"github.com/meshlet/meshlet/test/consultest"
)

// freePort is a TCP port nothing listens on now.
func freePort(t testing.TB) int { return consultest.FreePort(t) }

// consulAgents starts a real Consul server and a client agent joined to
// it, on loopback with free ports, as the local cluster lays them out, and
// returns an API client of the client agent. Both are stopped by their
// PIDs when the test ends.
func consulAgents(t testing.TB) *capi.Client {
	cl, _ := consulAgentsIn(t, nil, "127.0.0.1")
	return cl
}

// consulAgentsIn is consulAgents inside netns n (nil: this one), bound to
// bind; the client agent's HTTP API answers on every address of n, and the
// returned API client dials from inside n. The port is the client agent's
// HTTP port.
//
// opts (at most one) turn on ACLs or TLS, below.
func consulAgentsIn(t testing.TB, n ns.NetNS, bind string, opts ...consulOpts) (*capi.Client, int) {
	var o consulOpts
	if len(opts) > 0 {
		o = opts[0]
	}
	t.Helper()
	dir := t.TempDir()
	// Free ports of this netns serve in n too: a fresh netns uses none.
	serf := freePort(t)
	wan := -1
	if o.wan != 0 {
		wan = o.wan
	}
	server := fmt.Sprintf(`datacenter = "dc1"
primary_datacenter = "dc1"
node_name = "server"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = %q
client_addr = %q
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d, serf_wan = %d, server = %d }
connect { enabled = true }
performance { raft_multiplier = 1 }
disable_update_check = true
`, filepath.Join(dir, "server"), bind, bind, freePort(t), serf, wan, freePort(t))
	httpPort := freePort(t)
	clientAddr := bind
	if n != nil {
		clientAddr = "0.0.0.0" // the pods' netns reach it on their gateway
	}
	client := fmt.Sprintf(`datacenter = "dc1"
node_name = "node-1"
data_dir = %q
bind_addr = %q
client_addr = %q
ports { http = %d, https = -1, grpc = -1, grpc_tls = -1, dns = -1, serf_lan = %d }
retry_join = ["%s:%d"]
retry_interval = "1s"
disable_update_check = true
`, filepath.Join(dir, "client"), bind, clientAddr, httpPort, freePort(t), bind, serf)
	if o.management != "" {
		acl := fmt.Sprintf("acl {\n  enabled = true\n  default_policy = \"deny\"\n  tokens {\n    initial_management = %q\n    agent = %q\n  }\n}\n", o.management, o.management)
		server += acl
		client += acl
	}
	if o.tls != nil {
		client = o.tls.configure(t, dir, client, httpPort)
	}
	for name, cfg := range map[string]string{"server": server, "client": client} {
		startConsulAgent(t, n, dir, name, cfg)
	}
	cfg := capi.DefaultConfig()
	cfg.Address = net.JoinHostPort(bind, strconv.Itoa(httpPort))
	cfg.Token = o.management
	if o.tls != nil {
		cfg.Scheme, cfg.TLSConfig.CAPem = "https", []byte(o.tls.CAPEM)
	}
	if n != nil {
		d := &net.Dialer{Timeout: 5 * time.Second}
		cfg.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := n.Do(func(ns.NetNS) error {
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
	}
	cl, err := capi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "Consul's leader elected, the client joined and the CA ready", func() error {
		if _, err := cl.Status().Leader(); err != nil {
			return err
		}
		if _, _, err := cl.Agent().ConnectCARoots(nil); err != nil {
			return err
		}
		ms, err := cl.Agent().Members(false)
		if err != nil || len(ms) != 2 {
			return fmt.Errorf("members %d (%v)", len(ms), err)
		}
		_, _, err = cl.Catalog().Node("node-1", nil)
		return err
	})
	return cl, httpPort
}

// startConsulAgent runs `consul agent` with cfg (in netns n, nil: this
// one) until the test ends, stopped by its PID.
func startConsulAgent(t testing.TB, n ns.NetNS, dir, name, cfg string) {
	t.Helper()
	var start func(*exec.Cmd) error
	if n != nil {
		start = func(cmd *exec.Cmd) error { return n.Do(func(ns.NetNS) error { return cmd.Start() }) }
	}
	consultest.StartAgent(t, dir, name, cfg, nil, start)
}

// eventually retries f every 100 ms until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// meshPod is an injected pod of the default namespace, as the webhook
// leaves it and the kubelet reports it: register turns it into the node
// agent's registrations.
type meshPod struct {
	name string // the service's name; the pod is <name>-1
	ip   string // the pod's IP
	app  int    // the app container's port (0: none, a client)
	// public, when not 0, replaces the proxy's public port (20000, fixed
	// by register.For): proxies sharing one loopback need one each.
	public int
	tproxy bool
	// vip: a Kubernetes Service of the pod's name selects it, with this
	// ClusterIP and port 80, and names its service; "": no Service, the
	// connect-service annotation names it.
	vip       string
	upstreams []contract.Upstream // connect-service-upstreams
}

// pod and services are what the node agent sees of p.
func (p meshPod) pod(tb testing.TB) (*corev1.Pod, []*corev1.Service) {
	tb.Helper()
	// What the user wrote; the webhook reads these and writes the typed
	// registration, the only one of them register.For reads.
	ann := map[string]string{contract.Inject: "true"}
	reg := contract.Registration{Port: p.app, DataPlane: "meshlet", TransparentProxy: p.tproxy, Upstreams: p.upstreams}
	var ups []string
	for _, u := range p.upstreams {
		ups = append(ups, fmt.Sprintf("%s:%d", u.Name, u.LocalPort))
	}
	if len(ups) > 0 {
		ann[contract.Upstreams] = strings.Join(ups, ",")
	}
	var services []*corev1.Service
	if p.vip == "" {
		ann[contract.Service], reg.Service = p.name, p.name
	} else {
		services = append(services, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "default"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": p.name}, ClusterIP: p.vip,
				Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt(p.app)}}}})
	}
	ann[contract.TransparentProxy] = strconv.FormatBool(p.tproxy)
	// What the webhook added.
	ann[contract.InjectStatus] = contract.Injected
	if p.tproxy {
		ann[contract.TProxyStatus] = contract.TProxyEnabled
	}
	enc, err := reg.Encode()
	if err != nil {
		tb.Fatal(err)
	}
	ann[contract.RegistrationKey] = enc
	c := corev1.Container{Name: p.name, Image: p.name}
	if p.app != 0 {
		c.Ports = []corev1.ContainerPort{{ContainerPort: int32(p.app)}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name + "-1", Namespace: "default", UID: types.UID(p.name + "-1-uid"),
			Labels: map[string]string{"app": p.name}, Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{c}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}, services
}

// register registers p with the Consul client agent cl as the node agent
// does: register.For's registrations, written by register.Register, the
// node agent's own code. It returns them: the proxy's ID, the service's
// ID and readiness check.
func register(tb testing.TB, cl *capi.Client, p meshPod) podreg.Registrations {
	tb.Helper()
	pod, services := p.pod(tb)
	regs, err := podreg.For(pod, services)
	if err != nil {
		tb.Fatal(err)
	}
	// The one departure from the node agent's registrations: every proxy of a
	// test on loopback shares one address, and cannot all listen on the
	// port a pod's proxy has to itself.
	if p.public != 0 {
		regs.Proxy.Port = p.public
	}
	if err := podreg.Register(cl.Agent(), regs, nil); err != nil {
		tb.Fatal(err)
	}
	return regs
}
