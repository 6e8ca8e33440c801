package reaper

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	testMethod  = "meshlet-test-jwt"
	otherMethod = "someone-elses-jwt"
)

// syncBuffer is a log sink the reaper's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func pod(ns, name, uid string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid),
		Annotations: map[string]string{"dropped-by": "slimPod"}},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		Status: corev1.PodStatus{Phase: phase}}
}

// podCache is the reaper's informer over the fake clientset's pods, filled.
func podCache(t *testing.T, cs *fake.Clientset) (cache.SharedIndexInformer, corelisters.PodLister) {
	t.Helper()
	inf := NewPodInformer(cs.CoreV1().Pods(metav1.NamespaceAll))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); inf.RunWithContext(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("pod cache not filled")
	}
	return inf, corelisters.NewPodLister(inf.GetIndexer())
}

func meta(pod, uid string) map[string]string { return map[string]string{"pod": pod, "pod-uid": uid} }

// goneFirst deletes, with the management token, each token named in gone
// just before the reaper deletes it: Consul's answer for a token deleted
// meanwhile (its sidecar logged out, the other replica was quicker).
type goneFirst struct {
	ACL
	mgmt *capi.Client
	gone map[string]bool
}

func (g goneFirst) TokenDelete(id string, q *capi.WriteOptions) (*capi.WriteMeta, error) {
	if g.gone[id] {
		if _, err := g.mgmt.ACL().TokenDelete(id, nil); err != nil {
			return nil, fmt.Errorf("test setup: %w", err)
		}
	}
	return g.ACL.TokenDelete(id, q)
}

// TestPassAgainstConsul: on a real Consul with ACLs, with a token of the
// reaper's policy alone, one pass deletes exactly the login tokens whose
// pod is gone (absent, finished, another pod of its name, or holding a
// newer token), keeps the live pods', the token without pod meta and
// another auth method's, keeps everything while younger than the grace,
// takes a token already gone as done, logs no secret, and a second pass
// deletes nothing.
func TestPassAgainstConsul(t *testing.T) {
	addr, mgmt := consulWithACLs(t)
	jwt := authMethod(t, mgmt, testMethod)
	other := authMethod(t, mgmt, otherMethod)

	login := func(sa string, m map[string]string) *capi.ACLToken { return jwt.login(t, mgmt, testMethod, sa, m) }
	keep := map[string]*capi.ACLToken{
		"web-1":         login("web", meta("default/web-1", "uid-web-1")),
		"db-0 (new)":    login("db", meta("shop/db-0", "uid-db-0-new")),
		"cache-1 (new)": nil, // below: after its older token
		"no pod meta":   login("web", nil),
		"no uid sent":   login("web", map[string]string{"pod": "default/unrelated"}),
	}
	orphans := map[string]*capi.ACLToken{
		"web-2 (gone)":        login("web", meta("default/web-2", "uid-web-2")),
		"db-0 (old UID)":      login("db", meta("shop/db-0", "uid-db-0-old")),
		"job-1 (finished)":    login("job", meta("default/job-1", "uid-job-1")),
		"cache-1 (old)":       login("cache", meta("default/cache-1", "uid-cache-1")),
		"evicted (gone away)": login("web", meta("default/evicted", "uid-evicted")),
	}
	keep["cache-1 (new)"] = login("cache", meta("default/cache-1", "uid-cache-1"))
	foreign := other.login(t, mgmt, otherMethod, "web", meta("default/web-2", "uid-web-2"))

	cs := fake.NewClientset(
		pod("default", "web-1", "uid-web-1", corev1.PodRunning),
		pod("shop", "db-0", "uid-db-0-new", corev1.PodRunning),
		pod("default", "cache-1", "uid-cache-1", corev1.PodRunning),
		pod("default", "job-1", "uid-job-1", corev1.PodSucceeded),
		pod("default", "evicted", "uid-evicted", corev1.PodFailed),
		pod("default", "unrelated", "uid-unrelated", corev1.PodRunning),
	)
	_, lister := podCache(t, cs)
	if p, err := lister.Pods("default").Get("web-1"); err != nil || p.Annotations != nil || p.Spec.Containers != nil {
		t.Errorf("cached pod %+v (%v): want slimmed", p, err)
	}

	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	acl := goneFirst{ACL: reaperClient(t, addr, mgmt).ACL(), mgmt: mgmt, gone: map[string]bool{orphans["web-2 (gone)"].AccessorID: true}}
	r := New(Config{AuthMethod: testMethod, Grace: time.Hour}, acl, lister, slog.New(slog.NewTextHandler(logs, nil)), m)

	// Every token is younger than an hour: nothing goes, a recheck is due.
	res, err := r.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 0 || res.Listed != len(keep)+len(orphans) || res.Recheck.IsZero() {
		t.Fatalf("within the grace: %+v; want nothing deleted of %d and a recheck", res, len(keep)+len(orphans))
	}

	r.cfg.Grace = 0
	res, err = r.Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Listed: len(keep) + len(orphans), Deleted: len(orphans) - 1, AlreadyGone: 1, NoMeta: 1}
	if res != want {
		t.Errorf("pass: %+v, want %+v", res, want)
	}
	left := accessors(t, mgmt, testMethod)
	for name, tok := range orphans {
		if left[tok.AccessorID] {
			t.Errorf("token of %s is still in Consul", name)
		}
	}
	for name, tok := range keep {
		if !left[tok.AccessorID] {
			t.Errorf("token of %s was deleted", name)
		}
	}
	if len(left) != len(keep) {
		t.Errorf("%d tokens of the auth method left, want %d", len(left), len(keep))
	}
	if !accessors(t, mgmt, otherMethod)[foreign.AccessorID] {
		t.Error("another auth method's token was deleted")
	}

	for reason, n := range map[Reason]float64{PodGone: 2, UIDMismatch: 1, Superseded: 1} {
		if got := testutil.ToFloat64(m.deleted.WithLabelValues(string(reason))); got != n {
			t.Errorf("deleted{reason=%s} = %v, want %v", reason, got, n)
		}
	}
	if got := testutil.ToFloat64(m.noMeta); got != 1 {
		t.Errorf("tokens without pod meta = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.tokens); got != float64(len(keep)) {
		t.Errorf("login tokens = %v, want %d", got, len(keep))
	}

	out := logs.String()
	for name, tok := range orphans {
		if name == "web-2 (gone)" {
			continue // deleted by the test, not logged as deleted
		}
		if !strings.Contains(out, "accessor_id="+tok.AccessorID) {
			t.Errorf("the deletion of %s's token is not logged with its accessor ID", name)
		}
	}
	for _, pod := range []string{"shop/db-0", "default/job-1", "default/cache-1", "default/evicted"} {
		if !strings.Contains(out, "pod="+pod) {
			t.Errorf("no log line names pod %s", pod)
		}
	}
	if n := strings.Count(out, "names no pod"); n != 1 {
		t.Errorf("the token without pod meta is logged %d times over two passes, want once", n)
	}
	for _, tok := range slices.Concat(slices.Collect(maps.Values(keep)), slices.Collect(maps.Values(orphans))) {
		if strings.Contains(out, tok.SecretID) {
			t.Fatalf("a token's SecretID is in the logs:\n%s", out)
		}
	}

	res, err = r.Pass(context.Background())
	if err != nil || res != (Result{Listed: len(keep), NoMeta: 1}) {
		t.Errorf("second pass: %+v, %v; want nothing to do", res, err)
	}
	if got := testutil.ToFloat64(m.passes.WithLabelValues("ok")); got != 3 {
		t.Errorf("passes{result=ok} = %v, want 3", got)
	}

	// A token the reaper may not delete fails the pass, counted.
	anon, err := capi.NewClient(&capi.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	r.acl = anon.ACL()
	if _, err := r.Pass(context.Background()); err == nil || !strings.Contains(err.Error(), "list the tokens of auth method "+testMethod) {
		t.Errorf("pass without the right: %v", err)
	}
	if testutil.ToFloat64(m.errors.WithLabelValues("list")) != 1 || testutil.ToFloat64(m.passes.WithLabelValues("error")) != 1 {
		t.Error("the failed list is not counted")
	}
}

// TestRunReapsPromptly: leading, the reaper deletes a young orphan once it
// leaves the grace, a restarted sidecar's first token soon after the
// restart, and a pod's token soon after the pod is deleted, without
// waiting for the interval; the standby replica reaps nothing.
func TestRunReapsPromptly(t *testing.T) {
	addr, mgmt := consulWithACLs(t)
	jwt := authMethod(t, mgmt, testMethod)
	cs := fake.NewClientset(pod("default", "web-3", "uid-web-3", corev1.PodRunning))
	var fail atomic.Bool
	apiServerLeases(cs, &fail)

	young := jwt.login(t, mgmt, testMethod, "web", meta("default/never-seen", "uid-x"))
	web3 := jwt.login(t, mgmt, testMethod, "web", meta("default/web-3", "uid-web-3"))

	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	acl := reaperClient(t, addr, mgmt).ACL()
	var metrics []*Metrics
	for _, id := range []string{"a", "b"} {
		inf := NewPodInformer(cs.CoreV1().Pods(metav1.NamespaceAll))
		m := NewMetrics(prometheus.NewRegistry())
		metrics = append(metrics, m)
		r := New(Config{AuthMethod: testMethod, Interval: time.Hour, Grace: 2 * time.Second, Debounce: 100 * time.Millisecond},
			acl, corelisters.NewPodLister(inf.GetIndexer()), log.With("replica", id), m)
		if err := onPodGone(inf, r.PodGone, r.ContainerRestarted); err != nil {
			t.Fatal(err)
		}
		e := testElector(cs, id)
		e.Log = log
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(ctx, inf, e) }()
	}

	t0 := time.Now()
	eventually(t, 10*time.Second, "the young orphan deleted when it leaves the grace", func() error {
		if accessors(t, mgmt, testMethod)[young.AccessorID] {
			return fmt.Errorf("still there after %s", time.Since(t0))
		}
		return nil
	})
	if time.Since(young.CreateTime) < 2*time.Second {
		t.Errorf("the orphan was deleted %s after its creation, within the grace", time.Since(young.CreateTime))
	}
	if !accessors(t, mgmt, testMethod)[web3.AccessorID] {
		t.Fatal("the live pod's token was deleted")
	}

	// web-3's sidecar restarts and logs in again: its first token is
	// left, and goes without waiting for the interval.
	web3b := jwt.login(t, mgmt, testMethod, "web", meta("default/web-3", "uid-web-3"))
	p, err := cs.CoreV1().Pods("default").Get(context.Background(), "web-3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "meshlet-proxy", RestartCount: 1}}
	if _, err := cs.CoreV1().Pods("default").UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	eventually(t, 5*time.Second, "web-3's first token deleted after its sidecar restarted", func() error {
		if accessors(t, mgmt, testMethod)[web3.AccessorID] {
			return fmt.Errorf("still there after %s", time.Since(t2))
		}
		return nil
	})
	if !accessors(t, mgmt, testMethod)[web3b.AccessorID] {
		t.Fatal("the restarted sidecar's new token was deleted")
	}

	if err := cs.CoreV1().Pods("default").Delete(context.Background(), "web-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	eventually(t, 5*time.Second, "web-3's token deleted after its pod", func() error {
		if accessors(t, mgmt, testMethod)[web3b.AccessorID] {
			return fmt.Errorf("still there after %s", time.Since(t1))
		}
		return nil
	})

	// The reaper counts a deletion once Consul's answer is back, which may
	// be after the test sees the token gone.
	eventually(t, 5*time.Second, "one leader that counted 3 deletions", func() error {
		var leaders, deleted float64
		for _, m := range metrics {
			leaders += testutil.ToFloat64(m.leader)
			for _, r := range []Reason{PodGone, UIDMismatch, Superseded} {
				deleted += testutil.ToFloat64(m.deleted.WithLabelValues(string(r)))
			}
		}
		if leaders != 1 || deleted != 3 {
			return fmt.Errorf("%v replicas lead, %v tokens deleted\n%s", leaders, deleted, logs.String())
		}
		return nil
	})
	for i, m := range metrics {
		if testutil.ToFloat64(m.leader) == 0 && testutil.ToFloat64(m.passes.WithLabelValues("ok")) != 0 {
			t.Errorf("replica %d passed over the tokens while standing by", i)
		}
	}
}
