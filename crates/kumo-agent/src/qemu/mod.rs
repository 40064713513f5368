//! The hypervisor layer: each VirtualMachineInstance runs as one `qemu-system-x86_64` process, driven over
//! QMP (no libvirt).
//!
//! Start at [`LaunchConfig`] (config.rs: what the guest is, decoupled from KubeVirt JSON), which
//! [`command_line`] (builder.rs, the one place argv is made) turns into QEMU arguments; [`launch`]
//! (process.rs) spawns QEMU in its own session and returns a [`RunningVm`], and [`attach`] finds it again
//! from its run directory after an agent restart. [`QmpClient`] (qmp.rs) sends commands and streams events.
//! [`detect_accel`] picks KVM only if a kernel actually boots under it.

pub mod builder;
pub mod config;
pub mod process;
pub mod qga;
pub mod qmp;

pub use builder::command_line;
pub use config::{
    Accel, Bus, ConfigError, CpuTopology, DeviceKind, DiskConfig, DiskFormat, KernelBoot, LaunchConfig, NicConfig,
    QemuVersion, RunPaths, DEFAULT_NIC_MODEL,
};
pub use process::{attach, detect_accel, find_qemu_binary, launch, qemu_version, RunningVm, ShutdownOutcome};
pub use qga::{GuestAgent, QgaError};
pub use qmp::{QmpClient, QmpError, QmpEvent, VmStatus};

#[cfg(test)]
mod tests;
