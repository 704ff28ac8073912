use learntrail_analytics_query::pb::analytics_query_client::AnalyticsQueryClient;
use learntrail_proto::v1::{CompareToCohortRequest, GetLearnerSummaryRequest, ListCohortRequest};
use learntrail_runtime::auth::Role;
use tonic::{Code, Request, transport::Channel};

use crate::helpers::*;

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn summary_code(
    client: &mut AnalyticsQueryClient<Channel>,
    learner: &str,
    token: Option<&str>,
) -> Code {
    let request = with_token(
        GetLearnerSummaryRequest {
            learner: learner.into(),
        },
        token,
    );
    match client.get_learner_summary(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn students_read_themselves_instructors_their_courses() {
    let app = spawn_app().await;
    let h = this_hour();
    let mut other = ruby("o1", "b2", h - 60_000, 0, "", 1);
    other.context.as_mut().unwrap().course = "other-course".into();
    app.publish(&[ruby("x1", "b1", h - 60_000, 0, "", 1), other])
        .await;
    app.caught_up().await;
    let student = token("b1", Role::Student);
    let scoped = instructor_of(&["ruby-101"]);

    // HTTP
    let cases = [
        ("b1", None, 401),
        ("b1", Some(student.clone()), 200),
        ("b2", Some(student.clone()), 403),
        ("b1", Some(scoped.clone()), 200),
        ("b2", Some(scoped.clone()), 403),
        ("b2", Some(token("t", Role::Instructor)), 200),
        ("b2", Some(service()), 200),
    ];
    for (learner, token, want) in &cases {
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let (status, body) = app
            .get(
                &format!("/api/v1/learners/{learner}/summary"),
                auth.as_deref(),
            )
            .await;
        assert_eq!(status, *want, "{learner} {token:?}: {body}");
    }
    let (status, _) = app
        .get(
            "/api/v1/cohorts/ruby-101",
            Some(&format!("Bearer {student}")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get(
            "/api/v1/cohorts/other-course",
            Some(&format!("Bearer {scoped}")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get(
            "/api/v1/cohorts/ruby-101",
            Some(&format!("Bearer {scoped}")),
        )
        .await;
    assert_eq!(status, 200);

    // gRPC
    let mut client = app.grpc_client().await;
    assert_eq!(
        summary_code(&mut client, "b1", None).await,
        Code::Unauthenticated
    );
    assert_eq!(
        summary_code(&mut client, "b1", Some(&student)).await,
        Code::Ok
    );
    assert_eq!(
        summary_code(&mut client, "b2", Some(&student)).await,
        Code::PermissionDenied
    );
    assert_eq!(
        summary_code(&mut client, "b2", Some(&scoped)).await,
        Code::PermissionDenied
    );
    assert_eq!(
        summary_code(&mut client, "b2", Some(&service())).await,
        Code::Ok
    );
    let denied = client
        .list_cohort(with_token(
            ListCohortRequest {
                course: "ruby-101".into(),
            },
            Some(&student),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn a_learner_is_placed_within_their_cohort() {
    let app = spawn_app().await;
    let h = this_hour();
    // learners c1..c5 with 1..5 runs; c4 has 4: 3 below, itself equal → (3 + 0.5) / 5
    let mut events = Vec::new();
    for learner in 1..=5 {
        for run in 0..learner {
            events.push(ruby(
                &format!("c{learner}-{run}"),
                &format!("c{learner}"),
                h - 60_000 * (run + 1),
                0,
                "",
                1,
            ));
        }
    }
    events.push(snapshot(
        "nb-c1",
        "c1",
        h - 1_000,
        1,
        &[("q1", 1, 1.0), ("q2", 2, 0.0)],
    ));
    app.publish(&events).await;
    app.caught_up().await;
    let mut client = app.grpc_client().await;
    let request = CompareToCohortRequest {
        learner: "c4".into(),
        course: "ruby-101".into(),
        metric: "ruby_runs".into(),
    };
    let out = client
        .compare_to_cohort(with_token(request, Some(&token("c4", Role::Student))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.value, 4.0);
    assert_eq!(out.cohort_size, 5);
    assert_eq!(out.percentile_rank, 70.0);
    assert_eq!(out.deciles.len(), 11);
    assert_eq!(
        (out.deciles[0], out.deciles[5], out.deciles[10]),
        (1.0, 3.0, 5.0)
    );
    assert!((out.deciles[1] - 1.4).abs() < 1e-9);
    // no one compares with a cohort they may not see: a course the student is not in (where
    // a cohort of one would give away its member's value), or outside an instructor's courses
    // ... nor a student whose token names other courses, whatever their events named
    let enrolled_elsewhere = limited_to("c4", "student", &["ruby-102"]);
    let denied = [
        ("c4", "other-course", token("c4", Role::Student)),
        ("c4", "other-course", instructor_of(&["ruby-101"])),
        ("c4", "ruby-101", enrolled_elsewhere),
    ];
    for (learner, course, token) in denied {
        let request = CompareToCohortRequest {
            learner: learner.into(),
            course: course.into(),
            metric: "ruby_runs".into(),
        };
        let code = client
            .compare_to_cohort(with_token(request, Some(&token)))
            .await
            .map(|_| ())
            .unwrap_err()
            .code();
        assert_eq!(code, Code::PermissionDenied, "{learner} in {course}");
        let (status, body) = app
            .get(
                &format!("/api/v1/learners/{learner}/compare?course={course}&metric=ruby_runs"),
                Some(&format!("Bearer {token}")),
            )
            .await;
        assert_eq!(status, 403, "{body}");
    }

    // the progress table over HTTP
    let (status, table) = app
        .get(
            "/api/v1/cohorts/ruby-101",
            Some(&format!("Bearer {}", service())),
        )
        .await;
    assert_eq!(status, 200, "{table}");
    assert_eq!(table["problems"], serde_json::json!(["hw1/q1", "hw1/q2"]));
    let rows = table["learners"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["learner"], "c1");
    assert_eq!(
        rows[0]["statuses"],
        serde_json::json!(["STATUS_PASSED", "STATUS_FAILED"])
    );
    assert_eq!(rows[0]["completion"], 0.5);
    app.stop().await;
}
