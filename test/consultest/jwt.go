// Package consultest is what tests of more than one package need to log in
// to a real Consul with ACLs without an API server: a jwt auth method whose
// tokens the test signs, standing in for the Kubernetes auth method (which
// asks the API server's TokenReview). The login, the token it gives, its
// identity, its description and its logout are Consul's, as with the
// Kubernetes auth method.
package consultest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
)

// JWTIssuer stands in for the API server's ServiceAccount token signer.
type JWTIssuer struct{ key *ecdsa.PrivateKey }

// JWTAuthMethod creates, with the management client cl, a jwt auth method
// called name trusting a new key, and a binding rule as consul-k8s'
// kubernetes one: the service identity named like the token's
// ServiceAccount, none for "default".
func JWTAuthMethod(t testing.TB, cl *capi.Client, name string) JWTIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if _, _, err := cl.ACL().AuthMethodCreate(&capi.ACLAuthMethod{Name: name, Type: "jwt",
		Config: map[string]any{"JWTValidationPubKeys": []string{pub}, "JWTSupportedAlgs": []string{"ES256"},
			"BoundAudiences": []string{"consul"}, "ClaimMappings": map[string]string{"sa": "serviceaccount"}}}, nil); err != nil {
		t.Fatalf("create jwt auth method %s: %v", name, err)
	}
	if _, _, err := cl.ACL().BindingRuleCreate(&capi.ACLBindingRule{AuthMethod: name,
		BindType: capi.BindingRuleBindTypeService, BindName: "${value.serviceaccount}",
		Selector: "value.serviceaccount != default"}, nil); err != nil {
		t.Fatalf("create the binding rule of %s: %v", name, err)
	}
	return JWTIssuer{key}
}

// JWT is a signed token of ServiceAccount sa, valid for an hour.
func (j JWTIssuer) JWT(t testing.TB, sa string) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now()
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." +
		enc(map[string]any{"aud": "consul", "sub": "system:serviceaccount:default:" + sa, "sa": sa,
			"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix()})
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, j.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// NewUUID is a random (version 4) UUID, the form of Consul's token secrets.
func NewUUID(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
