#!/usr/bin/env python3
"""Storage benchmark, each figure a ratio against a baseline measured in the same run:

- import throughput: a DataVolume importing an image from a local HTTP server, against `qemu-img convert` of
  the same URL (QEMU's curl driver) into a local file;
- the importer's resident memory while it imports (the node agent, run as its own process here);
- guest sequential write and read throughput on a `local` claim, against the same image file given to a bare
  `qemu-system-x86_64` (same guest, memory, accelerator), medians of N runs each. The guest measures itself: a
  cloud-init script times `dd` on the disk and serves the result over HTTP.

Usage: scripts/bench-storage.sh [--image-mib N] [--import-runs N] [--io-runs N] [--io-mib N]   (root; setup done)
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vm import ACCEL_ARGS, CACHE, ROOT, Api, free_port, kubectl, rss_kib, start_kumo  # noqa: E402

NS = "/api/v1/namespaces/default"
DVS = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes"
VMIS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"


def make_image(work, mib):
    """A qcow2 holding `mib` MiB of random data (nothing a sparse copy could skip)."""
    raw, img = os.path.join(work, "big.raw"), os.path.join(work, "big.qcow2")
    with open(raw, "wb") as f, open("/dev/urandom", "rb") as r:
        for _ in range(mib):
            f.write(r.read(1 << 20))
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img], check=True)
    os.unlink(raw)
    return img


def baseline_import(url, work):
    """qemu-img convert of the URL. Its curl driver now and then stalls for good (seen with two different
    servers): such a try is dropped after 5 minutes and made again."""
    out = os.path.join(work, "baseline.qcow2")
    for _ in range(3):
        t0 = time.monotonic()
        try:
            subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", url, out], check=True, timeout=300)
        except subprocess.TimeoutExpired:
            print("qemu-img convert of the URL stalled; trying again", flush=True)
            continue
        t = time.monotonic() - t0
        os.unlink(out)
        return t
    raise RuntimeError("qemu-img convert of the URL stalled three times")


def kumo_import(api, agent_pid, name, url, size):
    """DataVolume create -> Succeeded, with the agent's peak RSS sampled meanwhile."""
    dv = {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
          "metadata": {"name": name, "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}},
          "spec": {"source": {"http": {"url": url}}, "storage": {"resources": {"requests": {"storage": size}}}}}
    peak = [rss_kib(agent_pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.append(rss_kib(agent_pid))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    api.call("POST", DVS, dv)
    while True:
        st = api.call("GET", f"{DVS}/{name}").get("status") or {}
        if st.get("phase") == "Succeeded":
            break
        if st.get("restartCount", 0) > 0:
            raise RuntimeError(f"import {name} failed: {st}")
        if time.monotonic() > t0 + 1800:
            raise RuntimeError(f"import {name} took more than 30 minutes: {st}")
        time.sleep(0.05)
    t = time.monotonic() - t0
    done.set()
    return t, max(peak)


def io_script(mib):
    """The guest's cloud-init script: times a sequential write (fsync'd) and a cold read of the disk whose serial
    is `bench`, and serves "write_seconds read_seconds" at /io.txt."""
    return f"""#!/bin/sh
for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = bench ] && dev=/dev/${{d##*/}}; done
now() {{ cut -d' ' -f1 /proc/uptime; }}
a=$(now); dd if=/dev/zero of=$dev bs=1M count={mib} conv=fsync 2>/dev/null; b=$(now)
sync; echo 3 > /proc/sys/vm/drop_caches
c=$(now); dd if=$dev of=/dev/null bs=1M count={mib} 2>/dev/null; e=$(now)
echo "$a $b $c $e" | awk '{{print $2-$1, $4-$3}}' > /www/io.txt
"""


def wait_result(url, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    w, rd = r.read().decode().split()
                    return float(w), float(rd)
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no benchmark result at {url}")


def kumo_io(api, name, script):
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 1,
                    "domain": {"memory": {"guest": "256Mi"},
                               "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                                     {"name": "bench", "serial": "bench", "disk": {"bus": "virtio"}},
                                                     {"name": "ci", "disk": {"bus": "virtio"}}],
                                           "interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 8080}]}],
                                           "rng": {}}},
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/kumo/test-guest:latest"}},
                                {"name": "bench", "persistentVolumeClaim": {"claimName": "bench"}},
                                {"name": "ci", "cloudInitNoCloud": {"userData": script}}]}}
    api.call("POST", VMIS, vmi)
    t0 = time.monotonic()
    ip = ""
    while not ip and time.monotonic() < t0 + 300:
        st = api.call("GET", f"{VMIS}/{name}").get("status") or {}
        ip = (st.get("interfaces") or [{}])[0].get("ipAddress", "")
        time.sleep(0.2)
    return wait_result(f"http://{ip}:8080/io.txt", t0 + 600)


def bare_io(work, accel, image, script):
    """The same guest and script on a bare QEMU, with the claim's image file as its disk."""
    ci = os.path.join(work, "cidata")
    os.makedirs(ci, exist_ok=True)
    with open(os.path.join(ci, "user-data"), "w") as f:
        f.write(script)
    with open(os.path.join(ci, "meta-data"), "w") as f:
        f.write("instance-id: bench\nlocal-hostname: bench\n")
    iso = os.path.join(work, "cidata.iso")
    subprocess.run(["genisoimage", "-quiet", "-o", iso, "-V", "cidata", "-J", "-r", ci], check=True)
    overlay = os.path.join(work, "bare.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    os.path.join(CACHE, "images", "guest.qcow2"), overlay], check=True)
    port = free_port()
    p = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35", *ACCEL_ARGS[accel], "-m", "256M",
                          "-nodefaults", "-nographic", "-display", "none", "-serial", "null",
                          # bootindex: SeaBIOS would otherwise try the bench disk first and find nothing to boot
                          "-drive", f"file={overlay},if=none,id=root,format=qcow2",
                          "-device", "virtio-blk-pci,drive=root,bootindex=1",
                          "-drive", f"file={image},if=none,id=bench,format=qcow2",
                          "-device", "virtio-blk-pci,drive=bench,serial=bench",
                          "-drive", f"file={iso},if=virtio,format=raw,readonly=on",
                          "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080",
                          "-device", "virtio-net-pci,netdev=n0,romfile=", "-device", "virtio-rng-pci"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_result(f"http://127.0.0.1:{port}/io.txt", time.monotonic() + 600)
    finally:
        p.kill()
        p.wait()
        os.unlink(overlay)


def wait_gone(kc, name):
    kubectl(kc, "delete", "vmi", name, "--timeout=120s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-mib", type=int, default=2048, help="data in the imported image")
    ap.add_argument("--import-runs", type=int, default=3)
    ap.add_argument("--io-runs", type=int, default=5)
    ap.add_argument("--io-mib", type=int, default=256, help="MiB written and read by the guest per run")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "storage.json"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kumo-bench-storage-", dir="/var/tmp")
    procs = []
    try:
        print(f"making a qcow2 with {a.image_mib} MiB of random data...", flush=True)
        image = make_image(work, a.image_mib)
        http_port = free_port()
        # busybox httpd serves ranges fast; QEMU's curl driver reads the baseline with many of them.
        procs.append(subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{http_port}", "-h", work]))
        url = f"http://127.0.0.1:{http_port}/big.qcow2"
        kc, agent = start_kumo(work, procs)
        time.sleep(3)
        api = Api(kc)
        accel = kubectl(kc, "get", "nodes", "-o", r"jsonpath={.items[0].metadata.labels.kumo\.dev/accel}").strip()
        size = f"{a.image_mib + 64}Mi"
        base, kumo, peaks = [], [], []
        idle = rss_kib(agent.pid)
        for i in range(a.import_runs):
            b = baseline_import(url, work)
            k, peak = kumo_import(api, agent.pid, f"imp{i}", url, size)
            base.append(b)
            kumo.append(k)
            peaks.append(peak)
            print(f"import {i + 1}: qemu-img convert {b:.1f} s, kumo DataVolume {k:.1f} s, throughput ratio {b / k:.3f}, "
                  f"agent peak RSS {peak / 1024:.1f} MiB", flush=True)
            kubectl(kc, "delete", "dv", f"imp{i}", "--timeout=300s")

        # Guest I/O: the claim is made once (by the first VMI); each kumo run boots a fresh VMI on it, each bare
        # run a bare QEMU on the same image file once no VMI has it open.
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "bench"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{a.io_mib + 64}Mi"}}}}
        api.call("POST", f"{NS}/persistentvolumeclaims", claim)
        script = io_script(a.io_mib)
        kumo_w, kumo_r, bare_w, bare_r = [], [], [], []
        pv_image = None
        for i in range(a.io_runs):
            w, r = kumo_io(api, f"io{i}", script)
            wait_gone(kc, f"io{i}")
            if pv_image is None:
                pv = api.call("GET", f"{NS}/persistentvolumeclaims/bench")["spec"]["volumeName"]
                pv_image = os.path.join(work, "agent", "volumes", pv, "disk.qcow2")
            bw, br = bare_io(work, accel, pv_image, script)
            kumo_w.append(w); kumo_r.append(r); bare_w.append(bw); bare_r.append(br)
            print(f"io {i + 1}: write kumo {w:.2f} s / bare {bw:.2f} s, read kumo {r:.2f} s / bare {br:.2f} s", flush=True)
        mib = a.io_mib
        med = statistics.median
        res = {
            "accelerator": accel,
            "import": {"image_mib": a.image_mib, "qemu_img_convert_seconds": base, "kumo_seconds": kumo,
                       "throughput_ratio_median": med(base) / med(kumo),
                       "kumo_mib_per_s_median": a.image_mib / med(kumo),
                       "qemu_img_mib_per_s_median": a.image_mib / med(base)},
            "importer_rss_mib": {"idle": idle / 1024, "peak_per_run": [p / 1024 for p in peaks], "peak": max(peaks) / 1024},
            "guest_io": {"mib": mib, "kumo_write_s": kumo_w, "bare_write_s": bare_w, "kumo_read_s": kumo_r,
                         "bare_read_s": bare_r,
                         "write_ratio_median": med(bare_w) / med(kumo_w), "read_ratio_median": med(bare_r) / med(kumo_r)},
        }
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| accelerator (both) | {accel} |")
        print(f"| import of {a.image_mib} MiB: qemu-img convert of the URL / kumo DataVolume (median of {a.import_runs}) | "
              f"{med(base):.1f} s / {med(kumo):.1f} s |")
        print(f"| import throughput ratio kumo / qemu-img | {res['import']['throughput_ratio_median']:.3f} |")
        print(f"| importer (agent) RSS idle / peak while importing | {idle / 1024:.1f} / {max(peaks) / 1024:.1f} MiB |")
        print(f"| guest write {mib} MiB, fsync'd: bare / kumo (median of {a.io_runs}) | {med(bare_w):.2f} s / {med(kumo_w):.2f} s |")
        print(f"| guest read {mib} MiB, cold: bare / kumo (median of {a.io_runs}) | {med(bare_r):.2f} s / {med(kumo_r):.2f} s |")
        print(f"| guest throughput ratio kumo / bare: write, read | {res['guest_io']['write_ratio_median']:.3f}, "
              f"{res['guest_io']['read_ratio_median']:.3f} |")
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
