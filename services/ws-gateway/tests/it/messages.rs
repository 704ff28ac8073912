use learntrail_proto::{Payload, time};
use learntrail_runtime::auth::Role;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Frame, click, refused_status, spawn_gateway, token, token_of};

/// The example of PROTOCOLS.md §4.2, byte for byte.
const SPINNER_CLICK: &str = r#"{"user": "8f2d4e23-fd99-44f0-bdbc-82add7c0973c",
 "t": 1677228000123,
 "exp": "spinner",
 "hardware": "spin30",
 "course": "engdes1",
 "type": "log",
 "payload": {"log": "click", "data": {"target": "run-voltage-step", "screen_pos": {"x": 411, "y": 212}, "window": {"width": 1440, "height": 789}}}}"#;

#[tokio::test]
async fn a_log_is_acked_once_stored_as_sent_with_both_clocks() {
    let gateway = spawn_gateway(&[]).await;
    let user = "8f2d4e23-fd99-44f0-bdbc-82add7c0973c";
    let mut client = Client::connect(&gateway.ws, Some(&token(user, Role::Student)), None)
        .await
        .unwrap();
    let before = chrono_ms();
    client.send_text(SPINNER_CLICK).await;
    let ack = client.next_json().await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let event_id = ack["ack"].as_str().expect("an event id").to_string();
    // with the client's id: echoed
    let mut with_id: serde_json::Value = serde_json::from_str(SPINNER_CLICK).unwrap();
    with_id["id"] = json!("m-2");
    with_id["type"] = json!("analytics");
    with_id["payload"] = json!({"log": "voltage", "data": {"set": 1.5}});
    client.send_json(&with_id).await;
    let second = client.next_json().await;
    assert_eq!(
        (second["seq"].as_u64(), second["id"].as_str()),
        (Some(2), Some("m-2"))
    );

    let stored = gateway.stored().await;
    assert_eq!(stored.len(), 2, "acked events are in EVENTS");
    let event = &stored[0];
    assert_eq!(event.id, event_id);
    assert_eq!(event.subject(), "events.lab.log");
    assert_eq!(event.actor, user);
    assert_eq!(event.context.as_ref().unwrap().course, "engdes1");
    assert_eq!(
        time::rfc3339(event.occurred_at.as_ref().unwrap()),
        "2023-02-24T08:40:00.123Z",
        "the browser's clock"
    );
    let received = time::to_datetime(event.received_at.as_ref().unwrap()).unwrap();
    assert!(received.timestamp_millis() >= before, "the server's clock");
    let Some(Payload::LabLog(lab)) = &event.payload else {
        panic!("a LabLog: {event:?}")
    };
    assert_eq!(
        (
            lab.experiment.as_str(),
            lab.hardware.as_str(),
            lab.log_type.as_str(),
            lab.log_kind.as_str()
        ),
        ("spinner", "spin30", "log", "click")
    );
    assert_eq!(
        time::rfc3339(lab.client_time.as_ref().unwrap()),
        "2023-02-24T08:40:00.123Z"
    );
    let data = serde_json::to_value(lab.data.as_ref().unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"data": {"target": "run-voltage-step", "screen_pos": {"x": 411.0, "y": 212.0}, "window": {"width": 1440.0, "height": 789.0}}})
    );
    let Some(Payload::LabLog(voltage)) = &stored[1].payload else {
        panic!()
    };
    assert_eq!(
        (
            voltage.log_type.as_str(),
            voltage.log_kind.as_str(),
            voltage.client_id.as_str()
        ),
        ("analytics", "voltage", "m-2")
    );
    gateway.stop().await;
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn three_ways_to_send_the_token_and_refusals() {
    let gateway = spawn_gateway(&[]).await;
    let student = token("learner-1", Role::Student);
    // 1. Authorization header
    let mut header = gateway.student().await;
    header.send_json(&click("learner-1", "h-1", 1)).await;
    assert_eq!(header.next_json().await["seq"], 1);
    // 2. ?token=
    let mut query = Client::connect(&format!("{}?token={student}", gateway.ws), None, None)
        .await
        .unwrap();
    query.send_json(&click("learner-1", "q-1", 1)).await;
    assert_eq!(query.next_json().await["id"], "q-1");
    // 3. the first message, with ?auth=message
    let by_message = format!("{}?auth=message", gateway.ws);
    let mut message = Client::connect(&by_message, None, None).await.unwrap();
    message
        .send_json(&json!({"type": "auth", "token": student}))
        .await;
    let authenticated = message.next_json().await;
    assert_eq!(
        (
            authenticated["type"].as_str(),
            authenticated["sub"].as_str()
        ),
        (Some("authenticated"), Some("learner-1"))
    );
    message.send_json(&click("learner-1", "a-1", 1)).await;
    let ack = message.next_json().await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["id"].as_str()),
        (Some(2), Some("a-1"))
    );

    // a bad auth message: close 4401
    let mut bad = Client::connect(&by_message, None, None).await.unwrap();
    bad.send_json(&json!({"type": "auth", "token": "not.a.token"}))
        .await;
    assert_eq!(bad.closed().await.0, 4401);
    // anything else first: close 4401
    let mut early = Client::connect(&by_message, None, None).await.unwrap();
    early.send_json(&click("learner-1", "x", 1)).await;
    assert_eq!(early.closed().await.0, 4401);
    // no token: 401 at the upgrade; a bad or forged one too
    let err = Client::connect(&gateway.ws, None, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(&err), 401);
    let err = Client::connect(&gateway.ws, Some("not.a.token"), None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(&err), 401);
    let forged = learntrail_runtime::auth::sign(
        b"another-secret-of-enough-length-000000",
        &learntrail_runtime::auth::Claims {
            sub: "learner-1".into(),
            role: Role::Service,
            exp: Some(learntrail_runtime::auth::now() + 60),
            nbf: None,
            iat: None,
            courses: None,
        },
    );
    let err = Client::connect(&format!("{}?token={forged}", gateway.ws), None, None)
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(&err), 401);
    assert_eq!(gateway.stored().await.len(), 3);
    gateway.stop().await;
}

#[tokio::test]
async fn browser_origins_are_checked_and_scripts_without_one_are_not() {
    let gateway = spawn_gateway(&[]).await;
    let student = token("learner-1", Role::Student);
    let err = Client::connect(&gateway.ws, Some(&student), Some("https://evil.example"))
        .await
        .err()
        .unwrap();
    assert_eq!(refused_status(&err), 403);
    let mut listed = Client::connect(&gateway.ws, Some(&student), Some("https://lab.example"))
        .await
        .unwrap();
    listed.send_json(&click("learner-1", "o-1", 1)).await;
    assert_eq!(listed.next_json().await["seq"], 1);
    let mut script = Client::connect(&gateway.ws, Some(&student), None)
        .await
        .unwrap();
    script.send_json(&click("learner-1", "o-2", 1)).await;
    assert_eq!(script.next_json().await["seq"], 1);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_frame_and_the_socket_keeps_working() {
    let gateway = spawn_gateway(&["--max-frame-bytes", "4KiB"]).await;
    let mut client = gateway.student().await;
    let mut missing_exp = click("learner-1", "m", 1);
    missing_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_t = click("learner-1", "w", 1);
    wrong_t["t"] = json!("yesterday");
    let mut too_large = click("learner-1", "big", 1);
    too_large["payload"]["data"]["target"] = json!("x".repeat(5_000));
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("this is not json"), "invalid_json"),
        (Message::binary(vec![1u8, 2, 3]), "binary_frame"),
        (
            Message::text(json!({"type": "launch", "user": "learner-1"}).to_string()),
            "unknown_type",
        ),
        (Message::text(missing_exp.to_string()), "invalid_field"),
        (Message::text(wrong_t.to_string()), "invalid_field"),
        (Message::text(too_large.to_string()), "too_large"),
        (
            Message::text(click("learner-2", "other", 1).to_string()),
            "forbidden",
        ),
    ];
    use futures_util::SinkExt;
    for (seq, (message, code)) in cases.into_iter().enumerate() {
        client.ws.send(message).await.unwrap();
        let frame = client.next_json().await;
        assert_eq!(frame["error"]["code"], code, "{frame}");
        assert!(
            frame["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(frame["seq"], seq as u64 + 1, "{frame}");
    }
    // the same socket still works
    client.send_json(&click("learner-1", "good", 1)).await;
    let ack = client.next_json().await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["id"].as_str()),
        (Some(8), Some("good"))
    );
    let stored = gateway.stored().await;
    assert_eq!(stored.len(), 1, "only the good message is stored");
    assert_eq!(stored[0].actor, "learner-1");
    gateway.stop().await;
}

#[tokio::test]
async fn another_learners_user_needs_a_service_or_instructor_token() {
    let gateway = spawn_gateway(&[]).await;
    let mut student = gateway.student().await;
    student.send_json(&click("learner-2", "s-1", 1)).await;
    assert_eq!(student.next_json().await["error"]["code"], "forbidden");
    for role in [Role::Service, Role::Instructor] {
        let mut client = Client::connect(&gateway.ws, Some(&token("lab-server", role)), None)
            .await
            .unwrap();
        client
            .send_json(&click("learner-2", &format!("{role:?}"), 1))
            .await;
        assert!(client.next_json().await["ack"].is_string());
    }
    let actors: Vec<String> = gateway
        .stored()
        .await
        .into_iter()
        .map(|e| e.actor)
        .collect();
    assert_eq!(actors, ["learner-2", "learner-2"]);

    // an instructor limited to some courses writes for others only within them (a log naming
    // one of their courses would put the learner in their cohort)
    let limited = token_of("ta", Role::Instructor, Some(&["physics-2"]));
    let mut ta = Client::connect(&gateway.ws, Some(&limited), None)
        .await
        .unwrap();
    // click() names the course engdes1
    ta.send_json(&click("learner-3", "ta-1", 1)).await;
    let refused = ta.next_json().await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    let mut own_course = click("learner-3", "ta-2", 1);
    own_course["course"] = "physics-2".into();
    ta.send_json(&own_course).await;
    assert!(ta.next_json().await["ack"].is_string());
    // as themselves, any course
    ta.send_json(&click("ta", "ta-3", 1)).await;
    assert!(ta.next_json().await["ack"].is_string());
    // a student token naming its courses writes only into them (a log naming another course
    // would put the student into that cohort)
    let enrolled = token_of("learner-4", Role::Student, Some(&["physics-2"]));
    let mut learner = Client::connect(&gateway.ws, Some(&enrolled), None)
        .await
        .unwrap();
    learner.send_json(&click("learner-4", "l-1", 1)).await;
    let refused = learner.next_json().await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("engdes1"),
        "{refused}"
    );
    let stored: Vec<(String, String)> = gateway
        .stored()
        .await
        .into_iter()
        .skip(2)
        .map(|e| (e.actor, e.context.unwrap_or_default().course))
        .collect();
    assert_eq!(
        stored,
        [
            ("learner-3".to_string(), "physics-2".to_string()),
            ("ta".to_string(), "engdes1".to_string())
        ]
    );
    gateway.stop().await;
}

#[tokio::test]
async fn acks_come_in_message_order_and_a_resent_id_is_stored_once() {
    let gateway = spawn_gateway(&[]).await;
    let mut client = gateway.student().await;
    let n = 500;
    for i in 0..n {
        client
            .feed_json(&click("learner-1", &format!("m-{i}"), i))
            .await;
    }
    client.flush().await;
    let mut acked = Vec::new();
    for i in 0..n {
        let ack = client.next_json().await;
        assert_eq!(ack["seq"], i as u64 + 1, "{ack}");
        assert_eq!(ack["id"], format!("m-{i}"));
        acked.push(ack["ack"].as_str().unwrap().to_string());
    }
    // reconnect and resend the first ten: same event ids, stored once
    drop(client);
    let mut again = gateway.student().await;
    for i in 0..10 {
        again
            .send_json(&click("learner-1", &format!("m-{i}"), i))
            .await;
        let ack = again.next_json().await;
        assert_eq!(ack["ack"], acked[i as usize].as_str());
        assert_eq!(ack["duplicate"], true);
    }
    let stored = gateway.stored().await;
    assert_eq!(stored.len(), n as usize);
    let ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, acked.iter().map(String::as_str).collect::<Vec<_>>());
    gateway.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_limit_is_closed_with_1008() {
    let gateway = spawn_gateway(&["--rate-limit", "5", "--rate-burst", "20"]).await;
    let mut client = gateway.student().await;
    for i in 0..100 {
        client
            .feed_json(&click("learner-1", &format!("r-{i}"), i))
            .await;
    }
    client.flush().await;
    let mut acks = 0;
    let close = loop {
        match client.next_frame().await {
            Frame::Json(frame) => {
                assert!(frame["ack"].is_string(), "{frame}");
                acks += 1;
            }
            Frame::Close(close) => break close.expect("a close frame"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close.0, 1008);
    assert!(close.1.contains("rate limit"), "{}", close.1);
    assert!((20..=30).contains(&acks), "the burst is served: {acks}");
    assert_eq!(gateway.counter("ws_rate_limited").await, 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009_after_the_acks_owed() {
    use futures_util::SinkExt;
    // 4 KiB messages: the hard limit is then 1 MiB
    let gateway = spawn_gateway(&["--max-frame-bytes", "4KiB"]).await;
    let mut client = gateway.student().await;
    for i in 0..3 {
        client
            .feed_json(&click("learner-1", &format!("h-{i}"), i))
            .await;
    }
    client
        .ws
        .feed(Message::text("x".repeat((1 << 20) + 1)))
        .await
        .unwrap();
    client.flush().await;
    let mut acked = Vec::new();
    let close = loop {
        match client.next_frame().await {
            Frame::Json(frame) => acked.push(frame["id"].as_str().unwrap_or_default().to_string()),
            Frame::Close(close) => break close.expect("a close frame"),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(acked, ["h-0", "h-1", "h-2"], "every message read is acked");
    assert_eq!(close.0, 1009);
    assert!(close.1.contains("too big"), "{}", close.1);
    assert_eq!(gateway.stored().await.len(), 3);
    gateway.stop().await;
}
