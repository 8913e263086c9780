//! The one encoding of checkpointed state: postcard (serde, varint integers, a documented
//! and frozen wire format). Chosen over bincode 2 and MessagePack on our own state: see
//! `benches/checkpoint.rs` and the README's checkpoint section for the figures.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding or decoding failed: a decode error means the bytes are not what this build
/// writes (truncated, corrupt, or another format version).
#[derive(Debug, thiserror::Error)]
#[error("checkpoint encoding: {0}")]
pub struct Error(#[from] postcard::Error);

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, Error> {
    Ok(postcard::to_stdvec(v)?)
}

/// Decodes a value; trailing bytes are an error (a chunk must be exactly one value).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (v, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(Error(postcard::Error::DeserializeUnexpectedEnd));
    }
    Ok(v)
}

/// Decodes one value from the front of `bytes`, returning it and the bytes after it (for a
/// chunk that grew a second value, read by builds that know both).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), Error> {
    Ok(postcard::take_from_bytes(bytes)?)
}

/// `serde_json::Value` through the codec: postcard is not self-describing, so a JSON value
/// (deal_line's evidence figures) is carried as its JSON text.
pub mod json_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Value, s: S) -> Result<S::Ok, S::Error> {
        v.to_string().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}
