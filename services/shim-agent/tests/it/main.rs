//! shim-agent with a real `ruby` and a real nats-server.

mod helpers;
mod install;
mod shim;
mod terminal;
mod upload;
