//! `DIR/replica-N.cluster`: the cluster a replica was started in, kept with
//! its data so that a restart cannot silently join it to another one.
//!
//! A small text file, written once (temporary file, fsync, rename, directory
//! fsync) and again only when the command line changes it:
//!
//! ```text
//! # kvstore replica 2: its cluster, from its command line. ...
//! format = 1
//! replica = 2
//! peers = 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083
//! sync_acks = 1
//! unsafe_failover = false
//! crc32c = 5f3c8a01
//! ```
//!
//! `crc32c` covers every byte before its line. At start a replica given
//! `--peers` compares them with the file: the number of replicas,
//! `sync_acks` and `unsafe_failover` may change only with `--reconfigure`
//! (they decide what a quorum is); addresses may change (a peer moved), and
//! the file is rewritten. A replica given no `--peers` uses the file.

use crate::config::ClusterConfig;
use crate::types::ReplicaId;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FORMAT: u32 = 1;

/// What a replica knows of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaCluster {
    pub replica: ReplicaId,
    /// Every replica's address, replica 1 first.
    pub peers: Vec<String>,
    pub sync_acks: usize,
    pub unsafe_failover: bool,
}

impl ReplicaCluster {
    /// Checks that `replica` is one of `peers` (1 to 255 of them, none empty).
    pub fn new(
        replica: ReplicaId,
        peers: Vec<String>,
        sync_acks: usize,
        unsafe_failover: bool,
    ) -> Result<ReplicaCluster, String> {
        let n = peers.len();
        crate::config::check_cluster(n, sync_acks).map_err(|e| format!("--peers: {e}"))?;
        if replica.0 == 0 || replica.0 as usize > n {
            return Err(format!("replica {} is not among the {n} replicas of --peers", replica.0));
        }
        if let Some(i) = peers.iter().position(|p| p.trim().is_empty() || p.contains(char::is_whitespace)) {
            return Err(format!("address {} of --peers is {:?}", i + 1, peers[i]));
        }
        Ok(ReplicaCluster { replica, peers, sync_acks, unsafe_failover })
    }

    /// The machines' configuration.
    pub fn config(&self) -> ClusterConfig {
        let mut c = ClusterConfig::new(self.peers.len() as u8, self.sync_acks);
        c.unsafe_failover = self.unsafe_failover;
        c
    }

    /// Where this replica's own entry says it listens.
    pub fn own_addr(&self) -> &str {
        &self.peers[self.replica.0 as usize - 1]
    }

    /// Whether `other` describes the same quorums (addresses aside).
    pub fn same_quorums(&self, other: &ReplicaCluster) -> bool {
        self.replica == other.replica
            && self.peers.len() == other.peers.len()
            && self.sync_acks == other.sync_acks
            && self.unsafe_failover == other.unsafe_failover
    }

    pub fn describe(&self) -> String {
        format!(
            "{} replicas ({}), sync_acks {}{}",
            self.peers.len(),
            self.peers.join(","),
            self.sync_acks,
            if self.unsafe_failover { ", unsafe_failover" } else { "" }
        )
    }

    pub fn to_text(&self) -> String {
        let n = self.replica.0;
        let mut s = format!(
            "# kvstore replica {n}: its cluster, from its command line. A replica refuses to start\n\
             # with another number of replicas, sync_acks or unsafe_failover unless given --reconfigure.\n\
             format = {FORMAT}\nreplica = {n}\npeers = {}\nsync_acks = {}\nunsafe_failover = {}\n",
            self.peers.join(","),
            self.sync_acks,
            self.unsafe_failover
        );
        let crc = crc32c::crc32c(s.as_bytes());
        s.push_str(&format!("crc32c = {crc:08x}\n"));
        s
    }

    pub fn parse(text: &str) -> Result<ReplicaCluster, String> {
        let at = text.rfind("crc32c = ").ok_or("no crc32c line")?;
        let want = text[at + 9..].trim();
        let crc = crc32c::crc32c(&text.as_bytes()[..at]);
        if want != format!("{crc:08x}") {
            return Err(format!("checksum mismatch (file says {want}, contents give {crc:08x})"));
        }
        let mut fields = std::collections::BTreeMap::new();
        for line in text[..at].lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once(" = ").ok_or_else(|| format!("unreadable line {line:?}"))?;
            fields.insert(k, v);
        }
        let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("no `{k}`"));
        let format: u32 = get("format")?.parse().map_err(|_| "bad `format`")?;
        if format != FORMAT {
            return Err(format!("format {format}; this kvnode reads format {FORMAT}"));
        }
        let replica: u8 = get("replica")?.parse().map_err(|_| "bad `replica`")?;
        let peers = get("peers")?.split(',').map(str::to_string).collect();
        let sync_acks = get("sync_acks")?.parse().map_err(|_| "bad `sync_acks`")?;
        let unsafe_failover = get("unsafe_failover")?.parse().map_err(|_| "bad `unsafe_failover`")?;
        ReplicaCluster::new(ReplicaId(replica), peers, sync_acks, unsafe_failover)
    }
}

pub fn path(dir: &Path, replica: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{}.cluster", replica.0))
}

/// The stored configuration, if there is one.
pub fn load(path: &Path) -> Result<Option<ReplicaCluster>, String> {
    match fs::read_to_string(path) {
        Ok(text) => ReplicaCluster::parse(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `c` to `path` durably (temporary file, fsync, rename, directory
/// fsync).
pub fn store(path: &Path, c: &ReplicaCluster) -> io::Result<()> {
    let tmp = path.with_extension("cluster.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(c.to_text().as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What a replica starts with: the command line's configuration (`cli`),
/// checked against and kept in `DIR/replica-N.cluster` when there is a data
/// directory; or the stored one when the command line gives none.
pub fn settle(
    dir: Option<&Path>,
    replica: ReplicaId,
    cli: Option<ReplicaCluster>,
    reconfigure: bool,
) -> Result<ReplicaCluster, String> {
    let Some(dir) = dir else {
        return cli.ok_or_else(|| {
            format!(
                "replica {} needs --peers ADDR1,ADDR2,... (every replica's address, replica 1 first)",
                replica.0
            )
        });
    };
    let file = path(dir, replica);
    let stored = load(&file)?;
    if let Some(s) = &stored {
        // A file copied from another replica's directory would make this
        // one listen at that replica's address and answer as it.
        if s.replica != replica {
            return Err(format!(
                "{} belongs to replica {}, not replica {}: was it copied from another data directory?",
                file.display(),
                s.replica.0,
                replica.0
            ));
        }
    }
    match (stored, cli) {
        (None, None) => Err(format!(
            "replica {} needs --peers ADDR1,ADDR2,... (every replica's address, replica 1 first); \
             {} does not exist yet",
            replica.0,
            file.display()
        )),
        (Some(s), None) => Ok(s),
        (stored, Some(c)) => {
            if let Some(s) = &stored {
                if s == &c {
                    return Ok(c);
                }
                if !s.same_quorums(&c) && !reconfigure {
                    return Err(format!(
                        "replica {}: the command line says {} but {} says {}; changing the number of \
                         replicas, sync_acks or unsafe_failover changes what a quorum is: stop every node, \
                         start each replica with the new configuration and --reconfigure",
                        replica.0,
                        c.describe(),
                        file.display(),
                        s.describe()
                    ));
                }
            }
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            store(&file, &c).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            Ok(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize, k: usize) -> ReplicaCluster {
        let peers = (1..=n).map(|i| format!("127.0.0.1:{}", 8080 + i)).collect();
        ReplicaCluster::new(ReplicaId(2), peers, k, false).unwrap()
    }

    #[test]
    fn a_file_of_another_replica_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = cluster(3, 1);
        store(&path(dir.path(), ReplicaId(3)), &c).unwrap();
        let e = settle(Some(dir.path()), ReplicaId(3), None, false).unwrap_err();
        assert!(e.contains("belongs to replica 2, not replica 3"), "{e}");
        assert_eq!(settle(Some(dir.path()), ReplicaId(2), Some(c.clone()), false), Ok(c));
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let c = cluster(3, 1);
        let text = c.to_text();
        assert_eq!(ReplicaCluster::parse(&text), Ok(c.clone()));
        let damaged = text.replace("sync_acks = 1", "sync_acks = 0");
        assert!(ReplicaCluster::parse(&damaged).unwrap_err().contains("checksum"));
        assert!(ReplicaCluster::parse("").is_err());
        assert_eq!(c.own_addr(), "127.0.0.1:8082");
        assert!(ReplicaCluster::new(ReplicaId(4), c.peers.clone(), 1, false).is_err());
        assert!(ReplicaCluster::new(ReplicaId(1), vec![], 1, false).is_err());
    }

    #[test]
    fn the_stored_configuration_wins_unless_reconfigured() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        let r = ReplicaId(2);
        assert!(settle(d, r, None, false).unwrap_err().contains("needs --peers"));
        assert_eq!(settle(d, r, Some(cluster(3, 1)), false), Ok(cluster(3, 1)));
        // Restarted without flags: the file's.
        assert_eq!(settle(d, r, None, false), Ok(cluster(3, 1)));
        // Other quorums: refused, unless reconfigured.
        assert!(settle(d, r, Some(cluster(3, 0)), false).unwrap_err().contains("--reconfigure"));
        assert!(settle(d, r, Some(cluster(5, 1)), false).is_err());
        assert_eq!(settle(d, r, None, false), Ok(cluster(3, 1)), "a refusal changes nothing");
        assert_eq!(settle(d, r, Some(cluster(3, 2)), true), Ok(cluster(3, 2)));
        assert_eq!(settle(d, r, None, false), Ok(cluster(3, 2)));
        // A moved peer is only an address.
        let mut moved = cluster(3, 2);
        moved.peers[0] = "10.0.0.1:8081".into();
        assert_eq!(settle(d, r, Some(moved.clone()), false), Ok(moved.clone()));
        assert_eq!(settle(d, r, None, false), Ok(moved));
        // Without a data directory the command line is all there is.
        assert!(settle(None, r, None, false).is_err());
        assert_eq!(settle(None, r, Some(cluster(3, 0)), false), Ok(cluster(3, 0)));
    }
}
