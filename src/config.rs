//! Cluster-wide settings shared by the balancer and replicas, and the quorum
//! arithmetic that makes failover safe. Defaults are documented in README.md.

use crate::types::{Micros, ReplicaId};
use serde::{Deserialize, Serialize};

/// Replicas in a cluster at most (kvnode, kvsim and the wire agree):
/// replica N of `kvnode cluster` listens on port base + N, 8081 to 8089.
pub const MAX_REPLICAS: u8 = 9;

/// Checks a cluster's size and `sync_acks` as a user gave them: 1 to
/// [`MAX_REPLICAS`] replicas, and no more confirming followers than there
/// are followers.
pub fn check_cluster(replicas: usize, sync_acks: usize) -> Result<(), String> {
    if replicas == 0 || replicas > MAX_REPLICAS as usize {
        return Err(format!("a cluster has 1 to {MAX_REPLICAS} replicas, not {replicas}"));
    }
    let followers = replicas - 1;
    if sync_acks > followers {
        return Err(format!(
            "--sync-acks {sync_acks} but {replicas} replica(s) have only {followers} follower(s): use 0 to {followers}"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Every replica, sorted; the first is promoted at a fresh start.
    pub replicas: Vec<ReplicaId>,
    /// Followers that must confirm a row (durable on their disk) before the
    /// leader acknowledges the write: 0 asynchronous, 1 semi-synchronous
    /// (default), `replicas - 1` fully synchronous.
    pub sync_acks: usize,
    /// Promote even when safety cannot be proven (may lose acknowledged
    /// writes). Off by default.
    pub unsafe_failover: bool,
    /// Rows a replica keeps in memory before compacting the older half into
    /// its applied state; a follower further behind gets a snapshot.
    pub log_rows_max: usize,
    pub timing: Timing,
    /// Deliberate bugs (tests and demonstrations only); never sent over the
    /// wire.
    #[serde(skip)]
    pub bugs: Bugs,
}

/// Deliberate bugs, for showing that the simulator's checkers catch real
/// violations. Never set outside tests and demonstration scenarios (a
/// scenario's `[bugs]` table). Each of the last six re-plants one bug that
/// an adversarial review found (issue 8), so a test can show the checkers
/// catching it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bugs {
    /// The leader acknowledges writes before its own copy is durable.
    pub ack_before_durable: bool,
    /// Followers skip tombstones when applying rows.
    pub follower_skips_deletes: bool,
    /// Reads answer with the most recently written value of *any* key.
    pub reads_wrong_key: bool,
    /// The balancer sends `leader` reads round robin, like `any`.
    pub leader_reads_anywhere: bool,
    /// `session` reads ignore the client's last seen LSN (balancer and
    /// replicas alike), so they behave like `any`.
    pub session_ignores_lsn: bool,
    /// Bug A: a replica with no leader promises its current epoch again to
    /// any ballot, and a refused promotion carries on in its epoch.
    pub epochs_promised_twice: bool,
    /// Bug C: a replica that discarded its disk forgets the epoch it had
    /// promised, so it may follow (and re-sync from) a deposed leader.
    pub resync_forgets_promise: bool,
    /// Bug B: a replica whose recovery cut its log's tail votes as if it had
    /// lost nothing it confirmed.
    pub cut_tail_trusted: bool,
    /// Bug D: the client counts `unavailable` answers instead of matching
    /// them to attempts, so a duplicated answer covers an attempt that was
    /// forwarded.
    pub unavailable_counts_answers: bool,
    /// Bug E: the balancer judges the leader by pongs alone, never by
    /// whether it still reaches its followers.
    pub leader_judged_by_pongs: bool,
    /// Bug F: a follower obeys a leader asking it to drop committed rows.
    pub truncates_committed: bool,
    /// Found in review: a late "need" moves a peer's next row back below
    /// what it confirmed, and installing a snapshot drops the rows a
    /// follower holds after it.
    pub snapshot_over_confirmed: bool,
    /// Found in review: a replica catching up takes its target from any
    /// append, even one sent to its previous life.
    pub resync_target_from_any_append: bool,
    /// Classic: a follower takes appends from a leader of an epoch older
    /// than the one it promised (a deposed leader keeps replicating).
    pub accepts_older_epochs: bool,
    /// Found by the machine fuzzer: a replica catching up that is promoted
    /// calls itself whole at once, before the rows it took are durable.
    pub resynced_at_promotion: bool,
}

/// Timeouts, all in microseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Leader to followers, when there is nothing else to send.
    pub heartbeat_us: Micros,
    /// Balancer to replicas.
    pub ping_us: Micros,
    /// A replica that has not answered a ping for this long is presumed dead.
    pub dead_after_us: Micros,
    /// A promotion that has not gathered enough promises by then starts over
    /// with a newer epoch.
    pub promote_timeout_us: Micros,
    /// The balancer re-forwards a request that got no answer after this long.
    pub forward_retry_us: Micros,
    /// The balancer answers `Timeout` (writes) or `Unavailable` after this long.
    pub request_timeout_us: Micros,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat_us: 30_000,
            ping_us: 50_000,
            dead_after_us: 200_000,
            promote_timeout_us: 150_000,
            forward_retry_us: 150_000,
            request_timeout_us: 1_000_000,
        }
    }
}

impl ClusterConfig {
    pub fn new(replica_count: u8, sync_acks: usize) -> ClusterConfig {
        let replicas: Vec<ReplicaId> = (1..=replica_count).map(ReplicaId).collect();
        ClusterConfig {
            replicas,
            sync_acks,
            unsafe_failover: false,
            log_rows_max: 100_000,
            timing: Timing::default(),
            bugs: Bugs::default(),
        }
    }

    /// `sync_acks`, capped at the number of followers.
    pub fn sync_acks(&self) -> usize {
        self.sync_acks.min(self.replicas.len().saturating_sub(1))
    }

    /// How many promises a promotion needs before it may choose a leader.
    ///
    /// An acknowledged write is on `sync_acks + 1` replicas, so hearing from
    /// `n - sync_acks` guarantees one of them holds it. The count is also at
    /// least a majority, so two promotions (say, before and after a balancer
    /// restart) always share a replica and can never hand out the same epoch
    /// to two leaders.
    pub fn promotion_quorum(&self) -> usize {
        let n = self.replicas.len();
        if self.unsafe_failover {
            return 1;
        }
        (n - self.sync_acks()).max(n / 2 + 1)
    }

    /// Followers a leader must hear from, in its epoch, after a read arrives
    /// before it may answer that read linearizably: enough that no promotion
    /// quorum can have formed without one of them promising a newer epoch.
    pub fn read_confirmations(&self) -> usize {
        let n = self.replicas.len();
        n.saturating_sub(self.promotion_quorum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_quorum_intersects_every_acknowledged_write() {
        for n in 1..=7u8 {
            for k in 0..n as usize {
                let c = ClusterConfig::new(n, k);
                let q = c.promotion_quorum();
                // holders of an acked write + promisers > n  => they share a replica
                assert!(c.sync_acks() + 1 + q > n as usize, "n={n} k={k} q={q}");
                // two promotions share a replica
                assert!(2 * q > n as usize, "n={n} k={k}");
                // a read confirmation set (leader + confirmations) meets every quorum
                assert!(1 + c.read_confirmations() + q > n as usize);
            }
        }
    }

    #[test]
    fn unsafe_failover_needs_one_promise() {
        let mut c = ClusterConfig::new(3, 1);
        c.unsafe_failover = true;
        assert_eq!(c.promotion_quorum(), 1);
    }
}
