package cluster

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
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

// meshlet-cni reads its kubeconfig with its own reader; these are the keys
// it knows (cni/kube.go).
type cniKubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server               string `json:"server"`
			CertificateAuthority string `json:"certificate-authority"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			TokenFile string `json:"tokenFile"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string                         `json:"name"`
		Context struct{ Cluster, User string } `json:"context"`
	} `json:"contexts"`
}

func TestCNIKubeconfigKeys(t *testing.T) {
	c := oddCluster(t)
	token := c.path("cni", "meshlet-cni.token")
	if err := c.writeCNIKubeconfigFile(token); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(c.MeshletCNIKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	var kc cniKubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		t.Fatal(err)
	}
	ok := kc.CurrentContext == "local" && len(kc.Contexts) == 1 && len(kc.Clusters) == 1 && len(kc.Users) == 1 &&
		kc.Contexts[0].Name == "local" && kc.Contexts[0].Context.Cluster == "local" &&
		kc.Contexts[0].Context.User == CNIServiceAccount &&
		kc.Clusters[0].Name == "local" && kc.Clusters[0].Cluster.Server == "https://"+NodeIP+":6443" &&
		kc.Clusters[0].Cluster.CertificateAuthority == c.path("pki", "ca.crt") &&
		kc.Users[0].Name == CNIServiceAccount && kc.Users[0].User.TokenFile == token
	if !ok {
		t.Fatalf("meshlet-cni would read %+v from:\n%s", kc, raw)
	}
}
