//! The probe wire format: 24 bytes, big-endian.
//!
//! ```text
//! 0      4     5        6          8        16             24
//! | "CWHP" | kind | version | reserved | seq u64 | sent_ns u64 |
//! ```
//!
//! `kind` is 1 for a probe and 2 for its echo; `sent_ns` is the prober's own
//! clock (nanoseconds since it started), echoed untouched, so the two sides
//! need no common clock. Anything else is not a probe and is ignored.

/// The first bytes of every probe.
pub const MAGIC: [u8; 4] = *b"CWHP";
/// The only version so far.
pub const VERSION: u8 = 1;
/// Length of a packet.
pub const LEN: usize = 24;

/// Probe or echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by a prober.
    Probe,
    /// Sent back by a responder.
    Reply,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Probe => 1,
            Kind::Reply => 2,
        }
    }
}

/// One probe or echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Probe or echo.
    pub kind: Kind,
    /// The prober's sequence number for this peer.
    pub seq: u64,
    /// When the prober sent it, on the prober's clock.
    pub sent_ns: u64,
}

impl Packet {
    /// The bytes on the wire.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = self.kind.byte();
        b[5] = VERSION;
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
        b
    }

    /// Reads a packet; `None` for anything that is not exactly a probe or echo.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || b[..4] != MAGIC || b[5] != VERSION || b[6..8] != [0, 0] {
            return None;
        }
        let kind = match b[4] {
            1 => Kind::Probe,
            2 => Kind::Reply,
            _ => return None,
        };
        let seq = u64::from_be_bytes(b[8..16].try_into().ok()?);
        let sent_ns = u64::from_be_bytes(b[16..24].try_into().ok()?);
        Some(Self { kind, seq, sent_ns })
    }

    /// The echo a responder sends back for this probe.
    pub fn reply(&self) -> Self {
        Self {
            kind: Kind::Reply,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = Packet {
            kind: Kind::Probe,
            seq: 0x0102_0304_0506_0708,
            sent_ns: u64::MAX - 1,
        };
        assert_eq!(Packet::decode(&p.encode()), Some(p));
        let r = p.reply();
        assert_eq!(Packet::decode(&r.encode()), Some(r));
        assert_eq!(r.kind, Kind::Reply);
        assert_eq!((r.seq, r.sent_ns), (p.seq, p.sent_ns));
    }

    #[test]
    fn malformed_packets_are_refused() {
        let good = Packet {
            kind: Kind::Probe,
            seq: 7,
            sent_ns: 9,
        }
        .encode();
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", good[..23].to_vec()),
            ("long", [&good[..], &[0]].concat()),
        ];
        for (name, at, value) in [
            ("magic", 0, b'X'),
            ("kind 0", 4, 0),
            ("kind 3", 4, 3),
            ("version", 5, 2),
            ("reserved", 7, 1),
        ] {
            let mut b = good.to_vec();
            b[at] = value;
            cases.push((name, b));
        }
        for (name, bytes) in cases {
            assert_eq!(Packet::decode(&bytes), None, "{name}");
        }
    }
}
