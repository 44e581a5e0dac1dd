//! Query routing over 1 k, 10 k and 100 k registered clients: the indexed match set against a
//! plain full scan of the same registry, for a selective query (one match) and a broad one
//! (half the clients match).
//!
//! Run: `cargo bench -p ganglion-core --bench routing`.

use std::sync::Arc;

use divan::Bencher;
use ganglion_core::frame::Encoding;
use ganglion_core::metadata::{Metadata, MetadataLimits, ReservedValues};
use ganglion_core::query::{Query, QueryLimits};
use ganglion_core::registry::{ClientRecord, Registry};
use ganglion_core::session::{Discard, Outbox};
use ganglion_core::{Map, Value};

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[1_000, 10_000, 100_000];
const REGIONS: [&str; 4] = ["eu-west", "eu-north", "us-east", "ap-south"];

fn entry(ty: &str, value: Value) -> Value {
    Value::Object(Map::from([
        ("type".to_owned(), Value::from(ty)),
        ("value".to_owned(), value),
    ]))
}

/// `n` clients of application `svc`, each with a unique `id`, one of four regions, a load in
/// 0..100 and a version.
fn registry(n: usize) -> Registry {
    let mut registry = Registry::new("bench");
    let outbox: Arc<dyn Outbox> = Arc::new(Discard);
    for i in 0..n {
        let metadata = Value::Object(Map::from([
            ("id".to_owned(), entry("integer", Value::from(i as i64))),
            (
                "region".to_owned(),
                entry("string", Value::from(REGIONS[i % 4])),
            ),
            (
                "load".to_owned(),
                entry("integer", Value::from((i % 100) as i64)),
            ),
            (
                "version".to_owned(),
                entry("version", Value::from(format!("1.{}.0", i % 20))),
            ),
        ]));
        let metadata = Metadata::initial(
            &metadata,
            ReservedValues {
                last_heartbeat_time: 0,
                restricted: false,
                encoding: Encoding::Json,
                ip: Some("127.0.0.1".into()),
                namespace: Value::Null,
                receive_client_updates: false,
            },
            &MetadataLimits::default(),
        )
        .expect("valid metadata");
        let record = ClientRecord {
            application_id: "svc".into(),
            client_id: format!("c{i}"),
            node: Arc::from("bench"),
            restricted: false,
            receive_client_updates: false,
            socket_ip: None,
            proxy_address: None,
            metadata,
            outbox: outbox.clone(),
            conn_id: i as u64,
        };
        registry.register(record, |_| {}).expect("unique ids");
    }
    registry
}

fn query(json: &str) -> Query {
    let value: Value = serde_json::from_str(json).expect("JSON");
    Query::parse(&value, QueryLimits::default()).expect("valid query")
}

/// One client: `id == n/2` and a region condition.
fn selective(n: usize) -> Query {
    query(&format!(
        r#"{{"application":"svc","ops":[{{"path":"/region","op":"$in","to":{{"value":["eu-west","eu-north","us-east","ap-south"]}}}},{{"path":"/id","op":"$eq","to":{{"value":{}}}}}]}}"#,
        n / 2
    ))
}

/// Half the clients: `load < 50`.
fn broad() -> Query {
    query(r#"{"application":"svc","ops":[{"path":"/load","op":"$lt","to":{"value":50}}]}"#)
}

#[divan::bench(args = SIZES, sample_count = 30)]
fn selective_indexed(bencher: Bencher, n: usize) {
    let registry = registry(n);
    let q = selective(n);
    assert_eq!(registry.match_set(&q).len(), 1);
    bencher.bench_local(|| registry.match_set(divan::black_box(&q)));
}

#[divan::bench(args = SIZES, sample_count = 30)]
fn selective_full_scan(bencher: Bencher, n: usize) {
    let registry = registry(n);
    let q = selective(n);
    assert_eq!(registry.match_set_scan(&q).len(), 1);
    bencher.bench_local(|| registry.match_set_scan(divan::black_box(&q)));
}

#[divan::bench(args = SIZES, sample_count = 30)]
fn broad_indexed(bencher: Bencher, n: usize) {
    let registry = registry(n);
    let q = broad();
    assert_eq!(registry.match_set(&q).len(), n / 2);
    bencher.bench_local(|| registry.match_set(divan::black_box(&q)));
}

#[divan::bench(args = SIZES, sample_count = 30)]
fn broad_full_scan(bencher: Bencher, n: usize) {
    let registry = registry(n);
    let q = broad();
    assert_eq!(registry.match_set_scan(&q).len(), n / 2);
    bencher.bench_local(|| registry.match_set_scan(divan::black_box(&q)));
}
