package nodeimage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// suite is the Debian release of every rootfs here: the one the harness's
// machines run, whose apt sources they have.
const suite = "bookworm"

// rootfs is a Debian tree made by mmdebstrap from the host's apt sources:
// the Essential set plus packages (and what they depend on).
type rootfs struct {
	name     string
	packages []string
}

var (
	// nodeRootfs is what kind's base image holds, from Debian: systemd as
	// init, containerd and runc, the netfilter and mount tools the kubelet
	// and kube-proxy use.
	nodeRootfs = rootfs{"node", []string{
		"systemd", "systemd-sysv", "dbus", "containerd", "runc",
		"iptables", "nftables", "conntrack", "iproute2", "ethtool",
		"util-linux", "mount", "kmod", "procps", "ca-certificates", "curl", "pigz",
	}}
	// netRootfs is the layer under the images whose binaries call the
	// netfilter tools: kube-proxy and kube-router.
	netRootfs = rootfs{"net", []string{"iptables", "nftables", "ipset", "conntrack", "iproute2"}}
)

// dpkgExcludes keep documentation out: nothing in a node reads it.
var dpkgExcludes = []string{"/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"}

// aptSources are the host's enabled apt source files, which mmdebstrap
// copies into the new tree: the Debian mirror apt already uses here.
func aptSources() ([]string, error) {
	var files []string
	if st, err := os.Stat("/etc/apt/sources.list"); err == nil && st.Size() > 0 {
		files = append(files, "/etc/apt/sources.list")
	}
	for _, pat := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join("/etc/apt/sources.list.d", pat))
		files = append(files, m...)
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("no apt sources in /etc/apt: the node image is made from the host's Debian (%s) mirror", suite)
	}
	return files, nil
}

// aptOptions are the host's settings for reaching its mirror (proxies,
// whether an old Release file is accepted), passed to mmdebstrap's apt.
func aptOptions(ctx context.Context) ([]string, error) {
	out, err := run(ctx, nil, "apt-config", "dump", "Acquire::http", "Acquire::https",
		"Acquire::Check-Valid-Until", "Acquire::Check-Date")
	if err != nil {
		return nil, err
	}
	var opts []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			opts = append(opts, l)
		}
	}
	return opts, nil
}

// mmdebstrapArgs are the options that make rootfs r, and the host's
// source files; with them, its content key.
func mmdebstrapArgs(ctx context.Context, r rootfs) (args, sources []string, key string, err error) {
	if sources, err = aptSources(); err != nil {
		return nil, nil, "", err
	}
	aptOpts, err := aptOptions(ctx)
	if err != nil {
		return nil, nil, "", err
	}
	args = []string{"--quiet", "--variant=essential", "--include=" + strings.Join(r.packages, ",")}
	for _, x := range dpkgExcludes {
		args = append(args, "--dpkgopt=path-exclude="+x)
	}
	for _, o := range aptOpts {
		args = append(args, "--aptopt="+o)
	}
	k, sum := newKey()
	k.str(append([]string{"mmdebstrap", suite}, args...)...)
	for _, s := range sources {
		if err := k.file(s); err != nil {
			return nil, nil, "", err
		}
	}
	return args, sources, sum(), nil
}

// tarball returns the path of rootfs r as a tar file and its key, made
// with mmdebstrap unless the cache holds it.
func (b *Builder) tarball(ctx context.Context, r rootfs) (string, string, error) {
	args, sources, key, err := mmdebstrapArgs(ctx, r)
	if err != nil {
		return "", "", err
	}
	path := filepath.Join(b.cacheDir(), fmt.Sprintf("rootfs-%s-%s.tar", r.name, key))
	if _, err := os.Stat(path); err == nil {
		return path, key, nil
	}
	t0 := time.Now()
	b.Log.Info("making a Debian rootfs with mmdebstrap", "rootfs", r.name, "packages", len(r.packages))
	err = replaceCached(path, filepath.Join(b.cacheDir(), "rootfs-"+r.name+"-*.tar"), func(tmp string) error {
		_, err := run(ctx, nil, "mmdebstrap", append(append(args, suite, tmp), sources...)...)
		return err
	})
	if err != nil {
		return "", "", err
	}
	b.Log.Info("rootfs made", "rootfs", r.name, "took", time.Since(t0).Round(time.Millisecond))
	return path, key, nil
}

// baseImage returns the Docker image of the node's rootfs, imported from
// a new tarball when Docker lacks it.
func (b *Builder) baseImage(ctx context.Context) (string, error) {
	_, _, key, err := mmdebstrapArgs(ctx, nodeRootfs)
	if err != nil {
		return "", err
	}
	ref := baseRepo + ":" + key
	if imageExists(ctx, ref) {
		return ref, nil
	}
	tar, _, err := b.tarball(ctx, nodeRootfs)
	if err != nil {
		return "", err
	}
	// systemd reads "container" to know it runs in one.
	if _, err := docker(ctx, "import", "--change", "ENV container=docker",
		"--change", "LABEL "+labelBase+"="+key, tar, ref); err != nil {
		return "", err
	}
	// Docker holds it now; the tarball would only take space.
	os.Remove(tar)
	if err := pruneImages(ctx, labelBase, ref); err != nil {
		b.Log.Warn("older base images stay", "err", err)
	}
	return ref, nil
}
