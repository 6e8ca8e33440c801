package nodeimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	return root
}

// The refs kubeadm v1.34.4 lists (kubeadm config images list).
var testImages = k8sImages{version: "v1.34.4", refs: []string{
	"registry.k8s.io/kube-apiserver:v1.34.4", "registry.k8s.io/kube-controller-manager:v1.34.4",
	"registry.k8s.io/kube-scheduler:v1.34.4", "registry.k8s.io/kube-proxy:v1.34.4",
	"registry.k8s.io/coredns/coredns:v1.12.1", "registry.k8s.io/pause:3.10.1", "registry.k8s.io/etcd:3.6.5-0",
}}

func TestRepoBase(t *testing.T) {
	for ref, want := range map[string]string{
		"registry.k8s.io/coredns/coredns:v1.12.1": "coredns",
		"registry.k8s.io/etcd:3.6.5-0":            "etcd",
		"localhost:5000/x/kube-proxy:v1":          "kube-proxy",
		"pause":                                   "pause",
	} {
		if got := repoBase(ref); got != want {
			t.Errorf("repoBase(%q) = %q, want %q", ref, got, want)
		}
	}
}

// TestPodImages: every image kubeadm names is made (from the binary of its
// component), plus kube-router's, under the exact reference.
func TestPodImages(t *testing.T) {
	b := &Builder{Root: repoRoot(t)}
	imgs, err := b.podImages(testImages, "/rootfs-net.tar")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]podImage{}
	for _, img := range imgs {
		got[img.ref] = img
	}
	for _, ref := range testImages.refs {
		img, ok := got[ref]
		if !ok {
			t.Errorf("no image %s", ref)
			continue
		}
		if repoBase(ref) != "pause" && img.binary == "" {
			t.Errorf("image %s: no binary whose version is checked against its tag", ref)
		}
	}
	kr, err := b.kubeRouterImage()
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{kr, "registry.k8s.io/kube-proxy:v1.34.4"} {
		if got[ref].rootfs != "/rootfs-net.tar" {
			t.Errorf("image %s calls the netfilter tools but has no rootfs under it", ref)
		}
	}
	if _, err := b.podImages(k8sImages{refs: []string{"registry.k8s.io/unknown:v1"}}, ""); err == nil {
		t.Error("an image kubeadm names that the builder cannot make was accepted")
	}
}

// TestPinsMatchKubeadm: the etcd and CoreDNS the wrapper modules pin are
// the versions the pinned kubeadm names, so the images' tags tell the truth.
func TestPinsMatchKubeadm(t *testing.T) {
	root := repoRoot(t)
	kubeadm := filepath.Join(root, "bin", "kubeadm")
	if _, err := os.Stat(kubeadm); err != nil {
		t.Skip("no bin/kubeadm: make tools builds it")
	}
	out, err := exec.Command(kubeadm, "config", "images", "list", "--kubernetes-version", testImages.version).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(testImages.refs, " ") {
		t.Errorf("kubeadm lists %v, this test expects %v", got, testImages.refs)
	}
	for dir, mod := range map[string]string{"etcd": "go.etcd.io/etcd/server/v3", "coredns-kubeadm": "github.com/coredns/coredns"} {
		gomod, err := os.ReadFile(filepath.Join(root, "test", "tools", dir, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(regexp.QuoteMeta(mod) + ` v(\S+)`).FindSubmatch(gomod)
		if m == nil {
			t.Fatalf("test/tools/%s/go.mod requires no %s", dir, mod)
		}
		name := map[string]string{"etcd": "etcd", "coredns-kubeadm": "coredns"}[dir]
		for _, ref := range strings.Fields(string(out)) {
			if repoBase(ref) != name {
				continue
			}
			if tag, _, _ := strings.Cut(strings.TrimPrefix(tagOf(ref), "v"), "-"); tag != string(m[1]) {
				t.Errorf("kubeadm names %s; test/tools/%s pins %s v%s", ref, dir, mod, m[1])
			}
		}
	}
}

// TestNodeFiles: the templates are rendered with kubeadm's pause image and
// the kube-router image, scripts are executable, nothing else is.
func TestNodeFiles(t *testing.T) {
	b := &Builder{Root: repoRoot(t)}
	nf, err := b.nodeFiles(testImages, "/cache/images-x.tar")
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]fileSpec{}
	for _, f := range nf {
		if strings.HasSuffix(f.path, ".tmpl") || bytes.Contains(f.data, []byte("{{")) {
			t.Errorf("%s: not rendered", f.path)
		}
		script := bytes.HasPrefix(f.data, []byte("#!"))
		if f.src == "" && script != (f.mode == 0o755) {
			t.Errorf("%s: mode %o, script %v", f.path, f.mode, script)
		}
		byPath[f.path] = f
	}
	for _, p := range []string{"usr/local/bin/entrypoint", "kind/bin/kubelet-cgroups", "kind/setup.sh",
		"kind/manifests/default-cni.yaml", "kind/manifests/default-storage.yaml", "etc/containerd/config.toml",
		"usr/bin/kubeadm", "usr/bin/kubelet", "usr/bin/kubectl", "usr/local/bin/crictl", "opt/cni/bin/portmap"} {
		if _, ok := byPath[p]; !ok {
			t.Errorf("no /%s in the node image", p)
		}
	}
	if v := string(byPath["kind/version"].data); v != "v1.34.4" {
		t.Errorf("/kind/version = %q", v)
	}
	if cfg := string(byPath["etc/containerd/config.toml"].data); !strings.Contains(cfg, `sandbox_image = "registry.k8s.io/pause:3.10.1"`) {
		t.Errorf("containerd's sandbox image is not kubeadm's pause:\n%s", cfg)
	}
	if byPath["kind/images.tar"].src != "/cache/images-x.tar" {
		t.Error("the pod images' archive is not copied in for setup.sh")
	}
}

// TestDefaultCNIManifest: the manifest kind applies parses, runs
// kube-router's image on the host network with its conflist (a bridge with
// host-local, whose range kube-router fills in, then portmap), and carries
// the phrase that makes kind add the control plane's address.
func TestDefaultCNIManifest(t *testing.T) {
	b := &Builder{Root: repoRoot(t)}
	nf, err := b.nodeFiles(testImages, "")
	if err != nil {
		t.Fatal(err)
	}
	var manifest []byte
	for _, f := range nf {
		if f.path == "kind/manifests/default-cni.yaml" {
			manifest = f.data
		}
	}
	if !bytes.Contains(manifest, []byte("would you kindly patch this file")) {
		t.Error("no \"would you kindly patch this file\": kind would not give kube-router CONTROL_PLANE_ENDPOINT")
	}
	kr, _ := b.kubeRouterImage()
	kinds := map[string]bool{}
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
			Spec struct {
				Template struct {
					Spec struct {
						HostNetwork bool `json:"hostNetwork"`
						Containers  []struct {
							Image   string   `json:"image"`
							Command []string `json:"command"`
							Env     []struct{ Name string }
						} `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		kinds[obj.Kind] = true
		switch obj.Kind {
		case "DaemonSet":
			ps := obj.Spec.Template.Spec
			if !ps.HostNetwork || len(ps.Containers) != 1 || ps.Containers[0].Image != kr {
				t.Errorf("DaemonSet: hostNetwork %v, containers %+v; want kube-router's image %s on the host network", ps.HostNetwork, ps.Containers, kr)
			}
			if len(ps.Containers) == 1 && !strings.Contains(strings.Join(ps.Containers[0].Command, " "), "CONTROL_PLANE_ENDPOINT") {
				t.Error("kube-router does not use the control plane's address")
			}
		case "ConfigMap":
			var conf struct {
				Plugins []struct {
					Type string `json:"type"`
					IPAM *struct {
						Type   string `json:"type"`
						Ranges any    `json:"ranges"`
					} `json:"ipam"`
				} `json:"plugins"`
			}
			if err := json.Unmarshal([]byte(obj.Data["10-kuberouter.conflist"]), &conf); err != nil {
				t.Fatalf("the conflist: %v", err)
			}
			if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "bridge" || conf.Plugins[0].IPAM == nil ||
				conf.Plugins[0].IPAM.Type != "host-local" || conf.Plugins[0].IPAM.Ranges != nil || conf.Plugins[1].Type != "portmap" {
				t.Errorf("conflist %+v: want bridge (host-local, no range: kube-router adds the node's) then portmap", conf)
			}
		}
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("no %s in the manifest", k)
		}
	}
}

// TestWriteTar: directories come before their files, once each; modes
// and contents are the specs'.
func TestWriteTar(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, []byte("binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	err := writeTar(&buf, []fileSpec{
		{path: "usr/bin/a", mode: 0o755, src: src},
		{path: "usr/bin/b", mode: 0o644, data: []byte("bytes")},
		{path: "kind/version", mode: 0o644, data: []byte("v1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		got = append(got, fmt.Sprintf("%s %o %s", h.Name, h.Mode, body))
	}
	want := []string{"usr/ 755 ", "usr/bin/ 755 ", "usr/bin/a 755 binary", "usr/bin/b 644 bytes", "kind/ 755 ", "kind/version 644 v1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tar:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestContentKey: a stage's key follows the content and mode of every
// input, and only them.
func TestContentKey(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "bin")
	key := func(mode int64) string {
		k, sum := newKey()
		if err := k.files([]fileSpec{{path: "a", mode: mode, src: src}, {path: "b", mode: 0o644, data: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
		return sum()
	}
	os.WriteFile(src, []byte("one"), 0o644)
	k1 := key(0o755)
	os.WriteFile(src, []byte("one"), 0o600) // the host file's own mode does not count
	if k := key(0o755); k != k1 {
		t.Errorf("same content, key %s then %s", k1, k)
	}
	if k := key(0o644); k == k1 {
		t.Error("another mode, same key")
	}
	os.WriteFile(src, []byte("two"), 0o644)
	if k := key(0o755); k == k1 {
		t.Error("another content, same key")
	}
}

// TestScripts: the node's and the images' scripts pass shellcheck.
func TestScripts(t *testing.T) {
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("no shellcheck on $PATH: make tools installs it (Debian's shellcheck)")
	}
	scripts := []string{"setup.sh", "files/usr/local/bin/entrypoint", "files/kind/bin/kubelet-cgroups",
		"podfiles/iptables-flavour", "podfiles/netfilter-wrapper"}
	if out, err := exec.Command(sc, scripts...).CombinedOutput(); err != nil {
		t.Fatalf("shellcheck: %v\n%s", err, out)
	}
}
