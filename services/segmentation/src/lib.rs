//! The segmentation role: segment rules ([`rule`]), an in-memory columnar
//! projection of every tenant's subscribers that evaluates them in
//! milliseconds ([`engine`]), kept current from the bus ([`live`]), and the
//! SegmentService API ([`api`]).

mod api;
pub mod engine;
pub mod live;
mod role;
pub mod rule;

pub use api::SegmentApi;
pub use role::{SegmentationSettings, start};
