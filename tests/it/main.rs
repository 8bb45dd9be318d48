//! Integration tests: the built binary and the library against real components.

mod check_config;
mod commands;
mod copy;
mod daemon;
mod discovery;
mod drills;
mod ecr;
mod faults;
mod leader;
mod manifests;
mod queue;
mod registry;
mod server;
mod support;
