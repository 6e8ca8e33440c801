package install

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// watching starts Watch on c and returns its events once the first pass
// is done.
func watching(t *testing.T, c InstallConfig) <-chan Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	done := make(chan error)
	go func() { done <- Watch(ctx, c, func(e Event) { events <- e }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	select {
	case e := <-events:
		if e.Kind != Watching {
			t.Fatalf("first event %v %s %v", e.Kind, e.Config, e.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no first pass")
	}
	return events
}

// chainedWithin waits until path is a config that chains meshlet-cni.
func chainedWithin(t *testing.T, path string, d time.Duration) {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if raw, err := os.ReadFile(path); err == nil && HasEntry(raw) {
			t.Logf("%s chained after %v", filepath.Base(path), time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s not chained within %v", path, d)
}

func nextEvent(t *testing.T, events <-chan Event) Event {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(2 * time.Second):
		t.Fatal("no event")
		return Event{}
	}
}

func TestWatchRechains(t *testing.T) {
	c := testNode(t, "10-bridge.conflist", bridgeList)
	c.FightThreshold = 3
	if _, err := Install(c); err != nil {
		t.Fatal(err)
	}
	events := watching(t, c)
	list := filepath.Join(c.ConfDir, "10-bridge.conflist")
	for i := 1; i <= 3; i++ {
		// The primary CNI rewrites its config without the entry.
		writeFile(t, list, bridgeList)
		chainedWithin(t, list, time.Second)
		if e := nextEvent(t, events); e.Kind != Rechained || e.Count != i || e.Config != list {
			t.Errorf("re-add %d: event %+v", i, e)
		}
	}
	if e := nextEvent(t, events); e.Kind != Fighting || e.Count != 3 {
		t.Errorf("after 3 re-adds: event %+v, want fighting", e)
	}
	select {
	case e := <-events:
		t.Errorf("unexpected event %+v", e)
	case <-time.After(300 * time.Millisecond): // its own writes trigger nothing
	}
}

func TestWatchNewPrimary(t *testing.T) {
	c := testNode(t, "10-bridge.conflist", bridgeList)
	if _, err := Install(c); err != nil {
		t.Fatal(err)
	}
	events := watching(t, c)

	list := filepath.Join(c.ConfDir, "05-calico.conflist")
	writeFile(t, list, bridgeList)
	chainedWithin(t, list, time.Second)
	if e := nextEvent(t, events); e.Kind != Rechained || e.Config != list || e.Count != 0 {
		t.Errorf("event %+v, want rechained, count 0 (a new primary removed nothing)", e)
	}

	// A single-plugin config, lower still: becomes a conflist.
	conf := filepath.Join(c.ConfDir, "01-flannel.conf")
	writeFile(t, conf, bridgeConf)
	chainedWithin(t, filepath.Join(c.ConfDir, "01-flannel.conflist"), time.Second)
	// x.conflist is written before x.conf is removed.
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(conf); os.IsNotExist(err) {
			break
		} else if time.Since(start) > time.Second {
			t.Fatalf("%s left: %v", conf, err)
		}
	}
}

func TestWatchWaitsForPrimary(t *testing.T) {
	c := testNode(t, "", "")
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	done := make(chan error)
	go func() { done <- Watch(ctx, c, func(e Event) { events <- e }) }()
	defer func() { cancel(); <-done }()
	if e := nextEvent(t, events); e.Kind != Failed || e.Err == nil {
		t.Errorf("first event %+v, want failed (no primary)", e)
	}
	list := filepath.Join(c.ConfDir, "10-bridge.conflist")
	writeFile(t, list, bridgeList)
	chainedWithin(t, list, time.Second)
}
