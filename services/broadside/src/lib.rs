//! The `broadside` binary as a library: wiring roles into a node, the demo,
//! and the gRPC client commands. `main.rs` only parses flags.

/// `println!` for command output: when the reader has gone (`broadside ... | head`),
/// the command stops quietly with success instead of panicking on a broken pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to stdout: {error}");
        }
    }};
}

pub mod admin;
pub mod backends;
pub mod bench;
pub mod bootstrap;
pub mod client;
pub mod connect;
pub mod demo;
pub mod dkim;
pub mod events;
pub mod feedback;
pub mod import;
pub mod node;
pub mod samples;
pub mod segments;
pub mod suppressions;
pub mod tls;

pub use node::{Node, Role};
