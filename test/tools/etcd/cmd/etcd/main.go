// Command etcd is etcd's server under its usual name: the module's own
// main package (go.etcd.io/etcd/server/v3) would build as "v3".
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
