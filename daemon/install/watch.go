package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
)

// EventKind says what Watch did.
type EventKind int

const (
	// Watching: the first pass is done; Config is the primary, chained.
	Watching EventKind = iota
	// Rechained: the primary lacked the entry (or held a stale one) and
	// was rewritten; Count is how many times within FightWindow the entry
	// had been removed from a file already chained (0: a new primary).
	Rechained
	// Fighting: a primary CNI keeps removing the entry, Count times
	// within FightWindow. Reported once per FightThreshold re-adds.
	Fighting
	// Failed: chaining failed (Err); Watch tries again on the next change
	// of the conf dir and at the next resync.
	Failed
)

func (k EventKind) String() string {
	return [...]string{"watching", "rechained", "fighting", "failed"}[k]
}

// Event is one thing Watch reports.
type Event struct {
	Kind   EventKind
	Config string
	Count  int
	Err    error
}

const (
	debounce = 100 * time.Millisecond // a primary CNI writes in bursts
	resync   = time.Minute            // in case an event was missed
)

// Watch keeps meshlet-cni chained into the primary config until ctx ends:
// on every change of a config in c.ConfDir (after a burst settles) and
// every minute it chains the entry into whichever file is primary then,
// rewriting only when something is missing. It does not copy the binary or
// the kubeconfig: Install does. onEvent is called from Watch's goroutine.
func Watch(ctx context.Context, c InstallConfig, onEvent func(Event)) error {
	if err := c.check(); err != nil {
		return err
	}
	window, threshold := c.FightWindow, c.FightThreshold
	if window <= 0 {
		window = 10 * time.Minute
	}
	if threshold <= 0 {
		threshold = 3
	}
	if err := os.MkdirAll(c.ConfDir, 0o755); err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(c.ConfDir); err != nil {
		return fmt.Errorf("watch %s: %w", c.ConfDir, err)
	}

	// readds: when the entry had to be put back into the file that held
	// it after the last pass (a new primary file is not a removal).
	var readds []time.Time
	last := ""
	pass := func(first bool) {
		path, changed, _, err := chainPrimary(c.ConfDir, c.Entry())
		if err != nil {
			onEvent(Event{Kind: Failed, Config: path, Err: err})
			return
		}
		removed := changed && path == last
		last = path
		switch {
		case first:
			onEvent(Event{Kind: Watching, Config: path})
		case changed:
			now := time.Now()
			readds = slices.DeleteFunc(readds, func(t time.Time) bool { return now.Sub(t) > window })
			if removed {
				readds = append(readds, now)
			}
			onEvent(Event{Kind: Rechained, Config: path, Count: len(readds)})
			if removed && len(readds) >= threshold {
				onEvent(Event{Kind: Fighting, Config: path, Count: len(readds)})
				readds = nil
			}
		}
	}
	pass(true)

	settle := time.NewTimer(time.Hour)
	settle.Stop()
	tick := time.NewTicker(resync)
	defer tick.Stop()
	errs := w.Errors
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch " + c.ConfDir + ": watcher closed")
			}
			if slices.Contains(confExts, filepath.Ext(ev.Name)) {
				settle.Reset(debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflow: something may have been missed.
			onEvent(Event{Kind: Failed, Err: fmt.Errorf("watch %s: %w", c.ConfDir, err)})
			settle.Reset(debounce)
		case <-settle.C:
			pass(false)
		case <-tick.C:
			pass(false)
		}
	}
}
