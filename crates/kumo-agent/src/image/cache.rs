//! The node's cache of containerDisk base images, one per image manifest digest, shared read-only by every VM
//! that boots from it (each VM writes to its own qcow2 overlay, see [`super::disk::create_overlay`]).
//!
//! Layout under the cache root:
//! ```text
//! sha256-<hex>/disk.img    the base image (mode 0444), renamed into place only once complete and verified
//! sha256-<hex>/info.json   format, virtual size, digest; written before disk.img appears
//! sha256-<hex>/files/...   single files asked for by path (a kernelBoot container's kernel and initrd), 0444
//! sha256-<hex>/.*.tmp      downloads and extractions in progress (removed before the next attempt)
//! refs/<sha256(reference)> last digest a reference resolved to, for pulls while the registry is unreachable
//! ```
//! Directories are named `sha256-<hex>` rather than by the digest itself because QEMU treats a `name:` prefix
//! in a relative backing-file path as a protocol.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::disk::{image_info, BASE_FORMATS};
use super::reference::Reference;
use super::registry::{sha256_digest, Pulled, RegistryClient, RegistryConfig};

/// A verified base image in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedDisk {
    /// `<root>/sha256-<hex>/disk.img`; read-only, never modified once present.
    pub path: PathBuf,
    /// `qcow2` or `raw`, as probed by `qemu-img info`: pass it as the overlay's backing format.
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The image manifest digest (`sha256:...`) the disk came from.
    pub digest: String,
}

/// When to ask the registry (Kubernetes' `imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference every time (the cache still serves when the registry is unreachable).
    Always,
    /// Use what the reference last resolved to when that is cached.
    IfNotPresent,
    /// Only the cache, never the network.
    Never,
}

impl PullPolicy {
    /// An explicit `imagePullPolicy`, else Kubernetes' default: Always for `:latest` (or no tag), IfNotPresent
    /// for any other tag or a digest.
    pub fn for_image(policy: Option<&str>, reference: &str) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match Reference::parse(reference) {
                Ok(r) if r.digest.is_none() && r.tag.as_deref() == Some(super::reference::DEFAULT_TAG) => {
                    PullPolicy::Always
                }
                Ok(_) => PullPolicy::IfNotPresent,
                Err(_) => PullPolicy::Always,
            },
        }
    }
}

/// The per-node base image cache. Cheap to share behind an `Arc`; concurrent pulls of one digest are
/// serialised so each base image is downloaded once.
pub struct ImageCache {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageCache { root: root.into(), locks: Mutex::new(HashMap::new()) }
    }

    /// Returns the base image for `reference`, pulling it if needed. A digest reference already in the cache
    /// needs no network. A tag is resolved against the registry (mirrors first); if that fails and the tag
    /// was pulled before, the cached image is used and a warning logged, so VMs still start while a registry
    /// is down.
    pub async fn disk_for(&self, reference: &str, cfg: &RegistryConfig, policy: PullPolicy) -> Result<CachedDisk> {
        match self.get(reference, cfg, policy, &Select::Disk).await? {
            Got::Disk(d) => Ok(d),
            Got::Files(_) => unreachable!("a disk was asked for"),
        }
    }

    /// The files at the absolute `paths` in the image (KubeVirt's kernelBoot container: kernel and initrd),
    /// extracted once per manifest digest and read-only, in the order asked. Resolution, mirrors and the
    /// offline fallback are as for [`ImageCache::disk_for`].
    pub async fn files_for(
        &self,
        reference: &str,
        cfg: &RegistryConfig,
        policy: PullPolicy,
        paths: &[&str],
    ) -> Result<Vec<PathBuf>> {
        let mut wanted = Vec::new();
        for p in paths {
            let rel = p.trim_start_matches('/');
            if !p.starts_with('/') || rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                bail!("{p:?} is not an absolute path to a file");
            }
            wanted.push(rel.to_string());
        }
        match self.get(reference, cfg, policy, &Select::Files(wanted)).await? {
            Got::Files(f) => Ok(f),
            Got::Disk(_) => unreachable!("files were asked for"),
        }
    }

    async fn get(&self, reference: &str, cfg: &RegistryConfig, policy: PullPolicy, want: &Select) -> Result<Got> {
        let r = Reference::parse(reference)?;
        // A digest names exactly one image, so a cached one is always current.
        if r.digest.is_some() || policy != PullPolicy::Always {
            if let Some(hit) = self.lookup(&r, want)? {
                return Ok(hit);
            }
        }
        if policy == PullPolicy::Never {
            bail!("{r} is not in the node's image cache, and imagePullPolicy is Never");
        }
        let client = RegistryClient::new(cfg.clone());
        let pulled = match client.manifest(&r).await {
            Ok(p) => p,
            Err(e) => match self.lookup(&r, want)? {
                Some(hit) => {
                    tracing::warn!(reference = %r, error = %format!("{e:#}"),
                        "cannot resolve the reference; using what it last resolved to from the cache");
                    return Ok(hit);
                }
                None => return Err(e),
            },
        };
        let lock = self.locks.lock().unwrap().entry(pulled.digest.clone()).or_default().clone();
        let _guard = lock.lock().await;
        let got = match self.cached(&pulled.digest, want)? {
            Some(hit) => hit,
            None => self.pull(&client, &pulled, want).await?,
        };
        self.remember(&r, &pulled.digest)?;
        Ok(got)
    }

    /// What `want` selects of `reference` in the cache, without touching the network: by its digest, or by the
    /// digest it last resolved to.
    fn lookup(&self, reference: &Reference, want: &Select) -> Result<Option<Got>> {
        if let Some(digest) = &reference.digest {
            if let Some(hit) = self.cached(digest, want)? {
                return Ok(Some(hit));
            }
        }
        match std::fs::read_to_string(self.ref_path(reference)) {
            Ok(s) => self.cached(s.lines().next().unwrap_or(""), want),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the image reference cache"),
        }
    }

    fn dir_for(&self, digest: &str) -> PathBuf {
        self.root.join(digest.replace(':', "-"))
    }

    fn ref_path(&self, r: &Reference) -> PathBuf {
        self.root.join("refs").join(&sha256_digest(r.to_string().as_bytes())[7..])
    }

    fn cached(&self, digest: &str, want: &Select) -> Result<Option<Got>> {
        if super::reference::parse_digest(digest).is_err() {
            return Ok(None);
        }
        let dir = self.dir_for(digest);
        if let Select::Files(paths) = want {
            let files: Vec<PathBuf> = paths.iter().map(|p| dir.join("files").join(p)).collect();
            return Ok(files.iter().all(|f| f.is_file()).then_some(Got::Files(files)));
        }
        if !dir.join("disk.img").is_file() {
            return Ok(None);
        }
        let info =
            std::fs::read(dir.join("info.json")).with_context(|| format!("reading {}/info.json", dir.display()))?;
        let disk: CachedDisk = serde_json::from_slice(&info).context("parsing cached image info")?;
        Ok(Some(Got::Disk(CachedDisk { path: dir.join("disk.img"), ..disk })))
    }

    fn remember(&self, r: &Reference, digest: &str) -> Result<()> {
        let path = self.ref_path(r);
        std::fs::create_dir_all(path.parent().unwrap())?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!("{}-{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&tmp, format!("{digest}\n{r}\n"))?;
        std::fs::rename(&tmp, &path).context("recording image reference")?;
        Ok(())
    }

    /// Downloads the layers, extracts what `want` selects (the one `disk/` file, verified with qemu-img, or
    /// the named files), and renames it into place. Caller holds the digest's lock.
    async fn pull(&self, client: &RegistryClient, pulled: &Pulled, want: &Select) -> Result<Got> {
        let dir = self.dir_for(&pulled.digest);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_temp_files(&dir)?;
        let result = self.download(client, pulled, &dir, want).await;
        if result.is_err() {
            // Leave nothing half-written: drop partial downloads and, if nothing else is there, the directory.
            let _ = remove_temp_files(&dir);
            let _ = std::fs::remove_dir(&dir);
        }
        result
    }

    async fn download(&self, client: &RegistryClient, pulled: &Pulled, dir: &Path, want: &Select) -> Result<Got> {
        let r = &pulled.reference;
        tracing::info!(reference = %r, digest = %pulled.digest, endpoint = %pulled.endpoint, "pulling image");

        let mut found = BTreeMap::new();
        let mut next_tmp = 0usize;
        for (i, layer) in pulled.manifest.layers.iter().enumerate() {
            if layer.media_type.contains("zstd") {
                bail!("pulling {r}: layer {} is zstd-compressed, which is not supported", layer.digest);
            }
            let blob = dir.join(format!(".layer-{i}.tmp"));
            client.blob_to_file(pulled, layer, &blob).await?;
            let (dir2, blob2, mut found2) = (dir.to_path_buf(), blob.clone(), std::mem::take(&mut found));
            let select = want.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                let res = scan_layer(&blob2, &dir2, &select, &mut next_tmp, &mut found2);
                res.map(|()| (found2, next_tmp))
            })
            .await?;
            let _ = std::fs::remove_file(&blob);
            let (f, n) = scanned.with_context(|| format!("pulling {r}: layer {}", layer.digest))?;
            (found, next_tmp) = (f, n);
        }
        if let Select::Files(paths) = want {
            return install_files(r, dir, paths, &mut found).await.map(Got::Files);
        }
        let (name, disk_tmp) = match found.len() {
            1 => found.pop_first().unwrap(),
            0 => bail!("pulling {r}: the image has no disk file under disk/ (a containerDisk holds exactly one)"),
            n => {
                let names: Vec<&str> = found.keys().map(String::as_str).collect();
                bail!(
                    "pulling {r}: the image has {n} files under disk/ ({}); a containerDisk holds exactly one",
                    names.join(", ")
                )
            }
        };
        self.install(r, &pulled.digest, dir, &name, &disk_tmp).await.map(Got::Disk)
    }

    /// Verifies the extracted disk `name` (at `tmp`) and renames it into place with its info.
    async fn install(&self, r: &Reference, digest: &str, dir: &Path, name: &str, tmp: &Path) -> Result<CachedDisk> {
        let info = match image_info(tmp).await {
            Ok(info) => info,
            Err(e) => bail!("pulling {r}: {name} is corrupt or unsupported: {}", e.root_cause()),
        };
        if !BASE_FORMATS.contains(&info.format.as_str()) {
            bail!("pulling {r}: {name} is a {} image; containerDisks must be qcow2 or raw", info.format);
        }
        if let Some(backing) = info.backing_file.or(info.data_file) {
            bail!("pulling {r}: {name} refers to an external file {backing:?}; base images must be self-contained");
        }
        let disk = CachedDisk {
            path: dir.join("disk.img"),
            format: info.format,
            virtual_size: info.virtual_size,
            digest: digest.to_string(),
        };
        let (tmp, dir2, disk2) = (tmp.to_path_buf(), dir.to_path_buf(), disk.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            let f = File::open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
            f.sync_all()?;
            let info_tmp = dir2.join(".info.json.tmp");
            let mut out = File::create(&info_tmp)?;
            out.write_all(&serde_json::to_vec_pretty(&disk2)?)?;
            out.sync_all()?;
            std::fs::rename(&info_tmp, dir2.join("info.json"))?;
            std::fs::rename(&tmp, &disk2.path)?;
            File::open(&dir2)?.sync_all()?;
            Ok(())
        })
        .await?
        .with_context(|| format!("installing {}", disk.path.display()))?;
        tracing::info!(reference = %r, digest, path = %disk.path.display(), format = %disk.format, "containerDisk cached");
        Ok(disk)
    }
}

/// What a pull extracts from an image's layers.
#[derive(Clone, Debug)]
enum Select {
    /// The one file under `disk/` (a containerDisk).
    Disk,
    /// These files, by path relative to the image root.
    Files(Vec<String>),
}

impl Select {
    fn matches(&self, parts: &[String]) -> bool {
        match self {
            Select::Disk => parts.len() > 1 && parts[0] == "disk",
            Select::Files(paths) => paths.contains(&parts.join("/")),
        }
    }
}

enum Got {
    Disk(CachedDisk),
    Files(Vec<PathBuf>),
}

/// Moves each extracted file into `dir/files/<path>`, read-only; fails naming any the image lacks.
async fn install_files(
    r: &Reference,
    dir: &Path,
    paths: &[String],
    found: &mut BTreeMap<String, PathBuf>,
) -> Result<Vec<PathBuf>> {
    let missing: Vec<String> = paths.iter().filter(|p| !found.contains_key(*p)).map(|p| format!("/{p}")).collect();
    if !missing.is_empty() {
        bail!("pulling {r}: the image has no file {}", missing.join(", "));
    }
    let mut out = Vec::new();
    for p in paths {
        let (tmp, dest) = (found[p].clone(), dir.join("files").join(p));
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(dest2.parent().expect("files/ is a parent"))?;
            let f = File::open(&tmp)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest2)?;
            Ok(())
        })
        .await?
        .with_context(|| format!("installing {}", dest.display()))?;
        out.push(dest);
    }
    tracing::info!(reference = %r, files = ?paths, "image files cached");
    Ok(out)
}

fn remove_temp_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Reads one (optionally gzip-compressed) tar layer, extracting the regular files `select` matches into temp
/// files in `dir` and applying whiteouts to files found in earlier layers. `found` maps paths to temp files.
fn scan_layer(
    blob: &Path,
    dir: &Path,
    select: &Select,
    next_tmp: &mut usize,
    found: &mut BTreeMap<String, PathBuf>,
) -> Result<()> {
    let mut file = File::open(blob)?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    file.seek(SeekFrom::Start(0))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file))),
        [0x28, 0xb5, 0x2f, 0xfd] => bail!("layer is zstd-compressed, which is not supported"),
        _ => Box::new(BufReader::with_capacity(1 << 20, file)),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("reading layer tar")? {
        let mut entry = entry.context("reading layer tar")?;
        let raw = entry.path().context("reading layer tar entry name")?.into_owned();
        let mut parts = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    bail!("layer entry {:?} escapes the image root (path traversal)", raw.display().to_string())
                }
            }
        }
        let name = parts.join("/");
        let kind = entry.header().entry_type();
        // Whiteouts (OCI layer spec): `.wh.<name>` deletes <name> from lower layers, `.wh..wh..opq` empties a dir.
        if let Some(last) = parts.last() {
            if let Some(target) = last.strip_prefix(".wh.") {
                let parent = parts[..parts.len() - 1].join("/");
                let prefix = if target == ".wh..opq" { parent } else { join_path(&parent, target) };
                found.retain(|path, tmp| {
                    let drop = prefix.is_empty() || path == &prefix || path.starts_with(&format!("{prefix}/"));
                    if drop {
                        let _ = std::fs::remove_file(&*tmp);
                    }
                    !drop
                });
                continue;
            }
        }
        if !select.matches(&parts) {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name().ok().flatten().map(|t| t.display().to_string()).unwrap_or_default();
            bail!(
                "{name} is a link (to {target:?}); kumo takes only regular files from an image: name the file itself"
            );
        }
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind.is_gnu_sparse()) {
            bail!("{name} is not a regular file ({kind:?})");
        }
        let tmp = dir.join(format!(".file-{next_tmp}.tmp"));
        *next_tmp += 1;
        copy_sparse(&mut entry, &tmp).with_context(|| format!("extracting {name}"))?;
        if let Some(old) = found.insert(name, tmp) {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(())
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Copies `src` into a new file at `dest`, leaving holes where whole 64 KiB blocks are zero (raw images are
/// mostly zeros).
fn copy_sparse(src: &mut impl Read, dest: &Path) -> Result<()> {
    const BLOCK: usize = 64 << 10;
    let mut out = File::create(dest)?;
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match src.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(&buf[..filled])?;
        }
        len += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    out.set_len(len)?;
    Ok(())
}
