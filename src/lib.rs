//! copycat library.

pub mod reference;
