//! Named network namespaces (`ip netns`, files under `/run/netns`), running code inside one, and the small
//! command runner the rest of `net` uses for `ip` and `nft`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The file of a named namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates a named namespace unless it exists, and brings its loopback up.
pub fn add(name: &str) -> Result<()> {
    if !exists(name) {
        run("ip", &["netns", "add", name])?;
    }
    run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Removes a named namespace; succeeds if it is already gone. The kernel frees the namespace (and any device
/// left in it) once nothing else holds it: a process, or a socket created in it.
pub fn delete(name: &str) -> Result<()> {
    if exists(name) {
        run("ip", &["netns", "del", name])?;
    }
    Ok(())
}

/// Runs `f` on a short-lived thread that has joined the network namespace at `netns` (a file such as
/// `/run/netns/<name>`). Sockets created by `f` stay in that namespace after the thread ends; the calling
/// thread's namespace never changes.
pub fn in_netns<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let file = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// Writes a sysctl (`net.ipv4.ip_forward` style key) in the namespace `netns`, or in the current one.
pub fn set_sysctl(netns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    let write = || std::fs::write(&file, value);
    match netns {
        Some(ns) => in_netns(ns, write),
        None => write(),
    }
    .with_context(|| format!("sysctl {key}={value}"))
}

/// Runs a command; fails with its stderr when it exits non-zero. Returns stdout.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    run_stdin(prog, args, None)
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_stdin(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().with_context(|| format!("cannot run {prog} (is it installed?)"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).with_context(|| format!("writing to {prog}"))?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`{prog} {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command succeeds (used for existence probes such as `ip link show dev X`).
pub fn succeeds(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
