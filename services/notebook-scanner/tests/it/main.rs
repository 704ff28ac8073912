//! notebook-scanner with real files, notebooks a real kernel executed, and a real nats-server.

mod helpers;
mod scan;
mod seed;
