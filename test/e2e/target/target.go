// Package target says which cluster the e2e suite (test/e2e) runs against
// and checks the flags that say it. Without flags the suite boots the local
// cluster (test/e2e/cluster) and every value here is that cluster's; with
// -e2e.kubeconfig it runs against a cluster someone else installed (kind,
// test/e2e/kind/run.sh, or any other), and the flags say what the suite
// cannot find out for itself: where the node's Consul agent answers, which
// data plane the webhook injects, and which test images the nodes hold.
package target

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/webhook"
)

// LocalDataPlane is the data plane the local cluster installs meshlet
// with (cluster.MeshletValues; TestLocalMatchesCluster keeps them equal):
// Envoy cannot run on the machines the local cluster runs on.
const LocalDataPlane = webhook.DataPlaneMeshlet

// DataPlanes are the values of -e2e.data-plane: the chart's
// connectInject.dataPlane values.
var DataPlanes = []string{webhook.DataPlaneEnvoy, webhook.DataPlaneConsul, webhook.DataPlaneMeshlet}

// Images are the test images the suite's pods run. The defaults are the
// local cluster's names; test/e2e/kind/run.sh builds and loads images of
// the same names, so the seed's manifests in examples/mesh/ run unchanged.
type Images struct {
	StaticServer string // http-echo as the entrypoint, busybox beside it
	StaticClient string // busybox and a curl-compatible client
	Pause        string // an entrypoint that does nothing
}

// DefaultImages are the local cluster's test images.
var DefaultImages = Images{StaticServer: cluster.StaticServerImage, StaticClient: cluster.StaticClientImage, Pause: cluster.PauseImage}

// Config is the cluster the suite runs against.
type Config struct {
	// Kubeconfig is an existing cluster's admin kubeconfig; empty: the
	// suite boots the local cluster.
	Kubeconfig string
	// ConsulAddr is host:port of the HTTP API of the Consul client agent
	// on the node the tests' pods run on: the tests read that Consul agent's own
	// services and checks, which only it holds.
	ConsulAddr string
	// ConsulCAFile verifies the Consul agent's HTTPS certificate and
	// ConsulTokenFile holds an ACL token with management rights (the
	// tests read and write intentions, ACL tokens and the catalog); both
	// empty: Consul without TLS and ACLs.
	ConsulCAFile, ConsulTokenFile string
	// DataPlane is the webhook's -data-plane (connectInject.dataPlane).
	DataPlane string
	// MeshletNamespace is the namespace of meshlet's release, which is
	// called meshlet (objects meshlet-webhook, meshlet-agent).
	MeshletNamespace string
	Images           Images
}

// The flags' names, for messages and docs.
const (
	FlagKubeconfig        = "e2e.kubeconfig"
	FlagConsulAddr        = "e2e.consul-addr"
	FlagDataPlane         = "e2e.data-plane"
	FlagConsulCAFile      = "e2e.consul-ca-file"
	FlagConsulTokenFile   = "e2e.consul-token-file"
	FlagMeshletNamespace  = "e2e.meshlet-namespace"
	FlagStaticServerImage = "e2e.static-server-image"
	FlagStaticClientImage = "e2e.static-client-image"
	FlagPauseImage        = "e2e.pause-image"
)

// Register defines the suite's flags on fs and returns the Config they
// fill in when fs is parsed.
func Register(fs *flag.FlagSet) *Config {
	c := &Config{}
	fs.StringVar(&c.Kubeconfig, FlagKubeconfig, "",
		"run against the cluster of this kubeconfig instead of booting the local cluster")
	fs.StringVar(&c.ConsulAddr, FlagConsulAddr, "",
		"with -"+FlagKubeconfig+": [https://]host:port of the HTTP API of the Consul client agent of the node the tests' pods run on")
	fs.StringVar(&c.ConsulCAFile, FlagConsulCAFile, "",
		"with -"+FlagKubeconfig+": the CA of that Consul agent's HTTPS certificate (Consul with TLS)")
	fs.StringVar(&c.ConsulTokenFile, FlagConsulTokenFile, "",
		"with -"+FlagKubeconfig+": a file holding a Consul ACL token with management rights (Consul with ACLs)")
	fs.StringVar(&c.DataPlane, FlagDataPlane, "",
		"with -"+FlagKubeconfig+": the data plane meshlet's webhook injects: "+strings.Join(DataPlanes, ", "))
	fs.StringVar(&c.MeshletNamespace, FlagMeshletNamespace, cluster.MeshletNamespace,
		"the namespace of meshlet's release (named meshlet)")
	fs.StringVar(&c.Images.StaticServer, FlagStaticServerImage, DefaultImages.StaticServer,
		"the static-server test image: http-echo as the entrypoint, busybox beside it")
	fs.StringVar(&c.Images.StaticClient, FlagStaticClientImage, DefaultImages.StaticClient,
		"the static-client test image: busybox and a curl-compatible curl")
	fs.StringVar(&c.Images.Pause, FlagPauseImage, DefaultImages.Pause,
		"an image whose entrypoint does nothing")
	return c
}

// External says the suite runs against an existing cluster.
func (c Config) External() bool { return c.Kubeconfig != "" }

// ACLs says the suite's Consul runs with ACLs (a token was given).
func (c Config) ACLs() bool { return c.ConsulTokenFile != "" }

// Local is the local cluster lc, as its flags would say it.
func Local(lc *cluster.Cluster) Config {
	return Config{Kubeconfig: lc.Kubeconfig(), ConsulAddr: lc.ConsulAddr(),
		ConsulCAFile: lc.ConsulCAFile(), ConsulTokenFile: lc.ConsulTokenFile(),
		DataPlane: LocalDataPlane, MeshletNamespace: cluster.MeshletNamespace, Images: DefaultImages}
}

// Validate checks the flags as given. Without -e2e.kubeconfig the local
// cluster decides everything, so a flag that says otherwise is an error
// rather than silently ignored.
func (c Config) Validate() error {
	var errs []error
	if c.External() {
		if fi, err := os.Stat(c.Kubeconfig); err != nil {
			errs = append(errs, fmt.Errorf("-%s=%s: expected a readable kubeconfig file: %w", FlagKubeconfig, c.Kubeconfig, err))
		} else if fi.IsDir() {
			errs = append(errs, fmt.Errorf("-%s=%s: expected a kubeconfig file, got a directory", FlagKubeconfig, c.Kubeconfig))
		}
		if err := checkConsulAddr(c.ConsulAddr); err != nil {
			errs = append(errs, fmt.Errorf("-%s=%q: expected [https://]host:port of the node's Consul client agent's HTTP API: %w", FlagConsulAddr, c.ConsulAddr, err))
		}
		for _, f := range []struct{ flag, path string }{{FlagConsulCAFile, c.ConsulCAFile}, {FlagConsulTokenFile, c.ConsulTokenFile}} {
			if f.path == "" {
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("-%s=%s: expected a readable file: %w", f.flag, f.path, err))
			}
		}
		if !slices.Contains(DataPlanes, c.DataPlane) {
			errs = append(errs, fmt.Errorf("-%s=%q: expected one of %s (the webhook's connectInject.dataPlane)",
				FlagDataPlane, c.DataPlane, strings.Join(DataPlanes, ", ")))
		}
	} else {
		for _, f := range []struct{ flag, value string }{{FlagConsulAddr, c.ConsulAddr},
			{FlagConsulCAFile, c.ConsulCAFile}, {FlagConsulTokenFile, c.ConsulTokenFile}} {
			if f.value != "" {
				errs = append(errs, fmt.Errorf("-%s=%s: expected only with -%s; the local cluster says where its Consul agent is and how to reach it",
					f.flag, f.value, FlagKubeconfig))
			}
		}
		if c.DataPlane != "" && c.DataPlane != LocalDataPlane {
			errs = append(errs, fmt.Errorf("-%s=%s: the local cluster installs data plane %s; other data planes need -%s",
				FlagDataPlane, c.DataPlane, LocalDataPlane, FlagKubeconfig))
		}
		if c.MeshletNamespace != cluster.MeshletNamespace {
			errs = append(errs, fmt.Errorf("-%s=%s: the local cluster installs meshlet in %s; other namespaces need -%s",
				FlagMeshletNamespace, c.MeshletNamespace, cluster.MeshletNamespace, FlagKubeconfig))
		}
		if c.Images != DefaultImages {
			errs = append(errs, fmt.Errorf("test images %+v: the local cluster builds its own, %+v; other images need -%s",
				c.Images, DefaultImages, FlagKubeconfig))
		}
	}
	if c.MeshletNamespace == "" {
		errs = append(errs, fmt.Errorf("-%s: expected the namespace of meshlet's release, got nothing", FlagMeshletNamespace))
	}
	for _, f := range []struct{ flag, ref string }{{FlagStaticServerImage, c.Images.StaticServer},
		{FlagStaticClientImage, c.Images.StaticClient}, {FlagPauseImage, c.Images.Pause}} {
		if _, err := name.ParseReference(f.ref); err != nil {
			errs = append(errs, fmt.Errorf("-%s=%q: expected an image reference: %w", f.flag, f.ref, err))
		}
	}
	return errors.Join(errs...)
}

// checkConsulAddr checks host:port with an optional http:// or https://.
func checkConsulAddr(addr string) error {
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("scheme %q: expected http or https", scheme)
		}
		addr = rest
	}
	return checkHostPort(addr)
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q: expected 1-65535", port)
	}
	return nil
}
