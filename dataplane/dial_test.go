package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func inst(addr string) Instance { return Instance{Addr: netip.MustParseAddrPort(addr), Healthy: true} }

func addrs(ins []Instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.Addr.String())
	}
	return out
}

func TestEjectionsOrder(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	a, b, c, d := inst("10.0.0.1:20000"), inst("10.0.0.2:20000"), inst("10.0.0.3:20000"), inst("10.0.0.4:20000")
	all := []Instance{a, b, c, d}
	for _, tc := range []struct {
		name     string
		ejected  map[string]time.Duration // instance → ejected that long before now
		start, n int
		want     []string
	}{
		{"round robin from start", nil, 1, 3, []string{"10.0.0.2:20000", "10.0.0.3:20000", "10.0.0.4:20000"}},
		{"wraps around", nil, 3, 3, []string{"10.0.0.4:20000", "10.0.0.1:20000", "10.0.0.2:20000"}},
		{"fewer than n", nil, 0, 9, []string{"10.0.0.1:20000", "10.0.0.2:20000", "10.0.0.3:20000", "10.0.0.4:20000"}},
		{"an ejected one goes last", map[string]time.Duration{"10.0.0.2:20000": time.Second}, 1, 4,
			[]string{"10.0.0.3:20000", "10.0.0.4:20000", "10.0.0.1:20000", "10.0.0.2:20000"}},
		{"an ejected one falls out of n", map[string]time.Duration{"10.0.0.1:20000": 0}, 0, 3,
			[]string{"10.0.0.2:20000", "10.0.0.3:20000", "10.0.0.4:20000"}},
		{"all ejected: tried anyway, in order", map[string]time.Duration{"10.0.0.1:20000": 0, "10.0.0.2:20000": 0, "10.0.0.3:20000": 0, "10.0.0.4:20000": 0}, 2, 2,
			[]string{"10.0.0.3:20000", "10.0.0.4:20000"}},
		{"an ejection expires", map[string]time.Duration{"10.0.0.1:20000": ejectFor}, 0, 2,
			[]string{"10.0.0.1:20000", "10.0.0.2:20000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e ejections
			for addr, ago := range tc.ejected {
				e.eject(netip.MustParseAddrPort(addr), now.Add(-ago))
			}
			if got := addrs(e.order(all, tc.start, tc.n, now)); !slices.Equal(got, tc.want) {
				t.Errorf("order: %v, want %v", got, tc.want)
			}
		})
	}
	var e ejections
	e.eject(a.Addr, now)
	e.restore(a.Addr)
	if got := addrs(e.order(all, 0, 1, now)); !slices.Equal(got, []string{"10.0.0.1:20000"}) {
		t.Errorf("restored instance: order %v, want it first again", got)
	}
}

// fakeDials answers each instance's dial as told: an error, a connection,
// or nothing until released.
type fakeDials struct {
	mu      sync.Mutex
	order   []string
	fail    map[string]bool
	hang    map[string]chan struct{}
	conns   []net.Conn
	done    map[string]error
	outruns []string
	ended   chan string
}

func newFakeDials() *fakeDials {
	return &fakeDials{fail: map[string]bool{}, hang: map[string]chan struct{}{}, done: map[string]error{}, ended: make(chan string, 16)}
}

func (f *fakeDials) dial(in Instance) (net.Conn, error) {
	a := in.Addr.String()
	f.mu.Lock()
	f.order = append(f.order, a)
	release := f.hang[a]
	fail := f.fail[a]
	f.mu.Unlock()
	if release != nil {
		<-release
	}
	if fail {
		return nil, fmt.Errorf("dial %s: refused", a)
	}
	c, peer := net.Pipe()
	f.mu.Lock()
	f.conns = append(f.conns, peer)
	f.mu.Unlock()
	return c, nil
}

func (f *fakeDials) outrun(in Instance) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.outruns = append(f.outruns, in.Addr.String())
}

func (f *fakeDials) report(in Instance, err error) {
	f.mu.Lock()
	f.done[in.Addr.String()] = err
	f.mu.Unlock()
	f.ended <- in.Addr.String()
}

func TestRaceDial(t *testing.T) {
	a, b, c := inst("10.0.0.1:20000"), inst("10.0.0.2:20000"), inst("10.0.0.3:20000")
	cands := []Instance{a, b, c}

	t.Run("the first answers: one dial", func(t *testing.T) {
		f := newFakeDials()
		conn, err := raceDial(cands, time.Hour, f.dial, f.outrun, f.report)
		if err != nil || conn == nil {
			t.Fatalf("raceDial: %v", err)
		}
		if !slices.Equal(f.order, []string{"10.0.0.1:20000"}) || len(f.outruns) != 0 {
			t.Errorf("dials %v, outrun %v: want the first alone", f.order, f.outruns)
		}
	})

	t.Run("a failed dial starts the next at once", func(t *testing.T) {
		f := newFakeDials()
		f.fail["10.0.0.1:20000"] = true
		// An hour's delay: only the failure can start the second dial.
		conn, err := raceDial(cands, time.Hour, f.dial, f.outrun, f.report)
		if err != nil || conn == nil {
			t.Fatalf("raceDial: %v", err)
		}
		if !slices.Equal(f.order, []string{"10.0.0.1:20000", "10.0.0.2:20000"}) {
			t.Errorf("dials %v", f.order)
		}
		if f.done["10.0.0.1:20000"] == nil || f.done["10.0.0.2:20000"] != nil {
			t.Errorf("reported %v: want the first failed, the second connected", f.done)
		}
	})

	t.Run("a slow dial is raced and its late connection closed", func(t *testing.T) {
		f := newFakeDials()
		release := make(chan struct{})
		f.hang["10.0.0.1:20000"] = release
		conn, err := raceDial(cands, time.Millisecond, f.dial, f.outrun, f.report)
		if err != nil || conn == nil {
			t.Fatalf("raceDial: %v", err)
		}
		if !slices.Equal(f.outruns, []string{"10.0.0.1:20000"}) {
			t.Errorf("outrun %v, want the slow first", f.outruns)
		}
		<-f.ended // the second's report, before raceDial returned
		close(release)
		if got := <-f.ended; got != "10.0.0.1:20000" {
			t.Fatalf("late report from %s", got)
		}
		f.mu.Lock()
		late := f.conns[len(f.conns)-1]
		f.mu.Unlock()
		// The late connection was closed: its peer reads EOF.
		if _, err := late.Read(make([]byte, 1)); err == nil {
			t.Error("the late connection is still open")
		}
	})

	t.Run("none answers: every error", func(t *testing.T) {
		f := newFakeDials()
		for _, in := range cands {
			f.fail[in.Addr.String()] = true
		}
		conn, err := raceDial(cands, time.Hour, f.dial, f.outrun, f.report)
		if conn != nil || err == nil {
			t.Fatalf("raceDial: %v, %v: want an error", conn, err)
		}
		for _, in := range cands {
			if !strings.Contains(err.Error(), in.Addr.String()) {
				t.Errorf("error %q does not name %s", err, in.Addr)
			}
		}
		var joined interface{ Unwrap() []error }
		if !errors.As(err, &joined) || len(joined.Unwrap()) != 3 {
			t.Errorf("error %v: want the 3 dials' errors joined", err)
		}
	})
}
