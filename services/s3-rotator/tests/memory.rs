//! Memory while a big segment is stored: every allocation is counted, and the peak above the
//! starting point must stay under a bound that does not depend on the segment's size.
//! `SEGMENT_MIB` sets the segment's size (default 256, the `ROTATE_MAX_BYTES` default); the
//! segment goes to a real S3 server (Garage) in 8 MiB parts.
#![allow(unsafe_code)] // the counting allocator

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{BufWriter, Write as _},
    sync::atomic::{AtomicUsize, Ordering},
};

use clap::Parser as _;
use learntrail_s3_rotator::{Config, seqs::SeqSet, store::Store, uploader::store_segment};
use learntrail_testkit::{GarageServer, garage};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: usize = 1 << 20;
/// The bound: three 8 MiB parts in flight plus buffers, whatever the segment's size.
const BOUND: usize = 48 * MIB;

/// A sealed segment of about `bytes`, events with varied text so gzip leaves a good part of it.
fn write_segment(path: &std::path::Path, bytes: usize) -> SeqSet {
    let mut out = BufWriter::new(std::fs::File::create(path).unwrap());
    let (mut written, mut seq, mut seqs) = (0, 1u64, SeqSet::default());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while written < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let line = format!(
            "{seq}\t$JS.ACK.EVENTS.s3-rotator.1.{seq}.{seq}.0.0\t{{\"id\":\"{state:016x}{seq:010}\",\"source\":\"lms\",\"kind\":\"video\",\"actor\":\"learner-{}\",\"payload\":{{\"courseSlug\":\"c{:x}\",\"noise\":\"{:x}{:x}\"}}}}\n",
            state % 5000,
            state >> 40,
            state.rotate_left(17),
            state.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        out.write_all(line.as_bytes()).unwrap();
        written += line.len();
        seqs.insert(seq);
        seq += 1;
    }
    out.flush().unwrap();
    seqs
}

#[tokio::test]
async fn storing_a_big_segment_stays_under_a_fixed_memory_bound() {
    let mib: usize = std::env::var("SEGMENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let server = GarageServer::start();
    server.create_bucket("memory");
    let config = Config::parse_from([
        "s3-rotator",
        "--s3-bucket",
        "memory",
        "--s3-endpoint",
        &server.endpoint(),
        "--s3-region",
        garage::REGION,
        "--s3-path-style",
        "--aws-access-key-id",
        garage::ACCESS_KEY_ID,
        "--aws-secret-access-key",
        garage::SECRET_ACCESS_KEY,
    ]);
    let store = Store::from_args(&config.store).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join("lms__2026-11-24__16__00000000000000000001.sealed");
    let seqs = write_segment(&path, mib * MIB);
    let key = format!("events/memory-{}.ndjson.gz", seqs.digest());
    store.check().await.unwrap(); // the client's connection pool is set up before counting
    let start = CURRENT.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let size = store_segment(&store, &path, &key, 3).await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - start;
    println!(
        "stored a {mib} MiB segment ({} events) as a {:.1} MiB object; peak heap above the start: {:.1} MiB (bound {} MiB)",
        seqs.len(),
        size as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        BOUND / MIB
    );
    assert!(
        size > 16 * MIB as u64 || mib < 64,
        "several parts: a multipart upload"
    );
    assert!(peak < BOUND, "peak {peak} bytes");
    assert!(store.exists(&key).await.unwrap());
}
