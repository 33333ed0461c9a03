use kvsim::model::{check, Bounds};

#[test]
fn probe() {
    for (name, b) in Bounds::presets() {
        eprintln!("{name}: {b}");
        let r = check(&b);
        eprintln!("{r}");
    }
}
