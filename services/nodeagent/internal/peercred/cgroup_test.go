package peercred

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParseCgroupLayouts reads one /proc/<pid>/cgroup file per layout in testdata/.
func TestParseCgroupLayouts(t *testing.T) {
	const (
		u0  = "eee65f53-e942-41ce-9021-1670eae679f0"
		c0  = "adfa36d0840164709ab7f3f386d0cd566647b5aa666347428c3dd46c036bb3a6"
		u1  = "2e8d28a7-9023-4c39-b200-661fccd268a2"
		c1  = "2f301f46536559314e23acedbd6b0165debbc6530a2c6a8835c4abd5c652a9f3"
		u2  = "9a0d3473-01ef-456e-94dc-3cd6089065c3"
		c2  = "0b1789a6c52cf63c03378ec16c03888ad3e21c5cf5f1dfd9c9b9f89900715dc1"
		u3  = "146e80a9-c222-4670-abe4-f4c54977656c"
		c3  = "ac1a27df8713e4731de361b43be4de8db4947f39b8868767611088d013782257"
		u4  = "f2d13318-7c8d-4f95-847f-2866028de711"
		c4  = "bffb6aaf423e6ed8c4b4a95db3ea22dfe9029629fa947bab3ae8e9ea7c72bb0b"
		u5  = "59b42b4e-a410-4fb9-802f-29a422eb14ab"
		c5  = "cc6bc4552e9071590d292a283a2043d77faecbaa4ff21db0c2e0b03dd475c5a6"
		u6  = "2f2d0f0c-c022-4238-bace-ee2092f073ff"
		c6  = "cd981f939451e0f1a365b67f7e58c59f8fca2f7c164c8170fbe7d5d5a4848145"
		u7  = "80b9465a-ef7a-4c86-b66c-7a644fb12853"
		c7  = "06442b83fe2906d62e61df59a9c29e2b243ce3e0cf793e0649c9ac2866c3a98f"
		u8  = "ef86dcfa-ea21-4818-a904-ce6087413e3b"
		c8  = "aec23434556c1e237153dd2ad464cfad0ca708a6a9e3c6a935897b46606247fd"
		u9  = "266f850f-1578-4b5c-92dc-4ee60caea633"
		c9  = "aa2b8e3e47285a4309b7b552e1c549c056de14c3c5a487a114cf3fbdd9fedd33"
		u10 = "67c29a80-b21e-4ad8-b062-d15a4f4ef27e"
		c10 = "add0a19dca9273e7c1f379c72bd57d32343e09790a52eec4b7190ea9af4f6691"
		u11 = "9589c694-8f6d-430c-81c3-f252edc87ff4"
		c11 = "6abf05676139a8d4aed25793685798b37957842e2e21098d25967580541ec0f1"
	)
	kindRoot := "/docker/" + kindNodeID(t)
	tests := []struct {
		file       string
		cgroupRoot string // "" is the kubelet's default, "/"
		pod, cid   string // "" pod: refused
	}{
		{file: "cgroupfs-v1-hybrid-besteffort", pod: u0, cid: c0},
		{file: "cgroupfs-v1-hybrid-guaranteed", pod: u1, cid: c1},
		{file: "cgroupfs-v1-partial", pod: u0, cid: c0}, // pod-level pids line, host memory line
		{file: "cgroupfs-v2-burstable", pod: u2, cid: c2},
		{file: "systemd-v1-containerd-burstable", pod: u3, cid: c3},
		{file: "systemd-v1-docker-guaranteed", pod: u4, cid: c4},
		{file: "systemd-v2-containerd-besteffort", pod: u5, cid: c5},
		{file: "systemd-v2-crio-burstable", pod: u6, cid: c6},
		{file: "systemd-v2-crio-conmon", pod: u6, cid: ""}, // CRI-O's monitor: in the pod, no container
		{file: "cgroupns-v2-cgroupfs", pod: u7, cid: c7},
		{file: "cgroupns-v2-same-qos", pod: u7, cid: c7},
		{file: "cgroupns-v2-systemd", pod: u8, cid: c8},
		{file: "cgroup-root-systemd-kubelet-slice", cgroupRoot: "/kubelet.slice", pod: u9, cid: c9},
		{file: "cgroup-root-cgroupfs-custom", cgroupRoot: "/custom", pod: u10, cid: c10},
		{file: "kind-v1-node-in-docker", cgroupRoot: kindRoot, pod: u11, cid: c11},
		{file: "lookalike-nested-in-container", pod: u1, cid: c1}, // the outer pod, never the nested fake
		// A kubelet with a --cgroup-root is not found by an agent told the default, nor the reverse.
		{file: "cgroup-root-systemd-kubelet-slice"},
		{file: "cgroup-root-cgroupfs-custom"},
		{file: "cgroupfs-v2-burstable", cgroupRoot: "/custom"},
		{file: "host-process-v1-hybrid"},
		{file: "lookalike-user-delegated"},
		{file: "lookalike-pod-outside-kubepods"},
		{file: "lookalike-systemd-outside-kubepods"},
		{file: "lookalike-bad-uid"},
		{file: "lookalike-static-pod-hash"},
		{file: "conflict-v1-two-pods"},
		{file: "conflict-v1-two-containers"},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		seen[tc.file] = true
		t.Run(tc.file+"@"+tc.cgroupRoot, func(t *testing.T) {
			content, err := os.ReadFile(filepath.Join("testdata", tc.file+".cgroup"))
			if err != nil {
				t.Fatal(err)
			}
			root := tc.cgroupRoot
			if root == "" {
				root = "/"
			}
			pod, cid, ok := ParseCgroupUnder(content, root)
			if tc.pod == "" {
				if ok {
					t.Fatalf("accepted as pod %s container %s, want refused", pod, cid)
				}
				return
			}
			if !ok || pod != tc.pod || cid != tc.cid {
				_, _, err := parseCgroup(content, root)
				t.Fatalf("got pod %q container %q ok %v (%v), want pod %q container %q", pod, cid, ok, err, tc.pod, tc.cid)
			}
			if root == "/" {
				if p, c, ok := ParseCgroup(content); !ok || p != pod || c != cid {
					t.Fatalf("ParseCgroup disagrees with ParseCgroupUnder(\"/\")")
				}
			}
		})
	}
	files, _ := filepath.Glob("testdata/*.cgroup")
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".cgroup"); !seen[name] {
			t.Errorf("testdata/%s.cgroup has no case", name)
		}
	}
}

func kindNodeID(t *testing.T) string {
	b, err := os.ReadFile("testdata/kind-v1-node-in-docker.cgroup")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "/docker/")
	id, _, _ := strings.Cut(rest, "/")
	return id
}

// TestParseCgroupEdges covers what the captures do not: malformed files and near misses.
func TestParseCgroupEdges(t *testing.T) {
	const (
		uid = "eee65f53-e942-41ce-9021-1670eae679f0"
		cid = "adfa36d0840164709ab7f3f386d0cd566647b5aa666347428c3dd46c036bb3a6"
	)
	tests := []struct {
		name, content, pod, cid string
	}{
		{"pod level only", "0::/kubepods/besteffort/pod" + uid + "\n", uid, ""},
		{"unknown child of pod", "0::/kubepods/besteffort/pod" + uid + "/sandbox\n", uid, ""},
		{"deeper nesting ignored", "0::/kubepods/pod" + uid + "/" + cid + "/a/b\n", uid, cid},
		{"no trailing newline", "0::/kubepods/pod" + uid + "/" + cid, uid, cid},
		{"colon in a name", "0::/kubepods/pod" + uid + "/" + cid + "/x:y\n", uid, cid},
		{"cri-o with cgroupfs", "0::/kubepods/pod" + uid + "/crio-" + cid + "\n", uid, cid},
		{"short container id", "0::/kubepods/pod" + uid + "/" + cid[:12] + "\n", uid, ""},
		{"upper-case uid", "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid + "\n", "", ""},
		{"systemd uid with dashes", "0::/kubepods.slice/kubepods-pod" + uid + ".slice\n", "", ""},
		{"cgroupfs uid with underscores", "0::/kubepods/pod" + strings.ReplaceAll(uid, "-", "_") + "\n", "", ""},
		{"systemd slice not extending parent", "0::/kubepods.slice/other-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice\n", "", ""},
		{"systemd qos slice only", "0::/kubepods.slice/kubepods-besteffort.slice\n", "", ""},
		{"kubepods itself", "0::/kubepods\n", "", ""},
		{"qos itself", "0::/kubepods/burstable\n", "", ""},
		{"relative, other tree", "0::/../../../system.slice/pod" + uid + "/" + cid + "\n", "", ""},
		{"relative, same pod", "0::/../" + cid + "\n", "", ""},
		{"relative, user's delegated tree", "0::/../../../../user.slice/user-1000.slice/user@1000.service/app.slice/kubepods/besteffort/pod" + uid + "/" + cid + "\n", "", ""},
		{"relative, systemd user slice", "0::/../../../user.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice\n", "", ""},
		{"dotdot inside", "0::/kubepods/../kubepods/pod" + uid + "\n", "", ""},
		{"removed cgroup", "0::/kubepods/pod" + uid + "/" + cid + " (deleted)\n", "", ""},
		{"empty", "", "", ""},
		{"garbage", "hello\n", "", ""},
		{"no hierarchy id", ":cpu:/kubepods/pod" + uid + "\n", "", ""},
		{"relative path without slash", "0::kubepods/pod" + uid + "\n", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod, c, ok := ParseCgroup([]byte(tc.content))
			if tc.pod == "" {
				if ok {
					t.Fatalf("accepted as pod %s container %s", pod, c)
				}
				return
			}
			if !ok || pod != tc.pod || c != tc.cid {
				t.Fatalf("got %q %q %v, want %q %q", pod, c, ok, tc.pod, tc.cid)
			}
		})
	}
}

// FuzzParseCgroup: whatever the input, a pod it accepts is a dashed lower-case UUID and a
// container ID is 64 hex digits.
func FuzzParseCgroup(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.cgroup")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		pod, cid, ok := ParseCgroup(content)
		if !ok {
			return
		}
		if _, valid := podUIDFrom(pod, '-'); !valid {
			t.Fatalf("accepted pod uid %q", pod)
		}
		if cid != "" && !isHex(cid, 64) {
			t.Fatalf("accepted container id %q", cid)
		}
	})
}

func TestParseStat(t *testing.T) {
	// A command name may hold spaces and parentheses.
	line := "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456789 10000 200 18446744073709551615\n"
	st, err := parseStat([]byte(line))
	if err != nil || st.state != 'S' || st.startTime != 123456789 {
		t.Fatalf("got %+v %v", st, err)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 x S", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 notanumber"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}
