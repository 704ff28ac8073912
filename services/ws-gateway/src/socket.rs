//! One connection. Messages are read in order and numbered (`seq`, from 1); a log message is
//! published at once and its ack awaited in the background, so publishes are pipelined, while
//! the replies (acks and error frames) leave in message order. Reading pauses while
//! `WS_MAX_UNACKED` messages wait for their ack or their analytics response (backpressure).
//! Analytics responses leave when they are ready. Closing (shutdown 1001, rate limit 1008, idle 1000) stops reading, sends the
//! replies still owed, then the close frame.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{
    FutureExt, SinkExt, StreamExt,
    future::BoxFuture,
    stream::{FuturesOrdered, FuturesUnordered},
};
use learntrail_proto::Message as _;
use learntrail_runtime::{
    auth::{self, Claims, Role},
    bus::PublishError,
};
use serde_json::json;

use crate::{
    protocol::{self, ErrorCode, Incoming, LogMessage, Refusal, RequestMessage},
    ratelimit::Bucket,
    routes::Gateway,
};

/// Close code of a refused or expired token (the 4xxx range is the application's).
pub const CLOSE_UNAUTHORIZED: u16 = 4401;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub rate: f64,
    pub burst: u32,
    pub max_unacked: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub auth_timeout: Duration,
}

/// One socket's state.
pub struct Session {
    gateway: Arc<Gateway>,
    /// The token's claims and the token itself (forwarded to analytics-query).
    credentials: Option<(Claims, String)>,
    seq: u64,
    bucket: Bucket,
    replies: FuturesOrdered<BoxFuture<'static, String>>,
    responses: FuturesUnordered<BoxFuture<'static, String>>,
    closing: Option<CloseFrame>,
}

impl Session {
    pub fn new(gateway: Arc<Gateway>, credentials: Option<(Claims, String)>) -> Self {
        let limits = &gateway.limits;
        let bucket = Bucket::new(limits.rate, limits.burst, Instant::now());
        Self {
            gateway,
            credentials,
            seq: 0,
            bucket,
            replies: FuturesOrdered::new(),
            responses: FuturesUnordered::new(),
            closing: None,
        }
    }

    /// Serves the socket until it closes.
    pub async fn run(mut self, mut socket: WebSocket) {
        let metrics = self.gateway.metrics.clone();
        metrics.connections.inc();
        if self.credentials.is_some() || self.authenticate(&mut socket).await {
            self.serve(&mut socket).await;
        }
        metrics.connections.dec();
    }

    /// `?auth=message`: the first message must be `{"type":"auth","token":...}` with a valid
    /// token, within `WS_AUTH_TIMEOUT`; otherwise the socket is closed with 4401.
    /// A shutdown while it waits closes it with 1001, as it does an authenticated socket.
    async fn authenticate(&mut self, socket: &mut WebSocket) -> bool {
        let shutdown = self.gateway.shutdown.clone();
        let first = tokio::select! {
            first = tokio::time::timeout(self.gateway.limits.auth_timeout, async {
                loop {
                    match socket.recv().await {
                        Some(Ok(Message::Text(text))) => return Some(text),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => return None,
                    }
                }
            }) => first,
            () = shutdown.cancelled() => {
                close(socket, close_code::AWAY, "server shutting down").await;
                return false;
            }
        };
        let text = match first {
            Ok(Some(text)) => text,
            Ok(None) => return false,
            Err(_) => {
                close(socket, CLOSE_UNAUTHORIZED, "no auth message in time").await;
                return false;
            }
        };
        self.seq = 1;
        let token = match protocol::parse(&text) {
            Ok(Incoming::Auth { token }) => token,
            _ => {
                close(
                    socket,
                    CLOSE_UNAUTHORIZED,
                    "authenticate first: {\"type\":\"auth\",\"token\":...}",
                )
                .await;
                return false;
            }
        };
        match self.gateway.verifier.verify(&token, auth::now()) {
            Ok(claims) => {
                let frame = json!({"type": "authenticated", "sub": claims.sub, "role": claims.role, "seq": 1});
                self.credentials = Some((claims, token));
                socket.send(Message::text(frame.to_string())).await.is_ok()
            }
            Err(err) => {
                self.gateway.metrics.refuse("unauthorized");
                close(socket, CLOSE_UNAUTHORIZED, &err.to_string()).await;
                false
            }
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) {
        let limits = self.gateway.limits.clone();
        let shutdown = self.gateway.shutdown.clone();
        // made once, not per turn of the loop (a fresh waiter per message showed in profiles)
        let mut shutdown = std::pin::pin!(shutdown.cancelled());
        let mut last_heard = Instant::now();
        let mut last_message = Instant::now();
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.ping_interval,
            limits.ping_interval,
        );
        loop {
            if self.closing.is_some() && self.replies.is_empty() {
                break;
            }
            // analytics responses owed count too: a slow analytics-query is backpressure as well
            let owed = self.replies.len() + self.responses.len();
            let reading = self.closing.is_none() && owed < limits.max_unacked;
            tokio::select! {
                biased;
                _ = &mut shutdown, if self.closing.is_none() => {
                    self.close_with(close_code::AWAY, "server shutting down");
                }
                Some(frame) = self.replies.next() => {
                    // every reply that is ready goes out in one write
                    let mut sent = socket.feed(Message::text(frame)).await;
                    while sent.is_ok() {
                        let Some(Some(frame)) = self.replies.next().now_or_never() else {
                            break;
                        };
                        sent = socket.feed(Message::text(frame)).await;
                    }
                    if sent.is_err() || socket.flush().await.is_err() {
                        return;
                    }
                }
                Some(frame) = self.responses.next() => {
                    if socket.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                received = socket.recv(), if reading => {
                    last_heard = Instant::now();
                    match received {
                        Some(Ok(Message::Text(text))) => {
                            last_message = last_heard;
                            self.on_frame(Frame::Text(text)).await;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            last_message = last_heard;
                            self.on_frame(Frame::Binary).await;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        // a frame over the hard limit: nothing more is read, the acks owed go
                        // out, then the close (the library only reports it)
                        Some(Err(err)) if too_big(&err) => {
                            self.gateway.metrics.refuse("too_big");
                            self.close_with(close_code::SIZE, "message too big");
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    }
                }
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > limits.ping_interval * 2 + limits.ping_interval / 2 {
                        tracing::debug!("peer silent through two pings: dropping the socket");
                        return;
                    }
                    if last_message.elapsed() >= limits.idle_timeout && self.closing.is_none() {
                        self.close_with(close_code::NORMAL, "idle timeout");
                    } else if socket.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(frame) = self.closing.take() {
            let _ = socket.send(Message::Close(Some(frame))).await;
            // give the peer a moment to answer the close, so it sees a clean close
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    fn close_with(&mut self, code: u16, reason: &str) {
        self.closing = Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(close_reason(reason)),
        });
    }

    async fn on_frame(&mut self, frame: Frame) {
        self.seq += 1;
        let seq = self.seq;
        self.gateway.metrics.received.inc();
        if !self.bucket.take(Instant::now()) {
            self.gateway.metrics.rate_limited.inc();
            let limits = &self.gateway.limits;
            let reason = format!(
                "rate limit: {} messages/s, burst {}",
                limits.rate, limits.burst
            );
            self.close_with(close_code::POLICY, &reason);
            return;
        }
        if self.token_expired() {
            self.close_with(CLOSE_UNAUTHORIZED, "token expired");
            return;
        }
        let text = match frame {
            Frame::Binary => {
                return self.refuse(
                    seq,
                    None,
                    Refusal::new(ErrorCode::BinaryFrame, "send JSON text frames"),
                );
            }
            Frame::Text(text) => text,
        };
        if text.len() > self.gateway.limits.max_frame_bytes {
            let message = format!(
                "message of {} bytes is over the limit of {} (WS_MAX_FRAME_BYTES)",
                text.len(),
                self.gateway.limits.max_frame_bytes
            );
            return self.refuse(seq, None, Refusal::new(ErrorCode::TooLarge, message));
        }
        let value: serde_json::Value = match serde_json::from_str(text.as_str()) {
            Ok(value) => value,
            Err(err) => {
                let refusal = Refusal::new(ErrorCode::InvalidJson, format!("not JSON: {err}"));
                return self.refuse(seq, None, refusal);
            }
        };
        let client_id = protocol::client_id_of(&value);
        let incoming = match protocol::parse_value(value) {
            Ok(incoming) => incoming,
            Err(refusal) => return self.refuse(seq, client_id.as_ref(), refusal),
        };
        if let Some(user) = incoming.user()
            && let Err(refusal) = self.may_act_for(user, incoming.course())
        {
            return self.refuse(seq, client_id.as_ref(), refusal);
        }
        match incoming {
            Incoming::Auth { .. } => self.refuse(
                seq,
                client_id.as_ref(),
                Refusal::new(
                    ErrorCode::AlreadyAuthenticated,
                    "this socket is already authenticated",
                ),
            ),
            Incoming::Log(log) => self.publish(seq, log).await,
            Incoming::Request(request) => self.request(seq, request),
        }
    }

    fn token_expired(&self) -> bool {
        let exp = self.credentials.as_ref().and_then(|(claims, _)| claims.exp);
        exp.is_some_and(|exp| auth::now() > exp + 30)
    }

    /// Whether the token may send a message for `user` that writes into `course`. An instructor
    /// limited to some courses (a `courses` claim) writes for others only within them: a log
    /// naming one of their courses would otherwise put a learner into it, and open that
    /// learner's analytics to them.
    fn may_act_for(&self, user: &str, course: Option<&str>) -> Result<(), Refusal> {
        let Some((claims, _)) = &self.credentials else {
            return Err(Refusal::new(ErrorCode::Forbidden, "not authenticated"));
        };
        if let Some(course) = course
            && !claims.may_name_course(course)
        {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                claims.course_refusal(course),
            ));
        }
        if claims.sub == user {
            return Ok(());
        }
        match claims.role {
            Role::Student => Err(Refusal::new(
                ErrorCode::Forbidden,
                "user must be the token's sub (only service and instructor tokens act for others)",
            )),
            Role::Instructor if course.is_some_and(|course| !claims.has_course(course)) => {
                Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "an instructor token limited to courses acts for others only in one of them (course)",
                ))
            }
            _ => Ok(()),
        }
    }

    fn refuse(&mut self, seq: u64, client_id: Option<&protocol::ClientId>, refusal: Refusal) {
        self.gateway.metrics.error(refusal.code.as_str());
        let frame = protocol::error_frame(&refusal, seq, client_id);
        self.replies.push_back(std::future::ready(frame).boxed());
    }

    /// Publishes at once; the ack (or the error frame) joins the ordered replies.
    async fn publish(&mut self, seq: u64, log: LogMessage) {
        let received_ms = chrono_now_ms();
        let client_id = log.client_id.clone();
        let event = protocol::to_event(log, received_ms);
        let payload = bytes::Bytes::from(event.encode_to_vec());
        let started = Instant::now();
        let sent = self
            .gateway
            .bus
            .send(event.subject(), &event.id, payload)
            .await;
        let gateway = self.gateway.clone();
        let reply = async move {
            let acked = match sent {
                Ok(pending) => pending.wait().await,
                Err(err) => Err(err),
            };
            match acked {
                Ok(ack) => {
                    let metrics = &gateway.metrics;
                    metrics.ack_seconds.observe(started.elapsed().as_secs_f64());
                    if ack.duplicate {
                        metrics.duplicates.inc();
                    } else {
                        metrics.acked.inc();
                    }
                    protocol::ack_frame(&event.id, seq, client_id.as_ref(), ack.duplicate)
                }
                Err(err) => {
                    let refusal = not_stored(&err);
                    gateway.metrics.error(refusal.code.as_str());
                    let mut frame: serde_json::Value = serde_json::from_str(
                        &protocol::error_frame(&refusal, seq, client_id.as_ref()),
                    )
                    .expect("our own JSON");
                    frame["event_id"] = json!(event.id);
                    frame.to_string()
                }
            }
        };
        self.replies.push_back(reply.boxed());
    }

    /// Asks analytics-query; the response leaves when it is ready.
    fn request(&mut self, seq: u64, request: RequestMessage) {
        let gateway = self.gateway.clone();
        let bearer = self
            .credentials
            .as_ref()
            .map(|(_, token)| token.clone())
            .unwrap_or_default();
        self.responses.push(
            async move {
                let client_id = request.client_id.clone();
                match gateway.analytics.answer(&request, &bearer).await {
                    Ok(mut frame) => {
                        gateway.metrics.responses.inc();
                        frame["seq"] = json!(seq);
                        if let Some(id) = client_id {
                            frame["id"] = json!(id);
                        }
                        frame.to_string()
                    }
                    Err(refusal) => {
                        gateway.metrics.error(refusal.code.as_str());
                        protocol::error_frame(&refusal, seq, client_id.as_ref())
                    }
                }
            }
            .boxed(),
        );
    }
}

enum Frame {
    Text(Utf8Bytes),
    Binary,
}

fn not_stored(err: &PublishError) -> Refusal {
    match err {
        PublishError::TooLarge(message) => Refusal::new(ErrorCode::TooLarge, message.clone()),
        PublishError::Timeout => Refusal::new(
            ErrorCode::Unavailable,
            format!("{err}: it may or may not be stored; resend it with the same id (stored once)"),
        ),
        _ => Refusal::new(
            ErrorCode::Unavailable,
            format!("{err}: not stored; resend it with the same id"),
        ),
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(close_reason(reason)),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// A close reason fits in 123 bytes (RFC 6455 §5.5); longer ones are cut at a character.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Whether a read failed on a frame or message over the socket's size limit.
fn too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    err.source()
        .and_then(|e| e.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}
