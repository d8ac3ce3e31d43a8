//! The versioned envelope records are stored in, and decoding with checks.

use serde::{Deserialize, Serialize};

use super::kinds::{AnyRecord, Kind, RecordKey, ValidationError};

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Why stored bytes were not accepted as a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the shape of the kind.
    #[error("record at {key} is malformed: {source}")]
    Malformed {
        /// Where it was stored.
        key: RecordKey,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer (or unknown) format.
    #[error("record at {key} has envelope version {found}, this build reads {ENVELOPE_VERSION}")]
    Version {
        /// Where it was stored.
        key: RecordKey,
        /// Version found.
        found: u32,
    },
    /// The envelope's kind differs from the key's.
    #[error("record at {key} says it is a {found}")]
    WrongKind {
        /// Where it was stored.
        key: RecordKey,
        /// Kind found.
        found: Kind,
    },
    /// The record names another owner or name than its key: a foreign record.
    #[error("record at {key} names {found}: a foreign record, ignored")]
    Foreign {
        /// Where it was stored.
        key: RecordKey,
        /// Key the record itself names.
        found: RecordKey,
    },
    /// The record breaks its invariants.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    version: u32,
    kind: Kind,
    spec: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    version: u32,
    kind: Kind,
    spec: serde_json::Value,
}

/// Serialises a record in its envelope (JSON).
pub fn encode(record: &AnyRecord) -> Vec<u8> {
    fn env<T: Serialize>(kind: Kind, spec: &T) -> Vec<u8> {
        serde_json::to_vec(&EnvelopeOut {
            version: ENVELOPE_VERSION,
            kind,
            spec,
        })
        .expect("records serialise to JSON")
    }
    match record {
        AnyRecord::Cluster(r) => env(Kind::Cluster, r),
        AnyRecord::Endpoint(r) => env(Kind::Endpoint, r),
        AnyRecord::ServiceImport(r) => env(Kind::ServiceImport, r),
        AnyRecord::ConnectionStatus(r) => env(Kind::ConnectionStatus, r),
    }
}

/// Decodes the bytes stored at `key`, refusing a malformed record, one of
/// another version or kind, one that breaks its invariants, and a foreign one
/// (stored under one cluster's key but naming another cluster or name).
pub fn decode(key: &RecordKey, bytes: &[u8]) -> Result<AnyRecord, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        key: key.clone(),
        source,
    };
    let env: EnvelopeIn = serde_json::from_slice(bytes).map_err(malformed)?;
    if env.version != ENVELOPE_VERSION {
        return Err(DecodeError::Version {
            key: key.clone(),
            found: env.version,
        });
    }
    if env.kind != key.kind {
        return Err(DecodeError::WrongKind {
            key: key.clone(),
            found: env.kind,
        });
    }
    let spec = env.spec;
    let record = match env.kind {
        Kind::Cluster => AnyRecord::Cluster(serde_json::from_value(spec).map_err(malformed)?),
        Kind::Endpoint => AnyRecord::Endpoint(serde_json::from_value(spec).map_err(malformed)?),
        Kind::ServiceImport => {
            AnyRecord::ServiceImport(serde_json::from_value(spec).map_err(malformed)?)
        }
        Kind::ConnectionStatus => {
            AnyRecord::ConnectionStatus(serde_json::from_value(spec).map_err(malformed)?)
        }
    };
    let found = record.key();
    if &found != key {
        return Err(DecodeError::Foreign {
            key: key.clone(),
            found,
        });
    }
    record.validate()?;
    Ok(record)
}
