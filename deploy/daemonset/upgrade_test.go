package daemonset

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// TestUpgradeKeepsCABundle runs the merge `helm upgrade` makes of the
// MutatingWebhookConfiguration (helm.sh/helm/v3/pkg/kube's createPatch: a
// three-way strategic merge of the previous release's manifest, the new
// one and the live object) on a live object whose caBundle the webhook has
// published, and checks the patched object keeps it while taking the new
// settings.
func TestUpgradeKeepsCABundle(t *testing.T) {
	mwcJSON := func(manifest string) []byte {
		t.Helper()
		for _, doc := range docSeparator.Split(manifest, -1) {
			if strings.Contains(doc, "\nkind: MutatingWebhookConfiguration\n") {
				j, err := yaml.YAMLToJSONStrict([]byte(doc))
				if err != nil {
					t.Fatal(err)
				}
				return j
			}
		}
		t.Fatal("no MutatingWebhookConfiguration rendered")
		return nil
	}
	previous := mwcJSON(mustTemplate(t))
	next := mwcJSON(mustTemplate(t, writeValues(t, "connectInject:\n  failurePolicy: Ignore\n  k8sDenyNamespaces: [legacy]\n")))

	// The live object: the previous manifest as the API server keeps it,
	// with the caBundle a webhook replica patched in.
	ca := []byte("-----BEGIN CERTIFICATE-----\npublished by the webhook\n-----END CERTIFICATE-----\n")
	var live admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(previous, nil, &live); err != nil {
		t.Fatal(err)
	}
	live.Webhooks[0].ClientConfig.CABundle = ca
	live.Webhooks[0].MatchPolicy = ptr.To(admissionregv1.Equivalent) // an API server default
	liveJSON, err := runtime.Encode(scheme.Codecs.LegacyCodec(admissionregv1.SchemeGroupVersion), &live)
	if err != nil {
		t.Fatal(err)
	}

	upgraded := threeWayMerge(t, previous, next, liveJSON)
	w := upgraded.Webhooks[0]
	if !bytes.Equal(w.ClientConfig.CABundle, ca) {
		t.Errorf("helm upgrade dropped the published caBundle: %q", w.ClientConfig.CABundle)
	}
	if *w.FailurePolicy != admissionregv1.Ignore || !slices.Contains(w.NamespaceSelector.MatchExpressions[0].Values, "legacy") {
		t.Errorf("the upgrade did not apply the new settings: failurePolicy %s, namespaceSelector %v", *w.FailurePolicy, w.NamespaceSelector)
	}

	// What the merge would do had the previous manifest held a caBundle
	// (a template that copies the live one with lookup, then a rollback to a
	// manifest without it, or with an older one): the field is removed.
	// This is why the template holds none, and shows this test can fail.
	var withCA admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(previous, nil, &withCA); err != nil {
		t.Fatal(err)
	}
	withCA.Webhooks[0].ClientConfig.CABundle = ca
	previousWithCA, err := runtime.Encode(scheme.Codecs.LegacyCodec(admissionregv1.SchemeGroupVersion), &withCA)
	if err != nil {
		t.Fatal(err)
	}
	if rolled := threeWayMerge(t, previousWithCA, next, liveJSON); rolled.Webhooks[0].ClientConfig.CABundle != nil {
		t.Error("a caBundle held by the previous manifest and not the next survived the merge: the check above proves nothing")
	}
}

func threeWayMerge(t *testing.T, original, modified, current []byte) admissionregv1.MutatingWebhookConfiguration {
	t.Helper()
	// As Helm: patch metadata from the typed object, overwrite true.
	meta, err := strategicpatch.NewPatchMetaFromStruct(&admissionregv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	patch, err := strategicpatch.CreateThreeWayMergePatch(original, modified, current, meta, true)
	if err != nil {
		t.Fatal(err)
	}
	merged, err := strategicpatch.StrategicMergePatch(current, patch, &admissionregv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	var out admissionregv1.MutatingWebhookConfiguration
	if _, _, err := strictDecoder.Decode(merged, nil, &out); err != nil {
		t.Fatalf("%v\n%s", err, merged)
	}
	return out
}
