package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshlet/meshlet/iptables"
)

// errPluginNotAvailable is CNI's well-known code for STATUS: the plugin
// cannot service ADD.
const errPluginNotAvailable = 50

// call is one invocation: the parsed configuration, the pod, a logger.
type call struct {
	conf      *NetConf
	args      *skel.CmdArgs
	namespace string
	name      string
	log       *slog.Logger
	closeLog  func()
}

func newCall(cmd string, args *skel.CmdArgs, requirePrev bool) (*call, error) {
	conf, err := parseConf(args.StdinData, requirePrev)
	if err != nil {
		return nil, err
	}
	k, err := parseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	c := &call{conf: conf, args: args, namespace: string(k.K8S_POD_NAMESPACE), name: string(k.K8S_POD_NAME)}
	c.log, c.closeLog = newLogger(conf)
	c.log = c.log.With("cmd", cmd, "container", shortID(args.ContainerID), "pod_namespace", c.namespace, "pod_name", c.name)
	return c, nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func newLogger(conf *NetConf) (*slog.Logger, func()) {
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(conf.LogLevel))
	var w io.Writer = os.Stderr
	closeFn := func() {}
	if conf.LogFile != "" {
		if f, err := os.OpenFile(conf.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
			w, closeFn = f, func() { f.Close() }
		}
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), closeFn
}

func (c *call) pod() string { return c.namespace + "/" + c.name }

func (c *call) applier() (iptables.Applier, error) {
	mode, err := iptables.ParseMode(c.conf.IptablesMode)
	if err != nil {
		return iptables.Applier{}, fmt.Errorf("meshlet-cni: %w", err)
	}
	return iptables.Applier{Mode: mode, LockDir: c.conf.LockDir}, nil
}

// plan decides the pod's redirection (nil: none) from its annotations: the
// runtime's copy when it passes one, else the API server's.
func (c *call) plan() (*iptables.Plan, error) {
	ann, from := c.conf.RuntimeConfig.PodAnnotations, "runtime"
	if ann == nil {
		var err error
		if ann, err = c.annotationsFromAPI(); err != nil {
			return nil, err
		}
		from = "api"
	}
	c.log = c.log.With("annotations_from", from)
	p, err := iptables.PlanForPod(ann)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	return p, nil
}

func (c *call) annotationsFromAPI() (map[string]string, error) {
	api, err := loadKubeconfig(c.conf.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.conf.lookupTimeout)
	defer cancel()
	ann, err := api.podAnnotations(ctx, c.namespace, c.name)
	if err != nil {
		return nil, fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	return ann, nil
}

// Add installs the pod's redirection, or passes through for pods that
// need none. Any failure fails the ADD, so the sandbox does not start.
func Add(args *skel.CmdArgs) error {
	t0 := time.Now()
	c, err := newCall("ADD", args, true)
	if err != nil {
		return err
	}
	defer c.closeLog()
	err = c.add()
	if err != nil {
		c.log.Error("ADD failed", "err", err, "took", time.Since(t0))
		return err
	}
	return types.PrintResult(c.conf.PrevResult, c.conf.CNIVersion)
}

func (c *call) add() error {
	if c.name == "" {
		c.log.Debug("no K8S_POD_NAME: not a Kubernetes pod, passing through")
		return nil
	}
	p, err := c.plan()
	if err != nil {
		return err
	}
	if p == nil {
		c.log.Debug("no redirection for this pod")
		return nil
	}
	fams, a, err := c.backend()
	if err != nil {
		return err
	}
	if err := a.Apply(c.args.Netns, p, fams); err != nil {
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	c.log.Info("redirection applied", "families", fmt.Sprint(fams), "mode", a.Mode)
	return nil
}

// backend is where rules go: the pod's IP families and the applier for the
// host's iptables backend.
func (c *call) backend() ([]iptables.Family, iptables.Applier, error) {
	fams, err := families(c.conf.PrevResult)
	if err != nil {
		return nil, iptables.Applier{}, err
	}
	a, err := c.applier()
	return fams, a, err
}

// Del removes meshlet's rules. It succeeds when the netns is already gone
// or never had rules, and may be called any number of times.
func Del(args *skel.CmdArgs) error {
	c, err := newCall("DEL", args, false)
	if err != nil {
		return err
	}
	defer c.closeLog()
	if args.Netns == "" {
		return nil
	}
	if _, err := os.Stat(args.Netns); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	a, err := c.applier()
	if err != nil {
		return err
	}
	if _, err := a.Remove(args.Netns, []iptables.Family{iptables.IPv4, iptables.IPv6}); err != nil {
		if _, serr := os.Stat(args.Netns); errors.Is(serr, os.ErrNotExist) {
			return nil // torn down while we looked
		}
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	c.log.Debug("redirection removed")
	return nil
}

// Check fails when the live rules differ from what the pod's annotations
// ask for: a rule missing, extra, or present on a pod that needs none.
func Check(args *skel.CmdArgs) error {
	c, err := newCall("CHECK", args, true)
	if err != nil {
		return err
	}
	defer c.closeLog()
	if c.name == "" {
		return nil
	}
	p, err := c.plan()
	if err != nil {
		return err
	}
	fams, a, err := c.backend()
	if err != nil {
		return err
	}
	if err := a.Verify(args.Netns, p, fams); err != nil {
		c.log.Error("CHECK failed", "err", err)
		return fmt.Errorf("meshlet-cni: pod %s: %w", c.pod(), err)
	}
	return nil
}

// Status reports whether ADD can work: the kubeconfig loads and the
// iptables tools of the host's backend are installed.
func Status(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData, false)
	if err != nil {
		return err
	}
	var problems []error
	if _, err := loadKubeconfig(conf.Kubeconfig); err != nil {
		problems = append(problems, err)
	}
	if mode, err := iptables.ParseMode(conf.IptablesMode); err != nil {
		problems = append(problems, err)
	} else if err := (iptables.Applier{Mode: mode}).Ready(); err != nil {
		problems = append(problems, err)
	}
	if err := errors.Join(problems...); err != nil {
		return types.NewError(errPluginNotAvailable, "meshlet-cni cannot set up pods", err.Error())
	}
	return nil
}

// GC has nothing to collect: meshlet keeps no state outside the pods'
// network namespaces, and those go with their pods.
func GC(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData, false)
	return err
}
