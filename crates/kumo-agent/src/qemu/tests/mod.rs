//! Tests of the qemu module: builder argv (pure), and QMP/process against a real QEMU under TCG.

mod builder;
mod live;
