//! keen-forwarder with a real nats-server and test doubles of Keen, webhook receivers and an LRS speaking their wire protocols over real HTTP.
