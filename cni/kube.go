package cni

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// The plugin is a fresh process per pod, so its start-up is part of every
// ADD. client-go's kubeconfig loader and clients start slower than the
// whole of meshlet-cni with this reader: BenchmarkStartup
// (cmd/meshlet-cni/startup_test.go) measures both in the same run, and
// docs/benchmarks.md has its numbers.
// This reader handles what the node agent writes: one cluster with a CA,
// and a user with a token, token file or client cert.

type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string          `json:"token"`
			TokenFile             string          `json:"tokenFile"`
			ClientCertificate     string          `json:"client-certificate"`
			ClientCertificateData string          `json:"client-certificate-data"`
			ClientKey             string          `json:"client-key"`
			ClientKeyData         string          `json:"client-key-data"`
			Exec                  json.RawMessage `json:"exec"`
			AuthProvider          json.RawMessage `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// apiClient reads pods from the API server.
type apiClient struct {
	server string
	token  string
	http   *http.Client
}

// ValidateKubeconfig loads the kubeconfig at path as meshlet-cni does and
// returns the API server it names. Whoever writes the plugin's kubeconfig
// (the node agent, the local cluster harness) checks it with the plugin's
// own reader, and also that it carries credentials: a kubeconfig without
// them loads, but every pod lookup would then be refused.
func ValidateKubeconfig(path string) (server string, err error) {
	cl, err := loadKubeconfig(path)
	if err != nil {
		return "", err
	}
	if t, ok := cl.http.Transport.(*http.Transport); cl.token == "" && (!ok || len(t.TLSClientConfig.Certificates) == 0) {
		return "", fmt.Errorf("kubeconfig %s: its user has no token, tokenFile or client certificate", path)
	}
	return cl.server, nil
}

func loadKubeconfig(path string) (*apiClient, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	ctxName := kc.CurrentContext
	if ctxName == "" && len(kc.Contexts) == 1 {
		ctxName = kc.Contexts[0].Name
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
		}
	}
	if !found {
		return nil, fmt.Errorf("kubeconfig %s: context %q not found", path, ctxName)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	cl := &apiClient{}
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		cl.server = strings.TrimSuffix(c.Cluster.Server, "/")
		tlsCfg.InsecureSkipVerify = c.Cluster.InsecureSkipTLSVerify
		ca, err := fileOrData(rel(c.Cluster.CertificateAuthority), c.Cluster.CertificateAuthorityData)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: certificate authority: %w", path, err)
		}
		if ca != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, fmt.Errorf("kubeconfig %s: certificate authority holds no PEM certificate", path)
			}
			tlsCfg.RootCAs = pool
		}
	}
	if cl.server == "" {
		return nil, fmt.Errorf("kubeconfig %s: cluster %q not found or has no server", path, clusterName)
	}
	// Without its user the client would send no credentials: every pod
	// GET would go out as system:anonymous and be refused, with nothing
	// pointing at the kubeconfig.
	if userName == "" {
		return nil, fmt.Errorf("kubeconfig %s: context %q names no user: meshlet-cni needs the user with the node agent's credentials", path, ctxName)
	}
	foundUser := false
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		foundUser = true
		if len(u.User.Exec) > 0 || len(u.User.AuthProvider) > 0 {
			return nil, fmt.Errorf("kubeconfig %s: user %q uses an exec or auth-provider plugin; meshlet-cni supports a token, tokenFile or client certificate", path, userName)
		}
		cl.token = u.User.Token
		if u.User.TokenFile != "" {
			t, err := os.ReadFile(rel(u.User.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("kubeconfig %s: token file: %w", path, err)
			}
			cl.token = strings.TrimSpace(string(t))
		}
		cert, err := fileOrData(rel(u.User.ClientCertificate), u.User.ClientCertificateData)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: client certificate: %w", path, err)
		}
		key, err := fileOrData(rel(u.User.ClientKey), u.User.ClientKeyData)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: client key: %w", path, err)
		}
		if cert != nil || key != nil {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return nil, fmt.Errorf("kubeconfig %s: client certificate: %w", path, err)
			}
			tlsCfg.Certificates = []tls.Certificate{pair}
		}
	}
	if !foundUser {
		return nil, fmt.Errorf("kubeconfig %s: user %q of context %q not found in users", path, userName, ctxName)
	}
	cl.http = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	return cl, nil
}

func fileOrData(file, data string) ([]byte, error) {
	if data != "" {
		return base64.StdEncoding.DecodeString(data)
	}
	if file != "" {
		return os.ReadFile(file)
	}
	return nil, nil
}

// errNotFound: the pod does not exist (not retried).
var errNotFound = errors.New("pod not found")

// podAnnotations GETs only the pod's metadata (PartialObjectMetadata), with
// retries on transient failures until ctx ends.
func (c *apiClient) podAnnotations(ctx context.Context, namespace, name string) (map[string]string, error) {
	u := fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s", c.server, url.PathEscape(namespace), url.PathEscape(name))
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ann, retry, err := c.getOnce(ctx, u)
		if err == nil || !retry {
			return ann, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("get pod %s/%s: gave up after %d attempts: %w", namespace, name, attempt, err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (c *apiClient) getOnce(ctx context.Context, u string) (map[string]string, bool, error) {
	reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Accept", "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json")
	req.Header.Set("User-Agent", "meshlet-cni")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// A certificate the CA does not vouch for stays that way.
		var verr *tls.CertificateVerificationError
		return nil, !errors.As(err, &verr), err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, true, err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusNotFound:
		return nil, false, errNotFound
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, true, fmt.Errorf("API server: %s", resp.Status)
	default:
		return nil, false, fmt.Errorf("API server: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var obj struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, false, fmt.Errorf("decode pod: %w", err)
	}
	return obj.Metadata.Annotations, false, nil
}
