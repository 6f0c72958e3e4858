package source

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/file"
	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/kube"
)

// Options carries what any source may need; each source takes the fields it uses.
type Options struct {
	Logger *slog.Logger
	Clock  clock.WithTicker
	// Errors counts problems the source worked around (broken manifests, watch failures).
	Errors prometheus.Counter
	// LastGoodLoad is set to the time of the last load that read the whole input without error.
	LastGoodLoad prometheus.Gauge
	// Malformed names the objects skipped as malformed (labels kind, namespace, name).
	Malformed *prometheus.GaugeVec

	// ManifestsDir is the directory the file source reads.
	ManifestsDir string
	// Resync is the period of the file source's full rescan.
	Resync time.Duration
	// Kubeconfig is the kube source's kubeconfig file; empty means the in-cluster config.
	Kubeconfig string
}

type builder func(Options) (Source, error)

// builders is the one place a source is chosen by name.
var builders = map[string]builder{
	"file": func(o Options) (Source, error) {
		s, err := file.New(file.Config{
			Dir:          o.ManifestsDir,
			Resync:       o.Resync,
			Logger:       o.Logger,
			Clock:        o.Clock,
			Errors:       o.Errors,
			LastGoodLoad: o.LastGoodLoad,
		})
		if err != nil {
			return nil, err
		}
		return fullStateSource{run: s.Run}, nil
	},
	"kube": func(o Options) (Source, error) {
		// An empty path falls back to the in-cluster config (the pod's service account).
		cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client config: %w", err)
		}
		cfg.UserAgent = "portcullis-mcp-sync"
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		return kube.New(kube.Config{
			Dynamic:      dyn,
			Logger:       o.Logger,
			Errors:       o.Errors,
			Malformed:    o.Malformed,
			LastGoodLoad: o.LastGoodLoad,
		})
	},
}

// Names lists the known source names, sorted.
func Names() []string { return slices.Sorted(maps.Keys(builders)) }

// CheckName reports an unknown source name, listing the known ones.
func CheckName(name string) error {
	if _, ok := builders[name]; !ok {
		return fmt.Errorf("unknown source %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return nil
}

// New builds the named source.
func New(name string, o Options) (Source, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	s, err := builders[name](o)
	if err != nil {
		return nil, fmt.Errorf("building %s source: %w", name, err)
	}
	return s, nil
}
