//! `kvsim replay` on small recordings made here with the runtime's own
//! recorder: a faithful one replays cleanly; one with a recorded effect
//! changed is reported as a divergence at that input; a cut-short tail is
//! tolerated; garbage is an error naming the file and offset.

use kvsim::replay::{replay, replay_with_timeline};
use kvstore::balancer::Balancer;
use kvstore::runtime::record::{self, Entry, Fx, Recorder};
use kvstore::types::{ClientId, Lsn, Op, ReadMode, RequestId};
use kvstore::{ClusterConfig, Msg, NodeId, Outbox, Time};
use std::path::Path;

/// A balancer's life: 30 ticks 10 ms apart (pings go out), and one client
/// request; every tick ends a pass of the node loop (one record).
fn record_balancer(dir: &Path) {
    let cfg = ClusterConfig::new(3, 1);
    let start = Time(1_000);
    let mut b = Balancer::new(cfg.clone(), start, 42);
    let mut rec = Recorder::balancer(Some(dir), &cfg, start, 42).unwrap();
    let mut out = Outbox::new();
    for i in 1..=30u64 {
        let now = Time(1_000 + i * 10_000);
        rec.tick(now, &mut out, |out| b.on_tick(now, out));
        if i == 10 {
            let from = NodeId::Client(ClientId(77));
            let msg = Msg::Request {
                id: RequestId { client: ClientId(77), seq: 1 },
                attempt: 1,
                op: Op::Set { key: "k".into(), value: "v".into() },
                read: ReadMode::Session,
                min_lsn: Lsn(0),
            };
            rec.message(now, from, msg, &mut out, |m, out| b.on_message(now, from, m, out));
        }
        out.effects.clear();
        rec.flush();
    }
}

fn only_file(dir: &Path) -> std::path::PathBuf {
    let files = record::list_files(&dir.join("lb")).unwrap();
    assert_eq!(files.len(), 1);
    files[0].1.clone()
}

#[test]
fn a_faithful_recording_replays_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    record_balancer(dir.path());
    let r = replay(dir.path()).unwrap();
    let text = r.text();
    assert!(r.divergences.is_empty(), "{text}");
    assert_eq!(r.exit_status(), 0, "{text}");
    assert!(text.contains("lb: 1 life, 31 inputs"), "{text}");
    assert!(text.contains("stopped cleanly"), "{text}");
    // No leader yet: the balancer answers `unavailable` at once.
    assert_eq!((r.ops_failed, r.ops_unfinished), (1, 0), "{text}");
}

#[test]
fn a_changed_effect_is_reported_as_a_divergence() {
    let dir = tempfile::tempdir().unwrap();
    record_balancer(dir.path());
    let path = only_file(dir.path());
    let f = record::read_file(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // Records, by offset: the last entry of each, and where it ends.
    let mut offsets: Vec<u64> = f.entries.iter().map(|(at, _)| *at).collect();
    offsets.dedup();
    let mut steps_before = 0;
    let mut target = None;
    for (i, at) in offsets.iter().enumerate() {
        let in_record: Vec<&Entry> = f.entries.iter().filter(|(o, _)| o == at).map(|(_, e)| e).collect();
        let steps = in_record.iter().filter(|e| matches!(e, Entry::Step(..))).count();
        if let Some(Entry::Step(_, fx)) = in_record.last() {
            if matches!(fx.last(), Some(Fx::Send { .. })) {
                let end = offsets.get(i + 1).map_or(bytes.len(), |n| *n as usize);
                target = Some((*at as usize, end, steps_before + steps));
                break;
            }
        }
        steps_before += steps;
    }
    let (at, end, input) = target.expect("a pass that ends with a send");
    // The last byte of the record is the end of the last send's crc
    // (a varint): flip its lowest bit, and fix the record's own checksum.
    bytes[end - 1] ^= 1;
    let crc = crc32c::crc32c(&bytes[at + record::RECORD_HEADER_BYTES..end]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let r = replay(dir.path()).unwrap();
    let text = r.text();
    assert_eq!(r.exit_status(), 1, "{text}");
    let d = &r.divergences[0];
    assert_eq!((d.node, d.life, d.input), (NodeId::Balancer, 1, input), "{text}");
    assert!(text.contains("DIVERGENCE at lb life 1"), "{text}");
    assert!(d.expected.as_deref().is_some_and(|e| e.starts_with("send Ping to r")), "{text}");
    assert!(d.got.as_deref().is_some_and(|g| g.contains("Ping")), "{text}");
    assert_eq!(d.file, path, "{text}");
    // On the page, a violation where it happened.
    let (_, t) = replay_with_timeline(dir.path()).unwrap();
    let v = t.violations.iter().find(|v| v.checker == "divergence").expect("the divergence");
    assert!(v.text.starts_with("DIVERGENCE at lb life 1") && v.t < t.end_us, "{v:?}");
}

#[test]
fn a_torn_tail_stops_the_replay_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    record_balancer(dir.path());
    let path = only_file(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    // Killed mid-write: the End record and part of the last pass are gone.
    std::fs::write(&path, &bytes[..bytes.len() - 12]).unwrap();
    let r = replay(dir.path()).unwrap();
    let text = r.text();
    assert_eq!(r.exit_status(), 0, "{text}");
    assert!(text.contains("killed mid-write"), "{text}");
    assert!(text.contains("lb: 1 life, 30 inputs"), "{text}");
}

#[test]
fn garbage_and_missing_recordings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = replay(&dir.path().join("nothing")).unwrap_err();
    assert!(e.to_string().contains("cannot read the recording"), "{e}");
    assert!(replay(dir.path()).unwrap_err().to_string().contains("no node recordings"));
    record_balancer(dir.path());
    let path = only_file(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[record::HEADER_BYTES + 30] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let e = replay(dir.path()).unwrap_err();
    assert_eq!(e.path, path);
    assert_eq!(e.offset, Some(record::HEADER_BYTES as u64), "{e}");
    bytes[8] = 200; // a newer format
    std::fs::write(&path, &bytes).unwrap();
    let e = replay(dir.path()).unwrap_err();
    assert!(e.to_string().contains("newer than this kvsim reads"), "{e}");
}

/// `kvsim replay --html`'s data: the balancer's lane, the replicas its
/// configuration names (not recorded: its pings to them reach no one
/// recorded, drawn as such), the client it heard from with its operation,
/// and the end of its life; a divergence is a violation on the page.
#[test]
fn the_replay_becomes_a_timeline() {
    let dir = tempfile::tempdir().unwrap();
    record_balancer(dir.path());
    let (r, t) = replay_with_timeline(dir.path()).unwrap();
    assert!(t.recorded && t.summary == r.text());
    let lanes: Vec<(&str, &str)> = t.lanes.iter().map(|l| (l.name.as_str(), l.kind)).collect();
    assert_eq!(
        lanes,
        [("lb", "balancer"), ("r1", "replica"), ("r2", "replica"), ("r3", "replica"), ("c77", "client")]
    );
    assert_eq!(t.lanes[4].read.as_deref(), Some("session"));
    assert!(t.messages.iter().any(|m| m.kind == "Ping" && m.from == 0 && m.line.contains("is not recorded")));
    let request = t.messages.iter().find(|m| m.kind == "Request").expect("the client's request");
    assert_eq!((request.from, request.to, request.fate), (4, 0, "delivered"));
    assert!(t.messages.iter().any(|m| m.kind == "Response" && m.from == 0 && m.to == 4));
    assert!(t.messages.windows(2).all(|w| w[0].sent <= w[1].sent));
    assert_eq!(t.ops.len(), 1);
    assert_eq!((t.ops[0].lane, t.ops[0].client, t.ops[0].outcome), (4, 77, "failed"));
    assert!(t.spans.iter().any(|s| s.lane == 0 && s.state == Some("searching")));
    assert!(t.marks.iter().any(|m| m.lane == Some(0) && m.line.contains("stopped cleanly")));
    assert!(t.violations.is_empty());
    assert!(t.about.contains("first 32 clients"), "{}", t.about);
    let page = kvsim::html::page(&t);
    assert!(page.contains("<title>kvsim replay: "), "{page:.300}");

    // Killed mid-write: a crash mark where its life ends.
    let path = only_file(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 12]).unwrap();
    let (_, t) = replay_with_timeline(dir.path()).unwrap();
    assert!(
        t.marks.iter().any(|m| m.kind == "crash" && m.line.contains("killed mid-write")),
        "{:?}",
        t.marks
    );
}
