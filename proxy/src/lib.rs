//! dependency-proxy: a pull-through cache for container images, one per group, speaking the OCI
//! distribution pull API.
//!
//! A pull travels `routes` → `reference` → `service`, which answers from `cache` or fetches
//! through `fetch` (single-flight, streaming tee, verify, commit) from `upstream`.

pub mod cache;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod error;
pub mod fetch;
pub mod hashing;
pub mod metrics;
pub mod range;
pub mod reference;
pub mod routes;
pub mod server;
pub mod service;
pub mod upstream;
