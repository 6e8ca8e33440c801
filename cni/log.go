package cni

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// newLogger returns the call's structured logger, carrying attrs on every
// record, and the function that closes its file.
//
// A log_file that cannot be opened does not fail the call: a logging
// setting must not keep every pod on the node from starting. The logs go
// to stderr (which the runtime writes to its own log) instead, and the
// first record there is a warning naming log_file, the path and the error,
// written whatever log_level says, so that the lost file is noticed.
func newLogger(conf *NetConf, stderr io.Writer, attrs ...any) (*slog.Logger, func()) {
	level := slog.LevelInfo
	_ = level.UnmarshalText([]byte(conf.LogLevel)) // parseConf checked it
	opts := &slog.HandlerOptions{Level: level}
	if conf.LogFile == "" {
		return slog.New(slog.NewJSONHandler(stderr, opts)).With(attrs...), func() {}
	}
	f, err := openLogFile(conf.LogFile)
	if err != nil {
		slog.New(slog.NewJSONHandler(stderr, nil)).With(attrs...).Warn(
			"cannot open log_file, logging to stderr", "log_file", conf.LogFile, "err", err)
		return slog.New(slog.NewJSONHandler(stderr, opts)).With(attrs...), func() {}
	}
	return slog.New(slog.NewJSONHandler(f, opts)).With(attrs...), func() { _ = f.Close() }
}

// openLogFile opens path for appending, creating it and, when missing, its
// parent directory: on a fresh node /var/log/<something> may not exist yet.
func openLogFile(path string) (*os.File, error) {
	const flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	f, err := os.OpenFile(path, flags, 0o600)
	if !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	if merr := os.MkdirAll(filepath.Dir(path), 0o755); merr != nil {
		return nil, merr
	}
	return os.OpenFile(path, flags, 0o600)
}
