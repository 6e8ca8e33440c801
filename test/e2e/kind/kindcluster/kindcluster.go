// Package kindcluster boots and removes the kind cluster of make kind-up
// and make kind-down: one control plane and two workers on meshlet's
// offline node image (test/e2e/kind/nodeimage), with kube-router as the
// primary CNI and the local cluster's test images loaded into every node.
// Up returns once every node is Ready, CoreDNS and kube-router run, and a
// pod on each worker reaches a pod on the other by its IP, then installs
// Consul (test/e2e/kind/consul/consul.yaml) and meshlet's chart (mesh.go).
// The cluster's state (kubeconfig, env, helm's own) lives in <root>/.kind.
package kindcluster

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/test/e2e/cluster"
	"github.com/meshlet/meshlet/test/e2e/kind/nodeimage"
)

const (
	// Name is the kind cluster's name: its nodes are the Docker containers
	// meshlet-control-plane, meshlet-worker and meshlet-worker2.
	Name = "meshlet"
	// Network is the Docker network of its nodes (kind's own "kind"
	// network stays other clusters'); kind creates it, Down removes it.
	Network = "meshlet-kind"
	// PodSubnet and ServiceSubnet differ from the local cluster's
	// (10.244.0.0/24, 10.96.0.0/16): neither cluster's routes or rules
	// can take the other's traffic.
	PodSubnet     = "10.245.0.0/16"
	ServiceSubnet = "10.97.0.0/16"
)

// Cluster is the kind cluster of one repository checkout.
type Cluster struct {
	Root string // repository root
	Log  *slog.Logger
	// Secure: Up installs the secure Consul (ACLs, TLS only; secure.go)
	// in place of the open one; make kind-up SECURE=1.
	Secure bool
}

// New returns the cluster of the checkout at root.
func New(root string) *Cluster {
	return &Cluster{Root: root, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
}

func (c *Cluster) dir(p ...string) string {
	return filepath.Join(append([]string{c.Root, ".kind"}, p...)...)
}

// Kubeconfig is the cluster's admin kubeconfig (the API server on a
// 127.0.0.1 port Docker publishes).
func (c *Cluster) Kubeconfig() string { return c.dir("kubeconfig") }

// Workers are the worker nodes' names, in kind's order.
var Workers = []string{Name + "-worker", Name + "-worker2"}

// kind runs bin/kind (hack/tools.sh kind_node builds it), with its output
// on stderr; the environment (env) adds to the process's own.
func (c *Cluster) kind(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.Root, "bin", "kind"), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kind %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(out.String()), nil
}

// Up builds the node image (cached), replaces any cluster of this name,
// creates the cluster, loads the test images and waits until it is
// healthy.
func (c *Cluster) Up(ctx context.Context) error {
	t0 := time.Now()
	image, err := (&nodeimage.Builder{Root: c.Root, Log: c.Log}).Build(ctx)
	if err != nil {
		return err
	}
	if err := c.Down(ctx); err != nil {
		return fmt.Errorf("remove the earlier cluster: %w", err)
	}
	if err := os.MkdirAll(c.dir(), 0o755); err != nil {
		return err
	}
	shim, err := c.dockerShim(ctx, image)
	if err != nil {
		return err
	}
	if err := c.writeEnv(shim); err != nil {
		return err
	}
	cfg, err := yaml.Marshal(config())
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.dir("kind-config.yaml"), cfg, 0o644); err != nil {
		return err
	}
	step := time.Now()
	if _, err := c.kind(ctx, c.kindEnv(shim), "create", "cluster", "--name", Name, "--image", image,
		"--config", c.dir("kind-config.yaml"), "--kubeconfig", c.Kubeconfig()); err != nil {
		return err
	}
	c.Log.Info("kind cluster created", "took", time.Since(step).Round(time.Millisecond))
	if err := c.loadTestImages(ctx); err != nil {
		return err
	}
	if err := c.waitHealthy(ctx); err != nil {
		return err
	}
	if err := c.checkPodNetwork(ctx); err != nil {
		return err
	}
	install := c.installMesh
	if c.Secure {
		install = c.installSecureMesh
	}
	if err := install(ctx); err != nil {
		return err
	}
	if err := c.appendMeshEnv(ctx); err != nil {
		return err
	}
	c.Log.Info("kind cluster up", "took", time.Since(t0).Round(time.Millisecond),
		"env", "source "+c.dir("env"))
	return nil
}

// config is the cluster: one control plane (tainted: pods go to the
// workers) and two workers, on subnets apart from the local cluster's.
func config() *v1alpha4.Cluster {
	return &v1alpha4.Cluster{
		TypeMeta: v1alpha4.TypeMeta{Kind: "Cluster", APIVersion: "kind.x-k8s.io/v1alpha4"},
		Nodes: []v1alpha4.Node{
			{Role: v1alpha4.ControlPlaneRole}, {Role: v1alpha4.WorkerRole}, {Role: v1alpha4.WorkerRole},
		},
		Networking: v1alpha4.Networking{PodSubnet: PodSubnet, ServiceSubnet: ServiceSubnet},
	}
}

// Down deletes the cluster, its Docker network and .kind; without a
// cluster it does nothing.
func (c *Cluster) Down(ctx context.Context) error {
	if _, err := runCmd(ctx, nil, "docker", "info"); err != nil {
		return fmt.Errorf("no Docker engine answers (docker info): %w", err)
	}
	out, err := c.kind(ctx, nil, "get", "clusters")
	if err != nil {
		return err
	}
	if slices.Contains(strings.Fields(out), Name) {
		// kind deletes the nodes by its cluster label, and their volumes.
		if _, err := c.kind(ctx, c.kindEnv(c.dir("shim")), "delete", "cluster", "--name", Name,
			"--kubeconfig", c.Kubeconfig()); err != nil {
			return err
		}
		c.Log.Info("kind cluster deleted", "name", Name)
	}
	if err := removeNetwork(ctx); err != nil {
		return err
	}
	return os.RemoveAll(c.dir())
}

// removeNetwork removes the nodes' network once no container uses it.
func removeNetwork(ctx context.Context) error {
	n, err := runCmd(ctx, nil, "docker", "network", "inspect", "--format", "{{len .Containers}}", Network)
	if err != nil {
		return nil // none
	}
	if n != "0" {
		return fmt.Errorf("docker network %s still has %s containers: not removed", Network, n)
	}
	_, err = runCmd(ctx, nil, "docker", "network", "rm", Network)
	return err
}

// kindEnv is kind's environment: its nodes' network, and the docker shim
// first on PATH when there is one (shim.go).
func (c *Cluster) kindEnv(shim string) []string {
	env := []string{"KIND_EXPERIMENTAL_DOCKER_NETWORK=" + Network}
	if st, err := os.Stat(filepath.Join(shim, "docker")); err == nil && !st.IsDir() {
		env = append(env, "PATH="+shim+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	return env
}

// writeEnv writes .kind/env, to source as .cluster/env is: kubectl and
// kind (and, where needed, the docker shim) then reach this cluster.
func (c *Cluster) writeEnv(shim string) error {
	path := filepath.Join(c.Root, "bin")
	if shim != "" {
		path = shim + ":" + path
	}
	env := strings.Join([]string{
		"export KUBECONFIG=" + c.Kubeconfig(),
		"export KIND_CLUSTER_NAME=" + Name,
		"export KIND_EXPERIMENTAL_DOCKER_NETWORK=" + Network,
		`export PATH="` + path + `:$PATH"`,
	}, "\n") + "\n"
	return os.WriteFile(c.dir("env"), []byte(env), 0o644)
}

// appendMeshEnv adds to .kind/env where each worker's Consul client agent
// answers, and the e2e suite's flags for the first worker
// (KIND_E2E_FLAGS): go test ./test/e2e/ -args $KIND_E2E_FLAGS. With the
// secure Consul: HTTPS, its CA and the management token's file, as
// .cluster/env on a secure local cluster, and KIND_CONSUL_SECURE=1.
func (c *Cluster) appendMeshEnv(ctx context.Context) error {
	var lines []string
	port, scheme := ConsulHTTPPort, "http://"
	if c.Secure {
		port, scheme = ConsulHTTPSPort, "https://"
	}
	for i, w := range Workers {
		ip, err := c.NodeIP(ctx, w)
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("%s:%d", ip, port)
		lines = append(lines, fmt.Sprintf("export KIND_CONSUL_ADDR_WORKER%d=%s", i+1, addr))
		if i > 0 {
			continue
		}
		lines = append(lines, "export CONSUL_HTTP_ADDR="+scheme+addr)
		consulFlags := "-e2e.consul-addr=" + addr
		if c.Secure {
			consulFlags = fmt.Sprintf("-e2e.consul-addr=https://%s -e2e.consul-ca-file=%s -e2e.consul-token-file=%s",
				addr, c.ConsulCAFile(), c.ConsulTokenFile())
			lines = append(lines, "export CONSUL_CACERT="+c.ConsulCAFile(), "export CONSUL_HTTP_TOKEN_FILE="+c.ConsulTokenFile(),
				"export KIND_CONSUL_SECURE=1")
		} else {
			// A shell that sourced a secure cluster's env before must not
			// send its CA and token to this one.
			lines = append(lines, "unset CONSUL_CACERT CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE KIND_CONSUL_SECURE")
		}
		flags := fmt.Sprintf("-e2e.kubeconfig=%s %s -e2e.data-plane=meshlet -e2e.meshlet-namespace=%s",
			c.Kubeconfig(), consulFlags, MeshletNamespace)
		lines = append(lines, fmt.Sprintf(`export KIND_E2E_FLAGS="%s"`, flags))
	}
	f, err := os.OpenFile(c.dir("env"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(strings.Join(lines, "\n") + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// loadTestImages imports the local cluster's test images (meshlet,
// static-server, static-client, pause, consul…) into every node.
func (c *Cluster) loadTestImages(ctx context.Context) error {
	t0 := time.Now()
	archive, err := cluster.New(c.Root).ImageArchive()
	if err != nil {
		return fmt.Errorf("test images: %w", err)
	}
	if _, err := c.kind(ctx, c.kindEnv(c.dir("shim")), "load", "image-archive", "--name", Name, archive); err != nil {
		return err
	}
	c.Log.Info("test images loaded", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
