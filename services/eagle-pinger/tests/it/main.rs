//! eagle-pinger over real HTTP, with a real nats-server (JetStream), a real redis-server and
//! the fake Eagle speaking the Rainforest protocols over real HTTP.

mod api;
mod helpers;
mod poller;
mod tls;
