//! Cluster discovery: which images the cluster's workloads use. Watchers reduce each object to its
//! image uses on arrival; the inventory keeps only those, never whole objects.

pub mod decode;
pub mod extract;
pub mod health;
pub mod inventory;
pub mod pull_failures;
pub mod watch;
