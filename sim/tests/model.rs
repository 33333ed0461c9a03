use kvsim::model::{check, Bounds, Origin, Ticks};

#[test]
fn probe() {
    let cases: Vec<(Origin, usize, u32, u32)> = vec![
        (Origin::Elected, 10, 0, 0),
        (Origin::Settled, 12, 2, 0),
        (Origin::Elected, 10, 0, 99),
    ];
    for (o, d, crashes, rt) in cases {
        let mut b = Bounds::bug_a();
        b.origin = o;
        b.depth = d;
        b.max_replica_crashes = crashes;
        b.max_ticks = Ticks { balancer: 4, replicas: rt, clients: 0 };
        b.horizon_us = u64::MAX;
        let r = check(&b);
        eprintln!("{o:?} d{d} crashes {crashes} rticks {rt}: {} states {:?} found={}", r.states, r.elapsed, r.violation.is_some());
        if o == Origin::Settled { eprintln!("{r}"); }
    }
}
