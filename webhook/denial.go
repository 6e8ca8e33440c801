package webhook

import (
	"errors"
	"slices"
	"strings"

	"github.com/meshlet/meshlet/contract"
)

// DeniedBy lists the annotations a denial names, sorted and without
// repeats; "other" stands for a reason that is not one annotation's value
// (a container running as the proxy's UID, a limit below its request). service-meta-<key> counts as one
// annotation, service-meta-*, so a metric labelled with these stays small
// whatever keys users write.
func DeniedBy(err error) []string {
	var keys []string
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case nil:
		case invalid:
			k := x.key
			if strings.HasPrefix(k, contract.ServiceMetaPrefix) {
				k = contract.ServiceMetaPrefix + "*"
			}
			keys = append(keys, k)
		case interface{ Unwrap() []error }:
			for _, c := range x.Unwrap() {
				walk(c)
			}
		default:
			var inv invalid
			if errors.As(e, &inv) {
				walk(inv)
				return
			}
			keys = append(keys, "other")
		}
	}
	walk(err)
	slices.Sort(keys)
	return slices.Compact(keys)
}
