//! Fencing: a dead-man switch that stops this host's guests when the agent has not renewed the node Lease for
//! the fencing period — whether the agent is cut off from the control plane or dead (SIGKILL). The switch is a
//! separate watchdog process (`kumo fence-watchdog`), started by the agent and outliving it, so it does not
//! depend on the agent being alive: the agent must keep proving, through a file, that it renewed.
//!
//! Time is `CLOCK_BOOTTIME`, which both processes read alike and which keeps counting through a suspend. The
//! agent records when it *sent* a renewal that succeeded: the control plane saw that renewal no earlier, and
//! fails guests over only after the node's grace period plus the fencing period, so the watchdog always acts
//! first.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The watchdog's working directory under the agent's state directory.
fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fence")
}

/// Milliseconds of `CLOCK_BOOTTIME`.
pub fn boottime_ms() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
    t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000
}

/// The agent's side of the switch.
#[derive(Clone, Debug)]
pub struct Fence {
    dir: PathBuf,
    /// The API server replicas and the cluster CA, to recognise a whole-control-plane outage.
    servers: Vec<String>,
    cluster_ca: String,
}

impl Fence {
    /// Arms the switch for `state_dir`: starts the watchdog (`exe fence-watchdog`) unless one already runs for
    /// it (an agent restarted within the period finds its predecessor's and keeps it).
    pub fn arm(
        state_dir: &Path,
        period: Duration,
        exe: &Path,
        servers: Vec<String>,
        cluster_ca: String,
    ) -> Result<Fence> {
        let d = dir(state_dir);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        write_atomic(&d.join("period-ms"), &period.as_millis().to_string())?;
        if watchdog_pid(state_dir).is_none() {
            spawn_watchdog(state_dir, exe)?;
        }
        Ok(Fence { dir: d, servers, cluster_ca })
    }

    /// A renewal sent at `sent_ms` failed. If that is because the whole control plane lost its store (see
    /// [`crate::outage`]), it holds the fence off all the same: nobody can fail this host's guests over.
    pub async fn renewal_failed(&self, sent_ms: u64) {
        if crate::outage::control_plane_without_store(&self.servers, &self.cluster_ca).await {
            tracing::warn!("every API server has lost its store: keeping guests running (no failover is possible)");
            self.renewed(sent_ms);
        }
    }

    /// Records a renewal the control plane accepted, sent at `sent_ms` (boot time).
    pub fn renewed(&self, sent_ms: u64) {
        if let Err(e) = write_atomic(&self.dir.join("renewed-ms"), &sent_ms.to_string()) {
            tracing::error!("fencing: recording a renewal: {e:#} (guests will be fenced if this persists)");
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// The running watchdog for `state_dir`, if any (the pid file is checked against the process's command line).
pub fn watchdog_pid(state_dir: &Path) -> Option<u32> {
    let pid = read_u64(&dir(state_dir).join("watchdog.pid"))? as u32;
    let argv = cmdline(pid)?;
    let ours = argv.iter().any(|a| a == "fence-watchdog") && argv.iter().any(|a| Path::new(a) == state_dir);
    ours.then_some(pid)
}

fn spawn_watchdog(state_dir: &Path, exe: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir(state_dir).join("watchdog.log"))?;
    let child = std::process::Command::new(exe)
        .arg("fence-watchdog")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: signals meant for the agent's group do not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the fencing watchdog ({} fence-watchdog)", exe.display()))?;
    write_atomic(&dir(state_dir).join("watchdog.pid"), &child.id().to_string())?;
    tracing::info!(pid = child.id(), "fencing watchdog started");
    Ok(())
}

/// What the watchdog should do now.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// No renewal recorded yet (the agent is starting): nothing to guard.
    Unarmed,
    Alive,
    /// The last renewal is older than the period: stop every guest.
    Fence {
        silent_ms: u64,
    },
}

pub fn judge(renewed_ms: Option<u64>, period_ms: u64, now_ms: u64) -> Verdict {
    match renewed_ms {
        None => Verdict::Unarmed,
        Some(r) if now_ms.saturating_sub(r) > period_ms => Verdict::Fence { silent_ms: now_ms.saturating_sub(r) },
        Some(_) => Verdict::Alive,
    }
}

/// This agent's guests: QEMU processes whose command line points into `state_dir/vmis/`.
pub fn guests(state_dir: &Path) -> Vec<u32> {
    guests_under(&state_dir.join("vmis"))
}

/// QEMU processes whose command line points into `dir` (one VMI's directory, or all of them).
pub fn guests_under(dir: &Path) -> Vec<u32> {
    let marker = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            cmdline(*pid).is_some_and(|argv| {
                argv.first().is_some_and(|a| a.contains("qemu-system")) && argv.iter().any(|a| a.contains(&marker))
            })
        })
        .collect()
}

/// The watchdog process: checks the agent's renewals every quarter second and SIGKILLs this host's guests
/// while they are overdue. Runs until the state directory disappears.
pub fn run_watchdog(state_dir: &Path) -> Result<()> {
    let d = dir(state_dir);
    let mut fencing = false;
    eprintln!("fence-watchdog: guarding the guests of {}", state_dir.display());
    while d.exists() {
        let period = read_u64(&d.join("period-ms")).unwrap_or(20_000);
        match judge(read_u64(&d.join("renewed-ms")), period, boottime_ms()) {
            Verdict::Fence { silent_ms } => {
                for pid in guests(state_dir) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                    eprintln!(
                        "fence-watchdog: no Lease renewal for {silent_ms} ms (period {period} ms): killed guest {pid}"
                    );
                }
                if !fencing {
                    eprintln!("fence-watchdog: fencing: this host may no longer run guests until its agent renews");
                }
                fencing = true;
            }
            Verdict::Alive if fencing => {
                eprintln!("fence-watchdog: the agent renews again");
                fencing = false;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_renewals_fence() {
        assert_eq!(judge(None, 1000, 50_000), Verdict::Unarmed);
        assert_eq!(judge(Some(49_500), 1000, 50_000), Verdict::Alive);
        assert_eq!(judge(Some(49_000), 1000, 50_000), Verdict::Alive, "exactly the period is still alive");
        assert_eq!(judge(Some(48_000), 1000, 50_000), Verdict::Fence { silent_ms: 2000 });
        assert!(boottime_ms() > 0);
    }

    #[test]
    fn finds_only_this_agents_guests() {
        let dir = tempfile::tempdir().unwrap();
        let vmis = dir.path().join("vmis/u1");
        std::fs::create_dir_all(&vmis).unwrap();
        // A stand-in whose argv[0] says qemu-system and whose arguments point into the state directory.
        std::fs::write(vmis.join("qmp.sock"), "").unwrap();
        let script = r#"exec -a qemu-system-x86_64 tail -f /dev/null "$1""#;
        let mine = Guard(
            std::process::Command::new("bash").args(["-c", script, "x"]).arg(vmis.join("qmp.sock")).spawn().unwrap(),
        );
        let other = tempfile::tempdir().unwrap();
        let found = (0..40).find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            Some(guests(dir.path())).filter(|g| !g.is_empty())
        });
        assert_eq!(found, Some(vec![mine.0.id()]));
        assert!(guests(other.path()).is_empty(), "another state directory's guests are not ours");
    }

    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
