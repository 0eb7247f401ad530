//! Machine networking on the host.
//!
//! - [`plan`]: Fly's 6PN address layout (an org network is a /48 under `fdaa::/16`, a host a
//!   /80 in it, a machine a /112 whose `::2` is its address) and the private IPv4 block each
//!   network gets on a host for the proxy path.
//! - [`netlink`]: a small synchronous route-netlink client: bridges, veth pairs, addresses,
//!   routes.
//! - [`firewall`]: the host's nftables ruleset that keeps machines in their network and away
//!   from the host's own services.

pub mod firewall;
pub mod netlink;
pub mod plan;

pub use plan::{MachineNet, SixPn, RESOLVER};
