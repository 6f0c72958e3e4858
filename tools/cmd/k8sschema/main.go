// Command k8sschema writes the JSON schemas kubeconform validates Kubernetes manifests against,
// offline: every kind of a Kubernetes version, from api/openapi-spec/swagger.json in the
// k8s.io/kubernetes module zip, and the kinds of CustomResourceDefinition files.
//
//	k8sschema -kube-version v1.32.13 -out DIR [-crds charts/portcullis/crds]
//
// Validate with: kubeconform -strict -schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/portcullis-mesh/portcullis/tools/k8sschema"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8sschema:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("k8sschema", flag.ContinueOnError)
	version := fs.String("kube-version", "v1.32.13", "version of the k8s.io/kubernetes module whose OpenAPI document is converted")
	out := fs.String("out", "", "directory to write the schemas into (created if missing)")
	crds := fs.String("crds", "", "optional directory of CustomResourceDefinition YAML files to convert as well")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("-out is required")
	}
	swagger, err := k8sschema.SwaggerFromModule(ctx, *version)
	if err != nil {
		return err
	}
	defs, err := k8sschema.ParseSwagger(swagger)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	n, err := defs.WriteKinds(*out)
	if err != nil {
		return err
	}
	fmt.Printf("%d schemas of Kubernetes %s in %s\n", n, *version, *out)
	if *crds == "" {
		return nil
	}
	files, err := filepath.Glob(filepath.Join(*crds, "*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		written, err := defs.WriteCRDs(b, *out)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		for _, w := range written {
			fmt.Printf("%s -> %s\n", filepath.Base(f), filepath.Base(w))
		}
	}
	return nil
}
