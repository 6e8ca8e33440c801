package testpki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
)

// TestLeafVerifiesAgainstItsCAOnly: a leaf verifies for its names and IPs
// with its CA, and not with another.
func TestLeafVerifiesAgainstItsCAOnly(t *testing.T) {
	ca, other := NewCA(t, "a"), NewCA(t, "b")
	certPEM, keyPEM := ca.Leaf(t, "svc", []string{"svc.example"}, []net.IP{net.ParseIP("127.0.0.1")})
	blk, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := pem.Decode(keyPEM); k == nil || k.Type != "EC PRIVATE KEY" {
		t.Fatalf("key PEM %q", keyPEM)
	}
	pool := func(c *CA) *x509.CertPool { p := x509.NewCertPool(); p.AddCert(c.Cert); return p }
	for _, name := range []string{"svc.example", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: name}); err != nil {
			t.Errorf("%s with its CA: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(other), DNSName: "svc.example"}); err == nil {
		t.Error("verifies with another CA")
	}
}
