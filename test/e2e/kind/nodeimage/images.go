package nodeimage

import (
	"compress/gzip"
	"context"
	"embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// podfiles are files of the images (not of the node): the wrapper that
// picks the node's iptables flavour before kube-proxy or kube-router runs.
//
//go:embed podfiles
var podfiles embed.FS

// k8sImages is what kubeadm says the node needs.
type k8sImages struct {
	version string   // the Kubernetes version (kubeadm's own)
	refs    []string // kubeadm config images list, in its order
}

func (k k8sImages) ref(component string) string {
	for _, r := range k.refs {
		if repoBase(r) == component {
			return r
		}
	}
	return ""
}

// repoBase is the last path element of an image reference's repository:
// "registry.k8s.io/coredns/coredns:v1.12.1" → "coredns".
func repoBase(ref string) string {
	repo := ref
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return path.Base(repo)
}

func tagOf(ref string) string { return ref[strings.LastIndex(ref, ":")+1:] }

func (b *Builder) kubeadmImages(ctx context.Context) (k8sImages, error) {
	kubeadm := b.bin("kubeadm")
	v, err := run(ctx, nil, kubeadm, "version", "-o", "short")
	if err != nil {
		return k8sImages{}, fmt.Errorf("%w (make tools builds bin/kubeadm)", err)
	}
	out, err := run(ctx, nil, kubeadm, "config", "images", "list", "--kubernetes-version", v)
	if err != nil {
		return k8sImages{}, err
	}
	return k8sImages{version: v, refs: strings.Fields(out)}, nil
}

// podImage is one image for the node's containerd: its files on top of an
// optional rootfs tarball.
type podImage struct {
	ref        string
	rootfs     string // a rootfs tarball under the files, or ""
	files      []fileSpec
	entrypoint []string
	// binary, run with versionArgs, prints the version the image's tag
	// must name (versionRE's group; compared without a leading "v" or a
	// build suffix), so that a pin bumped on one side only fails here,
	// not later in a cluster.
	binary      string
	versionArgs []string
	versionRE   string
}

const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// kubeRouterImage names the kube-router image; its tag is the version
// test/tools/kube-router pins.
func (b *Builder) kubeRouterImage() (string, error) {
	mod, err := os.ReadFile(filepath.Join(b.Root, "test", "tools", "kube-router", "go.mod"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`github.com/cloudnativelabs/kube-router/v2 (v\S+)`).FindSubmatch(mod)
	if m == nil {
		return "", fmt.Errorf("test/tools/kube-router/go.mod requires no github.com/cloudnativelabs/kube-router/v2")
	}
	return "localhost/meshlet/kube-router:" + string(m[1]), nil
}

// podImages lists every image the node's containerd holds: kubeadm's
// (the control plane, kube-proxy, etcd, CoreDNS, pause) and kube-router.
func (b *Builder) podImages(k k8sImages, netTar string) ([]podImage, error) {
	var imgs []podImage
	for _, ref := range k.refs {
		c := repoBase(ref)
		img := podImage{ref: ref}
		switch c {
		case "kube-apiserver", "kube-controller-manager", "kube-scheduler":
			img.binary = b.bin(c)
			img.files = []fileSpec{{path: "usr/local/bin/" + c, src: img.binary, mode: 0o755}}
			img.entrypoint = []string{"/usr/local/bin/" + c}
			img.versionArgs, img.versionRE = []string{"--version"}, `Kubernetes v(\S+)`
		case "kube-proxy":
			img.binary, img.rootfs = b.bin(c), netTar
			img.files = netfilterWrapped(c, img.binary)
			img.entrypoint = []string{"/usr/local/bin/" + c}
			img.versionArgs, img.versionRE = []string{"--version"}, `Kubernetes v(\S+)`
		case "etcd":
			img.binary = b.bin("kindnode", "etcd")
			img.files = []fileSpec{{path: "usr/local/bin/etcd", src: img.binary, mode: 0o755}}
			img.entrypoint = []string{"/usr/local/bin/etcd"}
			img.versionArgs, img.versionRE = []string{"--version"}, `etcd Version: (\S+)`
		case "coredns":
			img.binary = b.bin("kindnode", "coredns")
			img.files = []fileSpec{{path: "coredns", src: img.binary, mode: 0o755}}
			img.entrypoint = []string{"/coredns"}
			img.versionArgs, img.versionRE = []string{"-version"}, `CoreDNS-(\S+)`
		case "pause":
			// meshlet's pause (test/images/pause), under kubeadm's name.
			img.files = []fileSpec{{path: "pause", src: b.bin("pause"), mode: 0o755}}
			img.entrypoint = []string{"/pause"}
		default:
			return nil, fmt.Errorf("kubeadm names image %s, which this builder cannot make", ref)
		}
		imgs = append(imgs, img)
	}
	kr, err := b.kubeRouterImage()
	if err != nil {
		return nil, err
	}
	krBin := b.bin("kindnode", "kube-router")
	imgs = append(imgs, podImage{ref: kr, rootfs: netTar,
		files:      netfilterWrapped("kube-router", krBin),
		entrypoint: []string{"/usr/local/bin/kube-router"},
		binary:     krBin, versionArgs: []string{"--version"}, versionRE: `version v(\S+),`})
	return imgs, nil
}

// netfilterWrapped installs binary src as name.bin, behind the wrapper
// that selects the node's iptables flavour first.
func netfilterWrapped(name, src string) []fileSpec {
	return []fileSpec{
		{path: "usr/local/bin/" + name, data: mustPodfile("netfilter-wrapper"), mode: 0o755},
		{path: "usr/local/bin/" + name + ".bin", src: src, mode: 0o755},
		{path: "usr/local/bin/iptables-flavour", data: mustPodfile("iptables-flavour"), mode: 0o755},
	}
}

func mustPodfile(name string) []byte {
	b, err := podfiles.ReadFile("podfiles/" + name)
	if err != nil {
		panic(err) // embedded: present at build time
	}
	return b
}

// checkVersion runs the image's binary and compares its version with the
// image's tag.
func checkVersion(ctx context.Context, img podImage) error {
	if img.binary == "" {
		return nil
	}
	// Some print it on stderr (kube-router).
	out, err := exec.CommandContext(ctx, img.binary, img.versionArgs...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", img.binary, strings.Join(img.versionArgs, " "), err, out)
	}
	got := ""
	if m := regexp.MustCompile(img.versionRE).FindSubmatch(out); m != nil {
		got = string(m[1])
	}
	// kubeadm's etcd tags carry a build suffix (3.6.5-0) the binary does not.
	want, _, _ := strings.Cut(strings.TrimPrefix(tagOf(img.ref), "v"), "-")
	if got != want {
		return fmt.Errorf("image %s: %s says version %q, not %s: its pin under test/tools and the image's tag disagree",
			img.ref, img.binary, got, want)
	}
	return nil
}

// imageArchive returns a docker-archive of every pod image, rebuilt only
// when an input's content changed.
func (b *Builder) imageArchive(ctx context.Context, k k8sImages) (string, error) {
	netTar, _, err := b.tarball(ctx, netRootfs)
	if err != nil {
		return "", fmt.Errorf("rootfs for kube-proxy and kube-router: %w", err)
	}
	imgs, err := b.podImages(k, netTar)
	if err != nil {
		return "", err
	}
	kh, sum := newKey()
	for _, img := range imgs {
		kh.str(img.ref, img.rootfs, strings.Join(img.entrypoint, " "), pathEnv)
		if err := kh.files(img.files); err != nil {
			return "", fmt.Errorf("image %s: %w", img.ref, err)
		}
	}
	path := filepath.Join(b.cacheDir(), "images-"+sum()+".tar")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	for _, img := range imgs {
		if err := checkVersion(ctx, img); err != nil {
			return "", err
		}
	}
	t0 := time.Now()
	refs := map[name.Reference]v1.Image{}
	rootfsLayers := map[string]v1.Layer{} // one layer object per tarball: written once
	for _, img := range imgs {
		i, err := b.buildPodImage(img, rootfsLayers)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", img.ref, err)
		}
		tag, err := name.NewTag(img.ref)
		if err != nil {
			return "", err
		}
		refs[tag] = i
	}
	err = replaceCached(path, filepath.Join(b.cacheDir(), "images-*.tar"), func(tmp string) error {
		return tarball.MultiRefWriteToFile(tmp, refs)
	})
	if err != nil {
		return "", err
	}
	b.Log.Info("pod images built", "images", len(imgs), "took", time.Since(t0).Round(time.Millisecond))
	return path, nil
}

func (b *Builder) buildPodImage(img podImage, rootfsLayers map[string]v1.Layer) (v1.Image, error) {
	var layers []v1.Layer
	if img.rootfs != "" {
		l, ok := rootfsLayers[img.rootfs]
		if !ok {
			var err error
			l, err = tarball.LayerFromFile(img.rootfs, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
			if err != nil {
				return nil, err
			}
			rootfsLayers[img.rootfs] = l
		}
		layers = append(layers, l)
	}
	files := img.files
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTar(pw, files)) }()
		return pr, nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}
	i, err := mutate.AppendLayers(empty.Image, append(layers, l)...)
	if err != nil {
		return nil, err
	}
	cfg, err := i.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = img.entrypoint
	cfg.Config.Env = []string{pathEnv}
	return mutate.ConfigFile(i, cfg)
}
