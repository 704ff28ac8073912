//! ws-gateway with a real WebSocket client (tokio-tungstenite), a real nats-server with
//! JetStream and, for requests, a real analytics-query on a real redis-server.

mod analytics;
mod helpers;
mod lifecycle;
mod messages;
mod tls;
