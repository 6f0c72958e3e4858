// Package xdslog adapts slog to go-control-plane's logger interface.
package xdslog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/envoyproxy/go-control-plane/pkg/log"
)

// New returns a go-control-plane logger writing to logger. go-control-plane logs routine protocol
// events (stale nonces, new watches) at info level, so info is demoted to debug.
func New(logger *slog.Logger) log.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if logger.Enabled(context.Background(), level) {
				logger.Log(context.Background(), level, fmt.Sprintf(format, args...), "component", "go-control-plane")
			}
		}
	}
	return log.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
