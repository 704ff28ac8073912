use std::{
    process::{Command, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use learntrail_runtime::{
    auth::Role,
    bus::{Bus, NatsArgs},
};
use learntrail_testkit::{NatsServer, eventually};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Client, Frame, SECRET, click, listener_pid, metric, refused_status, signal, spawn_gateway,
    stored, token,
};

#[tokio::test]
async fn nats_stopped_mid_stream_no_ack_for_what_was_not_stored_then_the_same_socket_works() {
    let mut gateway = spawn_gateway(&[]).await;
    let mut client = gateway.student().await;
    client.send_json(&click("learner-1", "before", 1)).await;
    let first = client.next_json().await;
    assert!(first["ack"].is_string());

    gateway.nats.stop();
    gateway.wait_ready(false).await;
    for i in 0..3 {
        client
            .send_json(&click("learner-1", &format!("during-{i}"), 2))
            .await;
        let frame = client.next_json().await;
        assert_eq!(frame["error"]["code"], "unavailable", "{frame}");
        assert!(frame.get("ack").is_none(), "no ack for what was not stored");
        assert_eq!(frame["id"], format!("during-{i}"));
    }

    gateway.nats.restart();
    gateway.wait_ready(true).await;
    let mut acked = vec![first["ack"].as_str().unwrap().to_string()];
    for i in 0..3 {
        client
            .send_json(&click("learner-1", &format!("during-{i}"), 2))
            .await;
        let ack = client.next_json().await;
        assert_eq!(ack["seq"], 5 + i, "{ack}");
        acked.push(ack["ack"].as_str().unwrap().to_string());
    }
    let bus = Bus::connect(&NatsArgs::with_url(gateway.nats.url()), "check", true)
        .await
        .unwrap();
    let ids: Vec<String> = stored(&bus).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, acked, "exactly the acked messages are stored");
    gateway.stop().await;
}

#[tokio::test]
async fn reading_pauses_at_the_unacked_bound() {
    let gateway = spawn_gateway(&["--max-unacked", "5", "--nats-publish-timeout", "30s"]).await;
    let mut client = gateway.student().await;
    let nats = listener_pid(gateway.nats.port());
    signal(nats, "STOP");
    for i in 0..20 {
        client
            .feed_json(&click("learner-1", &format!("b-{i}"), i))
            .await;
    }
    client.flush().await;
    eventually(Duration::from_secs(10), "five messages read", || async {
        (gateway.counter("ws_messages_received").await >= 5).then_some(())
    })
    .await;
    assert_eq!(
        gateway.counter("ws_messages_acked").await,
        0,
        "nothing acked while NATS is stopped"
    );
    assert_eq!(
        gateway.counter("ws_messages_received").await,
        5,
        "no more read while five wait for their ack"
    );
    signal(nats, "CONT");
    for i in 0..20 {
        let ack = client.next_json().await;
        assert_eq!(ack["seq"], i + 1, "{ack}");
    }
    assert_eq!(gateway.counter("ws_messages_received").await, 20);
    gateway.stop().await;
}

#[tokio::test]
async fn keepalive_pings_and_an_idle_socket_is_closed() {
    let gateway = spawn_gateway(&["--ping-interval", "100ms", "--idle-timeout", "1s"]).await;
    let mut client = gateway.student().await;
    let mut pings = 0;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(frame))) => return frame.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert!(pings >= 3, "pinged every 100 ms: {pings}");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "idle timeout");
    gateway.stop().await;
}

#[tokio::test]
async fn sockets_over_the_cap_are_refused_until_one_closes() {
    let gateway = spawn_gateway(&["--max-connections", "2"]).await;
    let mut first = gateway.student().await;
    let _second = gateway.student().await;
    let student = token("learner-1", Role::Student);
    let err = Client::connect(&gateway.ws, Some(&student), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(&err), 503);
    first.ws.close(None).await.unwrap();
    let mut third = eventually(Duration::from_secs(10), "a free slot", || async {
        Client::connect(&gateway.ws, Some(&student), None)
            .await
            .ok()
    })
    .await;
    third.send_json(&click("learner-1", "t", 1)).await;
    assert!(third.next_json().await["ack"].is_string());
    gateway.stop().await;
}

/// The binary under SIGTERM with open sockets whose acks are owed (NATS paused, so every
/// message read waits for its ack): each socket gets all of its acks, in order, then 1001.
/// `WS_TEST_SOCKETS` sets how many (default 1000).
#[tokio::test]
async fn sigterm_sends_every_owed_ack_then_closes_with_1001() {
    let sockets: usize = std::env::var("WS_TEST_SOCKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let per_socket = 2;
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsArgs::with_url(nats.url()), "check", true)
        .await
        .unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, ops) = (free(), free());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env("HTTP_ADDR", http.to_string())
        .env("METRICS_ADDR", ops.to_string())
        .env("JWT_SECRET", SECRET)
        .env("NATS_URL", nats.url())
        .env("NATS_PUBLISH_TIMEOUT", "60s")
        .env("SHUTDOWN_GRACE", "60s")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ops = format!("http://{ops}");
    let http_client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "ws-gateway ready", || async {
        let answer = http_client.get(format!("{ops}/readyz")).send().await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
    let url = format!("ws://{http}/ws");
    let student = token("learner-1", Role::Student);
    let mut clients = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        clients.push(Client::connect(&url, Some(&student), None).await.unwrap());
    }
    let nats_pid = listener_pid(nats.port());
    signal(nats_pid, "STOP");
    for (c, client) in clients.iter_mut().enumerate() {
        for m in 0..per_socket {
            client
                .feed_json(&click("learner-1", &format!("{c}-{m}"), 1))
                .await;
        }
        client.flush().await;
    }
    let total = (sockets * per_socket) as u64;
    eventually(Duration::from_secs(60), "every message read", || async {
        (metric(&http_client, &ops, "learntrail_ws_messages_received_total").await == total)
            .then_some(())
    })
    .await;
    // and one still waiting to send its auth message: it is closed with 1001 too, at once
    let mut waiting = Client::connect(&format!("{url}?auth=message"), None, None)
        .await
        .unwrap();
    signal(child.id(), "TERM");
    let before_auth_timeout = tokio::time::timeout(Duration::from_secs(5), waiting.next_frame())
        .await
        .expect("the socket waiting for its auth message is closed before WS_AUTH_TIMEOUT (10s)");
    match before_auth_timeout {
        Frame::Close(close) => assert_eq!(close.map(|c| c.0), Some(1001)),
        other => panic!("{other:?}"),
    }
    // it stops accepting before the owed acks can come (NATS is still paused)
    eventually(Duration::from_secs(30), "new sockets refused", || async {
        Client::connect(&url, Some(&student), None)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    signal(nats_pid, "CONT");
    let readers = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| async move {
            let mut acks = Vec::new();
            loop {
                match client.next_frame().await {
                    Frame::Json(ack) => {
                        assert_eq!(ack["id"], format!("{c}-{}", acks.len()), "{ack}");
                        acks.push(ack["ack"].as_str().unwrap().to_string());
                    }
                    Frame::Close(close) => return (acks, close),
                    other => panic!("socket {c}: {other:?}"),
                }
            }
        });
    let results = futures_util::future::join_all(readers).await;
    let mut acked = 0;
    for (acks, close) in results {
        assert_eq!(acks.len(), per_socket, "every owed ack");
        assert_eq!(close.map(|c| c.0), Some(1001));
        acked += acks.len();
    }
    assert_eq!(acked as u64, total);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(stored(&bus).await.len() as u64, total);
}
