//! Atomics used by the ring, selected at build time (crossbeam style).
//!
//! A normal build uses `core::sync::atomic`. A build with `RUSTFLAGS="--cfg loom"` uses
//! loom's instrumented types instead, so the loom models in `tests/loom.rs` explore every
//! interleaving (and every weak-memory outcome) of the same algorithm code in `ring.rs`.
//! Nothing outside this module names an atomic type directly.

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
