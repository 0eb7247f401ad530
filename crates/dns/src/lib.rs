//! The resolver machines reach at `fdaa::3` (their `/etc/resolv.conf` names it, as on Fly).
//!
//! - [`directory`]: which machines exist, where, in which state; the daemon keeps it current
//!   on every state change, so an answer changes as soon as a machine starts or stops.
//! - [`names`]: the `.internal` zone as Fly answers it (AAAA names that list started machines
//!   only, TXT names in Fly's formats, the `all.` variants that include stopped ones).
//! - [`server`]: UDP and TCP on port 53; a query outside `.internal` is relayed unchanged to
//!   the host's resolvers.

pub mod directory;
pub mod names;
pub mod server;

pub use directory::{Directory, Entry};
pub use server::{host_upstreams, Resolver};
