#!/usr/bin/env python3
"""VM groups benchmark, each figure against a baseline measured in the same run:

- rollout time: a VirtualMachinePool of N guests (readiness-probed over HTTP) rolls from v1 to v2 with
  maxSurge 2 / maxUnavailable 0, against stopping and starting the same VMs one by one (each waited for until
  Ready again) with the pool paused;
- probe cost: the node agent's CPU and resident memory (it runs as its own process here) with M guests each
  readiness-probed over HTTP every second, against the same number of guests without probes; reported per guest.

Usage: scripts/bench-groups.sh [--pool N] [--probed M] [--window SECONDS]   (root; setup done)
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vm import ROOT, Api, rss_kib, start_agent, start_kumo  # noqa: E402

NS = "/apis/{group}/namespaces/default/{plural}"
POOLS = NS.format(group="pool.kubevirt.io/v1beta1", plural="virtualmachinepools")
VMS = NS.format(group="kubevirt.io/v1", plural="virtualmachines")
VMIS = NS.format(group="kubevirt.io/v1", plural="virtualmachineinstances")
VMIRS = NS.format(group="kubevirt.io/v1", plural="virtualmachineinstancereplicasets")
SUB = NS.format(group="subresources.kubevirt.io/v1", plural="virtualmachines")
HZ = os.sysconf("SC_CLK_TCK")


def vmi_spec(version, probe):
    spec = {"terminationGracePeriodSeconds": 2,
            # A small CPU request: KubeVirt's default (100m) would fit only 20 guests on a 2-core node.
            "domain": {"memory": {"guest": "128Mi"}, "resources": {"requests": {"cpu": "20m"}},
                       "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                             {"name": "ci", "disk": {"bus": "virtio"}}],
                                   "interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 8080}]}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kumo/test-guest:latest"}},
                        {"name": "ci", "cloudInitNoCloud": {
                            "userData": f"#!/bin/sh\necho version={version} > /www/userdata.txt\n"}}]}
    if probe:
        spec["readinessProbe"] = {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 1,
                                  "timeoutSeconds": 5, "failureThreshold": 3}
    return spec


def pool(n, version):
    labels = {"app": "bench"}
    return {"apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool", "metadata": {"name": "bench"},
            "spec": {"replicas": n, "selector": {"matchLabels": labels}, "maxUnavailable": 0,
                     "kumo": {"maxSurge": 2, "progressDeadlineSeconds": 1800},
                     "virtualMachineTemplate": {"metadata": {"labels": labels}, "spec": {
                         "runStrategy": "Always",
                         "template": {"metadata": {"labels": labels}, "spec": vmi_spec(version, True)}}}}}


def replica_set(name, n, probe):
    labels = {"rs": name}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": n, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": vmi_spec("v1", probe)}}}


def wait(what, check, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except urllib.error.URLError:
            pass
        time.sleep(every)
    raise RuntimeError(f"timed out ({timeout} s) waiting for {what}")


def rolled_out(api, n):
    p = api.call("GET", f"{POOLS}/bench")
    k = p.get("status", {}).get("kumo", {})
    return (k.get("observedGeneration", 0) >= p["metadata"]["generation"] and k.get("updatedReplicas") == n
            and k.get("availableReplicas") == n and p["status"].get("replicas") == n)


def vm_ready(api, name):
    return api.call("GET", f"{VMS}/{name}").get("status", {}).get("ready") is True


def gone(api, path):
    try:
        api.call("GET", path)
        return False
    except urllib.error.HTTPError as e:
        return e.code == 404


def bench_rollout(api, n):
    api.call("POST", POOLS, pool(n, "v1"))
    print(f"rollout: waiting for a pool of {n} guests to be Ready...", flush=True)
    wait("the pool", lambda: rolled_out(api, n), 900)
    t0 = time.monotonic()
    p = api.call("GET", f"{POOLS}/bench")
    p["spec"]["virtualMachineTemplate"]["spec"]["template"]["spec"] = vmi_spec("v2", True)
    api.call("PUT", f"{POOLS}/bench", p)
    wait("the rollout", lambda: rolled_out(api, n), 1800)
    rollout = time.monotonic() - t0
    print(f"rollout: {n} guests v1 -> v2 with maxSurge 2 in {rollout:.1f} s", flush=True)
    # The baseline: the same VMs stopped and started one by one, the pool paused so it leaves them alone.
    p = api.call("GET", f"{POOLS}/bench")
    p["spec"]["paused"] = True
    api.call("PUT", f"{POOLS}/bench", p)
    names = sorted(v["metadata"]["name"] for v in api.call("GET", VMS)["items"])
    t0 = time.monotonic()
    for name in names:
        api.call("PUT", f"{SUB}/{name}/stop", {})
        wait(f"{name} to stop", lambda: gone(api, f"{VMIS}/{name}"), 300)
        api.call("PUT", f"{SUB}/{name}/start", {})
        wait(f"{name} to be Ready", lambda: vm_ready(api, name), 300)
    one_by_one = time.monotonic() - t0
    print(f"rollout baseline: the same {n} VMs stopped and started one by one in {one_by_one:.1f} s", flush=True)
    api.call("DELETE", f"{POOLS}/bench")
    wait("the pool's guests to go", lambda: not api.call("GET", VMIS)["items"], 600)
    return {"guests": n, "rollout_s": round(rollout, 1), "one_by_one_s": round(one_by_one, 1),
            "ratio": round(rollout / one_by_one, 3)}


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def agent_cost(api, agent_pid, name, m, probe, window):
    """Agent CPU (share of one core) and RSS over `window` seconds with `m` guests running (probed or not)."""
    api.call("POST", VMIRS, replica_set(name, m, probe))
    print(f"probe cost: {m} guests {'with' if probe else 'without'} probes booting...", flush=True)

    def running():
        items = api.call("GET", f"{VMIS}?labelSelector=rs%3D{name}")["items"]
        return sum(1 for i in items if i.get("status", {}).get("phase") == "Running") == m

    # Both phases wait alike: all guests Running, then a while for boots to settle. (Under TCG, 50 guests keep
    # 2 cores busy, so some probes time out; a probe costs the agent the same whatever its answer.)
    wait(f"{m} guests", running, 1800, every=2)
    time.sleep(90)
    t0, c0 = time.monotonic(), cpu_ticks(agent_pid)
    rss = []
    while time.monotonic() - t0 < window:
        rss.append(rss_kib(agent_pid))
        time.sleep(1)
    cpu = (cpu_ticks(agent_pid) - c0) / HZ / (time.monotonic() - t0)
    rss_mib = sorted(rss)[len(rss) // 2] / 1024
    print(f"probe cost: agent CPU {cpu * 100:.2f}% of a core, RSS {rss_mib:.1f} MiB "
          f"({'probed' if probe else 'unprobed'})", flush=True)
    api.call("DELETE", f"{VMIRS}/{name}")
    wait("the guests to go", lambda: not api.call("GET", f"{VMIS}?labelSelector=rs%3D{name}")["items"], 900, every=2)
    return cpu, rss_mib


def node_ready(api):
    node = api.call("GET", "/api/v1/nodes")["items"][0]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=8, help="guests in the rolled-out pool")
    ap.add_argument("--probed", type=int, default=50, help="guests probed every second")
    ap.add_argument("--window", type=int, default=60, help="seconds the agent's CPU is measured over")
    ap.add_argument("--skip-rollout", action="store_true")
    ap.add_argument("--skip-probes", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "groups.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kumo-bench-groups-", dir="/var/tmp")
    procs = []
    result = {}
    try:
        kc, agent = start_kumo(work, procs)
        api = Api(kc)
        wait("the node", lambda: api.call("GET", "/api/v1/nodes")["items"], 60)
        if not a.skip_rollout:
            result["rollout"] = bench_rollout(api, a.pool)
        if not a.skip_probes:
            # Each phase has an agent of its own, started afresh, so the memory one phase freed does not
            # flatter (or burden) the other.
            figures = []
            for name, probe in (("plain", False), ("probed", True)):
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=60)
                agent = start_agent(work, kc)
                procs.append(agent)
                wait("the node to be Ready", lambda: node_ready(api), 120)
                figures.append(agent_cost(api, agent.pid, name, a.probed, probe, a.window))
            (base_cpu, base_rss), (cpu, rss) = figures
            per_cpu = (cpu - base_cpu) / a.probed
            per_rss = (rss - base_rss) * 1024 / a.probed
            result["probes"] = {"guests": a.probed, "period_s": 1, "window_s": a.window,
                                "agent_cpu_unprobed": round(base_cpu, 4), "agent_cpu_probed": round(cpu, 4),
                                "agent_rss_mib_unprobed": round(base_rss, 1), "agent_rss_mib_probed": round(rss, 1),
                                "cpu_per_guest_pct_of_core": round(per_cpu * 100, 4),
                                "rss_per_guest_kib": round(per_rss, 1)}
            print(f"probe cost per probed guest: {per_cpu * 100:.3f}% of a core, {per_rss:.1f} KiB", flush=True)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(result, indent=2))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["pkill", "-f", f"qemu-system.*{work}"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
