package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshlet/meshlet/iptables"
)

// The decisions of ADD, CHECK and DEL, on the interfaces of seams.go.

// doAdd returns the result ADD prints: the prevResult, unchanged but for
// the conversion to the configuration's CNI version.
func (c *call) doAdd(pods podLookup, rules ruleApplier) (res types.Result, err error) {
	log := c.log
	applying := false
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, c.panicked(log, "ADD", r)
			// An interrupted Apply did not get to roll back, so the netns
			// may hold part of the rules: remove them rather than leave a
			// half-redirected pod to a runtime that may never DEL.
			if applying {
				err = errors.Join(err, c.removeAfterPanic(log, rules))
			}
		}
		if err != nil {
			log.Error("ADD failed", "err", err, "took", time.Since(c.start))
		}
	}()
	// Converted first: failing after the rules went in would leave them.
	res, err = c.conf.PrevResult.GetAsVersion(c.conf.CNIVersion)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni: pod %s: convert prevResult to %s: %w", c.pod(), c.conf.CNIVersion, err)
	}
	if c.name == "" {
		log.Debug("no K8S_POD_NAME: not a Kubernetes pod, passing through")
		return res, nil
	}
	p, from, err := c.plan(pods)
	if from != "" {
		log = log.With("annotations_from", from)
	}
	if err != nil {
		return nil, err
	}
	if p == nil {
		log.Debug("no redirection for this pod")
		return res, nil
	}
	fams, ips, err := addresses(c.conf.PrevResult, c.args.IfName)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	applying = true
	if err := rules.Apply(c.args.Netns, p, fams); err != nil {
		// Nothing more to undo: a failed Apply has removed what it wrote
		// (iptables.Applier.Apply), and the runtime DELs the failed sandbox.
		return nil, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	log.Info("redirection applied", "families", fmt.Sprint(fams), "mode", rules.Backend(), "took", time.Since(c.start))
	c.noticeNodeAgent(log, pods, ips)
	return res, nil
}

// noticeNodeAgent sends the node agent the sandbox's IPs once its rules
// are in: the node agent can then register the pod before kubelet reports
// its IP. It needs the pod's UID, to tell this pod from an old one of the
// same name. A failure costs only that head start, so it is logged, never
// returned.
func (c *call) noticeNodeAgent(log *slog.Logger, pods podLookup, ips []string) {
	if len(ips) == 0 || c.uid == "" {
		log.Debug("no sandbox notice to the node agent", "ips", len(ips), "uid", c.uid)
		return
	}
	if err := pods.sandboxUp(c.namespace, c.name, c.uid, ips); err != nil {
		log.Info("the node agent did not take the sandbox notice; it registers the pod once kubelet reports its IP", "err", err)
	}
}

// doCheck compares the live rules with what the pod's annotations ask for;
// a pod that needs none must have none.
func (c *call) doCheck(pods podLookup, rules ruleApplier) (err error) {
	log := c.log
	defer func() {
		if r := recover(); r != nil {
			err = c.panicked(log, "CHECK", r)
		}
		if err != nil {
			log.Error("CHECK failed", "err", err)
		}
	}()
	if c.name == "" {
		log.Debug("no K8S_POD_NAME: not a Kubernetes pod, nothing to check")
		return nil
	}
	p, from, err := c.plan(pods)
	if from != "" {
		log = log.With("annotations_from", from)
	}
	if err != nil {
		return err
	}
	fams, err := families(c.conf.PrevResult, c.args.IfName)
	if err != nil {
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	if err := rules.Verify(c.args.Netns, p, fams); err != nil {
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	return nil
}

// doDel removes meshlet's rules of both families, whatever the pod's
// annotations say now: DEL makes no API call, so it works while the API
// server is away and after the pod object is gone.
func (c *call) doDel(rules ruleApplier) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = c.panicked(c.log, "DEL", r)
		}
		if err != nil {
			c.log.Error("DEL failed", "err", err)
		}
	}()
	netns := c.args.Netns
	if netns == "" {
		c.log.Debug("no netns: nothing to remove")
		return nil
	}
	if _, err := os.Stat(netns); errors.Is(err, os.ErrNotExist) {
		c.log.Debug("netns gone: nothing to remove", "netns", netns)
		return nil
	}
	skipped, err := rules.Remove(netns, bothFamilies())
	logSkipped(c.log, skipped)
	if err != nil {
		if _, serr := os.Stat(netns); errors.Is(serr, os.ErrNotExist) {
			c.log.Debug("netns torn down during DEL", "netns", netns, "err", err)
			return nil
		}
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	c.log.Debug("redirection removed")
	return nil
}

// plan decides the pod's redirection (nil: none) from its annotations, and
// says where they came from for the caller to log.
func (c *call) plan(pods podLookup) (p *iptables.Plan, from string, err error) {
	ann, from, err := pods.annotations(c.namespace, c.name)
	if err != nil {
		return nil, "", fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	if p, err = iptables.RedirectPlan(ann); err != nil {
		return nil, from, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	return p, from, nil
}

// bothFamilies: DEL and the clean-up after a panic do not know, or do not
// trust, which families the pod got rules in.
func bothFamilies() []iptables.Family { return []iptables.Family{iptables.IPv4, iptables.IPv6} }

// logSkipped notes the families Remove skipped because the kernel offers
// no nat table for them (IPv6 netfilter absent): normal, so debug only.
func logSkipped(log *slog.Logger, skipped []iptables.Family) {
	for _, f := range skipped {
		log.Debug(fmt.Sprintf("%s skipped: the kernel offers no %s nat table", f, f), "family", f.String())
	}
}

// panicked turns a panic into the call's error, naming the pod, and logs
// the stack. Crashing instead would hand the runtime a Go trace on stderr
// and no CNI error; with an error the runtime fails the sandbox and DELs
// or retries it as for any other failure.
func (c *call) panicked(log *slog.Logger, cmd string, r any) error {
	log.Error(cmd+" panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if e, ok := r.(error); ok {
		return fmt.Errorf("meshlet-cni: pod %s: %s panicked: %w", c.pod(), cmd, e)
	}
	return fmt.Errorf("meshlet-cni: pod %s: %s panicked: %v", c.pod(), cmd, r)
}

// removeAfterPanic removes meshlet's rules of both families, best effort:
// it reports, and never raises, a failure or a second panic.
func (c *call) removeAfterPanic(log *slog.Logger, rules ruleApplier) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("meshlet-cni: pod %s: removing the rules after the panic panicked too: %v", c.pod(), r)
		}
		if err != nil {
			log.Error("rules may be left in the netns", "err", err)
		}
	}()
	skipped, err := rules.Remove(c.args.Netns, bothFamilies())
	logSkipped(log, skipped)
	if err != nil {
		return fmt.Errorf("meshlet-cni: pod %s: remove the rules after the panic: %w", c.pod(), err)
	}
	log.Info("rules removed after the panic")
	return nil
}
