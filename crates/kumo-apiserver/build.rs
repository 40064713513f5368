//! Embeds the web console (`ui/dist`, made by `scripts/build-ui.sh`) into the binary, so `kumo server` serves
//! it with nothing beside it. Without a built console the list is empty and `/ui` says how to build it.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = manifest.join("../../ui/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut found = Vec::new();
    files(&dist, &mut found);
    found.sort();
    let mut code = String::from(
        "/// The web console's files: (path under /ui/, contents).\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for p in &found {
        let rel = p.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", p.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("ui_assets.rs");
    std::fs::write(out, code).expect("writing ui_assets.rs");
}
