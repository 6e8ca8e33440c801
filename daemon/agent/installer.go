package agent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/daemon/install"
)

// runInstaller installs meshlet-cni (retrying until it works), keeps it
// chained, renews its credentials, and on the way out removes it only when
// the node agent's DaemonSet is being deleted: a rolling update or a restart
// must not leave a window in which new pods start without redirection.
func (a *Agent) runInstaller(ctx context.Context) error {
	c := a.cfg.CNI
	creds := cniCreds{client: a.client, namespace: c.Namespace, serviceAccount: c.ServiceAccount,
		server: c.APIServer, caData: c.CAData, ttl: c.TokenTTL}
	ic := install.InstallConfig{ConfDir: c.ConfDir, BinDir: c.BinDir, Binary: c.Binary, KubeconfigPath: c.KubeconfigPath,
		LogFile: c.LogFile, LogLevel: c.LogLevel, NodeAgentSocket: a.cfg.Socket}
	node := &corev1.ObjectReference{Kind: "Node", Name: a.cfg.NodeName, UID: types.UID(a.cfg.NodeName)}

	// Followed from now, so that SIGTERM finds the answer already known
	// (owner.go says why).
	var own *owner
	if c.UninstallOnDelete && a.cfg.PodName != "" {
		o, err := findOwner(ctx, a.client, c.Namespace, a.cfg.PodName)
		if err != nil {
			a.log.Warn("cannot find the agent's DaemonSet now; looking again when stopping", "err", err)
		} else {
			own = o
			go own.run(ctx)
		}
	}

	var renewAt time.Time
	installOnce := func() error {
		kc, renew, err := creds.kubeconfig(ctx)
		if err != nil {
			return err
		}
		ic.Kubeconfig = kc
		res, err := install.Install(ic)
		if err != nil {
			return err
		}
		renewAt = renew
		a.log.Info("meshlet-cni installed", "config", res.Config, "chained", res.Chained, "binary_written", res.BinaryWritten,
			"kubeconfig_written", res.KubeconfigWritten, "replaced", res.Replaced, "token_renewal", renew.Format(time.RFC3339))
		return nil
	}
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		// Once Watch runs, the mode changes only with Watch's entry below.
		ic.IptablesMode = a.ipt.current()
		err := installOnce()
		if err == nil {
			break
		}
		a.metrics.cniEvents.WithLabelValues("failed").Inc()
		a.log.Error("install meshlet-cni; retrying", "err", err, "in", wait)
		a.events.Event(node, corev1.EventTypeWarning, "MeshletCNIInstallFailed", err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	a.installed.Store(true)
	a.metrics.cniInstalled.Set(1)
	a.askRepair()

	// watchedMode is the iptables_mode of the entry Watch keeps chained:
	// a Watch holding another mode would put its entry back.
	var watchedMode string
	watch := func() (stop func()) {
		wctx, wcancel := context.WithCancel(ctx)
		watchedMode = ic.IptablesMode
		done := make(chan struct{})
		go func(ic install.InstallConfig) {
			defer close(done)
			if err := install.Watch(wctx, ic, func(e install.Event) { a.cniEvent(node, e) }); err != nil && wctx.Err() == nil {
				a.log.Error("watching the CNI conf dir stopped", "err", err)
			}
		}(ic)
		return func() { wcancel(); <-done }
	}
	stopWatch := watch()
	modeKnown := a.ipt.known
	for {
		select {
		case <-ctx.Done():
			stopWatch()
			a.uninstallIfDeleted(ic, own)
			return nil
		case <-modeKnown:
			modeKnown = nil
			if m := a.ipt.current(); m != watchedMode {
				stopWatch()
				ic.IptablesMode = m
				stopWatch = watch() // its first pass chains the entry with m
				a.log.Info("the host's iptables backend is known: meshlet-cni's entry names it from now on", "mode", m)
			}
			continue
		case <-time.After(time.Until(renewAt)):
		}
		if err := installOnce(); err != nil {
			// The old token still has a fifth of its life: retry soon.
			a.log.Error("renew meshlet-cni's credentials; retrying in 30s", "err", err)
			renewAt = time.Now().Add(30 * time.Second)
		}
	}
}

// cniEvent reports what install.Watch did: a log line always, a metric,
// and an Event on the node when a user should look.
func (a *Agent) cniEvent(node *corev1.ObjectReference, e install.Event) {
	switch e.Kind {
	case install.Watching:
		a.log.Info("watching the CNI conf dir", "config", e.Config)
	case install.Rechained:
		a.metrics.cniEvents.WithLabelValues("rechained").Inc()
		a.log.Info("meshlet-cni chained again", "config", e.Config, "removals_in_window", e.Count)
		a.askRepair() // pods may have started while it was missing
	case install.Fighting:
		a.metrics.cniEvents.WithLabelValues("fighting").Inc()
		msg := fmt.Sprintf("%s keeps losing meshlet-cni's entry (%d times recently): another CNI installer rewrites it; new pods may start without redirection while it does", e.Config, e.Count)
		a.log.Warn("CNI config fight", "config", e.Config, "count", e.Count)
		a.events.Event(node, corev1.EventTypeWarning, "MeshletCNIConfigFight", msg)
	case install.Failed:
		a.metrics.cniEvents.WithLabelValues("failed").Inc()
		a.metrics.cniInstalled.Set(0)
		a.log.Error("chaining meshlet-cni failed; retrying on the next change", "err", e.Err)
		a.events.Event(node, corev1.EventTypeWarning, "MeshletCNIInstallFailed", e.Err.Error())
		return
	}
	a.metrics.cniInstalled.Set(1)
}

// uninstallIfDeleted removes meshlet-cni when the node agent's DaemonSet is
// gone or being deleted (an uninstall), and leaves it otherwise, and when
// it cannot tell. own is nil when the DaemonSet could not be found at
// start.
func (a *Agent) uninstallIfDeleted(ic install.InstallConfig, own *owner) {
	if !a.cfg.CNI.UninstallOnDelete || a.cfg.PodName == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	if own == nil {
		own, err = findOwner(ctx, a.client, a.cfg.CNI.Namespace, a.cfg.PodName)
	}
	deleted := false
	if err == nil {
		deleted, err = own.isDeleted(ctx)
	}
	if err != nil {
		a.log.Warn("cannot tell whether the agent is being uninstalled; leaving meshlet-cni installed", "err", err)
		return
	}
	if !deleted {
		a.log.Info("agent stopping, not uninstalled: meshlet-cni stays chained")
		return
	}
	if err := install.Uninstall(ic); err != nil {
		a.log.Error("uninstall meshlet-cni", "err", err)
		return
	}
	a.log.Info("meshlet-cni uninstalled: the agent's DaemonSet is deleted")
}

// askRepair asks for a repair pass soon; one pending request is enough.
func (a *Agent) askRepair() {
	if a.repairNow == nil {
		return
	}
	select {
	case a.repairNow <- struct{}{}:
	default:
	}
}
