package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images the cluster runs, built from local binaries (no registry exists);
// pods use them with imagePullPolicy IfNotPresent or Never.
const (
	PauseImage        = "localhost/meshlet/pause:dev"
	StaticServerImage = "localhost/meshlet/static-server:dev"
	StaticClientImage = "localhost/meshlet/static-client:dev"
	ConsulImage       = "localhost/meshlet/consul:dev"
	MeshletImage      = "localhost/meshlet/meshlet:dev"
	CoreDNSImage      = "localhost/meshlet/coredns:dev"
	// EnvoyStandInImage takes Envoy's place in data plane envoy's pods:
	// no Envoy can run here (testdata/envoy-standin.sh says what it does).
	EnvoyStandInImage = "localhost/meshlet/envoy-standin:dev"
)

const busyboxPath = "/bin/busybox"

// tmpMode is /tmp's mode in every test image, as in the images users run
// (busybox, alpine, distroless): world-writable with the sticky bit, so a
// container of any uid writes there (consul-k8s' acceptance fixtures run
// kubectl exec … touch /tmp/unhealthy as uid 1000) and removes only its
// own files. In a tar header the sticky bit is c_ISVTX, 01000.
const tmpMode = 0o1777

// imageFile is one file of an image: its path inside the image and the
// host file it comes from ("" with link set makes a symlink).
type imageFile struct {
	path, src, link string
}

type imageSpec struct {
	ref        string
	files      []imageFile
	entrypoint []string
	cmd        []string
	user       string // "" is root
}

func (c *Cluster) imageSpecs() ([]imageSpec, error) {
	shell, err := busyboxFiles()
	if err != nil {
		return nil, err
	}
	return []imageSpec{
		{ref: PauseImage, files: []imageFile{{path: "pause", src: c.bin("pause")}}, entrypoint: []string{"/pause"}},
		// http-echo as the entrypoint (the seed's args work as written),
		// with busybox beside it: manifests with exec probes (sh -c 'test
		// ! -f /tmp/unhealthy') run, and kubectl exec … touch works, as
		// any uid in /tmp (tmpMode).
		{ref: StaticServerImage, files: append(slices.Clone(shell), imageFile{path: "http-echo", src: c.bin("http-echo")}),
			entrypoint: []string{"/http-echo"}},
		{ref: StaticClientImage, files: append(slices.Clone(shell), imageFile{path: "usr/bin/curl", src: c.bin("curl")}), cmd: []string{"/bin/sh"}},
		{ref: ConsulImage, files: append(slices.Clone(shell), imageFile{path: "bin/consul", src: c.bin("consul")}), cmd: []string{"/bin/consul"}},
		{ref: MeshletImage, files: []imageFile{{path: "meshlet", src: c.bin("meshlet")},
			{path: "meshlet-proxy", src: c.bin("meshlet-proxy")},
			{path: "usr/local/bin/meshlet-cni", src: c.bin("meshlet-cni")}}, entrypoint: []string{"/meshlet"},
			// As deploy/image/Dockerfile: non-root unless the pod says
			// otherwise (only the node agent does).
			user: "65532:65532"},
		{ref: CoreDNSImage, files: []imageFile{{path: "coredns", src: c.bin("coredns")}}, entrypoint: []string{"/coredns"}},
		{ref: EnvoyStandInImage, files: append(slices.Clone(shell), imageFile{path: "usr/local/bin/envoy",
			src: filepath.Join(c.Root, "test", "e2e", "cluster", "testdata", "envoy-standin.sh")},
			// The Envoy page its admin listener serves: a recorded one.
			imageFile{path: "envoy-admin/stats/prometheus", src: filepath.Join(c.Root, "dataplane", "testdata", "envoy-stats-prometheus.txt")})},
	}, nil
}

// busyboxFiles is a shell and the usual utilities: Debian's static busybox
// and a symlink per applet.
func busyboxFiles() ([]imageFile, error) {
	out, err := exec.Command(busyboxPath, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busyboxPath, err)
	}
	files := []imageFile{{path: "bin/busybox", src: busyboxPath}}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		files = append(files, imageFile{path: applet, link: "/bin/busybox"})
	}
	return files, nil
}

// ImageArchive returns a docker-archive holding every test image, rebuilt
// only when the content of one of its input binaries changed: the kind
// cluster (test/e2e/kind/kindcluster) loads these very images too.
func (c *Cluster) ImageArchive() (string, error) { return c.imageArchive() }

// imageArchive returns a docker-archive holding every test image, rebuilt
// only when the content of one of its input binaries changed.
func (c *Cluster) imageArchive() (string, error) {
	specs, err := c.imageSpecs()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	// What buildImage adds to every image besides the spec's files, so that
	// a change there rebuilds the archive too.
	fmt.Fprintf(h, "tmp %o\n", tmpMode)
	for _, s := range specs {
		fmt.Fprintln(h, s.ref, s.entrypoint, s.cmd, s.user)
		for _, f := range s.files {
			fmt.Fprintln(h, f.path, f.link)
			if f.src != "" {
				// The content, not the mtime: make build rewrites every
				// binary, changed or not, before each cluster-up.
				if err := hashFile(h, f.src); err != nil {
					return "", fmt.Errorf("image %s: %w", s.ref, err)
				}
			}
		}
	}
	dir := filepath.Join(c.Root, "bin", "images")
	path := filepath.Join(dir, fmt.Sprintf("test-images-%x.tar", h.Sum(nil)[:8]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "test-images-*.tar"))
	refs := map[name.Reference]v1.Image{}
	for _, s := range specs {
		img, err := buildImage(s)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", s.ref, err)
		}
		tag, err := name.NewTag(s.ref)
		if err != nil {
			return "", err
		}
		refs[tag] = img
	}
	if err := tarball.MultiRefWriteToFile(path+".tmp", refs); err != nil {
		return "", err
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return "", err
	}
	for _, o := range old {
		os.Remove(o)
	}
	return path, nil
}

func hashFile(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(h, f)
	return err
}

func buildImage(s imageSpec) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDirs := func(p string) error {
		d := filepath.Dir(p)
		var chain []string
		for d != "." && !dirs[d] {
			chain = append([]string{d}, chain...)
			dirs[d] = true
			d = filepath.Dir(d)
		}
		for _, d := range chain {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				return err
			}
		}
		return nil
	}
	// Every image has a /tmp, with the mode real images give it.
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: tmpMode}); err != nil {
		return nil, err
	}
	dirs["tmp"] = true
	for _, f := range s.files {
		if err := addDirs(f.path); err != nil {
			return nil, err
		}
		if f.link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.path, Linkname: f.link, Mode: 0o777}); err != nil {
				return nil, err
			}
			continue
		}
		b, err := os.ReadFile(f.src)
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.path, Mode: 0o755, Size: int64(len(b))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	// Compressed once and cached: the archive writer asks for the
	// compressed layer more than once (digest, size, contents), and without
	// the cache each ask compressed it again (8.5 s instead of 3.5 s for
	// all the images here).
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint, cfg.Config.Cmd, cfg.Config.User = s.entrypoint, s.cmd, s.user
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	return mutate.ConfigFile(img, cfg)
}

// loadImages imports the test images into the node's containerd.
func (c *Cluster) loadImages(ctx context.Context) error {
	path, err := c.imageArchive()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", c.containerdSock(), "-n", "k8s.io",
		"images", "import", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", path, err, out)
	}
	return nil
}
