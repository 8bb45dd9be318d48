//! Declarative sources: objects that name images to mirror before anything runs them.
//! image-operator's `Image` objects ([`image`]): their spec read and checked into a plan of copies,
//! the status they get; Flux's `ImageRepository` ([`flux`]): when a scan asks for a mirror and of
//! what. The daemon watches them in `controllers` (docs/migration.md).

pub mod flux;
pub mod image;

/// The `kube` resource of a custom kind, for `kube::Api::all_with` / `namespaced_with`.
fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}
