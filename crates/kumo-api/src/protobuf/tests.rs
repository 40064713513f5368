use super::*;
use serde_json::json;

/// A tiny protobuf encoder for building test bodies.
struct Enc(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Enc {
    fn new() -> Self {
        Enc(Vec::new())
    }
    fn key(mut self, num: u32, wire: u8) -> Self {
        put_varint(&mut self.0, u64::from(num) << 3 | u64::from(wire));
        self
    }
    fn varint(self, num: u32, v: u64) -> Self {
        let mut e = self.key(num, 0);
        put_varint(&mut e.0, v);
        e
    }
    fn int(self, num: u32, v: i64) -> Self {
        self.varint(num, v as u64)
    }
    fn bytes(self, num: u32, b: &[u8]) -> Self {
        let mut e = self.key(num, 2);
        put_varint(&mut e.0, b.len() as u64);
        e.0.extend_from_slice(b);
        e
    }
    fn str(self, num: u32, s: &str) -> Self {
        self.bytes(num, s.as_bytes())
    }
    fn msg(self, num: u32, m: Enc) -> Self {
        self.bytes(num, &m.0)
    }
    fn entry(self, num: u32, k: &str, v: &[u8]) -> Self {
        self.msg(num, Enc::new().str(1, k).bytes(2, v))
    }
    fn fixed32(self, num: u32, v: u32) -> Self {
        let mut e = self.key(num, 5);
        e.0.extend_from_slice(&v.to_le_bytes());
        e
    }
    fn fixed64(self, num: u32, v: u64) -> Self {
        let mut e = self.key(num, 1);
        e.0.extend_from_slice(&v.to_le_bytes());
        e
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// A full body: magic + runtime.Unknown envelope around `object`.
fn body(api_version: &str, kind: &str, object: Enc) -> Vec<u8> {
    envelope(Enc::new().msg(1, Enc::new().str(1, api_version).str(2, kind)).msg(2, object).str(3, "").str(4, ""))
}

fn envelope(unknown: Enc) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend_from_slice(&unknown.0);
    out
}

/// A meta/v1 Time or MicroTime message.
fn time(seconds: i64, nanos: i32) -> Enc {
    Enc::new().int(1, seconds).int(2, i64::from(nanos))
}

/// ObjectMeta as Go's generated marshaller writes it: every non-pointer field, empty or not.
fn meta(name: &str, namespace: &str) -> Enc {
    Enc::new()
        .str(1, name)
        .str(2, "")
        .str(3, namespace)
        .str(4, "")
        .str(5, "")
        .str(6, "")
        .varint(7, 0)
        .msg(8, Enc::new())
}

const T0: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

#[test]
fn configmap_with_labels_data_and_binary_data() {
    let object = Enc::new()
        .msg(1, meta("cm", "default").entry(11, "app", b"web").entry(11, "tier", b""))
        .entry(2, "a", b"1")
        .entry(2, "b", b"")
        .entry(3, "bin", &[0, 1, 2, 255])
        .varint(4, 0);
    let got = decode(&body("v1", "ConfigMap", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "default", "creationTimestamp": null,
                         "labels": {"app": "web", "tier": ""}},
            "data": {"a": "1", "b": ""},
            "binaryData": {"bin": "AAEC/w=="},
            "immutable": false
        })
    );
}

#[test]
fn secret_with_data_bytes() {
    let object = Enc::new()
        .msg(1, meta("s", ""))
        .entry(2, "k", b"v")
        .entry(2, "bin", &[0xff, 0xfe])
        .str(3, "Opaque")
        .entry(4, "x", b"y")
        .varint(5, 1);
    let got = decode(&body("v1", "Secret", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "creationTimestamp": null},
            "data": {"k": "dg==", "bin": "//4="},
            "type": "Opaque",
            "stringData": {"x": "y"},
            "immutable": true
        })
    );
}

#[test]
fn secret_with_empty_type_and_value_without_bytes() {
    // A map<string,bytes> entry without a value decodes to empty bytes; an empty type is omitted.
    let object = Enc::new().msg(1, meta("s", "")).msg(2, Enc::new().str(1, "empty")).str(3, "");
    let got = decode(&body("v1", "Secret", object)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "creationTimestamp": null},
               "data": {"empty": ""}})
    );
}

#[test]
fn namespace_with_spec_and_status() {
    let condition = Enc::new()
        .str(1, "NamespaceDeletionContentFailure")
        .str(2, "False")
        .msg(4, time(T0, 5))
        .str(5, "ContentDeleted")
        .str(6, "");
    let object = Enc::new()
        .msg(1, meta("ns", ""))
        .msg(2, Enc::new().str(1, "kubernetes"))
        .msg(3, Enc::new().str(1, "Terminating").msg(2, condition));
    let got = decode(&body("v1", "Namespace", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "ns", "creationTimestamp": null},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating", "conditions": [{
                "type": "NamespaceDeletionContentFailure", "status": "False",
                "lastTransitionTime": "2023-11-14T22:13:20Z", "reason": "ContentDeleted"}]}
        })
    );
}

#[test]
fn empty_namespace_prints_empty_spec_and_status() {
    let object = Enc::new().msg(1, meta("foo", "")).msg(2, Enc::new()).msg(3, Enc::new().str(1, ""));
    let got = decode(&body("v1", "Namespace", object)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo", "creationTimestamp": null},
               "spec": {}, "status": {}})
    );
}

#[test]
fn lease_with_micro_times() {
    let spec = Enc::new()
        .str(1, "node-1")
        .int(2, 40)
        .msg(3, time(T0, 123_456_789))
        .msg(4, time(T0 + 40, 999_999))
        .int(5, 0)
        .str(6, "OldestEmulationVersion")
        .str(7, "");
    let object = Enc::new().msg(1, meta("node-1", "kube-node-lease")).msg(2, spec);
    let got = decode(&body("coordination.k8s.io/v1", "Lease", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "node-1", "namespace": "kube-node-lease", "creationTimestamp": null},
            "spec": {
                "holderIdentity": "node-1",
                "leaseDurationSeconds": 40,
                "acquireTime": "2023-11-14T22:13:20.123456Z",
                "renewTime": "2023-11-14T22:14:00.000999Z",
                "leaseTransitions": 0,
                "strategy": "OldestEmulationVersion",
                "preferredHolder": ""
            }
        })
    );
}

#[test]
fn object_meta_all_fields() {
    let owner = Enc::new().str(1, "ReplicaSet").str(3, "rs").str(4, "u-1").str(5, "apps/v1").varint(6, 1).varint(7, 0);
    let managed = Enc::new()
        .str(1, "kubectl")
        .str(2, "Update")
        .str(3, "v1")
        .msg(4, time(T0, 0))
        .str(6, "FieldsV1")
        .msg(7, Enc::new().str(1, r#"{"f:data":{".":{},"f:k":{}}}"#))
        .str(8, "");
    let metadata = Enc::new()
        .str(1, "cm")
        .str(2, "cm-")
        .str(3, "ns")
        .str(4, "")
        .str(5, "abc")
        .str(6, "42")
        .int(7, 3)
        .msg(8, time(T0, 900_000_000))
        .msg(9, time(T0 + 100, 0))
        .int(10, 30)
        .entry(11, "app", b"x")
        .entry(12, "note", b"hello")
        .msg(13, owner)
        .str(14, "example.com/a")
        .str(14, "example.com/b")
        .msg(17, managed);
    let got = decode(&body("v1", "ConfigMap", Enc::new().msg(1, metadata))).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "cm",
                "generateName": "cm-",
                "namespace": "ns",
                "uid": "abc",
                "resourceVersion": "42",
                "generation": 3,
                "creationTimestamp": "2023-11-14T22:13:20Z",
                "deletionTimestamp": "2023-11-14T22:15:00Z",
                "deletionGracePeriodSeconds": 30,
                "labels": {"app": "x"},
                "annotations": {"note": "hello"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-1",
                                     "controller": true, "blockOwnerDeletion": false}],
                "finalizers": ["example.com/a", "example.com/b"],
                "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                                   "time": "2023-11-14T22:13:20Z", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:data": {".": {}, "f:k": {}}}}]
            }
        })
    );
}

#[test]
fn service_account_with_references() {
    let object = Enc::new()
        .msg(1, meta("sa", "ns"))
        .msg(2, Enc::new().str(1, "").str(2, "").str(3, "sa-token").str(4, "").str(5, "").str(6, "").str(7, ""))
        .msg(3, Enc::new().str(1, "regcred"))
        .varint(4, 0);
    let got = decode(&body("v1", "ServiceAccount", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "sa", "namespace": "ns", "creationTimestamp": null},
            "secrets": [{"name": "sa-token"}],
            "imagePullSecrets": [{"name": "regcred"}],
            "automountServiceAccountToken": false
        })
    );
}

#[test]
fn core_event() {
    let involved = Enc::new().str(1, "Pod").str(2, "default").str(3, "p").str(4, "").str(5, "v1").str(6, "").str(7, "");
    let object = Enc::new()
        .msg(1, meta("p.1", "default"))
        .msg(2, involved)
        .str(3, "Scheduled")
        .str(4, "ok")
        .msg(5, Enc::new().str(1, "scheduler").str(2, ""))
        .msg(6, time(T0, 0))
        .msg(7, Enc::new())
        .int(8, -1)
        .str(9, "Normal")
        .msg(10, Enc::new())
        .msg(11, Enc::new().int(1, 3).msg(2, time(T0, 1_000)))
        .str(12, "")
        .msg(13, Enc::new().str(1, "Node").str(3, "n1"))
        .str(14, "")
        .str(15, "");
    let got = decode(&body("v1", "Event", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "p.1", "namespace": "default", "creationTimestamp": null},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "p", "apiVersion": "v1"},
            "reason": "Scheduled",
            "message": "ok",
            "source": {"component": "scheduler"},
            "firstTimestamp": "2023-11-14T22:13:20Z",
            "lastTimestamp": null,
            "count": -1,
            "type": "Normal",
            "eventTime": null,
            "series": {"count": 3, "lastObservedTime": "2023-11-14T22:13:20.000001Z"},
            "related": {"kind": "Node", "name": "n1"},
            "reportingComponent": "",
            "reportingInstance": ""
        })
    );
}

#[test]
fn events_v1_event() {
    let object = Enc::new()
        .msg(1, meta("e", "default"))
        .msg(2, time(T0, 500_000_000))
        .str(4, "kubelet")
        .str(5, "kubelet-n1")
        .str(6, "Pulled")
        .str(7, "Pulled")
        .msg(8, Enc::new().str(1, "Pod").str(3, "p"))
        .str(10, "pulled image")
        .str(11, "Normal")
        .msg(12, Enc::new().str(1, "").str(2, ""))
        .msg(13, Enc::new())
        .msg(14, Enc::new())
        .int(15, 0)
        .msg(3, Enc::new().int(1, 0).msg(2, time(T0, 0)));
    let got = decode(&body("events.k8s.io/v1", "Event", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "e", "namespace": "default", "creationTimestamp": null},
            "eventTime": "2023-11-14T22:13:20.500000Z",
            "series": {"count": 0, "lastObservedTime": "2023-11-14T22:13:20.000000Z"},
            "reportingController": "kubelet",
            "reportingInstance": "kubelet-n1",
            "action": "Pulled",
            "reason": "Pulled",
            "regarding": {"kind": "Pod", "name": "p"},
            "note": "pulled image",
            "type": "Normal",
            "deprecatedSource": {},
            "deprecatedFirstTimestamp": null,
            "deprecatedLastTimestamp": null
        })
    );
}

#[test]
fn node_with_spec_and_status() {
    let quantity = |s: &str| Enc::new().str(1, s).0;
    let spec = Enc::new()
        .str(1, "10.0.0.0/24")
        .str(3, "")
        .varint(4, 1)
        .msg(5, Enc::new().str(1, "dedicated").str(2, "").str(3, "NoSchedule").msg(4, time(T0, 0)))
        .str(2, "")
        .str(7, "10.0.0.0/24")
        .str(7, "fd00::/64");
    let mut info = Enc::new();
    for (num, value) in [(1, "m"), (2, "s"), (3, "b"), (4, "6.1"), (5, "Debian"), (6, "containerd://2")] {
        info = info.str(num, value);
    }
    info = info.str(7, "v1.32.0").str(8, "").str(9, "linux").str(10, "amd64");
    let status = Enc::new()
        .entry(1, "cpu", &quantity("4"))
        .entry(1, "memory", &quantity("8Gi"))
        .entry(2, "cpu", &quantity(""))
        .str(3, "")
        .msg(
            4,
            Enc::new()
                .str(1, "Ready")
                .str(2, "True")
                .msg(3, time(T0, 0))
                .msg(4, Enc::new())
                .str(5, "KubeletReady")
                .str(6, ""),
        )
        .msg(5, Enc::new().str(1, "InternalIP").str(2, "10.0.0.1"))
        .msg(6, Enc::new().msg(1, Enc::new().int(1, 10250)))
        .msg(7, info)
        .msg(8, Enc::new().str(1, "nginx:1").int(2, 1000));
    let object = Enc::new().msg(1, meta("n1", "")).msg(2, spec).msg(3, status);
    let got = decode(&body("v1", "Node", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "n1", "creationTimestamp": null},
            "spec": {
                "podCIDR": "10.0.0.0/24",
                "podCIDRs": ["10.0.0.0/24", "fd00::/64"],
                "unschedulable": true,
                "taints": [{"key": "dedicated", "effect": "NoSchedule", "timeAdded": "2023-11-14T22:13:20Z"}]
            },
            "status": {
                "capacity": {"cpu": "4", "memory": "8Gi"},
                "allocatable": {"cpu": "0"},
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2023-11-14T22:13:20Z",
                                "lastTransitionTime": null, "reason": "KubeletReady"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1",
                             "osImage": "Debian", "containerRuntimeVersion": "containerd://2",
                             "kubeletVersion": "v1.32.0", "kubeProxyVersion": "", "operatingSystem": "linux",
                             "architecture": "amd64"},
                "images": [{"names": ["nginx:1"], "sizeBytes": 1000}]
            }
        })
    );
}

#[test]
fn service_with_int_or_string_ports_and_status() {
    let http = Enc::new().str(1, "http").str(2, "TCP").int(3, 80).msg(4, Enc::new().int(1, 1).int(2, 0).str(3, "web"));
    let metrics = Enc::new()
        .str(1, "")
        .str(2, "UDP")
        .int(3, 9090)
        .msg(4, Enc::new().int(1, 0).int(2, 9091).str(3, ""))
        .int(5, 30001);
    let spec = Enc::new()
        .msg(1, http)
        .msg(1, metrics)
        .entry(2, "app", b"web")
        .str(3, "10.96.0.10")
        .str(4, "NodePort")
        .str(7, "ClientIP")
        .str(8, "")
        .int(12, 0)
        .varint(13, 0)
        .msg(14, Enc::new().msg(1, Enc::new().int(1, 10800)))
        .str(17, "SingleStack")
        .str(18, "10.96.0.10")
        .str(19, "IPv4")
        .str(22, "Cluster");
    let ingress = Enc::new().str(1, "1.2.3.4").str(2, "").str(3, "VIP").msg(4, Enc::new().int(1, 80).str(2, "TCP"));
    let condition = Enc::new().str(1, "Ready").str(2, "True").int(3, 0).msg(4, time(T0, 0)).str(5, "Ok").str(6, "");
    let object = Enc::new()
        .msg(1, meta("web", "default"))
        .msg(2, spec)
        .msg(3, Enc::new().msg(1, Enc::new().msg(1, ingress)).msg(2, condition));
    let got = decode(&body("v1", "Service", object)).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": null},
            "spec": {
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"},
                    {"protocol": "UDP", "port": 9090, "targetPort": 9091, "nodePort": 30001}
                ],
                "selector": {"app": "web"},
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "type": "NodePort",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster"
            },
            "status": {
                "loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ipMode": "VIP",
                                              "ports": [{"port": 80, "protocol": "TCP"}]}]},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2023-11-14T22:13:20Z",
                                "reason": "Ok", "message": ""}]
            }
        })
    );
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let unknown = |e: Enc| e.varint(99, 7).fixed64(100, 1).bytes(101, b"zz").fixed32(102, 2);
    let object = Enc::new().msg(1, unknown(meta("cm", ""))).entry(2, "a", b"b");
    let object = unknown(object);
    let body =
        envelope(unknown(Enc::new().msg(1, unknown(Enc::new().str(1, "v1").str(2, "ConfigMap"))).msg(2, object)));
    let got = decode(&body).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "creationTimestamp": null},
               "data": {"a": "b"}})
    );
}

#[test]
fn json_inside_the_envelope() {
    let unknown = Enc::new()
        .msg(1, Enc::new().str(1, "v1").str(2, "ConfigMap"))
        .str(2, r#"{"metadata":{"name":"x"}}"#)
        .str(4, "application/json");
    let got = decode(&envelope(unknown)).unwrap();
    assert_eq!(got, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}));
}

#[test]
fn int_or_string_and_raw_json_kinds() {
    let int = Enc::new().int(1, 0).int(2, 8080);
    assert_eq!(decode_int_or_string(&int.0).unwrap(), json!(8080));
    let string = Enc::new().int(1, 1).int(2, 0).str(3, "http");
    assert_eq!(decode_int_or_string(&string.0).unwrap(), json!("http"));
    assert_eq!(decode_raw_json(&Enc::new().str(1, r#"[1,"a"]"#).0).unwrap(), json!([1, "a"]));
    assert_eq!(decode_raw_json(&[]).unwrap(), Value::Null);
}

#[test]
fn times() {
    assert_eq!(decode_time(&[], false).unwrap(), Value::Null);
    assert_eq!(decode_time(&time(GO_ZERO_TIME_UNIX, 0).0, false).unwrap(), Value::Null);
    assert_eq!(decode_time(&time(0, 1).0, true).unwrap(), json!("1970-01-01T00:00:00.000000Z"));
    assert_eq!(decode_time(&time(T0, 999_999_999).0, false).unwrap(), json!("2023-11-14T22:13:20Z"));
    assert_eq!(decode_time(&time(T0, 999_999_999).0, true).unwrap(), json!("2023-11-14T22:13:20.999999Z"));
    assert_eq!(decode_time(&time(T0, -1).0, true).unwrap(), json!("2023-11-14T22:13:19.999999Z"));
    assert!(decode_time(&time(i64::MAX, 0).0, false).unwrap_err().contains("out of range"));
    assert_eq!(decode_time(&time(GO_ZERO_TIME_UNIX - 1, 0).0, false).unwrap(), json!("0000-12-31T23:59:59Z"));
    assert!(decode_time(&time(GO_ZERO_TIME_UNIX - 400 * 86_400, 0).0, false)
        .unwrap_err()
        .contains("outside the years"));
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want);
    }
    assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
}

#[test]
fn supported_kinds_are_listed() {
    assert!(supports("v1", "ConfigMap"));
    assert!(supports("events.k8s.io/v1", "Event"));
    assert!(!supports("apps/v1", "Deployment"));
    assert_eq!(supported_kinds().count(), 9);
}

// ---- malformed input ----

fn err(body: &[u8]) -> String {
    decode(body).expect_err("decoding should fail")
}

#[test]
fn bad_magic() {
    assert!(err(b"").contains("does not start with the 4-byte prefix"));
    assert!(err(b"k8s").contains("does not start with the 4-byte prefix"));
    assert!(err(br#"{"kind":"ConfigMap"}"#).contains("does not start with the 4-byte prefix"));
}

#[test]
fn truncated_input() {
    let full = body("v1", "ConfigMap", Enc::new().msg(1, meta("cm", "")).entry(2, "a", b"b"));
    // Cutting after the whole typeMeta field (byte 21) or after raw leaves a well-formed, shorter envelope.
    let raw_end = full.len() - 4; // body() ends with empty contentEncoding and contentType, 2 bytes each
    for cut in (5..raw_end).filter(|&cut| cut != 21) {
        let e = err(&full[..cut]);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    assert_eq!(err(b"k8s\0\x0a\x80"), "malformed protobuf envelope: truncated varint at byte 2");
    assert_eq!(err(b"k8s\0"), "malformed protobuf envelope: typeMeta.kind is empty");
}

#[test]
fn truncated_nested_field_names_the_path() {
    // ObjectMeta.labels entry claims 10 bytes but has 2.
    let metadata = Enc::new().raw(&[0x5a, 0x0a, 0x0a, 0x00]);
    let e = err(&body("v1", "ConfigMap", Enc::new().msg(1, metadata)));
    assert_eq!(
        e,
        "malformed protobuf v1 ConfigMap: ConfigMap.metadata: ObjectMeta.labels: \
         truncated input: a field at byte 2 needs 10 bytes, 2 left"
    );
}

#[test]
fn wrong_wire_type() {
    let object = Enc::new().msg(1, Enc::new().varint(1, 5));
    assert_eq!(
        err(&body("v1", "ConfigMap", object)),
        "malformed protobuf v1 ConfigMap: ConfigMap.metadata: ObjectMeta.name: \
         wrong wire type 0 (varint), expected 2 (length-delimited)"
    );
    let object = Enc::new().str(4, "true");
    assert!(err(&body("v1", "ConfigMap", object)).contains("ConfigMap.immutable: wrong wire type 2"));
    let lease = Enc::new().msg(2, Enc::new().msg(3, Enc::new().str(1, "soon")));
    assert!(err(&body("coordination.k8s.io/v1", "Lease", lease)).contains("LeaseSpec.acquireTime: seconds: wrong wire"));
    let envelope_kind_as_varint = envelope(Enc::new().msg(1, Enc::new().str(1, "v1").varint(2, 3)));
    assert!(err(&envelope_kind_as_varint).contains("typeMeta.kind: wrong wire type 0"));
}

#[test]
fn invalid_keys_and_wire_types() {
    let group = Enc::new().key(50, 3);
    assert!(err(&body("v1", "ConfigMap", group)).contains("groups are not supported"));
    let wire7 = Enc::new().key(50, 7);
    assert!(err(&body("v1", "ConfigMap", wire7)).contains("invalid wire type 7"));
    let field0 = Enc::new().raw(&[0x02, 0x00]);
    assert!(err(&body("v1", "ConfigMap", field0)).contains("invalid field number 0"));
    let long_varint = Enc::new().key(50, 0).raw(&[0xff; 11]);
    assert!(err(&body("v1", "ConfigMap", long_varint)).contains("varint longer than 10 bytes"));
}

#[test]
fn unsupported_envelopes() {
    let e = err(&body("apps/v1", "Deployment", Enc::new()));
    assert_eq!(e, "protobuf bodies are not supported for apps/v1 Deployment; send JSON or YAML instead");
    let gzip = envelope(Enc::new().msg(1, Enc::new().str(1, "v1").str(2, "ConfigMap")).str(3, "gzip"));
    assert_eq!(err(&gzip), "unsupported protobuf contentEncoding \"gzip\"");
    let yaml = envelope(Enc::new().msg(1, Enc::new().str(1, "v1").str(2, "ConfigMap")).str(4, "application/yaml"));
    assert_eq!(err(&yaml), "unsupported protobuf envelope contentType \"application/yaml\"");
    let bad_json = envelope(
        Enc::new().msg(1, Enc::new().str(1, "v1").str(2, "ConfigMap")).str(2, "[1]").str(4, "application/json"),
    );
    assert!(err(&bad_json).contains("not an object"));
}

#[test]
fn invalid_fields_v1_json() {
    let managed = Enc::new().msg(7, Enc::new().str(1, "{not json"));
    let object = Enc::new().msg(1, Enc::new().msg(17, managed));
    let e = err(&body("v1", "ConfigMap", object));
    assert!(
        e.contains("ObjectMeta.managedFields: ManagedFieldsEntry.fieldsV1: raw field does not hold valid JSON"),
        "{e}"
    );
}

// ---- bodies captured from kubectl v1.32 ----

/// Each fixture pair: the protobuf body `kubectl create ...` sent, and `kubectl create ... --dry-run=client -o json`
/// for the same command (the JSON that Kubernetes' own serializer prints for that object).
#[test]
fn kubectl_fixtures_decode_to_kubectls_json() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protobuf");
    for name in [
        "kubectl_create_configmap",
        "kubectl_create_configmap_binary",
        "kubectl_create_namespace",
        "kubectl_create_secret_generic",
        "kubectl_create_secret_basic_auth",
        "kubectl_create_serviceaccount",
        "kubectl_create_serviceaccount_kube_system",
        "kubectl_create_service_clusterip",
    ] {
        let body = std::fs::read(format!("{dir}/{name}.pb")).unwrap();
        let want: Value = serde_json::from_slice(&std::fs::read(format!("{dir}/{name}.json")).unwrap()).unwrap();
        assert_eq!(decode(&body).unwrap_or_else(|e| panic!("{name}: {e}")), want, "{name}");
    }
}

#[test]
fn kubectl_deployment_fixture_is_rejected_clearly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protobuf");
    let body = std::fs::read(format!("{dir}/kubectl_create_deployment.pb")).unwrap();
    assert_eq!(err(&body), "protobuf bodies are not supported for apps/v1 Deployment; send JSON or YAML instead");
}
