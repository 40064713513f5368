//! A small ISO 9660 image writer with a Joliet tree, enough for cloud-init seed images.
//!
//! Layout of an image (2048-byte sectors):
//! ```text
//!  0..16   system area (zeros)
//!  16      primary volume descriptor      (level-1 names: `USER_DAT.;1`)
//!  17      Joliet supplementary descriptor (UCS-2 names: `user-data`), escape `%/E`
//!  18      descriptor set terminator
//!  19..    path tables: primary L, primary M, Joliet L, Joliet M (each rounded up to whole sectors)
//!          primary directory extents, then Joliet directory extents (breadth-first order)
//!          file data, shared by both trees (identical contents are stored once)
//! ```
//! Linux (`isofs`), libblkid, `isoinfo` and `xorriso` read the Joliet tree, so names keep their case, `-` and `_`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Zero sectors at the end of every image.
pub const PAD_SECTORS: u32 = 150;
/// Logical sector (and block) size of every image written here.
pub const SECTOR: usize = 2048;
/// First sector after the volume descriptors (16 system-area sectors + PVD + SVD + terminator).
const FIRST_FREE_SECTOR: u32 = 19;
/// Joliet allows 64 UCS-2 characters per identifier.
const JOLIET_MAX_NAME: usize = 64;

/// Why a file could not be added to an image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("path {0:?} is already in the image, or collides with a file or directory there")]
    Conflict(String),
    #[error("file {0:?} is larger than an ISO 9660 extent can hold (4 GiB)")]
    TooLarge(String),
}

/// Collects files (directories are implied by their paths) and writes one ISO 9660 + Joliet image.
#[derive(Debug, Clone)]
pub struct IsoBuilder {
    volume_id: String,
    files: Vec<(String, Vec<u8>)>,
    /// Seconds since the Unix epoch, used for every date in the image.
    timestamp: i64,
}

impl IsoBuilder {
    /// A builder for a volume labelled `volume_id` in both descriptors (the Joliet label holds 16 characters,
    /// the primary one 32; non-ASCII characters become `_` in the primary label). Dates default to now.
    pub fn new(volume_id: &str) -> Self {
        let now = chrono::Utc::now().timestamp();
        IsoBuilder { volume_id: volume_id.to_string(), files: Vec::new(), timestamp: now }
    }

    /// Uses `unix_secs` for every date in the image, which makes the output reproducible.
    pub fn with_timestamp(mut self, unix_secs: i64) -> Self {
        self.timestamp = unix_secs;
        self
    }

    /// Adds a file at a `/`-separated path such as `openstack/latest/user_data`; parent directories are implied.
    pub fn add_file(&mut self, path: &str, data: impl Into<Vec<u8>>) -> Result<&mut Self, IsoError> {
        let data = data.into();
        let invalid = |reason| IsoError::InvalidPath { path: path.to_string(), reason };
        let clean = path.trim_start_matches('/');
        if clean.is_empty() {
            return Err(invalid("empty path"));
        }
        for part in clean.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(invalid("empty, `.` or `..` component"));
            }
            if part.chars().count() > JOLIET_MAX_NAME {
                return Err(invalid("a component is longer than 64 characters"));
            }
            if part.chars().any(|c| (c as u32) < 0x20 || (c as u32) > 0xFFFF || "*:;?\\".contains(c)) {
                return Err(invalid("a component holds a character Joliet cannot store"));
            }
        }
        if u32::try_from(data.len()).is_err() {
            return Err(IsoError::TooLarge(clean.to_string()));
        }
        let collides = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'));
        if self.files.iter().any(|(p, _)| collides(p, clean) || collides(clean, p)) {
            return Err(IsoError::Conflict(clean.to_string()));
        }
        self.files.push((clean.to_string(), data));
        Ok(self)
    }

    /// Writes the image.
    pub fn build(&self) -> Vec<u8> {
        let mut root = DirNode::default();
        for (index, (path, _)) in self.files.iter().enumerate() {
            let mut parts: Vec<&str> = path.split('/').collect();
            let name = parts.pop().unwrap_or_default();
            let dir = parts.into_iter().fold(&mut root, |dir, part| dir.dirs.entry(part).or_default());
            dir.files.push((name, index));
        }
        let primary = flatten(&root, &primary_names);
        let joliet = flatten(&root, &joliet_names);

        // Sector layout.
        let mut alloc = Alloc(FIRST_FREE_SECTOR);
        let (p_table, j_table) = (path_table_len(&primary), path_table_len(&joliet));
        let tables = [alloc.take(p_table), alloc.take(p_table), alloc.take(j_table), alloc.take(j_table)];
        let p_dirs: Vec<(u32, u32)> = primary.iter().map(|d| alloc.take_dir(d)).collect();
        let j_dirs: Vec<(u32, u32)> = joliet.iter().map(|d| alloc.take_dir(d)).collect();
        let data_start = alloc.0;
        let mut by_content: HashMap<&[u8], u32> = HashMap::new();
        let mut extents = Vec::with_capacity(self.files.len());
        for (_, data) in &self.files {
            let lba = match data.is_empty() {
                true => data_start,
                false => *by_content.entry(data).or_insert_with(|| alloc.take(data.len())),
            };
            extents.push((lba, data.len() as u32));
        }
        // Trailing padding, as mkisofs adds by default: tools that read a fixed-size window past the volume
        // descriptors (busybox's findfs reads 68 KiB) fail on a very small device and miss the label.
        let total = alloc.0 + PAD_SECTORS;

        let mut img = vec![0u8; total as usize * SECTOR];
        let ctx = Ctx { date: dir_date(self.timestamp), extents: &extents };
        let mut vd = VolumeDescriptor {
            volume_id: &self.volume_id,
            total,
            table_len: p_table,
            l_table: tables[0],
            m_table: tables[1],
            root: p_dirs[0],
            date: &volume_date(self.timestamp),
            dir_date: ctx.date,
            joliet: false,
        };
        put(&mut img, 16, &vd.encode());
        vd = VolumeDescriptor {
            table_len: j_table,
            l_table: tables[2],
            m_table: tables[3],
            root: j_dirs[0],
            joliet: true,
            ..vd
        };
        put(&mut img, 17, &vd.encode());
        put(&mut img, 18, &terminator());
        for (tree, dirs, l, m) in [(&primary, &p_dirs, tables[0], tables[1]), (&joliet, &j_dirs, tables[2], tables[3])]
        {
            put(&mut img, l, &path_table(tree, dirs, false));
            put(&mut img, m, &path_table(tree, dirs, true));
            for (index, dir) in tree.iter().enumerate() {
                put(&mut img, dirs[index].0, &ctx.directory(dir, index, dirs));
            }
        }
        for ((_, data), (lba, _)) in self.files.iter().zip(&extents) {
            put(&mut img, *lba, data);
        }
        img
    }
}

/// Hands out consecutive sectors; holds the next free one.
struct Alloc(u32);

impl Alloc {
    fn take(&mut self, bytes: usize) -> u32 {
        let at = self.0;
        self.0 += sectors(bytes);
        at
    }

    /// Sectors for a directory extent: (lba, length in bytes).
    fn take_dir(&mut self, dir: &FlatDir) -> (u32, u32) {
        let len = record_offsets(dir).1;
        (self.take(len), len as u32)
    }
}

/// The directory tree implied by the file paths (names sorted by the `BTreeMap`).
#[derive(Default)]
struct DirNode<'a> {
    dirs: BTreeMap<&'a str, DirNode<'a>>,
    files: Vec<(&'a str, usize)>,
}

/// One directory of one tree (primary or Joliet), in breadth-first (path table) order; index 0 is the root.
#[derive(Debug)]
struct FlatDir {
    /// Encoded identifier as stored in the path table (`[0]` for the root).
    ident: Vec<u8>,
    /// Index of the parent directory (the root is its own parent).
    parent: usize,
    /// Entries sorted by encoded identifier.
    entries: Vec<(Vec<u8>, Target)>,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Dir(usize),
    File(usize),
}

/// Gives the encoded identifiers of one directory's `(name, is_dir)` entries, in the same order.
type Namer = dyn Fn(&[(&str, bool)]) -> Vec<Vec<u8>>;

/// Breadth-first listing of the tree with identifiers from `names`. Sorting children by identifier makes the order
/// the one path tables require: by level, then by parent number, then by identifier.
fn flatten(root: &DirNode, names: &Namer) -> Vec<FlatDir> {
    enum Child<'n, 'a> {
        Dir(&'n DirNode<'a>),
        File(usize),
    }
    let mut nodes = vec![root];
    let mut out = vec![FlatDir { ident: vec![0], parent: 0, entries: Vec::new() }];
    let mut i = 0;
    while i < nodes.len() {
        let node = nodes[i];
        let mut children: Vec<(&str, Child)> = node.dirs.iter().map(|(n, d)| (*n, Child::Dir(d))).collect();
        children.extend(node.files.iter().map(|(n, f)| (*n, Child::File(*f))));
        let list: Vec<(&str, bool)> = children.iter().map(|(n, c)| (*n, matches!(c, Child::Dir(_)))).collect();
        let mut named: Vec<(Vec<u8>, Child)> =
            names(&list).into_iter().zip(children.into_iter().map(|c| c.1)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(named.len());
        for (ident, child) in named {
            let target = match child {
                Child::Dir(dir) => {
                    nodes.push(dir);
                    out.push(FlatDir { ident: ident.clone(), parent: i, entries: Vec::new() });
                    Target::Dir(out.len() - 1)
                }
                Child::File(file) => Target::File(file),
            };
            entries.push((ident, target));
        }
        out[i].entries = entries;
        i += 1;
    }
    out
}

/// Level-1 identifiers: `NAME8.EXT;1` for files, `NAME8` for directories, d-characters only, unique per directory.
fn primary_names(list: &[(&str, bool)]) -> Vec<Vec<u8>> {
    fn mangle(s: &str, max: usize) -> String {
        let m = |c: char| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' };
        s.chars().map(m).take(max).collect()
    }
    let mut used = BTreeSet::new();
    list.iter()
        .map(|&(name, is_dir)| {
            let (stem, ext) = match name.rfind('.') {
                Some(dot) if dot > 0 && !is_dir => (mangle(&name[..dot], 8), mangle(&name[dot + 1..], 3)),
                _ => (mangle(name, 8), String::new()),
            };
            let key = |stem: &str| if ext.is_empty() { stem.to_string() } else { format!("{stem}.{ext}") };
            let mut unique = if stem.is_empty() { "_".to_string() } else { stem };
            let mut n = 1u32;
            while used.contains(&key(&unique)) {
                let suffix = n.to_string();
                let keep: String = unique.chars().take(8usize.saturating_sub(suffix.len())).collect();
                unique = format!("{keep}{suffix}");
                n += 1;
            }
            used.insert(key(&unique));
            match is_dir {
                true => unique.into_bytes(),
                false => format!("{unique}.{ext};1").into_bytes(),
            }
        })
        .collect()
}

/// Joliet identifiers: the real name in UCS-2 big-endian, without a `;1` version (as genisoimage and xorriso
/// write them; readers that see one strip it anyway).
fn joliet_names(list: &[(&str, bool)]) -> Vec<Vec<u8>> {
    list.iter().map(|&(name, _)| ucs2(name)).collect()
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn sectors(bytes: usize) -> u32 {
    bytes.div_ceil(SECTOR) as u32
}

fn put(img: &mut [u8], lba: u32, bytes: &[u8]) {
    let at = lba as usize * SECTOR;
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

/// Length of a directory record for an identifier of `ident_len` bytes (padded to an even length).
fn record_len(ident_len: usize) -> usize {
    33 + ident_len + (1 - ident_len % 2)
}

/// Byte offsets of the records of a directory extent: `.`, `..`, then the entries; a record never crosses a
/// sector boundary. Returns the offsets and the extent length (whole sectors).
fn record_offsets(dir: &FlatDir) -> (Vec<usize>, usize) {
    let lens = [1, 1].into_iter().chain(dir.entries.iter().map(|(ident, _)| ident.len())).map(record_len);
    let mut pos = 0;
    let mut offsets = Vec::new();
    for len in lens {
        if pos % SECTOR + len > SECTOR {
            pos = pos.next_multiple_of(SECTOR);
        }
        offsets.push(pos);
        pos += len;
    }
    (offsets, pos.next_multiple_of(SECTOR))
}

fn dir_record(ident: &[u8], (lba, len): (u32, u32), is_dir: bool, date: &[u8; 7]) -> Vec<u8> {
    let mut r = Vec::with_capacity(record_len(ident.len()));
    r.extend([record_len(ident.len()) as u8, 0]);
    r.extend(both32(lba));
    r.extend(both32(len));
    r.extend(date);
    r.extend([if is_dir { 2 } else { 0 }, 0, 0]);
    r.extend(both16(1));
    r.push(ident.len() as u8);
    r.extend(ident);
    r.resize(record_len(ident.len()), 0);
    r
}

struct Ctx<'a> {
    date: [u8; 7],
    extents: &'a [(u32, u32)],
}

impl Ctx<'_> {
    /// The extent of directory `index` of a tree whose directories sit at `dirs` (lba, length).
    fn directory(&self, dir: &FlatDir, index: usize, dirs: &[(u32, u32)]) -> Vec<u8> {
        let (offsets, len) = record_offsets(dir);
        let mut out = vec![0u8; len];
        let mut records = vec![dir_record(&[0], dirs[index], true, &self.date)];
        records.push(dir_record(&[1], dirs[dir.parent], true, &self.date));
        for (ident, target) in &dir.entries {
            records.push(match *target {
                Target::Dir(d) => dir_record(ident, dirs[d], true, &self.date),
                Target::File(f) => dir_record(ident, self.extents[f], false, &self.date),
            });
        }
        for (record, at) in records.iter().zip(offsets) {
            out[at..at + record.len()].copy_from_slice(record);
        }
        out
    }
}

fn path_table_len(tree: &[FlatDir]) -> usize {
    tree.iter().map(|d| 8 + d.ident.len() + d.ident.len() % 2).sum()
}

/// An L (little-endian) or M (big-endian) path table.
fn path_table(tree: &[FlatDir], dirs: &[(u32, u32)], big_endian: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(path_table_len(tree));
    for (index, dir) in tree.iter().enumerate() {
        let (lba, parent) = (dirs[index].0, dir.parent as u16 + 1);
        out.extend([dir.ident.len() as u8, 0]);
        out.extend(if big_endian { lba.to_be_bytes() } else { lba.to_le_bytes() });
        out.extend(if big_endian { parent.to_be_bytes() } else { parent.to_le_bytes() });
        out.extend(&dir.ident);
        if dir.ident.len() % 2 == 1 {
            out.push(0);
        }
    }
    out
}

#[derive(Clone, Copy)]
struct VolumeDescriptor<'a> {
    volume_id: &'a str,
    total: u32,
    table_len: usize,
    l_table: u32,
    m_table: u32,
    root: (u32, u32),
    date: &'a [u8; 17],
    dir_date: [u8; 7],
    joliet: bool,
}

impl VolumeDescriptor<'_> {
    /// The primary (type 1) or Joliet supplementary (type 2) volume descriptor sector.
    fn encode(&self) -> Vec<u8> {
        let mut s = vec![0u8; SECTOR];
        s[0] = if self.joliet { 2 } else { 1 };
        s[1..6].copy_from_slice(b"CD001");
        s[6] = 1;
        let text = |s: &mut [u8], at: usize, len: usize, value: &str| {
            let field = &mut s[at..at + len];
            if self.joliet {
                let units = ucs2(value);
                for (i, pair) in field.chunks_mut(2).enumerate() {
                    match units.get(i * 2..i * 2 + 2) {
                        Some(unit) if pair.len() == 2 => pair.copy_from_slice(unit),
                        _ => pair.copy_from_slice(&[0, 0x20][..pair.len()]),
                    }
                }
            } else {
                let ascii = value.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c as u8 } else { b'_' });
                field.fill(b' ');
                for (slot, byte) in field.iter_mut().zip(ascii) {
                    *slot = byte;
                }
            }
        };
        text(&mut s, 8, 32, if self.joliet { "" } else { "LINUX" });
        text(&mut s, 40, 32, self.volume_id);
        s[80..88].copy_from_slice(&both32(self.total));
        if self.joliet {
            s[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        s[120..124].copy_from_slice(&both16(1));
        s[124..128].copy_from_slice(&both16(1));
        s[128..132].copy_from_slice(&both16(SECTOR as u16));
        s[132..140].copy_from_slice(&both32(self.table_len as u32));
        s[140..144].copy_from_slice(&self.l_table.to_le_bytes());
        s[148..152].copy_from_slice(&self.m_table.to_be_bytes());
        s[156..190].copy_from_slice(&dir_record(&[0], self.root, true, &self.dir_date));
        for (at, len, value) in [(190, 128, ""), (318, 128, ""), (446, 128, ""), (574, 128, "KUMO CLOUD-INIT")] {
            text(&mut s, at, len, value);
        }
        for (at, len) in [(702, 37), (739, 37), (776, 37)] {
            text(&mut s, at, len, "");
        }
        s[813..830].copy_from_slice(self.date);
        s[830..847].copy_from_slice(self.date);
        s[847..863].fill(b'0'); // expiration: unset
        s[864..880].fill(b'0'); // effective: unset
        s[881] = 1;
        s
    }
}

fn terminator() -> Vec<u8> {
    let mut s = vec![0u8; SECTOR];
    s[0] = 255;
    s[1..6].copy_from_slice(b"CD001");
    s[6] = 1;
    s
}

/// The UTC time of `unix_secs`, clamped to the years ISO 9660 dates can hold (1900 ..= 9999).
fn civil(unix_secs: i64) -> DateTime<Utc> {
    let secs = unix_secs.clamp(-2_208_988_800, 253_402_300_799);
    DateTime::from_timestamp(secs, 0).expect("clamped into chrono's range")
}

/// 7-byte directory record date: years since 1900, month, day, hour, minute, second, UTC offset 0.
fn dir_date(unix_secs: i64) -> [u8; 7] {
    let t = civil(unix_secs);
    let year = (t.year() - 1900).clamp(0, 255) as u8;
    [year, t.month() as u8, t.day() as u8, t.hour() as u8, t.minute() as u8, t.second() as u8, 0]
}

/// 17-byte volume descriptor date: `YYYYMMDDHHMMSScc` in ASCII and a UTC offset byte of 0.
fn volume_date(unix_secs: i64) -> [u8; 17] {
    let text = civil(unix_secs).format("%Y%m%d%H%M%S00").to_string();
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(text.as_bytes());
    out
}

#[cfg(test)]
#[path = "iso9660_tests.rs"]
mod tests;
