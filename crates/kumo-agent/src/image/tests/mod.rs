//! Tests against a real Distribution registry (Debian `docker-registry`) and real `qemu-img` (Debian
//! `qemu-utils`). Images are built here and pushed through the registry's HTTP API.

mod auth;
mod errors;
mod pull;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Uri};

use super::registry::{sha256_digest, Descriptor, ImageManifest, OCI_MANIFEST};
use super::transport;
use super::{PullPolicy, RegistryConfig};

pub(super) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Layers of a test image: (media type, blob bytes).
pub(super) type Layers<'a> = Vec<(&'a str, Vec<u8>)>;

fn require(bin: &str, package: &str) {
    let found = Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(found, "{bin} is required by these tests: apt-get install -y {package}");
}

/// A `docker-registry serve` process on a free loopback port, storing into a temp dir; killed on drop.
pub(super) struct TestRegistry {
    child: Option<Child>,
    pub host: String,
    pub dir: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> Self {
        require("docker-registry", "docker-registry");
        require("qemu-img", "qemu-utils");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {host}}}\n",
                data.display()
            ),
        )
        .unwrap();
        let log = File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut reg = TestRegistry { child: Some(child), host, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&reg.host).is_err() {
            if let Some(status) = reg.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}): {}", reg.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}: {}", reg.host, reg.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Stops the registry (so later pulls cannot reach it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Registry config with this registry reachable over plain HTTP.
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig { insecure: [self.host.clone()].into(), ..Default::default() }
    }

    /// Where the registry's filesystem driver keeps a blob's bytes.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    async fn send(&self, method: Method, url: &str, content_type: &str, body: Vec<u8>) -> HeaderMap {
        let url: Uri = url.parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        let resp = transport::send(method.clone(), &url, &headers, Bytes::from(body)).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = transport::read_body(resp, 1 << 20).await.unwrap();
        assert!(status.is_success(), "{method} {url}: {status} {}", String::from_utf8_lossy(&body));
        headers
    }

    /// Uploads a blob (monolithic upload: POST, then PUT with the digest).
    pub async fn push_blob(&self, repo: &str, media_type: &str, data: Vec<u8>) -> Descriptor {
        let digest = sha256_digest(&data);
        let size = data.len() as u64;
        let base = format!("http://{}/v2/{repo}/blobs/uploads/", self.host);
        let started = self.send(Method::POST, &base, "application/octet-stream", Vec::new()).await;
        let location = started[header::LOCATION].to_str().unwrap();
        let location = transport::join(&base.parse().unwrap(), location).unwrap().to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", digest.replace(':', "%3A"));
        self.send(Method::PUT, &put, "application/octet-stream", data).await;
        Descriptor { media_type: media_type.to_string(), digest, size, platform: None }
    }

    /// Uploads a manifest (or index) under `tag` and returns its digest.
    pub async fn push_manifest(&self, repo: &str, tag: &str, media_type: &str, body: Vec<u8>) -> String {
        let digest = sha256_digest(&body);
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.host);
        self.send(Method::PUT, &url, media_type, body).await;
        digest
    }

    /// Pushes an image with a minimal config blob; returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: Layers<'_>) -> String {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let config = self.push_blob(repo, "application/vnd.oci.image.config.v1+json", config).await;
        let mut descriptors = Vec::new();
        for (media_type, data) in layers {
            descriptors.push(self.push_blob(repo, media_type, data).await);
        }
        let manifest =
            ImageManifest { schema_version: 2, media_type: OCI_MANIFEST.into(), config, layers: descriptors };
        self.push_manifest(repo, tag, OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap()).await
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One tar entry of a test layer.
pub(super) enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
    Symlink(&'a str, &'a str),
    /// A regular file whose name is written verbatim (the tar crate refuses to build `..` paths).
    RawName(&'a str, Vec<u8>),
}

/// A layer tar (owned by uid/gid 107 as KubeVirt's images are), gzip-compressed if asked.
pub(super) fn layer(entries: &[Entry], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(107);
        h.set_gid(107);
        h.set_mtime(0);
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::File(path, data) => {
                h.set_mode(0o440);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice()).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::RawName(path, data) => {
                h.set_mode(0o440);
                h.set_size(data.len() as u64);
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    if !gzip {
        return tar;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// Bytes of a fresh qcow2 image of `size` (`qemu-img create -f qcow2 x <size>`).
pub(super) fn qcow2(size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    let out = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&path).arg(size).output().unwrap();
    assert!(out.status.success(), "qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

/// A gzip layer holding one qcow2 as `disk/test.qcow2`.
pub(super) fn disk_layer(qcow2: Vec<u8>) -> (&'static str, Vec<u8>) {
    (OCI_LAYER_GZIP, layer(&[Entry::Dir("disk"), Entry::File("disk/test.qcow2", qcow2)], true))
}

/// Files left in the cache tree that are not finished base images, reference records or their info.
pub(super) fn stray_files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push(e.path());
            } else if name.ends_with(".tmp") {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}
