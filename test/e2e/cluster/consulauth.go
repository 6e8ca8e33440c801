package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// What a secure cluster sets up for meshlet, named as the official Consul
// chart (release "consul", namespace "consul") names its own, so that
// meshlet's values here are the ones a user writes against that chart.
const (
	// AuthMethod is the Kubernetes auth method the sidecars log in to
	// (the chart's <release>-k8s-auth-method).
	AuthMethod = "consul-k8s-auth-method"
	// ConsulNamespace holds the auth method's reviewer ServiceAccount.
	ConsulNamespace = "consul"
	authReviewer    = "consul-auth-method"
	// ConsulCASecret holds, under ConsulCASecretKey, the CA that signs the
	// servers' certificates, as the official chart's consul-ca-cert
	// (tls.crt) does: not the Connect CA's roots, which sign the
	// auto-encrypt client agents' and which meshlet fetches from the
	// servers (consul.servers.address).
	ConsulCASecret    = "consul-ca-cert"
	ConsulCASecretKey = "tls.crt"
	// NodeAgentTokenSecret holds meshlet's node agent's ACL token under
	// "token", made from deploy/consul/node-agent-policy.hcl.
	NodeAgentTokenSecret = "meshlet-node-agent-acl-token"
	NodeAgentPolicy      = "meshlet-node-agent"
	// NodeAgentPolicyFile is the policy's rules in the repository.
	NodeAgentPolicyFile = "deploy/consul/node-agent-policy.hcl"
	// ReaperTokenSecret holds the token reaper's ACL token under "token",
	// made from ReaperPolicyFile (acl = "write").
	ReaperTokenSecret = "meshlet-token-reaper-acl-token"
	ReaperPolicy      = "meshlet-token-reaper"
	ReaperPolicyFile  = "deploy/consul/token-reaper-policy.hcl"
)

// setupAuthMethod creates the auth method's reviewer (a ServiceAccount
// bound to system:auth-delegator, for TokenReview, and allowed to read
// ServiceAccounts, as the chart's auth-method ClusterRole), its token, the
// auth method against the local API server and consul-k8s' binding rule:
// a login gets the service identity named like its ServiceAccount, and
// "default" gets none.
func (c *Cluster) setupAuthMethod(ctx context.Context, cl *capi.Client) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	jwt, err := c.createReviewer(ctx, cs)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(c.path("pki", "ca.crt"))
	if err != nil {
		return fmt.Errorf("the cluster's CA: %w", err)
	}
	w := (&capi.WriteOptions{}).WithContext(ctx)
	if _, _, err := cl.ACL().AuthMethodCreate(&capi.ACLAuthMethod{
		Name: AuthMethod, Type: "kubernetes", Description: "Kubernetes auth method of the local cluster",
		Config: map[string]any{"Host": "https://" + NodeIP + ":6443", "CACert": string(ca), "ServiceAccountJWT": jwt},
	}, w); err != nil {
		return fmt.Errorf("create auth method %s: %w", AuthMethod, err)
	}
	if _, _, err := cl.ACL().BindingRuleCreate(&capi.ACLBindingRule{
		AuthMethod: AuthMethod, Description: "a login's service is its ServiceAccount's name",
		BindType: capi.BindingRuleBindTypeService, BindName: "${serviceaccount.name}",
		Selector: "serviceaccount.name!=default",
	}, w); err != nil {
		return fmt.Errorf("create the binding rule of %s: %w", AuthMethod, err)
	}
	return nil
}

// createReviewer makes the reviewer ServiceAccount, its RBAC and a
// long-lived token Secret (the token controller fills it), and returns the
// token.
func (c *Cluster) createReviewer(ctx context.Context, cs kubernetes.Interface) (string, error) {
	meta := metav1.ObjectMeta{Name: authReviewer, Namespace: ConsulNamespace}
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: authReviewer, Namespace: ConsulNamespace}}
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", what, err)
		}
		return nil
	}
	var err error
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ConsulNamespace}}, metav1.CreateOptions{})
	if err := create("namespace "+ConsulNamespace, err); err != nil {
		return "", err
	}
	_, err = cs.CoreV1().ServiceAccounts(ConsulNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
	if err := create("ServiceAccount "+authReviewer, err); err != nil {
		return "", err
	}
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: authReviewer},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"get"}}}},
		metav1.CreateOptions{})
	if err := create("ClusterRole "+authReviewer, err); err != nil {
		return "", err
	}
	for _, b := range []struct{ name, role string }{{authReviewer, authReviewer}, {"consul-authdelegator", "system:auth-delegator"}} {
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: b.name},
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: b.role}, Subjects: subject},
			metav1.CreateOptions{})
		if err := create("ClusterRoleBinding "+b.name, err); err != nil {
			return "", err
		}
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: authReviewer, Namespace: ConsulNamespace,
		Annotations: map[string]string{corev1.ServiceAccountNameKey: authReviewer}}, Type: corev1.SecretTypeServiceAccountToken}
	_, err = cs.CoreV1().Secrets(ConsulNamespace).Create(ctx, secret, metav1.CreateOptions{})
	if err := create("Secret "+authReviewer, err); err != nil {
		return "", err
	}
	var jwt string
	err = c.waitFor(ctx, "the auth method reviewer's token", func(ctx context.Context) error {
		s, err := cs.CoreV1().Secrets(ConsulNamespace).Get(ctx, authReviewer, metav1.GetOptions{})
		if err != nil {
			return err
		}
		jwt = string(s.Data[corev1.ServiceAccountTokenKey])
		if jwt == "" {
			return errors.New("the token controller has not filled it yet")
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("the token of Secret %s/%s: %w", ConsulNamespace, authReviewer, err)
	}
	return jwt, nil
}

// setupMeshletConsulSecrets makes the node agent's and the token reaper's
// tokens with the commands their policy files document, and puts them and
// the CA bundle in Secrets of meshlet's namespace, where the chart's
// consul.acl.tokenSecret, consul.acl.reaper.tokenSecret and
// consul.tls.caCert point.
func (c *Cluster) setupMeshletConsulSecrets(ctx context.Context) error {
	nodeAgent, err := c.policyToken(ctx, NodeAgentPolicy, "meshlet node agent: registers its node's injected pods",
		NodeAgentPolicyFile)
	if err != nil {
		return err
	}
	reaper, err := c.policyToken(ctx, ReaperPolicy, "meshlet token reaper: deletes login tokens of pods that are gone",
		ReaperPolicyFile)
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(c.secureFiles().caCert())
	if err != nil {
		return err
	}
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MeshletNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", MeshletNamespace, err)
	}
	for _, s := range []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: ConsulCASecret}, Data: map[string][]byte{ConsulCASecretKey: ca}},
		{ObjectMeta: metav1.ObjectMeta{Name: NodeAgentTokenSecret}, Data: map[string][]byte{"token": []byte(nodeAgent)}},
		{ObjectMeta: metav1.ObjectMeta{Name: ReaperTokenSecret}, Data: map[string][]byte{"token": []byte(reaper)}},
	} {
		if _, err := cs.CoreV1().Secrets(MeshletNamespace).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s/%s: %w", MeshletNamespace, s.Name, err)
		}
	}
	return nil
}

// policyToken creates policy name from the repository's rules file and a
// token with it, as the file's header tells an operator to, and returns
// the token's secret.
func (c *Cluster) policyToken(ctx context.Context, name, description, rulesFile string) (string, error) {
	if _, err := c.consulCLI(ctx, "acl", "policy", "create", "-name", name, "-description", description,
		"-rules", "@"+filepath.Join(c.Root, rulesFile)); err != nil {
		return "", err
	}
	out, err := c.consulCLI(ctx, "acl", "token", "create", "-description", strings.SplitN(description, ":", 2)[0],
		"-policy-name", name, "-format", "json")
	if err != nil {
		// The output holds the secret: say only that it failed.
		return "", fmt.Errorf("consul acl token create -policy-name %s failed", name)
	}
	var tok struct{ SecretID string }
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.SecretID == "" {
		return "", fmt.Errorf("consul acl token create -policy-name %s -format json: no SecretID in its output (%v)", name, err)
	}
	return strings.TrimSpace(tok.SecretID), nil
}
