// Command valuesdoc writes the values reference table of a Helm chart (docs/values.md) from the
// "# --" comments of its values.yaml, or with -check fails when the committed table differs.
//
//	valuesdoc -values charts/portcullis/values.yaml -out docs/values.md [-check]
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/portcullis-mesh/portcullis/tools/valuesdoc"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "valuesdoc:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("valuesdoc", flag.ContinueOnError)
	values := fs.String("values", valuesdoc.ChartValues, "the chart's values.yaml")
	out := fs.String("out", valuesdoc.Table, "the Markdown file to write")
	check := fs.Bool("check", false, "do not write: fail if -out differs from what would be written")
	if err := fs.Parse(args); err != nil {
		return err
	}
	src, err := os.ReadFile(*values)
	if err != nil {
		return err
	}
	rows, err := valuesdoc.Rows(src)
	if err != nil {
		return fmt.Errorf("%s: %w", *values, err)
	}
	table := valuesdoc.Markdown(rows, *values, valuesdoc.RegenerateCommand)
	if *check {
		have, err := os.ReadFile(*out)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if !bytes.Equal(have, table) {
			return fmt.Errorf("%s is stale: run `%s`", *out, valuesdoc.RegenerateCommand)
		}
		return nil
	}
	return os.WriteFile(*out, table, 0o644)
}
