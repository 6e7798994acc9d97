//! Hot path shared by ingest and sink: the Kafka message format.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ess_core::wire::{Millis, WireEvent};
use serde_json::value::RawValue;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let props = RawValue::from_string(
        r#"{"path":"/products/42","referrer":"https://example.com/","screen":{"w":1920,"h":1080},"value":12.5}"#
            .to_owned(),
    )
    .expect("valid JSON");
    let event = WireEvent {
        id: uuid::Uuid::now_v7(),
        kind: "page_view".into(),
        source: "web".into(),
        timestamp: Millis(1_764_000_000_123),
        ingest_time: Millis(1_764_000_000_456),
        properties: &props,
        ..WireEvent::default()
    };
    let bytes = event.to_json();
    let mut group = c.benchmark_group("wire_event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("to_json", |b| b.iter(|| black_box(&event).to_json()));
    group.bench_function("from_json", |b| {
        b.iter(|| WireEvent::from_json(black_box(&bytes)).map(|e| e.timestamp))
    });
    group.bench_function("millis_to_rfc3339", |b| {
        b.iter(|| black_box(Millis(1_764_000_000_123)).to_rfc3339())
    });
    group.bench_function("millis_parse_rfc3339", |b| {
        b.iter(|| Millis::parse_rfc3339(black_box("2026-11-24T08:00:00.123Z")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
