// Package repair finds injected pods that run without their transparent-
// proxy redirection and puts it right: a pod scheduled on a node before
// meshlet-cni was chained there (node boot, an upgrade, a primary CNI that
// dropped the entry for a while) got no rules at sandbox creation, and
// nothing else would ever add them (consul-k8s issue #3060).
//
// Three parts, as in the rest of the node agent:
//
//   - Scan and Index find a running pod's network namespace from the host,
//     whatever the runtime: one pass over /proc/*/cgroup maps pod UIDs to
//     processes (cgroup v1 and v2, cgroupfs and systemd drivers), and the
//     netns is the one those processes share, named by its nsfs inode.
//   - Decide is pure: the pod, what its netns holds and the configured Mode
//     in, an Action out (none, repair in place, delete, report only).
//   - Repairer checks a netns with iptables.Applier.Verify and repairs it
//     with Apply, on the backend meshlet-cni uses. Deleting the pod,
//     the Event and the metric are the node agent's: it holds the clientset,
//     the recorder and the registry; Finding.Event and
//     Finding.DeleteOptions give it the words and the precondition.
//
// Acting on the wrong netns would be worse than not acting: a pod's
// redirect rules in the host's netns send every TCP connection of the node
// to a port nothing listens on. So a netns is identified by its inode when
// it is found, the host's own is never taken for a pod's, and every check
// and repair first opens the netns and makes sure it is still that one.
package repair
