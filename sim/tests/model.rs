//! Exhaustive, bounded model checking of the real machines (`kvsim::model`):
//! the real code holds at small bounds, and bug A (an epoch promised twice),
//! re-planted, is found with a shortest counterexample.

use kvsim::model::{check, Bounds};

#[test]
fn bug_a_is_found_with_a_shortest_path() {
    let b = Bounds::bug_a();
    let r = check(&b);
    eprintln!("{b}\n{r}");
    assert!(r.violation.is_some(), "bug A not found: {r}");
}

#[test]
fn the_real_code_holds_in_the_election_bounds() {
    let b = Bounds::election();
    let r = check(&b);
    eprintln!("{b}\n{r}");
    assert!(r.violation.is_none(), "{r}");
    assert!(r.states > 1);
}

/// The larger presets: minutes in release builds.
#[test]
#[ignore]
fn the_real_code_holds_in_every_preset() {
    for (name, b) in Bounds::presets().into_iter().filter(|(n, _)| *n != "bug-a") {
        let r = check(&b);
        eprintln!("{name}: {b}\n{r}");
        assert!(r.violation.is_none(), "{name}: {r}");
    }
}
