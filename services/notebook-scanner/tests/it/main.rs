//! notebook-scanner with real files and a real nats-server.
