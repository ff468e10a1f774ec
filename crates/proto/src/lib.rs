//! Broadside's protocol: gRPC services, bus payloads, and conversions.
//!
//! One crate owns codegen so every role agrees on the wire format.

pub mod convert;
pub mod error;
pub mod names;

/// Generated code for `proto/broadside/v1`.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("broadside.v1");
}

/// Encoded `FileDescriptorSet` of every Broadside proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/broadside_descriptor.bin"));

pub use error::ServiceError;

/// `error` and each of its causes, joined by ": " (what a log line or a
/// client should see of a chain).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
