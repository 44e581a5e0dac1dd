//! An in-process OTLP trace receiver on `127.0.0.1:0`: the collector's gRPC service
//! (`TraceServiceServer`) or the HTTP/protobuf endpoint (`POST /v1/traces`, decoded with
//! prost). It keeps every span it is sent, so tests assert on what a real collector would get.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use ganglion_gateway::config::{OtlpProtocol, TracingSection};
use ganglion_gateway::telemetry::TelemetryGuard;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant, timeout, timeout_at};

use crate::patience;

/// One span as the collector got it; ids in lowercase hex, `parent_span_id` empty for a root.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// `service.name` of the resource the span came with.
    pub service: String,
    pub attributes: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    /// An attribute, or null when absent.
    pub fn attr(&self, key: &str) -> Value {
        self.attributes.get(key).cloned().unwrap_or(Value::Null)
    }
}

/// What the receiver has been sent so far.
#[derive(Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    arrived: Arc<Notify>,
}

impl Collected {
    fn record(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| any(kv.value.as_ref()))
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        service: service.clone(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans.lock().expect("spans").extend(received);
        self.arrived.notify_waiters();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any(kv.value.as_ref())))
        .collect()
}

fn any(value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), any(kv.value.as_ref())))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(b)),
        Some(other) => Value::from(format!("{other:?}")),
    }
}

#[tonic::async_trait]
impl TraceService for Collected {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// The base URL to configure as `tracing.otlp_endpoint`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    collected: Collected,
    server: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl OtlpReceiver {
    /// The OTLP/gRPC collector service.
    pub async fn grpc() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let collected = Collected::default();
        let service = TraceServiceServer::new(collected.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            protocol: OtlpProtocol::Grpc,
            collected,
            server,
        }
    }

    /// The OTLP/HTTP endpoint with protobuf bodies.
    pub async fn http() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let collected = Collected::default();
        let sink = collected.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        sink.record(request);
                        (
                            [(header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
                }
            }),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            protocol: OtlpProtocol::HttpProtobuf,
            collected,
            server,
        }
    }

    /// Points a node's span export at this receiver.
    pub fn export_to(&self, tracing: &mut TracingSection) {
        tracing.otlp_endpoint = Some(self.endpoint.clone());
        tracing.otlp_protocol = self.protocol;
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected.spans.lock().expect("spans").clone()
    }

    /// Flushes `telemetry` until the spans received satisfy `done`, or panics after
    /// [`patience`] naming `what`. Spans end a moment after the frames they caused are sent,
    /// so one flush may come too early; each round waits for the next export or 50 ms.
    pub async fn wait_for(
        &self,
        telemetry: &TelemetryGuard,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + patience();
        loop {
            let arrived = self.collected.arrived.notified();
            telemetry.flush().await;
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() >= deadline {
                panic!("the receiver never got {what}; it got {spans:#?}");
            }
            let _ = timeout_at(deadline, timeout(Duration::from_millis(50), arrived)).await;
        }
    }
}
