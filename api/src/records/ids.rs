//! Validated newtypes for the nouns records are made of.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use base64::Engine as _;
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not an RFC 1123 DNS label.
    #[error(
        "{what} {value:?} is not a DNS label: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    NotDnsLabel {
        /// What the value was meant to be ("cluster id", "namespace", ...).
        what: &'static str,
        /// The refused value.
        value: String,
    },
    /// Not an IPv4 CIDR in canonical form.
    #[error("global CIDR {value:?} is not a valid IPv4 network (like 242.1.0.0/16): {reason}")]
    BadCidr {
        /// The refused value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Not a base64 Curve25519 key.
    #[error("WireGuard key {value:?} is not 32 bytes of base64")]
    BadKey {
        /// The refused value.
        value: String,
    },
}

/// True when `s` is an RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if is_dns_label(&s) {
                    Ok(Self(s))
                } else {
                    Err(IdError::NotDnsLabel { what: $what, value: s })
                }
            }

            /// The label as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "maxLength": 63,
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
                })
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_newtype!(
    /// A cluster's id within the clusterset: a DNS label (it appears in DNS
    /// names such as `<cluster>.<svc>.<ns>.svc.clusterset.local`).
    ClusterId,
    "cluster id"
);

label_newtype!(
    /// A Kubernetes namespace or Service name (a DNS label).
    ObjectName,
    "object name"
);

/// An IPv4 network from the clusterset's global range, owned by one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlobalCidr(Ipv4Net);

impl GlobalCidr {
    /// Wraps `net`, refusing one with host bits set (`242.1.0.5/16`).
    pub fn new(net: Ipv4Net) -> Result<Self, IdError> {
        if net.trunc() != net {
            return Err(IdError::BadCidr {
                value: net.to_string(),
                reason: format!("host bits are set; did you mean {}?", net.trunc()),
            });
        }
        Ok(Self(net))
    }

    /// The network.
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// True when `ip` lies inside this CIDR.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }
}

impl fmt::Display for GlobalCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for GlobalCidr {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let net: Ipv4Net = s
            .parse()
            .map_err(|e: ipnet::AddrParseError| IdError::BadCidr {
                value: s.to_owned(),
                reason: e.to_string(),
            })?;
        Self::new(net)
    }
}

impl Serialize for GlobalCidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl schemars::JsonSchema for GlobalCidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GlobalCidr".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string"})
    }
}

impl<'de> Deserialize<'de> for GlobalCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard (Curve25519) public key, kept as its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireGuardKey([u8; 32]);

impl WireGuardKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key in WireGuard's base64 form (as `wg show` prints it).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl fmt::Debug for WireGuardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireGuardKey({})", self.to_base64())
    }
}

impl fmt::Display for WireGuardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for WireGuardKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::BadKey {
            value: s.to_owned(),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| bad())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self(arr))
    }
}

impl Serialize for WireGuardKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl schemars::JsonSchema for WireGuardKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WireGuardKey".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 44, "maxLength": 44})
    }
}

impl<'de> Deserialize<'de> for WireGuardKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("cluster-1", true),
            ("0abc", true),
            (&long, true),
            (&too_long, false),
            ("", false),
            ("-a", false),
            ("a-", false),
            ("A", false),
            ("a.b", false),
            ("a_b", false),
            ("ä", false),
        ];
        for (s, ok) in cases {
            assert_eq!(ClusterId::new(*s).is_ok(), *ok, "{s:?}");
        }
    }

    #[test]
    fn cluster_id_serde_validates() {
        let id: ClusterId = serde_json::from_str("\"east\"").unwrap();
        assert_eq!(id.as_str(), "east");
        assert!(serde_json::from_str::<ClusterId>("\"East\"").is_err());
        let e = ClusterId::new("Bad_Id").unwrap_err().to_string();
        assert!(e.contains("Bad_Id") && e.contains("lower-case"), "{e}");
    }

    #[test]
    fn global_cidr_refuses_host_bits() {
        assert!("242.1.0.0/16".parse::<GlobalCidr>().is_ok());
        let e = "242.1.0.5/16"
            .parse::<GlobalCidr>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("242.1.0.0/16"), "{e}");
        assert!("nonsense".parse::<GlobalCidr>().is_err());
        assert!("fd00::/64".parse::<GlobalCidr>().is_err());
    }

    #[test]
    fn wireguard_key_round_trip() {
        let k = WireGuardKey::from_bytes([7; 32]);
        let s = k.to_base64();
        assert_eq!(s.parse::<WireGuardKey>().unwrap(), k);
        assert!("AAAA".parse::<WireGuardKey>().is_err());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<WireGuardKey>(&json).unwrap(), k);
    }
}
