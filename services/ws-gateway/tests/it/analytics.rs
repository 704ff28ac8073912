use clap::Parser;
use learntrail_analytics_query::{Config as QueryConfig, Listeners as QueryListeners};
use learntrail_runtime::{CancellationToken, auth::Role};
use learntrail_testkit::{NatsServer, RedisServer};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpListener;

use crate::helpers::{Client, SECRET, click, spawn_gateway, spawn_with, token};

/// A real analytics-query (projection from the same NATS into a real Redis, gRPC on port 0).
async fn analytics_query(nats: &NatsServer, redis: &RedisServer) -> (String, CancellationToken) {
    let config = QueryConfig::parse_from([
        "analytics-query",
        "--jwt-secret",
        SECRET,
        "--nats-url",
        &nats.url(),
        "--redis-url",
        &redis.url(),
    ]);
    let listeners = QueryListeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ops: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let token = CancellationToken::new();
    tokio::spawn(learntrail_analytics_query::serve(
        config,
        listeners,
        token.clone(),
    ));
    (grpc, token)
}

async fn ask(client: &mut Client, request: &Value) -> Value {
    client.send_json(request).await;
    client.next_json().await
}

#[tokio::test]
async fn requests_are_answered_from_a_real_analytics_query() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (grpc, query) = analytics_query(&nats, &redis).await;
    let gateway = spawn_with(nats, &["--analytics-grpc-url", &grpc]).await;
    let mut client = gateway.student().await;
    for i in 0..3 {
        client
            .send_json(&click(
                "learner-1",
                &format!("c-{i}"),
                1_700_000_000_000 + i,
            ))
            .await;
        assert!(client.next_json().await["ack"].is_string());
    }
    let summary_request =
        json!({"type": "request", "user": "learner-1", "content": "summary", "id": "q-1"});
    // polled as `eventually` does, on the one socket
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let summary = loop {
        let frame = ask(&mut client, &summary_request).await;
        if frame["summary"]["lab"]["actions"] == "3" {
            break frame;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the three logs never reached the summary: {frame}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(summary["type"], "response");
    assert_eq!(summary["content"], "summary");
    assert_eq!(summary["id"], "q-1");
    assert!(summary["seq"].as_u64().unwrap() > 3);
    assert_eq!(summary["summary"]["learner"], "learner-1");
    assert_eq!(
        summary["summary"]["lab"]["experiments"]["spinner"]["kinds"]["click"],
        "3"
    );
    // the seed's comparison graph: the learner's position in the course
    let comparison = ask(
        &mut client,
        &json!({"type": "request", "user": "learner-1", "content": "comparison", "course": "engdes1", "metric": "lab_actions"}),
    )
    .await;
    assert_eq!(comparison["content"], "comparison", "{comparison}");
    assert_eq!(comparison["comparison"]["value"], 3.0);
    assert_eq!(comparison["comparison"]["cohortSize"], 1);
    // a student asks only for themselves
    let other = ask(
        &mut client,
        &json!({"type": "request", "user": "learner-2", "content": "summary"}),
    )
    .await;
    assert_eq!(other["error"]["code"], "forbidden");
    let unknown = ask(
        &mut client,
        &json!({"type": "request", "user": "learner-1", "content": "centroids"}),
    )
    .await;
    assert_eq!(unknown["error"]["code"], "invalid_field");
    // an instructor asks for a learner: analytics-query applies its own rules
    let mut instructor =
        Client::connect(&gateway.ws, Some(&token("teacher", Role::Instructor)), None)
            .await
            .unwrap();
    let theirs = ask(
        &mut instructor,
        &json!({"type": "request", "user": "learner-1", "content": "summary"}),
    )
    .await;
    assert_eq!(theirs["summary"]["lab"]["actions"], "3", "{theirs}");
    query.cancel();
    gateway.stop().await;
}

#[tokio::test]
async fn analytics_query_down_gives_an_error_frame_and_the_gateway_stays_ready() {
    // nothing listens on the configured analytics URL
    let gateway = spawn_gateway(&["--analytics-timeout", "1s"]).await;
    let mut client = gateway.student().await;
    let frame = ask(
        &mut client,
        &json!({"type": "request", "user": "learner-1", "content": "summary"}),
    )
    .await;
    assert_eq!(frame["error"]["code"], "analytics_unavailable", "{frame}");
    assert_eq!(frame["seq"], 1);
    // the socket still stores logs, and readiness depends on NATS only
    client.send_json(&click("learner-1", "after", 1)).await;
    assert_eq!(client.next_json().await["seq"], 2);
    assert_eq!(gateway.readyz().await, 200);
    gateway.stop().await;
}

/// Requests waiting for analytics-query count toward `WS_MAX_UNACKED` as logs waiting for
/// their ack do: a slow analytics-query pauses reading instead of piling up requests.
#[tokio::test]
async fn reading_pauses_while_requests_wait_for_a_slow_analytics_query() {
    // accepts connections (the kernel's backlog) and never answers
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let gateway = spawn_gateway(&[
        "--analytics-grpc-url",
        &url,
        "--analytics-timeout",
        "3s",
        "--max-unacked",
        "3",
    ])
    .await;
    let mut client = gateway.student().await;
    for i in 0..8 {
        client
            .feed_json(&json!({"type": "request", "user": "learner-1", "content": "summary", "id": format!("q-{i}")}))
            .await;
    }
    client.flush().await;
    learntrail_testkit::eventually(Duration::from_secs(10), "three requests read", || async {
        (gateway.counter("ws_messages_received").await >= 3).then_some(())
    })
    .await;
    assert_eq!(
        gateway.counter("ws_messages_received").await,
        3,
        "no more read while three wait for analytics-query"
    );
    // each times out into an error frame, and the rest are read as room is made
    let mut seqs = Vec::new();
    for _ in 0..8 {
        let frame = client.next_json().await;
        assert_eq!(frame["error"]["code"], "analytics_unavailable", "{frame}");
        seqs.push(frame["seq"].as_u64().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    assert_eq!(gateway.counter("ws_messages_received").await, 8);
    drop(silent);
    gateway.stop().await;
}
