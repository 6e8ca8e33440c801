package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/kubeclient"
)

// Elector is leader election on a Lease, as client-go's
// tools/leaderelection does it with a LeaseLock: a candidate takes the
// Lease when it is free or its holder has not renewed it for a lease
// duration (by the candidate's own clock, from when it saw the last
// change), the leader renews it and steps down when it could not for a
// renew deadline, and a leader that stops gives it up. It is not
// client-go's own because that package links client-go's clientset, which
// the meshlet binary keeps out (cmd/meshlet's TestBinariesLinkNothingHeavy).
//
// The API server's optimistic concurrency (the Lease's resourceVersion)
// makes two candidates' writes exclusive. Two replicas reaping at once
// would only delete the same orphans twice (the second delete finds the
// token gone); the election keeps the work, and the write right's use, to
// one.
type Elector struct {
	Leases   kubeclient.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	Name     string // the Lease, in the namespace of Leases
	Identity string // this candidate, unique per process
	// LeaseDuration, RenewDeadline, RetryPeriod: client-go's meanings
	// (DefaultTimings when zero).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *slog.Logger

	observedRV   string
	observedTime time.Time
}

// DefaultTimings are client-go's usual ones: a new leader within about
// LeaseDuration of the old one's crash, at once after its clean stop.
func (e *Elector) DefaultTimings() {
	if e.LeaseDuration == 0 {
		e.LeaseDuration = 15 * time.Second
	}
	if e.RenewDeadline == 0 {
		e.RenewDeadline = 10 * time.Second
	}
	if e.RetryPeriod == 0 {
		e.RetryPeriod = 2 * time.Second
	}
}

// Run campaigns until ctx ends. Each time it holds the Lease it runs lead
// with a context that ends when the Lease is lost (or ctx ends), waits for
// lead to return, and campaigns again. On ctx's end it gives the Lease up.
func (e *Elector) Run(ctx context.Context, lead func(context.Context)) {
	e.DefaultTimings()
	for {
		if !e.acquire(ctx) {
			return
		}
		e.Log.Info("leading", "lease", e.Name, "identity", e.Identity)
		leadCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); lead(leadCtx) }()
		e.renew(ctx)
		cancel()
		<-done
		if ctx.Err() != nil {
			e.release()
			return
		}
		e.Log.Warn("lost the lease; campaigning again", "lease", e.Name, "identity", e.Identity)
	}
}

// acquire tries every RetryPeriod until it holds the Lease (true) or ctx
// ends (false).
func (e *Elector) acquire(ctx context.Context) bool {
	for {
		ok, err := e.tryAcquireOrRenew(ctx)
		if ok {
			return true
		}
		if err != nil && ctx.Err() == nil {
			e.Log.Warn("leader election: cannot read or take the lease", "lease", e.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(e.RetryPeriod):
		}
	}
}

// renew keeps the Lease until ctx ends, another candidate holds it, or no
// renewal succeeded for RenewDeadline.
func (e *Elector) renew(ctx context.Context) {
	last := time.Now()
	t := time.NewTicker(e.RetryPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, e.RenewDeadline-time.Since(last))
		ok, err := e.tryAcquireOrRenew(rctx)
		cancel()
		switch {
		case ok:
			last = time.Now()
		case err == nil:
			return // another holds it
		case time.Since(last) >= e.RenewDeadline:
			e.Log.Warn("leader election: could not renew the lease in time", "lease", e.Name, "err", err)
			return
		}
	}
}

// tryAcquireOrRenew takes or renews the Lease once: true when this
// candidate holds it now; false with a nil error when another does.
func (e *Elector) tryAcquireOrRenew(ctx context.Context) (bool, error) {
	now := time.Now()
	secs := int32(e.LeaseDuration / time.Second)
	l, err := e.Leases.Get(ctx, e.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.Name}, Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To(e.Identity), LeaseDurationSeconds: ptr.To(secs),
			AcquireTime: ptr.To(metav1.NewMicroTime(now)), RenewTime: ptr.To(metav1.NewMicroTime(now)), LeaseTransitions: ptr.To[int32](0)}}
		created, err := e.Leases.Create(ctx, l, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", e.Name, err)
		}
		e.observe(created, now)
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get lease %s: %w", e.Name, err)
	}
	if l.ResourceVersion != e.observedRV {
		e.observe(l, now)
	}
	holder := ptr.Deref(l.Spec.HolderIdentity, "")
	dur := time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, secs)) * time.Second
	if holder != "" && holder != e.Identity && e.observedTime.Add(dur).After(now) {
		return false, nil
	}
	l = l.DeepCopy()
	if holder != e.Identity {
		l.Spec.AcquireTime = ptr.To(metav1.NewMicroTime(now))
		l.Spec.LeaseTransitions = ptr.To(ptr.Deref(l.Spec.LeaseTransitions, 0) + 1)
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds = ptr.To(e.Identity), ptr.To(secs)
	l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(now))
	updated, err := e.Leases.Update(ctx, l, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return false, nil // another candidate wrote first
	}
	if err != nil {
		return false, fmt.Errorf("update lease %s: %w", e.Name, err)
	}
	e.observe(updated, now)
	return true, nil
}

func (e *Elector) observe(l *coordinationv1.Lease, now time.Time) {
	e.observedRV, e.observedTime = l.ResourceVersion, now
}

// release gives the Lease up, so that the other replica takes it at its
// next try instead of after a lease duration.
func (e *Elector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), e.RetryPeriod)
	defer cancel()
	l, err := e.Leases.Get(ctx, e.Name, metav1.GetOptions{})
	if err == nil && ptr.Deref(l.Spec.HolderIdentity, "") != e.Identity {
		return
	}
	if err == nil {
		l = l.DeepCopy()
		l.Spec.HolderIdentity = nil
		l.Spec.LeaseDurationSeconds = ptr.To[int32](1)
		l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
		_, err = e.Leases.Update(ctx, l, metav1.UpdateOptions{})
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		e.Log.Warn("could not give the lease up; the other replica takes it once it expires", "lease", e.Name, "err", err)
		return
	}
	e.Log.Info("gave the lease up", "lease", e.Name, "identity", e.Identity)
}
