//! Micro-benchmarks of the pure parts: decoding a job, packing jobs into
//! calls, and signing and verifying a UserSig. `cargo bench --bench micro`.

use std::hint::black_box;
use std::time::SystemTime;

use broadcast_worker::pipeline::batcher::Batcher;
use broadcast_worker::pipeline::job;
use broadcast_worker::pipeline::CallRules;
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn body(i: usize) -> Vec<u8> {
    format!(
        r#"{{"From_Account":"system","MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"job {i}: Player{} scored a goal"}}}}]}}"#,
        i % 997
    )
    .into_bytes()
}

fn decoding(c: &mut Criterion) {
    let one = body(42);
    let mut group = c.benchmark_group("job");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode a ~100-byte job", |b| {
        b.iter(|| {
            job::decode(
                black_box(&one),
                Some("id-42"),
                None,
                &CallRules::default(),
                SystemTime::now(),
            )
            .unwrap()
        })
    });
    group.finish();
}

fn merging(c: &mut Criterion) {
    let jobs: Vec<job::Job> = (0..1000)
        .map(|i| {
            job::decode(
                &body(i),
                Some(&format!("id-{i}")),
                None,
                &CallRules::default(),
                SystemTime::now(),
            )
            .unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("merge");
    group.throughput(Throughput::Elements(jobs.len() as u64));
    group.bench_function("pack 1000 jobs into full calls", |b| {
        b.iter_batched(
            || jobs.clone(),
            |jobs| {
                let mut batcher = Batcher::new();
                for job in jobs {
                    batcher.push(job, ());
                }
                let mut calls = 0;
                while let Some(batch) = batcher.take_batch(&CallRules::default()) {
                    black_box(&batch.body);
                    calls += 1;
                }
                calls
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let key = SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e");
    let claims = Claims {
        identifier: "administrator".into(),
        sdkappid: 1400000000,
        time: 1_764_000_000,
        expire: 86_400,
        userbuf: None,
    };
    let sig = usersig::sign(&key, &claims);
    let mut group = c.benchmark_group("usersig");
    group.bench_function("sign", |b| {
        b.iter(|| usersig::sign(black_box(&key), black_box(&claims)))
    });
    group.bench_function("verify", |b| {
        b.iter(|| {
            usersig::verify(
                black_box(sig.expose()),
                &key,
                1400000000,
                "administrator",
                1_764_000_100,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, decoding, merging, signing);
criterion_main!(benches);
