//! Test support for copycat: real registries on loopback ([`Registry`]), synthetic images
//! pushed byte-exact ([`Image`], [`push`]), and skopeo as an independent verifier
//! ([`skopeo_digest`]).

mod certs;
pub mod registry;
pub mod token;
pub mod tools;
pub mod util;

pub use registry::{AccessLogEntry, Registry, RegistryMode};
pub use token::TokenRequest;
pub use tools::require_tool;
pub use util::sha256_digest;
