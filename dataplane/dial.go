package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Choosing and dialing one of a service's instances. Consul drops a lost
// node's instances only once its failure detection notices the node gone
// (seconds after a crash: docs/kind-offline.md measures it); until then a
// connection sent to one of them would wait the whole dial timeout, longer
// than most callers wait. Two things keep callers from paying for it:
//   - a dial not completed after hedgeDelay gets a second dial beside it,
//     to the next candidate; the first to complete carries the connection
//     and the other is abandoned (closed if it completes later);
//   - an instance whose dial failed, or was outrun by a hedge, is tried
//     after the others for ejectFor, so the next connections do not pay
//     again. Consul's catalog still decides which instances are healthy:
//     an ejected one is still tried when no other answers.
const (
	hedgeDelay = time.Second
	ejectFor   = 10 * time.Second
)

// ejections are the instances to try last, each until a time.
type ejections struct {
	mu    sync.Mutex
	until map[netip.AddrPort]time.Time
}

func (e *ejections) eject(a netip.AddrPort, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.until == nil {
		e.until = map[netip.AddrPort]time.Time{}
	}
	e.until[a] = now.Add(ejectFor)
}

func (e *ejections) restore(a netip.AddrPort) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.until, a)
}

// order is the dialing order of one connection: the healthy instances
// round robin from start, those ejected at now after the others, at most
// n of them.
func (e *ejections) order(healthy []Instance, start, n int, now time.Time) []Instance {
	e.mu.Lock()
	defer e.mu.Unlock()
	var first, last []Instance
	for i := range healthy {
		in := healthy[(start+i)%len(healthy)]
		if until, ok := e.until[in.Addr]; ok {
			if now.Before(until) {
				last = append(last, in)
				continue
			}
			delete(e.until, in.Addr)
		}
		first = append(first, in)
	}
	out := append(first, last...)
	return out[:min(n, len(out))]
}

// dialResult is one instance's dial.
type dialResult struct {
	in  Instance
	c   net.Conn
	err error
}

// raceDial dials cands in order, starting the next one when the last
// failed or has not completed within delay, and returns the first
// connection made. Dials still under way then are reported outrun and
// their connections closed when they come; done reports every dial's end
// (err nil: connected), from any goroutine. Without a connection it
// returns every dial's error.
func raceDial(cands []Instance, delay time.Duration, dial func(Instance) (net.Conn, error), outrun func(Instance), done func(Instance, error)) (net.Conn, error) {
	if len(cands) == 0 {
		return nil, errors.New("no instance to dial")
	}
	results := make(chan dialResult, len(cands))
	started, pending := 0, 0
	next := func() {
		in := cands[started]
		started++
		pending++
		go func() {
			c, err := dial(in)
			results <- dialResult{in, c, err}
		}()
	}
	next()
	timer := time.NewTimer(delay)
	defer timer.Stop()
	inflight := map[netip.AddrPort]Instance{cands[0].Addr: cands[0]}
	var errs []error
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			delete(inflight, r.in.Addr)
			done(r.in, r.err)
			if r.err == nil {
				for _, in := range inflight {
					outrun(in)
				}
				go closeLate(results, pending, done)
				return r.c, nil
			}
			errs = append(errs, r.err)
		case <-timer.C:
		}
		if started < len(cands) {
			inflight[cands[started].Addr] = cands[started]
			next()
			timer.Reset(delay)
		}
	}
	return nil, errors.Join(errs...)
}

// closeLate waits for the n dials a connection no longer needs, reports
// them and closes what they connected.
func closeLate(results <-chan dialResult, n int, done func(Instance, error)) {
	for range n {
		r := <-results
		done(r.in, r.err)
		if r.c != nil {
			r.c.Close()
		}
	}
}
