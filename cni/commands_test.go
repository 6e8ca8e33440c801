package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

const (
	podArgs   = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc"
	noPodArgs = "IgnoreUnknown=1"
	prev4Only = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.0.0.5/24","interface":0}]}`
	// prevSandbox is a bridge plugin's result: the host's bridge and veth
	// end, and the pod's eth0 in its netns holding the IPs.
	prevSandbox = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/x"}],` +
		`"ips":[{"address":"10.244.0.1/24","interface":0},{"address":"10.244.0.5/24","interface":2},{"address":"fd00::5/64","interface":2}]}`
	uidArgs = podArgs + ";K8S_POD_UID=u-web"
	prev040 = `"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"version":"4","address":"10.0.0.5/24","interface":0}]}`
	good    = `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`
)

func conf(cniVersion, prevResult string) string {
	return `{"cniVersion":"` + cniVersion + `","name":"k8s","type":"meshlet-cni","kubeconfig":"/k",` + prevResult + `}`
}

var (
	plain    = map[string]string{"app": "web"}
	tproxy   = map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled", contract.RedirectConfig: good}
	noTProxy = map[string]string{contract.InjectStatus: "injected"}
	badCfg   = map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled", contract.RedirectConfig: "{"}
	both     = []iptables.Family{iptables.IPv4, iptables.IPv6}
)

type netnsKind int

const (
	netnsPresent netnsKind = iota // a file standing in for the netns
	netnsEmpty                    // the runtime passed none
	netnsMissing                  // a path that does not exist
)

// logWant is a record the call must log: level, a part of the message,
// and attributes with their values.
type logWant struct {
	level, msg string
	attrs      map[string]string
}

// TestCommands runs every decision of ADD, CHECK and DEL against a fake
// pod lookup and a fake applier, as an ordinary user.
func TestCommands(t *testing.T) {
	tests := []struct {
		name        string
		cmd         string // ADD, CHECK or DEL
		args        string // CNI_ARGS; empty: podArgs
		stdin       string // empty: conf("1.0.0", prev)
		netns       netnsKind
		lookup      fakeLookup
		applier     fakeApplier
		wantErr     []string // all in the error; nil: success
		wantLookups []string
		wantCalls   []string // applierCall.String of each call
		wantLive    []iptables.Family
		wantNotices []string // fakeLookup.notices
		wantLog     []logWant
	}{
		// ADD tells the node agent the sandbox's IPs once the rules are in.
		{name: "ADD tells the node agent the sandbox's IPs", cmd: "ADD", args: uidArgs, stdin: conf("1.0.0", prevSandbox),
			lookup: fakeLookup{ann: tproxy, from: "agent"}, wantLookups: []string{"ns/web"},
			wantCalls: []string{"Apply plan [IPv4 IPv6]"}, wantLive: both,
			wantNotices: []string{"ns/web u-web [10.244.0.5 fd00::5]"}},
		{name: "ADD succeeds when the node agent refuses the notice", cmd: "ADD", args: uidArgs, stdin: conf("1.0.0", prevSandbox),
			lookup:    fakeLookup{ann: tproxy, from: "agent", noticeErr: errors.New("tell the node agent: connect: no such file")},
			wantCalls: []string{"Apply plan [IPv4 IPv6]"}, wantLive: both, wantLookups: []string{"ns/web"},
			wantNotices: []string{"ns/web u-web [10.244.0.5 fd00::5]"},
			wantLog:     []logWant{{"INFO", "did not take the sandbox notice", map[string]string{"err": "tell the node agent: connect: no such file"}}}},
		{name: "ADD without the pod's UID sends no notice", cmd: "ADD", stdin: conf("1.0.0", prevSandbox),
			lookup: fakeLookup{ann: tproxy, from: "agent"}, wantLookups: []string{"ns/web"},
			wantCalls: []string{"Apply plan [IPv4 IPv6]"}, wantLive: both},
		{name: "ADD failing sends no notice", cmd: "ADD", args: uidArgs, stdin: conf("1.0.0", prevSandbox),
			lookup: fakeLookup{ann: tproxy, from: "agent"}, wantLookups: []string{"ns/web"},
			applier:   fakeApplier{applyErr: errors.New("iptables-nft-restore: exit status 4")},
			wantCalls: []string{"Apply plan [IPv4 IPv6]"}, wantErr: []string{"exit status 4"}},
		{name: "ADD of a pod without redirection sends no notice", cmd: "ADD", args: uidArgs, stdin: conf("1.0.0", prevSandbox),
			lookup: fakeLookup{ann: plain, from: "agent"}, wantLookups: []string{"ns/web"}},

		// ADD
		{name: "ADD not a Kubernetes pod", cmd: "ADD", args: noPodArgs,
			lookup:  fakeLookup{ann: tproxy, from: "runtime"},
			wantLog: []logWant{{"DEBUG", "not a Kubernetes pod", nil}}},
		{name: "ADD not injected", cmd: "ADD", lookup: fakeLookup{ann: plain, from: "runtime"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"DEBUG", "no redirection", map[string]string{"annotations_from": "runtime", "pod_namespace": "ns", "pod_name": "web"}}}},
		{name: "ADD injected, transparent proxy off", cmd: "ADD", lookup: fakeLookup{ann: noTProxy, from: "api"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"DEBUG", "no redirection", map[string]string{"annotations_from": "api"}}}},
		{name: "ADD injected, dual-stack", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "api"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]"}, wantLive: both,
			wantLog: []logWant{{"INFO", "redirection applied", map[string]string{"annotations_from": "api", "families": "[IPv4 IPv6]", "mode": "nft"}}}},
		{name: "ADD injected, IPv4 only", cmd: "ADD", stdin: conf("1.0.0", prev4Only), lookup: fakeLookup{ann: tproxy, from: "runtime"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4]"}, wantLive: []iptables.Family{iptables.IPv4},
			wantLog: []logWant{{"INFO", "redirection applied", map[string]string{"annotations_from": "runtime", "families": "[IPv4]"}}}},
		{name: "ADD injected, CNI 0.4.0", cmd: "ADD", stdin: conf("0.4.0", prev040), lookup: fakeLookup{ann: tproxy, from: "runtime"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4]"}, wantLive: []iptables.Family{iptables.IPv4}},
		{name: "ADD bad redirect config", cmd: "ADD", lookup: fakeLookup{ann: badCfg, from: "runtime"},
			wantErr:     []string{"meshlet-cni: pod ns/web", contract.RedirectConfig, "not valid JSON"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"ERROR", "ADD failed", map[string]string{"annotations_from": "runtime"}}}},
		{name: "ADD transparent proxy on, redirect config missing", cmd: "ADD",
			lookup:      fakeLookup{ann: map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled", contract.RegistrationKey: "{}"}, from: "api"},
			wantErr:     []string{"meshlet-cni: pod ns/web", contract.RedirectConfig, "is missing"},
			wantLookups: []string{"ns/web"}},
		// consul-k8s injected it without its CNI plugin: its init
		// container redirects; the sandbox starts.
		{name: "ADD consul-k8s pod without redirect config", cmd: "ADD",
			lookup:      fakeLookup{ann: map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled"}, from: "runtime"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"DEBUG", "no redirection", map[string]string{"annotations_from": "runtime"}}}},
		{name: "ADD lookup fails", cmd: "ADD", lookup: fakeLookup{err: errors.New("read annotations from the API server: API server: 503 Service Unavailable")},
			wantErr:     []string{"meshlet-cni: pod ns/web", "503 Service Unavailable"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"ERROR", "ADD failed", nil}}},
		// Apply rolls back what it wrote; ADD adds no Remove of its own.
		{name: "ADD apply fails", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{applyErr: errors.New("apply IPv6 rules: ip6tables-nft-restore: exit status 1")},
			wantErr:     []string{"meshlet-cni: pod ns/web", "apply IPv6 rules", "exit status 1"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]"},
			wantLog: []logWant{{"ERROR", "ADD failed", map[string]string{"annotations_from": "runtime"}}}},
		{name: "ADD lookup panics", cmd: "ADD", lookup: fakeLookup{panic: "lookup exploded"},
			wantErr:     []string{"meshlet-cni: pod ns/web", "ADD panicked", "lookup exploded"},
			wantLookups: []string{"ns/web"},
			wantLog:     []logWant{{"ERROR", "ADD panicked", map[string]string{"panic": "lookup exploded"}}}},
		{name: "ADD apply panics after writing: rules removed", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{writeThenPanic: true},
			wantErr:     []string{"meshlet-cni: pod ns/web", "ADD panicked", "Apply exploded after writing"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]", "Remove - [IPv4 IPv6]"},
			wantLog: []logWant{{"ERROR", "ADD panicked", nil}, {"INFO", "rules removed after the panic", nil}}},
		{name: "ADD apply panics after writing, removal fails", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{writeThenPanic: true, removeErr: errors.New("iptables-nft-save: exit status 4")},
			wantErr:     []string{"meshlet-cni: pod ns/web", "ADD panicked", "remove the rules after the panic", "exit status 4"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]", "Remove - [IPv4 IPv6]"}, wantLive: both,
			wantLog: []logWant{{"ERROR", "rules may be left", nil}}},
		{name: "ADD applier panics everywhere", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{panicOn: map[string]bool{"Apply": true, "Remove": true}},
			wantErr:     []string{"meshlet-cni: pod ns/web", "ADD panicked: Apply exploded", "removing the rules after the panic panicked too: Remove exploded"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]", "Remove - [IPv4 IPv6]"}},
		{name: "ADD panic after Apply, skipped family logged", cmd: "ADD", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{writeThenPanic: true, skipped: []iptables.Family{iptables.IPv6}},
			wantErr:     []string{"meshlet-cni: pod ns/web", "ADD panicked"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Apply plan [IPv4 IPv6]", "Remove - [IPv4 IPv6]"},
			wantLog: []logWant{{"DEBUG", "IPv6 skipped", map[string]string{"family": "IPv6"}}}},

		// CHECK
		{name: "CHECK not a Kubernetes pod", cmd: "CHECK", args: noPodArgs, lookup: fakeLookup{ann: tproxy},
			wantLog: []logWant{{"DEBUG", "nothing to check", nil}}},
		{name: "CHECK plain pod expects no rules", cmd: "CHECK", lookup: fakeLookup{ann: plain, from: "runtime"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Verify nil [IPv4 IPv6]"}},
		{name: "CHECK plain pod with rules", cmd: "CHECK", lookup: fakeLookup{ann: plain, from: "runtime"},
			applier:     fakeApplier{verifyErr: errors.New("IPv4: live rules differ from the redirect config: unexpected chain CONSUL_PROXY_INBOUND")},
			wantErr:     []string{"meshlet-cni: pod ns/web", "unexpected chain CONSUL_PROXY_INBOUND"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Verify nil [IPv4 IPv6]"}},
		{name: "CHECK injected, rules intact", cmd: "CHECK", lookup: fakeLookup{ann: tproxy, from: "api"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Verify plan [IPv4 IPv6]"}},
		{name: "CHECK drift", cmd: "CHECK", lookup: fakeLookup{ann: tproxy, from: "api"},
			applier:     fakeApplier{verifyErr: errors.New(`IPv4: live rules differ from the redirect config: missing "-A CONSUL_PROXY_OUTPUT -o lo -j RETURN"`)},
			wantErr:     []string{"meshlet-cni: pod ns/web", "live rules differ", "missing"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Verify plan [IPv4 IPv6]"},
			wantLog: []logWant{{"ERROR", "CHECK failed", map[string]string{"annotations_from": "api"}}}},
		{name: "CHECK bad redirect config", cmd: "CHECK", lookup: fakeLookup{ann: badCfg, from: "runtime"},
			wantErr:     []string{"meshlet-cni: pod ns/web", contract.RedirectConfig, "not valid JSON"},
			wantLookups: []string{"ns/web"}},
		{name: "CHECK lookup fails", cmd: "CHECK", lookup: fakeLookup{err: errors.New("read annotations from the API server: pod not found")},
			wantErr:     []string{"meshlet-cni: pod ns/web", "pod not found"},
			wantLookups: []string{"ns/web"}},
		{name: "CHECK verify panics", cmd: "CHECK", lookup: fakeLookup{ann: tproxy, from: "runtime"},
			applier:     fakeApplier{panicOn: map[string]bool{"Verify": true}},
			wantErr:     []string{"meshlet-cni: pod ns/web", "CHECK panicked", "Verify exploded"},
			wantLookups: []string{"ns/web"}, wantCalls: []string{"Verify plan [IPv4 IPv6]"}},

		// DEL: never a lookup, always both families.
		{name: "DEL removes both families", cmd: "DEL", applier: fakeApplier{live: both},
			wantCalls: []string{"Remove - [IPv4 IPv6]"},
			wantLog:   []logWant{{"DEBUG", "redirection removed", map[string]string{"pod_name": "web"}}}},
		{name: "DEL not a Kubernetes pod still removes", cmd: "DEL", args: noPodArgs, applier: fakeApplier{live: both},
			wantCalls: []string{"Remove - [IPv4 IPv6]"}},
		{name: "DEL without prevResult", cmd: "DEL", stdin: `{"cniVersion":"1.0.0","name":"k8s","type":"meshlet-cni","kubeconfig":"/k"}`,
			applier: fakeApplier{live: both}, wantCalls: []string{"Remove - [IPv4 IPv6]"}},
		{name: "DEL empty netns", cmd: "DEL", netns: netnsEmpty,
			wantLog: []logWant{{"DEBUG", "no netns", nil}}},
		{name: "DEL netns path gone", cmd: "DEL", netns: netnsMissing,
			wantLog: []logWant{{"DEBUG", "netns gone", nil}}},
		{name: "DEL IPv6 skipped", cmd: "DEL", applier: fakeApplier{live: []iptables.Family{iptables.IPv4}, skipped: []iptables.Family{iptables.IPv6}},
			wantCalls: []string{"Remove - [IPv4 IPv6]"},
			wantLog:   []logWant{{"DEBUG", "IPv6 skipped: the kernel offers no IPv6 nat table", map[string]string{"family": "IPv6"}}}},
		{name: "DEL remove fails", cmd: "DEL", applier: fakeApplier{live: both, removeErr: errors.New("remove IPv4 rules: iptables-nft-restore: exit status 1")},
			wantErr:   []string{"meshlet-cni: pod ns/web", "remove IPv4 rules", "exit status 1"},
			wantCalls: []string{"Remove - [IPv4 IPv6]"}, wantLive: both,
			wantLog: []logWant{{"ERROR", "DEL failed", nil}}},
		{name: "DEL remove fails as the netns goes", cmd: "DEL",
			applier:   fakeApplier{removeErr: errors.New("open netns: no such file"), onRemove: func(netns string) { _ = os.Remove(netns) }},
			wantCalls: []string{"Remove - [IPv4 IPv6]"},
			wantLog:   []logWant{{"DEBUG", "torn down during DEL", nil}}},
		{name: "DEL remove panics", cmd: "DEL", applier: fakeApplier{panicOn: map[string]bool{"Remove": true}},
			wantErr:   []string{"meshlet-cni: pod ns/web", "DEL panicked", "Remove exploded"},
			wantCalls: []string{"Remove - [IPv4 IPv6]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			netns := filepath.Join(dir, "netns")
			switch tc.netns {
			case netnsPresent:
				if err := os.WriteFile(netns, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			case netnsEmpty:
				netns = ""
			}
			args := &skel.CmdArgs{ContainerID: "0123456789abcdef", Netns: netns, IfName: "eth0",
				Args: cmp(tc.args, podArgs), StdinData: []byte(cmp(tc.stdin, conf("1.0.0", prev)))}
			c, err := parseCall(args, tc.cmd != "DEL")
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			c.log = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With(c.logAttrs(tc.cmd)...)
			before := c.log
			lookup, applier := tc.lookup, tc.applier
			lookup.calls, lookup.notices, applier.calls = nil, nil, nil
			applier.live = slices.Clone(tc.applier.live)

			var res types.Result
			switch tc.cmd {
			case "ADD":
				res, err = c.doAdd(&lookup, &applier)
			case "CHECK":
				err = c.doCheck(&lookup, &applier)
			case "DEL":
				err = c.doDel(&applier)
			}

			if tc.wantErr == nil && err != nil {
				t.Fatalf("error %v, want none", err)
			}
			for _, want := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error %v, want it to contain %q", err, want)
				}
			}
			if !slices.Equal(lookup.notices, tc.wantNotices) {
				t.Errorf("sandbox notices %q, want %q", lookup.notices, tc.wantNotices)
			}
			if !slices.Equal(lookup.calls, tc.wantLookups) {
				t.Errorf("lookups %q, want %q", lookup.calls, tc.wantLookups)
			}
			var calls []string
			for _, ac := range applier.calls {
				calls = append(calls, ac.String())
				if ac.netns != netns {
					t.Errorf("%s in netns %q, want %q", ac.op, ac.netns, netns)
				}
				if ac.plan != nil {
					want, _ := iptables.RedirectPlan(lookup.ann)
					if !reflect.DeepEqual(ac.plan, want) {
						t.Errorf("%s got plan %+v, want PlanForPod's %+v", ac.op, ac.plan, want)
					}
				}
			}
			if !slices.Equal(calls, tc.wantCalls) {
				t.Errorf("applier calls %q, want %q", calls, tc.wantCalls)
			}
			if !slices.Equal(applier.live, tc.wantLive) {
				t.Errorf("rules left for %v, want %v", applier.live, tc.wantLive)
			}
			if c.log != before {
				t.Error("the call's logger was replaced")
			}
			if tc.cmd == "ADD" {
				checkResult(t, res, err, args.StdinData)
			}
			checkLogs(t, logs.String(), tc.wantLog)
		})
	}
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkResult: a successful ADD returns the prevResult converted to the
// configuration's CNI version and nothing else; a failed one, no result.
func checkResult(t *testing.T, res types.Result, err error, stdin []byte) {
	t.Helper()
	if err != nil {
		if res != nil {
			t.Errorf("failed ADD returned a result: %v", res)
		}
		return
	}
	var raw struct {
		CNIVersion string          `json:"cniVersion"`
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		t.Fatal(err)
	}
	prev, err := version.NewResult(raw.CNIVersion, raw.PrevResult)
	if err != nil {
		t.Fatal(err)
	}
	want, err := prev.GetAsVersion(raw.CNIVersion)
	if err != nil {
		t.Fatal(err)
	}
	if res == nil {
		t.Fatal("no result")
	}
	gotJSON, _ := json.Marshal(res)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(gotJSON, wantJSON) || res.Version() != raw.CNIVersion {
		t.Errorf("result %s (version %s), want the prevResult %s", gotJSON, res.Version(), wantJSON)
	}
}

// checkLogs finds each wanted record, and checks that no record carries
// annotations_from twice.
func checkLogs(t *testing.T, logs string, wants []logWant) {
	t.Helper()
	var records []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue
		}
		if n := strings.Count(line, `"annotations_from"`); n > 1 {
			t.Errorf("annotations_from %d times in %s", n, line)
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		records = append(records, r)
	}
	for _, w := range wants {
		if !slices.ContainsFunc(records, w.matches) {
			t.Errorf("no %s record %q with %v in:\n%s", w.level, w.msg, w.attrs, logs)
		}
	}
}

func (w logWant) matches(r map[string]any) bool {
	if r["level"] != w.level || !strings.Contains(r["msg"].(string), w.msg) {
		return false
	}
	for k, v := range w.attrs {
		if r[k] != v {
			return false
		}
	}
	return true
}
