//! ws-gateway with a real WebSocket client (tokio-tungstenite), a real nats-server with
//! JetStream and, for requests, a real analytics-query on a real redis-server.

#[allow(dead_code)]
mod helpers;
mod messages;
