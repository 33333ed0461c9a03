//! `kvnode status` and the REPL's `status`: the balancer's view of the
//! cluster (leader, epoch, and each replica's address, role, last LSN, lag
//! and health) as a table or as JSON.

use crate::msg::ClusterView;
use std::fmt::Write;

/// How far behind `r` is, in rows: against the leader's log when there is
/// one, else against the longest log heard of. `None` when never heard from.
fn lag(view: &ClusterView, i: usize) -> Option<u64> {
    let r = &view.replicas[i];
    r.heard_us_ago?;
    let reference = match view.leader.and_then(|l| view.replicas.iter().find(|v| v.id == l)) {
        Some(l) => l.status.last.lsn.0,
        None => {
            view.replicas.iter().filter(|v| v.heard_us_ago.is_some()).map(|v| v.status.last.lsn.0).max()?
        }
    };
    Some(reference.saturating_sub(r.status.last.lsn.0))
}

/// The first line: who leads.
pub fn headline(view: &ClusterView) -> String {
    match view.leader {
        Some(l) => format!("leader r{} in {} ({} replicas)", l.0, view.epoch, view.replicas.len()),
        None => format!("no leader ({} {}; {} replicas)", view.phase, view.epoch, view.replicas.len()),
    }
}

/// A table, one replica a line, ending with a newline.
pub fn table(view: &ClusterView) -> String {
    let mut rows =
        vec![["replica", "address", "role", "last lsn", "lag", "health", "last pong"].map(String::from)];
    for (i, r) in view.replicas.iter().enumerate() {
        let heard = r.heard_us_ago.is_some();
        rows.push([
            format!("r{}", r.id.0),
            printable(&r.addr),
            r.role(view.leader).to_string(),
            if heard { r.status.last.lsn.0.to_string() } else { "-".into() },
            lag(view, i).map_or("-".into(), |l| l.to_string()),
            r.health().to_string(),
            r.heard_us_ago.map_or("never".into(), |us| format!("{} ms ago", us / 1000)),
        ]);
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = headline(view);
    out.push('\n');
    for row in &rows {
        let mut line = String::new();
        for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
            if j + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One JSON object (no trailing newline): `phase`, `leader` (a number or
/// null), `epoch`, and `replicas`: `id`, `addr`, `role`, `last_lsn`,
/// `last_epoch`, `commit`, `applied`, `lag` (null when unknown), `health`,
/// `heard_ms_ago` (null: never).
pub fn json(view: &ClusterView) -> String {
    let mut out = String::new();
    let leader = view.leader.map_or("null".to_string(), |l| l.0.to_string());
    let _ = write!(
        out,
        "{{\"phase\":\"{}\",\"leader\":{leader},\"epoch\":{},\"replicas\":[",
        view.phase, view.epoch.0
    );
    for (i, r) in view.replicas.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let s = &r.status;
        let _ = write!(
            out,
            "{{\"id\":{},\"addr\":{},\"role\":\"{}\",\"last_lsn\":{},\"last_epoch\":{},\"commit\":{},\"applied\":{},\
             \"lag\":{},\"health\":\"{}\",\"heard_ms_ago\":{}}}",
            r.id.0,
            json_string(&r.addr),
            r.role(view.leader),
            s.last.lsn.0,
            s.last.epoch.0,
            s.commit.0,
            s.applied.0,
            lag(view, i).map_or("null".into(), |l| l.to_string()),
            r.health(),
            r.heard_us_ago.map_or("null".into(), |us| format!("{:.1}", us as f64 / 1000.0)),
        );
    }
    out.push_str("]}");
    out
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe to print on a terminal: control characters (escape, bell...)
/// shown escaped, never sent raw.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Phase, ReplicaView, Status};
    use crate::types::{Epoch, LogPos, Lsn, ReplicaId};

    fn view() -> ClusterView {
        let r = |id, lsn, leading: bool, heard: Option<u64>| ReplicaView {
            id: ReplicaId(id),
            addr: format!("127.0.0.1:808{id}"),
            heard_us_ago: heard,
            alive: heard.is_some_and(|h| h < 200_000),
            status: Status {
                last: LogPos { epoch: Epoch(2), lsn: Lsn(lsn) },
                leading: leading.then_some(Epoch(2)),
                ..Status::default()
            },
        };
        ClusterView {
            phase: Phase::Leading,
            leader: Some(ReplicaId(2)),
            epoch: Epoch(2),
            replicas: vec![r(1, 40, false, Some(900_000)), r(2, 42, true, Some(3_000)), r(3, 0, false, None)],
        }
    }

    #[test]
    fn table_names_leader_lag_and_health() {
        let t = table(&view());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "leader r2 in e2 (3 replicas)");
        assert!(lines[1].starts_with("replica  address"), "{t}");
        assert!(
            lines[2].contains("follower") && lines[2].contains(" 2 ") && lines[2].contains("down"),
            "{t}"
        );
        assert!(lines[3].contains("leader") && lines[3].contains("ok"), "{t}");
        assert!(lines[4].contains("unreachable") && lines[4].ends_with("never"), "{t}");
    }

    #[test]
    fn json_is_one_object() {
        let j = json(&view());
        assert!(
            j.starts_with("{\"phase\":\"leading\",\"leader\":2,\"epoch\":2,\"replicas\":[{\"id\":1,"),
            "{j}"
        );
        assert!(j.contains("\"lag\":null,\"health\":\"unreachable\",\"heard_ms_ago\":null}]}"), "{j}");
        assert_eq!(json_string("a\"b\u{7}"), "\"a\\\"b\\u0007\"");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[31mb\u{7}"), "a\\u{1b}[31mb\\u{7}");
    }
}
