//! Turning VirtualMachineInstances into running guests: the spec → QEMU translation ([`translate`]).
pub mod prepare;
pub mod translate;
