package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshlet/meshlet/cni"
)

// A state directory whose path YAML would misread unquoted (": ", " #").
func oddCluster(t *testing.T) *Cluster {
	t.Helper()
	root := filepath.Join(t.TempDir(), "a: b #c 'd\"")
	c := &Cluster{Root: root, Dir: filepath.Join(root, ".cluster")}
	if err := os.MkdirAll(c.path("cni"), 0o755); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKubeconfigSurvivesOddPaths(t *testing.T) {
	c := oddCluster(t)
	if err := c.writeKubeconfig("kube-proxy"); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.LoadFromFile(c.path("kube-proxy.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if cfg.CurrentContext != "meshlet-local" || ctx == nil || ctx.Cluster != "meshlet-local" || ctx.AuthInfo != "kube-proxy" {
		t.Fatalf("context: current %q, %+v", cfg.CurrentContext, ctx)
	}
	cl, user := cfg.Clusters["meshlet-local"], cfg.AuthInfos["kube-proxy"]
	if cl == nil || user == nil {
		t.Fatalf("cluster %+v, user %+v", cl, user)
	}
	pki := c.path("pki")
	for got, want := range map[string]string{
		cl.Server:               "https://" + NodeIP + ":6443",
		cl.CertificateAuthority: filepath.Join(pki, "ca.crt"),
		user.ClientCertificate:  filepath.Join(pki, "kube-proxy.crt"),
		user.ClientKey:          filepath.Join(pki, "kube-proxy.key"),
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// TestCNIKubeconfigKeys: meshlet-cni's own reader (cni.ValidateKubeconfig)
// loads the kubeconfig the harness writes for it, with its token file.
func TestCNIKubeconfigKeys(t *testing.T) {
	c := oddCluster(t)
	token := c.path("cni", "meshlet-cni.token")
	if err := c.writeCNIKubeconfigFile(token); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.path("pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := newCA(c.path("pki"), "ca", "test-ca"); err != nil {
		t.Fatal(err)
	}
	if _, err := cni.ValidateKubeconfig(c.MeshletCNIKubeconfig()); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("a missing token file: %v, want the token file named", err)
	}
	if err := os.MkdirAll(filepath.Dir(token), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	server, err := cni.ValidateKubeconfig(c.MeshletCNIKubeconfig())
	if err != nil {
		raw, _ := os.ReadFile(c.MeshletCNIKubeconfig())
		t.Fatalf("meshlet-cni cannot use the kubeconfig: %v\n%s", err, raw)
	}
	if want := "https://" + NodeIP + ":6443"; server != want {
		t.Errorf("server %q, want %q", server, want)
	}
}
