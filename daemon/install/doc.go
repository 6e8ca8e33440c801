// Package install puts meshlet-cni on a node and keeps it chained: the node
// agent copies the plugin binary into the host's CNI bin dir, writes the
// plugin's kubeconfig, and appends meshlet-cni's entry last in the node's
// primary CNI config, the one the container runtime uses.
//
// The pure part, PrimaryConfig aside, works on bytes: Chain and Unchain
// rewrite a config without touching anything the other plugins say (each
// plugin's JSON is kept as written; only whitespace changes), and a second
// Chain changes nothing, so the node agent can run it on every start and on every
// change of the conf dir.
//
// The effectful part (Install, Uninstall, Watch) writes the primary config
// in place: containerd 1.6 and 1.7 reload the CNI config on Write, Rename
// and Remove events of the conf dir but ignore Create, and a file renamed
// into the dir is a Create, so the usual write-temp-and-rename would go
// unseen until something else touched the dir. The price of the in-place
// write is a short window in which the file is truncated; a runtime that
// reloads in it fails that load and reloads again on the write that
// follows. Files outside the conf dir (the binary, the kubeconfig) are
// written atomically.
//
// Watch keeps the entry there: CNI daemons (flannel, calico, cilium)
// rewrite their config when they restart and drop entries they do not
// know; Watch adds it back and reports a primary that keeps doing so.
package install
