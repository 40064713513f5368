//! kubectl flows around ownership and lifecycle: server-side apply conflicts, describe with events, edit-style
//! round trips, `get -w`, namespace deletion and garbage collection.

use kumo_e2e::{eventually, Server};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn server_side_apply_conflict_and_force() {
    let s = Server::start().unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {key: one}\n";
    let out = s.kubectl_stdin(&["apply", "--server-side", "--field-manager=alice", "-f", "-"], cm).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serverside-applied"));
    let mf = s
        .kubectl_ok(&[
            "get",
            "cm",
            "ssa",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .unwrap();
    assert_eq!(mf, "alice");
    // Another manager changing the same field conflicts, naming the field and the owner.
    let bob = cm.replace("one", "two");
    let out = s.kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "-f", "-"], &bob).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict") && err.contains("alice") && err.contains(".data.key"), "{err}");
    assert_eq!(s.kubectl_ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.key}"]).unwrap(), "one");
    // --force-conflicts takes ownership.
    let out = s
        .kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], &bob)
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.kubectl_ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.key}"]).unwrap(), "two");
    let json = s.kubectl_ok(&["get", "cm", "ssa", "--show-managed-fields", "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let managers: Vec<&str> =
        v["metadata"]["managedFields"].as_array().unwrap().iter().map(|m| m["manager"].as_str().unwrap()).collect();
    assert!(managers.contains(&"bob"), "{managers:?}");
    // A field removed from bob's config disappears when nobody else owns it.
    let with_extra = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {key: two, extra: x}\n";
    s.kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], with_extra)
        .unwrap();
    assert_eq!(s.kubectl_ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.extra}"]).unwrap(), "x");
    s.kubectl_stdin(&["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], &bob).unwrap();
    assert_eq!(s.kubectl_ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.extra}"]).unwrap(), "");
}

#[test]
fn describe_shows_events_from_both_event_apis() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n").unwrap();
    let uid = s.kubectl_ok(&["get", "cm", "watched", "-o", "jsonpath={.metadata.uid}"]).unwrap();
    let core = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: watched.1}}\ninvolvedObject: {{kind: ConfigMap, name: watched, namespace: default, uid: {uid}, apiVersion: v1}}\nreason: CoreReason\nmessage: hello from core\ntype: Normal\nfirstTimestamp: '2026-01-01T00:00:00Z'\nlastTimestamp: '2026-01-01T00:00:00Z'\ncount: 1\nsource: {{component: test}}\n"
    );
    s.apply(&core).unwrap();
    let new = format!(
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: watched.2}}\nregarding: {{kind: ConfigMap, name: watched, namespace: default, uid: {uid}, apiVersion: v1}}\nreason: NewReason\nnote: hello from events.k8s.io\ntype: Warning\naction: Check\nreportingController: example.com/test\nreportingInstance: test-1\neventTime: '2026-01-01T00:00:01.000000Z'\n"
    );
    s.apply(&new).unwrap();
    let d = s.kubectl_ok(&["describe", "cm", "watched"]).unwrap();
    assert!(d.contains("CoreReason") && d.contains("hello from core"), "{d}");
    assert!(d.contains("NewReason") && d.contains("hello from events.k8s.io"), "{d}");
    // Each API sees both events in its own representation.
    let notes = s.kubectl_ok(&["get", "events.v1.events.k8s.io", "-o", "jsonpath={.items[*].note}"]).unwrap();
    assert!(notes.contains("hello from core") && notes.contains("hello from events.k8s.io"), "{notes}");
    let table = s.kubectl_ok(&["get", "events"]).unwrap();
    assert!(table.lines().next().unwrap().contains("REASON"), "{table}");
    // An events.k8s.io client that left the legacy fields out still sorts by them (the series' times).
    let sorted = s.kubectl_ok(&["get", "events", "--sort-by=.lastTimestamp", "-o", "name"]).unwrap();
    assert_eq!(sorted.lines().collect::<Vec<_>>(), ["event/watched.1", "event/watched.2"], "{sorted}");
    let count = s.kubectl_ok(&["get", "event", "watched.2", "-o", "jsonpath={.count} {.source.component}"]).unwrap();
    assert_eq!(count, "1 example.com/test");
}

#[test]
fn edit_style_round_trip_and_stale_update() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ed}\ndata: {a: '1'}\n").unwrap();
    let json = s.kubectl_ok(&["get", "cm", "ed", "-o", "json"]).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["data"]["a"] = "2".into();
    let out = s.kubectl_stdin(&["replace", "-f", "-"], &v.to_string()).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Replaying the same (now stale) resourceVersion is a 409 Conflict.
    v["data"]["a"] = "3".into();
    let out = s.kubectl_stdin(&["replace", "-f", "-"], &v.to_string()).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the object has been modified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.kubectl_ok(&["get", "cm", "ed", "-o", "jsonpath={.data.a}"]).unwrap(), "2");
    // kubectl edit, with an editor that rewrites the value.
    let editor = s.data_dir().join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/a: \"2\"/a: edited/' \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = s.kubectl_cmd(&["edit", "cm", "ed"]).env("KUBE_EDITOR", &editor).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.kubectl_ok(&["get", "cm", "ed", "-o", "jsonpath={.data.a}"]).unwrap(), "edited");
}

#[test]
fn get_watch_shows_events_in_order() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w0}\n").unwrap();
    let mut child = s
        .kubectl_cmd(&["get", "cm", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The initial listing (after a header) arrives first.
    let initial = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(initial.starts_with("EVENT") && initial.contains("NAME") && initial.contains("DATA"), "{initial}");
    let initial = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(initial.starts_with("ADDED") && initial.contains("w0"), "{initial}");
    for i in 1..=3 {
        let out = s
            .kubectl_stdin(
                &["create", "-f", "-"],
                &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{i}}}\ndata: {{a: '{i}'}}\n"),
            )
            .unwrap();
        assert!(out.status.success());
    }
    s.kubectl_ok(&["patch", "cm", "w1", "--type=merge", "-p", r#"{"data":{"a":"changed"}}"#]).unwrap();
    s.kubectl_ok(&["delete", "cm", "w2"]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => seen.push(l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, vec!["ADDED w1 1", "ADDED w2 1", "ADDED w3 1", "MODIFIED w1 1", "DELETED w2 1"]);
}

#[test]
fn namespace_deletion_removes_contents() {
    let s = Server::start().unwrap();
    s.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n").unwrap();
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1, namespace: team}\n").unwrap();
    s.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: s1, namespace: team}\nstringData: {k: v}\n").unwrap();
    assert_eq!(s.kubectl_ok(&["get", "secret", "s1", "-n", "team", "-o", "jsonpath={.data.k}"]).unwrap(), "dg==");
    let out = s.kubectl(&["delete", "ns", "team", "--timeout=30s"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.kubectl_err(&["get", "ns", "team"]).unwrap().contains("NotFound"));
    assert!(s.kubectl_ok(&["get", "cm,secret", "-n", "team", "-o", "name"]).unwrap().trim().is_empty());
    // Creating in a missing namespace fails clearly.
    let out = s
        .kubectl_stdin(
            &["create", "-f", "-"],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2, namespace: nowhere}\n",
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn owned_cm(name: &str, owner: &str, uid: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {uid}}}]\n")
}

#[test]
fn garbage_collection_background_foreground_orphan() {
    let s = Server::start().unwrap();
    for policy in ["background", "foreground", "orphan"] {
        let owner = format!("owner-{policy}");
        s.apply(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {owner}}}\n")).unwrap();
        let uid = s.kubectl_ok(&["get", "cm", &owner, "-o", "jsonpath={.metadata.uid}"]).unwrap();
        let dep = format!("dep-{policy}");
        s.apply(&owned_cm(&dep, &owner, &uid)).unwrap();
        let out = s.kubectl(&["delete", "cm", &owner, &format!("--cascade={policy}"), "--timeout=30s"]).unwrap();
        assert!(out.status.success(), "{policy}: {}", String::from_utf8_lossy(&out.stderr));
        let dep_state = eventually(Duration::from_secs(15), || {
            let out = s.kubectl(&["get", "cm", &dep, "-o", "jsonpath={.metadata.ownerReferences}"]).ok()?;
            match policy {
                "orphan" => {
                    (out.status.success() && String::from_utf8_lossy(&out.stdout).is_empty()).then_some("orphaned")
                }
                _ => (!out.status.success()).then_some("deleted"),
            }
        });
        let want = if policy == "orphan" { "orphaned" } else { "deleted" };
        assert_eq!(dep_state, Some(want), "{policy}");
        assert!(s.kubectl_err(&["get", "cm", &owner]).unwrap().contains("NotFound"), "{policy}: owner gone");
    }
}
