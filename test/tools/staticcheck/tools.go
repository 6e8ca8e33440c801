//go:build tools

// Package tools pins staticcheck, run by make test.
package tools

import _ "honnef.co/go/tools/cmd/staticcheck"
