package agent

import (
	"context"
	"fmt"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshlet/meshlet/kubeclient"
)

// cniCreds mints the plugin's credentials. meshlet-cni runs on the host
// for every sandbox and needs only to get pods; the node agent's own token can
// do much more (list pods and Services, delete pods, write Events), so it
// is never handed to the plugin. Instead the node agent asks the API server
// (TokenRequest) for a short-lived token of a ServiceAccount bound to
// "get pods" only, and writes it into the plugin's kubeconfig, renewing it
// well before it expires.
type cniCreds struct {
	client         kubeclient.Interface
	namespace      string // the ServiceAccount's
	serviceAccount string
	server         string // API server URL reachable from the host netns
	caData         []byte
	ttl            time.Duration
}

// kubeconfig returns the plugin's kubeconfig and when its token should be
// renewed (at 80% of its life, as kubelet renews projected tokens).
func (c cniCreds) kubeconfig(ctx context.Context) ([]byte, time.Time, error) {
	secs := int64(c.ttl / time.Second)
	tr, err := c.client.CreateToken(ctx, c.namespace, c.serviceAccount,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &secs}}, metav1.CreateOptions{})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("request a token for ServiceAccount %s/%s (meshlet-cni's credentials): %w", c.namespace, c.serviceAccount, err)
	}
	issued := time.Now()
	life := tr.Status.ExpirationTimestamp.Sub(issued)
	if life <= 0 {
		life = c.ttl
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: c.server, CertificateAuthorityData: c.caData}
	kc.AuthInfos[c.serviceAccount] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["meshlet-cni"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: c.serviceAccount}
	kc.CurrentContext = "meshlet-cni"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("write meshlet-cni's kubeconfig: %w", err)
	}
	return b, issued.Add(life * 8 / 10), nil
}
