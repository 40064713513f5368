//! Secrets at rest: sealed in the store (never plaintext on disk), the data directory private, the cluster
//! secret required to read the cluster's credentials, and Kubernetes' EncryptionConfiguration honoured.

use anyhow::Result;
use kumo_e2e::Server;
use kumo_store::Store;
use std::os::unix::fs::PermissionsExt;

const KEY: &str = "/registry/core/secrets/default/db";

/// The stored bytes of the test Secret, read straight from the (stopped) server's store file.
async fn stored(server: &Server) -> Vec<u8> {
    let store = kumo_store::RedbStore::open(&server.data_dir().join("kumo.redb")).expect("open the store file");
    store.get(KEY).await.unwrap().expect("the Secret is stored").value
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn secrets_are_sealed_and_the_data_directory_is_private() -> Result<()> {
    let mut server = Server::start()?;
    server.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2-xyz"])?;
    let got = server.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(got, "aHVudGVyMi14eXo=", "clients see the Secret as written");
    server.kill();

    assert_eq!(mode(server.data_dir()), 0o700, "the data directory is private");
    for f in ["kumo.redb", "cluster-secret", "kubeconfig"] {
        assert_eq!(mode(&server.data_dir().join(f)), 0o600, "{f} is private");
    }
    let raw = stored(&server).await;
    assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:kumo-cluster-secret:"), "{}", String::from_utf8_lossy(&raw));
    for plain in [&b"aHVudGVyMi14eXo="[..], b"hunter2"] {
        assert!(!raw.windows(plain.len()).any(|w| w == plain), "plaintext reached the store");
    }

    // The cluster's credentials are sealed with the cluster secret: a server with another one refuses to start.
    server.extra_args.extend(["--cluster-secret".into(), "not-the-secret-of-this-cluster".into()]);
    let err = server.restart().expect_err("a wrong cluster secret must not start");
    assert!(format!("{err:#}").contains("created with another cluster secret"), "{err:#}");
    server.extra_args.truncate(server.extra_args.len() - 2);
    server.restart()?;
    let got = server.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"])?;
    assert_eq!(got, "aHVudGVyMi14eXo=", "readable again after a restart");
    Ok(())
}

#[tokio::test]
async fn encryption_configuration_chooses_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("encryption.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: ops-key-1\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n  - identity: {}\n",
    )?;
    let cfg = cfg.to_string_lossy().into_owned();
    let mut server = Server::start_with(&["--encryption-provider-config", &cfg])?;
    server.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2-xyz"])?;
    server.kill();
    let raw = stored(&server).await;
    assert!(raw.starts_with(b"k8s:enc:aesgcm:v1:ops-key-1:"), "{}", String::from_utf8_lossy(&raw));

    // An unsupported provider is refused by name at start.
    std::fs::write(
        &cfg,
        "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - secretbox: {keys: []}\n",
    )?;
    let err = server.restart().expect_err("an unsupported provider must not start");
    assert!(format!("{err:#}").contains("secretbox is not supported"), "{err:#}");
    Ok(())
}
