//! virtctl-like verbs: `kumo start|stop|restart VM`, `kumo pause|unpause vmi|vm NAME`,
//! `kumo addvolume|removevolume VMI --volume-name NAME`. Each is one PUT to
//! KubeVirt's `subresources.kubevirt.io/v1` API, so they work against kumo or a real KubeVirt.

use anyhow::{bail, Context, Result};

/// PUTs `/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{verb}`.
pub async fn put_subresource(client: &kube::Client, ns: &str, plural: &str, name: &str, verb: &str) -> Result<()> {
    put_subresource_with(client, ns, plural, name, verb, &serde_json::json!({})).await
}

/// [`put_subresource`] with a body.
pub async fn put_subresource_with(
    client: &kube::Client,
    ns: &str,
    plural: &str,
    name: &str,
    verb: &str,
    body: &serde_json::Value,
) -> Result<()> {
    let url = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{verb}");
    // A request right after another (`kumo stop x; kumo start x`) can find the first one still being carried
    // out: the server says to try again shortly, so this waits a little before giving up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let req =
            http::Request::put(&url).header("content-type", "application/json").body(body.to_string().into_bytes())?;
        match client.request_text(req).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e))
                if e.code == 409 && e.message.contains("try again") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(kube::Error::Api(e)) => bail!("{verb} {name}: {} ({})", e.message, e.reason),
            Err(e) => return Err(e).with_context(|| format!("{verb} {name}: talking to the API server")),
        }
    }
}

/// GETs `/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{what}` (guestosinfo, userlist, ...).
pub async fn get_subresource(
    client: &kube::Client,
    ns: &str,
    plural: &str,
    name: &str,
    what: &str,
) -> Result<serde_json::Value> {
    let url = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{what}");
    let req = http::Request::get(&url).body(Vec::new())?;
    match client.request_text(req).await {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{what} {name}: the answer is not JSON")),
        Err(kube::Error::Api(e)) => bail!("{what} {name}: {} ({})", e.message, e.reason),
        Err(e) => Err(e).with_context(|| format!("{what} {name}: talking to the API server")),
    }
}

/// `kumo addvolume VMI --volume-name=NAME` (as `virtctl addvolume`): a DataVolume of that name is plugged in as
/// a dataVolume, else the claim of that name; with `persist`, the VM's template keeps it too.
pub async fn add_volume(
    client: &kube::Client,
    ns: &str,
    vmi: &str,
    volume: &str,
    serial: Option<&str>,
    persist: bool,
) -> Result<()> {
    let dvs: kube::Api<kumo_api::cdi::DataVolume> = kube::Api::namespaced(client.clone(), ns);
    let is_dv = dvs.get_opt(volume).await.with_context(|| format!("looking up DataVolume {volume}"))?.is_some();
    let source = if is_dv {
        serde_json::json!({"dataVolume": {"name": volume, "hotpluggable": true}})
    } else {
        serde_json::json!({"persistentVolumeClaim": {"claimName": volume, "hotpluggable": true}})
    };
    let mut disk = serde_json::json!({"name": volume, "disk": {"bus": "scsi"}});
    if let Some(s) = serial {
        disk["serial"] = serde_json::json!(s);
    }
    let body = serde_json::json!({"name": volume, "disk": disk, "volumeSource": source});
    let plural = if persist { "virtualmachines" } else { "virtualmachineinstances" };
    put_subresource_with(client, ns, plural, vmi, "addvolume", &body).await
}

/// `kumo removevolume VMI --volume-name=NAME` (as `virtctl removevolume`).
pub async fn remove_volume(client: &kube::Client, ns: &str, vmi: &str, volume: &str, persist: bool) -> Result<()> {
    let plural = if persist { "virtualmachines" } else { "virtualmachineinstances" };
    put_subresource_with(client, ns, plural, vmi, "removevolume", &serde_json::json!({"name": volume})).await
}

/// `vmi`/`vm` (and KubeVirt's long names) to a plural resource.
/// Clears the VM's pinned flavor revisions (only those it has), so its next start pins the flavors anew.
pub async fn update_flavor(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    use kube::api::{Api, Patch, PatchParams};
    let vms: Api<kumo_api::kubevirt::VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vm = vms.get(name).await.with_context(|| format!("reading VM {name}"))?;
    let mut spec = serde_json::Map::new();
    for (field, r) in [("instancetype", &vm.spec.instancetype), ("preference", &vm.spec.preference)] {
        if r.is_some() {
            spec.insert(field.into(), serde_json::json!({"revisionName": null}));
        }
    }
    anyhow::ensure!(!spec.is_empty(), "VM {name} has neither an instancetype nor a preference");
    let patch = serde_json::json!({"spec": spec});
    vms.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

pub fn kind_plural(kind: &str) -> Result<&'static str> {
    Ok(match kind {
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => "virtualmachineinstances",
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => "virtualmachines",
        other => bail!("unknown kind {other:?}: use vm or vmi"),
    })
}

/// A TLS connection to `url`'s host, trusting the kubeconfig's CA (or, with `insecure`, any certificate).
pub async fn connect_tls(
    config: &kube::Config,
    url: &http::Uri,
    insecure: bool,
) -> Result<(String, u16, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    let host = url.host().context("the URL has no host")?.to_string();
    let port = url.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for der in config.root_cert.clone().unwrap_or_default() {
        roots.add(rustls::pki_types::CertificateDer::from(der)).context("the kubeconfig's CA certificate")?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let tls = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {url}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(server_name, tcp).await?;
    Ok((host, port, stream))
}

/// `--insecure`: any server certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `kumo console NAME`: the VMI's serial console through the API server, interactive until Ctrl-].
pub async fn console(config: kube::Config, ns: &str, name: &str) -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    let ws = crate::access::open(&config, ns, "virtualmachineinstances", name, "console").await?;
    eprintln!("Successfully connected to {name} console. The escape sequence is ^]");
    let _raw = RawTerminal::enter();
    let (mut tx, mut rx) = ws.split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = [0u8; 1024];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => {
                let n = n?;
                if n == 0 {
                    // Input closed (not a terminal): keep printing until the other side ends.
                    stdin_open = false;
                    continue;
                }
                if let Some(pos) = buf[..n].iter().position(|b| *b == 0x1d) {
                    if pos > 0 { tx.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..pos]))).await?; }
                    break;
                }
                tx.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await?;
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => { stdout.write_all(&b).await?; stdout.flush().await?; }
                Some(Ok(Message::Text(t))) => { stdout.write_all(t.as_bytes()).await?; stdout.flush().await?; }
                Some(Ok(Message::Close(frame))) => {
                    if let Some(f) = frame.filter(|f| !f.reason.is_empty()) {
                        eprintln!("\r\nconsole {name} closed: {}\r", f.reason);
                    }
                    break;
                }
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

/// Puts a terminal on stdin into raw mode (so keys reach the guest as typed) and restores it on drop.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else { return RawTerminal(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        RawTerminal(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}
