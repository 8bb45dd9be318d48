//! Declarative sources: objects that name images to mirror before anything runs them.
//! image-operator's `Image` objects ([`image`]): their spec read and checked into a plan of copies,
//! the status they get; Flux's `ImageRepository` ([`flux`]): when a scan asks for a mirror and of
//! what. Watching them in the daemon is not built yet (docs/migration.md says what works today).

pub mod flux;
pub mod image;
