#!/usr/bin/env python3
"""VM benchmark: VMI create -> guest answers HTTP through kumo, against the same guest started by a bare
qemu-system-x86_64 command line (the baseline, measured in the same run), and the node agent's resident
memory per running VM (QEMU excluded: it is a separate process).

Usage: scripts/bench-vm.sh [--runs N] [--vms N]   (needs root, and scripts/setup.sh done)
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("KUMO_CACHE", os.path.expanduser("~/.cache/kumo"))
KUMO = os.environ.get("KUMO_BIN", os.path.join(ROOT, "target", "release", "kumo"))
REGISTRY = "127.0.0.1:5000"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def wait_http(url, deadline):
    """The time the first HTTP answer arrives. A new attempt starts every 25 ms without waiting for earlier
    ones: a connection to a guest that is not up yet can hang (ARP, slirp) and would otherwise make the
    measurement as coarse as the timeout."""
    done = threading.Event()
    answered = []

    def attempt():
        if http_ok(url, 2.0) and not done.is_set():
            answered.append(time.monotonic())
            done.set()

    while time.monotonic() < deadline:
        threading.Thread(target=attempt, daemon=True).start()
        if done.wait(0.025):
            return answered[0]
    raise RuntimeError(f"no HTTP answer from {url}")


# The accelerator arguments kumo's agent uses (qemu/builder.rs), so the baseline runs under the same one.
ACCEL_ARGS = {"kvm": ["-accel", "kvm", "-cpu", "host"], "tcg": ["-accel", "tcg,thread=multi", "-cpu", "max"]}


def bare_qemu(workdir, accel):
    """Same guest, same memory, same accelerator, user-mode networking: process start -> first HTTP answer. The
    NIC has no option ROM, as kumo's has none: the baseline must not pay for an iPXE that kumo skips. It has the
    VGA device kumo gives every guest (KubeVirt's autoattachGraphicsDevice), whose BIOS takes part in booting."""
    overlay = os.path.join(workdir, "bare.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    os.path.join(CACHE, "images", "guest.qcow2"), overlay], check=True)
    port = free_port()
    t0 = time.monotonic()
    p = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35", *ACCEL_ARGS[accel], "-m", "256M",
                          "-nodefaults", "-nographic", "-display", "none", "-serial", "null",
                          "-drive", f"file={overlay},if=virtio,format=qcow2",
                          "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080",
                          "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci",
                          "-device", "VGA"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t1 = wait_http(f"http://127.0.0.1:{port}/", t0 + 120)
        return t1 - t0
    finally:
        p.kill()
        p.wait()
        os.unlink(overlay)


class Api:
    """Direct HTTPS calls with the kubeconfig's CA and token: the timed path starts at the API request, not at
    a kubectl process starting up."""

    def __init__(self, kubeconfig):
        import base64, ssl, yaml
        with open(kubeconfig) as f:
            kc = yaml.safe_load(f)
        self.server = kc["clusters"][0]["cluster"]["server"]
        ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        self.ctx = ssl.create_default_context(cadata=ca)
        self.token = kc["users"][0]["user"]["token"]

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.server + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.loads(r.read())


def vmi_object(name):
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "domain": {"memory": {"guest": "256Mi"},
                                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                            "interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 8080}]}],
                                            "rng": {}}},
                     "networks": [{"name": "default", "pod": {}}],
                     "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kumo/test-guest:latest"}}]}}


def kubectl(kubeconfig, *args, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True,
                          text=True, check=True).stdout


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_kumo(work, procs):
    """`kumo server --no-agent` and a `kumo agent` as its own process (so its CPU and memory are its own), both
    appended to `procs`; returns (kubeconfig, agent process) once the API answers."""
    port = free_port()
    data = os.path.join(work, "data")
    procs.append(subprocess.Popen([KUMO, "server", "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--no-agent"],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w")))
    kc = os.path.join(data, "kubeconfig")
    for _ in range(300):
        if os.path.exists(kc) and subprocess.run(["kubectl", "--kubeconfig", kc, "get", "--raw", "/readyz"],
                                                 capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    agent = start_agent(work, kc)
    procs.append(agent)
    return kc, agent


def start_agent(work, kc):
    """A `kumo agent` for the server of `kc`, its state in `work`/agent, its log appended to `work`/agent.log."""
    return subprocess.Popen([KUMO, "agent", "--kubeconfig", kc, "--state-dir", os.path.join(work, "agent"),
                             "--insecure-registry", REGISTRY, "--registry-mirror", f"quay.io={REGISTRY}"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "agent.log"), "a"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vms", type=int, default=4, help="guests running at once for the memory figure")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "vm.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kumo-bench-vm-")
    procs = []
    try:
        kc, agent = start_kumo(work, procs)
        time.sleep(2)
        # Warm the image cache once (a pull is not part of boot time on a node that has the image).
        kubectl(kc, "apply", "-f", "-", stdin=json.dumps(vmi_object("warm")))
        kubectl(kc, "wait", "vmi", "warm", "--for=condition=Ready", "--timeout=300s")
        kubectl(kc, "delete", "vmi", "warm", "--timeout=120s")
        accel = kubectl(kc, "get", "nodes", "-o", r"jsonpath={.items[0].metadata.labels.kumo\.dev/accel}").strip()
        if accel not in ACCEL_ARGS:
            raise RuntimeError(f"the node reports accelerator {accel!r}; expected kvm or tcg")

        bare, kumo = [], []
        api = Api(kc)
        vmis = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"
        for i in range(a.runs):
            b = bare_qemu(work, accel)
            bare.append(b)
            t0 = time.monotonic()
            api.call("POST", vmis, vmi_object(f"b{i}"))
            ip = ""
            while not ip and time.monotonic() < t0 + 120:
                got = api.call("GET", f"{vmis}/b{i}")
                ip = ((got.get("status") or {}).get("interfaces") or [{}])[0].get("ipAddress", "")
                if not ip:
                    time.sleep(0.02)
            if not ip:
                raise RuntimeError(f"VMI b{i} reported no IP address within 120 s")
            k = wait_http(f"http://{ip}:8080/", t0 + 180) - t0
            kumo.append(k)
            print(f"run {i + 1}: bare qemu {b:.2f} s, kumo {k:.2f} s, ratio {k / b:.3f}", flush=True)
            kubectl(kc, "delete", "vmi", f"b{i}", "--timeout=120s")

        # Agent memory per running VM: agent RSS idle vs with N guests.
        time.sleep(2)
        idle = rss_kib(agent.pid)
        for i in range(a.vms):
            kubectl(kc, "apply", "-f", "-", stdin=json.dumps(vmi_object(f"m{i}")))
        for i in range(a.vms):
            kubectl(kc, "wait", "vmi", f"m{i}", "--for=condition=Ready", "--timeout=300s")
        time.sleep(3)
        busy = rss_kib(agent.pid)
        per_vm = (busy - idle) / a.vms / 1024
        # Delete and wait, so the agent stops every guest before it is stopped itself.
        kubectl(kc, "delete", "vmi", *[f"m{i}" for i in range(a.vms)], "--timeout=300s")
        res = {
            "accelerator": accel,
            "boot_to_http_seconds": {"bare_qemu_median": statistics.median(bare), "kumo_median": statistics.median(kumo),
                                     "bare_qemu": bare, "kumo": kumo},
            "ratio_kumo_over_bare": statistics.median(kumo) / statistics.median(bare),
            "agent_rss_mib": {"idle": idle / 1024, f"with_{a.vms}_vms": busy / 1024, "per_vm": per_vm},
        }
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| accelerator (both) | {accel} |")
        print(f"| bare qemu start -> HTTP answer (median of {a.runs}) | {statistics.median(bare):.2f} s |")
        print(f"| kumo VMI create -> HTTP answer (median of {a.runs}) | {statistics.median(kumo):.2f} s |")
        print(f"| ratio kumo / bare | {res['ratio_kumo_over_bare']:.3f} |")
        print(f"| agent RSS idle / with {a.vms} VMs | {idle / 1024:.1f} / {busy / 1024:.1f} MiB |")
        print(f"| agent RSS per running VM (QEMU excluded) | {per_vm:.2f} MiB |")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
