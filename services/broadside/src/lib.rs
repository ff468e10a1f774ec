//! The `broadside` binary as a library: wiring roles into a node, the demo,
//! and the gRPC client commands. `main.rs` only parses flags.

pub mod admin;
pub mod backends;
pub mod bench;
pub mod bootstrap;
pub mod client;
pub mod demo;
pub mod dkim;
pub mod feedback;
pub mod import;
pub mod node;
pub mod segments;
pub mod tls;

pub use node::{Node, Role};
