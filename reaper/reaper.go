// Package reaper is `meshlet reaper`, the token reaper: it deletes the
// login tokens of Consul's Kubernetes auth method that no live pod holds
// any more (docs/identity.md, "No leaked tokens"). A sidecar logs out on
// its way out; a pod force-deleted, deleted while its node was down, or
// whose sidecar crashed leaves its token behind, and deleting another's
// token takes acl:write, too much for a DaemonSet on every node. So one
// small Deployment holds that right, and of its replicas only the holder
// of a Lease reaps.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	capi "github.com/hashicorp/consul/api"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Config is the reaper's configuration; Main fills it from flags.
type Config struct {
	// AuthMethod is the Consul auth method whose tokens are reaped.
	AuthMethod string
	// Interval between passes; a pod's deletion brings one sooner.
	Interval time.Duration
	// Grace: a token younger than this is kept whatever it names, because
	// the pod cache may not have seen its brand new pod yet.
	Grace time.Duration
	// Debounce is the wait after a pod's deletion before the pass it
	// brings, so that a burst of deletions makes one pass.
	Debounce time.Duration
}

// ACL is the part of Consul's ACL API the reaper uses; *capi.ACL is one.
type ACL interface {
	TokenListFiltered(capi.ACLTokenFilterOptions, *capi.QueryOptions) ([]*capi.ACLTokenListEntry, *capi.QueryMeta, error)
	TokenDelete(accessorID string, q *capi.WriteOptions) (*capi.WriteMeta, error)
}

// Reaper deletes orphaned login tokens; New builds it, Pass makes one
// pass, Run runs it for good.
type Reaper struct {
	cfg     Config
	acl     ACL
	pods    corelisters.PodLister
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time
	// kick asks for a prompt pass; holding one request is enough.
	kick chan struct{}
	// noMetaSeen: the tokens without pod meta already logged, so that
	// each is logged once, not at every pass.
	noMetaSeen map[string]bool
	synced     atomic.Bool
}

// New builds a reaper reading pods from lister.
func New(cfg Config, acl ACL, lister corelisters.PodLister, log *slog.Logger, m *Metrics) *Reaper {
	return &Reaper{cfg: cfg, acl: acl, pods: lister, log: log, metrics: m, now: time.Now,
		kick: make(chan struct{}, 1), noMetaSeen: map[string]bool{}}
}

// Result is what one pass did.
type Result struct {
	Listed, Deleted, AlreadyGone, NoMeta int
	// Recheck: Plan.Recheck, when the next pass is due at the latest.
	Recheck time.Time
}

// Pass lists the auth method's tokens and deletes the orphans among them.
// Its error joins every failure; the deletions that worked are done.
func (r *Reaper) Pass(ctx context.Context) (Result, error) {
	res, err := r.pass(ctx)
	result := "ok"
	if err != nil {
		result = "error"
	}
	r.metrics.passes.WithLabelValues(result).Inc()
	return res, err
}

func (r *Reaper) pass(ctx context.Context) (Result, error) {
	entries, _, err := r.acl.TokenListFiltered(capi.ACLTokenFilterOptions{AuthMethod: r.cfg.AuthMethod}, (&capi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		r.metrics.errors.WithLabelValues("list").Inc()
		return Result{}, fmt.Errorf("list the tokens of auth method %s: %w", r.cfg.AuthMethod, err)
	}
	toks := tokensOf(entries)
	now := r.now()
	plan := Decide(toks, r.cfg.AuthMethod, livePods(r.pods, toks), now, r.cfg.Grace)
	r.noteNoMeta(plan.NoMeta)
	res := Result{Listed: len(toks), NoMeta: len(plan.NoMeta), Recheck: plan.Recheck}
	var errs []error
	for _, o := range plan.Delete {
		_, err := r.acl.TokenDelete(o.AccessorID, (&capi.WriteOptions{}).WithContext(ctx))
		switch {
		case err == nil:
			res.Deleted++
			r.metrics.deleted.WithLabelValues(string(o.Reason)).Inc()
			r.log.Info("deleted a login token no live pod holds", "pod", o.Pod, "pod_uid", o.PodUID,
				"accessor_id", o.AccessorID, "reason", string(o.Reason), "age", now.Sub(o.CreateTime).Round(time.Second).String())
		case alreadyGone(err):
			res.AlreadyGone++
			r.log.Debug("login token already gone", "pod", o.Pod, "accessor_id", o.AccessorID)
		default:
			r.metrics.errors.WithLabelValues("delete").Inc()
			errs = append(errs, fmt.Errorf("delete token %s of pod %s: %w", o.AccessorID, o.Pod, err))
		}
	}
	r.metrics.tokens.Set(float64(res.Listed - res.Deleted - res.AlreadyGone))
	return res, errors.Join(errs...)
}

// alreadyGone: the token was deleted meanwhile (its sidecar logged out, the
// other replica deleted it); its deletion is done.
func alreadyGone(err error) bool {
	var se capi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return true
	}
	return strings.Contains(err.Error(), "ACL not found")
}

// noteNoMeta logs each token without pod meta the first time it is seen,
// and forgets those no longer listed.
func (r *Reaper) noteNoMeta(toks []Token) {
	r.metrics.noMeta.Set(float64(len(toks)))
	seen := make(map[string]bool, len(toks))
	for _, t := range toks {
		seen[t.AccessorID] = true
		if !r.noMetaSeen[t.AccessorID] {
			r.log.Info("a token of the auth method names no pod: not a meshlet sidecar's login, kept",
				"accessor_id", t.AccessorID, "auth_method", t.AuthMethod, "created", t.CreateTime.UTC().Format(time.RFC3339))
		}
	}
	r.noMetaSeen = seen
}

// PodGone asks for a prompt pass; the pod informer calls it when a pod
// is deleted or finishes.
func (r *Reaper) PodGone() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// ContainerRestarted asks for a prompt pass and another once a token
// made since would have left the grace: the pod informer calls it when a
// pod's container restarts, and a restarted sidecar's new login, which
// makes its first token an orphan, may come after the first pass.
func (r *Reaper) ContainerRestarted() {
	r.PodGone()
	time.AfterFunc(r.cfg.Grace+time.Second, r.PodGone)
}

// Synced reports whether the pod cache was filled: until then the reaper
// is not ready and makes no pass.
func (r *Reaper) Synced() bool { return r.synced.Load() }

// Run fills the pod cache from inf (already wired to PodGone), then takes
// part in the election and reaps while leading, until ctx ends; it
// returns once the Lease is given up.
func (r *Reaper) Run(ctx context.Context, inf cache.SharedIndexInformer, e *Elector) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); inf.RunWithContext(ctx) }()
	defer func() { cancel(); <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // stopped before the cache was filled
	}
	r.synced.Store(true)
	r.log.Info("pod cache filled", "pods", len(inf.GetStore().ListKeys()))
	e.Run(ctx, func(ctx context.Context) {
		r.metrics.leader.Set(1)
		defer r.metrics.leader.Set(0)
		r.reap(ctx)
	})
	return nil
}

// maxErrorRetry caps the wait after failed passes, which doubles from
// one to the next: a Consul blip is retried soon, a Consul that is down
// is not hammered.
const maxErrorRetry = 30 * time.Second

// reap makes passes until ctx ends: one at once, then every Interval, one
// Debounce after a pod's deletion, one when a young token kept by the
// grace leaves it, and sooner after a failed pass.
func (r *Reaper) reap(ctx context.Context) {
	next := time.NewTimer(0)
	defer next.Stop()
	var prompt <-chan time.Time
	errRetry := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			if prompt == nil {
				prompt = time.After(r.cfg.Debounce)
			}
			continue
		case <-prompt:
			prompt = nil
		case <-next.C:
		}
		res, err := r.Pass(ctx)
		wait := r.cfg.Interval
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("pass over the login tokens failed; retrying", "err", err, "retry_in", errRetry.String())
			wait = min(wait, errRetry)
			errRetry = min(2*errRetry, maxErrorRetry)
		} else {
			errRetry = time.Second
		}
		if !res.Recheck.IsZero() {
			wait = min(wait, max(res.Recheck.Sub(r.now()), 10*time.Millisecond))
		}
		next.Reset(wait)
	}
}
