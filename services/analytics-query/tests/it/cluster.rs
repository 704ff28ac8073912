use std::time::Duration;

use learntrail_testkit::{NatsServer, RedisCluster, eventually};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_projection_runs_unchanged_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls().join(",");
    let app = spawn_with(NatsServer::start(), urls, None, &[]).await;
    let h = this_hour();
    // learners spread over the slots of all three nodes; one event touches three slots
    let events: Vec<_> = (0..30)
        .map(|i| {
            let class = if i % 3 == 0 { "NameError" } else { "" };
            ruby(
                &format!("z{i}"),
                &format!("learner-{}", i % 10),
                h - 60_000 * (i + 1),
                i32::from(i % 3 == 0),
                class,
                10,
            )
        })
        .collect();
    app.publish(&events).await;
    app.publish_again(&events, "replay").await;
    eventually(
        Duration::from_secs(20),
        "projected on the cluster",
        || async { (app.summary("learner-0").await["ruby"]["runs"] == "3").then_some(()) },
    )
    .await;
    app.caught_up().await;
    for learner in 0..10 {
        let summary = app.summary(&format!("learner-{learner}")).await;
        assert_eq!(summary["ruby"]["runs"], "3", "{summary}");
    }
    let key = service();
    let (_, unique) = app
        .get(
            "/3.0/projects/learntrail/queries/count_unique?event_collection=shim.ruby_run&timeframe=this_2_days&target_property=actor",
            Some(&key),
        )
        .await;
    assert_eq!(unique, json!({"result": 10}));
    let (_, total) = app
        .get(
            "/3.0/projects/learntrail/queries/count?event_collection=shim.ruby_run&timeframe=this_2_days&group_by=rubyRun.error.className",
            Some(&key),
        )
        .await;
    assert_eq!(
        total,
        json!({"result": [{"rubyRun.error.className": "NameError", "result": 10},
                          {"rubyRun.error.className": null, "result": 20}]}),
    );
    app.stop().await;
    drop(cluster);
}
