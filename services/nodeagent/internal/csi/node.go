package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// vendorVersion is reported by GetPluginInfo; the kubelet only logs it.
const vendorVersion = "1.0.0"

// identityServer is the CSI Identity service: a node plugin with no controller service.
type identityServer struct {
	d *Driver
	csipb.UnimplementedIdentityServer
}

func (s identityServer) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: s.d.cfg.DriverName, VendorVersion: vendorVersion}, nil
}

func (identityServer) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

func (identityServer) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// nodeServer is the CSI Node service: publish and unpublish only (no staging, no stats).
type nodeServer struct {
	d *Driver
	csipb.UnimplementedNodeServer
}

func (nodeServer) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil
}

func (s nodeServer) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: s.d.cfg.NodeName}, nil
}

func (s nodeServer) NodePublishVolume(_ context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	if err := checkPublish(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pod, err := podFromContext(req.GetVolumeContext(), s.d.cfg.TokenAudience)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.d.publish(req.GetVolumeId(), req.GetTargetPath(), pod); err != nil {
		return nil, err
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (s nodeServer) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is missing")
	}
	if err := checkTargetPath(req.GetTargetPath()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.d.unpublish(req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, err
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// publish opens the pod's socket and bind-mounts its directory at target. The kubelet retries a
// publish until it succeeds, and may repeat one that did: every step is skipped when done.
func (d *Driver) publish(volumeID, target string, pod PodInfo) error {
	start := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	v, known := d.pods[pod.UID]
	if known && (v.VolumeID != volumeID || v.TargetPath != target) {
		return status.Errorf(codes.FailedPrecondition,
			"pod %s/%s already has volume %s of driver %s: a pod gets one socket; mount that one volume in every container that needs it",
			pod.Namespace, pod.Name, v.VolumeID, d.cfg.DriverName)
	}
	if !known {
		v = &volume{record: record{VolumeID: volumeID, TargetPath: target, Namespace: pod.Namespace, Name: pod.Name,
			UID: pod.UID, ServiceAccount: pod.ServiceAccount}}
		// The record goes first: an agent that dies after mounting knows what to restore.
		if err := d.makePodDir(v.record); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		d.pods[pod.UID] = v
	}
	err := d.openSocket(v, pod.Token)
	if err == nil {
		err = d.mount(v)
	}
	if err != nil {
		if !known { // leave nothing behind; the kubelet's retry starts over
			if cerr := d.forget(v); cerr != nil {
				d.log.Warn("cleaning up a failed publish", "pod_uid", pod.UID, "error", cerr)
			}
		}
		return status.Error(codes.Internal, err.Error())
	}
	if !known {
		d.log.Info("pod socket published", "namespace", pod.Namespace, "pod", pod.Name, "pod_uid", pod.UID,
			"service_account", pod.ServiceAccount, "target_path", target, "duration", time.Since(start))
	}
	return nil
}

// mount bind-mounts the pod's socket directory at its target path, unless it is there already.
func (d *Driver) mount(v *volume) error {
	if err := os.MkdirAll(v.TargetPath, 0o750); err != nil {
		return fmt.Errorf("creating target path: %w", err)
	}
	mounted, err := isMountPoint(v.TargetPath)
	if err != nil || mounted {
		return err
	}
	return bindReadOnly(d.sockDir(v.UID), v.TargetPath)
}

// unpublish unmounts target and closes and removes the socket of the volume published there.
// The kubelet repeats an unpublish until it succeeds, also after one that did, and after an
// agent restart that lost nothing: every step tolerates being done already.
func (d *Driver) unpublish(volumeID, target string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := unmountAll(target); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	// The CSI spec has the plugin delete the target path it created.
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Errorf(codes.Internal, "removing target path: %v", err)
	}
	for _, v := range d.pods {
		if v.VolumeID != volumeID {
			continue
		}
		if err := d.forget(v); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		d.log.Info("pod socket unpublished", "namespace", v.Namespace, "pod", v.Name, "pod_uid", v.UID)
		return nil
	}
	return nil
}

// forget closes the volume's socket and removes its directory and record. The target path is
// unmounted already. Called with d.mu held.
func (d *Driver) forget(v *volume) error {
	if err := d.closeSocket(v); err != nil {
		return err
	}
	if err := d.removePodDir(v.UID); err != nil {
		return err
	}
	delete(d.pods, v.UID)
	return nil
}
