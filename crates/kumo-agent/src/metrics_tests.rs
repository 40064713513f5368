use super::*;
use serde_json::json;

#[test]
fn proc_files_are_read_as_linux_writes_them() {
    let status = "Name:\tqemu-system-x86\nVmPeak:\t 1000 kB\nVmRSS:\t  204800 kB\nThreads:\t4\n";
    assert_eq!(resident_bytes(status), Some(204800 * 1024));
    assert_eq!(resident_bytes("Name:\tx\n"), None);
    // A thread name with a space and a parenthesis; utime 250 and stime 50 are fields 14 and 15.
    let stat = "4242 (CPU 0/TCG) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 123 0 0";
    assert_eq!(cpu_ticks(stat), Some(300));
    assert_eq!(cpu_ticks("garbage"), None);
    let dev = "Inter-|   Receive                                                |  Transmit\n \
               face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
               lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
               tap0:    1000      10    0    0    0     0          0         0     5000      40    0    0    0     0       0          0\n";
    let nic = tap_counters(dev, "tap0", "default").expect("tap0 is listed");
    // What the tap transmitted, the guest received.
    assert_eq!((nic.rx_bytes, nic.rx_packets, nic.tx_bytes, nic.tx_packets), (5000, 40, 1000, 10));
    assert_eq!(nic.interface, "default");
    assert!(tap_counters(dev, "tap1", "default").is_none());
}

#[test]
fn qmp_answers_name_drives_and_vcpu_threads() {
    let stats = json!([
        {"device": "", "node-name": "drive0", "qdev": "/machine/peripheral/disk-containerdisk/virtio-backend",
         "stats": {"rd_bytes": 4096, "wr_bytes": 512, "rd_operations": 3, "wr_operations": 1}},
        {"device": "", "qdev": "disk-cloudinitdisk", "stats": {"rd_bytes": 10}},
        {"device": "", "qdev": "/machine/unattached/device[5]", "stats": {"rd_bytes": 1}}
    ]);
    let d = drives(&stats);
    assert_eq!(d.len(), 2, "a device that is not a VMI disk is left out: {d:?}");
    assert_eq!(
        d[0],
        Drive { drive: "containerdisk".into(), read_bytes: 4096, write_bytes: 512, read_ops: 3, write_ops: 1 }
    );
    assert_eq!((d[1].drive.as_str(), d[1].read_bytes, d[1].write_ops), ("cloudinitdisk", 10, 0));
    let cpus = json!([{"cpu-index": 0, "thread-id": 100}, {"cpu-index": 1, "thread-id": 101}, {"cpu-index": 2}]);
    assert_eq!(vcpu_threads(&cpus), vec![(0, 100), (1, 101)]);
}

fn vmi(name: &str, phase: &str, annotations: serde_json::Value) -> VirtualMachineInstance {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "ns1", "annotations": annotations},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": phase, "guestOSInfo": {"name": "Debian GNU/Linux", "versionId": "12",
                   "kernelRelease": "6.1.0", "machine": "x86_64"}}
    }))
    .expect("a VMI")
}

#[test]
fn kubevirt_names_and_labels() {
    let running = Sample {
        namespace: "ns1".into(),
        name: "a".into(),
        info: info_of(&vmi("a", "Running", json!({"vm.kubevirt.io/os": "debian12"}))),
        usage: Some(Usage {
            resident_bytes: Some(1 << 20),
            vcpu_seconds: vec![(0, 1.5)],
            nics: vec![Nic { interface: "default".into(), rx_bytes: 7, tx_bytes: 8, rx_packets: 1, tx_packets: 2 }],
            drives: vec![Drive { drive: "containerdisk".into(), read_bytes: 9, ..Default::default() }],
        }),
    };
    let scheduled = Sample {
        namespace: "ns1".into(),
        name: "b".into(),
        info: info_of(&vmi("b", "Scheduled", json!({}))),
        usage: None,
    };
    let text = encode("node-1", &[running, scheduled]);
    let has = |needle: &str| assert!(text.contains(needle), "missing {needle} in\n{text}");
    has(
        r#"kubevirt_vmi_info{node="node-1",namespace="ns1",name="a",phase="running",os="debian12",workload="<none>",flavor="<none>",instance_type="<none>",preference="<none>",guest_os_kernel_release="6.1.0",guest_os_machine="x86_64",guest_os_arch="amd64",guest_os_name="Debian GNU/Linux",guest_os_version_id="12",evictable="false",outdated="false"} 1"#,
    );
    has(r#"kubevirt_vmi_info{node="node-1",namespace="ns1",name="b",phase="scheduled""#);
    has(r#"kubevirt_vmi_memory_resident_bytes{node="node-1",namespace="ns1",name="a"} 1048576"#);
    has(r#"kubevirt_vmi_vcpu_seconds_total{node="node-1",namespace="ns1",name="a",id="0",state="running"} 1.5"#);
    has(r#"kubevirt_vmi_network_receive_bytes_total{node="node-1",namespace="ns1",name="a",interface="default"} 7"#);
    has(r#"kubevirt_vmi_network_transmit_packets_total{node="node-1",namespace="ns1",name="a",interface="default"} 2"#);
    has(
        r#"kubevirt_vmi_storage_read_traffic_bytes_total{node="node-1",namespace="ns1",name="a",drive="containerdisk"} 9"#,
    );
    has("# TYPE kubevirt_vmi_vcpu_seconds counter");
    assert!(!text.contains(r#"name="b",id"#), "a VMI without a guest has no usage series:\n{text}");
    // A VMI no longer on the node has no series at all: each scrape starts from nothing.
    let later = encode("node-1", &[]);
    assert!(!later.contains("ns1"), "{later}");
}
