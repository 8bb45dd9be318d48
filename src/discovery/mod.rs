//! Cluster discovery: which images the cluster's workloads use. Watchers (coming next) feed these
//! extraction functions and keep only the image uses, never whole objects.

pub mod extract;
