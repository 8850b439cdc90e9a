//! The epoch store: the metadata that makes LSNs safe (DESIGN §4) — per-log epoch counters
//! that never regress, node-set history, last clean epoch and attributes — plus node
//! membership with leases.
//!
//! Layout:
//! - [`store`]: the [`EpochStore`] trait, [`EpochStoreError`] (retryable vs fatal), the
//!   activation result and the membership types ([`NodeLease`], [`NodeWatch`]).
//! - [`update`]: the pure read-modify-write decisions all backends share (activation, last
//!   clean epoch, attributes).
//! - [`nodeset`]: node-set selection (weighted rendezvous hashing, location spread).
//! - [`etcd`] ([`EtcdStore`]), [`etcd_config`] ([`EtcdConfig`]) and `etcd_members`: the
//!   production backend on etcd v3.
//! - [`mod@file`] ([`FileEpochStore`]): the embedded single-machine backend.
//! - [`memory`] ([`MemoryEpochStore`]): for unit tests and the simulator.
//! - [`view`] ([`MembershipView`]): a node's live membership view, followed from the watch.
//! - `harness` (`EtcdHarness`, feature `harness`): a real local etcd for any crate's tests,
//!   and `conformance`, the suite every backend passes.

pub mod etcd;
pub mod etcd_config;
mod etcd_members;
pub mod file;
mod members;
pub mod memory;
pub mod nodeset;
pub mod store;
pub mod update;
pub mod view;

#[cfg(feature = "harness")]
pub mod conformance;
#[cfg(feature = "harness")]
pub mod harness;

pub use etcd::{EtcdAuth, EtcdConfig, EtcdStore, EtcdTls};
pub use file::FileEpochStore;
pub use memory::MemoryEpochStore;
pub use nodeset::select_node_set;
pub use store::{
    ActivateOptions, Activation, BoxFuture, EpochStore, EpochStoreError, MembershipEvent,
    NodeLease, NodeWatch,
};
pub use view::{Members, MembershipView};
