use learntrail_runtime::auth::Role;
use learntrail_testkit::{NatsServer, RedisServer};
use serde_json::{Value, json};

use learntrail_analytics_query::fold::occurred_ms;

use crate::helpers::*;

const H: i64 = 3_600_000;

/// Runs in the three hours before the current one: (hour offset, actor, class, duration).
const RUNS: [(i64, &str, &str, u64); 7] = [
    (3, "k1", "NoMethodError", 100),
    (3, "k2", "NoMethodError", 300),
    (3, "k1", "NameError", 50),
    (2, "k2", "NameError", 70),
    (1, "k3", "NoMethodError", 1_000),
    (1, "k1", "", 20),
    (1, "k1", "NoMethodError", 5),
];

/// The runs of [`RUNS`] as events, hours before `h`.
fn seeded_events(h: i64) -> Vec<learntrail_proto::Event> {
    RUNS.iter()
        .enumerate()
        .map(|(i, (ago, actor, class, ms))| {
            let exit = if class.is_empty() { 0 } else { 1 };
            ruby(
                &format!("k{i}"),
                actor,
                h - ago * H + 60_000 * i as i64,
                exit,
                class,
                *ms,
            )
        })
        .collect()
}

async fn seeded() -> (TestApp, i64) {
    let app = spawn_app().await;
    let h = this_hour();
    app.publish(&seeded_events(h)).await;
    app.caught_up().await;
    (app, h)
}

impl TestApp {
    async fn keen(&self, analysis: &str, query: &str, auth: &str) -> (u16, Value) {
        self.get(
            &format!("/3.0/projects/learntrail/queries/{analysis}?{query}"),
            Some(auth),
        )
        .await
    }

    /// `learntrail_analytics_keen_cache_{hits|misses|answers}_total` on /metrics.
    async fn cache_counter(&self, which: &str) -> u64 {
        let name = format!("learntrail_analytics_keen_cache_{which}_total");
        let metrics = self.metrics().await;
        learntrail_testkit::sample(&metrics, &name)
            .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
    }
}

#[tokio::test]
async fn keen_counts_match_the_events() {
    let (app, h) = seeded().await;
    let key = service(); // raw key in Authorization, as Keen's clients send it
    let (status, body) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&interval=hourly&group_by=rubyRun.error.className",
            &key,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let interval = |ago: i64, groups: Value| json!({"timeframe": {"start": keen_time(h - ago * H), "end": keen_time(h - (ago - 1) * H)}, "value": groups});
    let g = |class: Value, n: u64| json!({"rubyRun.error.className": class, "result": n});
    assert_eq!(
        body,
        json!({"result": [
            interval(3, json!([g(json!("NameError"), 1), g(json!("NoMethodError"), 2), g(json!(null), 0)])),
            interval(2, json!([g(json!("NameError"), 1), g(json!("NoMethodError"), 0), g(json!(null), 0)])),
            interval(1, json!([g(json!("NameError"), 0), g(json!("NoMethodError"), 2), g(json!(null), 1)])),
        ]})
    );

    let (_, unique) = app
        .keen(
            "count_unique",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=actor",
            &key,
        )
        .await;
    assert_eq!(unique, json!({"result": 3}));

    // sum and average of durations with a filter, as a JSON body (POST) and with ?api_key=
    let filters = json!([{"property_name": "rubyRun.error.className", "operator": "eq", "property_value": "NoMethodError"}]);
    let body = json!({"event_collection": "shim.ruby_run", "timeframe": "previous_3_hours",
                      "target_property": "rubyRun.durationMs", "filters": filters});
    let post = |analysis: &str| {
        app.http
            .post(format!(
                "{}/3.0/projects/learntrail/queries/{analysis}?api_key={key}",
                app.api
            ))
            .json(&body)
            .send()
    };
    let sum: Value = post("sum").await.unwrap().json().await.unwrap();
    assert_eq!(sum, json!({"result": 100 + 300 + 1_000 + 5}));
    let average: Value = post("average").await.unwrap().json().await.unwrap();
    assert_eq!(average, json!({"result": 1_405.0 / 4.0}));
    let (_, max) = app
        .keen(
            "maximum",
            &format!("event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=rubyRun.durationMs&filters={}", enc(&filters)),
            &format!("Bearer {key}"),
        )
        .await;
    assert_eq!(max, json!({"result": 1_000}));

    // a GET with Content-Type: application/json and no body (Keen's Python client)
    let response = app
        .http
        .get(format!("{}/3.0/projects/learntrail/queries/count?event_collection=shim.ruby_run&timeframe=previous_3_hours", app.api))
        .header("authorization", &key)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"result": 7})
    );

    // keen-analysis.js in a browser: its preflight asks for its own `keen-sdk` header, and its
    // URL-keyed requests send an empty Authorization beside ?api_key=
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/3.0/projects/learntrail/queries/count", app.api),
        )
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,content-type,keen-sdk",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{preflight:?}");
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("keen-sdk"), "{allowed}");
    let response = app
        .http
        .get(format!("{}/3.0/projects/learntrail/queries/count?api_key={key}&event_collection=shim.ruby_run&timeframe=previous_3_hours", app.api))
        .header("authorization", "")
        .header("content-type", "application/json")
        .header("keen-sdk", "javascript-4.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"result": 7})
    );

    // the top error class, as KeenClient-Python asks it (order_by JSON-encoded)
    let grouped = "event_collection=shim.ruby_run&timeframe=previous_3_hours&group_by=rubyRun.error.className";
    let (status, all) = app.keen("count", grouped, &key).await;
    assert_eq!(status, 200, "{all}");
    let all = all["result"].as_array().unwrap().clone();
    assert!(all.len() > 1, "{all:?}");
    let most = all
        .iter()
        .filter_map(|g| g["result"].as_u64())
        .max()
        .unwrap();
    let top = format!(
        "{grouped}&order_by=%5B%7B%22property_name%22%3A%22result%22%2C%22direction%22%3A%22DESC%22%7D%5D&limit=1"
    );
    let (status, body) = app.keen("count", &top, &key).await;
    assert_eq!(status, 200, "{body}");
    let result = body["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{body}");
    assert_eq!(result[0]["result"].as_u64(), Some(most), "{body}");
    let (status, err) = app
        .keen(
            "count",
            &format!("{grouped}&interval=hourly&order_by=result"),
            &key,
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("BadRequestError"))
    );

    // an unindexed property: 400 naming it, in Keen's error shape
    let (status, err) = app
        .keen("count", "event_collection=shim.ruby_run&timeframe=previous_3_hours&group_by=rubyRun.error.message", &key)
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error_code"], "BadRequestError");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("rubyRun.error.message"),
        "{err}"
    );
    // another project id
    let (status, err) = app
        .get(
            "/3.0/projects/elsewhere/queries/count?event_collection=x&timeframe=this_1_days",
            Some(&key),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (404, Some("ResourceNotFoundError"))
    );

    // a student sees only their own events
    let (_, own) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours",
            &token("k1", Role::Student),
        )
        .await;
    assert_eq!(own, json!({"result": 4}));
    // and their own average duration per hour, from their events' exact times
    let (_, own) = app
        .keen(
            "average",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&interval=hourly&target_property=rubyRun.durationMs",
            &token("k1", Role::Student),
        )
        .await;
    let values: Vec<&Value> = own["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["value"])
        .collect();
    assert_eq!(values, [&json!(75), &Value::Null, &json!(12.5)], "{own}");
    // the sum per learner (every learner's events)
    let (_, per) = app
        .keen(
            "sum",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=rubyRun.durationMs&group_by=actor",
            &key,
        )
        .await;
    assert_eq!(
        per,
        json!({"result": [{"actor": "k1", "result": 175}, {"actor": "k2", "result": 370}, {"actor": "k3", "result": 1_000}]})
    );
    let (status, err) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_3_hours",
            "nonsense",
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (401, Some("InvalidApiKeyError"))
    );
    app.stop().await;
}

/// Collection-hours a Keen query has read, and its whole answer, are kept in memory while the
/// hours stay unchanged, and read or computed again once they change: a late event into an hour already read shows in the next
/// count, count_unique and sum; a replay of it changes neither the answers nor the hour's
/// version. With `ANALYSIS_CACHE_MB=0` the same answers, every hour read from Redis.
#[tokio::test]
async fn an_hour_already_read_is_answered_from_memory_until_it_changes() {
    for cached in [true, false] {
        let app = if cached {
            seeded().await.0
        } else {
            let redis = learntrail_testkit::RedisServer::start();
            let url = redis.url();
            let app = spawn_with(
                learntrail_testkit::NatsServer::start(),
                url,
                Some(redis),
                &["--analysis-cache-mb", "0"],
            )
            .await;
            // the same events as `seeded`
            let seeded_events = seeded_events(this_hour());
            app.publish(&seeded_events).await;
            app.caught_up().await;
            app
        };
        let h = this_hour();
        let key = service();
        let grouped = "event_collection=shim.ruby_run&timeframe=previous_3_hours&interval=hourly&group_by=rubyRun.error.className";
        let unique =
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=actor";
        let filters = json!([{"property_name": "rubyRun.error.className", "operator": "eq", "property_value": "NameError"}]);
        let sum = format!(
            "event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=rubyRun.durationMs&filters={}",
            enc(&filters)
        );
        let ask = |analysis: &'static str, query: String| {
            let (app, key) = (&app, &key);
            async move {
                let (status, body) = app.keen(analysis, &query, key).await;
                assert_eq!(status, 200, "{body}");
                body
            }
        };
        let first = ask("count", grouped.into()).await;
        assert_eq!(
            ask("count_unique", unique.into()).await,
            json!({"result": 3})
        );
        assert_eq!(ask("sum", sum.clone()).await, json!({"result": 50 + 70}));
        // 3 hours of counts, of actors and of durations read; asked again, all from memory
        let (hits, misses) = (
            app.cache_counter("hits").await,
            app.cache_counter("misses").await,
        );
        assert_eq!(ask("count", grouped.into()).await, first);
        assert_eq!(
            ask("count_unique", unique.into()).await,
            json!({"result": 3})
        );
        assert_eq!(ask("sum", sum.clone()).await, json!({"result": 120}));
        if cached {
            assert_eq!(app.cache_counter("hits").await, hits + 9);
            assert_eq!(app.cache_counter("misses").await, misses);
            // the count, the count_unique (from the actor sets) and the sum, whole
            assert_eq!(app.cache_counter("answers").await, 3);
        } else {
            assert_eq!(app.cache_counter("hits").await, 0);
            assert_eq!(app.cache_counter("misses").await, misses + 9);
            assert_eq!(app.cache_counter("answers").await, 0);
        }

        // a late run, by a new learner, into the hour two hours back
        let late = ruby("late", "k9", h - 2 * H + 30 * 60_000, 1, "NameError", 400);
        app.publish(std::slice::from_ref(&late)).await;
        app.caught_up().await;
        let after = ask("count", grouped.into()).await;
        assert_eq!(
            after["result"][1]["value"][0],
            json!({"rubyRun.error.className": "NameError", "result": 2}),
            "{after}"
        );
        for unchanged in [0, 2] {
            assert_eq!(after["result"][unchanged], first["result"][unchanged]);
        }
        assert_eq!(
            ask("count_unique", unique.into()).await,
            json!({"result": 4})
        );
        assert_eq!(ask("sum", sum.clone()).await, json!({"result": 520}));
        if cached {
            // of 9 keys, the changed hour's 3 read again
            assert_eq!(app.cache_counter("hits").await, hits + 9 + 6);
            assert_eq!(app.cache_counter("misses").await, misses + 3);
            assert_eq!(app.cache_counter("answers").await, 3, "computed again");
        }

        // the same run again under another message id: nothing changes, all from memory
        app.publish_again(std::slice::from_ref(&late), "replay")
            .await;
        app.caught_up().await;
        assert_eq!(ask("count", grouped.into()).await, after);
        assert_eq!(
            ask("count_unique", unique.into()).await,
            json!({"result": 4})
        );
        assert_eq!(ask("sum", sum.clone()).await, json!({"result": 520}));
        if cached {
            assert_eq!(app.cache_counter("hits").await, hits + 9 + 6 + 9);
            assert_eq!(app.cache_counter("misses").await, misses + 3);
            assert_eq!(app.cache_counter("answers").await, 6);
        }
        app.stop().await;
    }
}

/// `ANALYSIS_RETENTION`: a collection-hour's keys (its seen-mark too) expire that long after the
/// hour, a learner's analysis events older than that are trimmed, and a Keen timeframe that
/// starts before it is refused; the learner's all-time summary is untouched, and a replay of an
/// expired hour's event brings neither the hour back nor a second count.
#[tokio::test]
async fn retention_expires_old_hours_and_refuses_timeframes_before_it() {
    let redis = learntrail_testkit::RedisServer::start();
    let url = redis.url();
    let app = spawn_with(
        learntrail_testkit::NatsServer::start(),
        url.clone(),
        Some(redis),
        &["--analysis-retention", "3h"],
    )
    .await;
    let h = this_hour();
    let old = ruby("old", "k1", h - 5 * H, 1, "NameError", 10);
    let new = ruby("new", "k1", h - H + 60_000, 1, "NoMethodError", 20);
    // one write after the other: the newer event's trim is what removes the older member
    app.publish(std::slice::from_ref(&old)).await;
    app.caught_up().await;
    app.publish(std::slice::from_ref(&new)).await;
    app.caught_up().await;

    let mut redis = redis_connection(&url).await;
    let hour_tag = |ms: i64| format!("{{a:shim.ruby_run:{}}}", ms.div_euclid(H));
    let now_s = chrono::Utc::now().timestamp();
    let expected = h / 1000 + 3 * 3600 - now_s; // the hour's end plus 3 h, from now
    for suffix in [":h", ":m", ":u", ":seen", ":h:rubyRun.durationMs"] {
        let left = int(
            &mut redis,
            "TTL",
            format!("{}{suffix}", hour_tag(occurred_ms(&new))),
        )
        .await;
        assert!(
            (expected - 5..=expected).contains(&left),
            "{suffix}: TTL {left}, expected about {expected}"
        );
    }
    for suffix in [":h", ":m", ":u", ":seen"] {
        assert_eq!(
            int(
                &mut redis,
                "EXISTS",
                format!("{}{suffix}", hour_tag(h - 5 * H))
            )
            .await,
            0,
            "the hour past the retention is gone ({suffix})"
        );
    }
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("{l:k1}:ke:shim.ruby_run")
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].starts_with("new"), "{members:?}");

    let key = service();
    let (status, body) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_2_hours&group_by=rubyRun.error.className",
            &key,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"result": [{"rubyRun.error.className": "NoMethodError", "result": 1}]})
    );
    let (status, body) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_6_hours",
            &key,
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (400, Some("BadRequestError")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("ANALYSIS_RETENTION 10800s"),
        "{body}"
    );
    // the student's own query is refused the same way
    let (status, _) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&timeframe=previous_6_hours",
            &token("k1", Role::Student),
        )
        .await;
    assert_eq!(status, 400);

    // the summary is all-time; a replay of the expired hour changes nothing
    app.publish_again(std::slice::from_ref(&old), "replay")
        .await;
    app.caught_up().await;
    assert_eq!(app.summary("k1").await["ruby"]["runs"], "2");
    assert_eq!(
        int(&mut redis, "EXISTS", format!("{}:h", hour_tag(h - 5 * H))).await,
        0,
        "a replay does not bring an expired hour back"
    );
    app.stop().await;
}

/// A count_unique of `actor` with nothing else asked is answered from each hour's actor set;
/// with a filter, from the learners' own events: the same numbers either way.
#[tokio::test]
async fn distinct_learners_per_hour_from_the_hour_sets_equal_those_from_the_events() {
    let (app, _) = seeded().await;
    let key = service();
    let base = "event_collection=shim.ruby_run&timeframe=previous_3_hours&target_property=actor";
    let every =
        enc(&json!([{"property_name": "actor", "operator": "exists", "property_value": true}]));
    let values = |body: &Value| -> Vec<Value> {
        body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].clone())
            .collect()
    };
    for interval in ["hourly", "daily"] {
        let from_sets = app
            .keen("count_unique", &format!("{base}&interval={interval}"), &key)
            .await;
        let from_events = app
            .keen(
                "count_unique",
                &format!("{base}&interval={interval}&filters={every}"),
                &key,
            )
            .await;
        assert_eq!((from_sets.0, from_events.0), (200, 200), "{from_sets:?}");
        assert_eq!(values(&from_sets.1), values(&from_events.1), "{interval}");
        if interval == "hourly" {
            // [`RUNS`]: k1 and k2; k2; k3 and k1
            assert_eq!(values(&from_sets.1), [json!(2), json!(1), json!(2)]);
        } else {
            let total: u64 = values(&from_sets.1)
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum();
            // 3 learners; when midnight falls inside, one may be counted on both days
            assert!((3..=5).contains(&total), "{total}");
        }
    }
    app.stop().await;
}

/// A query whose size does not depend on the data (intervals, hours spanned) is refused with
/// the defaults before anything is read, for a student too; an ordinary one is answered after.
#[tokio::test]
async fn a_query_larger_than_the_limits_is_refused_and_the_service_answers_on() {
    let (app, _) = seeded().await;
    let student = token("k1", Role::Student);
    let refused = |body: &Value, setting: &str| {
        body["error_code"] == "BadRequestError"
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains(setting))
    };
    // 3 years minutely: 1.6 million intervals
    let (status, body) = app
        .keen(
            "count",
            r#"event_collection=shim.ruby_run&interval=minutely&timeframe={"start":"2020-01-01T00:00:00Z","end":"2023-01-01T00:00:00Z"}"#,
            &student,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(refused(&body, "ANALYSIS_MAX_INTERVALS"), "{body}");
    // 11 years, one interval: 96,000 hours read
    let (status, body) = app
        .keen(
            "count",
            r#"event_collection=shim.ruby_run&timeframe={"start":"2015-01-01T00:00:00Z","end":"2026-01-01T00:00:00Z"}"#,
            &student,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(refused(&body, "ANALYSIS_MAX_TIMEFRAME"), "{body}");
    // the same over gRPC
    let mut grpc = app.grpc_client().await;
    let mut request = tonic::Request::new(learntrail_proto::v1::CountRequest {
        analysis: "count".into(),
        collection: "shim.ruby_run".into(),
        timeframe: "this_100000_minutes".into(),
        interval: "minutely".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {student}").parse().unwrap(),
    );
    let status = grpc.count(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("ANALYSIS_MAX_INTERVALS"),
        "{status:?}"
    );

    // a week minutely is within the defaults: the student's own four runs of the last hours
    let (status, body) = app
        .keen(
            "count",
            "event_collection=shim.ruby_run&interval=minutely&timeframe=this_7_days",
            &student,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let series = body["result"].as_array().unwrap();
    assert!(series.len() >= 10_080, "{}", series.len());
    let total: u64 = series.iter().map(|i| i["value"].as_u64().unwrap()).sum();
    assert_eq!(total, 4, "k1's runs");
    app.stop().await;
}

/// An answer of more values (intervals × groups) than `ANALYSIS_MAX_RESULT_VALUES` is refused,
/// never cut short; one within it is whole, over HTTP and gRPC alike.
#[tokio::test]
async fn an_answer_larger_than_its_limit_is_refused_whole_or_given_whole() {
    let redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_with(
        NatsServer::start(),
        url,
        Some(redis),
        &["--analysis-max-result-values", "9"],
    )
    .await;
    app.publish(&seeded_events(this_hour())).await;
    app.caught_up().await;
    let key = service();
    let hourly = "event_collection=shim.ruby_run&timeframe=previous_3_hours&interval=hourly";
    // 3 hours × 3 learners: 9 values, each learner in each hour
    let (status, body) = app
        .keen(
            "count",
            &format!(r#"{hourly}&group_by=["actor","actor"]"#),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = body["result"].as_array().unwrap();
    assert_eq!(result.len(), 3);
    assert!(
        result
            .iter()
            .all(|i| i["value"].as_array().unwrap().len() == 3),
        "{body}"
    );
    let total: u64 = result
        .iter()
        .flat_map(|i| i["value"].as_array().unwrap())
        .map(|g| g["result"].as_u64().unwrap())
        .sum();
    assert_eq!(total, RUNS.len() as u64);
    // 3 hours × 6 (learner, class) pairs: 18
    let (status, body) = app
        .keen(
            "count",
            &format!(r#"{hourly}&group_by=["actor","rubyRun.error.className"]"#),
            &key,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_code"], "BadRequestError");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("ANALYSIS_MAX_RESULT_VALUES"),
        "{body}"
    );
    // the same from the shared cells (no actor): 3 hours × 3 classes (with none) is 9
    let (status, body) = app
        .keen(
            "count",
            &format!("{hourly}&group_by=rubyRun.error.className"),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut grpc = app.grpc_client().await;
    let mut request = tonic::Request::new(learntrail_proto::v1::CountRequest {
        analysis: "count".into(),
        collection: "shim.ruby_run".into(),
        timeframe: "previous_4_hours".into(),
        interval: "hourly".into(),
        group_by: vec!["rubyRun.error.className".into()],
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let status = grpc.count(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("ANALYSIS_MAX_RESULT_VALUES"),
        "{status:?}"
    );
    app.stop().await;
}

async fn int(redis: &mut redis::aio::MultiplexedConnection, command: &str, key: String) -> i64 {
    redis::cmd(command)
        .arg(key)
        .query_async(redis)
        .await
        .unwrap()
}

#[tokio::test]
async fn failures_under_3_0_answer_in_keen_shapes() {
    let (app, _) = seeded().await;
    let key = service();
    let keen_error = |status: u16, code: &str, answer: (u16, Value)| {
        assert_eq!(answer.0, status, "{}", answer.1);
        assert_eq!(answer.1["error_code"], code, "{}", answer.1);
        assert!(answer.1["message"].is_string(), "{}", answer.1);
    };
    // a path Keen has and Learntrail does not (saved queries), and one nobody has
    keen_error(
        404,
        "ResourceNotFoundError",
        app.get(
            "/3.0/projects/learntrail/queries/saved/top-errors",
            Some(&key),
        )
        .await,
    );
    for path in ["/3.0/nothing", "/3.0/", "/3.0"] {
        keen_error(
            404,
            "ResourceNotFoundError",
            app.get(path, Some(&key)).await,
        );
    }
    let put = app
        .http
        .put(format!("{}/3.0/projects/learntrail/queries/count", app.api))
        .header("authorization", &key)
        .send()
        .await
        .unwrap();
    let status = put.status().as_u16();
    keen_error(
        405,
        "MethodNotAllowedError",
        (status, put.json().await.unwrap()),
    );
    let huge = app
        .http
        .post(format!("{}/3.0/projects/learntrail/queries/count", app.api))
        .header("authorization", &key)
        .header("content-type", "application/json")
        // just over the 2 MiB limit: little is left unread when the answer comes
        .body(vec![b' '; (2 << 20) + 1024])
        .send()
        .await
        .unwrap();
    let status = huge.status().as_u16();
    keen_error(413, "BadRequestError", (status, huge.json().await.unwrap()));
    // the rest of the API keeps its own shape
    let (status, body) = app.get("/api/v1/nothing", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    app.stop().await;

    // past REQUEST_TIMEOUT (Redis stopped): Keen's 504 on the Keen route, 408 with a JSON body
    // elsewhere
    let redis = RedisServer::start();
    let app = spawn_with(
        NatsServer::start(),
        redis.url(),
        None,
        &["--request-timeout", "1s"],
    )
    .await;
    redis.pause();
    let count = "event_collection=shim.ruby_run&timeframe=previous_3_hours";
    keen_error(
        504,
        "QueryTimeoutError",
        app.keen("count", count, &key).await,
    );
    let (status, body) = app
        .get(
            "/api/v1/learners/someone/summary",
            Some(&format!("Bearer {key}")),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (408, Some("timeout")),
        "{body}"
    );
    redis.resume();
    app.stop().await;
}
