package cni

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// TestAddPrintsPrevResult: what Add writes to stdout for a pod that gets no
// rules is the prevResult in the configuration's CNI version. The pod's
// annotations come from the runtime and the backend is never resolved, so
// this needs neither an API server nor root.
func TestAddPrintsPrevResult(t *testing.T) {
	for _, tc := range []struct{ name, args, stdin string }{
		{"not a Kubernetes pod", noPodArgs, conf("1.0.0", prev)},
		{"plain pod, runtime annotations", podArgs,
			`{"cniVersion":"1.0.0","name":"k8s","type":"meshlet-cni","kubeconfig":"/nonexistent","iptables_mode":"bogus",` +
				`"runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"app":"web"}},` + prev + `}`},
		{"CNI 0.4.0", noPodArgs, conf("0.4.0", prev040)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := captureStdout(t, func() error {
				return Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/nonexistent", IfName: "eth0", Args: tc.args, StdinData: []byte(tc.stdin)})
			})
			var raw struct {
				CNIVersion string          `json:"cniVersion"`
				PrevResult json.RawMessage `json:"prevResult"`
			}
			if err := json.Unmarshal([]byte(tc.stdin), &raw); err != nil {
				t.Fatal(err)
			}
			res, err := version.NewResult(raw.CNIVersion, out)
			if err != nil {
				t.Fatalf("stdout %s: %v", out, err)
			}
			checkResult(t, res, nil, []byte(tc.stdin))
		})
	}
}

// captureStdout runs fn with os.Stdout going to a pipe and returns what it
// wrote.
func captureStdout(t *testing.T, fn func() error) []byte {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	err = fn()
	os.Stdout = saved
	w.Close()
	out := <-done
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCrashGuard(t *testing.T) {
	err := func() (err error) {
		defer crashGuard("ADD", &err)
		panic("parse exploded")
	}()
	if err == nil || !strings.Contains(err.Error(), "meshlet-cni: ADD panicked: parse exploded") {
		t.Errorf("error %v, want the panic as ADD's error", err)
	}
}

// TestStatusCode: a STATUS that finds the plugin unable to set up pods
// fails with CNI's well-known code for it, which the runtime reads.
func TestStatusCode(t *testing.T) {
	stdin := `{"cniVersion":"1.1.0","name":"k8s","type":"meshlet-cni","kubeconfig":"/nonexistent/kubeconfig"}`
	err := Status(&skel.CmdArgs{StdinData: []byte(stdin)})
	var e *types.Error
	if !errors.As(err, &e) || e.Code != 50 || e.Msg != "meshlet-cni cannot set up pods" || !strings.Contains(e.Details, "/nonexistent/kubeconfig") {
		t.Errorf("Status: %#v, want code 50 naming the kubeconfig", err)
	}
}
