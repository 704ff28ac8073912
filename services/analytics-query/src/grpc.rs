//! `learntrail.v1.AnalyticsQuery` over gRPC (tonic), with the gRPC health service and server
//! reflection (v1 and v1alpha: grpcurl and many clients still ask v1alpha).

use learntrail_proto::{
    time,
    v1::{
        CohortComparison, CohortTable, CompareToCohortRequest, CountRequest, CountResponse,
        GetLearnerSummaryRequest, GetLearnerTimelineRequest, LearnerSummary, LearnerTimeline,
        ListCohortRequest,
    },
};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use crate::{
    access::Denied,
    api::{Api, QueryError},
    keen::query::Params,
    pb::analytics_query_server::{AnalyticsQuery, AnalyticsQueryServer},
};

/// The encoded descriptors of analytics.proto and its imports (for reflection).
pub const DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/analytics_descriptors.bin"));

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Denied(Denied::Unauthenticated(m)) => Status::unauthenticated(m),
            QueryError::Denied(Denied::Forbidden(m)) => Status::permission_denied(m),
            QueryError::BadRequest(m) => Status::invalid_argument(m),
            QueryError::Keen(e) if e.status == 404 => Status::not_found(e.message),
            QueryError::Keen(e) => Status::invalid_argument(e.message),
            QueryError::Unavailable(e) => Status::unavailable(format!("redis: {e}")),
        }
    }
}

#[derive(Debug, Clone)]
struct Service(Api);

impl Service {
    fn caller<T>(&self, request: &Request<T>) -> Result<crate::access::Caller, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        Ok(self.0.caller(header)?)
    }
}

#[tonic::async_trait]
impl AnalyticsQuery for Service {
    async fn get_learner_summary(
        &self,
        request: Request<GetLearnerSummaryRequest>,
    ) -> Result<Response<LearnerSummary>, Status> {
        let caller = self.caller(&request)?;
        let summary = self
            .0
            .summary(&caller, &request.get_ref().learner, "grpc")
            .await?;
        Ok(Response::new(summary))
    }

    async fn get_learner_timeline(
        &self,
        request: Request<GetLearnerTimelineRequest>,
    ) -> Result<Response<LearnerTimeline>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let before = r
            .before
            .as_ref()
            .and_then(time::to_datetime)
            .map(crate::summary::before_ms);
        let page = self
            .0
            .timeline(&caller, &r.learner, before, r.limit, "grpc")
            .await?;
        Ok(Response::new(page))
    }

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<CountResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let params = params_of(r)?;
        let body = self.0.count(&caller, &r.analysis, &params, "grpc").await?;
        // Keen's body, `{"result": ...}`, read straight into the message's JSON value
        #[derive(serde::Deserialize)]
        struct Body<T> {
            result: T,
        }
        let Body { result } =
            serde_json::from_slice(&body).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(CountResponse {
            result: Some(result),
        }))
    }

    async fn compare_to_cohort(
        &self,
        request: Request<CompareToCohortRequest>,
    ) -> Result<Response<CohortComparison>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let out = self
            .0
            .compare(&caller, &r.learner, &r.course, &r.metric, "grpc")
            .await?;
        Ok(Response::new(out))
    }

    async fn list_cohort(
        &self,
        request: Request<ListCohortRequest>,
    ) -> Result<Response<CohortTable>, Status> {
        let caller = self.caller(&request)?;
        let out = self
            .0
            .cohort(&caller, &request.get_ref().course, "grpc")
            .await?;
        Ok(Response::new(out))
    }
}

/// A gRPC Count request as Keen parameters.
fn params_of(r: &CountRequest) -> Result<Params, Status> {
    let mut map = Map::new();
    map.insert("event_collection".into(), json!(r.collection));
    if !r.target_property.is_empty() {
        map.insert("target_property".into(), json!(r.target_property));
    }
    let timeframe = match serde_json::from_str::<Value>(&r.timeframe) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!(r.timeframe),
    };
    map.insert("timeframe".into(), timeframe);
    if !r.interval.is_empty() {
        map.insert("interval".into(), json!(r.interval));
    }
    if !r.group_by.is_empty() {
        map.insert("group_by".into(), json!(r.group_by));
    }
    if !r.timezone.is_empty() {
        map.insert("timezone".into(), json!(r.timezone));
    }
    let filters: Vec<Value> = r
        .filters
        .iter()
        .map(|f| {
            let value = f
                .property_value
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .unwrap_or(Value::Null);
            Ok(json!({"property_name": f.property_name, "operator": f.operator, "property_value": value}))
        })
        .collect::<Result<_, Status>>()?;
    if !filters.is_empty() {
        map.insert("filters".into(), Value::Array(filters));
    }
    if !r.order_by.is_empty() {
        let order_by: Vec<Value> = r
            .order_by
            .iter()
            .map(|o| json!({"property_name": o.property_name, "direction": o.direction}))
            .collect();
        map.insert("order_by".into(), Value::Array(order_by));
    }
    if r.limit > 0 {
        map.insert("limit".into(), json!(r.limit));
    }
    Ok(Params(map))
}

/// Serves the API, health and reflection on `listener` until `token` is cancelled.
pub async fn serve(
    api: Api,
    listener: tokio::net::TcpListener,
    token: learntrail_runtime::CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AnalyticsQueryServer<Service>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .build_v1alpha()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AnalyticsQueryServer::new(Service(api)))
        .serve_with_incoming_shutdown(incoming, async move { token.cancelled().await })
        .await?;
    Ok(())
}
