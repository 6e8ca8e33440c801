// Command importsonly links and initializes everything meshlet-cni
// imports and does nothing: BenchmarkStartup's measure of what the
// dependency set alone costs at start-up.
package main

import _ "github.com/meshlet/meshlet/cni"

func main() {}
