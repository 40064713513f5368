//! Structural tests of the ISO 9660 writer, using a small independent reader that checks the on-disk invariants.

use super::*;

const T: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A both-endian 32-bit field whose halves must agree.
fn both_u32(b: &[u8], at: usize) -> u32 {
    let le = le32(b, at);
    assert_eq!(le, u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()), "both-endian field at {at}");
    le
}

fn both_u16(b: &[u8], at: usize) -> u16 {
    let le = u16::from_le_bytes([b[at], b[at + 1]]);
    assert_eq!(le, u16::from_be_bytes([b[at + 2], b[at + 3]]), "both-endian field at {at}");
    le
}

fn sector(img: &[u8], lba: u32) -> &[u8] {
    &img[lba as usize * SECTOR..(lba as usize + 1) * SECTOR]
}

#[derive(Debug, Clone)]
struct Record {
    ident: Vec<u8>,
    lba: u32,
    len: u32,
    is_dir: bool,
}

fn parse_record(r: &[u8]) -> Record {
    assert_eq!(r[0] as usize % 2, 0, "record length is even");
    assert_eq!(r[0] as usize, record_len(r[32] as usize));
    assert_eq!(both_u16(r, 28), 1, "volume sequence number");
    assert_eq!(&r[18..25], &dir_date(T), "recording date");
    Record {
        ident: r[33..33 + r[32] as usize].to_vec(),
        lba: both_u32(r, 2),
        len: both_u32(r, 10),
        is_dir: r[25] & 2 != 0,
    }
}

/// The records of a directory extent; asserts that none crosses a sector boundary.
fn read_dir(img: &[u8], lba: u32, len: u32) -> Vec<Record> {
    assert_eq!(len as usize % SECTOR, 0, "directory extents are whole sectors");
    let bytes = &img[lba as usize * SECTOR..lba as usize * SECTOR + len as usize];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rec_len = bytes[pos] as usize;
        if rec_len == 0 {
            pos = (pos + 1).next_multiple_of(SECTOR);
            continue;
        }
        assert!(pos % SECTOR + rec_len <= SECTOR, "record at {pos} crosses a sector boundary");
        out.push(parse_record(&bytes[pos..pos + rec_len]));
        pos += rec_len;
    }
    out
}

fn decode(ident: &[u8], joliet: bool) -> String {
    match joliet {
        true => {
            String::from_utf16(&ident.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect::<Vec<_>>()).unwrap()
        }
        false => String::from_utf8(ident.to_vec()).unwrap(),
    }
}

/// Walks a tree from its volume descriptor; returns file path → contents and directory path → lba, checking
/// `.`/`..`, the sort order of entries and the path tables on the way.
type Files = BTreeMap<String, Vec<u8>>;

fn read_tree(img: &[u8], descriptor: u32) -> (Files, Vec<(String, u32)>) {
    let vd = sector(img, descriptor);
    let joliet = vd[0] == 2;
    let root = parse_record(&vd[156..190]);
    assert_eq!(root.ident, vec![0]);
    let mut files = BTreeMap::new();
    let mut dirs = vec![(String::new(), root.lba, root.lba)]; // (path, lba, parent lba)
    let mut i = 0;
    while i < dirs.len() {
        let (path, lba, parent) = dirs[i].clone();
        let records = read_dir(img, lba, read_dir(img, lba, SECTOR as u32)[0].len);
        assert_eq!((records[0].ident.as_slice(), records[0].lba), (&[0u8][..], lba), "`.` of {path:?}");
        assert_eq!((records[1].ident.as_slice(), records[1].lba), (&[1u8][..], parent), "`..` of {path:?}");
        let idents: Vec<&Vec<u8>> = records[2..].iter().map(|r| &r.ident).collect();
        assert!(idents.windows(2).all(|w| w[0] < w[1]), "entries of {path:?} are sorted and unique");
        for r in &records[2..] {
            let name = decode(&r.ident, joliet);
            if r.is_dir {
                dirs.push((format!("{path}/{name}"), r.lba, lba));
            } else {
                let name = if joliet { &name } else { name.strip_suffix(";1").expect("level-1 files carry version 1") };
                let at = r.lba as usize * SECTOR;
                files.insert(format!("{path}/{name}"), img[at..at + r.len as usize].to_vec());
            }
        }
        i += 1;
    }
    check_path_tables(img, vd, &dirs, joliet);
    (files, dirs.into_iter().map(|(p, l, _)| (p, l)).collect())
}

/// The L and M path tables list the directories breadth-first with the right extents and parent numbers.
fn check_path_tables(img: &[u8], vd: &[u8], dirs: &[(String, u32, u32)], joliet: bool) {
    let size = both_u32(vd, 132) as usize;
    let (l_at, m_at) = (le32(vd, 140) as usize * SECTOR, u32::from_be_bytes(vd[148..152].try_into().unwrap()));
    let (l, m) = (&img[l_at..l_at + size], &img[m_at as usize * SECTOR..m_at as usize * SECTOR + size]);
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < size {
        let id_len = l[pos] as usize;
        assert_eq!(l[pos], m[pos]);
        let lba = le32(l, pos + 2);
        assert_eq!(lba, u32::from_be_bytes(m[pos + 2..pos + 6].try_into().unwrap()));
        let parent = u16::from_le_bytes([l[pos + 6], l[pos + 7]]);
        assert_eq!(parent, u16::from_be_bytes([m[pos + 6], m[pos + 7]]));
        assert_eq!(l[pos + 8..pos + 8 + id_len], m[pos + 8..pos + 8 + id_len]);
        seen.push((lba, parent, l[pos + 8..pos + 8 + id_len].to_vec()));
        pos += 8 + id_len + id_len % 2;
    }
    assert_eq!(pos, size);
    assert_eq!(seen.len(), dirs.len(), "one path table entry per directory");
    for (n, ((lba, parent, ident), (path, dir_lba, parent_lba))) in seen.iter().zip(dirs).enumerate() {
        assert_eq!(lba, dir_lba, "path table entry {n} ({path:?})");
        assert_eq!(seen[*parent as usize - 1].0, *parent_lba, "parent of {path:?}");
        let name = if n == 0 { String::new() } else { decode(ident, joliet) };
        assert!(path.ends_with(&format!("/{name}")) || n == 0, "{path:?} vs {name:?}");
    }
    let order: Vec<(u16, &Vec<u8>)> = seen.iter().map(|(_, p, i)| (*p, i)).collect();
    assert!(order[1..].windows(2).all(|w| w[0] <= w[1]), "path table sorted by parent, then name");
}

fn sample() -> IsoBuilder {
    let mut b = IsoBuilder::new("config-2").with_timestamp(T);
    b.add_file("openstack/latest/user_data", vec![b'u'; 5000]).unwrap();
    b.add_file("openstack/latest/meta_data.json", b"{}\n".to_vec()).unwrap();
    b.add_file("openstack/latest/empty", Vec::new()).unwrap();
    b.add_file("/network-config", b"version: 2\n".to_vec()).unwrap();
    b.add_file("a/b/c/d/e/f/g/h/i/deep_file-name.txt", b"deep".to_vec()).unwrap();
    b
}

#[test]
fn volume_descriptors() {
    let img = sample().build();
    assert_eq!(img.len() % SECTOR, 0);
    assert!(img[..16 * SECTOR].iter().all(|b| *b == 0), "system area is zero");
    for (lba, kind) in [(16, 1u8), (17, 2), (18, 255)] {
        let s = sector(&img, lba);
        assert_eq!((s[0], &s[1..6], s[6]), (kind, &b"CD001"[..], 1), "descriptor {lba}");
    }
    let (pvd, svd) = (sector(&img, 16), sector(&img, 17));
    assert_eq!(&pvd[40..72], format!("{:32}", "config-2").as_bytes());
    let mut joliet_label = ucs2("config-2");
    while joliet_label.len() < 32 {
        joliet_label.extend([0, 0x20]);
    }
    assert_eq!(&svd[40..72], &joliet_label[..]);
    assert_eq!(&svd[88..91], b"%/E");
    for vd in [pvd, svd] {
        assert_eq!(both_u32(vd, 80) as usize * SECTOR, img.len(), "volume space size");
        assert_eq!((both_u16(vd, 120), both_u16(vd, 124), both_u16(vd, 128)), (1, 1, 2048));
        assert_eq!(&vd[813..830], &volume_date(T));
        assert_eq!(&vd[847..863], b"0000000000000000");
        assert_eq!(vd[881], 1, "file structure version");
    }
}

#[test]
fn joliet_tree_round_trips() {
    let b = sample();
    let img = b.build();
    let (files, dirs) = read_tree(&img, 17);
    let expected: BTreeMap<String, Vec<u8>> = b.files.iter().map(|(p, d)| (format!("/{p}"), d.clone())).collect();
    assert_eq!(files, expected);
    let names: Vec<&str> = dirs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names[..4], ["", "/a", "/openstack", "/a/b"], "breadth-first, sorted");
    assert_eq!(names.len(), 12);
}

#[test]
fn primary_tree_has_level1_names_and_same_data() {
    let b = sample();
    let img = b.build();
    let (files, _) = read_tree(&img, 16);
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "/A/B/C/D/E/F/G/H/I/DEEP_FIL.TXT",
            "/NETWORK_.",
            "/OPENSTAC/LATEST/EMPTY.",
            "/OPENSTAC/LATEST/META_DAT.JSO",
            "/OPENSTAC/LATEST/USER_DAT."
        ]
    );
    assert_eq!(files["/OPENSTAC/LATEST/USER_DAT."], vec![b'u'; 5000]);
    assert_eq!(files["/OPENSTAC/LATEST/EMPTY."], b"");
    for path in paths {
        let ok = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || "_./".contains(c);
        assert!(path.chars().all(ok), "{path}");
    }
}

#[test]
fn level1_names_stay_unique() {
    let list = [("user-data", false), ("user_data", false), ("USER.DATA", false), ("user-data-x", true)];
    let names: Vec<String> = primary_names(&list).into_iter().map(|n| String::from_utf8(n).unwrap()).collect();
    assert_eq!(names, ["USER_DAT.;1", "USER_DA1.;1", "USER.DAT;1", "USER_DA2"]);
}

#[test]
fn large_directory_spans_sectors() {
    let mut b = IsoBuilder::new("cidata").with_timestamp(T);
    for i in 0..120 {
        b.add_file(&format!("many/a-rather-long-file-name-number-{i:03}.yaml"), format!("{i}").into_bytes()).unwrap();
    }
    let img = b.build();
    let (files, dirs) = read_tree(&img, 17);
    assert_eq!(files.len(), 120);
    assert_eq!(files["/many/a-rather-long-file-name-number-042.yaml"], b"42");
    let many = read_dir(&img, dirs[1].1, SECTOR as u32)[0].len;
    assert!(many as usize > 3 * SECTOR, "directory extent is {many} bytes");
    let (primary, _) = read_tree(&img, 16);
    assert_eq!(primary.len(), 120, "mangled names are unique");
}

#[test]
fn extents_are_laid_out_without_waste() {
    let mut b = IsoBuilder::new("cidata").with_timestamp(T);
    b.add_file("one", vec![1; SECTOR]).unwrap();
    b.add_file("two", vec![2; SECTOR + 1]).unwrap();
    b.add_file("copy", vec![1; SECTOR]).unwrap();
    b.add_file("empty", Vec::new()).unwrap();
    let img = b.build();
    // 19 + 4 path table sectors + 2 root directories + 1 (one, shared with copy) + 2 (two).
    assert_eq!(img.len(), (19 + 4 + 2 + 3 + PAD_SECTORS as usize) * SECTOR);
    let root = read_dir(&img, 23, SECTOR as u32);
    let lba = |name: &str| root.iter().find(|r| r.ident == format!("{name};1").as_bytes()).unwrap().lba;
    assert_eq!(lba("ONE."), lba("COPY."), "identical contents are stored once");
    assert_eq!(lba("TWO."), lba("ONE.") + 1);
    let (files, _) = read_tree(&img, 17);
    assert_eq!(files["/two"], vec![2; SECTOR + 1]);
    assert_eq!(files["/empty"], b"");
}

#[test]
fn empty_image_is_valid() {
    let img = IsoBuilder::new("cidata").with_timestamp(T).build();
    assert_eq!(img.len(), (19 + 4 + 2 + PAD_SECTORS as usize) * SECTOR);
    assert!(read_tree(&img, 16).0.is_empty() && read_tree(&img, 17).0.is_empty());
}

#[test]
fn add_file_rejects_bad_paths() {
    let mut b = IsoBuilder::new("x");
    b.add_file("dir/file", b"x".to_vec()).unwrap();
    assert_eq!(b.add_file("dir/file", b"y".to_vec()).unwrap_err(), IsoError::Conflict("dir/file".into()));
    assert_eq!(b.add_file("dir", b"y".to_vec()).unwrap_err(), IsoError::Conflict("dir".into()));
    assert_eq!(b.add_file("dir/file/x", b"y".to_vec()).unwrap_err(), IsoError::Conflict("dir/file/x".into()));
    b.add_file("dir/file2", b"y".to_vec()).unwrap();
    b.add_file("dirx", b"y".to_vec()).unwrap();
    for bad in ["", "/", "a//b", "a/./b", "../a", "a:b", "semi;1", "tab\there", "n".repeat(65).as_str()] {
        assert!(matches!(b.add_file(bad, Vec::new()), Err(IsoError::InvalidPath { .. })), "{bad:?}");
    }
    b.add_file(&"n".repeat(64), Vec::new()).unwrap();
}

#[test]
fn dates() {
    assert_eq!(dir_date(0), [70, 1, 1, 0, 0, 0, 0]);
    assert_eq!(dir_date(951_782_400), [100, 2, 29, 0, 0, 0, 0]);
    assert_eq!(dir_date(-1), [69, 12, 31, 23, 59, 59, 0]);
    assert_eq!(dir_date(T), [123, 11, 14, 22, 13, 20, 0]);
    assert_eq!(&volume_date(T), b"2023111422132000\0");
    assert_eq!(dir_date(i64::MIN)[..3], [0, 1, 1]);
    assert_eq!(&volume_date(i64::MAX), b"9999123123595900\0");
}
