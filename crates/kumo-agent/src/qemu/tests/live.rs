//! QMP and process supervision against a real `qemu-system-x86_64` under TCG. Guests are started paused
//! (`-S`), mostly diskless: nothing has to boot. Skipped, with a message, when QEMU is not installed and
//! cannot be installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;

use crate::qemu::process::probe_kernel_boot;
use crate::qemu::*;

/// The QEMU binary; these tests need it (scripts/setup.sh installs it).
fn qemu() -> PathBuf {
    find_qemu_binary().expect("qemu-system-x86_64 is required by these tests: run scripts/setup.sh")
}

fn paused_config(dir: &Path) -> LaunchConfig {
    let mut cfg = LaunchConfig::new("kumo-test", uuid::Uuid::new_v4().to_string(), dir);
    cfg.memory_mib = 64;
    cfg.start_paused = true;
    cfg
}

async fn next_event(rx: &mut broadcast::Receiver<QmpEvent>, name: &str) -> QmpEvent {
    let wait = async {
        loop {
            let ev = rx.recv().await.expect("event stream ended");
            if ev.event == name {
                return ev;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("no {name} event"))
}

fn proc_gone_or_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'),
    }
}

/// Handles are shared across the agent's tasks.
#[allow(dead_code)]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RunningVm>();
    check::<QmpClient>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_pause_resume_reset_reattach_and_shutdown() {
    let qemu = qemu();
    let dir = tempfile::tempdir().unwrap();
    let cfg = paused_config(dir.path());
    let paths = cfg.paths();

    let vm = launch(&cfg, &qemu).await.unwrap();
    let pid = vm.pid();
    assert!(vm.is_alive());
    assert_eq!(std::fs::read_to_string(paths.pid_file()).unwrap().trim(), pid.to_string());
    assert!(paths.qmp_socket().exists() && paths.serial_socket().exists());
    assert!(vm.qmp().greeting()["QMP"]["version"]["qemu"]["major"].is_u64());

    let st = vm.qmp().query_status().await.unwrap();
    assert!(!st.running);
    assert_eq!(st.status, "prelaunch");

    let mut events = vm.qmp().events();
    vm.qmp().cont().await.unwrap();
    next_event(&mut events, "RESUME").await;
    assert_eq!(vm.qmp().query_status().await.unwrap(), VmStatus { status: "running".into(), running: true });

    vm.qmp().stop().await.unwrap();
    next_event(&mut events, "STOP").await;
    assert_eq!(vm.qmp().query_status().await.unwrap(), VmStatus { status: "paused".into(), running: false });
    vm.qmp().cont().await.unwrap();
    next_event(&mut events, "RESUME").await;

    vm.qmp().system_reset().await.unwrap();
    let reset = next_event(&mut events, "RESET").await;
    assert_eq!(reset.data["guest"], json!(false));
    assert!(reset.timestamp.is_some());

    // QMP errors carry class and desc.
    match vm.qmp().execute("no-such-command", None).await {
        Err(QmpError::Command { class, desc, .. }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    let err = vm.qmp().execute("human-monitor-command", Some(json!({ "bogus": 1 }))).await.unwrap_err();
    assert!(matches!(err, QmpError::Command { ref class, .. } if class == "GenericError"), "{err}");

    // Many commands in flight at once, interleaved with events (stop/cont), each gets its own answer.
    let q = vm.qmp();
    let calls = (0..20).map(|i| async move {
        match i % 5 {
            0 => q.execute("query-name", None).await.map(|v| v["name"].clone()),
            _ => q.execute("query-uuid", None).await.map(|v| v["UUID"].clone()),
        }
    });
    let toggles = async {
        for _ in 0..3 {
            q.stop().await.unwrap();
            q.cont().await.unwrap();
        }
    };
    let (results, ()) = tokio::join!(futures::future::join_all(calls), toggles);
    for (i, r) in results.into_iter().enumerate() {
        let want = if i % 5 == 0 { json!("kumo-test") } else { json!(cfg.uuid) };
        assert_eq!(r.unwrap(), want, "call {i}");
    }

    // A second QEMU on the same run directory is refused.
    let err = launch(&cfg, &qemu).await.err().expect("second launch must fail");
    assert!(err.to_string().contains("already running"), "{err:#}");

    // Agent restart: the handle goes away, QEMU stays, a new handle attaches through the run directory.
    drop(vm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!proc_gone_or_zombie(pid), "QEMU died with its handle");
    let vm = attach(dir.path()).await.unwrap();
    assert_eq!(vm.pid(), pid);
    assert!(vm.is_alive());
    assert!(vm.qmp().query_status().await.unwrap().running);

    // A paused diskless guest ignores the power button: grace runs out, SIGKILL follows.
    vm.qmp().stop().await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(vm.shutdown(Duration::from_millis(500)).await.unwrap(), ShutdownOutcome::Killed);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!vm.is_alive());
    assert!(proc_gone_or_zombie(pid));
    assert_eq!(vm.wait_exit().await, None, "exit status is unknown to an attached handle");
    for f in [paths.qmp_socket(), paths.serial_socket(), paths.pid_file()] {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(paths.qemu_log().exists());
    assert_eq!(vm.shutdown(Duration::from_secs(1)).await.unwrap(), ShutdownOutcome::AlreadyExited);
    assert!(matches!(vm.qmp().query_status().await, Err(QmpError::Disconnected)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_ends_qemu_and_the_session() {
    let qemu = qemu();
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(&paused_config(dir.path()), &qemu).await.unwrap();
    let mut events = vm.qmp().events();
    vm.qmp().quit().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit()).await.unwrap();
    assert!(status.expect("launched handle knows the exit status").success());
    tokio::time::timeout(Duration::from_secs(5), vm.qmp().closed()).await.unwrap();
    assert!(vm.qmp().is_closed());
    assert!(matches!(vm.qmp().stop().await, Err(QmpError::Disconnected)));
    let ev = next_event(&mut events, "SHUTDOWN").await;
    assert_eq!(ev.data["reason"], json!("host-qmp-quit"));
    assert_eq!(vm.shutdown(Duration::from_secs(1)).await.unwrap(), ShutdownOutcome::AlreadyExited);
}

/// `shutdown` returns as soon as QEMU exits within the grace period, without killing it. (A diskless guest
/// cannot act on the power button, so QEMU is made to exit over QMP meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_when_qemu_exits_within_grace() {
    let qemu = qemu();
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(&paused_config(dir.path()), &qemu).await.unwrap();
    let mut events = vm.qmp().events();
    let started = std::time::Instant::now();
    let exit_soon = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        vm.qmp().quit().await.unwrap();
    };
    let (outcome, ()) = tokio::join!(vm.shutdown(Duration::from_secs(20)), exit_soon);
    assert_eq!(outcome.unwrap(), ShutdownOutcome::PoweredOff);
    assert!(started.elapsed() < Duration::from_secs(5));
    next_event(&mut events, "POWERDOWN").await;
    assert!(!vm.is_alive());
    assert!(!vm.paths().qmp_socket().exists() && !vm.paths().pid_file().exists());
}

/// The builder's argv for a VMI with every device class is accepted by the real QEMU, and the devices
/// appear under the ids QMP callers expect. The taps do not exist beforehand: QEMU (root) creates them and
/// they vanish with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typical_vmi_argv_runs_in_real_qemu() {
    let qemu = qemu();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: creating tap devices needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = |name: &str, fmt: &str| {
        let p = dir.path().join(name);
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(&p)
            .arg("16M")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "qemu-img create {name} failed (is qemu-utils installed?)");
        p
    };
    let disk = |name: &str, path: PathBuf, format, bus, device, boot_order| DiskConfig {
        name: name.into(),
        path,
        format,
        bus,
        device,
        boot_order,
        readonly: false,
        serial: Some(format!("{name}-serial")),
    };
    let mut cfg = paused_config(dir.path());
    cfg.smbios_serial = Some("vmi-serial".into());
    cfg.cpu = CpuTopology { sockets: 1, cores: 2, threads: 1 };
    cfg.rng = true;
    cfg.disks = vec![
        disk("root", img("root.qcow2", "qcow2"), DiskFormat::Qcow2, Bus::Virtio, DeviceKind::Disk, Some(1)),
        disk("cd", img("cd.iso", "raw"), DiskFormat::Raw, Bus::Sata, DeviceKind::Cdrom, None),
        disk("sata", img("sata.raw", "raw"), DiskFormat::Raw, Bus::Sata, DeviceKind::Disk, None),
        disk("data", img("data.qcow2", "qcow2"), DiskFormat::Qcow2, Bus::Scsi, DeviceKind::Disk, None),
        DiskConfig {
            readonly: true,
            ..disk("lun", img("lun.raw", "raw"), DiskFormat::Raw, Bus::Scsi, DeviceKind::Lun, None)
        },
    ];
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let nic = |name: &str, i: u8, model: &str, boot_order| NicConfig {
        name: name.into(),
        tap: format!("kqt{suffix}{i}"),
        mac: format!("02:00:00:00:00:0{i}"),
        model: model.into(),
        boot_order,
    };
    cfg.nics = vec![nic("default", 1, DEFAULT_NIC_MODEL, Some(2)), nic("second", 2, "e1000", None)];

    let vm = launch(&cfg, &qemu).await.unwrap();
    let q = vm.qmp();
    let blocks = q.execute("query-block", None).await.unwrap();
    let mut qdevs: Vec<String> = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["qdev"].as_str())
        .map(|d| d.rsplit('/').find(|s| !s.is_empty() && *s != "virtio-backend").unwrap_or(d).to_string())
        .collect();
    qdevs.sort();
    assert_eq!(qdevs, ["disk-cd", "disk-data", "disk-lun", "disk-root", "disk-sata"]);
    let cd = blocks.as_array().unwrap().iter().find(|b| b["qdev"].as_str().unwrap().contains("disk-cd")).unwrap();
    assert_eq!(cd["inserted"]["ro"], json!(true));
    assert_eq!(cd["inserted"]["node-name"], json!("drive1"));

    let peripherals = q.execute("qom-list", Some(json!({ "path": "/machine/peripheral" }))).await.unwrap();
    let names: Vec<&str> = peripherals.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for id in ["scsi0", "net-default", "net-second", "disk-root", "disk-lun"] {
        assert!(names.contains(&id), "{id} missing from {names:?}");
    }
    let mac = q.execute("qom-get", Some(json!({ "path": "net-second", "property": "mac" }))).await.unwrap();
    assert_eq!(mac, json!("02:00:00:00:00:02"));
    let cpus = q.execute("query-cpus-fast", None).await.unwrap();
    assert_eq!(cpus.as_array().unwrap().len(), 2);
    vm.kill().await.unwrap();
    assert!(!vm.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failure_reports_qemu_log() {
    let qemu = qemu();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = paused_config(dir.path());
    cfg.disks.push(DiskConfig {
        name: "missing".into(),
        path: dir.path().join("missing.qcow2"),
        format: DiskFormat::Qcow2,
        bus: Bus::Virtio,
        device: DeviceKind::Disk,
        boot_order: None,
        readonly: false,
        serial: None,
    });
    let err = launch(&cfg, &qemu).await.err().expect("launch must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("during startup") && msg.contains("missing.qcow2"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_refuses_what_is_not_our_qemu() {
    let dir = tempfile::tempdir().unwrap();
    assert!(attach(dir.path()).await.is_err(), "no pid file");
    let paths = RunPaths::new(dir.path());
    std::fs::write(paths.pid_file(), format!("{}\n", std::process::id())).unwrap();
    let err = attach(dir.path()).await.err().unwrap();
    assert!(err.to_string().contains("is not the QEMU of"), "{err:#}");
    std::fs::write(paths.pid_file(), "999999999\n").unwrap();
    assert!(attach(dir.path()).await.is_err(), "dead pid");
}

/// `-runas` with the sandbox: QEMU drops to the given ids (and is not killed by its own seccomp filter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_drops_privileges_under_the_sandbox() {
    let qemu = qemu();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: run_as needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = paused_config(dir.path());
    cfg.run_as = Some((65534, 65534));
    let vm = launch(&cfg, &qemu).await.unwrap();
    assert!(!vm.qmp().query_status().await.unwrap().running);
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    let ids = |key: &str| status.lines().find(|l| l.starts_with(key)).unwrap().split_whitespace().nth(1).unwrap();
    assert_eq!((ids("Uid:"), ids("Gid:")), ("65534", "65534"));
    vm.kill().await.unwrap();
    assert!(!cfg.paths().pid_file().exists());
}

/// The accelerator probe. Without a probe kernel the answer is TCG. With one (`KUMO_TEST_KERNEL`, or a
/// `/boot/vmlinuz-*`), the probe must recognise a successful boot under TCG; what it says about KVM depends
/// on the host and is only printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accel_detection_boots_a_kernel() {
    let qemu = qemu();
    assert_eq!(detect_accel(&qemu, None).await, Accel::Tcg);
    let kernel = std::env::var_os("KUMO_TEST_KERNEL").map(PathBuf::from).or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .collect();
        found.sort();
        found.pop()
    });
    let Some(kernel) = kernel else {
        eprintln!("SKIPPED (probe boot): no kernel; set KUMO_TEST_KERNEL=/path/to/vmlinuz");
        return;
    };
    assert!(probe_kernel_boot(&qemu, &kernel, Accel::Tcg, Duration::from_secs(60)).await.unwrap());
    let accel = detect_accel(&qemu, Some(&kernel)).await;
    eprintln!("detect_accel with {}: {accel:?}", kernel.display());
}
