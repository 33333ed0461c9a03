use kvsim::model::{check, Bounds, Origin, Ticks};

fn run(name: &str, b: &Bounds) {
    let r = check(b);
    eprintln!("{name}: {} states {:?} found={} depth {} {:?}", r.states, r.elapsed, r.violation.as_ref().map(|v| v.depth).unwrap_or(0), r.depth, r.levels);
}

#[test]
fn probe() {
    let mut a = Bounds::bug_a();
    a.origin = Origin::Elected;
    a.depth = 10;
    a.max_pongs = 0;
    a.max_ticks = Ticks { balancer: 4, replicas: 0, clients: 0 };
    a.horizon_us = u64::MAX;
    run("A tight", &a);
    let mut b = a.clone();
    b.max_replica_crashes = 1;
    b.max_duplicates = 1;
    b.max_pongs = 2;
    b.max_ticks = Ticks { balancer: 6, replicas: 2, clients: 0 };
    run("A loose", &b);
    for d in [8usize, 9, 10, 11] {
        let mut c = Bounds::small();
        c.origin = Origin::Elected;
        c.depth = d;
        c.max_pongs = 2;
        c.max_ticks = Ticks { balancer: 4, replicas: 2, clients: 2 };
        run(&format!("C d{d}"), &c);
    }
}
