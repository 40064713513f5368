//! The CRDs, and the types checked against them: every field a schema serves survives a read and a write
//! through the types, under its schema name, and nothing the JSON left out is added.

use super::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[test]
fn crds_are_valid_and_serve_their_versions() {
    for c in crds() {
        assert!(crate::crd::validate(&c).is_empty(), "{:?}", crate::crd::validate(&c));
        let defs = crate::crd::resource_defs(&c);
        let want = if defs[0].group == GROUP { "v1" } else { "v1beta1" };
        assert_eq!(defs[0].version, want);
        assert!(defs[0].reject_unknown_fields);
    }
    // The YAML anchor for cloud-init sources resolved into both volume kinds.
    let vmi = vmi_crd();
    let vol = vmi
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/volumes/items/properties")
        .unwrap();
    assert_eq!(vol["cloudInitConfigDrive"], vol["cloudInitNoCloud"]);
}

/// A value for every property `schema` declares (one item per array, one key per map).
fn sample(schema: &Value) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        // The last value: the phase enum starts with "".
        return values.last().cloned().expect("an enum lists values");
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        return json!("1Gi");
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            match (schema.get("properties").and_then(Value::as_object), schema.get("additionalProperties")) {
                (Some(props), _) => Value::Object(props.iter().map(|(k, s)| (k.clone(), sample(s))).collect()),
                (None, Some(values)) => json!({"key": sample(values)}),
                // Free-form (x-kubernetes-preserve-unknown-fields) or a marker object such as `rng: {}`.
                (None, None) => json!({}),
            }
        }
        Some("array") => json!([sample(&schema["items"])]),
        Some("string") => json!("text"),
        Some("integer") => json!(1),
        Some("boolean") => json!(true),
        other => panic!("no sample for a schema of type {other:?}"),
    }
}

fn openapi_schema(crd: &Value) -> &Value {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema").expect("a v1 schema")
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    serde_json::to_value(&typed).unwrap()
}

fn object(kind: &str, mut v: Value) -> Value {
    v["apiVersion"] = json!("kubevirt.io/v1");
    v["kind"] = json!(kind);
    v["metadata"] = json!({"name": "x", "namespace": "ns", "uid": "u"});
    v
}

#[test]
fn types_carry_every_served_field() {
    let vmi = object("VirtualMachineInstance", sample(openapi_schema(&vmi_crd())));
    assert_eq!(vmi.pointer("/spec/domain/firmware/kernelBoot/container/initrdPath"), Some(&json!("text")));
    assert_eq!(vmi.pointer("/status/conditions/0/lastProbeTime"), Some(&json!("text")));
    assert_eq!(round_trip::<VirtualMachineInstance>(&vmi), vmi);
    let vm = object("VirtualMachine", sample(openapi_schema(&vm_crd())));
    assert_eq!(vm.pointer("/status/startFailure/lastFailedVMIUID"), Some(&json!("text")));
    assert_eq!(vm.pointer("/spec/template/spec/volumes/0/hostDisk/type"), Some(&json!("DiskOrCreate")));
    assert_eq!(round_trip::<VirtualMachine>(&vm), vm);
}

#[test]
fn absent_stays_absent_and_free_form_parts_keep_their_content() {
    let bare = object("VirtualMachineInstance", json!({"spec": {"domain": {"devices": {}}}}));
    assert_eq!(round_trip::<VirtualMachineInstance>(&bare), bare);
    let mut vmi = bare.clone();
    vmi["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
    vmi["spec"]["domain"]["devices"]["disks"] = json!([{"name": "d", "cdrom": {}}]);
    vmi["status"] = json!({"phase": "", "guestOSInfo": {"id": "debian", "version": 12},
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "t"}]});
    assert_eq!(round_trip::<VirtualMachineInstance>(&vmi), vmi);
    let typed: VirtualMachineInstance = serde_json::from_value(vmi).unwrap();
    assert_eq!(typed.phase(), "");
    assert_eq!(typed.conditions()[0].last_probe_time, None);
    assert_eq!(serde_json::from_value::<VirtualMachineInstance>(bare).unwrap().phase(), "", "no status: phase \"\"");
}

#[test]
fn quantities_read_as_strings_or_numbers_and_write_as_strings() {
    // k8s-openapi's Quantity, as KubeVirt's Go types: a number reads, and writes back as its string.
    let spec = json!({"domain": {"devices": {}, "memory": {"guest": 1073741824},
        "resources": {"requests": {"memory": "1Gi"}}}});
    let typed: VirtualMachineInstanceSpec = serde_json::from_value(spec).unwrap();
    assert_eq!(typed.domain.memory.as_ref().and_then(|m| m.guest.as_ref()).map(|q| q.0.as_str()), Some("1073741824"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(back["domain"]["memory"]["guest"], "1073741824");
    assert_eq!(back["domain"]["resources"]["requests"]["memory"], "1Gi");
}

#[test]
fn phase_transitions_are_recorded_once() {
    let mut vmi = VirtualMachineInstance::default();
    let st = status_with_phase(&vmi, "Pending", "t1");
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    vmi.status = Some(st);
    let st = status_with_phase(&vmi, "Pending", "t2");
    let times: Vec<_> =
        st.phase_transition_timestamps.iter().flatten().map(|t| t.phase_transition_timestamp.clone()).collect();
    assert_eq!(times, vec![Some("t1".to_string())], "staying in a phase is no transition");
}
