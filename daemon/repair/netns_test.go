package repair

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/meshlet/meshlet/iptables"
	"github.com/meshlet/meshlet/test/netnstest"
)

// The tests below run pods as kubelet would leave them on a node: a
// process in a real netns, in a cgroup named after the pod, found through
// the host's real /proc.

// hierarchies are the cgroup hierarchies to put test pods in: cgroup v2
// (unified, or hybrid's /sys/fs/cgroup/unified) and v1 (the pids
// controller's, as the local cluster's VM has).
func hierarchies(t *testing.T) map[string]string {
	out := map[string]string{}
	for name, dir := range map[string]string{"v2": "/sys/fs/cgroup", "v2-hybrid": "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			out[name] = dir
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids/cgroup.procs"); err == nil {
		out["v1"] = "/sys/fs/cgroup/pids"
	}
	if len(out) == 0 {
		t.Fatal("no cgroup hierarchy found under /sys/fs/cgroup")
	}
	return out
}

// podCgroup creates <hierarchy>/meshlet-repair-test-<random>/<rel>, removed
// at cleanup once its processes are gone.
func podCgroup(t *testing.T, hierarchy, rel string) string {
	t.Helper()
	top := filepath.Join(hierarchy, "meshlet-repair-test-"+string(uuid.NewUUID())[:8])
	dir := filepath.Join(top, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Deepest first; a cgroup is removable once its last process is
		// reaped, which the kernel may finish a moment after wait returns.
		for d := dir; d != hierarchy; d = filepath.Dir(d) {
			var err error
			for range 50 {
				if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove test cgroup: %v", err)
			}
		}
	})
	return dir
}

// startIn runs a sleep in netns n (nil: the test's own, the host's) and
// moves it into cgroup; it is killed and reaped at cleanup, by PID.
func startIn(t *testing.T, n ns.NetNS, cgroup string) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	start := func(ns.NetNS) error { return cmd.Start() }
	var err error
	if n != nil {
		err = n.Do(start) // the child inherits the locked thread's netns
	} else {
		err = start(nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatalf("move pid %d into %s: %v", pid, cgroup, err)
	}
	return pid
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := statNS(path)
	if err != nil {
		t.Fatal(err)
	}
	return id.ino
}

// TestIndexFindsRealPods: in each cgroup hierarchy of the host, pods named
// the cgroupfs and the systemd way are found in the real /proc, with the
// netns their processes share; a process of the pod in the host's netns
// (CRI-O's conmon) does not count.
func TestIndexFindsRealPods(t *testing.T) {
	netnstest.RequireRoot(t)
	for name, hier := range hierarchies(t) {
		t.Run(name, func(t *testing.T) {
			fsUID, sdUID := uuid.NewUUID(), uuid.NewUUID()
			fsNS, sdNS := netnstest.NewNS(t), netnstest.NewNS(t)
			fs := podCgroup(t, hier, "kubepods/besteffort/pod"+string(fsUID))
			sdPod := "kubepods-burstable-pod" + strings.ReplaceAll(string(sdUID), "-", "_") + ".slice"
			sdPause := podCgroup(t, hier, "kubepods.slice/kubepods-burstable.slice/"+sdPod+"/cri-containerd-"+cid+".scope")
			sdConmon := filepath.Join(filepath.Dir(sdPause), "crio-conmon-"+cid+".scope")
			if err := os.Mkdir(sdConmon, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.Remove(sdConmon) }) // runs after the kills below
			fsPids := []int{startIn(t, fsNS, fs), startIn(t, fsNS, fs)}
			sdPid := startIn(t, sdNS, sdPause)
			conmon := startIn(t, nil, sdConmon)

			t0 := time.Now()
			ix, err := Scan("/proc")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("scanned the host's /proc in %v: %d pods", time.Since(t0), ix.Pods())
			slices.Sort(fsPids)
			for _, tc := range []struct {
				name     string
				uid      types.UID
				n        ns.NetNS
				pids, in []int
			}{
				{"cgroupfs", fsUID, fsNS, fsPids, fsPids},
				{"systemd", sdUID, sdNS, []int{sdPid, conmon}, []int{sdPid}},
			} {
				if got := ix.PIDs(tc.uid); !sameSet(got, tc.pids) {
					t.Errorf("%s: PIDs = %v, want %v", tc.name, got, tc.pids)
				}
				got, err := ix.Netns(tc.uid)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				if want := inode(t, tc.n.Path()); got.Inode != want || !sameSet(got.PIDs, tc.in) {
					t.Errorf("%s: Netns = %v, pids %v; want net:[%d], pids %v", tc.name, got, got.PIDs, want, tc.in)
				}
			}
		})
	}
}

func sameSet(a, b []int) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestInspectInRealNetns: a pod started without the plugin is found
// unprotected, repaired in place and then found protected; a pod whose
// rules the plugin wrote is found protected; a rule deleted by hand is
// found and repaired; a netns reached through a reused PID is refused.
func TestInspectInRealNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	hier := hierarchies(t)
	dir := hier["v2"]
	for _, h := range []string{"v2-hybrid", "v1"} {
		if dir == "" {
			dir = hier[h]
		}
	}
	for _, mode := range []iptables.Mode{iptables.ModeNFT, iptables.ModeLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			r := &Repairer{Mode: ModeAuto, IptablesMode: string(mode), LockDir: t.TempDir(), Node: "node-1"}
			newPod := func(mutate ...func(*corev1.Pod)) (*corev1.Pod, ns.NetNS) {
				uid := uuid.NewUUID()
				n := netnstest.NewNS(t)
				startIn(t, n, podCgroup(t, dir, "kubepods/burstable/pod"+string(uid)))
				pod := injectedPod(append([]func(*corev1.Pod){func(p *corev1.Pod) {
					p.UID = uid
					p.Status.PodIPs = []corev1.PodIP{{IP: netnstest.PodIP4.String()}, {IP: netnstest.PodIP6.String()}}
				}}, mutate...)...)
				return pod, n
			}
			bare, bareNS := newPod()
			owned, _ := newPod(controlled("ReplicaSet"))
			byPlugin, byPluginNS := newPod(controlled("ReplicaSet"))
			plan := planOf(t, bare)
			both := []iptables.Family{iptables.IPv4, iptables.IPv6}
			plugin := iptables.Applier{Mode: mode, LockDir: t.TempDir()}
			if err := plugin.Apply(byPluginNS.Path(), plan, both); err != nil {
				t.Fatal(err)
			}
			ix, err := Scan("/proc")
			if err != nil {
				t.Fatal(err)
			}
			inspect := func(pod *corev1.Pod) Finding {
				t.Helper()
				f, err := r.Inspect(pod, ix)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}

			// Started without the plugin: none of meshlet's rules.
			t0 := time.Now()
			f := inspect(bare)
			t.Logf("Inspect of an unprotected pod took %v", time.Since(t0))
			if f.Verdict != Unprotected || !f.Missing || f.Action != ActionRepair || f.Netns.Inode != inode(t, bareNS.Path()) || !slices.Equal(f.Families, both) {
				t.Fatalf("bare pod without rules: %s, missing %v, %s in %v for %v (%v)", f.Verdict, f.Missing, f.Action, f.Netns, f.Families, f.Problem)
			}
			if e := f.Event(nil); e.Reason != ReasonMissing || !strings.Contains(e.Message, "started before meshlet-cni was installed on node node-1") {
				t.Errorf("Event = %+v", e)
			}
			if f := inspect(owned); f.Verdict != Unprotected || f.Action != ActionDelete {
				t.Errorf("owned pod without rules: %s, %s", f.Verdict, f.Action)
			}
			if err := r.Fix(f); err != nil {
				t.Fatal(err)
			}
			// Checked through the netns' own path, not the node agent's.
			if err := plugin.Verify(bareNS.Path(), plan, both); err != nil {
				t.Errorf("after Fix: %v", err)
			}
			t0 = time.Now()
			if f := inspect(bare); f.Verdict != Protected || f.Action != ActionNone {
				t.Errorf("after Fix: %s, %s (%v)", f.Verdict, f.Action, f.Problem)
			}
			t.Logf("Inspect of a protected pod took %v", time.Since(t0))

			// Set up by the plugin: nothing to do.
			if f := inspect(byPlugin); f.Verdict != Protected || f.Action != ActionNone {
				t.Errorf("pod the plugin set up: %s, %s (%v)", f.Verdict, f.Action, f.Problem)
			}

			// A rule deleted by hand: drift, not a missing set.
			err = byPluginNS.Do(func(ns.NetNS) error {
				out, err := exec.Command("iptables-"+string(mode), "-t", "nat", "-D", iptables.ChainOutput,
					"-o", "lo", "-m", "comment", "--comment", "meshlet/via-lo", "-j", "RETURN").CombinedOutput()
				if err != nil {
					t.Errorf("%v: %s", err, out)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			f = inspect(byPlugin)
			if f.Verdict != Unprotected || f.Missing || f.Problem == nil || !strings.Contains(f.Problem.Error(), "meshlet/via-lo") {
				t.Fatalf("deleted rule: %s, missing %v (%v)", f.Verdict, f.Missing, f.Problem)
			}
			if err := r.Repair(f.Netns, f.Plan, f.Families); err != nil {
				t.Fatal(err)
			}
			if err := plugin.Verify(byPluginNS.Path(), plan, both); err != nil {
				t.Errorf("after Repair: %v", err)
			}

			// A Netns whose path has come to name another netns (its
			// process exited, the PID went to a process elsewhere) is
			// refused, and that netns gets nothing. A throwaway netns
			// stands in for the host's: a broken guard must not be able to
			// redirect the test machine's traffic.
			decoy := netnstest.NewNS(t)
			reused := f.Netns
			reused.Path = decoy.Path()
			if err := r.Repair(reused, plan, both); err == nil || !strings.Contains(err.Error(), "PID was reused") {
				t.Errorf("Repair through a path to another netns: %v", err)
			}
			if err := plugin.Verify(decoy.Path(), nil, nil); err != nil {
				t.Errorf("the other netns got rules: %v", err)
			}
		})
	}
}
