package agent

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/daemon/repair"
)

// confirmDelay separates the two looks at a pod before the node agent acts: a
// sandbox being recreated can briefly show an IP before its CNI ADD has
// finished, and a pod whose rules are still missing after this long, in
// the same netns, started without the plugin.
const confirmDelay = 2 * time.Second

// runRepair looks for injected pods running without redirection once the
// plugin is chained (a pod deleted before that would come back
// unprotected), again whenever the entry had to be chained again, and
// every RepairInterval.
func (a *Agent) runRepair(ctx context.Context) {
	t := time.NewTicker(a.cfg.Repair.Interval)
	defer t.Stop()
	reported := map[types.UID]string{}
	for {
		if a.repairer.IptablesMode == "" {
			// The same backend as meshlet-cni's entry (iptmode.go); the
			// failure at start was logged.
			if m, err := a.ipt.resolve(); err != nil {
				a.log.Debug("repair postponed: the host's iptables backend is still unknown", "err", err)
			} else {
				a.repairer.IptablesMode = m
			}
		}
		if a.installed.Load() && a.repairer.IptablesMode != "" {
			a.repairPass(ctx, reported)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.repairNow:
		case <-t.C:
		}
	}
}

// repairPass inspects every pod of the node, confirms what needs action
// with a second look, and acts: repair in place, delete, or report. One
// Event per pod and outcome: a pod only reported is not re-reported on
// every pass.
func (a *Agent) repairPass(ctx context.Context, reported map[types.UID]string) {
	pods, err := a.sync.Pods.List(labels.Everything())
	if err != nil {
		return
	}
	first := a.inspect(pods)
	if len(first) == 0 {
		prune(reported, pods)
		return
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(confirmDelay):
	}
	// The second look is a new look at the pods too: one deleted since the
	// first (by an earlier pass, its controller or a user) is being
	// deleted now, and must not be deleted, and counted, again.
	if pods, err = a.sync.Pods.List(labels.Everything()); err != nil {
		return
	}
	again := a.inspect(pods)
	for uid, f := range first {
		g, ok := again[uid]
		if !ok || g.Action != f.Action || g.Netns.Inode != f.Netns.Inode {
			continue // fixed itself, gone, or a new sandbox: look next pass
		}
		pod := g.pod
		var controller types.UID
		if ref := metav1.GetControllerOfNoCopy(pod); ref != nil {
			controller = ref.UID
		}
		g.Finding = a.brake.Check(g.Finding, controller, a.repairer.Mode, time.Now())
		var result error
		switch g.Action {
		case repair.ActionRepair:
			result = a.repairer.Fix(g.Finding)
		case repair.ActionDelete:
			result = a.client.Pods(pod.Namespace).Delete(ctx, pod.Name, g.DeleteOptions())
			if apierrors.IsNotFound(result) || apierrors.IsConflict(result) {
				result = nil // already gone, or replaced
			}
			if result == nil {
				a.brake.Deleted(controller, time.Now())
			}
		}
		outcome := g.Outcome(result)
		a.metrics.repairs.WithLabelValues(outcome).Inc()
		log := a.log.With("pod", pod.Namespace+"/"+pod.Name, "netns", g.Netns.String(), "outcome", outcome, "problem", g.Problem)
		if result != nil {
			log.Error("unprotected pod: action failed", "action", g.Action, "err", result)
		} else {
			log.Warn("unprotected pod", "action", g.Action)
		}
		if reported[uid] == outcome && g.Action == repair.ActionReport {
			continue
		}
		reported[uid] = outcome
		e := g.Event(result)
		a.events.Event(pod, e.Type, e.Reason, e.Message)
	}
	prune(reported, pods)
}

type finding struct {
	repair.Finding
	pod *corev1.Pod
}

// inspect returns the pods that need an action. A pod that could not be
// checked (no process yet, iptables failing) is left for the next pass:
// a broken tool must never get pods deleted.
func (a *Agent) inspect(pods []*corev1.Pod) map[types.UID]finding {
	ix, err := repair.Scan(a.cfg.Repair.ProcRoot)
	if err != nil {
		a.log.Error("repair: scan the host's processes", "err", err)
		return nil
	}
	out := map[types.UID]finding{}
	for _, pod := range pods {
		f, err := a.repairer.Inspect(pod, ix)
		if err != nil {
			a.log.Debug("repair: pod not checked", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			continue
		}
		if f.Action != repair.ActionNone {
			out[pod.UID] = finding{f, pod}
		}
	}
	return out
}

func prune(reported map[types.UID]string, pods []*corev1.Pod) {
	live := map[types.UID]bool{}
	for _, p := range pods {
		live[p.UID] = true
	}
	for uid := range reported {
		if !live[uid] {
			delete(reported, uid)
		}
	}
}
