//! Test support for copycat: real registries on loopback ([`Registry`]), synthetic images
//! pushed byte-exact ([`Image`], [`push`]), and skopeo as an independent verifier
//! ([`skopeo_digest`]).

#![warn(missing_docs)]

pub mod apiserver;
mod certs;
pub mod cluster;
pub mod containerd;
pub mod fault;
pub mod image;
pub mod layer;
pub mod logs;
pub mod moto;
pub mod push;
pub mod registry;
pub mod skopeo;
pub mod static_registry;
pub mod token;
pub mod tools;
pub mod util;

pub use containerd::Containerd;
pub use fault::{Fault, FaultKind, FaultProxy, Match, ProxyRequest};
pub use image::{Blob, BlobSource, Format, Image, Platform};
pub use moto::Moto;
pub use push::{
    Client, blob_exists, get_manifest, http_client, list_tags, manifest_digest, push, push_raw_blob, push_raw_manifest,
};
pub use registry::{AccessLogEntry, Registry, RegistryMode};
pub use skopeo::{skopeo_copy, skopeo_digest, skopeo_inspect_raw};
pub use static_registry::StaticRegistry;
pub use token::TokenRequest;
pub use tools::require_tool;
pub use util::sha256_digest;
