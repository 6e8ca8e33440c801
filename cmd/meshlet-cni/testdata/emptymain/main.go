// Command emptymain is the floor: the cost of starting any Go process.
package main

func main() {}
