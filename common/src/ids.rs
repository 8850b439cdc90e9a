//! Identifiers and positions: [`LogId`], [`Epoch`], [`Esn`], [`Lsn`], [`NodeId`].
//!
//! An LSN is `epoch << 32 | esn`; plain integer order on the `u64` is LSN order. LSNs of one log
//! grow but are not dense; LSNs of different logs are not comparable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors from parsing identifiers typed by users (`e5n42`, log ids, node ids).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error(
        "invalid LSN {0:?}: expected `e<epoch>n<esn>` (e.g. `e5n42`), a plain u64, `oldest` or `max`"
    )]
    Lsn(String),
    #[error("invalid log id {0:?}: user log ids are 1..={max}", max = LogId::USER_MAX.0)]
    LogId(String),
    #[error("invalid node id {0:?}: expected a u32")]
    NodeId(String),
}

/// Identifier of a log. User logs are `1 ..= 2^62 − 1`; ids above that are reserved for
/// internal logs. `0` is invalid.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(
    derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash),
    compare(PartialEq)
)]
#[serde(transparent)]
pub struct LogId(pub u64);

impl LogId {
    pub const INVALID: LogId = LogId(0);
    /// The greatest id a user log may have.
    pub const USER_MAX: LogId = LogId((1 << 62) - 1);

    /// Whether this id names a user log (`1 ..= USER_MAX`).
    pub fn is_user(self) -> bool {
        self.0 >= 1 && self.0 <= Self::USER_MAX.0
    }

    /// Whether this id is in the internal range (above `USER_MAX`).
    pub fn is_internal(self) -> bool {
        self.0 > Self::USER_MAX.0
    }

    /// Big-endian bytes, the key encoding used on disk (sorts like the integer).
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Debug for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log:{}", self.0)
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for LogId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id: u64 = s
            .trim()
            .parse()
            .map_err(|_| IdParseError::LogId(s.to_owned()))?;
        let id = LogId(id);
        if id.is_user() {
            Ok(id)
        } else {
            Err(IdParseError::LogId(s.to_owned()))
        }
    }
}

/// An epoch of a log: the generation of its sequencer. `0` is invalid, valid epochs are
/// `1 ..= 2^32 − 2` so that the epoch of [`Lsn::MAX`] is never a valid epoch.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(
    derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash),
    compare(PartialEq)
)]
#[serde(transparent)]
pub struct Epoch(pub u32);

impl Epoch {
    pub const INVALID: Epoch = Epoch(0);
    pub const MIN: Epoch = Epoch(1);
    pub const MAX: Epoch = Epoch(u32::MAX - 1);

    pub fn is_valid(self) -> bool {
        self >= Self::MIN && self <= Self::MAX
    }

    /// The next epoch, or `None` past [`Epoch::MAX`].
    pub fn next(self) -> Option<Epoch> {
        (self < Self::MAX).then(|| Epoch(self.0 + 1))
    }

    /// The previous epoch (saturating at [`Epoch::INVALID`]).
    pub fn prev(self) -> Epoch {
        Epoch(self.0.saturating_sub(1))
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Epoch sequence number: the position of a record within its epoch. `0` is invalid; the
/// first record of an epoch has ESN 1.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(
    derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash),
    compare(PartialEq)
)]
#[serde(transparent)]
pub struct Esn(pub u32);

impl Esn {
    pub const INVALID: Esn = Esn(0);
    pub const MIN: Esn = Esn(1);
    pub const MAX: Esn = Esn(u32::MAX);

    /// The next ESN, or `None` when the epoch's ESN space is exhausted.
    pub fn next(self) -> Option<Esn> {
        self.0.checked_add(1).map(Esn)
    }
}

impl fmt::Debug for Esn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Esn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Log sequence number: `epoch << 32 | esn`. Displayed as `e5n42`.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(
    derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash),
    compare(PartialEq)
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No LSN. Never the LSN of a record.
    pub const INVALID: Lsn = Lsn(0);
    /// At or below the smallest valid LSN: read from here to read a log from its start.
    pub const OLDEST: Lsn = Lsn(1);
    /// The greatest LSN ("valid LSNs plus one"): read until here to read without end.
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Composes an LSN from its epoch and ESN.
    pub const fn new(epoch: Epoch, esn: Esn) -> Lsn {
        Lsn(((epoch.0 as u64) << 32) | esn.0 as u64)
    }

    pub const fn epoch(self) -> Epoch {
        Epoch((self.0 >> 32) as u32)
    }

    pub const fn esn(self) -> Esn {
        Esn(self.0 as u32)
    }

    /// Splits into `(epoch, esn)`.
    pub const fn split(self) -> (Epoch, Esn) {
        (self.epoch(), self.esn())
    }

    /// The next LSN in integer order (saturating at [`Lsn::MAX`]). Crosses into the next
    /// epoch after `Esn::MAX`.
    pub fn next(self) -> Lsn {
        Lsn(self.0.saturating_add(1))
    }

    /// The previous LSN in integer order (saturating at [`Lsn::INVALID`]).
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }

    /// The first LSN of `epoch` (ESN 0 is never a record, so this is below every record of it).
    pub const fn epoch_start(epoch: Epoch) -> Lsn {
        Lsn::new(epoch, Esn(0))
    }

    /// The last LSN of `epoch`.
    pub const fn epoch_end(epoch: Epoch) -> Lsn {
        Lsn::new(epoch, Esn::MAX)
    }

    /// Big-endian bytes, the key encoding used on disk (sorts like the integer).
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}n{}", self.epoch().0, self.esn().0)
    }
}

impl FromStr for Lsn {
    type Err = IdParseError;

    /// Parses `e5n42`, a plain decimal u64, `oldest` or `max`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdParseError::Lsn(s.to_owned());
        let t = s.trim();
        match t {
            "oldest" | "OLDEST" => return Ok(Lsn::OLDEST),
            "max" | "MAX" => return Ok(Lsn::MAX),
            _ => {}
        }
        if let Some(rest) = t.strip_prefix('e') {
            let (epoch, esn) = rest.split_once('n').ok_or_else(err)?;
            let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
            if !digits(epoch) || !digits(esn) {
                return Err(err());
            }
            let epoch: u32 = epoch.parse().map_err(|_| err())?;
            let esn: u32 = esn.parse().map_err(|_| err())?;
            return Ok(Lsn::new(Epoch(epoch), Esn(esn)));
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse().map(Lsn).map_err(|_| err());
        }
        Err(err())
    }
}

/// Identifier of a node, stable across restarts (kept in the node's data directory).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(
    derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash),
    compare(PartialEq)
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N{}", self.0)
    }
}

impl FromStr for NodeId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix('N').unwrap_or(t);
        t.parse()
            .map(NodeId)
            .map_err(|_| IdParseError::NodeId(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn special_values() {
        assert_eq!(Lsn::INVALID.0, 0);
        assert_eq!(Lsn::OLDEST.0, 1);
        assert!(!Lsn::MAX.epoch().is_valid());
        assert_eq!(Lsn::new(Epoch(5), Esn(42)).to_string(), "e5n42");
        assert_eq!("e5n42".parse::<Lsn>().unwrap(), Lsn::new(Epoch(5), Esn(42)));
        assert_eq!("oldest".parse::<Lsn>().unwrap(), Lsn::OLDEST);
        assert_eq!("max".parse::<Lsn>().unwrap(), Lsn::MAX);
        for bad in [
            "",
            "e",
            "e5",
            "e5n",
            "en4",
            "e-1n2",
            "e5n42x",
            "x",
            "e4294967296n1",
            "e1n+2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
        assert!("0".parse::<LogId>().is_err());
        assert!(((1u64 << 62).to_string()).parse::<LogId>().is_err());
        assert_eq!("7".parse::<LogId>().unwrap(), LogId(7));
        assert_eq!("N3".parse::<NodeId>().unwrap(), NodeId(3));
    }

    #[test]
    fn epoch_boundaries_order() {
        let e = Epoch(3);
        assert!(Lsn::epoch_end(e) < Lsn::new(Epoch(4), Esn::MIN));
        assert_eq!(Lsn::epoch_end(e).next(), Lsn::epoch_start(Epoch(4)));
        assert_eq!(Epoch::MAX.next(), None);
        assert_eq!(Esn::MAX.next(), None);
    }

    proptest! {
        #[test]
        fn lsn_compose_split_roundtrip(epoch: u32, esn: u32) {
            let lsn = Lsn::new(Epoch(epoch), Esn(esn));
            prop_assert_eq!(lsn.split(), (Epoch(epoch), Esn(esn)));
            prop_assert_eq!(Lsn(lsn.0), lsn);
        }

        #[test]
        fn lsn_display_parse_roundtrip(raw: u64) {
            let lsn = Lsn(raw);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
            prop_assert_eq!(raw.to_string().parse::<Lsn>().unwrap(), lsn);
        }

        #[test]
        fn lsn_order_is_epoch_then_esn(a: (u32, u32), b: (u32, u32)) {
            let la = Lsn::new(Epoch(a.0), Esn(a.1));
            let lb = Lsn::new(Epoch(b.0), Esn(b.1));
            prop_assert_eq!(la.cmp(&lb), a.cmp(&b));
            prop_assert_eq!(la.to_be_bytes().cmp(&lb.to_be_bytes()), a.cmp(&b));
        }

        #[test]
        fn lsn_parse_never_panics(s in "\\PC*") {
            let _ = s.parse::<Lsn>();
        }
    }
}
