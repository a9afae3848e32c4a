//! Channel round-trip benchmark (not a timed test): NOOP through zusd's per-CPU channel next to a
//! raw futex ping-pong measured in the same run.
//!
//! Rows:
//! - raw futex ping-pong between two threads on the same CPU (the floor for a sleeping hand-off);
//! - raw futex ping-pong across CPUs (what a cross-CPU wake costs);
//! - NOOP via the channel, 1 client thread, served by the ZT of the client's own CPU (P-CH1);
//! - NOOP via the channel, 2 client threads on 2 CPUs;
//! - NOOP handed to the ZT of the *other* CPU, with the client's bounded spin and without it.
//!
//! Run: `cargo bench -p zufs-tests --bench channel` (builds zusd and nullfs first via the
//! workspace build in scripts/test.sh; set ZUFS_BENCH_ITERS to change the iteration count).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, online_cpus, pin_current, plugin_dir};
use zus_api::ops::OpCode;
use zus_channel::shm::futex;
use zus_client::DataIn;
use zus_client::Relay;

fn iters() -> usize {
    std::env::var("ZUFS_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000)
}

/// Ping-pong between two threads pinned to `cpu_a` and `cpu_b` via futex words; mean round trip.
fn futex_pingpong(cpu_a: usize, cpu_b: usize, n: usize) -> Duration {
    let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let w2 = Arc::clone(&words);
    let t = std::thread::spawn(move || {
        let _ = pin_current(cpu_b);
        for i in 0..n {
            let want = u32::try_from(i % 1_000_000).unwrap_or(0) + 1;
            while w2[0].load(Ordering::Acquire) != want {
                futex::wait(&w2[0], want - 1, None);
            }
            w2[1].store(want, Ordering::Release);
            futex::wake(&w2[1], 1);
        }
    });
    let _ = pin_current(cpu_a);
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    for i in 0..n {
        let want = u32::try_from(i % 1_000_000).unwrap_or(0) + 1;
        words[0].store(want, Ordering::Release);
        futex::wake(&words[0], 1);
        while words[1].load(Ordering::Acquire) != want {
            futex::wait(&words[1], want - 1, None);
        }
    }
    let el = t0.elapsed();
    t.join().expect("ping thread");
    el / u32::try_from(n).unwrap_or(1)
}

/// Mean NOOP round trip from a thread pinned to `cpu`, sent to lane `lane` (None: own CPU).
fn noop(relay: &Relay, cpu: usize, lane: Option<usize>, n: usize) -> Duration {
    let _ = pin_current(cpu);
    let mut reply = [0u8; 64];
    let call = |reply: &mut [u8]| match lane {
        Some(l) => relay.op_on_lane(l, 0, OpCode::Noop, &[], DataIn::None, reply, None, None),
        None => relay.op(0, OpCode::Noop, &[], DataIn::None, reply, None, None),
    };
    for _ in 0..1000 {
        call(&mut reply).expect("warm-up noop");
    }
    let t0 = Instant::now();
    for _ in 0..n {
        call(&mut reply).expect("noop");
    }
    t0.elapsed() / u32::try_from(n).unwrap_or(1)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn start(dir: &Path, extra: &[&str]) -> Zusd {
    let plugins = plugin_dir(dir, &["nullfs"]);
    Zusd::start(dir, &plugins, extra)
}

fn main() {
    let n = iters();
    let ncpu = online_cpus();
    println!("# zufs channel benchmark: {n} round trips per row, {ncpu} CPU(s)");
    let raw_same = futex_pingpong(0, 0, n);
    let raw_cross = if ncpu > 1 { Some(futex_pingpong(0, 1, n / 10)) } else { None };

    let dir = TempDir::new("bench-chan");
    let z = start(&dir.0, &[]);
    let relay = Relay::connect(&z.socket, "bench").expect("connect");
    let one = noop(&relay, 0, None, n);
    let two = if ncpu > 1 {
        let r = &relay;
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(move || noop(r, 0, None, n));
            let b = s.spawn(move || noop(r, 1, None, n));
            (a.join().expect("t0"), b.join().expect("t1"))
        });
        Some((a + b) / 2)
    } else {
        None
    };
    let cross_spin = (ncpu > 1).then(|| noop(&relay, 0, Some(1), n / 4));
    drop(relay);
    drop(z);
    let dir2 = TempDir::new("bench-chan-nospin");
    let z2 = start(&dir2.0, &["--client-spin-ns", "0"]);
    let relay2 = Relay::connect(&z2.socket, "bench").expect("connect");
    let cross_sleep = (ncpu > 1).then(|| noop(&relay2, 0, Some(1), n / 20));
    drop(relay2);
    drop(z2);

    let ratio = |d: Duration| us(d) / us(raw_same);
    println!();
    println!("| path | mean round trip (µs) | ratio to raw same-CPU futex |");
    println!("|---|---|---|");
    println!("| raw futex ping-pong, same CPU | {:.2} | 1.00 |", us(raw_same));
    if let Some(d) = raw_cross {
        println!("| raw futex ping-pong, other CPU | {:.2} | {:.2} |", us(d), ratio(d));
    }
    println!("| channel NOOP, 1 client thread, own-CPU ZT | {:.2} | {:.2} |", us(one), ratio(one));
    if let Some(d) = two {
        println!("| channel NOOP, 2 client threads (mean per thread), own-CPU ZTs | {:.2} | {:.2} |", us(d), ratio(d));
    }
    if let Some(d) = cross_spin {
        println!("| channel NOOP to the other CPU's ZT, client spins 20 µs | {:.2} | {:.2} |", us(d), ratio(d));
    }
    if let Some(d) = cross_sleep {
        println!("| channel NOOP to the other CPU's ZT, no spin (futex sleep) | {:.2} | {:.2} |", us(d), ratio(d));
    }
    println!();
    println!(
        "target: channel NOOP at 1 thread <= 1.2x raw same-CPU futex: {}",
        if ratio(one) <= 1.2 { "MET" } else { "NOT MET" }
    );
}
