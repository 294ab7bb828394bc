//! How protobuf-encoded silo specs appear in Raft log entries, state rows and snapshots: as a
//! base64 string.
//!
//! serde_json writes a `Vec<u8>` as an array of numbers, about 4 bytes of JSON per spec byte,
//! and parses it one number at a time. A Raft entry must reach every follower within one
//! heartbeat interval (openraft 0.9 uses it as the AppendEntries timeout), so the encoding of
//! the spec decides how large a spec the cluster can store. Base64 takes 4 bytes per 3 and
//! parses as one string. Entries and rows written before, as arrays of numbers, still decode.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Writes `bytes` as a base64 string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(bytes))
}

/// Reads a base64 string, or an array of numbers as written before.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_any(SpecBytesVisitor)
}

struct SpecBytesVisitor;

impl<'de> Visitor<'de> for SpecBytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a base64 string or an array of bytes")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Vec<u8>, E> {
        STANDARD
            .decode(value)
            .map_err(|error| E::custom(format!("spec is not valid base64: {error}")))
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<Vec<u8>, E> {
        Ok(value.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

/// The same for an optional spec: `null` stays `None`.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        /// Wraps one spec, so `Option`'s own handling of `null` applies around it.
        #[derive(Deserialize)]
        struct Spec(#[serde(deserialize_with = "super::deserialize")] Vec<u8>);

        Ok(Option::<Spec>::deserialize(deserializer)?.map(|spec| spec.0))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        #[serde(with = "super")]
        spec: Vec<u8>,
        #[serde(default, with = "super::option")]
        next: Option<Vec<u8>>,
    }

    #[test]
    fn spec_is_written_as_base64() {
        let row = Row {
            spec: vec![0, 1, 2, 250],
            next: Some(vec![7]),
        };
        let json = serde_json::to_string(&row).expect("encode");
        assert_eq!(json, r#"{"spec":"AAEC+g==","next":"Bw=="}"#);
        assert_eq!(serde_json::from_str::<Row>(&json).expect("decode"), row);
    }

    #[test]
    fn arrays_written_before_still_decode() {
        let row: Row = serde_json::from_str(r#"{"spec":[0,1,2,250],"next":[7]}"#).expect("decode");
        assert_eq!(row.spec, vec![0, 1, 2, 250]);
        assert_eq!(row.next, Some(vec![7]));
        let row: Row = serde_json::from_str(r#"{"spec":[],"next":null}"#).expect("decode");
        assert_eq!(row.next, None);
        let row: Row = serde_json::from_str(r#"{"spec":""}"#).expect("decode");
        assert_eq!((row.spec, row.next), (Vec::new(), None));
    }

    #[test]
    fn bad_base64_is_an_error() {
        let error = serde_json::from_str::<Row>(r#"{"spec":"not base64!"}"#).expect_err("rejected");
        assert!(error.to_string().contains("not valid base64"), "{error}");
    }
}
