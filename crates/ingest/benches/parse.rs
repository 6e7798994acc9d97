//! Hot path of ingest: reading and validating request bodies.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ess_ingest::client_event::{EventLimits, check_properties, parse_array, parse_single};
use std::hint::black_box;

const LIMITS: EventLimits = EventLimits {
    max_type_len: 128,
    max_properties_bytes: 32 * 1024,
    max_depth: 32,
    max_batch_events: 10_000,
};

fn event(i: usize) -> String {
    format!(
        r#"{{"id":"0193a5b2-7c1e-7d40-8a4b-{i:012x}","type":"page_view","timestamp":"2026-11-24T08:00:00.123Z","source":"web","properties":{{"path":"/products/{i}","referrer":"https://example.com/","session":"s-{i}","screen":{{"w":1920,"h":1080}},"tags":["a","b","c"],"value":12.5}}}}"#
    )
}

fn bench(c: &mut Criterion) {
    let one = event(1);
    let batch = format!("[{}]", (0..100).map(event).collect::<Vec<_>>().join(","));
    // What is measured must be the successful path: a refusal is much cheaper.
    let parsed = parse_single(&one, &LIMITS).expect("the event is valid");
    assert_eq!(parsed.kind, "page_view");
    assert!(parsed.id.is_some() && parsed.timestamp.is_some());
    assert_eq!(
        parse_array(&batch, &LIMITS)
            .expect("the batch is valid")
            .len(),
        100
    );

    let mut group = c.benchmark_group("ingest_parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_event", |b| {
        b.iter(|| {
            let event = parse_single(black_box(&one), &LIMITS).expect("valid");
            event.kind.len()
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_of_100", |b| {
        b.iter(|| {
            let events = parse_array(black_box(&batch), &LIMITS).expect("valid");
            assert_eq!(events.len(), 100);
            events.len()
        })
    });
    group.finish();

    let props = parsed.properties.expect("has properties");
    let mut group = c.benchmark_group("ingest_properties");
    group.throughput(Throughput::Bytes(props.get().len() as u64));
    group.bench_function("check_properties", |b| {
        b.iter(|| check_properties(black_box(props), &LIMITS).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
