package consultest

import (
	"net"
	"testing"
)

// FreePort is a TCP port free on 127.0.0.1 now, for the Consul agents a
// test starts (each of its ports given explicitly).
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
