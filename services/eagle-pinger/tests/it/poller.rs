//! The poller against the fake Eagle: every protocol variant becomes events, registry changes
//! apply without a restart, bad meters back off while good ones keep their cadence.

use std::time::{Duration, Instant};

use learntrail_eagle_pinger::schedule::{self, Shard};
use learntrail_fake_eagle::{Api, MeterSpec, Mode};
use learntrail_proto::{Payload, subject};
use learntrail_runtime::auth::Role;
use learntrail_testkit::{eventually, stream_events};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{Rig, captured, metric, start_fake};

/// Intervals between successive requests, in ms.
fn gaps(times: &[Instant]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect()
}

#[tokio::test]
async fn every_protocol_variant_becomes_events_with_counters() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let variants = [
        ("00d001", Api::Cloud, false, false),
        ("00d002", Api::Cloud, true, false), // old firmware: XML though JSON was asked
        ("00d003", Api::Local200, false, false),
        ("00d004", Api::Local100, false, false),
        ("00d005", Api::Cloud, false, true), // solar export
        ("00d006", Api::Local200, false, true),
    ];
    for (id, api, xml_only, export) in variants {
        let body = rig.meter(id, api);
        rig.fake.add(
            id,
            MeterSpec {
                xml_only,
                export,
                ..MeterSpec::demo(id, api)
            },
        );
        assert_eq!(app.register(id, &body).await.0, 201);
    }
    let events = eventually(
        Duration::from_secs(20),
        "readings of every meter",
        || async {
            let events = rig.readings().await;
            variants
                .iter()
                .all(|(id, ..)| {
                    events.iter().any(|e| {
                    matches!(&e.payload, Some(Payload::EnergyReading(r)) if r.cloud_id == *id)
                })
                })
                .then_some(events)
        },
    )
    .await;
    for (id, api, _, export) in variants {
        let event = events
            .iter()
            .find(|e| matches!(&e.payload, Some(Payload::EnergyReading(r)) if r.cloud_id == id))
            .unwrap();
        assert_eq!(
            (event.source.as_str(), event.kind.as_str()),
            ("energy", "reading")
        );
        assert_eq!(event.subject(), "events.energy.reading");
        assert_eq!(event.actor, format!("household-{id}"));
        assert_eq!(event.context.as_ref().unwrap().course, "energy-101");
        let Some(Payload::EnergyReading(reading)) = &event.payload else {
            unreachable!()
        };
        assert_eq!(reading.api, serde_json::to_value(api).unwrap());
        assert_eq!(reading.demand_kw < 0.0, export, "{id}: {reading:?}");
        assert!(
            (0.3..4.0).contains(&reading.demand_kw.abs()),
            "{id}: {reading:?}"
        );
        assert!(
            reading.summation_delivered_kwh > 1000.0,
            "{id}: {reading:?}"
        );
        assert_eq!(reading.summation_received_kwh > 0.0, export, "{id}");
        assert!(
            reading.meter_mac.starts_with("0x000781"),
            "{id}: {reading:?}"
        );
        // the meter's clock, from the 2000 epoch (Eagle-100) or Unix hex (Eagle-200)
        let meter_secs = reading.meter_timestamp.as_ref().unwrap().seconds;
        assert!((meter_secs - chrono::Utc::now().timestamp()).abs() < 60);
    }
    // counters in Redis
    let user = eventually(Duration::from_secs(10), "counters", || async {
        let user = app.user("00d003").await;
        (user["total_events_logged"].as_u64() >= Some(2)).then_some(user)
    })
    .await;
    assert!(user["first_timestamp"].as_str().unwrap() <= user["last_timestamp"].as_str().unwrap());
    assert_eq!(user["poll"]["state"], "ok");

    // GET /api/event polls now
    let before = rig.fake.requests("00d001");
    let (status, reading) = app
        .call(
            Method::GET,
            "/api/event/00d001",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 200, "{reading}");
    assert!(rig.fake.requests("00d001") >= before + 2);
    assert!(reading["demand_kw"].as_f64().unwrap() > 0.0);
    assert!(reading["summation_delivered_kwh"].as_f64().unwrap() > 1000.0);
    let event_id = reading["event_id"].as_str().unwrap().to_string();
    let stored = rig.readings().await;
    assert!(stored.iter().any(|e| e.id == event_id));
    app.stop().await;
}

#[tokio::test]
async fn a_demand_is_published_when_the_summation_fails() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let id = "00d0a1";
    let body = rig.meter(id, Api::Cloud);
    rig.fake.add(
        id,
        MeterSpec {
            mode: Mode::NoSummation,
            ..MeterSpec::demo(id, Api::Cloud)
        },
    );
    assert_eq!(app.register(id, &body).await.0, 201);
    let reading = eventually(
        Duration::from_secs(20),
        "a reading without the totals",
        || async {
            rig.readings()
                .await
                .into_iter()
                .find_map(|e| match e.payload {
                    Some(Payload::EnergyReading(r)) if r.cloud_id == id => Some(r),
                    _ => None,
                })
        },
    )
    .await;
    assert!(reading.demand_kw.abs() > 0.3, "{reading:?}");
    assert_eq!(reading.summation_delivered_kwh, 0.0, "not given");
    assert_eq!(app.user(id).await["poll"]["state"], "ok");
    app.stop().await;
}

/// An Eagle-200 whose device list holds no electric meter is a failure of its own: `no_meter`,
/// counted in a row and backed off like the others, and 502 `eagle_no_meter` on demand.
#[tokio::test]
async fn an_eagle_200_without_an_electric_meter_fails_as_no_meter() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let id = "00d0c1";
    let body = rig.meter(id, Api::Local200);
    rig.fake.set_mode(id, Mode::NoMeter);
    assert_eq!(app.register(id, &body).await.0, 201);
    let user = app.wait_state(id, "no_meter").await;
    assert!(user["poll"]["failures"].as_u64() >= Some(1), "{user}");
    assert!(
        user["poll"]["last_error"]
            .as_str()
            .unwrap()
            .contains("no electric_meter in the device list"),
        "{user}"
    );
    eventually(
        Duration::from_secs(10),
        "failures counted in a row",
        || async { (app.user(id).await["poll"]["failures"].as_u64() >= Some(2)).then_some(()) },
    )
    .await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "learntrail_eagle_meters{state=\"no_meter\"}"),
        1.0,
        "{metrics}"
    );
    let (status, answer) = app
        .call(
            Method::GET,
            &format!("/api/event/{id}"),
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (502, Some("eagle_no_meter")),
        "{answer}"
    );
    app.stop().await;
}

/// An Eagle-200's meter address outlives a dropped connection, and the devices are listed again
/// only once that address answers for something that is not the meter.
#[tokio::test]
async fn an_eagle_200_lists_its_devices_again_only_when_the_meter_is_gone() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let id = "00d0c2";
    assert_eq!(app.register(id, &rig.meter(id, Api::Local200)).await.0, 201);
    app.wait_state(id, "ok").await;
    assert_eq!(rig.fake.commands(id, "device_list"), 1);
    // the Eagle drops its connections for a while, then answers again: the same address
    rig.fake.set_mode(id, Mode::Down);
    app.wait_state(id, "unreachable").await;
    let queried = rig.fake.commands(id, "device_query");
    eventually(Duration::from_secs(10), "more polls while down", || async {
        (rig.fake.commands(id, "device_query") >= queried + 2).then_some(())
    })
    .await;
    rig.fake.set_mode(id, Mode::Ok);
    app.wait_state(id, "ok").await;
    assert_eq!(
        rig.fake.commands(id, "device_list"),
        1,
        "the address outlived the outage"
    );
    // the address now answers for a thermostat: no meter, and the devices are listed again
    rig.fake.set_mode(id, Mode::NoMeter);
    app.wait_state(id, "no_meter").await;
    eventually(
        Duration::from_secs(10),
        "the devices listed again",
        || async { (rig.fake.commands(id, "device_list") >= 2).then_some(()) },
    )
    .await;
    app.stop().await;
}

/// Captured log lines at `level` (` WARN `, ` DEBUG `, ` INFO `) saying `message` about
/// `cloud_id`.
fn logged(level: &str, message: &str, cloud_id: &str) -> usize {
    let field = format!("cloud_id={cloud_id}");
    captured()
        .lines()
        .filter(|l| l.contains(level) && l.contains(message) && l.contains(&field))
        .count()
}

/// A bus outage is one warning (the rest of its lost readings are debug), and its end is logged.
#[tokio::test]
async fn a_bus_outage_warns_once_and_its_end_is_logged() {
    let mut rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let id = "00d0b1";
    assert_eq!(app.register(id, &rig.meter(id, Api::Cloud)).await.0, 201);
    eventually(Duration::from_secs(20), "a reading stored", || async {
        (app.user(id).await["total_events_logged"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let lost = "reading not stored on the bus";
    rig.nats.stop();
    eventually(
        Duration::from_secs(20),
        "readings lost while NATS is down",
        || async { (logged(" DEBUG ", lost, id) >= 2).then_some(()) },
    )
    .await;
    assert_eq!(logged(" WARN ", lost, id), 1, "one warning for the outage");
    rig.nats.restart();
    eventually(Duration::from_secs(30), "readings stored again", || async {
        (logged(" INFO ", "readings are stored on the bus again", id) >= 1).then_some(())
    })
    .await;
    assert_eq!(logged(" WARN ", lost, id), 1);
    app.stop().await;
}

#[tokio::test]
async fn registry_changes_take_effect_without_a_restart() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let body = rig.meter("00e001", Api::Local200);
    app.register("00e001", &body).await;
    eventually(Duration::from_secs(5), "a new meter polled", || async {
        (rig.fake.requests("00e001") > 0).then_some(())
    })
    .await;
    // an update: new course on the next events
    app.register("00e001", &json!({"course": "energy-202"}))
        .await;
    eventually(
        Duration::from_secs(5),
        "events with the new course",
        || async {
            rig.readings()
                .await
                .iter()
                .any(|e| e.context.as_ref().unwrap().course == "energy-202")
                .then_some(())
        },
    )
    .await;
    // a delete: no more polls (within one interval)
    app.call(
        Method::DELETE,
        "/api/user/00e001",
        Some(Role::Service),
        None,
    )
    .await;
    let settled = eventually(Duration::from_secs(5), "polls stop", || async {
        let before = rig.fake.requests("00e001");
        tokio::time::sleep(Duration::from_millis(600)).await;
        (rig.fake.requests("00e001") == before).then_some(before)
    })
    .await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "learntrail_eagle_meters{state=\"ok\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(rig.fake.requests("00e001"), settled);
    app.stop().await;
}

#[tokio::test]
async fn a_meter_deleted_and_registered_again_is_polled_as_registered_again() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    app.register("00e002", &rig.meter("00e002", Api::Local200))
        .await;
    eventually(Duration::from_secs(5), "the meter polled", || async {
        (rig.fake.requests("00e002") > 0).then_some(())
    })
    .await;
    // deleted and registered again at once, for another course (between two checks of the
    // registry's version, as a script does it)
    app.call(
        Method::DELETE,
        "/api/user/00e002",
        Some(Role::Service),
        None,
    )
    .await;
    let mut again = rig.meter("00e002", Api::Local200);
    again["course"] = json!("energy-303");
    let (status, created) = app.register("00e002", &again).await;
    assert_eq!(status, 201, "{created}");
    eventually(
        Duration::from_secs(5),
        "readings for the new registration",
        || async {
            rig.readings()
                .await
                .iter()
                .any(|e| e.context.as_ref().unwrap().course == "energy-303")
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn bad_meters_back_off_while_good_ones_keep_their_cadence() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let good = ["00f001", "00f002", "00f003", "00f004"];
    let (bad_auth, down, garbage, hung) = ("00f0a1", "00f0a2", "00f0a3", "00f0a4");
    let bodies: Vec<_> = good
        .iter()
        .chain(&[bad_auth, down, garbage, hung])
        .map(|&id| (id, rig.meter(id, Api::Local200)))
        .collect();
    // the meters misbehave from their first poll (set after registering, a busy machine could
    // poll a meter first and count requests the back-off did not make)
    rig.fake.set_mode(bad_auth, Mode::BadCredentials);
    rig.fake.set_mode(down, Mode::Down);
    rig.fake.set_mode(garbage, Mode::Malformed);
    rig.fake.set_mode(hung, Mode::Slow);
    for (id, body) in &bodies {
        assert_eq!(app.register(id, body).await.0, 201);
    }

    app.wait_state(bad_auth, "auth_failed").await;
    let down_state = app.wait_state(down, "unreachable").await;
    assert!(
        down_state["poll"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    app.wait_state(garbage, "malformed").await;
    let hung_state = app.wait_state(hung, "unreachable").await;
    assert!(
        hung_state["poll"]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );

    // run a while with all of them misbehaving
    eventually(
        Duration::from_secs(20),
        "good meters polled 25 times",
        || async {
            good.iter()
                .all(|id| rig.fake.requests(id) >= 25)
                .then_some(())
        },
    )
    .await;
    // good meters: one request per 200 ms slot (after the first device_list)
    for id in good {
        let times = rig.fake.request_times(id);
        let gaps = gaps(&times[2..]);
        let worst = gaps.iter().fold(0.0f64, |m, g| m.max((g - 200.0).abs()));
        // a missed or doubled slot would be off by 200 ms; leave room for a busy test machine
        assert!(worst < 100.0, "{id} gaps {gaps:?}");
    }
    // bad ones back off: credentials once for the hour, the others far below the cadence
    let good_polls = rig.fake.requests(good[0]);
    assert_eq!(rig.fake.requests(bad_auth), 1);
    for id in [down, garbage, hung] {
        assert!(
            rig.fake.requests(id) * 2 < good_polls,
            "{id}: {} vs {good_polls}",
            rig.fake.requests(id)
        );
    }
    // drift measured by the poller itself
    let metrics = app.metrics().await;
    let polls = metric(&metrics, "learntrail_eagle_schedule_drift_seconds_count");
    let within_100ms = metric(
        &metrics,
        "learntrail_eagle_schedule_drift_seconds_bucket{le=\"0.1\"}",
    );
    assert!(
        within_100ms / polls > 0.99,
        "{within_100ms} of {polls} within 100 ms"
    );
    assert_eq!(
        metric(&metrics, "learntrail_eagle_meters{state=\"auth_failed\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "learntrail_eagle_meters{state=\"ok\"}"),
        4.0
    );

    // the garbage is dead-lettered, raw, with the reason
    let letters = stream_events_raw(&rig).await;
    let (reason, body) = letters
        .iter()
        .find(|(reason, _)| reason.contains(garbage))
        .expect("a dead letter for the garbled meter");
    assert!(
        reason.contains("malformed") || reason.contains("hex"),
        "{reason}"
    );
    assert!(String::from_utf8_lossy(body).contains("garbage"));

    // the one that was down comes back and resumes
    rig.fake.set_mode(down, Mode::Ok);
    app.wait_state(down, "ok").await;
    let resumed = rig.fake.requests(down);
    eventually(
        Duration::from_secs(5),
        "the recovered meter on its cadence",
        || async { (rig.fake.requests(down) >= resumed + 5).then_some(()) },
    )
    .await;
    // the refused one is retried at once when its record is updated
    rig.fake.set_mode(bad_auth, Mode::Ok);
    app.register(
        bad_auth,
        &json!({"user_pw": learntrail_fake_eagle::demo_password(bad_auth)}),
    )
    .await;
    app.wait_state(bad_auth, "ok").await;
    app.stop().await;
}

/// (reason, payload) of every dead letter on deadletter.energy.
async fn stream_events_raw(rig: &Rig) -> Vec<(String, Vec<u8>)> {
    let js = rig.bus.jetstream();
    let mut stream = js.get_stream(subject::DEADLETTER_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            if message.subject.as_str() != "deadletter.energy" {
                continue;
            }
            let reason = message
                .headers
                .get(subject::DEADLETTER_REASON_HEADER)
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((reason, message.payload.to_vec()));
        }
    }
    out
}

#[tokio::test]
async fn six_second_cadence_at_the_real_interval() {
    let rig = Rig::start().await;
    let app = rig
        .spawn(&["--poll-interval", "6s", "--poll-timeout", "2s"])
        .await;
    let ids = ["00f101", "00f102", "00f103"];
    for id in ids {
        app.register(id, &rig.meter(id, Api::Local200)).await;
    }
    let started = Instant::now();
    eventually(Duration::from_secs(30), "three polls each", || async {
        ids.iter()
            .all(|id| rig.fake.requests(id) >= 4)
            .then_some(())
    })
    .await;
    for id in ids {
        let times = rig.fake.request_times(id);
        // device_list then device_query at the first slot; then one query every 6 s
        let gaps = gaps(&times[1..]);
        assert!(
            gaps.iter().all(|g| (g - 6000.0).abs() < 100.0),
            "{id}: {gaps:?}"
        );
        // its slot: the stable offset inside the interval
        let offset = schedule::offset(id, Duration::from_secs(6));
        assert!(offset < Duration::from_secs(6));
    }
    assert!(started.elapsed() >= Duration::from_secs(12));
    assert_eq!(Shard::ALL.count, 1);
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_poll_disjoint_sets_that_cover_every_meter() {
    let rig = Rig::start().await;
    // each replica talks to its own copy of the meters, so the fakes tell who polled what
    let (other, other_addr) = start_fake().await;
    let ids: Vec<String> = (0..40).map(|i| format!("0a{i:04x}")).collect();
    for id in &ids {
        rig.fake.add(id, MeterSpec::demo(id, Api::Cloud));
        other.add(id, MeterSpec::demo(id, Api::Cloud));
    }
    let zero = rig
        .spawn(&["--shard-index", "0", "--shard-count", "2"])
        .await;
    let other_url = format!("http://{other_addr}/cgi-bin/post_manager");
    let one = rig
        .spawn(&[
            "--shard-index",
            "1",
            "--shard-count",
            "2",
            "--eagle-cloud-url",
            &other_url,
        ])
        .await;
    for id in &ids {
        let body = crate::helpers::registration(id, Api::Cloud, &rig.fake_addr);
        assert_eq!(zero.register(id, &body).await.0, 201);
    }
    eventually(Duration::from_secs(20), "every meter polled", || async {
        ids.iter()
            .all(|id| rig.fake.requests(id) + other.requests(id) >= 4)
            .then_some(())
    })
    .await;
    let polled_by_zero: Vec<&String> = ids.iter().filter(|id| rig.fake.requests(id) > 0).collect();
    let polled_by_one: Vec<&String> = ids.iter().filter(|id| other.requests(id) > 0).collect();
    assert!(!polled_by_zero.is_empty() && !polled_by_one.is_empty());
    assert!(
        polled_by_zero.iter().all(|id| other.requests(id) == 0),
        "disjoint"
    );
    assert_eq!(
        polled_by_zero.len() + polled_by_one.len(),
        ids.len(),
        "cover"
    );
    for id in &polled_by_zero {
        assert_eq!(schedule::shard_of(id, 2), 0);
    }
    zero.stop().await;
    one.stop().await;
}

#[tokio::test]
async fn stream_readings_are_valid_events() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    app.register("00f201", &rig.meter("00f201", Api::Cloud))
        .await;
    let events = eventually(Duration::from_secs(10), "a reading", || async {
        let events = stream_events(
            rig.bus.jetstream(),
            subject::EVENTS_STREAM,
            subject::EVENTS_SUBJECTS,
        )
        .await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    for (_, event) in events {
        assert_eq!(learntrail_proto::validate::validate_event(&event), Ok(()));
    }
    app.stop().await;
}

#[tokio::test]
async fn the_manuals_worked_examples_over_the_wire() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    // (cloud id, api, XML only, JSON without outer braces, export, demand kW, meter time)
    let eagle_100 = "2012-12-12T06:09:33Z";
    let eagle_200 = "2017-08-25T23:45:00Z";
    let meters = [
        ("00ab01", Api::Cloud, false, false, false, 5.944, eagle_100),
        ("00ab02", Api::Cloud, true, false, false, 5.944, eagle_100),
        (
            "00ab03",
            Api::Local100,
            false,
            true,
            false,
            5.944,
            eagle_100,
        ),
        ("00ab04", Api::Cloud, false, false, true, -5.944, eagle_100),
        (
            "00ab05",
            Api::Local200,
            false,
            false,
            false,
            21.499,
            eagle_200,
        ),
    ];
    for (id, api, xml_only, bare_json, export, ..) in meters {
        let body = rig.meter(id, api);
        rig.fake.add(
            id,
            MeterSpec {
                xml_only,
                bare_json,
                export,
                manual: true,
                ..MeterSpec::demo(id, api)
            },
        );
        assert_eq!(app.register(id, &body).await.0, 201);
    }
    for (id, _, _, _, _, demand, time) in meters {
        let (status, reading) = app
            .call(
                Method::GET,
                &format!("/api/event/{id}"),
                Some(Role::Instructor),
                None,
            )
            .await;
        assert_eq!(status, 200, "{id}: {reading}");
        assert_eq!(reading["demand_kw"], json!(demand), "{id}");
        if id != "00ab05" {
            assert_eq!(reading["meter_timestamp"], time, "{id}");
            // 0x00a2e0b8 / 0x3e8 and 0x9187 / 0x3e8
            assert_eq!(reading["summation_delivered_kwh"], json!(10674.36), "{id}");
            assert_eq!(reading["summation_received_kwh"], json!(37.255), "{id}");
        }
    }
    // and the events say the same
    let events = rig.readings().await;
    let manual_200 = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::EnergyReading(r)) if r.cloud_id == "00ab05" => Some((e, r)),
            _ => None,
        })
        .unwrap();
    assert_eq!(manual_200.1.demand_kw, 21.499);
    assert_eq!(
        learntrail_proto::time::rfc3339(manual_200.1.meter_timestamp.as_ref().unwrap()),
        "2017-08-25T23:45:00.000Z"
    );
    let export = events
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::EnergyReading(r)) if r.cloud_id == "00ab04" => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(export.demand_kw, -5.944);
    assert_eq!(
        learntrail_proto::time::rfc3339(export.meter_timestamp.as_ref().unwrap()),
        "2012-12-12T06:09:33.000Z"
    );
    app.stop().await;
}
