//! Images for machines: references, the OCI registry client, the content-addressed store with
//! layers unpacked once each, imports for air-gapped hosts, and overlay root filesystems.

pub mod auth;
pub mod config;
pub mod digest;
pub mod error;
mod export;
pub mod idmap;
pub mod import;
pub mod oci;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use config::ImageConfig;
pub use digest::Digest;
pub use error::{Error, Result};
pub use idmap::{IdRange, Userns};
pub use import::ImportOptions;
pub use platform::Platform;
pub use pull::{pull, Progress, ProgressFn, PullOptions};
pub use reference::{Reference, ReferenceError};
pub use registry::{RegistryConfig, RegistryOptions};
pub use rootfs::{mount_rootfs, remove_rootfs, unmount_rootfs, RootfsSpec};
pub use store::{
    GcReport, ImageDetails, ImageRecord, ImageStore, InUse, LayerRecord, RemoveReport,
};
