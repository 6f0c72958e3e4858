package csi

import (
	"os"
	"strings"
	"testing"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// The handshake as the kubelet's plugin watcher does it (pkg/kubelet/pluginmanager): GetInfo on
// the registration socket, then NotifyRegistrationStatus with the outcome.
func TestRegistrationHandshake(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	info, err := h.reg.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != DefaultDriverName || info.Endpoint != h.driver.cfg.Endpoint ||
		len(info.SupportedVersions) != 1 || info.SupportedVersions[0] != "1.0.0" {
		t.Errorf("GetInfo = %+v", info)
	}
	for _, sock := range []string{h.driver.RegistrationSocket(), h.driver.cfg.Endpoint} {
		if fi, err := os.Stat(sock); err != nil || fi.Mode() != os.ModeSocket|0o600 {
			t.Errorf("%s: %v (%v), want a socket only root can call", sock, fi.Mode(), err)
		}
	}
	if err := h.driver.Ready(); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("Ready before registration = %v, want an error", err)
	}
	if _, err := h.reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if err := h.driver.Ready(); err != nil {
		t.Errorf("Ready after registration = %v", err)
	}
	if _, err := h.reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{Error: "version 2.0.0 unsupported"}); err != nil {
		t.Fatal(err)
	}
	if err := h.driver.Ready(); err == nil || !strings.Contains(err.Error(), "version 2.0.0 unsupported") {
		t.Errorf("Ready after a refused registration = %v, want the kubelet's error", err)
	}

	// The kubelet deregisters a plugin whose socket is gone: Run removes both on exit.
	h.stop()
	mustNotExist(t, h.driver.RegistrationSocket())
	mustNotExist(t, h.driver.cfg.Endpoint)
}
