//! analytics-query over real nats-server (JetStream), real redis-server, and real HTTP and gRPC
//! clients.

mod access;
mod cluster;
mod dashboard;
mod grpc;
mod helpers;
mod keen;
mod projection;
mod restart;
