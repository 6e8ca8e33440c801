package repair

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestBrake(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	del := Finding{Decision: Decision{ActionDelete, "the pod has a controller"}, Missing: true, Verdict: Unprotected, Node: "node-1"}
	for _, tc := range []struct {
		name       string
		deletions  []time.Duration // of controller "rs-1", after t0
		finding    Finding
		controller types.UID
		mode       Mode
		at         time.Duration
		want       Action
		braked     bool
	}{
		{"first deletion", nil, del, "rs-1", ModeAuto, 0, ActionDelete, false},
		{"two before: a third allowed", []time.Duration{0, time.Minute}, del, "rs-1", ModeAuto, 2 * time.Minute, ActionDelete, false},
		{"three in the window: repaired instead", []time.Duration{0, time.Minute, 2 * time.Minute}, del, "rs-1", ModeAuto, 3 * time.Minute, ActionRepair, true},
		{"three in the window, delete mode: reported", []time.Duration{0, time.Minute, 2 * time.Minute}, del, "rs-1", ModeDelete, 3 * time.Minute, ActionReport, false},
		{"the oldest left the window", []time.Duration{0, time.Minute, 2 * time.Minute}, del, "rs-1", ModeAuto, 10 * time.Minute, ActionDelete, false},
		{"another controller is not held", []time.Duration{0, time.Minute, 2 * time.Minute}, del, "rs-2", ModeAuto, 3 * time.Minute, ActionDelete, false},
		{"a repair is never changed", []time.Duration{0, time.Minute, 2 * time.Minute}, Finding{Decision: Decision{ActionRepair, "no controller"}}, "rs-1", ModeAuto, 3 * time.Minute, ActionRepair, false},
		{"no controller: nothing counted", []time.Duration{0, time.Minute, 2 * time.Minute}, del, "", ModeAuto, 3 * time.Minute, ActionDelete, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := DefaultBrake()
			for _, d := range tc.deletions {
				b.Deleted("rs-1", t0.Add(d))
			}
			got := b.Check(tc.finding, tc.controller, tc.mode, t0.Add(tc.at))
			if got.Action != tc.want || got.Braked != tc.braked {
				t.Fatalf("Check = %s (braked %v, %q); want %s (braked %v)", got.Action, got.Braked, got.Why, tc.want, tc.braked)
			}
			if got.Action != tc.finding.Action && !strings.Contains(got.Why, "deleted 3 times in the last 10m0s") {
				t.Errorf("Why = %q; want it to say how many deletions in what window", got.Why)
			}
		})
	}
}

// The Event of a braked pod says it was repaired instead of deleted, and why.
func TestBrakeEvent(t *testing.T) {
	t0 := time.Now()
	b := DefaultBrake()
	for i := range 3 {
		b.Deleted("rs-1", t0.Add(time.Duration(i)*time.Second))
	}
	f := b.Check(Finding{Decision: Decision{ActionDelete, "x"}, Missing: true, Verdict: Unprotected, Node: "node-1"}, "rs-1", ModeAuto, t0.Add(time.Minute))
	e := f.Event(nil)
	for _, want := range []string{"repaired in place", "instead of deleted", "meshlet-cni is probably not in the node's chain"} {
		if !strings.Contains(e.Message, want) {
			t.Errorf("Event %q lacks %q", e.Message, want)
		}
	}
	if got := f.Outcome(nil); got != "repaired" {
		t.Errorf("Outcome = %q, want repaired", got)
	}
}

// Deletions that left the window are forgotten, with their controller.
func TestBrakeForgets(t *testing.T) {
	t0 := time.Now()
	b := DefaultBrake()
	b.Deleted("rs-1", t0)
	b.Deleted("rs-2", t0.Add(5*time.Minute))
	b.Deleted("rs-2", t0.Add(11*time.Minute))
	if _, ok := b.recent["rs-1"]; ok {
		t.Errorf("rs-1 still tracked 11 min after its only deletion: %v", b.recent)
	}
	b.Check(Finding{Decision: Decision{ActionDelete, ""}}, "rs-1", ModeAuto, t0.Add(11*time.Minute))
	if n := len(b.recent["rs-2"]); n != 2 {
		t.Errorf("rs-2 has %d deletions tracked, want 2", n)
	}
}
