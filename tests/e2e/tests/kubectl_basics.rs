//! The real kubectl against the real kumo server: apply, get, describe, patch, label, delete, explain.

use kumo_e2e::{eventually, Server};
use std::time::Duration;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        description: A widget for tests.
        properties:
          spec:
            type: object
            description: What the widget should be.
            properties:
              color: {type: string, description: The widget's color., enum: [red, green, blue]}
              replicas: {type: integer, default: 1, minimum: 0}
          status:
            type: object
            properties:
              replicas: {type: integer}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

fn with_crd() -> Server {
    let s = Server::start().expect("server");
    s.apply(WIDGET_CRD).expect("crd");
    s
}

#[test]
fn apply_get_table_yaml_and_reapply() {
    let s = Server::start().unwrap();
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  labels: {app: web}\ndata:\n  a: '1'\n  b: '2'\n";
    assert!(s.apply(cm).unwrap().contains("configmap/web created"));
    assert!(s.apply(cm).unwrap().contains("configmap/web unchanged"));
    let table = s.kubectl_ok(&["get", "configmaps"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "DATA", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], &["web", "2"]);
    let yaml = s.kubectl_ok(&["get", "cm", "web", "-o", "yaml"]).unwrap();
    assert!(
        yaml.contains("uid:") && yaml.contains("resourceVersion:") && yaml.contains("creationTimestamp:"),
        "{yaml}"
    );
    let changed = cm.replace("a: '1'", "a: '9'");
    assert!(s.apply(&changed).unwrap().contains("configured"));
    assert_eq!(s.kubectl_ok(&["get", "cm", "web", "-o", "jsonpath={.data.a}"]).unwrap(), "9");
}

/// A list by `metadata.name` reads the one key (as a watch of one object lists): names that share a prefix, other
/// namespaces and other selectors still decide what it returns.
#[test]
fn list_by_field_selector_name() {
    let s = Server::start().unwrap();
    s.kubectl_ok(&["create", "namespace", "other"]).unwrap();
    for (ns, name) in [("default", "web"), ("default", "web2"), ("default", "we"), ("other", "web")] {
        s.kubectl_ok(&["-n", ns, "create", "configmap", name]).unwrap();
    }
    s.kubectl_ok(&["-n", "other", "label", "configmap", "web", "tier=db"]).unwrap();
    let names = |args: &[&str]| {
        let mut a =
            vec!["get", "configmaps", "-o", "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {end}"];
        a.extend_from_slice(args);
        s.kubectl_ok(&a).unwrap().trim().to_string()
    };
    assert_eq!(names(&["--field-selector", "metadata.name=web"]), "default/web");
    assert_eq!(names(&["-n", "other", "--field-selector", "metadata.name=web"]), "other/web");
    assert_eq!(names(&["-n", "other", "--field-selector", "metadata.name=web", "-l", "tier=web"]), "");
    assert_eq!(names(&["-n", "other", "--field-selector", "metadata.name=web", "-l", "tier=db"]), "other/web");
    assert_eq!(names(&["--field-selector", "metadata.name=w"]), "");
    let all = names(&["-A", "--field-selector", "metadata.name=web"]);
    assert_eq!(all, "default/web other/web");
    for node in ["n1", "n10"] {
        s.apply(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n")).unwrap();
    }
    let one = s.kubectl_ok(&["get", "nodes", "--field-selector", "metadata.name=n1", "-o", "name"]).unwrap();
    assert_eq!(one.trim(), "node/n1");
    let list = s
        .kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dweb2"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(v["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv.parse::<i64>().unwrap() > 0), "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn crd_columns_schema_defaults_and_strict_validation() {
    let s = with_crd();
    s.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {color: red}\n").unwrap();
    let out = s.kubectl_ok(&["get", "widgets"]).unwrap();
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "COLOR", "REPLICAS", "AGE"]);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], &["w1", "red", "1"], "default replicas applied: {out}");
    // Short name works through discovery.
    assert!(s.kubectl_ok(&["get", "wd", "w1", "-o", "name"]).unwrap().contains("widget.example.com/w1"));
    // kubectl validates strictly by default: an unknown field is refused by name, nothing stored.
    let err = s
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {color: red, bogus: 1}\n",
        )
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("spec.bogus"), "{}", String::from_utf8_lossy(&err.stderr));
    assert!(s.kubectl_err(&["get", "widget", "w2"]).unwrap().contains("NotFound"));
    // A schema violation names the field.
    let bad = s
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {color: purple}\n",
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spec.color"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn patch_merge_json_strategic_and_label() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\ndata: {a: '1'}\n").unwrap();
    s.kubectl_ok(&["patch", "cm", "p", "--type=merge", "-p", r#"{"data":{"b":"2"}}"#]).unwrap();
    s.kubectl_ok(&[
        "patch",
        "cm",
        "p",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/a","value":"1"},{"op":"replace","path":"/data/a","value":"3"}]"#,
    ])
    .unwrap();
    let failed = s
        .kubectl_err(&[
            "patch",
            "cm",
            "p",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/a","value":"nope"},{"op":"remove","path":"/data/a"}]"#,
        ])
        .unwrap();
    assert!(failed.contains("is invalid") && failed.contains("did not match"), "{failed}");
    s.kubectl_ok(&["patch", "cm", "p", "-p", r#"{"data":{"c":"4"},"metadata":{"finalizers":["x.io/a"]}}"#]).unwrap();
    s.kubectl_ok(&["patch", "cm", "p", "-p", r#"{"metadata":{"finalizers":["x.io/b"]}}"#]).unwrap();
    let fins = s.kubectl_ok(&["get", "cm", "p", "-o", "jsonpath={.metadata.finalizers}"]).unwrap();
    assert_eq!(fins, r#"["x.io/a","x.io/b"]"#, "strategic merge unions finalizers");
    let data = s.kubectl_ok(&["get", "cm", "p", "-o", "jsonpath={.data}"]).unwrap();
    assert_eq!(data, r#"{"a":"3","b":"2","c":"4"}"#);
    s.kubectl_ok(&["label", "cm", "p", "tier=db"]).unwrap();
    assert!(s.kubectl_ok(&["get", "cm", "-l", "tier in (db,web)", "-o", "name"]).unwrap().contains("configmap/p"));
    assert!(s.kubectl_ok(&["get", "cm", "-l", "tier!=db", "-o", "name"]).unwrap().trim().is_empty());
    s.kubectl_ok(&["patch", "cm", "p", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]).unwrap();
}

#[test]
fn scale_status_and_wait_for_condition() {
    let s = with_crd();
    s.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: sc}\nspec: {color: blue, replicas: 1}\n")
        .unwrap();
    s.kubectl_ok(&["scale", "widget", "sc", "--replicas=4"]).unwrap();
    assert_eq!(s.kubectl_ok(&["get", "widget", "sc", "-o", "jsonpath={.spec.replicas}"]).unwrap(), "4");
    let gen = s.kubectl_ok(&["get", "widget", "sc", "-o", "jsonpath={.metadata.generation}"]).unwrap();
    assert_eq!(gen, "2", "spec change bumps generation");
    let waiter = s
        .kubectl_cmd(&["wait", "widget/sc", "--for=condition=Ready", "--timeout=20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Status only changes through /status; the main endpoint ignores it.
    s.kubectl_ok(&["patch", "widget", "sc", "--type=merge", "-p", r#"{"status":{"replicas":9}}"#]).unwrap();
    assert_eq!(s.kubectl_ok(&["get", "widget", "sc", "-o", "jsonpath={.status.replicas}"]).unwrap(), "");
    s.kubectl_ok(&[
        "patch",
        "widget",
        "sc",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .unwrap();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "wait: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    assert_eq!(
        s.kubectl_ok(&["get", "widget", "sc", "-o", "jsonpath={.metadata.generation}"]).unwrap(),
        "2",
        "status does not bump generation"
    );
}

#[test]
fn delete_waits_for_finalizer() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: f, finalizers: [example.com/hold]}\n").unwrap();
    let mut del = s
        .kubectl_cmd(&["delete", "cm", "f", "--wait=true", "--timeout=30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ts = eventually(Duration::from_secs(10), || {
        let t = s.kubectl_ok(&["get", "cm", "f", "-o", "jsonpath={.metadata.deletionTimestamp}"]).ok()?;
        (!t.is_empty()).then_some(t)
    });
    assert!(ts.is_some(), "deletionTimestamp set while the finalizer holds");
    assert!(del.try_wait().unwrap().is_none(), "kubectl delete --wait still waiting");
    s.kubectl_ok(&["patch", "cm", "f", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#])
        .unwrap();
    let out = del.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.kubectl_err(&["get", "cm", "f"]).unwrap().contains("NotFound"));
}

#[test]
fn explain_uses_the_crd_schema() {
    let s = with_crd();
    let out = s.kubectl_ok(&["explain", "widgets.spec.color"]).unwrap();
    assert!(out.contains("The widget's color."), "{out}");
    let top = s.kubectl_ok(&["explain", "widget"]).unwrap();
    assert!(top.contains("A widget for tests."), "{top}");
    // Built-in kinds are explained from their real Kubernetes schemas.
    let data = s.kubectl_ok(&["explain", "configmap.data"]).unwrap();
    assert!(data.contains("map[string]string") && data.contains("configuration data"), "{data}");
}

#[test]
fn bad_input_gets_clear_errors_and_stores_nothing() {
    let s = Server::start().unwrap();
    let bad_name = s
        .kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n")
        .unwrap();
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("metadata.name"));
    let unknown = s.kubectl_err(&["get", "gizmos"]).unwrap();
    assert!(unknown.contains("gizmos"), "{unknown}");
    let big =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{x: '{}'}}\n", "a".repeat(1_700_000));
    let out = s.kubectl_stdin(&["create", "-f", "-"], &big).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too large") || stderr.contains("1.5 MiB") || stderr.contains("Entity"), "{stderr}");
    let raw =
        s.kubectl_stdin(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", "-"], "{not json").unwrap();
    assert!(
        String::from_utf8_lossy(&raw.stderr).contains("BadRequest")
            || String::from_utf8_lossy(&raw.stderr).contains("decoding")
    );
    let names = s.kubectl_ok(&["get", "cm", "-o", "name"]).unwrap();
    assert!(names.trim().is_empty(), "nothing stored: {names}");
    // A wrong token is refused.
    let mut cmd = s.kubectl_cmd(&["get", "cm", "--token=wrong"]);
    let out = cmd.output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&out.stderr));
    // The server still serves.
    s.kubectl_ok(&["get", "ns", "default"]).unwrap();
}

#[test]
fn kubectl_create_generators_send_protobuf() {
    let s = Server::start().unwrap();
    s.kubectl_ok(&["create", "namespace", "gen"]).unwrap();
    s.kubectl_ok(&["create", "configmap", "c", "-n", "gen", "--from-literal=k=v"]).unwrap();
    s.kubectl_ok(&["create", "secret", "generic", "s", "-n", "gen", "--from-literal=pw=hunter2"]).unwrap();
    s.kubectl_ok(&["create", "serviceaccount", "sa", "-n", "gen"]).unwrap();
    assert_eq!(s.kubectl_ok(&["get", "cm", "c", "-n", "gen", "-o", "jsonpath={.data.k}"]).unwrap(), "v");
    assert_eq!(
        s.kubectl_ok(&["get", "secret", "s", "-n", "gen", "-o", "jsonpath={.data.pw}"]).unwrap(),
        "aHVudGVyMg=="
    );
    assert_eq!(s.kubectl_ok(&["get", "ns", "gen", "-o", "jsonpath={.status.phase}"]).unwrap(), "Active");
    assert!(s.kubectl_ok(&["get", "sa", "-n", "gen", "-o", "name"]).unwrap().contains("serviceaccount/sa"));
    // A kind kumo does not serve is refused clearly.
    let err = s.kubectl_err(&["create", "deployment", "d", "--image=x"]).unwrap();
    assert!(err.contains("the server could not find the requested resource") || err.contains("not supported"), "{err}");
}

#[test]
fn deleting_a_crd_deletes_its_objects_and_stops_serving_it() {
    let s = with_crd();
    s.apply("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: doomed}\nspec: {color: green}\n").unwrap();
    let out = s.kubectl(&["delete", "crd", "widgets.example.com", "--timeout=30s"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = s.kubectl_err(&["get", "widgets"]).unwrap();
    assert!(err.contains("the server doesn't have a resource type") || err.contains("NotFound"), "{err}");
    // Recreating the CRD does not resurrect old objects.
    s.apply(WIDGET_CRD).unwrap();
    let names = kumo_e2e::eventually(Duration::from_secs(10), || s.kubectl_ok(&["get", "widgets", "-o", "name"]).ok());
    assert_eq!(names.as_deref().map(str::trim), Some(""));
}

/// kubectl validates a `kind: List` (what `kubectl get -o yaml` prints for several objects) against
/// `/openapi/v2`: a dump applied back succeeds and changes no object's content, a List can be created, and a
/// List item with an unknown field is refused by that validation.
#[test]
fn a_dumped_list_applies_back_with_validation() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\ndata: {a: '1'}\n").unwrap();
    s.kubectl_ok(&["create", "configmap", "two", "--from-literal=b=2"]).unwrap();
    s.apply(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: vm1}\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        memory: {guest: 64Mi}\n        devices: {}\n",
    )
    .unwrap();
    // A VM that runs has a VMI (Pending here: no node), which the dump holds too.
    s.apply(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: vm2}\nspec:\n  runStrategy: Always\n  template:\n    spec:\n      domain:\n        memory: {guest: 64Mi}\n        devices: {}\n",
    )
    .unwrap();
    let vmi = eventually(Duration::from_secs(30), || s.kubectl_ok(&["get", "vmi", "vm2", "-o", "name"]).ok());
    assert!(vmi.is_some(), "the VM's VMI was made");
    let content = |s: &Server| {
        let what = "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.spec}{.data};{end}";
        s.kubectl_ok(&["get", "vm,vmi,configmaps", "-o", what]).unwrap()
    };
    let before = content(&s);
    assert!(before.contains("VirtualMachineInstance/vm2="), "{before}");
    let dump = s.kubectl_ok(&["get", "vm,vmi,configmaps", "-o", "yaml"]).unwrap();
    assert!(dump.contains("kind: List"), "{dump}");
    let out = s.kubectl_stdin(&["apply", "--validate=strict", "-f", "-"], &dump).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "applying the dump back: {stderr}{stdout}");
    for name in
        ["configmap/one", "configmap/two", "virtualmachine.kubevirt.io/vm1", "virtualmachineinstance.kubevirt.io/vm2"]
    {
        assert!(stdout.contains(name), "{name} in {stdout}");
    }
    assert_eq!(content(&s), before, "the dump applied back changed an object");

    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: three}\n  data: {c: '3'}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: four}\n";
    let out = s.kubectl_stdin(&["create", "-f", "-"], list).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.kubectl_ok(&["get", "cm", "three", "-o", "jsonpath={.data.c}"]).unwrap(), "3");

    let bad = list.replace("name: four}", "name: five}\n  bogus: 1").replace("name: three", "name: six");
    let out = s.kubectl_stdin(&["create", "-f", "-"], &bad).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown field \"bogus\""), "{err}");
    assert!(
        s.kubectl_ok(&["get", "cm", "six", "--ignore-not-found", "-o", "name"]).unwrap().is_empty(),
        "nothing made"
    );

    // The document itself: protobuf as kubectl asks, JSON otherwise, with the same definitions as v3.
    let v2: serde_json::Value = serde_json::from_str(&s.kubectl_ok(&["get", "--raw", "/openapi/v2"]).unwrap()).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    let defs = v2["definitions"].as_object().unwrap();
    let cm = defs.values().find(|d| d["x-kubernetes-group-version-kind"][0]["kind"] == "ConfigMap").expect("ConfigMap");
    assert_eq!(cm["type"], "object");
    assert!(defs.values().any(|d| d["x-kubernetes-group-version-kind"][0]["kind"] == "VirtualMachine"));
}
