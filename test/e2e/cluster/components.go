package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

func (c *Cluster) writePKI() error {
	dir := c.path("pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	clusterCA, err := newCA(dir, "ca", "meshlet-local-ca")
	if err != nil {
		return err
	}
	frontCA, err := newCA(dir, "front-proxy-ca", "meshlet-front-proxy-ca")
	if err != nil {
		return err
	}
	specs := []certSpec{
		{file: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []net.IP{net.ParseIP(NodeIP), net.ParseIP(APIServerIP), net.ParseIP("127.0.0.1")}},
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		{file: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}},
		{file: "kubelet", cn: "system:node:" + NodeName, orgs: []string{"system:nodes"}},
		{file: "kube-controller-manager", cn: "system:kube-controller-manager"},
		{file: "kube-scheduler", cn: "system:kube-scheduler"},
		{file: "kube-proxy", cn: "system:kube-proxy"},
	}
	for _, s := range specs {
		if err := clusterCA.issue(dir, s); err != nil {
			return err
		}
	}
	if err := frontCA.issue(dir, certSpec{file: "front-proxy-client", cn: "front-proxy-client"}); err != nil {
		return err
	}
	if err := writeServiceAccountKeys(dir); err != nil {
		return err
	}
	for _, user := range []string{"admin", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		if err := c.writeKubeconfig(user); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) writeKubeconfig(user string) error {
	pki := c.path("pki")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: meshlet-local
  cluster:
    server: https://%s:6443
    certificate-authority: %s/ca.crt
users:
- name: %s
  user:
    client-certificate: %s/%s.crt
    client-key: %s/%s.key
contexts:
- name: meshlet-local
  context: {cluster: meshlet-local, user: %s}
current-context: meshlet-local
`, NodeIP, pki, user, pki, user, pki, user, user)
	return os.WriteFile(c.path(user+".kubeconfig"), []byte(cfg), 0o600)
}

// writeCNI lays out the CNI dirs containerd reads: the reference plugins
// (bin/cni, built by make build) and a conflist bridge + host-local + portmap-free
// chain with no default route and no masquerade.
func (c *Cluster) writeCNI() error {
	if err := os.MkdirAll(c.CNIBinDir(), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(c.CNIConfDir(), 0o755); err != nil {
		return err
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		src := filepath.Join(c.refPluginDir(), p)
		if err := copyFile(src, filepath.Join(c.CNIBinDir(), p), 0o755); err != nil {
			return fmt.Errorf("install CNI plugin %s: %w", p, err)
		}
	}
	return c.writeConflist(c.Conflist())
}

// ConflistFile is the node's conflist, the one containerd reads.
func (c *Cluster) ConflistFile() string {
	return filepath.Join(c.CNIConfDir(), "10-meshlet-pods.conflist")
}

// writeConflist rewrites the conflist in place. containerd's CRI plugin
// ignores Create events in the conf dir (a file renamed into it is one) and
// reloads only on Write/Rename/Remove, so an atomic rename would go unseen.
func (c *Cluster) writeConflist(content string) error {
	f, err := os.OpenFile(c.ConflistFile(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(content)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// refPluginDir holds the reference plugins make build compiles.
func (c *Cluster) refPluginDir() string { return c.bin("cni") }

// Conflist is the node's primary CNI network: bridge + host-local with no
// default route and no masquerade (pods reach the node, on-link, and
// Services only), with the extra plugins chained after it.
func (c *Cluster) Conflist(chained ...map[string]any) string {
	bridge := map[string]any{
		"type": "bridge", "bridge": Bridge, "isGateway": true, "isDefaultGateway": false,
		"ipMasq": false, "hairpinMode": true,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": c.path("cni", "ipam"),
			"ranges":  [][]map[string]string{{{"subnet": PodCIDR, "gateway": NodeIP}}},
			"routes":  []map[string]string{{"dst": ServiceCIDR}},
		},
	}
	plugins := append([]map[string]any{bridge}, chained...)
	b, _ := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "name": NetworkName, "plugins": plugins}, "", "  ")
	return string(b) + "\n"
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// runDir holds the runtime's sockets: a unix socket path must stay under
// 108 bytes, which a deep checkout would overrun.
const runDir = "/run/meshlet-localcluster"

func (c *Cluster) containerdSock() string { return filepath.Join(runDir, "containerd.sock") }

func (c *Cluster) startStorageAndRuntime(ctx context.Context) error {
	etcd := []string{"etcd", "--name=meshlet", "--data-dir=" + c.path("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=meshlet=http://127.0.0.1:2380", "--listen-metrics-urls=http://127.0.0.1:2381"}
	if err := c.start("etcd", etcd); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, c.path("containerd", "root"), c.path("containerd", "state"), c.containerdSock(),
		filepath.Join(runDir, "containerd.sock.ttrpc"), PauseImage, c.CNIBinDir(), c.CNIConfDir())
	for _, d := range []string{c.path("containerd"), runDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	cfgPath := c.path("containerd", "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	if err := c.start("containerd", []string{"containerd", "--config", cfgPath}); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "etcd", func(ctx context.Context) error { return httpOK(ctx, nil, "http://127.0.0.1:2379/health") }); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "containerd", func(ctx context.Context) error { return c.runtimeReady(ctx) }); err != nil {
		return err
	}
	return nil
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	pki := c.path("pki")
	p := func(f string) string { return filepath.Join(pki, f) }
	api := []string{c.bin("kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + NodeIP, "--advertise-address=" + NodeIP, "--secure-port=6443",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--client-ca-file=" + p("ca.crt"),
		"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
		"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-key-file=" + p("sa.pub"), "--service-account-signing-key-file=" + p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--enable-aggregator-routing=true",
		"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-username-headers=X-Remote-User",
		"--proxy-client-cert-file=" + p("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p("front-proxy-client.key"),
	}
	if err := c.start("kube-apiserver", api); err != nil {
		return err
	}
	// Images load while the API server starts.
	imgErr := make(chan error, 1)
	go func() { imgErr <- c.loadImages(ctx) }()
	cl, err := c.adminHTTP()
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver", func(ctx context.Context) error {
		return httpOK(ctx, cl, "https://"+NodeIP+":6443/readyz")
	}); err != nil {
		return err
	}
	cm := []string{c.bin("kube-controller-manager"),
		"--kubeconfig=" + c.path("kube-controller-manager.kubeconfig"),
		"--authentication-kubeconfig=" + c.path("kube-controller-manager.kubeconfig"),
		"--authorization-kubeconfig=" + c.path("kube-controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1", "--leader-elect=false",
		"--use-service-account-credentials",
		"--service-account-private-key-file=" + p("sa.key"), "--root-ca-file=" + p("ca.crt"),
		"--cluster-signing-cert-file=" + p("ca.crt"), "--cluster-signing-key-file=" + p("ca.key"),
		"--cluster-cidr=" + PodCIDR, "--allocate-node-cidrs=false",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--flex-volume-plugin-dir=" + c.path("kcm-flexvolume"),
	}
	sched := []string{c.bin("kube-scheduler"),
		"--kubeconfig=" + c.path("kube-scheduler.kubeconfig"),
		"--authentication-kubeconfig=" + c.path("kube-scheduler.kubeconfig"),
		"--authorization-kubeconfig=" + c.path("kube-scheduler.kubeconfig"),
		"--bind-address=127.0.0.1", "--leader-elect=false",
	}
	if err := c.start("kube-controller-manager", cm); err != nil {
		return err
	}
	if err := c.start("kube-scheduler", sched); err != nil {
		return err
	}
	if err := <-imgErr; err != nil {
		return fmt.Errorf("load images: %w", err)
	}
	return nil
}

func (c *Cluster) startNode(ctx context.Context) error {
	pki := c.path("pki")
	if err := os.WriteFile(c.path("resolv.conf"), []byte("nameserver "+ClusterDNS+"\n"), 0o644); err != nil {
		return err
	}
	// Eviction and image GC thresholds are tiny: the node must never evict
	// test pods or delete the locally built images, which no registry holds.
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://%s
clusterDNS: [%s]
clusterDomain: cluster.local
resolvConf: %s
makeIPTablesUtilChains: false
protectKernelDefaults: false
evictionHard: {memory.available: "50Mi", nodefs.available: "50Mi", imagefs.available: "50Mi", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: %s
volumePluginDir: %s
serializeImagePulls: false
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
`, NodeIP, pki, c.containerdSock(), ClusterDNS, c.path("resolv.conf"), c.path("pod-logs"), c.path("kubelet-plugins"))
	if err := os.WriteFile(c.path("kubelet.yaml"), []byte(kcfg), 0o644); err != nil {
		return err
	}
	kubelet := []string{c.bin("kubelet"), "--config=" + c.path("kubelet.yaml"),
		"--kubeconfig=" + c.path("kubelet.kubeconfig"), "--root-dir=" + c.path("kubelet"),
		"--node-ip=" + NodeIP, "--hostname-override=" + NodeName}
	if err := c.start("kubelet", kubelet); err != nil {
		return err
	}
	proxy := []string{c.bin("kube-proxy"), "--kubeconfig=" + c.path("kube-proxy.kubeconfig"),
		"--hostname-override=" + NodeName, "--proxy-mode=iptables", "--cluster-cidr=" + PodCIDR,
		"--nodeport-addresses=primary", "--iptables-localhost-nodeports=false",
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"}
	return c.start("kube-proxy", proxy)
}

// writeEnv writes the file a shell sources to use the cluster.
func (c *Cluster) writeEnv() error {
	env := strings.Join([]string{
		"export KUBECONFIG=" + c.Kubeconfig(),
		"export CONSUL_HTTP_ADDR=" + ConsulHTTPAddr(),
		"export CONTAINERD_ADDRESS=" + c.containerdSock(),
		"export CONTAINERD_NAMESPACE=k8s.io",
		`export PATH="` + filepath.Join(c.Root, "bin") + `:$PATH"`,
	}, "\n") + "\n"
	return os.WriteFile(c.path("env"), []byte(env), 0o644)
}
