package cluster

import (
	"strings"
	"testing"

	"github.com/meshlet/meshlet/test/golden"
)

func TestCorefile(t *testing.T) {
	got, err := Corefile()
	if err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "Corefile.golden", []byte(got))
}

// Nothing in the Corefile may send a query on: a name outside the
// cluster's zones must be refused by CoreDNS itself, not looked up
// elsewhere (the golden file pins the text; this says what must not
// change in it). These are CoreDNS's plugins that answer from somewhere
// other than the API server: another server, a file, a cloud's API.
func TestCorefileForwardsNothing(t *testing.T) {
	got, err := Corefile()
	if err != nil {
		t.Fatal(err)
	}
	senders := map[string]bool{"forward": true, "grpc": true, "proxy": true, "etcd": true,
		"hosts": true, "file": true, "auto": true, "secondary": true, "route53": true,
		"azure": true, "clouddns": true, "alternate": true}
	for i, line := range strings.Split(got, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && senders[f[0]] {
			t.Errorf("Corefile line %d uses %q: %s", i+1, f[0], line)
		}
	}
	if !strings.Contains(got, "bind {$POD_IP}\n") {
		t.Errorf("Corefile does not bind the pod's address:\n%s", got)
	}
}

func TestReverseZone(t *testing.T) {
	for _, tc := range []struct{ cidr, want string }{
		{"10.96.0.0/16", "96.10.in-addr.arpa"},
		{"10.244.0.0/24", "0.244.10.in-addr.arpa"},
		{"10.0.0.0/8", "10.in-addr.arpa"},
		{"192.168.1.7/32", "7.1.168.192.in-addr.arpa"},
	} {
		got, err := reverseZone(tc.cidr)
		if err != nil || got != tc.want {
			t.Errorf("reverseZone(%s) = %q, %v; want %q", tc.cidr, got, err, tc.want)
		}
	}
	// Ranges one zone cannot cover, and a host address given as a range.
	for _, cidr := range []string{"10.96.0.0/12", "0.0.0.0/0", "fd00::/64", "10.96.0.1/16", "10.96.0.0"} {
		if got, err := reverseZone(cidr); err == nil {
			t.Errorf("reverseZone(%s) = %q, want an error", cidr, got)
		}
	}
}
