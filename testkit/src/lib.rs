//! Test support for copycat.
