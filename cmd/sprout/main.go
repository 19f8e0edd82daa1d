// Command sprout is the Sprout agent and its command line.
package main

import (
	"os"

	"github.com/sprout-paas/sprout/cli"
)

func main() { os.Exit(cli.Execute()) }
