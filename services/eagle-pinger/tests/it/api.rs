//! The registry API: roles, validation, paging, secrets at rest and in answers and logs, key
//! rotation.

use std::time::Duration;

use clap::Parser;
use learntrail_eagle_pinger::{Config, admin, registry::Registry, schedule};
use learntrail_fake_eagle::Api;
use learntrail_runtime::auth::Role;
use learntrail_testkit::eventually;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{KEY_A, KEY_B, Rig, captured, spawn_app, token};

#[tokio::test]
async fn registration_round_trip_with_roles_and_paging() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let body = rig.meter("0012ab", Api::Cloud);

    // no token, then a student token: refused, nothing stored
    let (status, _) = app
        .call(Method::POST, "/api/user/0012ab", None, Some(&body))
        .await;
    assert_eq!(status, 401);
    let (status, answer) = app
        .call(
            Method::POST,
            "/api/user/0012ab",
            Some(Role::Student),
            Some(&body),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, _) = app
        .call(
            Method::GET,
            "/api/user/0012ab",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // instructor creates, service updates
    let (status, created) = app.register("0012AB", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["cloud_id"], "0012ab");
    assert_eq!(created["api"], "cloud");
    assert_eq!(created["rev"], 1);
    let (status, updated) = app
        .call(
            Method::POST,
            "/api/user/0012ab",
            Some(Role::Service),
            Some(&json!({"course": "energy-202"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["course"], "energy-202");
    assert_eq!(updated["user_email"], body["user_email"], "kept");
    assert_eq!(updated["rev"], 2);

    // instructors and services read the public fields, with the poll state and counters
    let user = app.user("0012ab").await;
    assert_eq!(user["actor"], "household-0012ab");
    assert!(user.get("user_pw").is_none(), "{user}");
    assert!(user["total_events_logged"].is_u64());
    assert!(user["poll"]["state"].is_string());

    // a student reads only their own meters (the record holds a household's e-mail)
    let (status, refused) = app
        .call(Method::GET, "/api/user/0012ab", Some(Role::Student), None)
        .await;
    assert_eq!(status, 403, "{refused}");
    let (status, page) = app
        .call(Method::GET, "/api/users", Some(Role::Student), None)
        .await;
    assert_eq!(
        (status, page["users"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{page}"
    );
    let (status, _) = app
        .call(Method::GET, "/api/event/0012ab", Some(Role::Student), None)
        .await;
    assert_eq!(status, 403);
    let own = app
        .call(
            Method::POST,
            "/api/user/0012ab",
            Some(Role::Service),
            Some(&json!({"actor": "tester"})),
        )
        .await;
    assert_eq!(own.0, 200, "{}", own.1);
    let (status, mine) = app
        .call(Method::GET, "/api/user/0012ab", Some(Role::Student), None)
        .await;
    assert_eq!(
        (status, mine["actor"].as_str()),
        (200, Some("tester")),
        "{mine}"
    );
    let (status, page) = app
        .call(Method::GET, "/api/users", Some(Role::Student), None)
        .await;
    assert_eq!(
        (status, page["users"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{page}"
    );

    // validation names every problem
    let (status, answer) = app
        .register(
            "12ab",
            &json!({"user_email": "nope", "api": "zigbee", "user_pw": "x"}),
        )
        .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["cloud_id", "api", "user_email"], "{answer}");
    let (status, answer) = app
        .register(
            "0000ff",
            &json!({"user_pw": "x", "api": "local200", "sneaky": 1}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // paging in cloud-id order
    for id in ["000001", "000002"] {
        let (status, _) = app.register(id, &rig.meter(id, Api::Local200)).await;
        assert_eq!(status, 201);
    }
    let (status, page) = app
        .call(
            Method::GET,
            "/api/users?limit=2",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["cloud_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["000001", "000002"]);
    assert_eq!(page["next"], "000002");
    let (_, page) = app
        .call(
            Method::GET,
            "/api/users?limit=2&after=000002",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(page["users"][0]["cloud_id"], "0012ab");
    assert_eq!(page["next"], serde_json::Value::Null);

    // delete: students may not; then it is gone
    let (status, _) = app
        .call(
            Method::DELETE,
            "/api/user/0012ab",
            Some(Role::Student),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .call(
            Method::DELETE,
            "/api/user/0012ab",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(
            Method::GET,
            "/api/user/0012ab",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn passwords_are_sealed_at_rest_and_never_answered_or_logged() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let ids = ["00aa01", "00aa02"];
    for (id, api) in ids.iter().zip([Api::Cloud, Api::Local200]) {
        let (status, answer) = app.register(id, &rig.meter(id, api)).await;
        assert_eq!(status, 201, "{answer}");
    }
    // it is really polled with that password (the fake checks it)...
    for id in ids {
        app.wait_state(id, "ok").await;
        let (status, reading) = app
            .call(
                Method::GET,
                &format!("/api/event/{id}"),
                Some(Role::Instructor),
                None,
            )
            .await;
        assert_eq!(status, 200, "{reading}");
        assert!(reading["demand_kw"].as_f64().unwrap() > 0.0);
        let (_, page) = app
            .call(Method::GET, "/api/users", Some(Role::Instructor), None)
            .await;
        assert!(page["users"].as_array().unwrap().len() >= 2);
    }
    // ...but Redis holds only ciphertext under the key id
    let mut redis = rig.redis().await;
    for id in ids {
        let raw: String = redis.get(format!("eagle:{id}")).await.unwrap();
        let stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let password = learntrail_fake_eagle::demo_password(id);
        assert!(!raw.contains(&password), "{raw}");
        assert!(stored["user_pw"].as_str().unwrap().starts_with("v1."));
        assert!(stored["total_events_logged"].as_u64().unwrap() >= 1);
        // and nothing this process logged or answered carries it
        let log = captured();
        assert!(log.contains(id), "the capture works");
        assert!(!log.contains(&password), "password of {id} leaked");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_old_key_still_opens_after_rotation_and_rekey_reseals() {
    let rig = Rig::start().await;
    let app = rig.spawn(&[]).await;
    let (status, _) = app
        .register("00bb01", &rig.meter("00bb01", Api::Cloud))
        .await;
    assert_eq!(status, 201);
    app.stop().await;
    let stored_kid = || async {
        let mut redis = rig.redis().await;
        let raw: String = redis.get("eagle:00bb01").await.unwrap();
        let stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
        stored["user_pw"]
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_string()
    };
    let old_kid = stored_kid().await;

    // rotated: the new key is current, the old one only opens
    let mut args = rig.args(KEY_B);
    args.extend(["--eagle-old-keys".into(), KEY_A.into()]);
    let app = spawn_app(Config::parse_from(args.clone())).await;
    app.wait_state("00bb01", "ok").await;
    app.stop().await;

    // rekey re-seals under the new key...
    let config = Config::parse_from(args);
    let keys = std::sync::Arc::new(config.store.keyring().unwrap());
    let registry = Registry::connect(
        redis::Client::open(rig.redis.url()).unwrap(),
        "eagle:",
        keys,
    )
    .await
    .unwrap();
    let report = registry.rekey().await.unwrap();
    assert_eq!((report.resealed, report.failed.len()), (1, 0));
    let new_kid = stored_kid().await;
    assert_ne!(new_kid, old_kid);
    assert_eq!(new_kid, registry.keyring().current_id());
    assert_eq!(registry.rekey().await.unwrap().resealed, 0, "idempotent");

    // ...so the old key can go
    let app = spawn_app(Config::parse_from(rig.args(KEY_B))).await;
    let (status, reading) = app
        .call(Method::GET, "/api/event/00bb01", Some(Role::Service), None)
        .await;
    assert_eq!(status, 200, "{reading}");
    app.stop().await;
}

#[tokio::test]
async fn import_registers_good_lines_and_names_bad_ones() {
    let rig = Rig::start().await;
    rig.meter("00cc01", Api::Cloud);
    rig.meter("00cc02", Api::Local200);
    let csv = format!(
        "cloud_id,user_email,user_pw,api,address,actor,course\n\
         00cc01,{},\"{}\",cloud,,hh-1,energy-101\n\
         00cc02,,{},local200,{},hh-2,\n\
         zz,nobody,pw,cloud,,,\n\
         00cc03,,,local100,,,\n",
        learntrail_fake_eagle::demo_email("00cc01"),
        learntrail_fake_eagle::demo_password("00cc01"),
        learntrail_fake_eagle::demo_password("00cc02"),
        rig.fake_addr,
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &csv).unwrap();
    let admin = <admin::Admin as Parser>::parse_from([
        "eagle-pinger",
        "import",
        file.path().to_str().unwrap(),
        "--redis-url",
        &rig.redis.url(),
        "--eagle-secret-key",
        KEY_A,
    ]);
    let err = admin::run(admin).await.unwrap_err();
    assert!(err.to_string().contains("2 lines refused"), "{err}");

    let app = rig.spawn(&[]).await;
    for id in ["00cc01", "00cc02"] {
        let user = app.wait_state(id, "ok").await;
        assert_eq!(user["actor"], format!("hh-{}", &id[5..]));
        eventually(Duration::from_secs(10), "a reading counted", || async {
            (app.user(id).await["total_events_logged"].as_u64() >= Some(1)).then_some(())
        })
        .await;
    }
    let (status, _) = app
        .call(
            Method::GET,
            "/api/user/00cc03",
            Some(Role::Instructor),
            None,
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// On-demand polls of one meter are spaced (`POLL_NOW_MIN_INTERVAL`): one sooner gets 429 with
/// `Retry-After` and never reaches the meter; another meter is not held up.
#[tokio::test]
async fn on_demand_polls_of_one_meter_are_spaced() {
    let rig = Rig::start().await;
    // scheduled polls an hour apart, so the meter's requests are the test's own
    let app = rig
        .spawn(&["--poll-now-min-interval", "60s", "--poll-interval", "1h"])
        .await;
    for (id, api) in [("00dd01", Api::Cloud), ("00dd02", Api::Local200)] {
        assert_eq!(app.register(id, &rig.meter(id, api)).await.0, 201);
    }
    let poll = |id: &'static str| {
        app.http
            .get(format!("{}/api/event/{id}", app.api))
            .bearer_auth(token(Role::Instructor))
            .send()
    };
    assert_eq!(poll("00dd01").await.unwrap().status(), 200);
    let asked = rig.fake.requests("00dd01");
    let refused = poll("00dd01").await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_polls", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("POLL_NOW_MIN_INTERVAL"),
        "{body}"
    );
    assert_eq!(
        rig.fake.requests("00dd01"),
        asked,
        "the meter was not asked"
    );
    assert_eq!(poll("00dd02").await.unwrap().status(), 200);
    app.stop().await;
}

/// On-demand polls of an Eagle-200 reuse the meter address a poll learned: two polls are one
/// `device_list` and two `device_query`, not two of each.
#[tokio::test]
async fn on_demand_polls_of_an_eagle_200_reuse_its_meter_address() {
    let rig = Rig::start().await;
    // scheduled polls an hour apart, and this meter's slot minutes away: the requests are the
    // test's own
    let app = rig
        .spawn(&["--poll-now-min-interval", "0s", "--poll-interval", "1h"])
        .await;
    let id = "00ee01";
    assert!(schedule::offset(id, Duration::from_secs(3600)) > Duration::from_secs(300));
    assert_eq!(app.register(id, &rig.meter(id, Api::Local200)).await.0, 201);
    for _ in 0..2 {
        let (status, reading) = app
            .call(
                Method::GET,
                &format!("/api/event/{id}"),
                Some(Role::Instructor),
                None,
            )
            .await;
        assert_eq!(status, 200, "{reading}");
    }
    assert_eq!(rig.fake.requests(id), 3);
    assert_eq!(rig.fake.commands(id, "device_list"), 1);
    assert_eq!(rig.fake.commands(id, "device_query"), 2);
    app.stop().await;
}

/// A line whose stored record cannot be read is refused by number (the record left as it is),
/// and the lines after it are still imported.
#[tokio::test]
async fn import_refuses_a_line_whose_stored_record_is_unreadable_and_goes_on() {
    let rig = Rig::start().await;
    let mut redis = rig.redis().await;
    let _: () = redis.set("eagle:00cc05", "{not json").await.unwrap();
    let config = Config::parse_from(rig.args(KEY_A));
    let keys = std::sync::Arc::new(config.store.keyring().unwrap());
    let registry = Registry::connect(
        redis::Client::open(rig.redis.url()).unwrap(),
        "eagle:",
        keys,
    )
    .await
    .unwrap();
    let csv = format!(
        "cloud_id,user_pw,api,address\n\
         00cc05,{},local200,{}\n\
         00cc06,{},local200,{}\n",
        learntrail_fake_eagle::demo_password("00cc05"),
        rig.fake_addr,
        learntrail_fake_eagle::demo_password("00cc06"),
        rig.fake_addr,
    );
    let report = admin::import(&registry, &csv).await.unwrap();
    assert_eq!((report.created, report.updated), (1, 0), "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].starts_with("line 2: ") && report.refused[0].contains("00cc05"),
        "{report:?}"
    );
    assert!(registry.get("00cc06").await.unwrap().is_some());
    let raw: String = redis.get("eagle:00cc05").await.unwrap();
    assert_eq!(raw, "{not json");
}
