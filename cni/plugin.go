package cni

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshlet/meshlet/iptables"
)

// codePluginNotAvailable is the code of CNI's well-known error for
// STATUS: the plugin cannot service ADD. The CNI library's types name the
// codes of the older commands (ErrUnknownContainer and the like) but not
// this one.
const codePluginNotAvailable = 50

// call is one invocation: the parsed configuration, the pod, a logger.
type call struct {
	conf      *NetConf
	args      *skel.CmdArgs
	namespace string
	name      string
	uid       string // K8S_POD_UID, when the runtime passes it
	start     time.Time
	log       *slog.Logger
	closeLog  func()
}

// newCall parses the invocation and opens its logger.
func newCall(cmd string, args *skel.CmdArgs, requirePrev bool) (*call, error) {
	c, err := parseCall(args, requirePrev)
	if err != nil {
		return nil, err
	}
	c.log, c.closeLog = newLogger(c.conf, os.Stderr, c.logAttrs(cmd)...)
	return c, nil
}

// parseCall is newCall without the logger, which the tests supply.
func parseCall(args *skel.CmdArgs, requirePrev bool) (*call, error) {
	start := time.Now()
	conf, err := parseConf(args.StdinData, requirePrev)
	if err != nil {
		return nil, err
	}
	k, err := parseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	return &call{conf: conf, args: args, namespace: string(k.K8S_POD_NAMESPACE), name: string(k.K8S_POD_NAME),
		uid: string(k.K8S_POD_UID), start: start, closeLog: func() {}}, nil
}

// logAttrs are on every record of the call.
func (c *call) logAttrs(cmd string) []any {
	return []any{"cmd", cmd, "container", shortID(c.args.ContainerID), "pod_namespace", c.namespace, "pod_name", c.name}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (c *call) pod() string { return c.namespace + "/" + c.name }

// Add installs the pod's redirection, or passes through for pods that
// need none. Any failure fails the ADD, so the sandbox does not start.
func Add(args *skel.CmdArgs) error {
	return withCall("ADD", args, true, func(c *call) error {
		res, err := c.doAdd(c.hostLookup(), newHostApplier(c.conf))
		if err != nil {
			return err
		}
		return res.Print()
	})
}

// Del removes meshlet's rules. It succeeds when the netns is already gone
// or never had rules, and may be called any number of times.
func Del(args *skel.CmdArgs) error {
	return withCall("DEL", args, false, func(c *call) error { return c.doDel(newHostApplier(c.conf)) })
}

// Check fails when the live rules differ from what the pod's annotations
// ask for: a rule missing, extra, or present on a pod that needs none.
func Check(args *skel.CmdArgs) error {
	return withCall("CHECK", args, true, func(c *call) error {
		return c.doCheck(c.hostLookup(), newHostApplier(c.conf))
	})
}

// withCall parses the invocation, opens its logger, runs f and closes the
// logger, with a panic anywhere in it turned into the call's error.
func withCall(cmd string, args *skel.CmdArgs, requirePrev bool, f func(*call) error) (err error) {
	defer crashGuard(cmd, &err)
	c, err := newCall(cmd, args, requirePrev)
	if err != nil {
		return err
	}
	defer c.closeLog()
	return f(c)
}

// crashGuard backs up the guards of doAdd, doCheck and doDel, which name
// the pod: a panic while parsing the call or printing its result becomes
// an error too, not a Go trace on stderr that the runtime cannot read.
func crashGuard(cmd string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("meshlet-cni: %s panicked: %v", cmd, r)
	}
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
		return types.NewError(codePluginNotAvailable, "meshlet-cni cannot set up pods", err.Error())
	}
	return nil
}

// GC has nothing to collect: meshlet keeps no state outside the pods'
// network namespaces, and those go with their pods.
func GC(args *skel.CmdArgs) error {
	_, err := parseConf(args.StdinData, false)
	return err
}
