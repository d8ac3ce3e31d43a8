//! The cluster's WireGuard identity: one key pair per cluster, shared by every
//! gateway candidate, kept in a file only its owner can read.
//!
//! A private key is never shown: it has no `Display`, its `Debug` prints
//! `PrivateKey(<redacted>)`, and it is zeroed when dropped. It leaves this
//! module only as UAPI hex or as a `wireguard_control::Key` for a backend.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::Error;

/// Decodes standard base64 (as `wg genkey` writes it) into 32 bytes.
fn decode_key(what: &'static str, text: &str) -> Result<[u8; 32], Error> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::ParseKey {
            what,
            reason: "it is empty".into(),
        });
    }
    let bytes = STANDARD.decode(text).map_err(|e| Error::ParseKey {
        what,
        // The decoder's message quotes a byte of the input: fine for a public key only.
        reason: if what == "public" {
            format!("not standard base64 ({e})")
        } else {
            "not standard base64".into()
        },
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::ParseKey {
        what,
        reason: format!(
            "it decodes to {} bytes, a WireGuard key is 32 (44 base64 characters)",
            bytes.len()
        ),
    })
}

/// A WireGuard public key (Curve25519), shown as base64 as `wg` shows it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Standard base64, as in `wg show` and in Endpoint records.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Lower-case hex, as UAPI wants it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the lower- or upper-case hex UAPI uses.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        unhex(text).map(Self).ok_or_else(|| Error::ParseKey {
            what: "public",
            reason: "not 64 hex digits".into(),
        })
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        decode_key("public", s).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private key. Never displayed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key from the OS generator, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        Self(wireguard_control::Key::generate_private().0)
    }

    /// Parses standard base64 (the content of a `wg genkey` file).
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        decode_key("private", text).map(Self)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// Base64 for writing the key file. Named so that a call stands out in review.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Hex for a UAPI `private_key=` line.
    pub(crate) fn expose_hex(&self) -> String {
        hex(&self.0)
    }

    /// The key as wireguard-control wants it (whose `Debug` would print it: never log that value).
    pub(crate) fn to_wgctrl(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0 = [0; 32];
        // Keeps the store from being optimised away as dead.
        std::hint::black_box(&self.0);
    }
}

/// The cluster's key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    private: PrivateKey,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh key pair (`wg genkey | tee key | wg pubkey`).
    pub fn generate() -> Self {
        Self::from_private(PrivateKey::generate())
    }

    /// The pair of a known private key.
    pub fn from_private(private: PrivateKey) -> Self {
        let public = private.public_key();
        Self { private, public }
    }

    /// The private half.
    pub fn private(&self) -> &PrivateKey {
        &self.private
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Loads the private key from `path`, which must be readable by its owner only
    /// (mode 0600 or 0400); anything looser is refused with the `chmod` to run.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let read_err = |source| Error::ReadKeyFile {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyFileMode {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::io::read_to_string(file).map_err(read_err)?;
        let private = PrivateKey::from_base64(&text).map_err(|e| Error::KeyFileContent {
            path: path.to_owned(),
            reason: match e {
                Error::ParseKey { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(Self::from_private(private))
    }

    /// Writes the private key to a new file `path` with mode 0600; an existing
    /// file is never overwritten (the cluster would lose its identity).
    pub fn write_new(&self, path: &Path) -> Result<(), Error> {
        let write_err = |source| Error::WriteKeyFile {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        // The umask cannot widen 0600, but a pre-set ACL default could: pin it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_err)?;
        file.write_all(format!("{}\n", self.private.expose_base64()).as_bytes())
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // From wireguard-control's own test vector (a `wg genkey` / `wg pubkey` pair).
    const PRIVATE: &str = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
    const PUBLIC: &str = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let private = PrivateKey::from_base64(PRIVATE).unwrap();
        assert_eq!(private.public_key().to_base64(), PUBLIC);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("not base64!", "not standard base64"),
            ("AAAA", "decodes to 3 bytes"),
            (
                "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8AAAA=",
                "decodes to 35 bytes",
            ),
        ];
        for (input, want) in cases {
            let err = input.parse::<PublicKey>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(err.contains("public"), "{err}");
        }
        assert!(PUBLIC.parse::<PublicKey>().is_ok());
        assert!(format!(" {PUBLIC}\n").parse::<PublicKey>().is_ok());
    }

    #[test]
    fn private_key_is_never_shown() {
        let pair = KeyPair::from_private(PrivateKey::from_base64(PRIVATE).unwrap());
        let shown = format!("{pair:?} {:?} {:#?}", pair.private(), pair);
        assert!(!shown.contains(PRIVATE), "{shown}");
        assert!(!shown.contains(&pair.private().expose_hex()), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains(PUBLIC));
    }

    #[test]
    fn hex_round_trip() {
        let key: PublicKey = PUBLIC.parse().unwrap();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(
            PublicKey::from_hex(&key.to_hex().to_uppercase()).unwrap(),
            key
        );
        assert!(PublicKey::from_hex("abc").is_err());
    }

    #[test]
    fn generated_keys_differ_and_are_clamped() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
    }

    #[test]
    fn key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let pair = KeyPair::generate();
        pair.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(KeyPair::load(&path).unwrap(), pair);
        // Never overwritten.
        assert!(KeyPair::generate().write_new(&path).is_err());
        assert_eq!(KeyPair::load(&path).unwrap(), pair);
    }

    #[test]
    fn loose_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        KeyPair::generate().write_new(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = KeyPair::load(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            assert!(err.contains(&format!("{mode:04o}")), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(KeyPair::load(&path).is_ok());
    }

    #[test]
    fn key_file_with_garbage_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        std::fs::write(&path, "hello\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("causeway join"), "{err}");
        assert!(
            !err.contains("hello"),
            "a key file's content is never echoed: {err}"
        );
        let missing = KeyPair::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, Error::ReadKeyFile { .. }));
    }
}
