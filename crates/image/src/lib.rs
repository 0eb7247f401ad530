//! Images: references resolved as Docker does. The registry client, layer store and overlay
//! root filesystems arrive with the images issue.

pub mod reference;

pub use reference::{Reference, ReferenceError};
