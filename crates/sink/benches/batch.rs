//! Hot path of the sink: Kafka message → RowBinary row → sealed batch.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ess_core::wire::{Millis, WireEvent};
use ess_sink::batch::{BatchLimits, Builder};
use ess_sink::encode::encode_row;
use serde_json::value::RawValue;

const ROWS: usize = 10_000;

fn messages() -> Vec<Vec<u8>> {
    (0..ROWS)
        .map(|i| {
            let props = RawValue::from_string(format!(
                r#"{{"path":"/products/{i}","referrer":"https://example.com/","screen":{{"w":1920,"h":1080}},"value":12.5}}"#
            ))
            .expect("valid JSON");
            WireEvent {
                id: uuid::Uuid::now_v7(),
                kind: "page_view".into(),
                source: "web".into(),
                timestamp: Millis(1_764_000_000_000 + i as i64),
                ingest_time: Millis(1_764_000_000_100 + i as i64),
                properties: &props,
                ..WireEvent::default()
            }
            .to_json()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let messages = messages();
    let mut group = c.benchmark_group("sink");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("decode_and_encode_rowbinary", |b| {
        let mut out = Vec::with_capacity(4 << 20);
        b.iter(|| {
            out.clear();
            for (offset, m) in messages.iter().enumerate() {
                let event = WireEvent::from_json(m).expect("valid message");
                let _ = encode_row(&mut out, &event, 0, 0, offset as i64);
            }
            black_box(out.len())
        })
    });
    group.bench_function("assemble_and_seal_batch", |b| {
        let limits = BatchLimits {
            rows: ROWS * 2,
            bytes: 64 << 20,
            max_wait: Duration::from_secs(60),
        };
        b.iter(|| {
            let mut builder = Builder::new(limits, None);
            let now = Instant::now();
            for (offset, m) in messages.iter().enumerate() {
                let event = WireEvent::from_json(m).expect("valid message");
                builder.push_event(&event, (offset % 8) as i32, offset as i64, now);
            }
            builder.seal(1_764_000_000_999, 0).map(|batch| batch.rows())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
