// Command curl is the static-client image's HTTP client: the subset of curl's
// command line the walkthrough and tests use, with curl's exit codes (0, 6,
// 7, 22, 28, 52, 56) so scripts written against curl behave the same.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
