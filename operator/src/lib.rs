//! The DependencyProxy operator: CRD types, pure builders, the reconciler and its plumbing.

pub mod build;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod validate;
