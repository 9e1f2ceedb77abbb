//! The mesh's wire format: protobuf frames (generated from `proto/mesh.proto` at build time by
//! a pure-Rust compiler) and their length-delimited, size-capped framing.
//!
//! Owns: the frame types and [`encode`]/[`decode`]. Must never: accept a frame over
//! [`MAX_FRAME`], or panic on any bytes.

#![allow(missing_docs, clippy::doc_markdown)]

include!(concat!(env!("OUT_DIR"), "/grouter.mesh.v1.rs"));

use prost::Message as _;

/// Protocol version this release speaks (sent in `Hello`). 2: partitions carry config keys
/// (`PartitionDelta.config`), which the owner's seal covers, so a release that speaks 1 cannot
/// verify a partition holding one.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame accepted or sent. Ordinary deltas are split far below it; the limit is set
/// by a reset, which carries a whole partition in one frame (200,000 routes take about
/// 16 MiB). Mesh peers are authenticated, and this still bounds what one can make us buffer.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    /// Not a valid protobuf `Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A valid frame without a body (or with a kind this release does not know).
    #[error("frame without a known body")]
    Empty,
}

/// Encode a frame body (without the length prefix; the transport's codec adds it).
pub fn encode(body: frame::Body) -> bytes::Bytes {
    Frame { body: Some(body) }.encode_to_vec().into()
}

/// Decode a frame body received without its length prefix.
pub fn decode(bytes: &[u8]) -> Result<frame::Body, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    Frame::decode(bytes)?.body.ok_or(FrameError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let hello = frame::Body::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: "lon-1".into(),
            site: "lon".into(),
            generation: 7,
        });
        let bytes = encode(hello.clone());
        assert_eq!(decode(&bytes).unwrap(), hello);
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(decode(&[]), Err(FrameError::Empty)));
        assert!(matches!(
            decode(&vec![0; MAX_FRAME + 1]),
            Err(FrameError::TooLarge(_))
        ));
    }

    /// Every field of a delta survives the trip, including a tombstone (no `route`).
    #[test]
    fn delta_round_trip() {
        let delta = frame::Body::Delta(Delta {
            partitions: vec![PartitionDelta {
                node_id: "nyc-1".into(),
                site: "nyc".into(),
                generation: 3,
                from_version: 2,
                up_to_version: 9,
                reset: false,
                record: Some(NodeRecord {
                    version: 9,
                    heartbeat: 4,
                    ..Default::default()
                }),
                entries: vec![
                    Entry {
                        host: "a.com".into(),
                        path: "/x".into(),
                        version: 8,
                        route: None,
                    },
                    Entry {
                        host: "b.com".into(),
                        path: String::new(),
                        version: 9,
                        route: Some(RouteValue {
                            app_id: "g".into(),
                            endpoints: 2,
                            ..Default::default()
                        }),
                    },
                ],
                seal: Some(Seal {
                    scheme: 0x0403,
                    signature: vec![1, 2, 3],
                }),
                owner_cert: vec![4, 5],
                config: vec![ConfigEntry {
                    key: "policy/site/nyc".into(),
                    version: 7,
                    hlc_ms: 1_700_000_000_000,
                    hlc_counter: 2,
                    hlc_node: "nyc-1".into(),
                    deleted: false,
                    value: br#"{"drained":true}"#.to_vec(),
                }],
            }],
        });
        assert_eq!(decode(&encode(delta.clone())).unwrap(), delta);
    }
}
