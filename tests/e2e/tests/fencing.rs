//! The fencing watchdog on its own: it kills the guests of a state directory once the agent's renewals stop
//! (as when the agent is SIGKILLed), never while they continue, and never another state directory's guests.

use anyhow::Result;
use kumo_e2e::{eventually, kumo_bin};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kumo_e2e::KillOnDrop as Proc;

/// A stand-in guest: a process named like QEMU whose arguments point into `state/vmis/`.
fn fake_guest(state: &Path) -> Proc {
    let vmi = state.join("vmis/uid-1");
    std::fs::create_dir_all(&vmi).unwrap();
    std::fs::write(vmi.join("qmp.sock"), "").unwrap();
    let script = r#"exec -a qemu-system-x86_64 tail -f /dev/null "$1""#;
    Proc(Command::new("bash").args(["-c", script, "x"]).arg(vmi.join("qmp.sock")).spawn().unwrap())
}

fn alive(p: &mut Proc) -> bool {
    p.0.try_wait().unwrap().is_none()
}

fn boottime_ms() -> u64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap();
    (s.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1000.0) as u64
}

#[test]
fn the_watchdog_kills_guests_only_when_renewals_stop() -> Result<()> {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (mut guest_a, mut guest_b) = (fake_guest(a.path()), fake_guest(b.path()));
    let fence = a.path().join("fence");
    std::fs::create_dir_all(&fence)?;
    std::fs::write(fence.join("period-ms"), "1500")?;
    let _watchdog = Proc(Command::new(kumo_bin()).arg("fence-watchdog").arg("--state-dir").arg(a.path()).spawn()?);
    // Unarmed (no renewal yet): nothing happens.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(&mut guest_a), "an agent that never renewed has nothing to fence");
    // Renewals keep the guest alive well past the period...
    let mut stopped = std::time::Instant::now();
    for _ in 0..12 {
        std::fs::write(fence.join("renewed-ms"), boottime_ms().to_string())?;
        stopped = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(alive(&mut guest_a), "a renewing agent's guests are left alone");
    // ...and when they stop, the guest is killed once the period has passed since the last one.
    let killed = eventually(Duration::from_secs(10), || (!alive(&mut guest_a)).then_some(()));
    assert!(killed.is_some(), "the guest must be fenced");
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(1450), "fenced too early: {took:?} after the last renewal");
    assert!(alive(&mut guest_b), "another agent's guest is not touched");
    Ok(())
}
