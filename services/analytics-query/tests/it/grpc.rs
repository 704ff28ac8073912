use learntrail_analytics_query::pb::analytics_query_client::AnalyticsQueryClient;
use learntrail_proto::v1::{CountRequest, Filter, OrderBy};
use tokio_stream::StreamExt as _;
use tonic::Request;

use crate::helpers::*;

#[tokio::test]
async fn grpc_serves_health_reflection_and_counts() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "learntrail.v1.AnalyticsQuery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // reflection, v1alpha (grpcurl's first choice) and v1
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(answer)) = answers.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"learntrail.v1.AnalyticsQuery".to_string()),
        "{names:?}"
    );
    {
        use tonic_reflection::pb::v1::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest,
        };
        let mut v1 = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "learntrail.v1.AnalyticsQuery".into(),
            )),
        };
        let mut answers = v1
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(answers.next().await, Some(Ok(_))));
    }

    // Count over gRPC gives Keen's answer
    let h = this_hour();
    app.publish(&[
        ruby("g1", "a", h - 10 * 60_000, 1, "TypeError", 10),
        ruby("g2", "b", h - 9 * 60_000, 1, "TypeError", 20),
        ruby("g3", "b", h - 8 * 60_000, 0, "", 30),
    ])
    .await;
    app.caught_up().await;
    let mut client = AnalyticsQueryClient::new(channel);
    let mut request = Request::new(CountRequest {
        analysis: "sum".into(),
        collection: "shim.ruby_run".into(),
        target_property: "rubyRun.durationMs".into(),
        timeframe: "this_2_hours".into(),
        filters: vec![Filter {
            property_name: "actor".into(),
            operator: "eq".into(),
            property_value: Some(serde_json::from_value(serde_json::json!("b")).unwrap()),
        }],
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", service()).parse().unwrap(),
    );
    let answer = client.count(request).await.unwrap().into_inner();
    assert_eq!(
        serde_json::to_value(answer.result.unwrap())
            .unwrap()
            .as_f64(),
        Some(50.0)
    );
    // the top group, as a top-N chart asks it: runs per error class, the most first, one kept
    let top = |order_by: Vec<OrderBy>, limit: u32| {
        let mut request = Request::new(CountRequest {
            analysis: "count".into(),
            collection: "shim.ruby_run".into(),
            timeframe: "this_2_hours".into(),
            group_by: vec!["rubyRun.exitCode".into()],
            order_by,
            limit,
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", service()).parse().unwrap(),
        );
        request
    };
    let desc = vec![OrderBy {
        property_name: "result".into(),
        direction: "DESC".into(),
    }];
    let answer = client.count(top(desc, 1)).await.unwrap().into_inner();
    assert_eq!(
        serde_json::to_value(answer.result.unwrap()).unwrap(),
        serde_json::json!([{"rubyRun.exitCode": 1.0, "result": 2.0}])
    );
    let refused = client.count(top(Vec::new(), 1)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("order_by"), "{refused:?}");
    app.stop().await;
}
