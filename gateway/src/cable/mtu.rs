//! Tunnel MTU and TCP MSS from the underlay's MTU.
//!
//! WireGuard adds 32 bytes (type, receiver, counter, tag) plus UDP (8) plus
//! the outer IP header (20 for IPv4, 40 for IPv6): 60 or 80 bytes.

use crate::Error;

/// The address family of the underlay (the path between gateways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 underlay: 60 bytes of overhead.
    V4,
    /// IPv6 underlay: 80 bytes of overhead.
    V6,
}

/// WireGuard's per-packet overhead over `family`.
pub const fn overhead(family: Family) -> u32 {
    match family {
        Family::V4 => 60,
        Family::V6 => 80,
    }
}

/// Smallest tunnel MTU accepted: IPv6 needs 1280 inside, IPv4 needs 576.
const MIN_MTU: u32 = 576;
/// Largest MTU Linux takes on a TUN device.
const MAX_MTU: u32 = 65535;

/// The tunnel MTU: `underlay_mtu` minus WireGuard's overhead, unless the
/// operator gave one (`--tunnel-mtu`).
pub fn tunnel_mtu(
    underlay_mtu: u32,
    family: Family,
    override_mtu: Option<u32>,
) -> Result<u32, Error> {
    if let Some(mtu) = override_mtu {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(Error::Mtu(format!(
                "--tunnel-mtu {mtu} is out of range; give a value from {MIN_MTU} to {MAX_MTU}"
            )));
        }
        return Ok(mtu);
    }
    let mtu = underlay_mtu.saturating_sub(overhead(family));
    if mtu < MIN_MTU {
        return Err(Error::Mtu(format!(
            "underlay MTU {underlay_mtu} leaves {mtu} for the tunnel, below {MIN_MTU}; \
             raise the underlay MTU or set --tunnel-mtu"
        )));
    }
    Ok(mtu.min(MAX_MTU))
}

/// The TCP MSS that fits `mtu` for inner packets of `family` (IP and TCP headers off).
pub const fn mss(mtu: u32, family: Family) -> u32 {
    match family {
        Family::V4 => mtu.saturating_sub(40),
        Family::V6 => mtu.saturating_sub(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (underlay MTU, family, override, expected MTU or error substring)
    type Case = (u32, Family, Option<u32>, Result<u32, &'static str>);

    #[test]
    fn tunnel_mtu_table() {
        let cases: &[Case] = &[
            (1500, Family::V4, None, Ok(1440)),
            (1500, Family::V6, None, Ok(1420)),
            (9001, Family::V4, None, Ok(8941)),
            (1450, Family::V4, None, Ok(1390)), // VXLAN underlay
            (1500, Family::V4, Some(1380), Ok(1380)),
            (500, Family::V4, Some(1400), Ok(1400)),
            (600, Family::V4, None, Err("below 576")),
            (0, Family::V6, None, Err("raise the underlay MTU")),
            (
                1500,
                Family::V4,
                Some(100),
                Err("--tunnel-mtu 100 is out of range"),
            ),
            (1500, Family::V4, Some(70000), Err("out of range")),
            (70000, Family::V4, None, Ok(65535)),
        ];
        for (underlay, family, over, want) in cases {
            let got = tunnel_mtu(*underlay, *family, *over).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{underlay} {family:?} {over:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{underlay} {family:?} {over:?}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn mss_table() {
        assert_eq!(mss(1440, Family::V4), 1400);
        assert_eq!(mss(1420, Family::V6), 1360);
        assert_eq!(mss(10, Family::V6), 0);
    }
}
