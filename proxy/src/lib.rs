//! dependency-proxy: a pull-through cache for container images, one per group, speaking the OCI
//! distribution pull API.
//!
//! A pull travels `routes` → `reference` → `service`, which answers from `cache` or fetches
//! through `fetch` (single-flight, streaming tee) from `upstream`. See the README for the map.

pub mod cache;
pub mod config;
pub mod error;
pub mod reference;
pub mod upstream;
