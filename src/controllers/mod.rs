//! Controllers of declarative objects: Flux's `ImageRepository` in [`flux`].

pub mod flux;
