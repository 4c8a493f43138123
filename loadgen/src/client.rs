//! A minimal pipelined Kafka client connection on a glommio executor.
//!
//! Runs on the core that opened it and is never shared across cores (`Rc`). A writer task sends
//! frames in the order they were queued; a reader task matches responses to requests in order
//! (Kafka answers a connection's requests in the order they were sent) and checks each
//! correlation id. Queueing is synchronous, so a caller that queued request A before B knows A
//! goes first on the wire; the number of requests outstanding is visible to callers, who bound
//! it (`max_in_flight`): the connection itself never refuses a frame, so every caller checks
//! [`Connection::outstanding`] first.
//!
//! Versions: `ApiVersions` is negotiated on connect, and each request uses the highest version
//! both sides support, capped at what this client's code fills in (see the `*_VERSION_MAX`
//! constants).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::channel::{mpsc, oneshot};
use futures::future::{Either, LocalBoxFuture};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{FutureExt, StreamExt};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::LoadgenError;
use crate::frame::FrameBuf;
use crate::limits::Limits;

/// Produce v13 switches to topic ids; this client names topics.
pub const PRODUCE_VERSION_MAX: i16 = 12;
/// Fetch v13 switches to topic ids.
pub const FETCH_VERSION_MAX: i16 = 12;
/// Metadata versions this client reads.
pub const METADATA_VERSION_MAX: i16 = 12;
/// ListOffsets versions this client fills in.
pub const LIST_OFFSETS_VERSION_MAX: i16 = 7;
/// CreateTopics versions this client fills in.
pub const CREATE_TOPICS_VERSION_MAX: i16 = 7;

struct Outgoing {
    /// The frame's pieces, written one after another (see `frame`).
    frame: Vec<Bytes>,
    /// Fired once the frame is written (requests that get no response: acks=0 produce).
    written: Option<oneshot::Sender<()>>,
}

type Reply = Result<Bytes, String>;

#[derive(Default)]
struct Shared {
    /// Requests waiting for a response, in send order.
    pending: RefCell<VecDeque<(i32, oneshot::Sender<Reply>)>>,
    /// Set once the connection failed; every later request fails with it.
    closed: RefCell<Option<String>>,
    /// Requests queued or waiting for their response (or, without a response, to be written).
    outstanding: Cell<usize>,
}

impl Shared {
    fn fail(&self, reason: String) {
        if self.closed.borrow().is_none() {
            *self.closed.borrow_mut() = Some(reason.clone());
        }
        let pending: Vec<_> = self.pending.borrow_mut().drain(..).collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(reason.clone()));
        }
    }
}

/// One TCP connection to one broker.
pub struct Connection {
    /// The broker's address.
    pub addr: SocketAddr,
    client_id: StrBytes,
    correlation: Cell<i32>,
    out: mpsc::UnboundedSender<Outgoing>,
    shared: Rc<Shared>,
    /// API key -> (min, max) version the broker supports.
    versions: HashMap<i16, (i16, i16)>,
    request_timeout: Duration,
}

impl Connection {
    /// Connects, starts the reader and writer tasks, and negotiates versions.
    pub async fn connect(
        addr: SocketAddr,
        limits: &Limits,
        client_id: &str,
    ) -> Result<Rc<Connection>, LoadgenError> {
        let unreachable = |reason: String| LoadgenError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let stream =
            TcpStream::connect_timeout(addr, Duration::from_millis(limits.connect_timeout_ms))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut reader, mut writer) = stream.split();
        let shared = Rc::new(Shared::default());
        let (out, mut rx) = mpsc::unbounded::<Outgoing>();
        let s = shared.clone();
        glommio::spawn_local(async move {
            while let Some(o) = rx.next().await {
                if s.closed.borrow().is_some() {
                    break;
                }
                let mut failed = None;
                for piece in &o.frame {
                    if let Err(e) = writer.write_all(piece).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    s.fail(format!("write: {e}"));
                    break;
                }
                if let Some(w) = o.written {
                    s.outstanding.set(s.outstanding.get().saturating_sub(1));
                    let _ = w.send(());
                }
            }
            let _ = writer.close().await;
        })
        .detach();
        let s = shared.clone();
        let max = limits.response_bytes_max;
        glommio::spawn_local(async move {
            loop {
                let mut size = [0u8; 4];
                if let Err(e) = reader.read_exact(&mut size).await {
                    s.fail(format!("read: {e}"));
                    return;
                }
                let size = i32::from_be_bytes(size);
                if size < 4 || size as usize > max {
                    s.fail(format!("response size {size} out of range (max {max})"));
                    return;
                }
                let mut body = BytesMut::zeroed(size as usize);
                if let Err(e) = reader.read_exact(&mut body).await {
                    s.fail(format!("read: {e}"));
                    return;
                }
                let body = body.freeze();
                let got = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let next = s.pending.borrow_mut().pop_front();
                match next {
                    Some((want, tx)) if want == got => {
                        s.outstanding.set(s.outstanding.get().saturating_sub(1));
                        let _ = tx.send(Ok(body));
                    }
                    Some((want, tx)) => {
                        let reason = format!("response correlation id {got}, expected {want}");
                        let _ = tx.send(Err(reason.clone()));
                        s.fail(reason);
                        return;
                    }
                    None => {
                        s.fail(format!("unsolicited response (correlation id {got})"));
                        return;
                    }
                }
            }
        })
        .detach();
        let mut conn = Connection {
            addr,
            client_id: StrBytes::from_string(client_id.to_string()),
            correlation: Cell::new(1),
            out,
            shared,
            versions: HashMap::new(),
            request_timeout: Duration::from_millis(limits.request_timeout_ms),
        };
        conn.versions = conn.negotiate().await?;
        Ok(Rc::new(conn))
    }

    async fn negotiate(&self) -> Result<HashMap<i16, (i16, i16)>, LoadgenError> {
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("ringlog-loadgen"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 first; a broker that does not know it answers UNSUPPORTED_VERSION in v0 form.
        let mut resp = self.send(&req, 3)?.await;
        if !matches!(&resp, Ok(r) if r.error_code == 0) {
            resp = self.send(&req, 0)?.await;
        }
        let resp = resp?;
        if resp.error_code != 0 {
            return Err(self.protocol(format!("ApiVersions error {}", resp.error_code)));
        }
        Ok(resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }

    fn protocol(&self, reason: String) -> LoadgenError {
        LoadgenError::Protocol {
            addr: self.addr,
            reason,
        }
    }

    /// The version to use for `R`: the highest both sides support, at most `cap`.
    pub fn version<R: Request>(&self, cap: i16) -> Result<i16, LoadgenError> {
        let ours = R::VERSIONS;
        let (bmin, bmax) =
            self.versions.get(&R::KEY).copied().ok_or_else(|| {
                self.protocol(format!("broker does not support API key {}", R::KEY))
            })?;
        let v = bmax.min(ours.max).min(cap);
        if v < bmin.max(ours.min) {
            return Err(self.protocol(format!(
                "no common version for API key {} (broker {bmin}..={bmax}, client {}..={})",
                R::KEY,
                ours.min,
                ours.max.min(cap)
            )));
        }
        Ok(v)
    }

    /// Requests queued or waiting for a response.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.get()
    }

    /// Why the connection failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.closed.borrow().clone()
    }

    /// Encodes `req` with its size prefix; large slices that are one of `splice` are
    /// referenced, not copied (see [`crate::frame`]).
    fn frame<R: Request>(
        &self,
        req: &R,
        version: i16,
        splice: &[Bytes],
    ) -> Result<(i32, Vec<Bytes>), LoadgenError> {
        let correlation = self.correlation.get();
        self.correlation.set(correlation.wrapping_add(1));
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let hv = R::header_version(version);
        let size = header
            .compute_size(hv)
            .and_then(|h| req.compute_size(version).map(|b| h + b))
            .map_err(|e| self.protocol(format!("encoding request: {e}")))?;
        let spliced: usize = splice
            .iter()
            .filter(|b| b.len() >= crate::frame::SPLICE_MIN_BYTES)
            .map(|b| b.len())
            .sum();
        let mut buf = FrameBuf::new((4 + size).saturating_sub(spliced), splice);
        buf.put_i32(size as i32);
        header
            .encode(&mut buf, hv)
            .and_then(|_| req.encode(&mut buf, version))
            .map_err(|e| self.protocol(format!("encoding request: {e}")))?;
        Ok((correlation, buf.finish()))
    }

    fn check_open(&self) -> Result<(), LoadgenError> {
        match self.failure() {
            Some(reason) => Err(LoadgenError::Connection {
                addr: self.addr,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Hands a frame to the writer task, counting it outstanding until its response (or, with
    /// `written`, its write) arrives.
    fn enqueue(&self, frame: Vec<Bytes>, written: Option<oneshot::Sender<()>>) {
        self.shared
            .outstanding
            .set(self.shared.outstanding.get() + 1);
        if self
            .out
            .unbounded_send(Outgoing { frame, written })
            .is_err()
        {
            self.shared.fail("writer stopped".into());
        }
    }

    /// Queues a request and returns the future of its response (which fails after the request
    /// timeout, closing the connection: later responses would be out of step).
    pub fn send<R: Request>(
        &self,
        req: &R,
        version: i16,
    ) -> Result<LocalBoxFuture<'static, Result<R::Response, LoadgenError>>, LoadgenError> {
        self.send_spliced(req, version, &[])
    }

    /// [`Connection::send`], with the large slices of `req` that are one of `splice` (record
    /// batches) written from those buffers instead of being copied into the frame.
    pub fn send_spliced<R: Request>(
        &self,
        req: &R,
        version: i16,
        splice: &[Bytes],
    ) -> Result<LocalBoxFuture<'static, Result<R::Response, LoadgenError>>, LoadgenError> {
        self.check_open()?;
        let (correlation, frame) = self.frame(req, version, splice)?;
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .borrow_mut()
            .push_back((correlation, tx));
        self.enqueue(frame, None);
        let addr = self.addr;
        let shared = self.shared.clone();
        let timeout = self.request_timeout;
        Ok(async move {
            let conn_err = |reason: String| LoadgenError::Connection { addr, reason };
            let reply =
                match futures::future::select(rx, Box::pin(glommio::timer::sleep(timeout))).await {
                    Either::Left((Ok(r), _)) => r,
                    Either::Left((Err(_), _)) => Err("connection closed".to_string()),
                    Either::Right(_) => {
                        let reason = format!("no response within {} ms", timeout.as_millis());
                        shared.fail(reason.clone());
                        Err(reason)
                    }
                };
            let mut body = reply.map_err(conn_err)?;
            let proto = |reason: String| LoadgenError::Protocol { addr, reason };
            ResponseHeader::decode(&mut body, R::Response::header_version(version))
                .map_err(|e| proto(format!("decoding response header: {e}")))?;
            let resp = R::Response::decode(&mut body, version)
                .map_err(|e| proto(format!("decoding response: {e}")))?;
            if body.has_remaining() {
                return Err(proto(format!(
                    "{} bytes left after the response to API key {}",
                    body.remaining(),
                    R::KEY
                )));
            }
            Ok(resp)
        }
        .boxed_local())
    }

    /// Queues a request that gets no response (acks=0 produce); the future resolves once the
    /// frame is written to the socket.
    pub fn send_without_response<R: Request>(
        &self,
        req: &R,
        version: i16,
        splice: &[Bytes],
    ) -> Result<LocalBoxFuture<'static, Result<(), LoadgenError>>, LoadgenError> {
        self.check_open()?;
        let (_, frame) = self.frame(req, version, splice)?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(frame, Some(tx));
        let addr = self.addr;
        let shared = self.shared.clone();
        Ok(async move {
            rx.await.map_err(|_| LoadgenError::Connection {
                addr,
                reason: shared
                    .closed
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "connection closed".into()),
            })
        }
        .boxed_local())
    }

    /// Sends a request and waits for its response.
    pub async fn call<R: Request>(&self, req: &R, cap: i16) -> Result<R::Response, LoadgenError> {
        let v = self.version::<R>(cap)?;
        self.send(req, v)?.await
    }
}

/// Resolves `host:port` (the first address; loopback names resolve to 127.0.0.1).
pub fn resolve(addr: &str) -> Result<SocketAddr, LoadgenError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| LoadgenError::Unreachable {
            addr: addr.to_string(),
            reason: format!("resolving: {e}"),
        })?
        .next()
        .ok_or_else(|| LoadgenError::Unreachable {
            addr: addr.to_string(),
            reason: "no address".into(),
        })
}
