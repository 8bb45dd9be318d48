//! Integration tests: the built binary and the library against real components.

mod api_faults;
mod check_config;
mod commands;
mod copy;
mod daemon;
mod declarative;
mod discovery;
mod drills;
mod dropin;
mod ecr;
mod failover;
mod faults;
mod first_run;
mod image;
mod leader;
mod manifests;
mod node_config;
mod on_the_fly;
mod pull_through;
mod queue;
mod real_cluster;
mod referrers;
mod registry;
mod server;
mod support;
mod verify;
