package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// curl's exit codes for the failures this client can meet.
const (
	exitOK          = 0
	exitProtocol    = 1
	exitUsage       = 2
	exitBadURL      = 3
	exitResolve     = 6
	exitConnect     = 7
	exitHTTPError   = 22
	exitWrite       = 23
	exitTimeout     = 28
	exitEmptyReply  = 52
	exitRecvFailure = 56
	exitPartial     = 18
)

type options struct {
	silent, showError, fail, include bool
	output, method, data, writeOut   string
	headers                          []string
	maxTime, connectTimeout          time.Duration
	url                              string
}

type curlError struct {
	code int
	msg  string
}

func (e *curlError) Error() string { return e.msg }

func fail(code int, format string, a ...any) *curlError {
	return &curlError{code: code, msg: fmt.Sprintf(format, a...)}
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args)
	if err == nil {
		err = o.fetch(stdout)
	}
	var ce *curlError
	if errors.As(err, &ce) {
		if !o.silent || o.showError {
			fmt.Fprintf(stderr, "curl: (%d) %s\n", ce.code, ce.msg)
		}
		return ce.code
	}
	return exitOK
}

func parseArgs(args []string) (*options, error) {
	o := &options{method: ""}
	var expanded []string
	for _, a := range args {
		// Bundled short flags (-sS, -sf) as curl accepts them.
		if len(a) > 2 && a[0] == '-' && a[1] != '-' && strings.Trim(a[1:], "sSfi") == "" {
			for _, ch := range a[1:] {
				expanded = append(expanded, "-"+string(ch))
			}
			continue
		}
		expanded = append(expanded, a)
	}
	args = expanded
	value := func(i *int, flag string) (string, error) {
		if *i+1 >= len(args) {
			return "", fail(exitUsage, "option %s: requires parameter", flag)
		}
		*i++
		return args[*i], nil
	}
	seconds := func(flag, v string) (time.Duration, error) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 {
			return 0, fail(exitUsage, "option %s: expected a number of seconds, got %q", flag, v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		var err error
		var v string
		switch a {
		case "-s", "--silent":
			o.silent = true
		case "-S", "--show-error":
			o.showError = true
		case "-f", "--fail":
			o.fail = true
		case "-i", "--include":
			o.include = true
		case "-o", "--output":
			o.output, err = value(&i, a)
		case "-X", "--request":
			o.method, err = value(&i, a)
		case "-d", "--data":
			o.data, err = value(&i, a)
		case "-w", "--write-out":
			o.writeOut, err = value(&i, a)
		case "-H", "--header":
			v, err = value(&i, a)
			o.headers = append(o.headers, v)
		case "-m", "--max-time":
			if v, err = value(&i, a); err == nil {
				o.maxTime, err = seconds(a, v)
			}
		case "--connect-timeout":
			if v, err = value(&i, a); err == nil {
				o.connectTimeout, err = seconds(a, v)
			}
		default:
			if strings.HasPrefix(a, "-") && a != "-" {
				return o, fail(exitUsage, "option %s: is unknown", a)
			}
			if o.url != "" {
				return o, fail(exitUsage, "only one URL is supported, got %q and %q", o.url, a)
			}
			o.url = a
		}
		if err != nil {
			return o, err
		}
	}
	if o.url == "" {
		return o, fail(exitUsage, "no URL specified")
	}
	if o.method == "" {
		o.method = http.MethodGet
		if o.data != "" {
			o.method = http.MethodPost
		}
	}
	return o, nil
}

func (o *options) fetch(stdout io.Writer) error {
	raw := o.url
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fail(exitBadURL, "URL rejected: Malformed input to a URL function")
	}
	if u.Scheme != "http" {
		return fail(exitProtocol, "Protocol %q not supported", u.Scheme)
	}
	ctx := context.Background()
	if o.maxTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.maxTime)
		defer cancel()
	}
	t0 := time.Now()
	conn, err := o.dial(ctx, u, t0)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req, err := http.NewRequest(o.method, u.String(), strings.NewReader(o.data))
	if err != nil {
		return fail(exitBadURL, "%v", err)
	}
	req.Header.Set("User-Agent", "curl/8 (meshlet test client)")
	req.Header.Set("Accept", "*/*")
	for _, h := range o.headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			return fail(exitUsage, "header %q: expected Name: value", h)
		}
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return recvError(err, "Send failure", t0)
	}
	br := bufio.NewReader(conn)
	if _, err := br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			return fail(exitEmptyReply, "Empty reply from server")
		}
		return recvError(err, "Recv failure", t0)
	}
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return recvError(err, "Recv failure", t0)
	}
	defer resp.Body.Close()
	if o.fail && resp.StatusCode >= 400 {
		return fail(exitHTTPError, "The requested URL returned error: %d", resp.StatusCode)
	}
	out := stdout
	if o.output != "" && o.output != "-" {
		f, err := os.Create(o.output)
		if err != nil {
			return fail(exitWrite, "Failed writing body: %v", err)
		}
		defer f.Close()
		out = f
	}
	if o.include {
		fmt.Fprintf(out, "%s %s\r\n", resp.Proto, resp.Status)
		_ = resp.Header.Write(out)
		fmt.Fprint(out, "\r\n")
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fail(exitPartial, "transfer closed with outstanding read data remaining")
		}
		return recvError(err, "Recv failure", t0)
	}
	if o.writeOut != "" {
		fmt.Fprint(stdout, strings.ReplaceAll(o.writeOut, "%{http_code}", strconv.Itoa(resp.StatusCode)))
	}
	return nil
}

func (o *options) dial(ctx context.Context, u *url.URL, t0 time.Time) (net.Conn, error) {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		if ctx.Err() != nil {
			return nil, timeoutError(t0)
		}
		return nil, fail(exitResolve, "Could not resolve host: %s", host)
	}
	d := net.Dialer{Timeout: o.connectTimeout}
	if d.Timeout == 0 {
		d.Timeout = 300 * time.Second // curl's default connect timeout
	}
	var last error
	for _, a := range addrs {
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a, port))
		if err == nil {
			return conn, nil
		}
		last = err
		if isTimeout(err) || ctx.Err() != nil {
			return nil, timeoutError(t0)
		}
	}
	return nil, fail(exitConnect, "Failed to connect to %s port %s after %d ms: %s",
		host, port, time.Since(t0).Milliseconds(), connectReason(last))
}

func connectReason(err error) string {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "Connection refused"
	}
	return "Couldn't connect to server"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

func timeoutError(t0 time.Time) error {
	return fail(exitTimeout, "Operation timed out after %d milliseconds", time.Since(t0).Milliseconds())
}

func recvError(err error, what string, t0 time.Time) error {
	if isTimeout(err) {
		return timeoutError(t0)
	}
	if errors.Is(err, syscall.ECONNRESET) {
		return fail(exitRecvFailure, "%s: Connection reset by peer", what)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fail(exitRecvFailure, "%s: connection closed", what)
	}
	return fail(exitRecvFailure, "%s: %v", what, err)
}
