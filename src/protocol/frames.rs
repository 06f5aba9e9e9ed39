//! WebSocket messages as a client sends them (RFC 6455 §5): [`MessageDecoder`]
//! turns the connection's bytes into whole messages and control frames, and
//! says exactly why it cannot ([`FrameError`], each with its close code).
//!
//! actix-http's [`Parser`] reads each frame (header, mask, the rules of RSV
//! bits, opcodes and control frame lengths); this module adds what makes the
//! connection fail correctly:
//! - a frame announced larger than `max_message` is refused at its header,
//!   before its payload is buffered (1009), and so is a fragmented message
//!   that grows past it;
//! - fragments are reassembled here, so a ping between two fragments is
//!   answered when it arrives, not after the message it interrupts;
//! - text that is not UTF-8, in a message or a close reason, is 1007;
//! - after the first error the decoder reads nothing more: a failed
//!   connection processes no further data (§7.1.7).

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::close;

/// One message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame; `None` when it carried no code.
    Close(Option<CloseReason>),
}

/// Why the client's bytes fail the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame or a reassembled message larger than `max_frame`.
    #[error("message larger than max_frame")]
    TooLarge,
    /// Text (a message or a close reason) that is not UTF-8.
    #[error("{0} is not UTF-8")]
    InvalidUtf8(&'static str),
    /// Any other violation of RFC 6455's framing rules.
    #[error("{0}")]
    Protocol(String),
}

impl FrameError {
    /// The close code the connection fails with (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge => close::TOO_BIG,
            FrameError::InvalidUtf8(_) => close::INVALID_PAYLOAD,
            FrameError::Protocol(_) => close::PROTOCOL_ERROR,
        }
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    bytes: BytesMut,
}

/// Decodes a client's byte stream into [`Inbound`] items.
#[derive(Debug)]
pub struct MessageDecoder {
    max_message: usize,
    partial: Option<Partial>,
    failed: bool,
}

impl MessageDecoder {
    pub fn new(max_message: u64) -> Self {
        MessageDecoder {
            max_message: usize::try_from(max_message).unwrap_or(usize::MAX),
            partial: None,
            failed: false,
        }
    }

    /// The next item whose bytes are all in `buf` (consumed from it), or
    /// `None` until more arrive. After an error it answers nothing more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if self.failed {
            return Ok(None);
        }
        let decoded = self.decode_one(buf);
        if decoded.is_err() {
            self.failed = true;
            self.partial = None;
        }
        decoded
    }

    fn decode_one(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        loop {
            if announced_len(buf).is_some_and(|len| len > self.max_message as u64) {
                return Err(FrameError::TooLarge);
            }
            let Some((fin, opcode, payload)) =
                Parser::parse(buf, true, self.max_message).map_err(framing_error)?
            else {
                return Ok(None);
            };
            let payload = payload.unwrap_or_default();
            match opcode {
                OpCode::Ping | OpCode::Pong | OpCode::Close if !fin => {
                    return Err(FrameError::Protocol(
                        "a control frame must not be fragmented".into(),
                    ));
                }
                OpCode::Ping => return Ok(Some(Inbound::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Inbound::Pong)),
                OpCode::Close => {
                    return close_frame(&payload).map(|reason| Some(Inbound::Close(reason)));
                }
                OpCode::Text | OpCode::Binary if self.partial.is_some() => {
                    return Err(FrameError::Protocol(
                        "a new message started inside a fragmented one".into(),
                    ));
                }
                OpCode::Text | OpCode::Binary if !fin => {
                    self.partial = Some(Partial {
                        text: opcode == OpCode::Text,
                        bytes: payload,
                    });
                }
                OpCode::Text => return text(payload.freeze()).map(Some),
                OpCode::Binary => return Ok(Some(Inbound::Binary(payload.freeze()))),
                OpCode::Continue => {
                    let Some(mut partial) = self.partial.take() else {
                        return Err(FrameError::Protocol(
                            "a continuation frame without a message to continue".into(),
                        ));
                    };
                    if partial.bytes.len() + payload.len() > self.max_message {
                        return Err(FrameError::TooLarge);
                    }
                    partial.bytes.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some(partial);
                        continue;
                    }
                    return match partial.text {
                        true => text(partial.bytes.freeze()).map(Some),
                        false => Ok(Some(Inbound::Binary(partial.bytes.freeze()))),
                    };
                }
                OpCode::Bad => return Err(FrameError::Protocol("reserved opcode".into())),
            }
        }
    }
}

fn text(bytes: Bytes) -> Result<Inbound, FrameError> {
    ByteString::try_from(bytes)
        .map(Inbound::Text)
        .map_err(|_| FrameError::InvalidUtf8("text message"))
}

/// A close frame's payload: empty, or a code that may be sent (§7.4) and
/// an optional UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<CloseReason>, FrameError> {
    match payload.len() {
        0 => return Ok(None),
        1 => {
            return Err(FrameError::Protocol(
                "a close frame's payload must start with a two-byte code".into(),
            ));
        }
        _ => {}
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(FrameError::Protocol(format!(
            "close code {code} may not be sent"
        )));
    }
    let description =
        std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8("close reason"))?;
    Ok(Some(CloseReason {
        code: CloseCode::from(code),
        description: (!description.is_empty()).then(|| description.to_owned()),
    }))
}

/// The payload length a frame's header announces, once the header has
/// arrived far enough to say.
fn announced_len(buf: &[u8]) -> Option<u64> {
    let len = buf.get(1)? & 0x7f;
    match len {
        126 => buf
            .get(2..4)
            .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        127 => buf.get(2..10).map(|b| {
            let mut len = [0u8; 8];
            len.copy_from_slice(b);
            u64::from_be_bytes(len)
        }),
        n => Some(u64::from(n)),
    }
}

fn framing_error(error: actix_http::ws::ProtocolError) -> FrameError {
    use actix_http::ws::ProtocolError as E;
    match error {
        E::Overflow => FrameError::TooLarge,
        E::UnmaskedFrame => FrameError::Protocol("a client frame must be masked".into()),
        E::InvalidOpcode(op) => FrameError::Protocol(format!("reserved opcode {op}")),
        E::InvalidLength(_) => {
            FrameError::Protocol("a control frame's payload is at most 125 bytes".into())
        }
        E::Io(e) => FrameError::Protocol(e.to_string()),
        other => FrameError::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: u64) -> Vec<Result<Inbound, FrameError>> {
        let mut decoder = MessageDecoder::new(max);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => return out,
                Err(e) => out.push(Err(e)),
            }
        }
    }

    #[test]
    fn a_ping_between_fragments_comes_out_before_the_message() {
        let mut bytes = frame(0x01, b"hel");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x80, b"lo"));
        assert_eq!(
            decode_all(&bytes, 100),
            vec![
                Ok(Inbound::Ping(Bytes::from_static(b"p"))),
                Ok(Inbound::Text("hello".into())),
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_1007_whole_or_fragmented_or_in_a_close_reason() {
        let whole = decode_all(&frame(0x81, &[0xce, 0xba, 0xff]), 100);
        let mut fragmented = frame(0x01, &[0xce]);
        fragmented.extend(frame(0x80, &[0xff]));
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(&[0xff, 0xfe]);
        for items in [
            whole,
            decode_all(&fragmented, 100),
            decode_all(&frame(0x88, &close), 100),
        ] {
            let [Err(error)] = items.as_slice() else {
                panic!("{items:?}")
            };
            assert_eq!(error.close_code(), 1007, "{error}");
        }
    }

    #[test]
    fn bad_headers_and_close_frames_are_1002_and_end_decoding() {
        let cases: Vec<Vec<u8>> = vec![
            frame(0x81 | 0x40, b"rsv1"),
            frame(0x83, b""),
            frame(0x8b, b""),
            vec![0x81, 0x02, b'h', b'i'],
            frame(0x09, b"fragmented ping"),
            frame(0x89, &[b'x'; 126]),
            frame(0x80, b"nothing to continue"),
            frame(0x88, &[0x03]),
            frame(0x88, &999u16.to_be_bytes()),
            frame(0x88, &1005u16.to_be_bytes()),
            frame(0x88, &2999u16.to_be_bytes()),
        ];
        for bytes in cases {
            let mut after = bytes.clone();
            after.extend(frame(0x81, b"never read"));
            let items = decode_all(&after, 1000);
            let [Err(error)] = items.as_slice() else {
                panic!("{bytes:02x?} gave {items:?}")
            };
            assert_eq!(error.close_code(), 1002, "{bytes:02x?}: {error}");
        }
    }

    #[test]
    fn valid_close_codes_pass_with_their_reason() {
        for code in [1000u16, 1001, 1003, 1007, 1011, 1012, 3000, 4999] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            let items = decode_all(&frame(0x88, &payload), 100);
            let [Ok(Inbound::Close(Some(reason)))] = items.as_slice() else {
                panic!("{code}: {items:?}")
            };
            assert_eq!(u16::from(reason.code), code);
            assert_eq!(reason.description.as_deref(), Some("bye"));
        }
        assert_eq!(
            decode_all(&frame(0x88, b""), 100),
            vec![Ok(Inbound::Close(None))]
        );
    }

    #[test]
    fn size_is_refused_at_the_header_and_across_fragments() {
        // Only the header of a huge frame has arrived: refused at once.
        let header = &frame(0x81, &[b'x'; 70_000])[..14];
        assert_eq!(decode_all(header, 65_536), vec![Err(FrameError::TooLarge)]);
        let mut huge = vec![0x81, 0xff];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert_eq!(decode_all(&huge, 65_536), vec![Err(FrameError::TooLarge)]);
        let exact = decode_all(&frame(0x81, &[b'x'; 65_536]), 65_536);
        assert!(matches!(exact.as_slice(), [Ok(Inbound::Text(t))] if t.len() == 65_536));
        let mut parts = frame(0x01, &[b'x'; 40_000]);
        parts.extend(frame(0x80, &[b'x'; 40_000]));
        assert_eq!(decode_all(&parts, 65_536), vec![Err(FrameError::TooLarge)]);
    }

    #[test]
    fn a_partial_frame_waits_for_its_bytes() {
        let bytes = frame(0x81, b"hello");
        let mut decoder = MessageDecoder::new(100);
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let item = decoder.decode(&mut buf).unwrap();
            assert_eq!(item.is_some(), i == bytes.len() - 1);
        }
    }
}
