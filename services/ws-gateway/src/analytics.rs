//! `request` messages answered from analytics-query over gRPC, with the client's own bearer token,
//! so analytics-query applies its access rules (a student reads only their own learner).

use std::time::Duration;

use learntrail_analytics_query::pb::analytics_query_client::AnalyticsQueryClient;
use learntrail_proto::v1::{CompareToCohortRequest, GetLearnerSummaryRequest};
use serde_json::{Value, json};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};

use crate::protocol::{ErrorCode, Refusal, RequestMessage};

/// A lazily connected client: the gateway starts (and stays ready) while analytics-query is down.
#[derive(Debug, Clone)]
pub struct Analytics {
    client: AnalyticsQueryClient<Channel>,
}

impl Analytics {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow::anyhow!("ANALYTICS_GRPC_URL {url:?} is not a URL: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: AnalyticsQueryClient::new(channel),
        })
    }

    /// The response frame of `request` (without `seq`), or why there is none.
    pub async fn answer(&self, request: &RequestMessage, bearer: &str) -> Result<Value, Refusal> {
        let mut client = self.client.clone();
        match request.content.as_str() {
            "summary" => {
                let call = authorized(
                    GetLearnerSummaryRequest {
                        learner: request.user.clone(),
                    },
                    bearer,
                )?;
                let summary = client
                    .get_learner_summary(call)
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(json!({"type": "response", "content": "summary", "summary": summary}))
            }
            "comparison" => {
                let call = authorized(
                    CompareToCohortRequest {
                        learner: request.user.clone(),
                        course: request.course.clone(),
                        metric: request.metric.clone(),
                    },
                    bearer,
                )?;
                let comparison = client
                    .compare_to_cohort(call)
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(json!({"type": "response", "content": "comparison", "comparison": comparison}))
            }
            other => Err(Refusal::new(
                ErrorCode::InvalidField,
                format!("content: {other:?} is not one of summary, comparison"),
            )),
        }
    }
}

fn authorized<T>(message: T, bearer: &str) -> Result<Request<T>, Refusal> {
    let mut request = Request::new(message);
    let value = format!("Bearer {bearer}")
        .parse()
        .map_err(|_| Refusal::new(ErrorCode::AnalyticsRefused, "token is not a header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn refused(status: Status) -> Refusal {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Refusal::new(
                ErrorCode::AnalyticsUnavailable,
                format!("analytics are unavailable right now: {}", status.message()),
            )
        }
        _ => Refusal::new(ErrorCode::AnalyticsRefused, status.message().to_string()),
    }
}
