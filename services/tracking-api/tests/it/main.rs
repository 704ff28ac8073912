//! tracking-api over real HTTP and a real nats-server with JetStream.

mod helpers;
mod seed;
mod tracking;
