//! Declarative sources: objects that name images to mirror before anything runs them. So far
//! image-operator's `Image` objects ([`image`]): their spec read and checked into a plan of copies,
//! the status they get. Watching them in the daemon is not built yet (docs/migration.md says what
//! works today).

pub mod image;
