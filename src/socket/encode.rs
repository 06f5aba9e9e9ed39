//! The bytes of the frames the server sends: text frames' headers and
//! control frames (close, ping, pong), unmasked as a server's are.

use bytes::{BufMut, Bytes, BytesMut};

/// Writes the header of an unmasked, final text frame of `len` bytes into
/// `buf`; returns the part used.
pub(super) fn text_header(len: usize, buf: &mut [u8; 10]) -> &[u8] {
    buf[0] = 0x81;
    match len {
        0..=125 => {
            buf[1] = len as u8;
            &buf[..2]
        }
        126..=65_535 => {
            buf[1] = 126;
            buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            &buf[..4]
        }
        _ => {
            buf[1] = 127;
            buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            &buf[..10]
        }
    }
}

/// Appends an unmasked, final text frame with `payload` to `out`.
pub fn put_text_frame(out: &mut BytesMut, payload: &[u8]) {
    let mut header = [0u8; 10];
    out.put_slice(text_header(payload.len(), &mut header));
    out.put_slice(payload);
}

/// The largest control frame: a two-byte header and at most 125 bytes of
/// payload (RFC 6455 §5.5).
pub const MAX_CONTROL_FRAME: usize = 127;

/// Writes an unmasked control frame (`opcode` 0x8 close, 0x9 ping, 0xA
/// pong) with the first 125 bytes of `payload` into `buf`; returns the part
/// used.
pub fn control_frame<'b>(
    opcode: u8,
    payload: &[u8],
    buf: &'b mut [u8; MAX_CONTROL_FRAME],
) -> &'b [u8] {
    let payload = &payload[..payload.len().min(MAX_CONTROL_FRAME - 2)];
    buf[0] = 0x80 | opcode;
    buf[1] = payload.len() as u8;
    buf[2..2 + payload.len()].copy_from_slice(payload);
    &buf[..2 + payload.len()]
}

/// A close frame's payload: `code` and as much of `reason` as fits, cut at
/// a character boundary (the reason must stay UTF-8).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_FRAME - 4);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// A close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut buf = [0u8; MAX_CONTROL_FRAME];
    Bytes::copy_from_slice(control_frame(0x8, &close_payload(code, reason), &mut buf))
}
