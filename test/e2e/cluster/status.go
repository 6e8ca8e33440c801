package cluster

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Component is one running process of the cluster and its memory.
type Component struct {
	Name   string
	PID    int
	RSSKiB int
}

// Status lists the recorded components that run, with their resident memory.
func (c *Cluster) Status() ([]Component, error) {
	files, err := filepath.Glob(filepath.Join(c.Dir, "pids", "*.pid"))
	if err != nil {
		return nil, err
	}
	var out []Component
	for _, f := range files {
		pid, exe, err := readPidFile(f)
		if err != nil || !alive(pid, exe) {
			continue
		}
		out = append(out, Component{Name: strings.TrimSuffix(filepath.Base(f), ".pid"), PID: pid, RSSKiB: rssKiB(pid)})
	}
	return out, nil
}

func rssKiB(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}
