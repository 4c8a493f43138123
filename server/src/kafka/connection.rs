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
//!
//! Request bodies are read straight into a buffer's uninitialized capacity ([`read_body`]):
//! zeroing each buffer before the read was 5-7% of the core at full produce rate, one extra
//! pass over every byte a producer sends.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
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
    let fd = stream.as_raw_fd();
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
    let bytes_max = shard
        .config
        .limits
        .request_bytes_in_flight_per_connection_max;
    let bytes_in_flight = ringlog_storage::sync::LocalSemaphore::new(bytes_max as u64);
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
        let permits = (size as u64).clamp(1, bytes_max as u64);
        let room = bytes_in_flight.acquire(permits).await;
        let body = match read_body(&mut reader, fd, size as usize).await {
            Ok(body) => body.freeze(),
            Err(e) => {
                tracing::debug!(peer = ?peer, error = %e, "connection closed inside a frame");
                break;
            }
        };
        let s = shard.clone();
        let (dispatched, dispatched_rx) = handlers::Dispatched::new();
        let task = glommio::spawn_local(async move {
            let out = handle_frame(s, body, peer, dispatched).await;
            drop(room);
            out
        })
        .detach();
        if tx.send(task).await.is_err() {
            break;
        }
        // Start the next request only once this one's appends have their offsets (Kafka's
        // per-connection order); its fsync may still be running.
        let _ = dispatched_rx.await;
    }
    drop(tx);
    writer_task.await;
}

/// Reads exactly `size` bytes from the connection into a new buffer without zeroing it first.
///
/// `fd` is the socket behind `reader`. Whatever the socket already holds is taken with a
/// non-blocking `recv(2)` into the buffer's spare capacity (the kernel writes the bytes, and
/// the length grows only by what it reports written). When the socket is empty, one byte is
/// read through `reader`, which waits on the executor's reactor the usual way. Errors when the
/// peer closes before `size` bytes arrive.
async fn read_body<R>(reader: &mut R, fd: RawFd, size: usize) -> std::io::Result<BytesMut>
where
    R: futures::io::AsyncRead + Unpin,
{
    let mut body = BytesMut::with_capacity(size);
    while body.len() < size {
        let want = size - body.len();
        let spare = body.spare_capacity_mut();
        assert!(spare.len() >= want);
        // SAFETY: `spare` is writable memory owned by `body` with room for `want` bytes; recv
        // writes at most `want` bytes there and reports how many.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
        if n > 0 {
            let n = n as usize;
            assert!(n <= want);
            // SAFETY: the kernel initialized these `n` bytes, right after the current length.
            unsafe { body.set_len(body.len() + n) };
            continue;
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                let mut one = [0u8; 1];
                if reader.read(&mut one).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.put_u8(one[0]);
            }
            _ => return Err(err),
        }
    }
    Ok(body)
}

/// A request frame, decoded.
#[derive(Debug)]
pub struct Decoded {
    /// The API.
    pub api: ApiKey,
    /// Its version.
    pub version: i16,
    /// The header.
    pub header: RequestHeader,
    /// The body.
    pub request: RequestKind,
    /// A Produce request's records, one entry per partition in request order, in buffers of
    /// their own (taken out of the request, whose `records` are then `None`); empty for
    /// other APIs.
    pub produce_records: Vec<Option<BytesMut>>,
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// An ApiVersions request in a version this broker does not serve: answered with v0.
    UnsupportedApiVersions {
        /// From the header.
        correlation_id: i32,
    },
    /// Anything else: the connection is closed with this reason.
    Close(String),
}

/// Decodes a request frame (without its size prefix). Never panics, whatever the bytes.
pub fn decode_request(frame: Bytes) -> Result<Decoded, DecodeError> {
    let mut body = frame.clone();
    let close = |s: String| Err(DecodeError::Close(s));
    if body.len() < 8 {
        return close(format!(
            "request of {} bytes is shorter than a header",
            body.len()
        ));
    }
    let key = i16::from_be_bytes([body[0], body[1]]);
    let version = i16::from_be_bytes([body[2], body[3]]);
    let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return close(format!("unknown API key {key}"));
    };
    let Some((min, max)) = handlers::supported_versions(api) else {
        return close(format!("API {api:?} is not supported"));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            return Err(DecodeError::UnsupportedApiVersions { correlation_id });
        }
        return close(format!(
            "{api:?} v{version} is not supported (v{min}..v{max})"
        ));
    }
    let header = match RequestHeader::decode(&mut body, api.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return close(format!("bad {api:?} request header: {e}")),
    };
    let mut header = header;
    let mut request = match RequestKind::decode(api, &mut body, version) {
        Ok(r) => r,
        Err(e) => return close(format!("bad {api:?} v{version} request: {e}")),
    };
    drop(body);
    let produce_records = match &mut request {
        RequestKind::Produce(r) => handlers::produce::take_records(&mut header, r, frame),
        _ => Vec::new(),
    };
    Ok(Decoded {
        api,
        version,
        header,
        request,
        produce_records,
    })
}

/// Decodes one request frame, runs its handler and encodes the response frame.
async fn handle_frame(
    shard: Rc<Shard>,
    body: Bytes,
    peer: Option<SocketAddr>,
    dispatched: handlers::Dispatched,
) -> Outcome {
    let d = match decode_request(body) {
        Ok(d) => d,
        Err(DecodeError::UnsupportedApiVersions { correlation_id }) => {
            // Kafka answers an unsupported ApiVersions version with v0 and the ranges.
            let resp = handlers::api_versions::unsupported_version();
            return frame(correlation_id, 0, &ResponseKind::ApiVersions(resp), 0);
        }
        Err(DecodeError::Close(reason)) => {
            tracing::debug!(peer = ?peer, %reason, "undecodable request");
            return Outcome::Close(reason);
        }
    };
    match handlers::handle(&shard, &d.header, d.request, d.produce_records, dispatched).await {
        handlers::Reply::Response(resp) => frame(
            d.header.correlation_id,
            d.api.response_header_version(d.version),
            &resp,
            d.version,
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

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, ProduceRequest};
    use kafka_protocol::protocol::Encodable;
    use proptest::prelude::*;

    fn encode<R: Encodable>(api: ApiKey, version: i16, req: &R) -> Vec<u8> {
        let mut b = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7);
        header
            .encode(&mut b, api.request_header_version(version))
            .expect("header");
        req.encode(&mut b, version).expect("body");
        b.to_vec()
    }

    fn valid_frames() -> Vec<Vec<u8>> {
        vec![
            encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
            encode(ApiKey::Metadata, 12, &MetadataRequest::default()),
            encode(ApiKey::Metadata, 1, &MetadataRequest::default()),
            encode(ApiKey::Produce, 9, &ProduceRequest::default().with_acks(-1)),
        ]
    }

    #[test]
    fn valid_frames_decode() {
        for f in valid_frames() {
            let d = decode_request(Bytes::from(f)).expect("decodes");
            assert_eq!(d.header.correlation_id, 7);
        }
    }

    #[test]
    fn unsupported_api_versions_is_answered() {
        let mut f = encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert_eq!(
            decode_request(Bytes::from(f)).map(|_| ()),
            Err(DecodeError::UnsupportedApiVersions { correlation_id: 7 })
        );
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        /// Valid frames with bytes flipped, cut or extended never panic the decoder.
        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..4,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut f = valid_frames().swap_remove(which);
            for (i, x) in flips {
                let at = i.index(f.len());
                f[at] ^= x;
            }
            f.truncate(cut.index(f.len() + 1));
            f.extend(extra);
            let _ = decode_request(Bytes::from(f));
        }
    }
}

#[cfg(test)]
mod produce_records_tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn produce_frame(records: &[Option<Vec<u8>>], version: i16) -> Vec<u8> {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("a-topic")))
                .with_partition_data(
                    records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            PartitionProduceData::default()
                                .with_index(i as i32)
                                .with_records(r.clone().map(Bytes::from))
                        })
                        .collect(),
                )]);
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("a-client")))
            .encode(&mut b, ApiKey::Produce.request_header_version(version))
            .expect("header");
        req.encode(&mut b, version).expect("body");
        b.to_vec()
    }

    #[test]
    fn records_are_carved_out_of_the_frame_without_a_copy() {
        let records = vec![Some(vec![1u8; 300]), None, Some(vec![2u8; 5000])];
        for version in [3i16, 8, 9, 12] {
            let frame = Bytes::from(produce_frame(&records, version));
            let range = frame.as_ptr_range();
            let d = decode_request(frame).expect("decodes");
            assert_eq!(d.produce_records.len(), 3);
            for (got, want) in d.produce_records.iter().zip(&records) {
                assert_eq!(got.as_deref(), want.as_deref(), "version {version}");
                if let Some(g) = got {
                    assert!(range.contains(&g.as_ptr()), "copied, version {version}");
                }
            }
            let RequestKind::Produce(r) = &d.request else {
                panic!("not a produce request")
            };
            assert_eq!(&*r.topic_data[0].name.0, "a-topic");
            assert!(r.topic_data[0]
                .partition_data
                .iter()
                .all(|p| p.records.is_none()));
            assert_eq!(d.header.client_id.as_deref(), Some("a-client"));
        }
    }

    #[test]
    fn a_frame_still_shared_has_its_records_copied() {
        let records = vec![Some(vec![3u8; 700])];
        let frame = Bytes::from(produce_frame(&records, 9));
        let other_handle = frame.clone();
        let d = decode_request(frame).expect("decodes");
        let got = d.produce_records[0].as_ref().expect("records");
        assert_eq!(&got[..], &records[0].as_ref().unwrap()[..]);
        assert!(!other_handle.as_ptr_range().contains(&got.as_ptr()));
    }
}

#[cfg(test)]
mod read_body_tests {
    use super::*;
    use futures::io::AsyncWriteExt;
    use glommio::net::TcpListener;
    use glommio::{LocalExecutorBuilder, Placement};
    use std::time::Duration;

    /// Sends `chunks` with pauses between them (so the reader finds the socket empty and has
    /// to wait) and returns what `read_body` read for `size` bytes.
    fn read_over_loopback(chunks: Vec<Vec<u8>>, size: usize) -> std::io::Result<Vec<u8>> {
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                let sender = glommio::spawn_local(async move {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    for c in chunks {
                        s.write_all(&c).await.expect("write");
                        s.flush().await.expect("flush");
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                    s.close().await.expect("close");
                });
                let stream = listener.accept().await.expect("accept");
                let fd = stream.as_raw_fd();
                let (mut reader, _writer) = stream.split();
                let got = glommio::timer::timeout(Duration::from_secs(10), async {
                    Ok(read_body(&mut reader, fd, size).await)
                })
                .await
                .expect("read_body finished in time");
                sender.await;
                got.map(|b| b.to_vec())
            })
            .expect("spawn executor")
            .join()
            .expect("executor thread")
    }

    #[test]
    fn a_body_sent_in_pieces_is_read_whole_and_exactly() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let chunks = vec![
            data[..1].to_vec(),
            data[1..5000].to_vec(),
            data[5000..5001].to_vec(),
            data[5001..].to_vec(),
        ];
        // The body is the first 150,000 bytes; what follows is the next frame's and stays unread.
        let got = read_over_loopback(chunks, 150_000).expect("read");
        assert_eq!(got, data[..150_000]);
    }

    #[test]
    fn an_empty_body_reads_nothing() {
        assert_eq!(
            read_over_loopback(vec![vec![9u8; 10]], 0).expect("read"),
            b""
        );
    }

    #[test]
    fn a_peer_that_closes_inside_the_body_is_an_error() {
        let err = read_over_loopback(vec![vec![1u8; 1000], vec![2u8; 10]], 5000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
