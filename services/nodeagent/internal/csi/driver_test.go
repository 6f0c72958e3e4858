package csi

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	uidA = "0b4f6f2e-5d1c-4e0a-9d55-0c1f6a7e9b01"
	uidB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
)

func TestPublishServesThePodThroughTheBindMount(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	target := h.targetPath(uidA)
	if _, err := h.node.NodePublishVolume(ctx, publishRequest(uidA, target)); err != nil {
		t.Fatal(err)
	}
	if got, err := callSocket(filepath.Join(target, SocketName)); err != nil || got != "shop/web-0b4f" {
		t.Fatalf("through the target path: got %q, %v; want shop/web-0b4f", got, err)
	}
	opened, _ := h.pub.snapshot()
	want := PodInfo{Namespace: "shop", Name: "web-0b4f", UID: uidA, ServiceAccount: "web", Token: testToken}
	if len(opened) != 1 || opened[0] != want {
		t.Fatalf("Publisher opened %+v, want [%+v]", opened, want)
	}
	want.Token = "" // handed to the Publisher, kept nowhere
	if got, ok := h.driver.PodBySocket(h.driver.SocketPath(uidA)); !ok || got != want {
		t.Errorf("PodBySocket = %+v, %v; want %+v", got, ok, want)
	}

	// On the node: the pod's directory is root's, its record is 0600 and holds no token.
	for path, mode := range map[string]os.FileMode{
		h.driver.podDir(uidA):                            os.ModeDir | 0o700,
		h.driver.sockDir(uidA):                           os.ModeDir | 0o755,
		filepath.Join(h.driver.podDir(uidA), "pod.json"): 0o600,
		h.driver.SocketPath(uidA):                        os.ModeSocket | 0o666,
	} {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode() != mode {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, mode)
		}
	}
	b, err := os.ReadFile(filepath.Join(h.driver.podDir(uidA), "pod.json"))
	if err != nil || strings.Contains(string(b), testToken) {
		t.Errorf("pod.json = %s (%v): want the pod without its token", b, err)
	}

	if _, err := h.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uidA, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, h.dir); len(m) != 0 {
		t.Errorf("mounted after unpublish: %v", m)
	}
	mustNotExist(t, target)
	mustNotExist(t, h.driver.podDir(uidA))
	if _, closed := h.pub.snapshot(); len(closed) != 1 || closed[0] != uidA {
		t.Errorf("Publisher closed %v, want [%s]", closed, uidA)
	}
	if _, ok := h.driver.PodBySocket(h.driver.SocketPath(uidA)); ok {
		t.Error("PodBySocket still knows the unpublished pod")
	}
}

// A read-only mount of the socket's directory: the pod can connect, but neither replace the
// socket nor write files there (see bindReadOnly).
func TestPublishedSocketIsReadOnlyButConnectable(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	target := h.targetPath(uidA)
	if _, err := h.node.NodePublishVolume(ctx, publishRequest(uidA, target)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "planted"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing a file in the volume: %v, want EROFS", err)
	}
	if err := os.Remove(filepath.Join(target, SocketName)); !errors.Is(err, unix.EROFS) {
		t.Errorf("removing the socket through the volume: %v, want EROFS", err)
	}
	if got, err := callSocket(filepath.Join(target, SocketName)); err != nil || got != "shop/web-0b4f" {
		t.Fatalf("connect through the read-only mount: got %q, %v", got, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil || st.Flags&unix.ST_RDONLY == 0 || st.Flags&unix.ST_NOEXEC == 0 {
		t.Errorf("mount flags %#x (%v): want read-only and noexec", st.Flags, err)
	}
}

// The kubelet repeats publishes and unpublishes until they succeed, also ones that did.
func TestPublishAndUnpublishAreIdempotent(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	target := h.targetPath(uidA)
	for range 3 {
		if _, err := h.node.NodePublishVolume(ctx, publishRequest(uidA, target)); err != nil {
			t.Fatal(err)
		}
	}
	if m := mountsUnder(t, h.dir); len(m) != 1 || m[0] != target {
		t.Errorf("mounts after 3 publishes: %v, want [%s]", m, target)
	}
	if opened, _ := h.pub.snapshot(); len(opened) != 1 {
		t.Errorf("Publisher opened %d sockets, want 1", len(opened))
	}
	unpublish := &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uidA, TargetPath: target}
	for range 3 {
		if _, err := h.node.NodeUnpublishVolume(ctx, unpublish); err != nil {
			t.Fatal(err)
		}
	}
	if _, closed := h.pub.snapshot(); len(closed) != 1 {
		t.Errorf("Publisher closed %v, want once", closed)
	}
	// A volume this driver never published (lost state, a kubelet confused after a reboot).
	if _, err := h.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-unknown", TargetPath: h.targetPath(uidB)}); err != nil {
		t.Errorf("unpublish of an unknown volume: %v", err)
	}
}

func TestPublishRefusesBadRequests(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	target := h.targetPath(uidA)
	cases := []struct {
		name   string
		change func(*csipb.NodePublishVolumeRequest)
		want   string
	}{
		{"persistent volume", func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, attrEphemeral) }, "only ephemeral inline volumes"},
		{"no pod info", func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, attrPodName) }, "podInfoOnMount: true"},
		{"uid with a path", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[attrPodUID] = "../../etc" }, `pod.uid "../../etc" is not a pod UID`},
		{"upper-case uid", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[attrPodUID] = strings.ToUpper(uidA) }, "is not a pod UID"},
		{"bad namespace", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[attrPodNamespace] = "Shop_1" }, `pod.namespace "Shop_1" is not a valid Kubernetes name`},
		{"bad service account", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[attrServiceAccount] = "a/b" }, "serviceAccount.name"},
		{"volume attributes", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext["socket"] = "/etc" }, `unknown volume attributes ["socket"]`},
		{"volume attributes with a kubelet key", func(r *csipb.NodePublishVolumeRequest) {
			r.VolumeContext["socket"] = "/etc"
			r.VolumeContext["csi.storage.k8s.io/some.future.key"] = "x"
		}, `unknown volume attributes ["socket"]`},
		{"bad tokens", func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[attrTokens] = "{tok" }, "is not a JSON map of audience to token"},
		{"block volume", func(r *csipb.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
		}, "not block volumes"},
		{"multi-node", func(r *csipb.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessMode.Mode = csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}, "access mode MULTI_NODE_MULTI_WRITER refused"},
		{"relative target", func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "pods/x/mount" }, "not a clean absolute path"},
		{"no volume id", func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" }, "volume_id is missing"},
		{"read-write", func(r *csipb.NodePublishVolumeRequest) { r.Readonly = false }, "set readOnly: true in the pod's volumes[].csi"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := publishRequest(uidA, target)
			c.change(req)
			_, err := h.node.NodePublishVolume(ctx, req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), c.want) {
				t.Errorf("got %v, want InvalidArgument with %q", err, c.want)
			}
		})
	}
	if m := mountsUnder(t, h.dir); len(m) != 0 {
		t.Errorf("mounted after refused publishes: %v", m)
	}
	mustNotExist(t, filepath.Join(h.driver.cfg.StateDir, podsDir, uidA))
	if opened, _ := h.pub.snapshot(); len(opened) != 0 {
		t.Errorf("Publisher opened %v for refused publishes", opened)
	}
}

func TestSecondVolumeOfAPodIsRefused(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	if _, err := h.node.NodePublishVolume(ctx, publishRequest(uidA, h.targetPath(uidA))); err != nil {
		t.Fatal(err)
	}
	second := publishRequest(uidA, filepath.Join(h.dir, "kubelet", "second", "mount"))
	second.VolumeId = "csi-second"
	_, err := h.node.NodePublishVolume(ctx, second)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "a pod gets one socket") {
		t.Errorf("second volume: %v, want FailedPrecondition", err)
	}
}

func TestTokenOnlyForTheAgentsAudience(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	req := publishRequest(uidA, h.targetPath(uidA))
	req.VolumeContext[attrTokens] = `{"other":{"token":"not-ours","expirationTimestamp":"2026-11-30T01:00:00Z"}}`
	if _, err := h.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if opened, _ := h.pub.snapshot(); len(opened) != 1 || opened[0].Token != "" {
		t.Errorf("Publisher got %+v, want no token", opened)
	}
}

// Bind mounts outlive the agent; a new agent listens on every published pod's socket again, and
// forgets volumes unmounted meanwhile.
func TestRestoreReopensPublishedSockets(t *testing.T) {
	dir := shortTempDir(t)
	h := startDriver(t, dir)
	ctx := rpcContext(t)
	for _, uid := range []string{uidA, uidB} {
		if _, err := h.node.NodePublishVolume(ctx, publishRequest(uid, h.targetPath(uid))); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	h.pub.kill(t) // the agent dies: nobody listens on the pods' sockets
	if _, err := callSocket(filepath.Join(h.targetPath(uidA), SocketName)); err == nil {
		t.Fatal("the socket answered with the agent dead")
	}
	// Meanwhile pod B's volume went away (its mount did; the kubelet will unpublish it).
	if err := unix.Unmount(h.targetPath(uidB), 0); err != nil {
		t.Fatal(err)
	}

	h2 := startDriver(t, dir)
	if _, err := h2.identity.Probe(ctx, &csipb.ProbeRequest{}); err != nil { // Run has restored
		t.Fatal(err)
	}
	if got, err := callSocket(filepath.Join(h.targetPath(uidA), SocketName)); err != nil || got != "shop/web-0b4f" {
		t.Fatalf("after restart: got %q, %v; want shop/web-0b4f", got, err)
	}
	opened, _ := h2.pub.snapshot()
	want := PodInfo{Namespace: "shop", Name: "web-0b4f", UID: uidA, ServiceAccount: "web"} // no token after a restart
	if len(opened) != 1 || opened[0] != want {
		t.Errorf("restored %+v, want [%+v]", opened, want)
	}
	mustNotExist(t, h2.driver.podDir(uidB))
	if err := h2.driver.Restore(); err != nil { // again: nothing more
		t.Fatal(err)
	}
	if opened, _ := h2.pub.snapshot(); len(opened) != 1 {
		t.Errorf("a second Restore opened again: %+v", opened)
	}
	// The restored volume unpublishes as usual.
	if _, err := h2.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uidA, TargetPath: h.targetPath(uidA)}); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, h2.driver.podDir(uidA))
}

func TestRestoreDropsBrokenState(t *testing.T) {
	dir := shortTempDir(t)
	state := filepath.Join(dir, "state", podsDir)
	for uid, content := range map[string]string{
		uidA:        "{not json",
		"not-a-uid": `{"volumeID":"v","targetPath":"/x","uid":"not-a-uid"}`,
		uidB:        `{"volumeID":"v","targetPath":"relative","uid":"` + uidB + `"}`,
	} {
		if err := os.MkdirAll(filepath.Join(state, uid), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(state, uid, "pod.json"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h := startDriver(t, dir)
	if _, err := h.identity.Probe(rpcContext(t), &csipb.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(state)
	if err != nil || len(entries) != 0 {
		t.Errorf("state left: %v (%v)", entries, err)
	}
}

func TestNodeAndIdentityInfo(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	ctx := rpcContext(t)
	info, err := h.node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil || info.GetNodeId() != testNode {
		t.Errorf("NodeGetInfo = %v, %v; want node %s", info, err, testNode)
	}
	caps, err := h.node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 0 {
		t.Errorf("NodeGetCapabilities = %v, %v; want none (no staging)", caps, err)
	}
	plugin, err := h.identity.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil || plugin.GetName() != DefaultDriverName {
		t.Errorf("GetPluginInfo = %v, %v", plugin, err)
	}
	if _, err := h.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("NodeStageVolume: %v, want Unimplemented", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	_, err := New(Config{DriverName: "Bad_Name", Endpoint: "csi.sock", StateDir: "/" + strings.Repeat("s", 80)})
	for _, want := range []string{`driver name "Bad_Name"`, "node name is required", `endpoint "csi.sock"`, "registration directory", "is too long", "Publisher is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v; want an error with %q", err, want)
		}
	}
}

func TestPodJSONIsTheRecord(t *testing.T) {
	r := record{VolumeID: "csi-1", TargetPath: "/t", Namespace: "ns", Name: "n", UID: uidA, ServiceAccount: "sa"}
	b, _ := json.Marshal(r)
	want := `{"volumeID":"csi-1","targetPath":"/t","namespace":"ns","name":"n","uid":"` + uidA + `","serviceAccount":"sa"}`
	if string(b) != want {
		t.Errorf("pod.json = %s, want %s (a format change breaks Restore after an upgrade)", b, want)
	}
}

// Keys a later kubelet may add to the volume context do not break publishing.
func TestPublishAcceptsNewKubeletKeys(t *testing.T) {
	h := startDriver(t, shortTempDir(t))
	req := publishRequest(uidA, h.targetPath(uidA))
	req.VolumeContext["csi.storage.k8s.io/pod.future"] = "x"
	if _, err := h.node.NodePublishVolume(rpcContext(t), req); err != nil {
		t.Fatal(err)
	}
}
