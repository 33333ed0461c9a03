use kvsim::model::{check, Bounds};

#[test]
fn probe() {
    for d in [6usize, 8, 10, 12] {
        let mut b = Bounds::cluster(d);
        b.progress = true;
        let r = check(&b);
        eprintln!("{r}");
    }
}
