"""Plots `kumo-bench cluster` results: API latency p99 per verb class and the server's memory and store size
(etcd's members' on the etcd backend), against cluster size. Usage: plot_cluster.py RESULTS.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        r = json.load(f)
    steps = r["steps"]
    if not steps:
        sys.exit("no steps to plot")
    labels = [f'{s["nodes"] // 1000 if s["nodes"] >= 1000 else s["nodes"]}{"k" if s["nodes"] >= 1000 else ""} nodes\n{s["vmis"]:,} VMIs' for s in steps]
    x = range(len(steps))
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(14, 5.5))
    for key, name, slo in [
        ("mutating", "mutating", 1000),
        ("get", "get", 1000),
        ("list_namespaced", "list (namespace)", 5000),
        ("list_cluster", "list (cluster)", 30000),
    ]:
        lat.plot(x, [s["api"][key]["p99_ms"] for s in steps], marker="o", label=f"{name} p99 (SLO {slo} ms)")
    lat.plot(x, [s["vmi_startup"]["p99_ms"] for s in steps], marker="s", label="VMI create→Running p99 (SLO 5000 ms)")
    lat.set_yscale("log")
    lat.set_ylabel("milliseconds (log)")
    lat.set_title(f'API latency p99 — kumo server, {r["store"]} store, {r["environment"]["cpus"]} cores')
    lat.set_xticks(list(x), labels, fontsize=8)
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize=8)
    mib = 1 << 20
    mem.plot(x, [s["server"]["rss_bytes"] / mib for s in steps], marker="o", label="API server RSS")
    on_etcd = all(s.get("etcd") for s in steps)
    if on_etcd:
        # The store is etcd's: its members' files and memory, not the API server's data directory.
        mem.plot(x, [s["etcd"]["data_bytes"] / mib for s in steps], marker="o", label="etcd data on disk (all members)")
        mem.plot(x, [s["etcd"]["rss_bytes"] / mib for s in steps], marker="o", label="etcd RSS (all members)")
    else:
        mem.plot(x, [s["server"]["store_bytes"] / mib for s in steps], marker="o", label="store on disk")
    mem.set_ylabel("MiB")
    cpu = mem.twinx()
    cpu.plot(x, [s["server"]["cpu_cores"] for s in steps], marker="^", color="gray", linestyle="--", label="server CPU (cores)")
    if on_etcd:
        cpu.plot(x, [s["etcd"]["cpu_cores"] for s in steps], marker="v", color="black", linestyle=":", label="etcd CPU (cores)")
    cpu.set_ylabel("cores")
    mem.set_title("memory, store size and CPU (SIMULATED nodes)")
    mem.set_xticks(list(x), labels, fontsize=8)
    mem.grid(True, alpha=0.3)
    lines = mem.get_legend_handles_labels()
    more = cpu.get_legend_handles_labels()
    mem.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
