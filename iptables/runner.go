package iptables

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Command is one run of an iptables tool: iptables-nft-restore,
// ip6tables-legacy-save, ...
type Command struct {
	Tool  string
	Args  []string
	Env   []string // added to a minimal PATH
	Stdin string
}

// Runner runs an iptables tool inside a network namespace and returns its
// standard output. ExecRunner is the real one; tests substitute a stub to
// drive the fallback logic without root.
type Runner interface {
	Run(netns string, cmd Command) (string, error)
}

// ExecRunner execs the tool with the calling thread in the netns.
type ExecRunner struct{}

// Run implements Runner. A failure is a *ToolError.
func (ExecRunner) Run(netns string, c Command) (string, error) {
	bin, err := lookTool(c.Tool)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(bin, c.Args...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, c.Env...)
	if c.Stdin != "" {
		cmd.Stdin = strings.NewReader(c.Stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// The child inherits the network namespace of the locked thread.
	err = ns.WithNetNSPath(netns, func(ns.NetNS) error { return cmd.Run() })
	if err != nil {
		return "", &ToolError{Tool: c.Tool, Netns: netns, Err: err, Stderr: strings.TrimSpace(stderr.String())}
	}
	return out.String(), nil
}

// ToolError is a failed run of an iptables tool.
type ToolError struct {
	Tool, Netns string
	Err         error
	Stderr      string
}

func (e *ToolError) Error() string {
	return fmt.Sprintf("%s in %s: %v: %s", e.Tool, e.Netns, e.Err, e.Stderr)
}

func (e *ToolError) Unwrap() error { return e.Err }

// FamilyUnavailable reports whether the tool failed because the kernel
// offers no tables for its family: EAFNOSUPPORT or EPROTONOSUPPORT from the
// socket, nf_tables refusing the family's very first request (the
// generation id) as invalid, or libiptc's "Table does not exist (do you
// need to insmod?)" when the family's nat module is absent. A permission
// error is not among them: that is a real failure.
func (e *ToolError) FamilyUnavailable() bool {
	for _, s := range []string{
		"Address family not supported", "Protocol not supported",
		"Could not fetch rule set generation id: Invalid argument", "do you need to insmod",
	} {
		if strings.Contains(e.Stderr, s) {
			return true
		}
	}
	return false
}

// lookTool finds a tool in PATH or the sbin directories, which a runtime's
// environment for CNI plugins may lack.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (PATH or /usr/sbin, /sbin): install iptables", name)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}
