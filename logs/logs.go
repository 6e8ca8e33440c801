// Package logs is how meshlet's long-running processes (`meshlet webhook`,
// `meshlet agent`) log: log/slog, JSON by default, the level and format
// from the same two flags in each.
package logs

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// Flags are the -log-level and -log-json flags.
type Flags struct {
	Level string
	JSON  bool
}

// Register adds the flags to fs, with info and JSON as defaults.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Level, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.JSON, "log-json", true, "JSON logs (false: text)")
}

// Logger is the logger the flags ask for, writing to w.
func (f Flags) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.Level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: expected debug, info, warn or error", f.Level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	if f.JSON {
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return slog.New(slog.NewTextHandler(w, hopts)), nil
}
