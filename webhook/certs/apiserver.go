package certs

// What SelfManaged reads and writes on the API server: the shared Secret
// and the MutatingWebhookConfiguration's caBundle.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// secret returns the Secret's material and resourceVersion, creating or
// rotating it first if needed. When another replica wins a create or
// update race, it re-reads and returns the winner's.
func (s *SelfManaged) secret(ctx context.Context, owner *metav1.OwnerReference) (*material, string, error) {
	secrets := s.client.Secrets(s.cfg.ServiceNamespace)
	for range maxAttempts {
		now := s.cfg.Now()
		sec, err := secrets.Get(ctx, s.cfg.SecretName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if owner == nil {
				// Made only with its owner: a replica still running after
				// helm uninstall deleted the configuration (and the garbage
				// collector the Secret) must not leave a new one behind.
				return nil, "", fmt.Errorf("MutatingWebhookConfiguration %s not found: the Secret %s/%s is made once it exists, owned by it",
					s.cfg.WebhookConfigName, s.cfg.ServiceNamespace, s.cfg.SecretName)
			}
			mat, err := mint(s.names, now, s.cfg.Validity, nil)
			if err != nil {
				return nil, "", err
			}
			created, err := secrets.Create(ctx, s.newSecret(mat, owner), metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				s.log.Info("another replica created the Secret first; using it")
				continue
			}
			if err != nil {
				return nil, "", fmt.Errorf("create Secret %s/%s: %w", s.cfg.ServiceNamespace, s.cfg.SecretName, err)
			}
			s.log.Info("created the serving certificate Secret", "serial", serial(mat))
			return mat, created.ResourceVersion, nil
		}
		if err != nil {
			return nil, "", fmt.Errorf("get Secret %s/%s: %w", s.cfg.ServiceNamespace, s.cfg.SecretName, err)
		}
		if sec.Type != corev1.SecretTypeTLS && sec.Type != corev1.SecretTypeOpaque {
			return nil, "", fmt.Errorf("the Secret %s/%s has type %s, want %s or %s",
				sec.Namespace, sec.Name, sec.Type, corev1.SecretTypeTLS, corev1.SecretTypeOpaque)
		}
		old, err := parseMaterial(sec.Data)
		var why string
		if err != nil {
			why = "Secret does not hold a valid pair and bundle: " + err.Error()
		} else if why = old.problem(s.names, now); why == "" {
			if owner == nil || owned(sec, owner) {
				return old, sec.ResourceVersion, nil
			}
			// A Secret made before the configuration existed, or by an
			// older meshlet: adopted, so that uninstalling removes it.
			upd := sec.DeepCopy()
			upd.OwnerReferences = append(upd.OwnerReferences, *owner)
			updated, err := secrets.Update(ctx, upd, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				continue
			}
			if err != nil {
				return nil, "", fmt.Errorf("set the owner of Secret %s/%s: %w", sec.Namespace, sec.Name, err)
			}
			s.log.Info("the serving certificate Secret is now owned by the MutatingWebhookConfiguration", "configuration", owner.Name)
			return old, updated.ResourceVersion, nil
		}
		mat, rv, err := s.rotate(ctx, sec, old, now, owner)
		if apierrors.IsConflict(err) {
			s.log.Info("another replica rotated the Secret first; using its certificate")
			continue
		}
		if err != nil {
			return nil, "", err
		}
		s.log.Info("rotated the serving certificate", "reason", why, "serial", serial(mat))
		return mat, rv, nil
	}
	return nil, "", fmt.Errorf("the Secret %s/%s kept changing during %d attempts", s.cfg.ServiceNamespace, s.cfg.SecretName, maxAttempts)
}

// rotate replaces sec's pair with a new CA and leaf, keeping the CA of the
// leaf being served in the bundle: replicas serve it until they see the
// new Secret. Update carries sec's resourceVersion, so of two replicas
// rotating at once one gets a Conflict.
func (s *SelfManaged) rotate(ctx context.Context, sec *corev1.Secret, old *material, now time.Time, owner *metav1.OwnerReference) (*material, string, error) {
	var prev *x509.Certificate
	if old != nil {
		prev = old.issuer()
	}
	mat, err := mint(s.names, now, s.cfg.Validity, prev)
	if err != nil {
		return nil, "", err
	}
	upd := sec.DeepCopy()
	if upd.Data == nil {
		upd.Data = map[string][]byte{}
	}
	maps.Copy(upd.Data, mat.data())
	if owner != nil && !owned(upd, owner) {
		upd.OwnerReferences = append(upd.OwnerReferences, *owner)
	}
	updated, err := s.client.Secrets(sec.Namespace).Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("update Secret %s/%s: %w", sec.Namespace, sec.Name, err)
	}
	return mat, updated.ResourceVersion, nil
}

func (s *SelfManaged) newSecret(mat *material, owner *metav1.OwnerReference) *corev1.Secret {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: s.cfg.SecretName, Namespace: s.cfg.ServiceNamespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "meshlet"},
		},
		Type: corev1.SecretTypeTLS,
		Data: mat.data(),
	}
	if owner != nil {
		sec.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return sec
}

// webhookConfig is the MutatingWebhookConfiguration, nil while it does
// not exist (the chart may create it after the Deployment).
func (s *SelfManaged) webhookConfig(ctx context.Context) (*admissionv1.MutatingWebhookConfiguration, error) {
	mwc, err := s.client.MutatingWebhookConfigurations().Get(ctx, s.cfg.WebhookConfigName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get MutatingWebhookConfiguration %s: %w", s.cfg.WebhookConfigName, err)
	}
	return mwc, nil
}

// ownerRef is the configuration as the Secret's owner: the Secret is made
// by the webhook, not by the chart, and deleting the configuration (helm
// uninstall) lets the garbage collector delete it too. nil for nil.
func ownerRef(mwc *admissionv1.MutatingWebhookConfiguration) *metav1.OwnerReference {
	if mwc == nil {
		return nil
	}
	return &metav1.OwnerReference{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration",
		Name: mwc.Name, UID: mwc.UID}
}

// owned says whether sec names owner among its owners.
func owned(sec *corev1.Secret, owner *metav1.OwnerReference) bool {
	for _, r := range sec.OwnerReferences {
		if r.UID == owner.UID {
			return true
		}
	}
	return false
}

// jsonPatchOp is one RFC 6902 operation.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// publish makes every webhook of the configuration mwc (as read before
// the Secret) carry mat's ca.crt as caBundle. found is false, with no
// error, when the configuration does not exist.
func (s *SelfManaged) publish(ctx context.Context, mwc *admissionv1.MutatingWebhookConfiguration, mat *material, secretRV string) (found bool, _ error) {
	if mwc == nil {
		return false, nil
	}
	var ops []jsonPatchOp
	for i, w := range mwc.Webhooks {
		if bytes.Equal(w.ClientConfig.CABundle, mat.caPEM) {
			continue
		}
		// The test pins each index to its webhook: if the list changed
		// since the Get, the patch fails instead of hitting the wrong one.
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: fmt.Sprintf("/webhooks/%d/name", i), Value: w.Name},
			// add, not replace: it also sets a caBundle that is absent.
			jsonPatchOp{Op: "add", Path: fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), Value: mat.caPEM})
	}
	if len(ops) == 0 {
		return true, nil
	}
	// A replica that read the Secret just before another rotated it would
	// otherwise overwrite the new bundle with the old one, which lacks the
	// CA of the leaf the other now serves.
	cur, err := s.client.Secrets(s.cfg.ServiceNamespace).Get(ctx, s.cfg.SecretName, metav1.GetOptions{})
	if err != nil {
		return true, fmt.Errorf("re-read Secret %s/%s before publishing: %w", s.cfg.ServiceNamespace, s.cfg.SecretName, err)
	}
	if cur.ResourceVersion != secretRV {
		return true, errSecretMoved
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return true, fmt.Errorf("encode caBundle patch: %w", err)
	}
	if _, err := s.client.MutatingWebhookConfigurations().Patch(ctx, s.cfg.WebhookConfigName, types.JSONPatchType, body, metav1.PatchOptions{}); err != nil {
		return true, fmt.Errorf("publish caBundle to MutatingWebhookConfiguration %s: %w", s.cfg.WebhookConfigName, err)
	}
	s.log.Info("published the caBundle", "webhooks", len(ops)/2)
	return true, nil
}
