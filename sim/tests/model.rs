use kvsim::model::{check, Bounds, Origin};

#[test]
fn probe() {
    for d in [8usize, 10] {
        let mut b = Bounds::bug_a();
        b.origin = Origin::Elected;
        b.depth = d;
        b.horizon_us = u64::MAX;
        b.progress = true;
        let r = check(&b);
        eprintln!("{r}");
        if r.violation.is_some() { break; }
    }
}
