package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ca is a certificate authority the harness creates for one cluster: the
// cluster CA signs every component's client and serving certificates, the
// front-proxy CA the aggregator's client certificate.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

type certSpec struct {
	file   string // base name under pki/: <file>.crt and <file>.key
	cn     string
	orgs   []string
	server bool
	dns    []string
	ips    []net.IP
}

func newCA(dir, file, cn string) (*ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign %s: %w", cn, err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := writePair(dir, file, der, key); err != nil {
		return nil, err
	}
	return &ca{cert: cert, key: key}, nil
}

func (c *ca) issue(dir string, s certSpec) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key for %s: %w", s.cn, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return err
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if s.server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usage,
		DNSNames:     s.dns,
		IPAddresses:  s.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return fmt.Errorf("sign %s: %w", s.cn, err)
	}
	return writePair(dir, s.file, der, key)
}

func writePair(dir, file string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, file+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, file+".key"), "EC PRIVATE KEY", kder)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// writeServiceAccountKeys writes the RSA pair the API server signs and
// verifies service-account tokens with.
func writeServiceAccountKeys(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub)
}

func (c *Cluster) writePKI() error {
	dir := c.path("pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	clusterCA, err := newCA(dir, "ca", "meshlet-local-ca")
	if err != nil {
		return err
	}
	frontCA, err := newCA(dir, "front-proxy-ca", "meshlet-front-proxy-ca")
	if err != nil {
		return err
	}
	specs := []certSpec{
		{file: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []net.IP{net.ParseIP(NodeIP), net.ParseIP(APIServerIP), net.ParseIP("127.0.0.1")}},
		{file: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		{file: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}},
		{file: "kubelet", cn: "system:node:" + NodeName, orgs: []string{"system:nodes"}},
		{file: "kube-controller-manager", cn: "system:kube-controller-manager"},
		{file: "kube-scheduler", cn: "system:kube-scheduler"},
		{file: "kube-proxy", cn: "system:kube-proxy"},
	}
	for _, s := range specs {
		if err := clusterCA.issue(dir, s); err != nil {
			return err
		}
	}
	if err := frontCA.issue(dir, certSpec{file: "front-proxy-client", cn: "front-proxy-client"}); err != nil {
		return err
	}
	if err := writeServiceAccountKeys(dir); err != nil {
		return err
	}
	for _, user := range []string{"admin", "kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
		if err := c.writeKubeconfig(user); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes the kubeconfig of a component that authenticates
// with its client certificate from pki/.
func (c *Cluster) writeKubeconfig(user string) error {
	pki := c.path("pki")
	auth := &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(pki, user+".crt"),
		ClientKey:         filepath.Join(pki, user+".key"),
	}
	return writeKubeconfigFile(c.path(user+".kubeconfig"), "meshlet-local", user, filepath.Join(pki, "ca.crt"), auth)
}

// writeKubeconfigFile writes a kubeconfig whose one context (named like
// its cluster) reaches the API server as user. clientcmd quotes what YAML
// needs quoted, so any state directory path survives.
func writeKubeconfigFile(path, cluster, user, caFile string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[cluster] = &clientcmdapi.Cluster{
		Server:               "https://" + net.JoinHostPort(NodeIP, "6443"),
		CertificateAuthority: caFile,
	}
	cfg.AuthInfos[user] = auth
	cfg.Contexts[cluster] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user}
	cfg.CurrentContext = cluster
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
