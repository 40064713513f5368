//! `kumo store`: offline care of the embedded store (checking it; snapshots come next to it).

use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum StoreAction {
    /// Check a store whole: its structure, every value's checksum, and that its tables agree. The server using
    /// the data directory must be stopped. Exits non-zero when anything is damaged.
    Check {
        /// The server's --data-dir.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub fn run(action: StoreAction) -> Result<()> {
    match action {
        StoreAction::Check { data_dir } => check(&data_dir.join("kumo.redb")),
    }
}

fn check(path: &std::path::Path) -> Result<()> {
    if !path.exists() {
        bail!("{} does not exist: give the server's --data-dir", path.display());
    }
    eprintln!("checking {} (structure, then every row)…", path.display());
    let report = kumo_store::RedbStore::check(path)?;
    println!("{} rows verified in {:.1}s", report.rows, report.took.as_secs_f64());
    if report.pages_ok == Some(false) {
        println!("page checksums: a page of the file is damaged (the rows below name any value on it)");
    }
    if report.ok() && report.pages_ok != Some(false) {
        println!("store is intact");
        return Ok(());
    }
    for (key, detail) in &report.corrupt {
        println!("corrupt: {key}: {detail}");
    }
    if report.ok() {
        bail!("the file is damaged outside the rows kumo reads. Restore the store from a snapshot (`kumo store snapshot restore FILE --data-dir NEW_DIR`)");
    }
    bail!(
        "{} damaged row(s). Restore the store from a snapshot (`kumo store snapshot restore FILE --data-dir NEW_DIR`), \
         or recreate the objects named above",
        report.corrupt.len()
    )
}
