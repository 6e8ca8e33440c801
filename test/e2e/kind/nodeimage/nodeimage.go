// Package nodeimage builds meshlet's kind node image offline: no registry
// answers here, so everything kind's own node image holds is made on this
// machine (docs/kind.md). A Debian rootfs from the host's apt mirror
// (mmdebstrap) becomes the base image; the pinned Kubernetes build, crictl
// and the CNI plugins go on top, and every image kubeadm names (`kubeadm
// config images list`) is built from local binaries and imported into the
// image's containerd under that exact name, with kube-router as the
// default CNI. Each stage is cached by the content of its inputs: a
// rebuild with nothing changed only hashes them.
package nodeimage

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Labels on the Docker images this package builds: Prune removes images
// by them, never others.
const (
	labelBase = "io.meshlet.kind-base"
	labelNode = "io.meshlet.kind-node"
)

// Repositories of the Docker images; the tag is the content key.
const (
	baseRepo = "localhost/meshlet/kind-base"
	nodeRepo = "localhost/meshlet/kind-node"
)

// Builder builds the node image from the binaries under Root/bin.
type Builder struct {
	Root string
	Log  *slog.Logger
}

func (b *Builder) bin(p ...string) string {
	return filepath.Join(append([]string{b.Root, "bin"}, p...)...)
}

// cacheDir holds the rootfs and image archives between builds.
func (b *Builder) cacheDir() string { return b.bin("kind-cache") }

// Build returns the reference of the node image for the current inputs,
// building the stages whose inputs changed.
func (b *Builder) Build(ctx context.Context) (string, error) {
	t0 := time.Now()
	if err := checkTools(); err != nil {
		return "", err
	}
	if _, err := docker(ctx, "version", "--format", "{{.Server.Version}}"); err != nil {
		return "", fmt.Errorf("no Docker engine answers: %w", err)
	}
	k8s, err := b.kubeadmImages(ctx)
	if err != nil {
		return "", err
	}
	base, err := b.baseImage(ctx)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	archive, err := b.imageArchive(ctx, k8s)
	if err != nil {
		return "", fmt.Errorf("images for the node's containerd: %w", err)
	}
	ref, err := b.nodeImage(ctx, base, archive, k8s)
	if err != nil {
		return "", fmt.Errorf("node image: %w", err)
	}
	b.Log.Info("node image ready", "image", ref, "took", time.Since(t0).Round(time.Millisecond))
	return ref, nil
}

// checkTools says which host command is missing, and where it comes from.
func checkTools() error {
	for _, t := range []struct{ name, hint string }{
		{"docker", "kind runs its nodes as Docker containers"},
		{"mmdebstrap", "apt-get install mmdebstrap (make tools installs it)"},
	} {
		if _, err := lookPath(t.name); err != nil {
			return fmt.Errorf("%s not found: %s", t.name, t.hint)
		}
	}
	return nil
}

// contentKey hashes the given strings and files' contents into the short
// key that tags a cached stage.
type contentKey struct{ h io.Writer }

func newKey() (*contentKey, func() string) {
	h := sha256.New()
	return &contentKey{h}, func() string { return fmt.Sprintf("%x", h.Sum(nil)[:8]) }
}

func (k *contentKey) str(s ...string) { fmt.Fprintln(k.h, strings.Join(s, "\x00")) }

func (k *contentKey) file(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintln(k.h, "file", path)
	_, err = io.Copy(k.h, f)
	return err
}

// replaceCached writes a cache file through a temporary name (with the
// same extension: mmdebstrap picks its output format by it) and removes
// the older files of the same stage (glob), so the cache holds one each.
func replaceCached(path, glob string, write func(tmp string) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	old, _ := filepath.Glob(glob)
	ext := filepath.Ext(path)
	tmp := strings.TrimSuffix(path, ext) + ".tmp" + ext
	if err := write(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	for _, o := range old {
		if o != path {
			os.Remove(o)
		}
	}
	return nil
}
