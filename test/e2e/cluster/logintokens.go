package cluster

import (
	"encoding/json"
	"fmt"
	"strings"

	capi "github.com/hashicorp/consul/api"
)

// LoginToken is what a sidecar's login token says of its pod.
type LoginToken struct {
	Accessor, UID string
	Services      []string // its service identities
}

// PodLoginTokens are AuthMethod's tokens naming a pod of ns, by pod name:
// Consul keeps a login's meta (pod as namespace/name, pod-uid), which
// meshlet's sidecars send, in the token's description. cl needs acl:read.
func PodLoginTokens(cl *capi.Client, ns string) (map[string]LoginToken, error) {
	toks, _, err := cl.ACL().TokenListFiltered(capi.ACLTokenFilterOptions{AuthMethod: AuthMethod}, nil)
	if err != nil {
		return nil, fmt.Errorf("list the tokens of %s: %w", AuthMethod, err)
	}
	out := map[string]LoginToken{}
	for _, tok := range toks {
		i := strings.Index(tok.Description, "{")
		var meta map[string]string
		if i < 0 || json.Unmarshal([]byte(tok.Description[i:]), &meta) != nil {
			return nil, fmt.Errorf("token %s of %s: description %q holds no login meta", tok.AccessorID, AuthMethod, tok.Description)
		}
		podNS, name, _ := strings.Cut(meta["pod"], "/")
		if podNS != ns {
			continue
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("pod %s/%s holds two tokens", ns, name)
		}
		lt := LoginToken{Accessor: tok.AccessorID, UID: meta["pod-uid"]}
		for _, si := range tok.ServiceIdentities {
			lt.Services = append(lt.Services, si.ServiceName)
		}
		out[name] = lt
	}
	return out, nil
}
