"""packaging/: the Kubernetes manifests hold what a node agent needs, the
systemd unit passes `systemd-analyze verify`, and redir-attach-pod finds a
pod's cgroup and network namespace under both kubelet cgroup drivers."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(ROOT, "packaging", "k8s")
UNIT = os.path.join(ROOT, "packaging", "systemd", "redird.service")


def load_yaml(name):
    try:
        import yaml
    except ImportError:
        raise unittest.SkipTest("python3-yaml is not installed (scripts/install-deps.sh installs it)")
    with open(os.path.join(K8S, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


class Manifests(unittest.TestCase):
    def setUp(self):
        docs = load_yaml("redird-daemonset.yaml") + load_yaml("redird-policies.yaml")
        self.by_kind = {d["kind"]: d for d in docs}

    def test_daemonset_runs_privileged_on_the_hosts_namespaces(self):
        ds = self.by_kind["DaemonSet"]
        spec = ds["spec"]["template"]["spec"]
        self.assertEqual(ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"])
        self.assertIs(spec["hostPID"], True, "pod cgroups and netns are found through the host's /proc")
        self.assertIs(spec["hostNetwork"], True, "redirects land on the node side of each pod's veth")
        (c,) = spec["containers"]
        self.assertIs(c["securityContext"]["privileged"], True)
        self.assertEqual(c["command"][0], "/usr/local/sbin/redird")

    def test_mounts_bpffs_cgroup_netns_state_and_policies(self):
        spec = self.by_kind["DaemonSet"]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        want = {"/sys/fs/bpf": "/sys/fs/bpf", "/sys/fs/cgroup": "/sys/fs/cgroup", "/run/netns": "/run/netns",
                "/var/lib/redir": "/var/lib/redir", "/run/redir": "/run/redir"}
        for path, host in want.items():
            self.assertIn(path, mounts, "no mount at " + path)
            self.assertEqual(volumes[mounts[path]["name"]]["hostPath"]["path"], host)
        # Pins made by the agent must be visible on the host (and survive the pod).
        self.assertEqual(mounts["/sys/fs/bpf"].get("mountPropagation"), "Bidirectional")
        # Namespaces named on the host after the pod started must show inside.
        self.assertIn(mounts["/run/netns"].get("mountPropagation"), ("HostToContainer", "Bidirectional"))
        cm = volumes[mounts["/etc/redir/policies"]["name"]]["configMap"]["name"]
        self.assertEqual(cm, self.by_kind["ConfigMap"]["metadata"]["name"])

    def test_configmap_policies_are_valid_policy_files(self):
        data = self.by_kind["ConfigMap"]["data"]
        self.assertTrue(data)
        redirctl = os.path.join(os.environ.get("REDIR_BUILD", os.path.join(ROOT, "build")), "tools", "redirctl",
                                "redirctl")
        tmp = tempfile.mkdtemp()
        try:
            for key, text in data.items():
                self.assertTrue(key.endswith(".json"), key)
                self.assertEqual(json.loads(text)["name"] + ".json", key)
                if os.access(redirctl, os.X_OK):
                    path = os.path.join(tmp, key)
                    with open(path, "w") as f:
                        f.write(text)
                    r = subprocess.run([redirctl, "policy", "validate", path], capture_output=True, text=True)
                    self.assertEqual(r.returncode, 0, key + ": " + r.stdout + r.stderr)
        finally:
            shutil.rmtree(tmp)


class SystemdUnit(unittest.TestCase):
    def setUp(self):
        with open(UNIT) as f:
            self.text = f.read()

    def setting(self, key):
        return [l.split("=", 1)[1] for l in self.text.splitlines() if l.startswith(key + "=")]

    def test_declares_what_the_agent_needs(self):
        self.assertEqual(self.setting("StateDirectory"), ["redir"])
        self.assertEqual(self.setting("RuntimeDirectory"), ["redir"])
        self.assertEqual(self.setting("RuntimeDirectoryPreserve"), ["yes"])
        self.assertEqual(self.setting("Restart"), ["always"])
        self.assertIn("/sys/fs/bpf", self.setting("RequiresMountsFor")[0])
        caps = set(self.setting("CapabilityBoundingSet")[0].split())
        self.assertTrue({"CAP_BPF", "CAP_NET_ADMIN"} <= caps, caps)
        start = self.setting("ExecStart")[0].split()
        self.assertEqual(start[0], "/usr/local/sbin/redird")
        self.assertEqual(start[start.index("--state-dir") + 1], "/var/lib/redir")
        self.assertEqual(start[start.index("--run-dir") + 1], "/run/redir")

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze is not installed")
        tmp = tempfile.mkdtemp()
        try:
            # verify insists the binary exists: point it at one that does.
            path = os.path.join(tmp, "redird.service")
            with open(path, "w") as f:
                f.write(self.text.replace("/usr/local/sbin/redird", "/bin/true"))
            r = subprocess.run([tool, "verify", path], capture_output=True, text=True)
            self.assertEqual((r.returncode, r.stderr.strip()), (0, ""), r.stdout + r.stderr)
        finally:
            shutil.rmtree(tmp)


class AttachPod(unittest.TestCase):
    """A fake kubelet cgroup tree in a temporary directory; our own pid as the pod's process."""

    UID = "0f3c2a1e-8d4b-4c6e-9a7f-123456789abc"
    SCRIPT = os.path.join(K8S, "redir-attach-pod")

    def setUp(self):
        self.root = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.root)

    def pod_dir(self, rel):
        d = os.path.join(self.root, rel)
        os.makedirs(os.path.join(d, "ctr1"))
        with open(os.path.join(d, "ctr1", "cgroup.procs"), "w") as f:
            f.write("%d\n" % os.getpid())
        return d

    def attach(self, *args):
        return subprocess.run([self.SCRIPT, "--cgroup-root", self.root, "--print"] + list(args),
                              capture_output=True, text=True)

    def test_cgroupfs_driver(self):
        d = self.pod_dir("kubepods/burstable/pod" + self.UID)
        self.pod_dir("kubepods/besteffort/pod11111111-2222-3333-4444-555555555555")
        r = self.attach("--uid", self.UID, "--policy", "inference-only")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ["redirctl", "attach", "--cgroup", d, "--netns",
                                            "/proc/%d/ns/net" % os.getpid(), "--policy", "inference-only"])

    def test_systemd_driver(self):
        d = self.pod_dir("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice"
                         % self.UID.replace("-", "_"))
        r = self.attach("--uid", self.UID, "--policy", "p")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--cgroup " + d + " ", r.stdout)

    def test_unknown_pod_and_bad_input_say_why(self):
        r = self.attach("--uid", self.UID, "--policy", "p")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no cgroup for pod UID", r.stderr)
        r = self.attach("--uid", "../../etc", "--policy", "p")
        self.assertIn("is not a pod UID", r.stderr)
        r = self.attach("--uid", self.UID)
        self.assertIn("no --policy", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
