//! The egress policy's cost per new flow: `Policy::decide` with 0, 10 and 1000 rules, beside a
//! plain first-match scan of the same 1000 rules, and what compiling 1000 rules costs (paid at
//! start and on each atomic replacement through the API).
//!
//! Rules and destinations come from a fixed pseudo-random sequence: networks of every prefix
//! length around a few busy areas, a third with ports, some per protocol, a tenth IPv6; the
//! destinations fall inside some rule networks and outside all, so lookups end at every depth.
//!
//! Run: `cargo bench --bench policy`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tapir::flow::policy::{Action, Cidr, Policy, PortRange, Proto, Rule};

/// splitmix64: the same rules and destinations on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Busy areas the rules and destinations cluster around, so networks nest and overlap.
const AREAS: [u32; 4] = [0x0a00_0000, 0xac10_0000, 0xc0a8_0000, 0xc633_6400];

fn random_v4(rng: &mut Random) -> u32 {
    let area = AREAS[rng.below(AREAS.len() as u64) as usize];
    match rng.below(4) {
        0 => rng.next() as u32,
        _ => area | (rng.next() as u32 & 0x000f_ffff),
    }
}

fn random_v6(rng: &mut Random) -> u128 {
    (0xfd00_u128 << 112) | u128::from(rng.next() & 0xffff_ffff)
}

fn rules(count: usize) -> Vec<(Action, Rule)> {
    let mut rng = Random(1000);
    (0..count)
        .map(|_| {
            let dst = if rng.below(10) == 0 {
                let len = 96 + rng.below(33) as u8;
                let addr = random_v6(&mut rng) & (u128::MAX << (128 - u32::from(len)));
                Cidr::V6 {
                    addr: Ipv6Addr::from(addr),
                    len,
                }
            } else {
                let len = 8 + rng.below(25) as u8;
                let addr = random_v4(&mut rng) & (u32::MAX << (32 - u32::from(len)));
                Cidr::V4 {
                    addr: Ipv4Addr::from(addr),
                    len,
                }
            };
            let ports = (rng.below(3) == 0).then(|| {
                let lo = 1 + rng.below(1024) as u16;
                PortRange {
                    lo,
                    hi: lo + rng.below(8) as u16,
                }
            });
            let proto = match rng.below(4) {
                0 => Some(Proto::Tcp),
                1 => Some(Proto::Udp),
                _ => None,
            };
            let action = if rng.below(2) == 0 {
                Action::Allow
            } else {
                Action::Deny
            };
            (action, Rule { dst, ports, proto })
        })
        .collect()
}

/// A power of two, so stepping through them costs a mask rather than a division.
const DESTINATIONS: usize = 4096;

fn destinations() -> Vec<SocketAddr> {
    let mut rng = Random(8);
    (0..DESTINATIONS)
        .map(|_| {
            let ip: IpAddr = if rng.below(10) == 0 {
                Ipv6Addr::from(random_v6(&mut rng)).into()
            } else {
                Ipv4Addr::from(random_v4(&mut rng)).into()
            };
            SocketAddr::new(ip, 1 + rng.below(1100) as u16)
        })
        .collect()
}

fn decide(c: &mut Criterion) {
    let dsts = destinations();
    let mut group = c.benchmark_group("decide");
    for count in [0, 10, 1000] {
        let mut policy = Policy::new(rules(count));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(count), |b| {
            b.iter(|| {
                next = (next + 1) & (DESTINATIONS - 1);
                policy.decide(Proto::Tcp, black_box(dsts[next]))
            })
        });
    }
    group.finish();

    // What the compiled tables save: the first-match scan the issue rules out.
    let scanned = rules(1000);
    let mut next = 0;
    c.bench_function("linear_scan/1000", |b| {
        b.iter(|| {
            next = (next + 1) & (DESTINATIONS - 1);
            let dst = black_box(dsts[next]);
            scanned.iter().position(|(_, r)| r.matches(Proto::Tcp, dst))
        })
    });
}

fn compile(c: &mut Criterion) {
    let rules = rules(1000);
    c.bench_function("compile/1000", |b| {
        b.iter(|| Policy::new(black_box(rules.clone())))
    });
}

criterion_group!(benches, decide, compile);
criterion_main!(benches);
