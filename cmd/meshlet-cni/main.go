// Command meshlet-cni is meshlet's chained CNI plugin; see package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/meshlet/meshlet/cni"
)

var version = "dev"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: cni.Add, Del: cni.Del, Check: cni.Check, Status: cni.Status, GC: cni.GC,
	}, cniversion.All, "meshlet-cni "+version)
}
