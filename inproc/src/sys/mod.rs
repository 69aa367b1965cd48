//! The system calls that need `unsafe`, each in a module named for what it touches.
//!
//! - [`cpu`]: which CPU this thread runs on (`sched_getcpu`, rseq-backed in glibc).
//! - [`atfork`]: the `pthread_atfork` child handler registration, and closing inherited
//!   descriptors by number in the child.
//! - [`mem`]: replacing a retired buffer's shared mapping with private memory in place.
//! - [`fd`]: reusing a parked descriptor number for a new eventfd.
//! - [`static_ref`]: an atomic `Option<&'static T>`, for the lock-free lists and slots.
#![allow(unsafe_code)]

pub(crate) mod atfork;
pub(crate) mod cpu;
pub(crate) mod fd;
pub(crate) mod mem;
pub(crate) mod static_ref;
