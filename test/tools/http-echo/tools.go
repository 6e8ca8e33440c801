//go:build tools

// Package tools pins http-echo, the entrypoint of the static-server test image.
package tools

import _ "github.com/hashicorp/http-echo"
