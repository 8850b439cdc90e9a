//! Reading and writing frames on QUIC streams. The header is read and checked against the
//! frame limit before the body buffer is allocated; bodies land in an aligned buffer so rkyv
//! can validate them in place.

use rkyv::util::AlignedVec;

use crate::wire::{
    DecodeError, FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameKind, PROTOCOL_VERSION,
    RemoteError, WireMessage,
};

use super::TransportError;

/// One frame read from a stream: its header and its (aligned, not yet decoded) body.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub body: AlignedVec,
}

impl Frame {
    /// Decodes and validates the body as `M`, or turns an `Error` frame into
    /// [`TransportError::Remote`].
    pub fn decode<M: WireMessage>(&self, limits: &crate::Limits) -> Result<M, TransportError> {
        if self.header.kind == FrameKind::Error {
            let err = RemoteError::decode(&self.body, limits).map_err(TransportError::Decode)?;
            return Err(TransportError::Remote(err));
        }
        M::decode(&self.body, limits).map_err(TransportError::Decode)
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The header was refused (too large, unknown version or kind). The body was not read.
    Refused(FrameError),
    /// The stream or connection failed.
    Io(String),
}

/// Reads the next frame. `Ok(None)`: the peer finished the stream at a frame boundary.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: usize,
) -> Result<Option<Frame>, ReadFrameError> {
    let mut head = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(ReadFrameError::Io(format!(
                "stream ended inside a frame header ({n} bytes)"
            )));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(ReadFrameError::Io(e.to_string())),
    }
    let header = FrameHeader::decode(&head, max_frame_bytes).map_err(ReadFrameError::Refused)?;
    // Checked against the limit above: this allocation is bounded.
    let len = header.body_len as usize;
    let mut body = AlignedVec::<16>::with_capacity(len);
    body.resize(len, 0);
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(Frame { header, body })),
        Err(quinn::ReadExactError::FinishedEarly(n)) => Err(ReadFrameError::Io(format!(
            "stream ended inside a frame body ({n} of {len} bytes)"
        ))),
        Err(quinn::ReadExactError::ReadError(e)) => Err(ReadFrameError::Io(e.to_string())),
    }
}

/// Encodes `msg` as one frame of `kind`, refusing it locally if it exceeds `max_frame_bytes`.
pub(crate) fn encode_frame<M: WireMessage>(
    msg: &M,
    kind: FrameKind,
    timeout_ms: u32,
    max_frame_bytes: usize,
) -> Result<(FrameHeaderBytes, AlignedVec), TransportError> {
    let body = msg.encode().map_err(TransportError::Encode)?;
    let total = body.len() + FRAME_HEADER_BYTES;
    if total > max_frame_bytes {
        return Err(TransportError::FrameTooLarge {
            len: total,
            max: max_frame_bytes,
        });
    }
    let header = FrameHeader {
        body_len: u32::try_from(body.len()).map_err(|_| TransportError::FrameTooLarge {
            len: total,
            max: max_frame_bytes,
        })?,
        version: PROTOCOL_VERSION,
        kind,
        timeout_ms,
    };
    Ok((header.encode(), body))
}

pub(crate) type FrameHeaderBytes = [u8; FRAME_HEADER_BYTES];

/// Writes an encoded frame.
pub(crate) async fn write_encoded(
    send: &mut quinn::SendStream,
    header: &FrameHeaderBytes,
    body: &[u8],
) -> Result<(), quinn::WriteError> {
    send.write_all(header).await?;
    send.write_all(body).await
}

/// Encodes and writes one frame.
pub(crate) async fn write_frame<M: WireMessage>(
    send: &mut quinn::SendStream,
    msg: &M,
    kind: FrameKind,
    timeout_ms: u32,
    max_frame_bytes: usize,
) -> Result<(), TransportError> {
    let (header, body) = encode_frame(msg, kind, timeout_ms, max_frame_bytes)?;
    write_encoded(send, &header, &body)
        .await
        .map_err(|e| TransportError::ConnectionLost(e.to_string()))
}

/// Writes an `Error` frame (best effort: the stream may already be gone).
pub(crate) async fn write_error(send: &mut quinn::SendStream, err: &RemoteError) {
    // Error frames are small; the hard limit only guards against absurd messages.
    let _ = write_frame(send, err, FrameKind::Error, 0, usize::MAX).await;
}

/// A decode failure as a remote error to send back.
pub(crate) fn decode_error_to_remote(e: &DecodeError) -> RemoteError {
    RemoteError::new(crate::wire::ErrorCode::BadRequest, truncate(e.to_string()))
}

/// Keeps error messages within the wire limit.
pub(crate) fn truncate(mut s: String) -> String {
    let max = crate::wire::MAX_ERROR_MESSAGE_BYTES;
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
