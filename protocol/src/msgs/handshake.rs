//! Opening a session: `Hello` from the store, `Welcome` or `Refused` from the aggregator.

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::error::DecodeError;
use crate::frame::MessageKind;
use crate::tensor::UpdateEncoding;

/// What a peer can do, so that neither side sends what the other cannot take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub update_encodings: Vec<UpdateEncoding>,
    /// Largest message body this peer accepts; never above a kind's hard limit.
    pub max_message_bytes: u64,
}

/// The store's first message. `protocol_version` must stay the first field forever: it is
/// read by [`Hello::peek_version`] before the rest of the layout is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub software_version: String,
    pub capabilities: Capabilities,
}

impl Hello {
    /// A hello for this build of the protocol.
    pub fn current(software_version: impl Into<String>, capabilities: Capabilities) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            software_version: software_version.into(),
            capabilities,
        }
    }

    /// Reads only the protocol version at the front of a `Hello` body.
    pub fn peek_version(body: &[u8]) -> Result<u16, DecodeError> {
        postcard::take_from_bytes::<u16>(body)
            .map(|(v, _)| v)
            .map_err(|e| DecodeError::Malformed {
                kind: MessageKind::Hello,
                detail: format!("no protocol version: {e}"),
            })
    }
}

/// The aggregator's acceptance. `store_id` is what the aggregator read from the store's
/// certificate, echoed so the store can check it is known under the name it expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    pub store_id: String,
    pub session_id: u64,
    pub capabilities: Capabilities,
    pub heartbeat_interval_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RefusalReason {
    VersionMismatch { ours: u16, theirs: u16 },
    UnknownStore { store_id: String },
    NoCommonEncoding,
    MalformedHello { detail: String },
    ShuttingDown,
    Other { detail: String },
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::VersionMismatch { ours, theirs } => write!(
                f,
                "protocol version mismatch: the aggregator speaks {ours}, the store speaks {theirs}"
            ),
            RefusalReason::UnknownStore { store_id } => write!(f, "unknown store {store_id:?}"),
            RefusalReason::NoCommonEncoding => write!(f, "no update encoding in common"),
            RefusalReason::MalformedHello { detail } => write!(f, "malformed hello: {detail}"),
            RefusalReason::ShuttingDown => write!(f, "the aggregator is shutting down"),
            RefusalReason::Other { detail } => f.write_str(detail),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: RefusalReason,
}

/// The aggregator's side of the handshake, as a pure function: the outcome of decoding a
/// `Hello` body and our own capabilities in, the agreed capabilities or the refusal out.
pub fn negotiate(hello: Result<Hello, DecodeError>, ours: &Capabilities) -> Result<Capabilities, RefusalReason> {
    let hello = match hello {
        Ok(h) => h,
        Err(DecodeError::VersionMismatch { ours, theirs }) => {
            return Err(RefusalReason::VersionMismatch { ours, theirs });
        }
        Err(e) => {
            return Err(RefusalReason::MalformedHello { detail: e.to_string() });
        }
    };
    let update_encodings: Vec<UpdateEncoding> = ours
        .update_encodings
        .iter()
        .copied()
        .filter(|e| hello.capabilities.update_encodings.contains(e))
        .collect();
    if update_encodings.is_empty() {
        return Err(RefusalReason::NoCommonEncoding);
    }
    Ok(Capabilities {
        update_encodings,
        max_message_bytes: ours.max_message_bytes.min(hello.capabilities.max_message_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgs::Message;
    use crate::tensor::ValueEncoding;

    fn caps(encs: &[UpdateEncoding], max: u64) -> Capabilities {
        Capabilities {
            update_encodings: encs.to_vec(),
            max_message_bytes: max,
        }
    }

    #[test]
    fn a_hello_from_another_version_is_refused_naming_both_versions() {
        // A future peer whose Hello layout we cannot parse beyond the version.
        let mut body = postcard::to_allocvec(&7u16).unwrap();
        body.extend_from_slice(&[0xff, 0xff, 0xff]);
        let decoded = Message::decode(MessageKind::Hello, &body).map(|m| match m {
            Message::Hello(h) => h,
            other => panic!("{other:?}"),
        });
        let refusal = negotiate(decoded, &caps(&UpdateEncoding::ALL, 1 << 20)).unwrap_err();
        assert_eq!(
            refusal,
            RefusalReason::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 7
            }
        );
        let text = refusal.to_string();
        assert!(
            text.contains(&format!("speaks {PROTOCOL_VERSION}")) && text.contains("speaks 7"),
            "{text}"
        );
    }

    #[test]
    fn negotiation_intersects_encodings_and_takes_the_smaller_limit() {
        let f16 = UpdateEncoding::Dense(ValueEncoding::F16);
        let int8 = UpdateEncoding::Dense(ValueEncoding::Int8);
        let hello = Hello::current("test", caps(&[f16, int8], 1000));
        let agreed = negotiate(Ok(hello), &caps(&[int8, UpdateEncoding::Dense(ValueEncoding::F32)], 5000)).unwrap();
        assert_eq!(agreed, caps(&[int8], 1000));
        let hello = Hello::current("test", caps(&[f16], 1000));
        assert_eq!(
            negotiate(Ok(hello), &caps(&[int8], 5000)),
            Err(RefusalReason::NoCommonEncoding)
        );
    }

    #[test]
    fn a_garbage_hello_is_refused_as_malformed() {
        let err = Message::decode(MessageKind::Hello, &[]).map(|_| unreachable!());
        assert!(matches!(
            negotiate(err, &caps(&UpdateEncoding::ALL, 10)),
            Err(RefusalReason::MalformedHello { .. })
        ));
    }
}
