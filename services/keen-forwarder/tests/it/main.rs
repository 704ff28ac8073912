//! keen-forwarder with a real nats-server, test doubles of Keen and webhook receivers speaking
//! their wire protocols over real HTTP, and a real LRS (Ralph).

mod fakes;
mod helpers;
mod keen;
mod kill;
mod lrs;
