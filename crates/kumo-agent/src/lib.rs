//! kumo's node agent: turns the VirtualMachineInstances bound to this node into running QEMU guests.
//!
//! Folders mirror the domain: [`qemu`] (the QMP client and the one place a VMI spec becomes a QEMU command
//! line), [`cloudinit`] (NoCloud and ConfigDrive ISOs, written in Rust), [`net`] (network namespace, bridge,
//! tap, NAT and the DHCP server), [`image`] (containerDisk pulls from OCI registries, the per-digest base cache
//! and qcow2 overlays).

pub mod agent;
pub mod cloudinit;
pub mod console;
pub mod fence;
pub mod hypervisor;
pub mod image;
pub mod metrics;
pub mod net;
pub mod node;
pub mod outage;
pub mod qemu;
pub mod simulate;
pub mod streams;
pub mod vmi;
pub mod volumes;
