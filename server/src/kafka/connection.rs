//! One client connection: framing, pipelining, responses in request order.
//!
//! Runs on the core that accepted the connection. The reader takes frames (a 4-byte size, then
//! the request), checks the size against `request_bytes_max` before reading the body, and
//! spawns one task per request; at most `requests_in_flight_per_connection_max` tasks are
//! queued, after which reading waits. The writer awaits the tasks in the order the requests
//! arrived, so responses are always in request order however the handlers interleave.
//!
//! A frame that can not be parsed (bad header, unknown API key, undecodable body) closes the
//! connection with one log line, as Kafka does; other connections are unaffected.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::handlers;
use crate::shard::Shard;

/// What a request task produced.
pub enum Outcome {
    /// A framed response to write.
    Respond(Bytes),
    /// No response (acks=0 produce).
    Silent,
    /// Close the connection, for this reason.
    Close(String),
}

/// Serves a connection until the client closes it, an error closes it, or shutdown.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let (mut reader, mut writer) = stream.split();
    let depth = shard.config.limits.requests_in_flight_per_connection_max;
    let (tx, rx) = local_channel::new_bounded::<glommio::task::JoinHandle<Outcome>>(depth);
    let writer_task = glommio::spawn_local(async move {
        while let Some(task) = rx.recv().await {
            match task.await {
                Some(Outcome::Respond(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Outcome::Silent) => {}
                Some(Outcome::Close(reason)) => {
                    tracing::warn!(peer = ?peer, %reason, "closing connection");
                    let _ = writer.close().await;
                    return;
                }
                None => return,
            }
        }
        let _ = writer.close().await;
    });
    let max = shard.config.limits.request_bytes_max;
    loop {
        let mut size = [0u8; 4];
        if reader.read_exact(&mut size).await.is_err() {
            break;
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > max {
            tracing::warn!(peer = ?peer, size, max, "request size out of range; closing connection");
            break;
        }
        let mut body = BytesMut::zeroed(size as usize);
        if reader.read_exact(&mut body).await.is_err() {
            tracing::debug!(peer = ?peer, "connection closed inside a frame");
            break;
        }
        let body = body.freeze();
        let s = shard.clone();
        let task = glommio::spawn_local(async move { handle_frame(s, body, peer).await }).detach();
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    writer_task.await;
}

/// Decodes one request frame, runs its handler and encodes the response frame.
async fn handle_frame(shard: Rc<Shard>, mut body: Bytes, peer: Option<SocketAddr>) -> Outcome {
    if body.len() < 8 {
        return Outcome::Close(format!(
            "request of {} bytes is shorter than a header",
            body.len()
        ));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Outcome::Close(format!("unknown API key {key}"));
    };
    let Some((min, max)) = handlers::supported_versions(api) else {
        return Outcome::Close(format!("API {api:?} is not supported"));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            // Kafka answers an unsupported ApiVersions version with v0 and the ranges.
            let resp = handlers::api_versions::unsupported_version();
            return frame(correlation_id, 0, &ResponseKind::ApiVersions(resp), 0);
        }
        return Outcome::Close(format!(
            "{api:?} v{version} is not supported (v{min}..v{max})"
        ));
    }
    let header = match RequestHeader::decode(&mut body, api.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("bad {api:?} request header: {e}")),
    };
    let request = match RequestKind::decode(api, &mut body, version) {
        Ok(r) => r,
        Err(e) => return Outcome::Close(format!("bad {api:?} v{version} request: {e}")),
    };
    let _ = peer;
    match handlers::handle(&shard, &header, request).await {
        handlers::Reply::Response(resp) => frame(
            header.correlation_id,
            api.response_header_version(version),
            &resp,
            version,
        ),
        handlers::Reply::None => Outcome::Silent,
        handlers::Reply::Close(reason) => Outcome::Close(reason),
    }
}

fn frame(correlation_id: i32, header_version: i16, resp: &ResponseKind, version: i16) -> Outcome {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    if let Err(e) = header.encode(&mut buf, header_version) {
        return Outcome::Close(format!("encoding response header: {e}"));
    }
    if let Err(e) = resp.encode(&mut buf, version) {
        return Outcome::Close(format!("encoding response: {e}"));
    }
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Outcome::Respond(buf.freeze())
}
