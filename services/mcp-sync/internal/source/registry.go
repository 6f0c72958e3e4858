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

	"github.com/portcullis-mesh/portcullis/services/mcp-sync/internal/source/file"
)

// Options carries what any source may need; each source takes the fields it uses.
type Options struct {
	Logger *slog.Logger
	Clock  clock.WithTicker
	// Errors counts problems the source worked around (broken manifests, watch failures).
	Errors prometheus.Counter
	// LastGoodLoad is set to the time of the last load that read the whole input without error.
	LastGoodLoad prometheus.Gauge

	// ManifestsDir is the directory the file source reads.
	ManifestsDir string
	// Resync is the period of the file source's full rescan.
	Resync time.Duration
}

type builder func(Options) (Source, error)

// builders is the one place a source is chosen by name.
var builders = map[string]builder{
	"file": func(o Options) (Source, error) {
		return file.New(file.Config{
			Dir:          o.ManifestsDir,
			Resync:       o.Resync,
			Logger:       o.Logger,
			Clock:        o.Clock,
			Errors:       o.Errors,
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
