// Command clientgoprobe loads a kubeconfig and builds a metadata client the
// way a client-go based plugin would: the start-up cost meshlet-cni avoids.
package main

import (
	"fmt"
	"os"

	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Args[1])
	if err == nil {
		_, err = metadata.NewForConfig(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
