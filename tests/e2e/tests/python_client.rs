//! The Python `kubernetes` client (installed by scripts/setup.sh) against the real server.

use kumo_e2e::Server;

#[test]
fn python_client_crud_watch_and_custom_objects() {
    let s = Server::start().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/test_client.py");
    let out = std::process::Command::new("python3").arg(script).arg(s.kubeconfig()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}
