package logs

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestFlags(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	if err := fs.Parse([]string{"-log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log, err := f.Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello", "pod", "ns/web")
	if got := buf.String(); !strings.Contains(got, `"msg":"hello"`) || !strings.Contains(got, `"pod":"ns/web"`) {
		t.Fatalf("debug line in JSON: %q", got)
	}
	buf.Reset()
	if log, err = (Flags{Level: "warn"}).Logger(&buf); err != nil {
		t.Fatal(err)
	}
	log.Info("quiet")
	log.Warn("loud")
	if got := buf.String(); strings.Contains(got, "quiet") || !strings.Contains(got, "level=WARN msg=loud") {
		t.Fatalf("text logger at warn wrote %q", got)
	}
	if _, err := (Flags{Level: "verbose"}).Logger(&buf); err == nil || !strings.Contains(err.Error(), `-log-level "verbose": expected debug, info, warn or error`) {
		t.Fatalf("bad level: %v", err)
	}
}
