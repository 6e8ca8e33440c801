package repair

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

const (
	uid  = "61ed4823-b4d5-4f3e-8201-356b440af00d"
	uidS = "61ed4823_b4d5_4f3e_8201_356b440af00d" // the systemd driver's spelling
	cid  = "5376b184524bdf547fe95a5b7f85770221d99750e7bd06ac5f8f3c6fa04f0a71"
	// A static pod's UID: its manifest's hash.
	static = "6d3b0d2a8f0e4d3b9c6e1f2a3b4c5d6e"
	inner  = "0e8b1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"
)

// Real /proc/<pid>/cgroup contents: the local cluster's (cgroup v1,
// cgroupfs, containerd) as read on it, the others as the runtimes and
// drivers write them.
func TestPodUIDFromCgroup(t *testing.T) {
	v1Hierarchies := func(path string) string {
		var b strings.Builder
		for i, c := range []string{"name=systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset", "cpuacct", "cpu"} {
			fmt.Fprintf(&b, "%d:%s:%s\n", 9-i, c, path)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, cgroup string
		want         types.UID
	}{
		{"v1 cgroupfs containerd besteffort (local cluster)", v1Hierarchies("/kubepods/besteffort/pod"+uid+"/"+cid) + "0::/kubepods/besteffort/pod" + uid + "/" + cid + "\n", uid},
		{"v1 cgroupfs containerd guaranteed", v1Hierarchies("/kubepods/pod" + uid + "/" + cid), uid},
		{"v1 cgroupfs CRI-O burstable", "11:memory:/kubepods/burstable/pod" + uid + "/crio-" + cid + "\n", uid},
		{"v1 systemd CRI-O (OpenShift 4)", "12:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice/crio-" + cid + ".scope\n" +
			"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice/crio-" + cid + ".scope\n", uid},
		{"v1 systemd cri-dockerd besteffort", "4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidS + ".slice/docker-" + cid + ".scope\n", uid},
		{"v2 cgroupfs containerd burstable (k3s, GKE)", "0::/kubepods/burstable/pod" + uid + "/" + cid + "\n", uid},
		{"v2 systemd containerd burstable (EKS, kubeadm)", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice/cri-containerd-" + cid + ".scope\n", uid},
		{"v2 systemd containerd guaranteed", "0::/kubepods.slice/kubepods-pod" + uidS + ".slice/cri-containerd-" + cid + ".scope\n", uid},
		{"v2 systemd CRI-O besteffort", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidS + ".slice/crio-" + cid + ".scope\n", uid},
		{"v2 systemd CRI-O conmon in the pod's cgroup", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidS + ".slice/crio-conmon-" + cid + ".scope\n", uid},
		{"v2 systemd inside a container: its own sub-cgroup", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidS + ".slice/cri-containerd-" + cid + ".scope/init.scope\n", uid},
		{"v2 kind: kubelet cgroup root /kubelet", "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod" + uidS + ".slice/cri-containerd-" + cid + ".scope\n", uid},
		{"v2 read from inside a cgroup namespace", "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod" + uidS + ".slice/cri-containerd-" + cid + ".scope\n", uid},
		{"v2 cgroup removed under the process", "0::/kubepods/burstable/pod" + uid + "/" + cid + " (deleted)\n", uid},
		{"v2 static pod, cgroupfs", "0::/kubepods/burstable/pod" + static + "/" + cid + "\n", static},
		{"v2 static pod, systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + cid + ".scope\n", static},
		{"hybrid: v2 line at / first, v1 names the pod", "0::/\n1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + cid + "\n", uid},
		{"kind in a pod: the outer pod is this node's", "0::/kubepods/burstable/pod" + uid + "/" + cid + "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + strings.ReplaceAll(inner, "-", "_") + ".slice/cri-containerd-" + cid + ".scope\n", uid},
		{"no trailing newline", "0::/kubepods/pod" + uid + "/" + cid, uid},
		{"upper-case hex", "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid, types.UID(strings.ToUpper(uid))},

		{"v2 system service", "0::/system.slice/containerd.service\n", ""},
		{"v2 user session", "0::/user.slice/user-1000.slice/session-3.scope\n", ""},
		{"v1 init, every hierarchy at /", v1Hierarchies("/"), ""},
		{"kubelet's QoS cgroup, no pod", "0::/kubepods.slice/kubepods-burstable.slice\n", ""},
		{"podman container", "0::/machine.slice/libpod-" + cid + ".scope\n", ""},
		{"podman pod", "0::/machine.slice/machine-libpod_pod_" + cid + ".slice/libpod-" + cid + ".scope\n", ""},
		{"rootless podman", "0::/user.slice/user-1000.slice/user@1000.service/user.slice/podman-1234.scope\n", ""},
		{"docker without kubelet", "0::/docker/" + cid + "\n", ""},
		{"pod followed by a word", "0::/kubepods/besteffort/podcast/" + cid + "\n", ""},
		{"pods.slice", "0::/pods.slice/x.scope\n", ""},
		{"UID with dashes misplaced", "0::/kubepods/pod61ed4823b-4d5-4f3e-8201-356b440af00d/x\n", ""},
		{"UID one digit short", "0::/kubepods/pod" + uid[:35] + "/x\n", ""},
		{"UID with a non-hex digit", "0::/kubepods/pod" + strings.Replace(uid, "6", "g", 1) + "/x\n", ""},
		{"systemd UID with dashes kept (not kubelet's)", "0::/kubepods.slice/kubepods-pod" + uid + ".slice/x.scope\n", ""},
		{"a line without the cgroup fields", "pod" + uid + "\n", ""},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := podUIDFromCgroup([]byte(tc.cgroup)); got != tc.want {
				t.Errorf("pod UID = %q, want %q from\n%s", got, tc.want, tc.cgroup)
			}
		})
	}
}

// fakeProc is a /proc tree with regular files standing in for the nsfs
// links: stat follows a symlink, so processes whose ns/net links to one
// file share that "netns".
type fakeProc struct {
	t    testing.TB
	root string
}

func newFakeProc(t testing.TB) *fakeProc {
	p := &fakeProc{t, t.TempDir()}
	p.proc(1, "0::/init.scope\n", "host")
	// Entries of /proc that are not processes.
	p.write("meminfo", "MemTotal: 1 kB\n")
	p.write("sys/kernel/ostype", "Linux\n")
	if err := os.Symlink("1", filepath.Join(p.root, "self")); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *fakeProc) write(rel, content string) {
	path := filepath.Join(p.root, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// proc adds a process in the cgroup, in netns net ("": it has exited and
// its ns link is gone).
func (p *fakeProc) proc(pid int, cgroup, net string) {
	p.write(filepath.Join(strconv.Itoa(pid), "cgroup"), cgroup)
	if net == "" {
		return
	}
	target := filepath.Join(p.root, "netns-"+net)
	if _, err := os.Stat(target); err != nil {
		p.write("netns-"+net, net)
	}
	p.link(pid, target)
}

// link points the process's ns/net at target.
func (p *fakeProc) link(pid int, target string) {
	link := filepath.Join(p.root, strconv.Itoa(pid), "ns", "net")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) inode(net string) uint64 {
	id, err := statNS(filepath.Join(p.root, "netns-"+net))
	if err != nil {
		p.t.Fatal(err)
	}
	return id.ino
}

func TestIndexNetns(t *testing.T) {
	const (
		a, b, c, d = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002", "cccccccc-0000-4000-8000-000000000003", "dddddddd-0000-4000-8000-000000000004"
	)
	cgfs := func(u string) string { return "0::/kubepods/besteffort/pod" + u + "/" + cid + "\n" }
	p := newFakeProc(t)
	p.proc(2, "0::/system.slice/containerd.service\n", "host")
	// a: pause and app in the pod's netns, conmon in the pod's cgroup but
	// the host's netns, listed out of order.
	p.proc(130, cgfs(a), "a")
	p.proc(101, "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+strings.ReplaceAll(a, "-", "_")+".slice/crio-"+cid+".scope\n", "a")
	p.proc(100, "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+strings.ReplaceAll(a, "-", "_")+".slice/crio-conmon-"+cid+".scope\n", "host")
	// b: a container that made its own netns.
	p.proc(200, cgfs(b), "b1")
	p.proc(201, cgfs(b), "b2")
	p.proc(202, cgfs(b), "b2")
	// c: host network: init's netns, and the node agent's own (on the host
	// network, where a sandbox forbids reading init's).
	p.proc(300, cgfs(c), "host")
	p.proc(301, cgfs(c), "")
	p.link(301, "/proc/self/ns/net")
	// d: exited since the scan.
	p.proc(400, cgfs(d), "")

	ix, err := Scan(p.root)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Pods() != 4 {
		t.Errorf("Pods() = %d, want 4", ix.Pods())
	}
	if got := ix.PIDs(a); !slices.Equal(got, []int{100, 101, 130}) {
		t.Errorf("PIDs(a) = %v, want [100 101 130]", got)
	}
	n, err := ix.Netns(a)
	if err != nil {
		t.Fatal(err)
	}
	if n.Inode != p.inode("a") || n.Path != filepath.Join(p.root, "101", "ns", "net") || !slices.Equal(n.PIDs, []int{101, 130}) {
		t.Errorf("Netns(a) = %+v, want inode %d, pids [101 130] via pid 101", n, p.inode("a"))
	}

	for _, tc := range []struct {
		name    string
		uid     types.UID
		noProc  bool
		message []string
	}{
		{"two netns", b, false, []string{"2 network namespaces", fmt.Sprintf("net:[%d] has pids [200]", p.inode("b1")), fmt.Sprintf("net:[%d] has pids [201 202]", p.inode("b2"))}},
		{"host network only", c, true, []string{"all in the host's netns", "[300 301]"}},
		{"exited", d, true, []string{"have exited", "[400]"}},
		{"unknown pod", "eeeeeeee-0000-4000-8000-000000000005", true, []string{"no process in a cgroup of that UID under " + p.root}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ix.Netns(tc.uid)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrNoProcess) != tc.noProc {
				t.Errorf("errors.Is(err, ErrNoProcess) = %v, want %v: %v", !tc.noProc, tc.noProc, err)
			}
			for _, m := range append(tc.message, string(tc.uid)) {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error does not say %q: %v", m, err)
				}
			}
		})
	}
}

func TestScanMissingProc(t *testing.T) {
	root := filepath.Join(t.TempDir(), "proc")
	if _, err := Scan(root); err == nil || !strings.Contains(err.Error(), "scan "+root) {
		t.Errorf("Scan of a missing dir: %v", err)
	}
}

// BenchmarkScan: a full node, 110 pods of 4 processes each among 3000
// other processes. The real /proc is slower to read than a temp dir; the
// root test logs a scan of the host's.
func BenchmarkScan(b *testing.B) {
	p := newFakeProc(b)
	pid := 10
	for i := range 110 {
		u := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		for range 4 {
			p.proc(pid, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+strings.ReplaceAll(u, "-", "_")+".slice/cri-containerd-"+cid+".scope\n", u)
			pid++
		}
	}
	for range 3000 {
		p.proc(pid, "0::/system.slice/some.service\n", "host")
		pid++
	}
	b.ResetTimer()
	for b.Loop() {
		ix, err := Scan(p.root)
		if err != nil || ix.Pods() != 110 {
			b.Fatalf("Scan: %d pods, %v", ix.Pods(), err)
		}
	}
}
