package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// bootTimeout bounds each readiness wait; a cold cluster needs ~20 s in all.
const bootTimeout = 90 * time.Second

// waitFor polls check until it succeeds, the context ends or bootTimeout
// passes; the error names the component and its last complaint.
func (c *Cluster) waitFor(ctx context.Context, what string, check func(context.Context) error) error {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	var last error
	for {
		if last = check(ctx); last == nil {
			c.Log.Info("ready", "component", what, "after", time.Since(t0).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s (see %s): %w", what, time.Since(t0).Round(time.Second), c.path("logs"), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, cl *http.Client, url string) error {
	if cl == nil {
		cl = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// adminHTTP is an HTTPS client that authenticates as the cluster admin.
func (c *Cluster) adminHTTP() (*http.Client, error) {
	pki := c.path("pki")
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "admin.crt"), filepath.Join(pki, "admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

// Clientset returns an admin client of the running cluster.
func (c *Cluster) Clientset() (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (c *Cluster) waitReady(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	checks := []struct {
		what  string
		check func(context.Context) error
	}{
		{"node " + NodeName, func(ctx context.Context) error {
			n, err := cs.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
			return errors.New("node not Ready")
		}},
		{"kube-controller-manager", func(ctx context.Context) error {
			_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
			return err
		}},
		{"kube-scheduler", func(ctx context.Context) error {
			return httpOK(ctx, insecureLocal, "https://127.0.0.1:10259/healthz")
		}},
		{"kube-proxy", func(ctx context.Context) error { return httpOK(ctx, nil, "http://127.0.0.1:10256/healthz") }},
		{"consul", c.consulReady},
	}
	for _, ch := range checks {
		if err := c.waitFor(ctx, ch.what, ch.check); err != nil {
			return err
		}
	}
	return nil
}

// dnsAnswers asks a ready CoreDNS pod behind kube-dns, at the pod's own
// address (the host routes no ClusterIP but ClusterDNS, whose kube-proxy
// rule is among what is waited for), for the API server's Service name and
// checks the answer is its ClusterIP: then the kubernetes plugin has
// synced with the API server and kube-proxy has an endpoint to send
// ClusterDNS to.
func dnsAnswers(ctx context.Context, cs kubernetes.Interface) error {
	addr, err := dnsEndpoint(ctx, cs)
	if err != nil {
		return err
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(addr, "53"))
	}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	name := "kubernetes.default.svc." + ClusterZone + "."
	ips, err := r.LookupNetIP(ctx, "ip4", name)
	if err != nil {
		return fmt.Errorf("CoreDNS at %s: %w", addr, err)
	}
	if len(ips) != 1 || ips[0].String() != APIServerIP {
		return fmt.Errorf("CoreDNS at %s answers %s with %v, want %s", addr, name, ips, APIServerIP)
	}
	return nil
}

// waitDNS waits until cluster DNS answers (dnsAnswers).
func (c *Cluster) waitDNS(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "cluster DNS ("+DNSService+" "+ClusterDNS+")", func(ctx context.Context) error {
		return dnsAnswers(ctx, cs)
	})
}

// insecureLocal reaches the components' self-signed health endpoints on
// loopback; nothing secret crosses it.
var insecureLocal = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
}

// requiredCommands are what Up execs besides bin/; make tools installs them.
var requiredCommands = []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "iptables",
	"ip6tables", "iptables-restore", "ip", "ctr", "conntrack"}

func (c *Cluster) checkPrerequisites() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the cluster runs kubelet, containerd and changes the host network)")
	}
	for _, cmd := range requiredCommands {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, cmd+" (run make tools)")
		}
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "consul", "coredns", "http-echo", "meshlet", "meshlet-cni", "pause", "curl"} {
		if _, err := os.Stat(c.bin(b)); err != nil {
			missing = append(missing, c.bin(b)+" (run make tools build)")
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(c.refPluginDir(), p)); err != nil {
			missing = append(missing, filepath.Join(c.refPluginDir(), p)+" (run make build)")
		}
	}
	if _, err := os.Stat(busyboxPath); err != nil {
		missing = append(missing, busyboxPath+" (run make tools)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("local cluster prerequisites missing: %v", missing)
	}
	return nil
}
