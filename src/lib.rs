//! copycat keeps a backup copy of every container image a Kubernetes cluster runs in a registry you
//! control. See `docs/architecture.md` for how the modules fit together.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controllers;
pub mod copy;
pub mod coverage;
pub mod daemon;
pub mod declarative;
pub mod destination;
pub mod discovery;
pub mod events;
pub mod failover;
pub mod files;
pub mod glob;
pub mod images_file;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod node_config;
pub mod on_the_fly;
pub mod plan;
pub mod platform;
pub mod queue;
pub mod reference;
pub mod referrer_policy;
pub mod registry;
pub mod secret;
pub mod server;
pub mod tag_pattern;
pub mod task_state;
pub mod telemetry;
pub mod wiring;
pub mod workload;
