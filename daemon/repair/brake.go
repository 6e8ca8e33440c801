package repair

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Brake stops the delete-and-recreate loop of a node where meshlet-cni
// keeps dropping out of the chain (a primary CNI rewriting its conflist,
// the node agent unable to chain it): each replacement of a deleted pod would
// start unprotected too, and a Deployment would churn through pods
// forever. After Max deletions of one controller's pods within Window, its
// next unprotected pod is repaired in place instead (reported, in delete
// mode), so it runs protected and stays.
//
// Brake is not safe for concurrent use: the node agent's repair passes run one
// at a time.
type Brake struct {
	Max    int
	Window time.Duration
	recent map[types.UID][]time.Time
}

// DefaultBrake allows three deletions per controller in ten minutes: a
// node boot or an upgrade race replaces a controller's pods once.
func DefaultBrake() *Brake { return &Brake{Max: 3, Window: 10 * time.Minute} }

// Check returns f unchanged unless it deletes a pod whose controller (by
// UID) has had Max pods deleted within Window before now; then it returns
// f turned into a repair in place (a report in delete mode) saying why.
func (b *Brake) Check(f Finding, controller types.UID, mode Mode, now time.Time) Finding {
	if f.Action != ActionDelete || controller == "" {
		return f
	}
	n := len(b.prune(controller, now))
	if n < b.Max {
		return f
	}
	why := fmt.Sprintf("its controller's pods were deleted %d times in the last %s and came back without redirection each time: meshlet-cni is probably not in the node's chain when they start (see the node's Events)", n, b.Window)
	if mode == ModeDelete {
		f.Decision = Decision{ActionReport, why}
	} else {
		f.Decision = Decision{ActionRepair, "instead of deleted, " + why}
		f.Braked = true
	}
	return f
}

// Deleted records a deletion of one of controller's pods at now.
func (b *Brake) Deleted(controller types.UID, now time.Time) {
	if controller == "" {
		return
	}
	if b.recent == nil {
		b.recent = map[types.UID][]time.Time{}
	}
	for c := range b.recent {
		b.prune(c, now) // every controller's: ReplicaSets come and go
	}
	b.recent[controller] = append(b.recent[controller], now)
}

// prune drops controller's deletions older than Window, and the
// controller when none is left, so that the map holds the node's recent
// trouble, not its past.
func (b *Brake) prune(controller types.UID, now time.Time) []time.Time {
	kept := b.recent[controller][:0]
	for _, t := range b.recent[controller] {
		if now.Sub(t) < b.Window {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		delete(b.recent, controller)
		return nil
	}
	b.recent[controller] = kept
	return kept
}
