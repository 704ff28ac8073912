use std::time::Duration;

use learntrail_proto::v1::LmsEventType;
use learntrail_testkit::eventually;
use serde_json::{Value, json};

use crate::helpers::*;

/// Events of every source for learner `a1`, and what the test expects of them.
fn every_source(h: i64) -> Vec<learntrail_proto::Event> {
    let m = 60_000;
    vec![
        ruby("r1", "a1", h - 3 * 3_600_000, 1, "NoMethodError", 100),
        ruby("r2", "a1", h - 2 * 3_600_000, 1, "NameError", 200),
        ruby("r3", "a1", h - 2 * 3_600_000 + m, 0, "", 300),
        ruby("r4", "a1", h - 3_600_000, 1, "NoMethodError", 400),
        // the newer snapshot is published first: the older one must not win
        snapshot("n2", "a1", h - 10 * m, 5, &[("q1", 1, 1.0), ("q2", 1, 1.0)]),
        snapshot("n1", "a1", h - 20 * m, 2, &[("q1", 1, 1.0), ("q2", 2, 0.0)]),
        snapshot("n3", "a2", h - 20 * m, 2, &[("q3", 2, 0.0)]),
        lab("l1", "a1", h - 5 * m, "spinner", "click"),
        lab("l2", "a1", h - 4 * m, "spinner", "click"),
        lab("l3", "a1", h - 3 * m, "pendulum", "start"),
        video("v1", "a1", h - 30 * m, LmsEventType::VideoPlay, 0.0),
        video("v2", "a1", h - 29 * m, LmsEventType::VideoPause, 45.0),
        video("v3", "a1", h - 28 * m, LmsEventType::VideoPlay, 45.0),
        video("v4", "a1", h - 27 * m, LmsEventType::VideoEnded, 100.0),
        assessment("s1", "a1", h - 26 * m, 6.0),
        assessment("s2", "a1", h - 25 * m, 8.0),
        assessment("s3", "a1", h - 24 * m, 7.0),
        reading("e1", "a1", h - 50 * m, 1.5, 100.0),
        reading("e2", "a1", h - 40 * m, 2.5, 104.5),
    ]
}

fn check_summary(s: &Value, h: i64) {
    assert_eq!(s["events"], "18", "{s}");
    let ruby = &s["ruby"];
    assert_eq!(ruby["runs"], "4");
    assert_eq!(ruby["failedRuns"], "3");
    assert_eq!(
        ruby["errorsByClass"],
        json!({"NoMethodError": "2", "NameError": "1"})
    );
    let recent: Vec<&str> = ruby["recentErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(recent, ["r4", "r2", "r1"]);
    assert_eq!(ruby["recentErrors"][0]["line"], 7);
    let nb = &s["notebooks"][0];
    assert_eq!(nb["codeOk"], 5, "latest snapshot by occurred_at wins");
    let assignment = &s["assignments"][0];
    assert_eq!(assignment["passed"], 2);
    assert_eq!(assignment["known"], 3, "q3 is known from another learner");
    assert!((assignment["completion"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(s["lab"]["actions"], "3");
    assert_eq!(s["lab"]["experiments"]["spinner"]["kinds"]["click"], "2");
    let lms = &s["lms"];
    assert_eq!(lms["videosPlayed"], "2");
    assert_eq!(lms["videosEnded"], "1");
    assert_eq!(lms["secondsWatched"], 100.0);
    assert_eq!(lms["assessments"][0]["bestScore"], 8.0);
    assert_eq!(lms["assessments"][0]["attempts"], "3");
    let energy = &s["energy"][0];
    assert_eq!(energy["latestDemandKw"], 2.5);
    let day = chrono::DateTime::from_timestamp_millis(h - 50 * 60_000)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(energy["kwhDeliveredPerDay"][&day], 4.5);
    assert_eq!(s["courses"], json!(["ruby-101"]));
}

#[tokio::test]
async fn summaries_follow_events_and_replays_change_nothing() {
    let app = spawn_app().await;
    let h = this_hour();
    let events = every_source(h);
    app.publish(&events).await;
    eventually(Duration::from_secs(20), "all events projected", || async {
        (app.summary("a1").await["events"] == "18").then_some(())
    })
    .await;
    check_summary(&app.summary("a1").await, h);

    // the same events under new message ids (a replay from the archive), twice
    app.publish_again(&events, "replay").await;
    app.publish_again(&events[..5], "again").await;
    app.caught_up().await;
    check_summary(&app.summary("a1").await, h);

    // timeline: newest first, paged
    let auth = format!("Bearer {}", service());
    let (status, page) = app
        .get("/api/v1/learners/a1/timeline?limit=5", Some(&auth))
        .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["l3", "l2", "l1", "n2", "n1"]);
    let before = page["nextBefore"]
        .as_str()
        .unwrap_or_else(|| panic!("{page}"));
    let (_, next) = app
        .get(
            &format!("/api/v1/learners/a1/timeline?limit=3&before={before}"),
            Some(&auth),
        )
        .await;
    let ids: Vec<&str> = next["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s3", "s2", "s1"]);
    app.stop().await;
}

#[tokio::test]
async fn the_projection_runs_over_tls_to_a_redis_with_its_own_authority() {
    let redis = learntrail_testkit::RedisServer::start_tls();
    let ca = redis.ca_file().unwrap().to_str().unwrap().to_string();
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let app = spawn_with(
        learntrail_testkit::NatsServer::start(),
        url,
        Some(redis),
        &["--redis-tls-ca", &ca],
    )
    .await;
    let h = this_hour();
    app.publish(&every_source(h)).await;
    app.caught_up().await;
    check_summary(&app.summary("a1").await, h);
    app.stop().await;
}

#[tokio::test]
async fn timeline_pages_lose_no_event_that_shares_a_millisecond() {
    let app = spawn_app().await;
    let h = this_hour();
    // five events, three of them in one millisecond, paged two at a time
    let events = vec![
        lab("t1", "tie", h - 5_000, "spinner", "click"),
        lab("t2", "tie", h - 4_000, "spinner", "click"),
        lab("t3", "tie", h - 4_000, "spinner", "click"),
        lab("t4", "tie", h - 4_000, "spinner", "click"),
        lab("t5", "tie", h - 3_000, "spinner", "click"),
    ];
    app.publish(&events).await;
    app.caught_up().await;
    let auth = format!("Bearer {}", service());
    let (mut seen, mut pages, mut before) = (Vec::new(), 0, String::new());
    loop {
        let (status, page) = app
            .get(
                &format!("/api/v1/learners/tie/timeline?limit=2&before={before}"),
                Some(&auth),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for event in page["events"].as_array().unwrap() {
            seen.push(event["id"].as_str().unwrap().to_string());
        }
        match page["nextBefore"].as_str() {
            Some(next) => before = next.to_string(),
            None => break,
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, ["t1", "t2", "t3", "t4", "t5"], "pages: {seen:?}");
    assert_eq!(seen[0], "t5", "newest first");
    assert_eq!(seen[4], "t1");
    app.stop().await;
}

/// A backlog waiting when the service starts is written in writes of many pulls (a learner's
/// events merge), with the same result as one event at a time: counters, the capped timeline
/// and recent errors (one ZADD and one trim per key), the course's learners (one SADD).
#[tokio::test]
async fn a_backlog_is_written_in_few_large_writes_with_exact_results() {
    let nats = learntrail_testkit::NatsServer::start();
    let redis = learntrail_testkit::RedisServer::start();
    let redis_url = redis.url();
    let bus = learntrail_runtime::bus::Bus::connect(
        &learntrail_runtime::bus::NatsArgs::with_url(nats.url()),
        "backlog",
        true,
    )
    .await
    .unwrap();
    bus.provision(&learntrail_runtime::bus::StreamArgs::default())
        .await
        .unwrap();
    let h = this_hour();
    let (learners, per_learner) = (100, 30);
    let mut events = Vec::new();
    for k in 0..per_learner {
        for l in 0..learners {
            let class = if k % 3 == 0 {
                "NameError"
            } else {
                "NoMethodError"
            };
            let ms = h - (per_learner - k) as i64 * 60_000;
            events.push(ruby(
                &format!("b{l}-{k}"),
                &format!("bl{l}"),
                ms,
                1,
                class,
                10,
            ));
        }
    }
    for result in bus.publish_many(&events).await {
        result.unwrap();
    }
    let app = spawn_with(
        nats,
        redis_url,
        Some(redis),
        &["--batch", "100", "--timeline-len", "5"],
    )
    .await;
    app.caught_up().await;

    for l in [0, 57, 99] {
        let s = app.summary(&format!("bl{l}")).await;
        assert_eq!(s["events"], "30", "{s}");
        assert_eq!(s["ruby"]["failedRuns"], "30");
        assert_eq!(
            s["ruby"]["errorsByClass"],
            json!({"NameError": "10", "NoMethodError": "20"})
        );
        let recent: Vec<String> = s["ruby"]["recentErrors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["eventId"].as_str().unwrap().to_string())
            .collect();
        let newest: Vec<String> = (10..30).rev().map(|k| format!("b{l}-{k}")).collect();
        assert_eq!(recent, newest, "the 20 newest errors, newest first");
        let (status, page) = app
            .get(
                &format!("/api/v1/learners/bl{l}/timeline?limit=100"),
                Some(&format!("Bearer {}", service())),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let newest: Vec<String> = (25..30).rev().map(|k| format!("b{l}-{k}")).collect();
        assert_eq!(ids, newest, "the timeline keeps TIMELINE_LEN entries");
    }
    let (status, cohort) = app
        .get(
            "/api/v1/cohorts/ruby-101",
            Some(&format!("Bearer {}", service())),
        )
        .await;
    assert_eq!(status, 200, "{cohort}");
    assert_eq!(
        cohort["learners"].as_array().map(Vec::len),
        Some(learners),
        "{cohort}"
    );

    let metrics = app.metrics().await;
    let value = |name: &str| -> f64 {
        learntrail_testkit::sample(&metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert_eq!(
        value("learntrail_analytics_projection_write_events_sum"),
        3000.0
    );
    let writes = value("learntrail_analytics_projection_write_events_count");
    assert!(
        writes <= 10.0,
        "3,000 waiting events in {writes} writes: pulls of 100 were not gathered"
    );
    app.stop().await;
}

/// A fresh Redis is marked with this build's key layout; a Redis marked with another one is
/// refused at start, with a message that says what to do, rather than misread.
#[tokio::test]
async fn a_redis_of_another_key_layout_is_refused_and_a_fresh_one_is_marked() {
    use learntrail_analytics_query::{keys, serve};
    let redis = learntrail_testkit::RedisServer::start();
    let url = redis.url();
    let app = spawn_with(
        learntrail_testkit::NatsServer::start(),
        url.clone(),
        None,
        &[],
    )
    .await;
    let mut conn = redis_connection(&url).await;
    let mark: String = redis::cmd("GET")
        .arg(keys::LAYOUT_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mark, keys::LAYOUT.to_string());
    app.stop().await;

    let other = keys::LAYOUT + 1;
    let _: () = redis::cmd("SET")
        .arg(keys::LAYOUT_KEY)
        .arg(other)
        .query_async(&mut conn)
        .await
        .unwrap();
    let nats = learntrail_testkit::NatsServer::start();
    let listeners = listeners().await;
    let token = learntrail_runtime::CancellationToken::new();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        serve(config(&nats.url(), &url, &[]), listeners, token),
    )
    .await
    .expect("refused at start, not served")
    .unwrap_err();
    let message = format!("{refused:#}");
    assert!(
        message.contains(&format!("key layout {other}"))
            && message.contains("Rebuilding the projection"),
        "{message}"
    );
    assert!(
        refused
            .downcast_ref::<learntrail_runtime::cli::ConfigError>()
            .is_some(),
        "a configuration error (exit 64, not a crash loop of retries): {message}"
    );
    drop(redis);
}

/// A summary asked again comes from memory while neither the learner nor the known problems of
/// their courses changed; a new event of the learner, or a problem newly known in their course
/// (from another learner's notebook), shows in the next answer; a replay changes nothing.
#[tokio::test]
async fn a_summary_asked_again_comes_from_memory_until_the_learner_or_their_course_changes() {
    let app = spawn_app().await;
    let h = this_hour();
    let m = 60_000;
    app.publish(&[
        ruby("c1", "b1", h - 30 * m, 1, "NameError", 10),
        snapshot("c2", "b1", h - 20 * m, 1, &[("q1", 1, 1.0)]),
    ])
    .await;
    app.caught_up().await;
    let hits = || async {
        learntrail_testkit::sample(
            &app.metrics().await,
            "learntrail_analytics_summary_cache_hits_total",
        )
        .unwrap()
    };
    let first = app.summary("b1").await;
    assert_eq!(first["assignments"][0]["completion"], 1.0, "{first}");
    assert_eq!(hits().await, 0.0);
    assert_eq!(app.summary("b1").await, first);
    assert_eq!(hits().await, 1.0);

    // the learner's own new event
    let run = ruby("c3", "b1", h - 10 * m, 1, "TypeError", 10);
    app.publish(std::slice::from_ref(&run)).await;
    app.caught_up().await;
    let second = app.summary("b1").await;
    assert_eq!(second["ruby"]["runs"], "2", "{second}");
    assert_eq!(hits().await, 1.0);

    // another learner's notebook makes q2 known in the course: b1 has done half of it
    app.publish(&[snapshot("c4", "b2", h - 5 * m, 0, &[("q2", 2, 0.0)])])
        .await;
    app.caught_up().await;
    let third = app.summary("b1").await;
    assert_eq!(third["assignments"][0]["known"], 2, "{third}");
    assert_eq!(third["assignments"][0]["completion"], 0.5);
    assert_eq!(hits().await, 1.0);

    // a replay of the learner's run: nothing changed, from memory
    app.publish_again(std::slice::from_ref(&run), "replay")
        .await;
    app.caught_up().await;
    assert_eq!(app.summary("b1").await, third);
    assert_eq!(hits().await, 2.0);
    app.stop().await;
}

/// Redis comes back empty while analytics-query runs (it kept nothing on disk): a learner's
/// version can grow back to the number the cache holds, with other contents. The broken
/// connection, whichever call meets it, and the projection's next write finding the scripts
/// gone, each empty the cache, so the summary shows what Redis now holds.
#[tokio::test]
async fn a_redis_that_comes_back_empty_is_not_answered_from_memory() {
    let mut redis = learntrail_testkit::RedisServer::start();
    let app = spawn_with(
        learntrail_testkit::NatsServer::start(),
        redis.url(),
        None,
        &[],
    )
    .await;
    let h = this_hour();
    app.publish(&[ruby("d1", "x1", h - 60_000, 1, "NameError", 10)])
        .await;
    app.caught_up().await;
    let before = app.summary("x1").await;
    assert_eq!(before["ruby"]["runs"], "1", "{before}");
    assert_eq!(app.summary("x1").await, before, "the second from memory");

    redis.restart();
    // the first call after the restart is one that makes do without its answer (an instructor's
    // access check reads the learner's courses); the connection error is seen all the same
    let (status, _) = app
        .get(
            "/api/v1/learners/x1/summary",
            Some(&format!("Bearer {}", instructor_of(&["ruby-101"]))),
        )
        .await;
    assert_ne!(status, 200);
    // the learner's one event since, projected before anyone asks: their version is 1 again
    app.publish(&[lab("d2", "x1", h - 30_000, "spinner", "click")])
        .await;
    app.caught_up().await;
    let after = app.summary("x1").await;
    assert_eq!(after["lab"]["actions"], "1", "{after}");
    assert_eq!(after["events"], "1", "{after}");
    assert_ne!(after["ruby"]["runs"], "1", "{after}");
    let clears = learntrail_testkit::sample(
        &app.metrics().await,
        "learntrail_analytics_cache_clears_total",
    );
    assert!(clears >= Some(1.0), "{clears:?}");
    app.stop().await;
}
