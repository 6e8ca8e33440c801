package daemonset

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestRBAC lists every rule and binding the chart grants, for every value
// set, against this table: any widening fails.
func TestRBAC(t *testing.T) {
	agent := []string{
		`ClusterRole meshlet-agent: apiGroups [""] resources [pods] verbs [get list watch delete]`,
		`ClusterRole meshlet-agent: apiGroups [""] resources [services] verbs [list watch]`,
		`ClusterRole meshlet-agent: apiGroups [""] resources [events] verbs [create patch]`,
		`Role meshlet/meshlet-agent: apiGroups [""] resources [serviceaccounts/token] resourceNames [meshlet-cni] verbs [create]`,
		`Role meshlet/meshlet-agent: apiGroups ["apps"] resources [daemonsets] resourceNames [meshlet-agent] verbs [get list watch]`,
		`ClusterRoleBinding meshlet-agent: ClusterRole meshlet-agent to ServiceAccount meshlet/meshlet-agent`,
		`RoleBinding meshlet/meshlet-agent: Role meshlet-agent to ServiceAccount meshlet/meshlet-agent`,
		`ClusterRole meshlet-cni: apiGroups [""] resources [pods] verbs [get]`,
		`ClusterRoleBinding meshlet-cni: ClusterRole meshlet-cni to ServiceAccount meshlet/meshlet-cni`,
	}
	webhook := []string{
		`ClusterRole meshlet-webhook: apiGroups ["admissionregistration.k8s.io"] resources [mutatingwebhookconfigurations] resourceNames [meshlet-webhook] verbs [get patch]`,
		`Role meshlet/meshlet-webhook: apiGroups [""] resources [secrets] resourceNames [meshlet-webhook-tls] verbs [get update]`,
		`Role meshlet/meshlet-webhook: apiGroups [""] resources [secrets] verbs [create]`,
		`ClusterRoleBinding meshlet-webhook: ClusterRole meshlet-webhook to ServiceAccount meshlet/meshlet-webhook`,
		`RoleBinding meshlet/meshlet-webhook: Role meshlet-webhook to ServiceAccount meshlet/meshlet-webhook`,
	}
	reaper := []string{
		`ClusterRole meshlet-token-reaper: apiGroups [""] resources [pods] verbs [get list watch]`,
		`Role meshlet/meshlet-token-reaper: apiGroups ["coordination.k8s.io"] resources [leases] resourceNames [meshlet-token-reaper] verbs [get update]`,
		`Role meshlet/meshlet-token-reaper: apiGroups ["coordination.k8s.io"] resources [leases] verbs [create]`,
		`ClusterRoleBinding meshlet-token-reaper: ClusterRole meshlet-token-reaper to ServiceAccount meshlet/meshlet-token-reaper`,
		`RoleBinding meshlet/meshlet-token-reaper: Role meshlet-token-reaper to ServiceAccount meshlet/meshlet-token-reaper`,
	}
	for _, name := range valueSetFiles(t) {
		t.Run(name, func(t *testing.T) {
			out := mustTemplate(t, valueFile(name))
			r := decode(t, out)
			want := slices.Concat(agent, webhook)
			if r.webhook == nil {
				want = agent
			}
			if r.reaper != nil {
				want = slices.Concat(want, reaper)
			}
			// The Consul DNS Service the webhook is told to read, by name.
			if r.webhook != nil {
				args := flags(t, container(t, r.webhook.Spec.Template.Spec, "webhook").Args)
				if svc := args["consul-dns-service"]; len(svc) == 1 {
					_, name, _ := strings.Cut(svc[0], "/")
					want = append(slices.Clone(want), `ClusterRole meshlet-webhook: apiGroups [""] resources [services] resourceNames [`+name+`] verbs [get]`)
				}
			}
			got := grants(r.objects)
			// fullnameOverride renames, and grants nothing else.
			if prefix := strings.TrimSuffix(r.agent.Name, "-agent"); prefix != "meshlet" {
				for i, g := range got {
					got[i] = strings.ReplaceAll(g, prefix+"-", "meshlet-")
				}
			}
			sort.Strings(got)
			want = slices.Clone(want)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("grants:%s", diff(want, got))
			}
		})
	}
}

// grants is every rule and binding, one line each.
func grants(objs []runtime.Object) []string {
	rule := func(owner string, r rbacv1.PolicyRule) string {
		var groups []string
		for _, g := range r.APIGroups {
			groups = append(groups, fmt.Sprintf("%q", g))
		}
		s := fmt.Sprintf("%s: apiGroups [%s] resources %v", owner, strings.Join(groups, " "), r.Resources)
		if len(r.ResourceNames) > 0 {
			s += fmt.Sprintf(" resourceNames %v", r.ResourceNames)
		}
		if len(r.NonResourceURLs) > 0 {
			s += fmt.Sprintf(" nonResourceURLs %v", r.NonResourceURLs)
		}
		return s + fmt.Sprintf(" verbs %v", r.Verbs)
	}
	binding := func(kind, name string, ref rbacv1.RoleRef, subjects []rbacv1.Subject) string {
		var subs []string
		for _, s := range subjects {
			subs = append(subs, fmt.Sprintf("%s %s/%s", s.Kind, s.Namespace, s.Name))
		}
		return fmt.Sprintf("%s %s: %s %s to %s", kind, name, ref.Kind, ref.Name, strings.Join(subs, ", "))
	}
	var out []string
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.ClusterRole:
			if o.AggregationRule != nil {
				out = append(out, "ClusterRole "+o.Name+": aggregated")
			}
			for _, r := range o.Rules {
				out = append(out, rule("ClusterRole "+o.Name, r))
			}
		case *rbacv1.Role:
			for _, r := range o.Rules {
				out = append(out, rule("Role "+o.Namespace+"/"+o.Name, r))
			}
		case *rbacv1.ClusterRoleBinding:
			out = append(out, binding("ClusterRoleBinding", o.Name, o.RoleRef, o.Subjects))
		case *rbacv1.RoleBinding:
			out = append(out, binding("RoleBinding", o.Namespace+"/"+o.Name, o.RoleRef, o.Subjects))
		}
	}
	return out
}
