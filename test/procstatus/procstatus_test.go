package procstatus

import (
	"os"
	"strings"
	"testing"
)

// TestMiB: this process's RSS is read and positive; a field that is not
// there is an error naming it.
func TestMiB(t *testing.T) {
	rss, err := MiB(os.Getpid(), "VmRSS")
	if err != nil || rss <= 0 {
		t.Fatalf("VmRSS = %v, %v", rss, err)
	}
	if _, err := MiB(os.Getpid(), "NoSuchField"); err == nil || !strings.Contains(err.Error(), "NoSuchField") {
		t.Fatalf("missing field: %v", err)
	}
}
