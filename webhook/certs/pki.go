package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"
)

// Keys of the shared Secret (the kubernetes.io/tls layout plus ca.crt).
const (
	keyCert = "tls.crt" // serving leaf, PEM
	keyKey  = "tls.key" // its ECDSA key, PEM (PKCS #8)
	keyCA   = "ca.crt"  // the caBundle to publish: current CA, then the previous one during a rotation
)

const (
	// caLifetimes: the CA outlives every leaf it signs, so a leaf never
	// outlives its issuer.
	caLifetimes = 4
	// backdate absorbs clock skew between replicas and the API server: a
	// certificate minted on a fast clock is already valid elsewhere.
	backdate = 5 * time.Minute
)

// material is the Secret's content, parsed.
type material struct {
	certPEM, keyPEM, caPEM []byte
	pair                   tls.Certificate // Leaf is set
	cas                    []*x509.Certificate
}

func (m *material) leaf() *x509.Certificate { return m.pair.Leaf }

// data is the Secret's data for m.
func (m *material) data() map[string][]byte {
	return map[string][]byte{keyCert: m.certPEM, keyKey: m.keyPEM, keyCA: m.caPEM}
}

// dnsNames are the serving certificate's SANs: every name the API server
// (or anything in the cluster) may use for the webhook's Service.
func dnsNames(svc, ns string) []string {
	return []string{svc, svc + "." + ns, svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local"}
}

// parseMaterial parses a Secret's data: a matching pair and a bundle.
func parseMaterial(data map[string][]byte) (*material, error) {
	m := &material{certPEM: data[keyCert], keyPEM: data[keyKey], caPEM: data[keyCA]}
	for _, k := range []string{keyCert, keyKey, keyCA} {
		if len(data[k]) == 0 {
			return nil, fmt.Errorf("key %s is missing or empty", k)
		}
	}
	pair, err := tls.X509KeyPair(m.certPEM, m.keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", keyCert, keyKey, err)
	}
	m.pair = pair
	if m.cas, err = parseCerts(m.caPEM); err != nil {
		return nil, fmt.Errorf("%s: %w", keyCA, err)
	}
	return m, nil
}

// parseCerts parses every CERTIFICATE block of a PEM bundle.
func parseCerts(bundle []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// renewAt is when a leaf is due for rotation: with a third of its
// lifetime left, so a failing rotation has days of retries before it
// expires.
func renewAt(leaf *x509.Certificate) time.Time {
	return leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)
}

// problem says why m must be replaced at now, or "" when it can serve.
func (m *material) problem(names []string, now time.Time) string {
	leaf := m.leaf()
	for _, n := range names {
		if !slices.Contains(leaf.DNSNames, n) {
			return fmt.Sprintf("serving certificate lacks SAN %s", n)
		}
	}
	if at := renewAt(leaf); !now.Before(at) {
		return fmt.Sprintf("serving certificate expires %s, due for renewal since %s",
			leaf.NotAfter.Format(time.RFC3339), at.Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	for _, ca := range m.cas {
		pool.AddCert(ca)
	}
	// Checks the chain, not the dates (expiry is handled above): a leaf a
	// replica with a slightly fast clock minted must not look "not yet
	// valid" here and make replicas rotate in turn.
	at := now
	if at.Before(leaf.NotBefore) {
		at = leaf.NotBefore
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName: names[0], Roots: pool, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Sprintf("serving certificate does not verify against %s: %v", keyCA, err)
	}
	return ""
}

// issuer is the CA of m's bundle that signed its leaf, nil if none does.
func (m *material) issuer() *x509.Certificate {
	for _, ca := range m.cas {
		if m.leaf().CheckSignatureFrom(ca) == nil {
			return ca
		}
	}
	return nil
}

// mint creates a fresh CA and a leaf for names signed by it. The bundle
// is the new CA followed by prev (the CA of the leaf still being served
// during the rotation). The CA key is dropped: the next rotation mints a
// new CA, so nothing ever signs with this one again.
func mint(names []string, now time.Time, validity time.Duration, prev *x509.Certificate) (*material, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: fmt.Sprintf("meshlet-webhook-ca@%d", now.Unix())},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetimes * validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("sign CA: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse new CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	leafDER, err := sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: names[len(names)-2]}, // <svc>.<ns>.svc
		DNSNames:    names,
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal serving key: %w", err)
	}
	caPEM := pemCert(caDER)
	if prev != nil {
		caPEM = append(caPEM, pemCert(prev.Raw)...)
	}
	return parseMaterial(map[string][]byte{
		keyCert: pemCert(leafDER),
		keyKey:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		keyCA:   caPEM,
	})
}

// sign fills in a random serial number and signs tmpl.
func sign(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, priv *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
