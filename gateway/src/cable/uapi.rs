//! The WireGuard cross-platform UAPI (`set=1` / `get=1`, key=value lines) as
//! spoken to the embedded boringtun: rendering and parsing are pure; [`Conn`]
//! does the round trips on our end of the socketpair.
//!
//! boringtun 0.7.1 quirks this module works around:
//! - a `set=1` with several peers carries `remove` and `endpoint` over from one
//!   peer to the next, so every transaction here names exactly one peer;
//! - setting a peer that exists panics its event thread ("Modifying existing
//!   peers is not yet supported"), so an update is a remove then an add;
//! - `get=1` must be the single line `get=1\n` (a second newline would be read
//!   as another, invalid command whose reply nobody reads);
//! - `get` reports `own_public_key=` instead of `private_key=`, and
//!   `last_handshake_time_sec` as time *since* the handshake, not since the epoch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::{DeviceState, ObservedPeer, PeerConfig, PeerStats, PrivateKey, PublicKey};

/// `set=1` for the device's own settings.
pub fn render_set_device(private_key: Option<&PrivateKey>, listen_port: Option<u16>) -> String {
    let mut out = String::from("set=1\n");
    if let Some(key) = private_key {
        let _ = writeln!(out, "private_key={}", key.expose_hex());
    }
    if let Some(port) = listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    out.push('\n');
    out
}

/// `set=1` that removes one peer.
pub fn render_remove_peer(key: &PublicKey) -> String {
    format!("set=1\npublic_key={}\nremove=true\n\n", key.to_hex())
}

/// `set=1` that removes every peer.
pub fn render_remove_all() -> String {
    "set=1\nreplace_peers=true\n\n".to_owned()
}

/// `set=1` that creates one peer (it must not exist yet).
pub fn render_add_peer(peer: &PeerConfig) -> String {
    let mut out = format!("set=1\npublic_key={}\n", peer.public_key.to_hex());
    if let Some(endpoint) = peer.endpoint {
        let _ = writeln!(out, "endpoint={endpoint}");
    }
    if let Some(keepalive) = peer.keepalive.filter(|k| *k != 0) {
        let _ = writeln!(out, "persistent_keepalive_interval={keepalive}");
    }
    for net in &peer.allowed_ips {
        let _ = writeln!(out, "allowed_ip={net}");
    }
    out.push('\n');
    out
}

/// A `get=1` reply that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

/// Parses a `get=1` reply from boringtun (its `own_public_key` and relative
/// handshake times) or a standard one (`private_key`, epoch times). `now` turns
/// boringtun's "seconds ago" into a time.
pub fn parse_get(text: &str, now: SystemTime) -> Result<DeviceState, ParseError> {
    let mut state = DeviceState::default();
    let mut current: Option<ObservedPeer> = None;
    let mut handshake: (Option<u64>, u32) = (None, 0);
    let mut relative = false;
    let finish = |peer: Option<ObservedPeer>,
                  handshake: (Option<u64>, u32),
                  relative: bool,
                  peers: &mut BTreeMap<PublicKey, ObservedPeer>| {
        if let Some(mut peer) = peer {
            if let (Some(sec), nsec) = handshake {
                let d = Duration::new(sec, nsec);
                peer.stats.last_handshake = if relative {
                    now.checked_sub(d)
                } else if sec == 0 && nsec == 0 {
                    None
                } else {
                    SystemTime::UNIX_EPOCH.checked_add(d)
                };
            }
            peers.insert(peer.config.public_key, peer);
        }
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ParseError(format!("line without '=': {line:?}")))?;
        let bad = |what: &str| ParseError(format!("bad {what}: {value:?}"));
        match key {
            "own_public_key" => {
                relative = true;
                state.public_key = Some(PublicKey::from_hex(value).map_err(|_| bad(key))?);
            }
            "private_key" => {
                // Never kept: only its public half is wanted.
                let bytes =
                    PublicKey::from_hex(value).map_err(|_| ParseError("bad private_key".into()))?;
                state.public_key = Some(key_public(bytes));
            }
            "listen_port" => state.listen_port = Some(value.parse().map_err(|_| bad(key))?),
            "public_key" => {
                finish(current.take(), handshake, relative, &mut state.peers);
                handshake = (None, 0);
                current = Some(ObservedPeer {
                    config: PeerConfig {
                        public_key: PublicKey::from_hex(value).map_err(|_| bad(key))?,
                        endpoint: None,
                        allowed_ips: Default::default(),
                        keepalive: None,
                    },
                    stats: PeerStats::default(),
                });
            }
            "errno" => {
                if value != "0" {
                    return Err(ParseError(format!("errno={value}")));
                }
            }
            "fwmark" | "protocol_version" | "preshared_key" => {}
            _ => {
                let Some(peer) = current.as_mut() else {
                    return Err(ParseError(format!("{key} outside a peer")));
                };
                match key {
                    "endpoint" => {
                        peer.config.endpoint =
                            Some(value.parse::<SocketAddr>().map_err(|_| bad(key))?)
                    }
                    "allowed_ip" => {
                        peer.config
                            .allowed_ips
                            .insert(value.parse::<IpNet>().map_err(|_| bad(key))?);
                    }
                    "persistent_keepalive_interval" => {
                        peer.config.keepalive =
                            Some(value.parse::<u16>().map_err(|_| bad(key))?).filter(|k| *k != 0)
                    }
                    "last_handshake_time_sec" => {
                        handshake.0 = Some(value.parse().map_err(|_| bad(key))?)
                    }
                    "last_handshake_time_nsec" => {
                        handshake.1 = value.parse().map_err(|_| bad(key))?
                    }
                    "rx_bytes" => peer.stats.rx_bytes = value.parse().map_err(|_| bad(key))?,
                    "tx_bytes" => peer.stats.tx_bytes = value.parse().map_err(|_| bad(key))?,
                    _ => {} // Newer keys are ignored, as the protocol asks.
                }
            }
        }
    }
    finish(current.take(), handshake, relative, &mut state.peers);
    Ok(state)
}

fn key_public(private_bytes: PublicKey) -> PublicKey {
    let secret = boringtun::x25519::StaticSecret::from(*private_bytes.as_bytes());
    PublicKey::from_bytes(boringtun::x25519::PublicKey::from(&secret).to_bytes())
}

/// The errno of a `set=1` reply (`errno=N`).
pub fn parse_errno(text: &str) -> Result<i32, ParseError> {
    text.lines()
        .find_map(|l| l.strip_prefix("errno="))
        .ok_or_else(|| ParseError(format!("no errno in reply {text:?}")))?
        .trim()
        .parse()
        .map_err(|_| ParseError(format!("bad errno in reply {text:?}")))
}

/// Our end of the UAPI socketpair.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<UnixStream>,
}

impl Conn {
    /// Wraps our end; replies must come within `timeout`.
    pub fn new(stream: UnixStream, timeout: Duration) -> std::io::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and returns the reply up to and including `errno=N`.
    pub fn round_trip(&mut self, request: &str) -> std::io::Result<String> {
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "device closed the UAPI connection (its event loop has exited)",
                ));
            }
            let is_errno = line.starts_with("errno=");
            reply.push_str(&line);
            if is_errno {
                // The reply ends with an empty line after errno.
                let mut blank = String::new();
                self.reader.read_line(&mut blank)?;
                return Ok(reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    #[test]
    fn renders_one_peer_per_transaction() {
        let peer = PeerConfig {
            public_key: key(0xab),
            endpoint: Some("[fd00::1]:51820".parse().unwrap()),
            allowed_ips: [
                "10.245.0.0/16".parse().unwrap(),
                "fd10::/48".parse().unwrap(),
            ]
            .into(),
            keepalive: Some(25),
        };
        let hex = "ab".repeat(32);
        assert_eq!(
            render_add_peer(&peer),
            format!(
                "set=1\npublic_key={hex}\nendpoint=[fd00::1]:51820\npersistent_keepalive_interval=25\nallowed_ip=10.245.0.0/16\nallowed_ip=fd10::/48\n\n"
            )
        );
        let bare = PeerConfig {
            endpoint: None,
            keepalive: Some(0),
            allowed_ips: Default::default(),
            ..peer
        };
        assert_eq!(
            render_add_peer(&bare),
            format!("set=1\npublic_key={hex}\n\n")
        );
        assert_eq!(
            render_remove_peer(&key(0xab)),
            format!("set=1\npublic_key={hex}\nremove=true\n\n")
        );
        assert_eq!(render_remove_all(), "set=1\nreplace_peers=true\n\n");
        assert_eq!(
            render_set_device(None, Some(51820)),
            "set=1\nlisten_port=51820\n\n"
        );
    }

    #[test]
    fn parses_boringtun_get() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let text = format!(
            "own_public_key={}\nlisten_port=51820\npublic_key={}\npersistent_keepalive_interval=25\nendpoint=172.18.1.10:51820\nallowed_ip=10.245.0.0/16\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=0\nrx_bytes=92\ntx_bytes=148\npublic_key={}\nallowed_ip=10.246.0.0/16\nrx_bytes=0\ntx_bytes=0\nerrno=0\n",
            "01".repeat(32),
            "02".repeat(32),
            "03".repeat(32)
        );
        let state = parse_get(&text, now).unwrap();
        assert_eq!(state.public_key, Some(key(1)));
        assert_eq!(state.listen_port, Some(51820));
        let b = &state.peers[&key(2)];
        assert_eq!(
            b.config.endpoint,
            Some("172.18.1.10:51820".parse().unwrap())
        );
        assert_eq!(b.config.keepalive, Some(25));
        assert_eq!(b.stats.rx_bytes, 92);
        assert_eq!(b.stats.tx_bytes, 148);
        assert_eq!(b.stats.last_handshake, Some(now - Duration::from_secs(3)));
        let c = &state.peers[&key(3)];
        assert_eq!(c.config.endpoint, None);
        assert_eq!(c.stats.last_handshake, None);
        assert_eq!(c.config.allowed_ips.len(), 1);
    }

    #[test]
    fn parses_standard_get() {
        let private = PrivateKey::generate();
        let text = format!(
            "private_key={}\nlisten_port=1\npublic_key={}\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\npublic_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nprotocol_version=1\nerrno=0\n",
            private.expose_hex(),
            "02".repeat(32),
            "03".repeat(32)
        );
        let state = parse_get(&text, SystemTime::now()).unwrap();
        assert_eq!(state.public_key, Some(private.public_key()));
        assert_eq!(
            state.peers[&key(2)].stats.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        // Zero means never, in the standard dialect.
        assert_eq!(state.peers[&key(3)].stats.last_handshake, None);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "nonsense",
            "errno=22\n",
            "endpoint=1.2.3.4:5\n",
            "public_key=zz\n",
        ] {
            assert!(parse_get(bad, SystemTime::now()).is_err(), "{bad}");
        }
        assert_eq!(parse_errno("errno=0\n\n"), Ok(0));
        assert_eq!(parse_errno("errno=22\n"), Ok(22));
        assert!(parse_errno("x=1").is_err());
    }
}
