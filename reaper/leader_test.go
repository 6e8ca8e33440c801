package reaper

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

var leasesGVR = coordinationv1.SchemeGroupVersion.WithResource("leases")

// apiServerLeases makes the fake clientset's Leases behave as the API
// server's do where the election depends on it: every write gets a new
// resourceVersion, and an update carrying a stale one is a Conflict. fail,
// while true, fails every Lease request.
func apiServerLeases(cs *fake.Clientset, fail *atomic.Bool) {
	var rv int
	cs.PrependReactor("*", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if fail.Load() {
			return true, nil, errors.New("the API server is unreachable")
		}
		var l *coordinationv1.Lease
		switch a.GetVerb() {
		case "create":
			l = a.(k8stesting.CreateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
		case "update":
			l = a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
			cur, err := cs.Tracker().Get(leasesGVR, a.GetNamespace(), l.Name)
			if err != nil {
				return true, nil, err
			}
			if cur.(*coordinationv1.Lease).ResourceVersion != l.ResourceVersion {
				return true, nil, apierrors.NewConflict(leasesGVR.GroupResource(), l.Name, errors.New("stale resourceVersion"))
			}
		default:
			return false, nil, nil // reads: the tracker's
		}
		rv++
		l.ResourceVersion, l.Namespace = strconv.Itoa(rv), a.GetNamespace()
		var err error
		if a.GetVerb() == "create" {
			err = cs.Tracker().Create(leasesGVR, l, l.Namespace)
		} else {
			err = cs.Tracker().Update(leasesGVR, l, l.Namespace)
		}
		if err != nil {
			return true, nil, err
		}
		return true, l, nil
	})
}

func testElector(cs *fake.Clientset, id string) *Elector {
	return &Elector{Leases: cs.CoordinationV1().Leases("meshlet"), Name: "reaper", Identity: id,
		LeaseDuration: time.Second, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 50 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// leading records who leads, failing the test if two ever do at once.
type leading struct {
	t       *testing.T
	mu      sync.Mutex
	current string
	changes chan string // each new leader
}

func newLeading(t *testing.T) *leading { return &leading{t: t, changes: make(chan string, 10)} }

func (l *leading) lead(id string) func(context.Context) {
	return func(ctx context.Context) {
		l.mu.Lock()
		if l.current != "" {
			l.t.Errorf("%s leads while %s does", id, l.current)
		}
		l.current = id
		l.mu.Unlock()
		l.changes <- id
		<-ctx.Done()
		l.mu.Lock()
		l.current = ""
		l.mu.Unlock()
	}
}

func (l *leading) next(t *testing.T, within time.Duration) string {
	t.Helper()
	select {
	case id := <-l.changes:
		return id
	case <-time.After(within):
		t.Fatalf("no new leader within %s", within)
		return ""
	}
}

func holder(t *testing.T, cs *fake.Clientset) string {
	t.Helper()
	l, err := cs.CoordinationV1().Leases("meshlet").Get(context.Background(), "reaper", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ptr.Deref(l.Spec.HolderIdentity, "")
}

// TestElectorOneLeaderAndHandOver: of two candidates one leads; when it
// stops it gives the Lease up and the other leads at its next try, well
// before the Lease would have expired.
func TestElectorOneLeaderAndHandOver(t *testing.T) {
	cs := fake.NewClientset()
	var fail atomic.Bool
	apiServerLeases(cs, &fail)
	rec := newLeading(t)
	ctxs := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	for _, id := range []string{"a", "b"} {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[id] = cancel
		wg.Add(1)
		go func() { defer wg.Done(); testElector(cs, id).Run(ctx, rec.lead(id)) }()
	}
	defer func() {
		for _, c := range ctxs {
			c()
		}
		wg.Wait()
	}()
	first := rec.next(t, 2*time.Second)
	if h := holder(t, cs); h != first {
		t.Fatalf("%s leads, the Lease names %q", first, h)
	}
	// The other keeps campaigning without taking it.
	time.Sleep(1500 * time.Millisecond)
	select {
	case id := <-rec.changes:
		t.Fatalf("%s took the lead while %s renewed the Lease", id, first)
	default:
	}
	t0 := time.Now()
	ctxs[first]()
	second := rec.next(t, 2*time.Second)
	if second == first {
		t.Fatalf("%s leads again after stopping", first)
	}
	if d := time.Since(t0); d >= 900*time.Millisecond {
		t.Errorf("the other candidate took %s to lead: the Lease was not given up", d)
	}
	l, err := cs.CoordinationV1().Leases("meshlet").Get(context.Background(), "reaper", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(l.Spec.HolderIdentity, "") != second || ptr.Deref(l.Spec.LeaseTransitions, 0) != 1 {
		t.Errorf("Lease %+v: want held by %s after one transition", l.Spec, second)
	}
}

// TestElectorWaitsOutAnotherHolder: a Lease held by a candidate that died
// without giving it up is taken once it has not changed for its duration,
// not before.
func TestElectorWaitsOutAnotherHolder(t *testing.T) {
	cs := fake.NewClientset()
	var fail atomic.Bool
	apiServerLeases(cs, &fail)
	now := metav1.NewMicroTime(time.Now())
	if _, err := cs.CoordinationV1().Leases("meshlet").Create(context.Background(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "reaper"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("crashed"), LeaseDurationSeconds: ptr.To[int32](1),
			AcquireTime: &now, RenewTime: &now}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := newLeading(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t0 := time.Now()
	go func() { defer close(done); testElector(cs, "b").Run(ctx, rec.lead("b")) }()
	defer func() { cancel(); <-done }()
	rec.next(t, 3*time.Second)
	if d := time.Since(t0); d < time.Second {
		t.Errorf("took a Lease renewed %s before, its duration being 1s", d)
	}
	if h := holder(t, cs); h != "b" {
		t.Errorf("Lease held by %q", h)
	}
}

// TestElectorStepsDown: a leader stops leading when another candidate
// holds the Lease (here: written behind its back) and when it cannot
// renew it for the renew deadline, then campaigns again.
func TestElectorStepsDown(t *testing.T) {
	cs := fake.NewClientset()
	var fail atomic.Bool
	apiServerLeases(cs, &fail)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan time.Time, 10)
	started := make(chan struct{}, 10)
	done := make(chan struct{})
	e := testElector(cs, "a")
	go func() {
		defer close(done)
		e.Run(ctx, func(ctx context.Context) { started <- struct{}{}; <-ctx.Done(); stopped <- time.Now() })
	}()
	defer func() { cancel(); <-done }()
	wait := func(what string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: timed out", what)
		}
	}
	stoppedIn := func(what string, within time.Duration) {
		t.Helper()
		t0 := time.Now()
		select {
		case at := <-stopped:
			if d := at.Sub(t0); d > within {
				t.Errorf("%s: stepped down after %s, want within %s", what, d, within)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: still leading", what)
		}
	}
	wait("first lead", started)

	// Another candidate's write: its renewal finds the Lease taken.
	l, err := cs.CoordinationV1().Leases("meshlet").Get(context.Background(), "reaper", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity = ptr.To("thief")
	if _, err := cs.CoordinationV1().Leases("meshlet").Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	stoppedIn("Lease taken by another", 400*time.Millisecond)
	// It campaigns again and gets it once the thief's Lease expires.
	wait("lead again after the thief's Lease expired", started)

	fail.Store(true)
	stoppedIn("API server unreachable", 1200*time.Millisecond)
	fail.Store(false)
	wait("lead again once the API server answers", started)
}
