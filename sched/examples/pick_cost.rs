//! What one same-CPU vCPU switch costs the scheduler: `pick` then
//! `stopped(SliceEnd)` for a full slice, the kernel's loop between two
//! guests, repeated on one CPU.
//!
//! Count its instructions with callgrind, collecting only the measured
//! rounds:
//!
//! ```text
//! cargo build --release --example pick_cost -p sched
//! valgrind --tool=callgrind --toggle-collect='pick_cost::rounds' \
//!     --callgrind-out-file=/tmp/cg.out target/release/examples/pick_cost
//! callgrind_annotate /tmp/cg.out | head -30
//! ```
//!
//! The total divided by the rounds (printed) is the cost of one round.
//! Arguments: `[rounds] [runnable vCPUs] [blocked vCPUs] [timed]`, by
//! default 100000 rounds of 4 runnable vCPUs and none blocked; with
//! `timed` 1 the blocked vCPUs wait for a deadline that never comes in the
//! run instead of a wake-up. The kernel's scheduling bench
//! (`guest-images/sched`) is `100000 3 1`.

use std::hint::black_box;

use sched::{CpuId, Decision, Scheduler, StopCause, VcpuId};

const CPU: CpuId = CpuId(0);
/// 10 ms at Bochs's 10 MHz TSC, as in the kernel's bench.
const SLICE: u64 = 100_000;

/// One switch: pick the next vCPU, run it for its whole slice, report it.
fn round(s: &mut Scheduler, now: &mut u64) {
    match s.pick(CPU, *now) {
        Decision::Run { vcpu, slice, .. } => {
            *now += slice;
            black_box(s.stopped(CPU, vcpu, StopCause::SliceEnd, *now));
        }
        Decision::Idle { .. } => panic!("the CPU went idle"),
    }
}

/// The measured rounds (the function callgrind collects).
#[inline(never)]
fn rounds(s: &mut Scheduler, now: &mut u64, n: u64) {
    for _ in 0..n {
        round(black_box(&mut *s), now);
    }
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map_or(default, |a| a.parse().expect("a number"))
}

fn main() {
    let n = arg(1, 100_000);
    let runnable = u32::try_from(arg(2, 4)).expect("vCPU count");
    let blocked = u32::try_from(arg(3, 0)).expect("vCPU count");
    let until = (arg(4, 0) != 0).then_some(u64::MAX / 2);
    let mut s = Scheduler::new(1, SLICE).expect("scheduler");
    let mut now = 1_000_000;
    for id in 0..runnable + blocked {
        s.add(VcpuId(id), None).expect("add");
    }
    // Those to block run once and halt.
    for _ in 0..blocked {
        let Decision::Run { vcpu, .. } = s.pick(CPU, now) else {
            panic!("nothing to block");
        };
        now += 10;
        s.stopped(CPU, vcpu, StopCause::Blocked { until }, now);
    }
    // Warm up: every runnable vCPU has run a few turns.
    for _ in 0..u64::from(runnable) * 4 {
        round(&mut s, &mut now);
    }
    rounds(&mut s, &mut now, n);
    let slices: u64 = s.vcpus().map(|(_, st)| st.slices).sum();
    println!("{n} rounds; {slices} slices in all");
}
