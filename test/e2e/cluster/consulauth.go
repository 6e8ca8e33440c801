package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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

// SecureMesh sets up, on a Consul with ACLs, what meshlet's chart needs
// (docs/operations.md): the Kubernetes auth method the sidecars log in to
// with its binding rule, the node agent's and the token reaper's tokens,
// and the Secrets the chart reads. The local cluster (SECURE=1) and the
// kind cluster (make kind-up SECURE=1) both run it.
type SecureMesh struct {
	Root      string // repository root: the policy files
	Clientset kubernetes.Interface
	// Consul is an API client with the management token; ConsulCLI runs
	// the consul CLI as the same operator (the policy files' commands).
	Consul    *capi.Client
	ConsulCLI func(ctx context.Context, args ...string) (string, error)
	// APIServer is the Kubernetes API as the Consul servers reach it:
	// the auth method's Host. Its CA is the one the token controller puts
	// in every ServiceAccount token Secret.
	APIServer string
	// ConsulCA verifies the Consul agents' certificates: put in
	// ConsulCASecret for the chart's consul.tls.caCert.
	ConsulCA []byte
}

// Setup runs the whole setup: auth method, tokens, Secrets.
func (m SecureMesh) Setup(ctx context.Context) error {
	if err := m.setupAuthMethod(ctx); err != nil {
		return fmt.Errorf("the Consul Kubernetes auth method: %w", err)
	}
	return m.setupMeshletConsulSecrets(ctx)
}

// setupAuthMethod creates the auth method's reviewer (a ServiceAccount
// bound to system:auth-delegator, for TokenReview, and allowed to read
// ServiceAccounts, as the chart's auth-method ClusterRole), its token, the
// auth method against the API server and consul-k8s' binding rule: a
// login gets the service identity named like its ServiceAccount, and
// "default" gets none.
func (m SecureMesh) setupAuthMethod(ctx context.Context) error {
	jwt, ca, err := m.createReviewer(ctx)
	if err != nil {
		return err
	}
	w := (&capi.WriteOptions{}).WithContext(ctx)
	if _, _, err := m.Consul.ACL().AuthMethodCreate(&capi.ACLAuthMethod{
		Name: AuthMethod, Type: "kubernetes", Description: "Kubernetes auth method of the cluster's pods",
		Config: map[string]any{"Host": m.APIServer, "CACert": string(ca), "ServiceAccountJWT": jwt},
	}, w); err != nil {
		return fmt.Errorf("create auth method %s: %w", AuthMethod, err)
	}
	if _, _, err := m.Consul.ACL().BindingRuleCreate(&capi.ACLBindingRule{
		AuthMethod: AuthMethod, Description: "a login's service is its ServiceAccount's name",
		BindType: capi.BindingRuleBindTypeService, BindName: "${serviceaccount.name}",
		Selector: "serviceaccount.name!=default",
	}, w); err != nil {
		return fmt.Errorf("create the binding rule of %s: %w", AuthMethod, err)
	}
	return nil
}

// createReviewer makes the reviewer ServiceAccount, its RBAC and a
// long-lived token Secret, and returns the token and the cluster's CA that
// the token controller fills the Secret with.
func (m SecureMesh) createReviewer(ctx context.Context) (jwt string, ca []byte, err error) {
	cs := m.Clientset
	meta := metav1.ObjectMeta{Name: authReviewer, Namespace: ConsulNamespace}
	subject := []rbacv1.Subject{{Kind: "ServiceAccount", Name: authReviewer, Namespace: ConsulNamespace}}
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", what, err)
		}
		return nil
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ConsulNamespace}}, metav1.CreateOptions{})
	if err := create("namespace "+ConsulNamespace, err); err != nil {
		return "", nil, err
	}
	_, err = cs.CoreV1().ServiceAccounts(ConsulNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: meta}, metav1.CreateOptions{})
	if err := create("ServiceAccount "+authReviewer, err); err != nil {
		return "", nil, err
	}
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: authReviewer},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"get"}}}},
		metav1.CreateOptions{})
	if err := create("ClusterRole "+authReviewer, err); err != nil {
		return "", nil, err
	}
	for _, b := range []struct{ name, role string }{{authReviewer, authReviewer}, {"consul-authdelegator", "system:auth-delegator"}} {
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: b.name},
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: b.role}, Subjects: subject},
			metav1.CreateOptions{})
		if err := create("ClusterRoleBinding "+b.name, err); err != nil {
			return "", nil, err
		}
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: authReviewer, Namespace: ConsulNamespace,
		Annotations: map[string]string{corev1.ServiceAccountNameKey: authReviewer}}, Type: corev1.SecretTypeServiceAccountToken}
	_, err = cs.CoreV1().Secrets(ConsulNamespace).Create(ctx, secret, metav1.CreateOptions{})
	if err := create("Secret "+authReviewer, err); err != nil {
		return "", nil, err
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, bootTimeout, true, func(ctx context.Context) (bool, error) {
		s, err := cs.CoreV1().Secrets(ConsulNamespace).Get(ctx, authReviewer, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		jwt, ca = string(s.Data[corev1.ServiceAccountTokenKey]), s.Data[corev1.ServiceAccountRootCAKey]
		// The token controller fills both at once.
		return jwt != "" && len(ca) > 0, nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("the token of Secret %s/%s: %w", ConsulNamespace, authReviewer, err)
	}
	return jwt, ca, nil
}

// setupMeshletConsulSecrets makes the node agent's and the token reaper's
// tokens with the commands their policy files document, and puts them and
// the Consul CA in Secrets of meshlet's namespace, where the chart's
// consul.acl.tokenSecret, consul.acl.reaper.tokenSecret and
// consul.tls.caCert point.
func (m SecureMesh) setupMeshletConsulSecrets(ctx context.Context) error {
	nodeAgent, err := m.policyToken(ctx, NodeAgentPolicy, "meshlet node agent: registers its node's injected pods",
		NodeAgentPolicyFile)
	if err != nil {
		return err
	}
	reaper, err := m.policyToken(ctx, ReaperPolicy, "meshlet token reaper: deletes login tokens of pods that are gone",
		ReaperPolicyFile)
	if err != nil {
		return err
	}
	cs := m.Clientset
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MeshletNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", MeshletNamespace, err)
	}
	for _, s := range []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: ConsulCASecret}, Data: map[string][]byte{ConsulCASecretKey: m.ConsulCA}},
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
func (m SecureMesh) policyToken(ctx context.Context, name, description, rulesFile string) (string, error) {
	if _, err := m.ConsulCLI(ctx, "acl", "policy", "create", "-name", name, "-description", description,
		"-rules", "@"+filepath.Join(m.Root, rulesFile)); err != nil {
		return "", err
	}
	out, err := m.ConsulCLI(ctx, "acl", "token", "create", "-description", strings.SplitN(description, ":", 2)[0],
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
