//! `kumo image-upload dv NAME --image-path FILE --size SIZE`, as `virtctl image-upload`: makes a DataVolume
//! whose source is `upload`, waits until its volume takes the upload, asks for an UploadTokenRequest, and
//! POSTs the file to the upload proxy (`CDIConfig.status.uploadProxyURL`) with a progress bar; then waits
//! until the image is written.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper_util::rt::TokioIo;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kumo_api::cdi::DataVolume;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

#[derive(clap::Args, Clone, Debug)]
pub struct UploadArgs {
    /// What to upload into: `dv` (a DataVolume kumo makes, unless --no-create).
    pub kind: String,
    pub name: String,
    /// The image to send (qcow2, raw or iso; gz or xz compressed too).
    #[arg(long)]
    pub image_path: PathBuf,
    /// The volume's size (e.g. 10Gi); the image is grown to it.
    #[arg(long)]
    pub size: Option<String>,
    #[arg(long)]
    pub storage_class: Option<String>,
    #[arg(long)]
    pub access_mode: Option<String>,
    /// `filesystem` (a qcow2 image, the default) or `block` (raw).
    #[arg(long)]
    pub volume_mode: Option<String>,
    /// The upload proxy (default: CDIConfig's status.uploadProxyURL).
    #[arg(long)]
    pub uploadproxy_url: Option<String>,
    /// Accept any certificate from the upload proxy.
    #[arg(long)]
    pub insecure: bool,
    /// Upload into an existing DataVolume.
    #[arg(long)]
    pub no_create: bool,
    /// How long to wait for the volume to take the upload, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

pub async fn image_upload(config: kube::Config, ns: &str, a: &UploadArgs) -> Result<()> {
    if a.kind != "dv" && a.kind != "datavolume" {
        bail!("kumo uploads into DataVolumes: use `kumo image-upload dv {} ...`", a.name);
    }
    let file = tokio::fs::File::open(&a.image_path)
        .await
        .with_context(|| format!("opening {} (--image-path)", a.image_path.display()))?;
    let total = file.metadata().await?.len();
    let client = kube::Client::try_from(config.clone())?;
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), ns);
    if !a.no_create {
        let size = a.size.as_deref().context("--size is required to make the DataVolume (e.g. --size 10Gi)")?;
        let mut storage = json!({"resources": {"requests": {"storage": size}}});
        if let Some(c) = &a.storage_class {
            storage["storageClassName"] = json!(c);
        }
        if let Some(m) = &a.access_mode {
            storage["accessModes"] = json!([m]);
        }
        if let Some(m) = &a.volume_mode {
            storage["volumeMode"] = json!(if m.eq_ignore_ascii_case("block") { "Block" } else { "Filesystem" });
        }
        let dv: DataVolume = serde_json::from_value(json!({"metadata": {"name": a.name, "namespace": ns},
            "spec": {"source": {"upload": {}}, "storage": storage}}))?;
        match dvs.create(&PostParams::default(), &dv).await {
            Ok(_) => println!("DataVolume {ns}/{} created", a.name),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                bail!("DataVolume {} already exists: use --no-create to upload into it", a.name)
            }
            Err(e) => return Err(e).context("creating the DataVolume"),
        }
    }
    wait_phase(&dvs, &a.name, "UploadReady", a.wait_secs).await?;
    let token = token(&client, ns, &a.name).await?;
    let url = match &a.uploadproxy_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => proxy_url(&client).await?,
    };
    send(&config, &url, &token, file, total, a.insecure).await?;
    println!("Uploading data completed successfully, waiting for processing to complete, you can hit ctrl-c without interrupting the progress");
    wait_phase(&dvs, &a.name, "Succeeded", a.wait_secs).await?;
    println!("Processing completed successfully");
    println!("Uploading {} completed successfully", a.image_path.display());
    Ok(())
}

/// Waits until the DataVolume's phase is `want`, saying what it waits for; a failed one is an error.
async fn wait_phase(dvs: &Api<DataVolume>, name: &str, want: &str, secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut said = String::new();
    loop {
        let dv = dvs.get(name).await.with_context(|| format!("reading DataVolume {name}"))?;
        let st = dv.status.unwrap_or_default();
        let phase = st.phase.unwrap_or_default();
        if phase == want {
            return Ok(());
        }
        if phase == "Failed" {
            bail!("DataVolume {name} failed: see `kubectl describe dv {name}`");
        }
        if phase != said {
            println!(
                "Waiting for DataVolume {name} to be {want} (now {})...",
                if phase.is_empty() { "new" } else { &phase }
            );
            said = phase;
        }
        if Instant::now() > deadline {
            bail!("DataVolume {name} is not {want} after {secs}s (phase {said}): see `kubectl describe dv {name}`");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn token(client: &kube::Client, ns: &str, pvc: &str) -> Result<String> {
    let gvk = GroupVersionKind::gvk("upload.cdi.kubevirt.io", "v1beta1", "UploadTokenRequest");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "uploadtokenrequests"));
    let req: DynamicObject = serde_json::from_value(json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1",
        "kind": "UploadTokenRequest", "metadata": {"name": "token-for-kumo"}, "spec": {"pvcName": pvc}}))?;
    let got = api.create(&PostParams::default(), &req).await.context("asking for an upload token")?;
    let token = got.data.pointer("/status/token").and_then(Value::as_str).map(str::to_string);
    token.context("the UploadTokenRequest came back without a token")
}

async fn proxy_url(client: &kube::Client) -> Result<String> {
    let gvk = GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "cdiconfigs"));
    let config = api.get("config").await.context("reading CDIConfig config for the upload proxy's URL")?;
    let url = config.data.pointer("/status/uploadProxyURL").and_then(Value::as_str);
    Ok(url.context("CDIConfig has no status.uploadProxyURL: give --uploadproxy-url")?.trim_end_matches('/').to_string())
}

/// POSTs the file to the upload proxy, showing progress on stderr.
async fn send(
    config: &kube::Config,
    url: &str,
    token: &str,
    mut file: tokio::fs::File,
    total: u64,
    insecure: bool,
) -> Result<()> {
    let uri: http::Uri =
        format!("{url}/v1beta1/upload").parse().with_context(|| format!("the upload proxy URL {url}"))?;
    let (host, port, stream) = crate::virtctl::connect_tls(config, &uri, insecure).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (tx, rx) = futures::channel::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(8);
    let reader = tokio::spawn(async move {
        let mut tx = tx;
        let (mut sent, start) = (0u64, Instant::now());
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = futures::SinkExt::send(&mut tx, Err(e)).await;
                    break;
                }
            };
            if futures::SinkExt::send(&mut tx, Ok(hyper::body::Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                .await
                .is_err()
            {
                break;
            }
            sent += n as u64;
            bar(sent, total, start.elapsed());
        }
        eprintln!();
    });
    let body = StreamBody::new(rx);
    let req = http::Request::post(uri.path())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .header(http::header::CONTENT_LENGTH, total)
        .body(body)?;
    let resp = sender.send_request(req).await.context("sending the image to the upload proxy")?;
    let status = resp.status();
    let answer = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
    let _ = reader.await;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&answer);
        let msg = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["message"].as_str().map(str::to_string));
        bail!("the upload proxy answered {status}: {}", msg.unwrap_or_else(|| text.to_string()));
    }
    Ok(())
}

/// ` 47.30% [=========>          ] 9.0 MiB / 19.0 MiB  12.1 MiB/s`, redrawn in place.
fn bar(sent: u64, total: u64, elapsed: Duration) {
    let frac = if total == 0 { 1.0 } else { sent as f64 / total as f64 };
    let width = 30;
    let filled = ((frac * width as f64) as usize).min(width);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rate = mib(sent) / elapsed.as_secs_f64().max(0.001);
    let line = format!(
        "\r{:>7.2}% [{}{}] {:.1} MiB / {:.1} MiB  {:.1} MiB/s",
        frac * 100.0,
        "=".repeat(filled),
        " ".repeat(width - filled),
        mib(sent),
        mib(total),
        rate
    );
    let mut err = std::io::stderr();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}
