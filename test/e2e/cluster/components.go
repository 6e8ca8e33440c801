package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

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
		"export CONSUL_HTTP_ADDR=" + c.ConsulAddr(),
		"export CONTAINERD_ADDRESS=" + c.containerdSock(),
		"export CONTAINERD_NAMESPACE=k8s.io",
		`export PATH="` + filepath.Join(c.Root, "bin") + `:$PATH"`,
	}, "\n") + "\n"
	if !c.Secure {
		// A shell that used a secure cluster before must not send its
		// CA or token here.
		env += "unset CONSUL_CACERT CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE\n"
	} else {
		// The token stays in its 0600 file: the env file names it only.
		env += "export CONSUL_CACERT=" + c.ConsulCAFile() + "\n" +
			`export CONSUL_HTTP_TOKEN="$(cat ` + c.ConsulTokenFile() + `)"` + "\n"
	}
	// helm's own state in the cluster's dir, as Helm() keeps it.
	for _, kv := range c.helmEnv() {
		env += "export " + kv + "\n"
	}
	return os.WriteFile(c.path("env"), []byte(env), 0o644)
}
