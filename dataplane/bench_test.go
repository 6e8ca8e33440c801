package dataplane

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/test/procstatus"
	"github.com/meshlet/meshlet/test/repobin"
)

// bulkBytes is what one throughput connection carries from the server
// app to the client, through both proxies.
const bulkBytes = 256 << 20

// benchApp serves, per connection, "ok\n" at once (a set-up probe), or
// after a line "bulk\n" bulkBytes of zeros; it returns its port.
func benchApp(b *testing.B) int {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	zeros := make([]byte, 64<<10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.WriteString(c, "ok\n"); err != nil {
					return
				}
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || line != "bulk\n" {
					_, _ = io.Copy(io.Discard, c) // held open (RSS with open connections)
					return
				}
				for sent := 0; sent < bulkBytes; sent += len(zeros) {
					if _, err := c.Write(zeros); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// plane is one data plane's pair of proxies, as processes.
type plane struct {
	name     string
	upstream string // the client proxy's upstream listener
	client   int    // the client proxy's PID
}

// startPlane registers a server and a client with an upstream to it, and
// runs a proxy process for each with argv(proxyID, serviceID).
func startPlane(b *testing.B, cl *capi.Client, httpAddr, name string, argv func(proxyID, serviceID string) []string) plane {
	b.Helper()
	app := benchApp(b)
	up := freePort(b)
	server, client := "bench-server-"+name, "bench-client-"+name
	var pids []int
	for _, r := range []struct {
		name string
		ups  []contract.Upstream
	}{{server, nil}, {client, []contract.Upstream{{Name: server, LocalPort: up}}}} {
		regs := register(b, cl, meshPod{name: r.name, ip: "127.0.0.1", app: app, public: freePort(b), upstreams: r.ups})
		args := argv(regs.Proxy.ID, regs.Service.ID)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+httpAddr)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pid := cmd.Process.Pid
		pids = append(pids, pid)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		b.Cleanup(func() {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		})
	}
	p := plane{name: name, upstream: net.JoinHostPort("127.0.0.1", strconv.Itoa(up)), client: pids[1]}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := p.setup(); err == nil {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("%s data plane not carrying after 60 s: %v", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return p
}

// setup is one connection's set-up through both proxies: from the dial to
// the app's first byte.
func (p plane) setup() (time.Duration, error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ok\n" {
		return 0, fmt.Errorf("got %q, %v", line, err)
	}
	return time.Since(t0), nil
}

// bulk is the throughput of one connection carrying bulkBytes, in MB/s.
func (p plane) bulk() (float64, error) {
	c, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 256<<10)
	if line, err := r.ReadString('\n'); err != nil || line != "ok\n" {
		return 0, fmt.Errorf("got %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "bulk\n"); err != nil {
		return 0, err
	}
	t0 := time.Now()
	n, err := io.Copy(io.Discard, r)
	if err != nil || n != bulkBytes {
		return 0, fmt.Errorf("carried %d of %d bytes: %v", n, bulkBytes, err)
	}
	return float64(n) / 1e6 / time.Since(t0).Seconds(), nil
}

func pct(d []time.Duration, p float64) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
}

// BenchmarkProxyVsBuiltin: `meshlet proxy` against Consul's built-in
// proxy, in the same run on the same path (client app → client proxy's
// upstream listener → mTLS → server proxy → server app, all on
// loopback, real Consul agents). b.N connection set-ups per data plane,
// alternating; then five bulk connections each, alternating; then each client proxy's
// RSS idle and with 100 connections open. Goals (issue 9): set-up latency
// ≤ the built-in proxy's, throughput ≥ it, RSS ≤ 20 MiB idle.
//
// With $MESHLET_PROXY_BASELINE naming another build of meshlet-proxy (an
// earlier commit's), it runs as a fourth plane and the run reports the
// current build's idle RSS against it.
func BenchmarkProxyVsBuiltin(b *testing.B) {
	proxyBin, meshletBin := repobin.Need(b, "meshlet-proxy", "make build"), repobin.Need(b, "meshlet", "make build")
	consulBin := repobin.Need(b, "consul", "make tools")
	cl, port := consulAgentsIn(b, nil, "127.0.0.1")
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	meshletArgs := func(proxyID string) []string {
		return []string{"-proxy-id", proxyID, "-metrics-addr", "", "-log-level", "warn"}
	}
	// The first is what the webhook injects; the third, the same proxy as
	// a subcommand of the node agent's and webhook's binary, shows what their
	// code costs a sidecar.
	planes := []plane{
		startPlane(b, cl, httpAddr, "meshlet", func(proxyID, _ string) []string {
			return append([]string{proxyBin}, meshletArgs(proxyID)...)
		}),
		startPlane(b, cl, httpAddr, "consul", func(_, serviceID string) []string {
			return []string{consulBin, "connect", "proxy", "-sidecar-for", serviceID, "-log-level", "warn"}
		}),
		startPlane(b, cl, httpAddr, "meshlet-subcommand", func(proxyID, _ string) []string {
			return append([]string{meshletBin, "proxy"}, meshletArgs(proxyID)...)
		}),
	}
	if base := os.Getenv("MESHLET_PROXY_BASELINE"); base != "" {
		planes = append(planes, startPlane(b, cl, httpAddr, "meshlet-baseline", func(proxyID, _ string) []string {
			return append([]string{base}, meshletArgs(proxyID)...)
		}))
	}
	time.Sleep(2 * time.Second)
	var idle []float64
	for _, p := range planes {
		idle = append(idle, procstatus.Must(b, p.client, "VmRSS"))
	}
	// What of meshlet's is its own (heap, stacks) rather than the
	// binary's pages.
	idleAnon := procstatus.Must(b, planes[0].client, "RssAnon")
	var baselineAnon float64
	if len(planes) > 3 {
		baselineAnon = procstatus.Must(b, planes[3].client, "RssAnon")
	}
	lat := make([][]time.Duration, len(planes))
	b.ResetTimer()
	for range b.N {
		for i, p := range planes {
			d, err := p.setup()
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			lat[i] = append(lat[i], d)
		}
	}
	b.StopTimer()
	// Throughput: the median of five bulk connections each, alternating.
	runs := make([][]float64, len(planes))
	for range 5 {
		for i, p := range planes {
			mbs, err := p.bulk()
			if err != nil {
				b.Fatalf("%s bulk: %v", p.name, err)
			}
			runs[i] = append(runs[i], mbs)
		}
	}
	tput := make([]float64, len(planes))
	for i := range runs {
		sort.Float64s(runs[i])
		tput[i] = runs[i][2]
	}
	open := make([]float64, len(planes))
	for i, p := range planes {
		var conns []net.Conn
		for range 100 {
			c, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ok\n" {
				b.Fatalf("%s: open connection got %q, %v", p.name, line, err)
			}
			conns = append(conns, c)
		}
		time.Sleep(time.Second)
		open[i] = procstatus.Must(b, p.client, "VmRSS")
		for _, c := range conns {
			c.Close()
		}
	}
	for i, p := range planes {
		b.ReportMetric(pct(lat[i], 0.5), p.name+"-setup-p50-ms")
		b.ReportMetric(pct(lat[i], 0.99), p.name+"-setup-p99-ms")
		b.ReportMetric(tput[i], p.name+"-MB/s")
		b.ReportMetric(idle[i], p.name+"-rss-idle-MiB")
		b.ReportMetric(open[i], p.name+"-rss-100conns-MiB")
	}
	b.ReportMetric(idleAnon, "meshlet-rss-idle-anon-MiB")
	b.ReportMetric(pct(lat[0], 0.5)/pct(lat[1], 0.5), "setup-p50-ratio")
	b.ReportMetric(tput[0]/tput[1], "throughput-ratio")
	if len(planes) > 3 {
		b.ReportMetric(idle[0]/idle[3], "rss-idle-vs-baseline-ratio")
		b.ReportMetric(baselineAnon, "meshlet-baseline-rss-idle-anon-MiB")
	}
}
