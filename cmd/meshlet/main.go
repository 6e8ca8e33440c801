// Command meshlet is meshlet's node agent binary. The agent itself
// ("meshlet agent") arrives with the node-agent issue; today it reports its
// version, so packaging and the chart have a real binary to carry.
package main

import (
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("meshlet", version)
		return
	}
	fmt.Fprintln(os.Stderr, "usage: meshlet version")
	os.Exit(2)
}
