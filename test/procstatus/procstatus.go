// Package procstatus reads a process's memory from /proc/<pid>/status,
// for the benchmarks that report it.
package procstatus

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// MiB is a kB field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon,
// RssFile, ...), in MiB.
func MiB(pid int, field string) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status %s: %w", pid, field, err)
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// Must is MiB for a test or benchmark, which fails on an error.
func Must(tb testing.TB, pid int, field string) float64 {
	tb.Helper()
	v, err := MiB(pid, field)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}
