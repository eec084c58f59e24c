//! Acknowledged means durable, against power loss: the spool runs on a disk
//! that keeps every write since the last sync apart, and at a power cut at a
//! random point keeps only a random part of them (some writes whole, some
//! torn at a sector, some lost), as a real disk's page cache may. The spool
//! must then open, and every message whose insert was acknowledged before the
//! cut (and not removed since) must be there with its body.
//!
//! `kill -9` cannot show this: the kernel keeps the page cache, so a spool
//! that stopped syncing would pass every other test. (Anchors: redb's own
//! crash fuzzing, Jepsen's LazyFS.)

use super::*;
use redb::{Database, StorageBackend};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};

const SECTOR: usize = 512;
const QUEUE: &str = "amqp";

/// A write (or a change of length) not yet synced.
#[derive(Debug, Clone)]
enum Unsynced {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// Disk ops counted across the machine's disks; the power cut meets them all.
#[derive(Debug, Default)]
struct Power {
    /// Writes, length changes and syncs so far.
    ops: u64,
    /// The op that meets the power cut, and every one after it, fails.
    cut_at: Option<u64>,
    /// Ops refused since the cut.
    refused: u64,
}

type SharedPower = Arc<Mutex<Power>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct DiskState {
    /// What survives a power cut for sure.
    synced: Vec<u8>,
    /// What reads see: `synced` with every later write applied.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    syncs: u64,
}

#[derive(Debug)]
struct Disk {
    power: SharedPower,
    state: Mutex<DiskState>,
}

fn power_lost() -> io::Error {
    io::Error::other("power lost")
}

impl Disk {
    fn new(power: &SharedPower, image: Vec<u8>) -> Arc<Disk> {
        Arc::new(Disk {
            power: power.clone(),
            state: Mutex::new(DiskState {
                synced: image.clone(),
                current: image,
                ..Default::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        lock(&self.state)
    }

    /// Counts an op; an error once the power is cut. `Err(true)`: this op
    /// is the first to meet the cut.
    fn tick(&self) -> Result<(), bool> {
        let mut p = lock(&self.power);
        if p.cut_at.is_some_and(|c| p.ops >= c) {
            p.refused += 1;
            return Err(p.refused == 1);
        }
        p.ops += 1;
        Ok(())
    }

    fn is_cut(&self) -> bool {
        let p = lock(&self.power);
        p.cut_at.is_some_and(|c| p.ops >= c)
    }

    /// What the platter holds after the cut: the synced image, then each
    /// unsynced change in order, kept whole, torn after a random sector, or lost.
    fn image_after_cut(&self, rng: &mut fastrand::Rng) -> Vec<u8> {
        let st = self.lock();
        let mut image = st.synced.clone();
        for change in &st.unsynced {
            match change {
                Unsynced::SetLen(len) => {
                    if rng.bool() {
                        image.resize(*len as usize, 0);
                    }
                }
                Unsynced::Write(offset, data) => {
                    let keep = match rng.u8(0..3) {
                        0 => 0,
                        1 => data.len(),
                        _ => (rng.usize(0..=data.len().div_ceil(SECTOR)) * SECTOR).min(data.len()),
                    };
                    let (start, end) = (*offset as usize, *offset as usize + keep);
                    if keep > 0 {
                        if image.len() < end {
                            image.resize(end, 0);
                        }
                        image[start..end].copy_from_slice(&data[..keep]);
                    }
                }
            }
        }
        image
    }
}

/// The spool's two files, redb's and the journal's, on disks that lose
/// power together.
struct Machine {
    power: SharedPower,
    db: Arc<Disk>,
    journal: Arc<Disk>,
    journal_limit: u64,
}

impl Machine {
    /// A journal of `journal_limit` bytes at most (then emptied into redb).
    fn new(journal_limit: u64) -> Machine {
        Machine::with_images(Vec::new(), Vec::new(), journal_limit)
    }

    fn with_images(db: Vec<u8>, journal: Vec<u8>, journal_limit: u64) -> Machine {
        let power = SharedPower::default();
        Machine {
            db: Disk::new(&power, db),
            journal: Disk::new(&power, journal),
            power,
            journal_limit,
        }
    }

    fn is_cut(&self) -> bool {
        self.db.is_cut()
    }

    /// Cuts the power `after` ops from now.
    fn cut_after(&self, after: u64) {
        let mut p = lock(&self.power);
        p.cut_at = Some(p.ops + after);
    }

    fn ops(&self) -> u64 {
        lock(&self.power).ops
    }

    fn refused(&self) -> u64 {
        lock(&self.power).refused
    }

    fn syncs(&self) -> u64 {
        self.db.lock().syncs + self.journal.lock().syncs
    }

    /// The machine as it starts again after the cut.
    fn after_cut(&self, rng: &mut fastrand::Rng) -> Machine {
        Machine::with_images(
            self.db.image_after_cut(rng),
            self.journal.image_after_cut(rng),
            self.journal_limit,
        )
    }
}

#[derive(Debug)]
struct DiskHandle(Arc<Disk>);

impl StorageBackend for DiskHandle {
    fn len(&self) -> io::Result<u64> {
        if self.0.is_cut() {
            return Err(power_lost());
        }
        Ok(self.0.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        if self.0.is_cut() {
            return Err(power_lost());
        }
        let st = self.0.lock();
        let start = offset as usize;
        let src = st
            .current
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.tick().map_err(|_| power_lost())?;
        let mut st = self.0.lock();
        st.current.resize(len as usize, 0);
        st.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.tick().map_err(|_| power_lost())?;
        let mut st = self.0.lock();
        st.synced = st.current.clone();
        st.unsynced.clear();
        st.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let result = self.0.tick();
        let mut st = self.0.lock();
        // The write that meets the cut may still reach the disk, in part.
        if result.is_ok() || result == Err(true) {
            st.unsynced.push(Unsynced::Write(offset, data.to_vec()));
        }
        result.map_err(|_| power_lost())?;
        let (start, end) = (offset as usize, offset as usize + data.len());
        if st.current.len() < end {
            st.current.resize(end, 0);
        }
        st.current[start..end].copy_from_slice(data);
        Ok(())
    }
}

fn open_on(machine: &Machine) -> Result<(Spool, Opened), SpoolError> {
    let create = {
        let disk = machine.db.clone();
        move || {
            Database::builder()
                .set_cache_size(256 * 1024)
                .create_with_backend(DiskHandle(disk.clone()))
        }
    };
    let db = create().map_err(|e| SpoolError::Open {
        path: "test disk".into(),
        reason: e.to_string(),
    })?;
    let journal = Box::new(DiskHandle(machine.journal.clone()));
    Spool::open_on(db, journal, machine.journal_limit, Box::new(create))
}

/// Bodies are told apart by id: small ones stored inline, large ones shared
/// by the recipients of one insert.
fn body_for(batch: u64, large: bool) -> Bytes {
    let len = if large {
        300 + (batch as usize % 5) * 700
    } else {
        40
    };
    Bytes::from(format!("{batch:08}-").repeat(len / 9 + 1).into_bytes())
}

/// What the workload did before the power went.
#[derive(Default)]
struct Ledger {
    /// Insert acknowledged: id → body.
    acked: HashMap<u128, Bytes>,
    /// Inserted but never acknowledged (the commit met the cut): may or may not be there.
    unacked: HashSet<u128>,
    /// Removal asked for (delivered): may still be there (redelivery), never required.
    removed: HashSet<u128>,
    /// Inserted as held in memory (most of them journaled), not yet
    /// delivered or retried.
    held: Vec<Message>,
}

/// Inserts, page-ins, retries and removals until the power goes (or `steps` end).
async fn workload(spool: &Spool, rng: &mut fastrand::Rng, steps: u64, disk: &Machine) -> Ledger {
    let mut ledger = Ledger::default();
    for step in 0..steps {
        if disk.is_cut() {
            break;
        }
        let large = rng.bool();
        let body = body_for(step, large);
        let msgs = super::tests::recipients(rng.usize(1..=4), &body);
        let active = rng.u8(0..4) == 0;
        let ids = msgs.iter().map(|m| m.id().as_u128());
        match spool
            .insert(&super::tests::news(&msgs, QUEUE, active))
            .await
        {
            Ok(()) => {
                ledger.acked.extend(ids.map(|id| (id, body.clone())));
                if active {
                    ledger.held.extend(msgs);
                }
            }
            Err(_) => ledger.unacked.extend(ids),
        }
        if rng.u8(0..3) == 0 {
            deliver_some(spool, rng, &mut ledger).await;
        }
    }
    ledger
}

/// Pages a few in and takes some of those held in memory; delivers
/// (removes) some and retries the others.
async fn deliver_some(spool: &Spool, rng: &mut fastrand::Rng, ledger: &mut Ledger) {
    let Ok(paged) = spool
        .page_in(QUEUE, rng.usize(1..=6), u64::MAX, 1 << 20)
        .await
    else {
        return;
    };
    let held = ledger.held.len();
    let taken = ledger.held.split_off(held - rng.usize(0..=held.min(3)));
    for m in paged.messages.into_iter().chain(taken) {
        if rng.bool() {
            ledger.removed.insert(m.id().as_u128());
            spool.remove(m.id());
        } else {
            m.record_attempt(crate::model::message::now_ms() + 3_600_000);
            spool.schedule(&m, QUEUE);
        }
    }
}

/// Every message the reopened spool holds, with its body.
async fn contents(spool: &Spool) -> HashMap<u128, Bytes> {
    let mut out = HashMap::new();
    loop {
        let taken = spool
            .take_scheduled(QUEUE, 1000)
            .await
            .expect("the reopened spool reads");
        if taken.is_empty() {
            return out;
        }
        for m in taken {
            out.insert(
                m.id().as_u128(),
                m.data().expect("a taken message has its body"),
            );
        }
    }
}

/// The writer thread ends when its last handle drops; the disk is then free.
async fn close(spool: Spool) {
    let _ = spool.close().await;
}

/// One run: a workload, a cut after `cut_after` disk ops, the image a random
/// part of what was not synced; returns a failure's description.
async fn run(seed: u64, cut_after: u64) -> Result<(u64, usize), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // Half the runs empty the journal into redb every few inserts.
    let disk = Machine::new(if seed.is_multiple_of(2) {
        8 * 1024
    } else {
        1 << 30
    });
    let (spool, _) = open_on(&disk).map_err(|e| format!("fresh open: {e}"))?;
    disk.cut_after(cut_after);
    let ledger = workload(&spool, &mut rng, 60, &disk).await;
    // Power goes now if it has not yet: whatever was not synced is at risk.
    disk.cut_after(0);
    close(spool).await;
    let after = disk.after_cut(&mut rng);
    let syncs = disk.syncs();
    let (spool, _) = open_on(&after).map_err(|e| format!("reopen after the cut: {e}"))?;
    let found = contents(&spool).await;
    close(spool).await;
    for (id, body) in &ledger.acked {
        if ledger.removed.contains(id) {
            continue;
        }
        match found.get(id) {
            None => {
                return Err(format!(
                    "acknowledged message {id:x} lost (seed {seed}, cut after {cut_after})"
                ));
            }
            Some(b) if b != body => {
                return Err(format!(
                    "message {id:x} came back with another body (seed {seed})"
                ));
            }
            Some(_) => {}
        }
    }
    for id in found.keys() {
        if !ledger.acked.contains_key(id) && !ledger.unacked.contains(id) {
            return Err(format!("message {id:x} was never inserted (seed {seed})"));
        }
    }
    Ok((
        syncs,
        ledger.acked.len() - ledger.removed.len().min(ledger.acked.len()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_power_cut_at_any_point() {
    // A dry run tells how many disk ops the workload takes; cuts fall anywhere in it.
    let total = {
        let disk = Machine::new(8 * 1024);
        let (spool, _) = open_on(&disk).unwrap();
        let start = disk.ops();
        let _ = workload(&spool, &mut fastrand::Rng::with_seed(0), 60, &disk).await;
        close(spool).await;
        disk.ops() - start
    };
    assert!(total > 50, "the workload wrote only {total} times");
    let mut cut_rng = fastrand::Rng::with_seed(0x5eed);
    let runs = std::env::var("POWER_LOSS_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(150);
    let mut kept = 0;
    for seed in 0..runs {
        let cut_after = cut_rng.u64(0..=total);
        match run(seed, cut_after).await {
            Ok((syncs, held)) => {
                assert!(
                    syncs > 0 || held == 0,
                    "acknowledged without a sync (seed {seed})"
                );
                kept += held;
            }
            Err(why) => panic!("{why}"),
        }
    }
    // The cuts must leave acknowledged messages to check, not only empty spools.
    assert!(
        kept > runs as usize,
        "only {kept} acknowledged messages checked in {runs} runs"
    );
}

/// /metrics times every commit and counts the ones the disk fails. Other
/// tests in this process commit too, so the counts are checked to grow, not
/// compared with exact values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_timed_and_failed_ones_counted() {
    let disk = Machine::new(1 << 30);
    let (spool, _) = open_on(&disk).unwrap();
    let msgs = super::tests::recipients(2, &body_for(1, false));
    let news = super::tests::news(&msgs, QUEUE, false);
    let (timed, failed) = (commits_timed(), stats::COMMIT_FAILURES.get());
    spool.insert(&news).await.expect("the disk works");
    assert!(commits_timed() > timed, "a commit was not timed");
    assert_eq!(disk.refused(), 0);

    disk.cut_after(0);
    let err = spool.insert(&news).await.expect_err("the disk is gone");
    assert!(!err.is_full(), "a lost disk is not a full one: {err}");
    assert!(
        stats::COMMIT_FAILURES.get() > failed,
        "the failed commit was not counted"
    );
}

/// How many commits the histogram holds, read from its exposition.
fn commits_timed() -> u64 {
    use prometheus_client::encoding::text::encode;
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("c", "", stats::COMMIT_SECONDS.clone());
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("c_count "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the histogram's count is exposed")
}
