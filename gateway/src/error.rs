//! The gateway crate's one error type.

use std::path::PathBuf;

/// Everything that can fail in the gateway crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A WireGuard key was not 32 bytes of standard base64.
    #[error("invalid WireGuard {what} key: {reason}")]
    ParseKey {
        /// Which key ("public", "private").
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The cluster key file could not be read.
    #[error("cannot read the cluster key file {path}: {source}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster key file is readable by others.
    #[error(
        "cluster key file {path} has mode {mode:04o}, so users other than its owner can read the \
         cluster's private key; run `chmod 600 {path}` (and check who read it)"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The cluster key file does not hold a key.
    #[error(
        "cluster key file {path} does not hold a WireGuard private key ({reason}); create one with `causeway join`"
    )]
    KeyFileContent {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The cluster key file could not be written.
    #[error("cannot write the cluster key file {path}: {source}")]
    WriteKeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An interface name the kernel would not take.
    #[error("invalid interface name {name:?}: {reason}")]
    InterfaceName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The tunnel MTU cannot be computed or is out of range.
    #[error("{0}")]
    Mtu(String),
    /// A command (`ip`, `wireguard-go`) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, exit status or spawn error.
        detail: String,
    },
    /// Creating or attaching the WireGuard device failed.
    #[error("cannot bring up WireGuard device {iface} ({backend}): {detail}")]
    CreateDevice {
        /// The interface.
        iface: String,
        /// The backend.
        backend: crate::cable::BackendKind,
        /// What failed.
        detail: String,
    },
    /// Talking UAPI to the device failed.
    #[error("WireGuard device {iface}: uapi {op} failed: {detail}")]
    Uapi {
        /// The interface.
        iface: String,
        /// `get` or `set`.
        op: &'static str,
        /// What failed.
        detail: String,
    },
    /// A call on the device through wireguard-control failed.
    #[error("WireGuard device {iface} ({backend}): {op} failed: {source}")]
    Device {
        /// The interface.
        iface: String,
        /// The backend.
        backend: crate::cable::BackendKind,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device has not been brought up yet.
    #[error("WireGuard device {iface} is not up; call ensure first")]
    NotUp {
        /// The interface.
        iface: String,
    },
    /// Entering a network namespace failed.
    #[error("cannot enter network namespace {path}: {detail}")]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}
