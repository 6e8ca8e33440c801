package nodeimage

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/template"
	"time"
)

// files are the node's own files, at their paths in the image; a name
// ending in .tmpl is rendered (nodeData) and loses the suffix.
//
//go:embed all:files
var files embed.FS

// setupScript runs once in the build container and is removed.
//
//go:embed setup.sh
var setupScript []byte

type nodeData struct {
	Pause           string // kubeadm's pause image, containerd's sandbox image
	KubeRouterImage string
}

// nodeFiles lists everything copied onto the base image.
func (b *Builder) nodeFiles(k k8sImages, archive string) ([]fileSpec, error) {
	kr, err := b.kubeRouterImage()
	if err != nil {
		return nil, err
	}
	data := nodeData{Pause: k.ref("pause"), KubeRouterImage: kr}
	if data.Pause == "" {
		return nil, fmt.Errorf("kubeadm names no pause image: %v", k.refs)
	}
	var out []fileSpec
	err = fs.WalkDir(files, "files", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, "files/")
		if strings.HasSuffix(rel, ".tmpl") {
			rel = strings.TrimSuffix(rel, ".tmpl")
			t, err := template.New(rel).Option("missingkey=error").Parse(string(raw))
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := t.Execute(&buf, data); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			raw = buf.Bytes()
		}
		mode := int64(0o644)
		if bytes.HasPrefix(raw, []byte("#!")) {
			mode = 0o755
		}
		out = append(out, fileSpec{path: rel, mode: mode, data: raw})
		return nil
	})
	if err != nil {
		return nil, err
	}
	out = append(out,
		fileSpec{path: "kind/version", mode: 0o644, data: []byte(k.version)},
		fileSpec{path: "kind/setup.sh", mode: 0o755, data: setupScript},
		fileSpec{path: "kind/images.tar", mode: 0o644, src: archive},
		fileSpec{path: "usr/local/bin/crictl", mode: 0o755, src: b.bin("kindnode", "crictl")})
	for _, c := range []string{"kubeadm", "kubelet", "kubectl"} {
		out = append(out, fileSpec{path: "usr/bin/" + c, mode: 0o755, src: b.bin(c)})
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		out = append(out, fileSpec{path: "opt/cni/bin/" + p, mode: 0o755, src: b.bin("cni", p)})
	}
	return out, nil
}

// nodeImage returns the node image for the base image, the pod images'
// archive and the node's files, building it when Docker lacks it: a
// container of the base image gets the files, runs setup.sh, and is
// committed.
func (b *Builder) nodeImage(ctx context.Context, base, archive string, k k8sImages) (string, error) {
	nf, err := b.nodeFiles(k, archive)
	if err != nil {
		return "", err
	}
	kh, sum := newKey()
	kh.str("base", base, "archive", archive) // the archive's name is its content key
	var rest []fileSpec
	for _, f := range nf {
		if f.src != archive {
			rest = append(rest, f)
		}
	}
	if err := kh.files(rest); err != nil {
		return "", err
	}
	key := sum()
	ref := nodeRepo + ":" + key
	if imageExists(ctx, ref) {
		return ref, nil
	}
	t0 := time.Now()
	b.Log.Info("building the node image", "image", ref)
	name := "meshlet-kind-build-" + key
	_, _ = docker(ctx, "rm", "-f", "-v", name) // a leftover of an interrupted build
	// systemd stops on SIGRTMIN+3; the committed image keeps this signal.
	// /run and /tmp are tmpfs so that containerd's state stays out of it.
	if _, err := docker(ctx, "run", "-d", "--name", name, "--stop-signal", "SIGRTMIN+3",
		"--tmpfs", "/run", "--tmpfs", "/tmp", "--entrypoint", "sleep", base, "infinity"); err != nil {
		return "", err
	}
	defer func() { _, _ = docker(context.WithoutCancel(ctx), "rm", "-f", "-v", name) }()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, nf)) }()
	if _, err := run(ctx, pr, "docker", "cp", "-", name+":/"); err != nil {
		return "", err
	}
	if out, err := docker(ctx, "exec", name, "/kind/setup.sh"); err != nil {
		return "", err
	} else {
		b.Log.Debug("setup.sh", "output", out)
	}
	if _, err := docker(ctx, "commit",
		"--change", `ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]`,
		"--change", "LABEL "+labelNode+"="+key, name, ref); err != nil {
		return "", err
	}
	b.Log.Info("node image built", "image", ref, "took", time.Since(t0).Round(time.Millisecond))
	if err := pruneImages(ctx, labelNode, ref); err != nil {
		b.Log.Warn("older node images stay (a cluster may still use them)", "err", err)
	}
	return ref, nil
}
