package repair

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
)

// Index maps the pods of the host's processes to those processes, from one
// scan of /proc. The node agent scans once per pass: ~110 pods share a node with
// thousands of processes, and a scan per pod would read every cgroup file
// once per pod.
type Index struct {
	procRoot string
	host     []nsID // the host's netns, never a pod's
	pods     map[types.UID][]int
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

// Scan reads <procRoot>/<pid>/cgroup for every process. procRoot is the
// host's /proc: the node agent runs with hostPID (a container's own /proc shows
// its own processes only). Processes that exit during the scan are left
// out; those that start after it are found by the next one.
func Scan(procRoot string) (*Index, error) {
	// The host's netns is the node agent's own (it runs on the host network),
	// and init's where the node agent may read it (a sandbox may forbid that;
	// the node agent's own then suffices).
	self, err := statNS("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("the agent's own netns: %w", err)
	}
	host := []nsID{self}
	if init, err := statNS(filepath.Join(procRoot, "1", "ns", "net")); err == nil && init != self {
		host = append(host, init)
	}
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", procRoot, err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", procRoot, err)
	}
	ix := &Index{procRoot: procRoot, host: host, pods: map[types.UID][]int{}}
	buf := make([]byte, 0, 8192)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue // not a process: self, sys, meminfo, ...
		}
		buf, err = readInto(buf[:0], filepath.Join(procRoot, name, "cgroup"))
		if err != nil {
			continue // exited since the directory was read
		}
		if uid := podUIDFromCgroup(buf); uid != "" {
			ix.pods[uid] = append(ix.pods[uid], pid)
		}
	}
	for _, pids := range ix.pods {
		slices.Sort(pids)
	}
	return ix, nil
}

// readInto reads a whole file into buf, reusing its memory: /proc files
// report size 0, so os.ReadFile would allocate for every process.
func readInto(buf []byte, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return buf, err
	}
	defer f.Close()
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// Pods is how many pods have processes on the host.
func (ix *Index) Pods() int { return len(ix.pods) }

// PIDs are the processes in the pod's cgroup, ascending; nil when none.
func (ix *Index) PIDs(uid types.UID) []int { return ix.pods[uid] }

// ErrNoProcess: no process of the pod, outside the host's netns, was found.
var ErrNoProcess = errors.New("no process of the pod found in a pod network namespace")

// Netns is a pod's network namespace as found from the host.
type Netns struct {
	// Path is <procRoot>/<pid>/ns/net of one of the pod's processes.
	Path string
	// Dev and Inode identify the namespace; if Path's process is replaced
	// by another (PID reuse), Path names another namespace and Check and
	// Repair refuse it.
	Dev, Inode uint64
	// PIDs are the pod's processes in it.
	PIDs []int
}

func (n Netns) String() string { return fmt.Sprintf("net:[%d] (%s)", n.Inode, n.Path) }

// Netns finds the network namespace the pod's processes share. Processes
// of the pod's cgroup in the host's netns do not count (CRI-O's conmon, with
// conmon_cgroup = "pod"), and a pod's netns is never the host's; if the others are in more than one netns (a
// container that made its own), which one the pod's traffic uses is not
// known and that is an error naming them all.
func (ix *Index) Netns(uid types.UID) (Netns, error) {
	pids := ix.pods[uid]
	if len(pids) == 0 {
		return Netns{}, fmt.Errorf("pod UID %s: %w: no process in a cgroup of that UID under %s", uid, ErrNoProcess, ix.procRoot)
	}
	groups := map[nsID][]int{}
	var order []nsID
	inHost := 0
	for _, pid := range pids {
		id, err := statNS(ix.netnsPath(pid))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // exited since the scan
		}
		if err != nil {
			return Netns{}, fmt.Errorf("pod UID %s: netns of pid %d: %w", uid, pid, err)
		}
		if slices.Contains(ix.host, id) {
			inHost++
			continue
		}
		if groups[id] == nil {
			order = append(order, id)
		}
		groups[id] = append(groups[id], pid)
	}
	switch len(groups) {
	case 0:
		if inHost > 0 {
			return Netns{}, fmt.Errorf("pod UID %s: %w: its processes %v are all in the host's netns", uid, ErrNoProcess, pids)
		}
		return Netns{}, fmt.Errorf("pod UID %s: %w: its processes %v have exited", uid, ErrNoProcess, pids)
	case 1:
		id := order[0]
		return Netns{Path: ix.netnsPath(groups[id][0]), Dev: id.dev, Inode: id.ino, PIDs: groups[id]}, nil
	}
	var each []string
	for _, id := range order {
		each = append(each, fmt.Sprintf("net:[%d] has pids %v", id.ino, groups[id]))
	}
	return Netns{}, fmt.Errorf("pod UID %s: its processes are in %d network namespaces (%s): which one is the pod's is not known", uid, len(groups), strings.Join(each, ", "))
}

func (ix *Index) netnsPath(pid int) string {
	return filepath.Join(ix.procRoot, strconv.Itoa(pid), "ns", "net")
}

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return nsID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// podUIDFromCgroup returns the pod UID named in a /proc/<pid>/cgroup file,
// "" when the process is not in a pod's cgroup. Each line is
// hierarchy-ID:controllers:path; cgroup v1 has one per hierarchy, v2 one
// ("0::path"), hybrid both. They name the same pod; the first that names
// one is taken.
func podUIDFromCgroup(b []byte) types.UID {
	if !bytes.Contains(b, []byte("pod")) {
		return "" // most of a node's processes: skipped without parsing
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		_, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		if _, path, ok := bytes.Cut(rest, []byte(":")); ok {
			if uid := podUIDFromPath(string(path)); uid != "" {
				return uid
			}
		}
	}
	return ""
}

// podUIDFromPath finds the pod in a cgroup path. kubelet names a pod's
// cgroup
//
//	pod<uid>                                  cgroupfs driver
//	<parent>-pod<uid, "-" written "_">.slice  systemd driver
//
// under its QoS cgroups, whatever the runtime puts below (containerd's
// <id> or cri-containerd-<id>.scope, CRI-O's crio-<id>, crio-conmon-<id>).
// Path elements are matched rather than the whole path, so a kubelet
// cgroup root (kind's /kubelet.slice) and a cgroup namespace's view
// (/../../kubepods-...) are read as well. The first pod element is taken:
// a kubelet running inside a pod names its own pods below that pod's, and
// the pods of this node's kubelet are the outer ones.
func podUIDFromPath(path string) types.UID {
	for e := range strings.SplitSeq(path, "/") {
		if uid := podUIDFromElement(e); uid != "" {
			return uid
		}
	}
	return ""
}

func podUIDFromElement(e string) types.UID {
	var raw string
	switch {
	case strings.HasPrefix(e, "pod"):
		raw = e[len("pod"):]
	case strings.HasSuffix(e, ".slice"):
		s := strings.TrimSuffix(e, ".slice")
		i := strings.LastIndex(s, "-pod")
		if i < 0 {
			return ""
		}
		raw = s[i+len("-pod"):]
		if strings.Contains(raw, "-") {
			return "" // "-" separates slices: kubelet writes the UID's as "_"
		}
		raw = strings.ReplaceAll(raw, "_", "-")
	default:
		return ""
	}
	if !validUID(raw) {
		return "" // podman-..., pods.slice, pod-less names
	}
	return types.UID(raw)
}

// validUID accepts what kubelet names pod cgroups after: an API server UID
// (a UUID, 8-4-4-4-12 hex digits) or a static pod's UID (the 32 hex digits
// of its manifest's hash).
func validUID(s string) bool {
	switch len(s) {
	case 32:
		return isHex(s)
	case 36:
		for _, i := range []int{8, 13, 18, 23} {
			if s[i] != '-' {
				return false
			}
		}
		hex := strings.ReplaceAll(s, "-", "")
		return len(hex) == 32 && isHex(hex)
	}
	return false
}

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
