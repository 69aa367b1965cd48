//! Start-up and lifetime rules shared by every drtrace daemon (the per-user session daemon
//! and the root broker).
//!
//! - [`instance`]: exactly one daemon per socket. A `flock`ed lock file beside the socket
//!   decides between simultaneous starters (the kernel releases it when its holder dies);
//!   a live daemon answering a hello makes a new starter report "already running"; a stale
//!   socket file is removed and taken over; a path owned by another uid is refused.
//! - [`process`]: detaching from the spawner (double fork, new session), closing inherited
//!   descriptors, and the readiness line of [`drtrace_proto::startup`].
//! - [`signals`]: termination signals as a readable descriptor, so an event loop can shut
//!   down cleanly and remove its socket.
//! - [`logging`]: a small line logger behind the `log` facade, writing to the user's state
//!   directory or a chosen file.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use drtrace_daemon::instance::{Acquired, Instance};
//!
//! let socket = std::path::Path::new("/tmp/example-daemon.sock");
//! match Instance::acquire(socket, nix::unistd::getuid().as_raw(), Duration::from_secs(1))? {
//!     Acquired::Owner(instance) => {
//!         // serve `instance.listener()` until a termination signal; dropping `instance`
//!         // removes the socket and the lock file.
//!         drop(instance);
//!     }
//!     Acquired::AlreadyRunning { pid } => println!("already running (pid {pid})"),
//! }
//! # Ok::<(), drtrace_daemon::instance::StartupError>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod instance;
pub mod logging;
pub mod process;
pub mod signals;
