package csi

import (
	"context"
	"errors"

	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// supportedCSIVersions are the CSI spec versions the kubelet may speak to this driver; the
// kubelet accepts a plugin that names any 1.x.
var supportedCSIVersions = []string{"1.0.0"}

// registrationServer answers the kubelet's plugin watcher. The kubelet notices the socket
// appear in its plugins_registry directory, asks GetInfo, validates the answer (and that it can
// reach the CSI endpoint: it calls NodeGetInfo there), then reports the outcome with
// NotifyRegistrationStatus. When the socket disappears, the kubelet deregisters the driver.
type registrationServer struct {
	d *Driver
}

func (s registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.d.cfg.DriverName,
		Endpoint:          s.d.cfg.Endpoint,
		SupportedVersions: supportedCSIVersions,
	}, nil
}

func (s registrationServer) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if st.GetPluginRegistered() {
		s.d.registration = nil
		s.d.log.Info("registered with the kubelet")
	} else {
		s.d.registration = errors.New("the kubelet refused to register the CSI driver: " + st.GetError())
		s.d.log.Error("the kubelet refused to register the CSI driver", "error", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
