//! copycat library.
