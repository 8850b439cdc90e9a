//! The membership this node serves to clients as `ClusterState`: the shared
//! [`tally_epochstore::MembershipView`], loaded from the epoch store at start and kept current
//! by its membership watch. Its version counts changes seen by this node (it restarts with the
//! process), so a client compares versions only between answers of the same node.

pub use tally_epochstore::MembershipView as ClusterView;
