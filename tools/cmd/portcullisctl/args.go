package main

import (
	"flag"
	"fmt"
	"slices"
	"strings"
)

// parseArgs parses a subcommand's flags wherever they stand among its arguments, so that
// `rotate-ca retire -force` and `rotate-ca -force retire` mean the same (Go's flag package alone
// stops at the first non-flag and would leave -force unparsed). It returns the positional
// arguments, at most maxArgs of them, and refuses flags of fs that the subcommand does not take.
func parseArgs(fs *flag.FlagSet, args []string, maxArgs int, allowed ...string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		if consumed := len(args) - fs.NArg(); consumed > 0 && args[consumed-1] == "--" {
			// "--" ends the flags: everything after it is an argument, even "-force".
			positional = append(positional, fs.Args()...)
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	var refused []string
	fs.Visit(func(f *flag.Flag) {
		if !slices.Contains(allowed, f.Name) {
			refused = append(refused, "-"+f.Name)
		}
	})
	if len(refused) > 0 {
		return nil, fmt.Errorf("%s does not take %s", fs.Name(), strings.Join(refused, ", "))
	}
	if len(positional) > maxArgs {
		return nil, fmt.Errorf("%s: unexpected arguments %q", fs.Name(), positional[maxArgs:])
	}
	return positional, nil
}
