//! The thread that owns the database: every operation, reads included, runs
//! here in arrival order, so paging in can never race a commit.

use super::active_sets::ActiveSets;
use super::direct_file::DirectFile;
use super::group_commit::GroupCommit;
use super::journal::Journal;
use super::stats;
use super::tables::{self, Tables};
use super::{Reply, SpoolError};
use crate::model::message::{Message, MessageId};
use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long deferred work (removals, retries) may wait for a commit.
const LAZY_SYNC: Duration = Duration::from_millis(250);
/// Upper bound of operations folded into one commit.
const MAX_BATCH: usize = 4096;
/// redb's page cache, unless the relay is told otherwise. Bodies are read
/// once per delivery at most; the cache mostly serves the schedule's index
/// pages, read in order. It is most of what a backlog adds to RSS: 4 MiB
/// drains a 1,000,000-message backlog as fast as 8 (1.04x the normal rate
/// over the first 100,000) and keeps RSS at 1.1x from 10,000 to 1,000,000
/// queued, where 8 MiB gave 1.3x.
pub const DEFAULT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// What a batch changed beyond its rows: queues whose schedule changed (by
/// how many) and shared bodies released (by how many records); and the
/// messages held in memory, which it changes as it goes.
struct Changes<'a> {
    touched: HashMap<String, i64>,
    released: HashMap<u128, u64>,
    active: &'a mut ActiveSets,
    /// New messages held in memory are here, not in redb.
    journal: &'a Journal,
}

impl<'a> Changes<'a> {
    fn new(active: &'a mut ActiveSets, journal: &'a Journal) -> Self {
        Changes {
            touched: HashMap::new(),
            released: HashMap::new(),
            active,
            journal,
        }
    }

    /// `n` messages left `queue`'s schedule.
    fn left(&mut self, queue: String, n: usize) {
        *self.touched.entry(queue).or_default() -= n as i64;
    }

    /// Brings the per-queue summaries and the shared bodies up to date.
    fn settle(&mut self, t: &mut Tables) -> Result<(), redb::Error> {
        for (queue, delta) in self.touched.drain() {
            t.refresh_queue(&queue, delta)?;
        }
        t.release_bodies(std::mem::take(&mut self.released))
    }

    fn release(&mut self, stored: tables::StoredBody) {
        if let tables::StoredBody::Shared(id) = stored {
            *self.released.entry(id).or_default() += 1;
        }
    }
}

pub struct Insert {
    pub id: u128,
    pub queue: String,
    pub due: u64,
    pub active: bool,
    pub record: Vec<u8>,
}

pub enum Op {
    Insert {
        items: Vec<Insert>,
        /// Bodies the records share: id, bytes, how many records refer to it.
        bodies: Vec<(u128, Bytes, u64)>,
        done: Reply<()>,
    },
    Schedule {
        id: u128,
        queue: String,
        due: u64,
        envelope: Vec<u8>,
        body: Option<Bytes>,
    },
    Remove(u128),
    /// Removals are waiting in the shared list (sent once per list, not per removal).
    Removals,
    PageIn {
        queue: String,
        max: usize,
        now: u64,
        max_age_ms: u64,
        body_bytes: usize,
        done: Reply<Paged>,
    },
    Bodies {
        ids: Vec<u128>,
        done: Reply<Vec<Option<Bytes>>>,
    },
    DueQueues {
        now: u64,
        limit: usize,
        skip: Box<dyn Fn(&str) -> bool + Send>,
        done: Reply<DueQueues>,
    },
    TakeScheduled {
        queue: String,
        /// Only messages due at or before this.
        until: u64,
        max: usize,
        done: Reply<Vec<Message>>,
    },
    Counts {
        done: Reply<SpoolCounts>,
    },
    /// Moves up to `max` schedule entries due after `now` to `now`.
    RetryNow {
        now: u64,
        max: usize,
        done: Reply<u64>,
    },
    Flush(Reply<()>),
    /// Commits, closes the database (so the next open needs no repair) and
    /// ends the thread.
    Close(Reply<()>),
    /// A commit with nothing else in it.
    Sync,
}

/// Messages made active by `page_in`.
#[derive(Default)]
pub struct Paged {
    pub messages: Vec<Message>,
    /// Past their queue's `max_age`: removed from the spool, bodies included
    /// for their log records.
    pub expired: Vec<Message>,
    /// More of the queue's scheduled messages are due now.
    pub more_due: bool,
}

#[derive(Debug, Default)]
pub struct DueQueues {
    pub due: Vec<String>,
    /// The earliest due time after now, of a queue not skipped.
    pub next: Option<u64>,
}

#[derive(Debug, Default)]
pub struct SpoolCounts {
    pub messages: u64,
    pub active: u64,
    /// Bodies stored once for several messages.
    pub shared_bodies: u64,
    /// Per queue: scheduled messages.
    pub scheduled: Vec<(String, u64)>,
}

/// A reply to send once the commit that holds the work is done.
enum Pending {
    Unit(Reply<()>),
    Paged(Reply<Paged>, Paged),
    Bodies(Reply<Vec<Option<Bytes>>>, Vec<Option<Bytes>>),
    Due(Reply<DueQueues>, DueQueues),
    Taken(Reply<Vec<Message>>, Vec<Message>),
    Counts(Reply<SpoolCounts>, SpoolCounts),
    Moved(Reply<u64>, u64),
}

impl Pending {
    fn send(self, result: &Result<(), SpoolError>) {
        fn reply<T>(to: Reply<T>, value: T, result: &Result<(), SpoolError>) {
            let _ = to.send(result.clone().map(|()| value));
        }
        match self {
            Pending::Unit(to) => reply(to, (), result),
            Pending::Paged(to, v) => reply(to, v, result),
            Pending::Bodies(to, v) => reply(to, v, result),
            Pending::Due(to, v) => reply(to, v, result),
            Pending::Taken(to, v) => reply(to, v, result),
            Pending::Counts(to, v) => reply(to, v, result),
            Pending::Moved(to, v) => reply(to, v, result),
        }
    }

    /// The operation failed before the commit.
    fn fail(self, e: &SpoolError) {
        self.send(&Err(e.clone()));
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(cache_bytes).create(path)
}

/// Opens the database: at start, and again after a failed commit (redb
/// refuses further writes after an I/O error).
pub type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send>;

/// Ids of messages to forget, collected without waking the writer for each.
pub type Removals = std::sync::Arc<std::sync::Mutex<Vec<u128>>>;

/// Opens (or creates) `dir/spool.redb` and `dir/spool.journal` and
/// prepares them, then starts the writer thread.
pub fn start(
    dir: &Path,
    cache_bytes: usize,
    journal_limit: u64,
) -> Result<(mpsc::UnboundedSender<Op>, Removals, tables::Opened), SpoolError> {
    let open_err = |reason: String| SpoolError::Open {
        path: dir.display().to_string(),
        reason,
    };
    let new_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    let path = dir.join("spool.redb");
    let journal_path = dir.join("spool.journal");
    let new_file = !path.exists() || !journal_path.exists();
    let db = open_db(&path, cache_bytes).map_err(|e| open_err(e.to_string()))?;
    let journal = open_journal(&journal_path)
        .map_err(|e| open_err(format!("{}: {e}", journal_path.display())))?;
    // A new file's directory entry (and a new directory's) must survive a
    // power cut as well as what is written into the file.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let synced = match (new_file, new_dir.then_some(parent).flatten()) {
        (true, Some(parent)) => sync_dir(dir).and_then(|()| sync_dir(parent)),
        (true, None) => sync_dir(dir),
        (false, _) => Ok(()),
    };
    synced.map_err(|e| open_err(format!("syncing the directory: {e}")))?;
    let opener: Opener = Box::new(move || open_db(&path, cache_bytes));
    let name = dir.display().to_string();
    start_on(db, journal, journal_limit, opener, &name)
}

/// The journal's file: written directly where the file system allows it,
/// else through the page cache with a sync per commit.
fn open_journal(path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
    match DirectFile::open(path)? {
        Ok(direct) => Ok(Box::new(direct)),
        Err(file) => {
            tracing::info!(path = %path.display(), "no direct I/O on the spool's file system: the journal is written through the page cache");
            Ok(Box::new(
                redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?,
            ))
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Prepares an open database and journal and starts the writer thread on
/// them; `opener` opens the database again when needed, `name` says where
/// it is in errors.
pub fn start_on(
    db: Database,
    journal: Box<dyn redb::StorageBackend>,
    journal_limit: u64,
    opener: Opener,
    name: &str,
) -> Result<(mpsc::UnboundedSender<Op>, Removals, tables::Opened), SpoolError> {
    let open_err = |reason: String| SpoolError::Open {
        path: name.to_owned(),
        reason,
    };
    let mut journal = Journal::open(journal, journal_limit)
        .map_err(|e| open_err(format!("reading the journal: {e}")))?;
    recover_journal(&db, &journal).map_err(|e| open_err(format!("recovering the journal: {e}")))?;
    let opened = {
        let w = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        let opened = tables::prepare(&w).map_err(open_err)?;
        w.commit().map_err(|e| open_err(e.to_string()))?;
        opened
    };
    // Only now: every message it held is on the schedule, durably.
    journal
        .reset()
        .map_err(|e| open_err(format!("emptying the journal: {e}")))?;
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| open_err("the spool needs a tokio runtime".into()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let removals = Removals::default();
    let pending_removals = removals.clone();
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || {
            Writer {
                rt,
                db: Some(db),
                journal,
                active: ActiveSets::default(),
                opener,
                removals: pending_removals,
                group: GroupCommit::default(),
            }
            .run(rx)
        })
        .map_err(|e| open_err(e.to_string()))?;
    Ok((tx, removals, opened))
}

/// Records moved from the journal into redb per transaction: redb holds a
/// transaction's pages in memory until it commits.
const MOVE_BYTES: usize = 8 * 1024 * 1024;

/// Puts the journal's live messages into redb as messages the last process
/// held in memory, so that `prepare` schedules them. One already in redb
/// was moved there before the crash, and redb's copy is the newer.
fn recover_journal(db: &Database, journal: &Journal) -> Result<(), redb::Error> {
    let mut ids = journal.live_ids();
    ids.sort_unstable();
    let mut moved = 0;
    for chunk in chunks_by_bytes(journal, &ids) {
        let w = db.begin_write()?;
        {
            let mut t = Tables::open(&w)?;
            let mut row = Vec::new();
            for id in chunk {
                let Some(record) = journal.read(*id)? else {
                    continue;
                };
                if t.messages.get(*id)?.is_none() {
                    t.messages.insert(*id, record.as_slice())?;
                    row.push(*id);
                }
            }
            let key = t.active_sets.last()?.map_or(0, |(k, _)| k.value() + 1);
            if !row.is_empty() {
                t.active_sets
                    .insert(key, tables::set_row(&row).as_slice())?;
            }
            moved += row.len();
        }
        w.commit()?;
    }
    if moved > 0 {
        tracing::info!(messages = moved, "spool journal recovered");
    }
    Ok(())
}

/// `ids` in runs whose records add up to about `MOVE_BYTES`.
fn chunks_by_bytes<'a>(journal: &Journal, ids: &'a [u128]) -> Vec<&'a [u128]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (n, id) in ids.iter().enumerate() {
        bytes += journal.record_len(*id);
        if bytes >= MOVE_BYTES {
            out.push(&ids[start..=n]);
            (start, bytes) = (n + 1, 0);
        }
    }
    if start < ids.len() {
        out.push(&ids[start..]);
    }
    out
}

struct Writer {
    rt: tokio::runtime::Handle,
    db: Option<Database>,
    journal: Journal,
    active: ActiveSets,
    opener: Opener,
    removals: Removals,
    group: GroupCommit,
}

/// What the writer's channel gave.
enum Next {
    Op(Op),
    /// Deferred work is due and nothing came.
    WaitedEnough,
    /// Every sender is gone.
    Closed,
}

/// `first` and whatever else is queued already, up to `MAX_BATCH`, and a
/// close request if one came (it ends the batch).
fn gather(first: Option<Op>, rx: &mut mpsc::UnboundedReceiver<Op>) -> (Vec<Op>, Option<Reply<()>>) {
    let mut batch: Vec<Op> = Vec::new();
    let mut next = first;
    while let Some(op) = next {
        match op {
            Op::Close(done) => return (batch, Some(done)),
            op => batch.push(op),
        }
        next = if batch.len() < MAX_BATCH {
            rx.try_recv().ok()
        } else {
            None
        };
    }
    (batch, None)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        // Removals and retries wait here (not yet applied) until an operation
        // that needs an answer comes, or for at most LAZY_SYNC.
        let mut deferred: Vec<Op> = Vec::new();
        let mut deferred_since = Instant::now();
        loop {
            let first = match self.next_op(&mut rx, !deferred.is_empty(), deferred_since) {
                Next::Op(op) => Some(op),
                Next::WaitedEnough => None,
                Next::Closed => break,
            };
            let (mut batch, mut close) = gather(first, &mut rx);
            if close.is_none() {
                close = self.linger(&mut batch, &mut rx);
            }
            let waited_long = deferred_since.elapsed() >= LAZY_SYNC;
            let answer_now = close.is_some() || batch.iter().any(awaited);
            if !answer_now && !waited_long && deferred.len() + batch.len() < MAX_BATCH {
                if deferred.is_empty() {
                    deferred_since = Instant::now();
                }
                deferred.append(&mut batch);
                continue;
            }
            // Removals and deferred work first: they came first.
            let mut ops = self.take_removals();
            ops.append(&mut deferred);
            ops.append(&mut batch);
            let inserts = inserts(&ops);
            let started = Instant::now();
            self.commit_and_answer(ops);
            self.group.committed(inserts, started.elapsed());
            if let Some(done) = close {
                let _ = done.send(self.close());
                return;
            }
        }
        let mut ops = self.take_removals();
        ops.append(&mut deferred);
        if !ops.is_empty() {
            let _ = self.commit(ops);
        }
    }

    /// Waits for company if the group commit says so (one sleep: the writer
    /// is not woken per arrival), then adds what came; a close request if
    /// one came.
    fn linger(
        &self,
        batch: &mut Vec<Op>,
        rx: &mut mpsc::UnboundedReceiver<Op>,
    ) -> Option<Reply<()>> {
        let wait = self.group.linger(inserts(batch))?;
        std::thread::sleep(wait);
        let (mut more, close) = gather(rx.try_recv().ok(), rx);
        batch.append(&mut more);
        close
    }

    /// The next operation; with work deferred, waits only until it is due.
    fn next_op(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Op>,
        deferring: bool,
        deferred_since: Instant,
    ) -> Next {
        if !deferring {
            return rx.blocking_recv().map_or(Next::Closed, Next::Op);
        }
        let wait = LAZY_SYNC.saturating_sub(deferred_since.elapsed());
        match self
            .rt
            .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
        {
            Ok(Some(op)) => Next::Op(op),
            Err(_elapsed) => Next::WaitedEnough,
            Ok(None) => Next::Closed,
        }
    }

    /// Commits `ops` in one transaction and answers those awaiting it.
    fn commit_and_answer(&mut self, ops: Vec<Op>) {
        let (result, pending) = self.commit(ops);
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool commit failed");
            // redb refuses further writes after an I/O error; reopen next time.
            self.db = None;
        }
        for p in pending {
            p.send(&result);
        }
    }

    fn take_removals(&self) -> Vec<Op> {
        std::mem::take(&mut *self.removals.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(Op::Remove)
            .collect()
    }

    /// Makes everything durable, moves what the journal holds into redb (a
    /// relay of an earlier version then finds it, and the next start reads
    /// no journal) and drops the database, which records its allocator state
    /// so the next open is quick.
    fn close(&mut self) -> Result<(), SpoolError> {
        let mut ops = self.take_removals();
        ops.push(Op::Sync);
        let result = self.commit(ops).0;
        if result.is_ok() {
            self.checkpoint();
        }
        self.db = None;
        result
    }

    /// Applies a batch: the journal's part in one append (synced when it
    /// holds new messages), redb's in one durable transaction (every commit
    /// fsyncs: redb's non-durable commits re-walk the pages they freed, a
    /// cost that grows with each one). A batch that only reads is not
    /// committed. Lost bookkeeping after a failed commit only means a
    /// redelivery; inserts and reads report the failure.
    fn commit(&mut self, batch: Vec<Op>) -> (Result<(), SpoolError>, Vec<Pending>) {
        let mut pending = Vec::new();
        let result = self.apply(batch, &mut pending);
        if let Err(e) = &result {
            for p in pending.drain(..) {
                p.fail(e);
            }
        }
        (result, pending)
    }

    /// Applies a batch: new messages held in memory go to the journal, the
    /// rest to redb in one transaction. Returns redb's result; the journal's
    /// goes to the inserts it holds.
    fn apply(&mut self, batch: Vec<Op>, pending: &mut Vec<Pending>) -> Result<(), SpoolError> {
        self.checkpoint_if_due();
        let started = Instant::now();
        let routed = route(&mut self.journal, batch);
        let moved: Vec<u128> = routed.moved.iter().map(|m| m.id).collect();
        let (result, committed) = if routed.redb.is_empty() && moved.is_empty() {
            (Ok(()), false)
        } else {
            self.apply_redb(routed.redb, routed.moved, pending)
        };
        let journaled = match &result {
            Ok(()) => {
                // Only now: redb holds them durably.
                for id in moved {
                    self.journal.forget(id);
                }
                self.journal
                    .write(routed.durable)
                    .map_err(SpoolError::from_io)
            }
            Err(e) => {
                self.journal.discard();
                Err(e.clone())
            }
        };
        match &journaled {
            Ok(synced) if *synced || committed => {
                stats::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
            }
            Ok(_) => {}
            Err(e) if result.is_ok() => {
                stats::COMMIT_FAILURES.inc();
                tracing::error!(error = %e, "spool journal write failed");
            }
            Err(_) => {}
        }
        for done in routed.journaled {
            let _ = done.send(journaled.clone().map(|_| ()));
        }
        result
    }

    /// Applies `ops` (after `moved`, records from the journal) in one redb
    /// transaction; whether it committed.
    fn apply_redb(
        &mut self,
        batch: Vec<Op>,
        moved: Vec<Insert>,
        pending: &mut Vec<Pending>,
    ) -> (Result<(), SpoolError>, bool) {
        let writes = !moved.is_empty() || batch.iter().any(writes);
        let mut ops = batch;
        ops.reverse();
        if self.db.is_none() {
            match (self.opener)() {
                Ok(db) => self.db = Some(db),
                Err(e) => {
                    if writes {
                        stats::COMMIT_FAILURES.inc();
                    }
                    let err = SpoolError::from_redb(e);
                    for op in ops {
                        if let Some(p) = reply_of(op) {
                            p.fail(&err);
                        }
                    }
                    return (Err(err), false);
                }
            }
        }
        let db = self.db.as_ref().expect("opened above");
        let (active, journal) = (&mut self.active, &self.journal);
        let mut run = || -> Result<(), redb::Error> {
            let mut w = db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            {
                let mut t = Tables::open(&w)?;
                active.begin();
                let mut changes = Changes::new(active, journal);
                insert(&mut t, &moved, &[], &mut changes)?;
                // Popped one by one: after a failure the rest are still here to answer.
                while let Some(op) = ops.pop() {
                    if awaited(&op) {
                        // What it reads must include the changes before it.
                        changes.settle(&mut t)?;
                    }
                    apply_op(&mut t, op, &mut changes, pending)?;
                }
                changes.settle(&mut t)?;
                changes.active.seal(&mut t)?;
            }
            if writes {
                w.commit()?;
            } else {
                w.abort()?;
            }
            Ok(())
        };
        let result = run().map_err(SpoolError::from_redb);
        if let Err(e) = &result {
            if writes {
                stats::COMMIT_FAILURES.inc();
            }
            // Operations not reached before the failure still need an answer.
            for op in ops {
                if let Some(p) = reply_of(op) {
                    p.fail(e);
                }
            }
        }
        let committed = writes && result.is_ok();
        (result, committed)
    }

    /// Once the journal has grown past its limit, a checkpoint.
    fn checkpoint_if_due(&mut self) {
        if self.journal.is_due() {
            self.checkpoint();
        }
    }

    /// The journal's live messages go into redb (still held in memory, so
    /// in `ACTIVE_SETS`) and it is emptied. If that fails the journal grows
    /// on, and the next batch tries again.
    fn checkpoint(&mut self) {
        let mut ids = self.journal.live_ids();
        ids.sort_unstable();
        let Some(db) = self.db.as_ref() else {
            return;
        };
        for chunk in chunks_by_bytes(&self.journal, &ids) {
            let moved = (|| -> Result<(), redb::Error> {
                let records = held_records(&self.journal, chunk)?;
                let mut w = db.begin_write()?;
                w.set_durability(Durability::Immediate)?;
                {
                    let mut t = Tables::open(&w)?;
                    self.active.begin();
                    let mut changes = Changes::new(&mut self.active, &self.journal);
                    insert(&mut t, &records, &[], &mut changes)?;
                    changes.active.seal(&mut t)?;
                }
                w.commit()?;
                Ok(())
            })();
            if let Err(e) = moved {
                tracing::error!(error = %e, "moving the spool journal into redb failed; retried at the next commit");
                stats::COMMIT_FAILURES.inc();
                return;
            }
            // redb holds them now, whatever happens to the rest.
            for id in chunk {
                self.journal.forget(*id);
            }
        }
        if let Err(e) = self.journal.reset() {
            tracing::error!(error = %e, "emptying the spool journal failed");
            stats::COMMIT_FAILURES.inc();
        }
    }
}

/// What the journal took of a batch, and what is left for redb.
struct Routed {
    /// For redb, in order.
    redb: Vec<Op>,
    /// Journaled messages the engine put on the schedule: redb takes their
    /// records in this commit, then the journal forgets them.
    moved: Vec<Insert>,
    /// Journaled inserts, answered once the journal is synced.
    journaled: Vec<Reply<()>>,
    /// Everything written must be synced (a flush, a close).
    durable: bool,
}

/// New messages held in memory, with their bodies inline, go to the
/// journal, and the journal forgets the ones delivered; the rest is redb's.
fn route(journal: &mut Journal, ops: Vec<Op>) -> Routed {
    let mut r = Routed {
        redb: Vec::new(),
        moved: Vec::new(),
        journaled: Vec::new(),
        durable: false,
    };
    let mut moving = std::collections::HashSet::new();
    for op in ops {
        match op {
            Op::Insert {
                items,
                bodies,
                done,
            } if journal.usable() && bodies.is_empty() && items.iter().all(|i| i.active) => {
                for i in &items {
                    journal.insert(i.id, &i.record);
                }
                r.journaled.push(done);
            }
            // Unless redb takes it in this commit: then it is redb's to remove.
            Op::Remove(id) if !moving.contains(&id) && journal.forget(id) => {}
            // Only a wake-up: the removals were taken from their list.
            Op::Removals => {}
            Op::Schedule {
                id,
                queue,
                due,
                envelope,
                body,
            } if journal.contains(id) => match rescheduled_record(journal, id, &envelope, body) {
                Ok(Some(record)) => {
                    moving.insert(id);
                    r.moved.push(Insert {
                        id,
                        queue,
                        due,
                        active: false,
                        record,
                    });
                }
                Ok(None) => {}
                // Left in the journal, in memory: a restart schedules it.
                Err(e) => {
                    tracing::error!(error = %e, "reading a message from the spool journal failed")
                }
            },
            op => {
                r.durable |= matches!(op, Op::Flush(_) | Op::Sync);
                r.redb.push(op);
            }
        }
    }
    r
}

/// Journaled messages as inserts of messages held in memory.
fn held_records(journal: &Journal, ids: &[u128]) -> std::io::Result<Vec<Insert>> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(record) = journal.read(id)? {
            out.push(Insert {
                id,
                queue: String::new(),
                due: 0,
                active: true,
                record,
            });
        }
    }
    Ok(out)
}

/// A journaled message's record with its new envelope (and body, if the
/// policy changed it).
fn rescheduled_record(
    journal: &Journal,
    id: u128,
    envelope: &[u8],
    body: Option<Bytes>,
) -> std::io::Result<Option<Vec<u8>>> {
    let Some(old) = journal.read(id)? else {
        return Ok(None);
    };
    // A journaled body is always its own (inline): nothing to release.
    Ok(tables::rescheduled(&old, envelope, body.as_deref()).map(|(record, _)| record))
}

/// Insert requests among `ops`.
fn inserts(ops: &[Op]) -> usize {
    ops.iter()
        .filter(|op| matches!(op, Op::Insert { .. }))
        .count()
}

/// Whether someone waits for the operation's answer.
fn awaited(op: &Op) -> bool {
    !matches!(
        op,
        Op::Schedule { .. } | Op::Remove(_) | Op::Removals | Op::Sync
    )
}

/// Whether the operation may change the database (so the batch is committed).
fn writes(op: &Op) -> bool {
    !matches!(
        op,
        Op::Bodies { .. } | Op::DueQueues { .. } | Op::Counts { .. }
    )
}

/// The reply an operation waits for, if any, with an empty value.
fn reply_of(op: Op) -> Option<Pending> {
    match op {
        Op::Insert { done, .. } | Op::Flush(done) => Some(Pending::Unit(done)),
        Op::PageIn { done, .. } => Some(Pending::Paged(done, Paged::default())),
        Op::Bodies { done, .. } => Some(Pending::Bodies(done, Vec::new())),
        Op::DueQueues { done, .. } => Some(Pending::Due(done, DueQueues::default())),
        Op::TakeScheduled { done, .. } => Some(Pending::Taken(done, Vec::new())),
        Op::Counts { done } => Some(Pending::Counts(done, SpoolCounts::default())),
        Op::RetryNow { done, .. } => Some(Pending::Moved(done, 0)),
        Op::Close(done) => Some(Pending::Unit(done)),
        Op::Schedule { .. } | Op::Remove(_) | Op::Removals | Op::Sync => None,
    }
}

/// Records the reply for an operation whatever its work returned, so a
/// failure reaches the caller as the commit's error.
fn answer<T: Default>(
    pending: &mut Vec<Pending>,
    done: Reply<T>,
    wrap: fn(Reply<T>, T) -> Pending,
    work: Result<T, redb::Error>,
) -> Result<(), redb::Error> {
    match work {
        Ok(v) => {
            pending.push(wrap(done, v));
            Ok(())
        }
        Err(e) => {
            pending.push(wrap(done, T::default()));
            Err(e)
        }
    }
}

fn apply_op(
    t: &mut Tables,
    op: Op,
    changes: &mut Changes,
    pending: &mut Vec<Pending>,
) -> Result<(), redb::Error> {
    match op {
        Op::Insert {
            items,
            bodies,
            done,
        } => {
            let work = insert(t, &items, &bodies, changes);
            answer(pending, done, |d, ()| Pending::Unit(d), work)
        }
        Op::Schedule {
            id,
            queue,
            due,
            envelope,
            body,
        } => schedule(t, id, queue, due, &envelope, body, changes),
        Op::Remove(id) => remove(t, id, changes),
        Op::PageIn {
            queue,
            max,
            now,
            max_age_ms,
            body_bytes,
            done,
        } => {
            let work = page_in(t, &queue, max, now, max_age_ms, body_bytes, changes);
            if let Ok(paged) = &work {
                changes.left(queue, paged.messages.len() + paged.expired.len());
            }
            answer(pending, done, Pending::Paged, work)
        }
        Op::Bodies { ids, done } => {
            let work = bodies(t, changes.journal, &ids);
            answer(pending, done, Pending::Bodies, work)
        }
        Op::DueQueues {
            now,
            limit,
            skip,
            done,
        } => {
            let work = due_queues(t, now, limit, &*skip);
            answer(pending, done, Pending::Due, work)
        }
        Op::TakeScheduled {
            queue,
            until,
            max,
            done,
        } => {
            let work = take_scheduled(t, &queue, until, max, changes);
            if let Ok(taken) = &work {
                changes.left(queue, taken.len());
            }
            answer(pending, done, Pending::Taken, work)
        }
        Op::RetryNow { now, max, done } => {
            let work = retry_now(t, now, max, changes);
            answer(pending, done, Pending::Moved, work)
        }
        Op::Counts { done } => {
            let work = counts(t, changes);
            answer(pending, done, Pending::Counts, work)
        }
        Op::Flush(done) => answer(pending, done, |d, ()| Pending::Unit(d), Ok(())),
        Op::Close(done) => {
            // Taken out of every batch before it is applied.
            let _ = done.send(Ok(()));
            Ok(())
        }
        Op::Sync | Op::Removals => Ok(()),
    }
}

fn remove(t: &mut Tables, id: u128, changes: &mut Changes) -> Result<(), redb::Error> {
    if let Some(old) = t.messages.remove(id)?
        && let Ok((_, stored)) = tables::split_record(old.value())
    {
        changes.release(stored);
    }
    changes.active.leave(t, id)?;
    Ok(())
}

fn insert(
    t: &mut Tables,
    items: &[Insert],
    bodies: &[(u128, Bytes, u64)],
    changes: &mut Changes,
) -> Result<(), redb::Error> {
    for (id, body, refs) in bodies {
        t.bodies.insert(*id, body.as_ref())?;
        t.body_refs.insert(*id, *refs)?;
    }
    let mut made_active = Vec::new();
    for i in items {
        t.messages.insert(i.id, i.record.as_slice())?;
        if i.active {
            made_active.push(i.id);
        } else {
            t.schedule.insert((i.queue.as_str(), i.due, i.id), ())?;
            *changes.touched.entry(i.queue.clone()).or_default() += 1;
        }
    }
    changes.active.add(t, &made_active)
}

fn schedule(
    t: &mut Tables,
    id: u128,
    queue: String,
    due: u64,
    envelope: &[u8],
    body: Option<Bytes>,
    changes: &mut Changes,
) -> Result<(), redb::Error> {
    // Only if still active: a late update must not resurrect a removed message.
    if !changes.active.leave(t, id)? {
        return Ok(());
    }
    let record = match t.messages.get(id)? {
        None => None,
        Some(old) => {
            tables::rescheduled(old.value(), envelope, body.as_deref()).map(|(record, replaced)| {
                // The policy changed the body: it is the message's own now.
                if let Some(stored) = replaced {
                    changes.release(stored);
                }
                record
            })
        }
    };
    if let Some(record) = record {
        t.messages.insert(id, record.as_slice())?;
        t.schedule.insert((queue.as_str(), due, id), ())?;
        *changes.touched.entry(queue).or_default() += 1;
    }
    Ok(())
}

fn bodies(t: &Tables, journal: &Journal, ids: &[u128]) -> Result<Vec<Option<Bytes>>, redb::Error> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(record) = journal.read(*id)? {
            let body = match tables::split_record(&record) {
                Ok((_, tables::StoredBody::Inline(b))) => Some(Bytes::copy_from_slice(b)),
                _ => None,
            };
            out.push(body);
            continue;
        }
        let body = match t.messages.get(*id)? {
            None => None,
            Some(r) => match tables::split_record(r.value()) {
                Ok((_, stored)) => t.body(stored)?.map(|b| Bytes::copy_from_slice(&b)),
                Err(_) => None,
            },
        };
        out.push(body);
    }
    Ok(out)
}

fn due_queues(
    t: &Tables,
    now: u64,
    limit: usize,
    skip: &dyn Fn(&str) -> bool,
) -> Result<DueQueues, redb::Error> {
    let mut due = DueQueues::default();
    for row in t.due_queues.iter()? {
        let (k, _) = row?;
        let (at, queue) = k.value();
        if skip(queue) {
            continue;
        }
        if at > now {
            due.next = Some(at);
            break;
        }
        if due.due.len() < limit {
            due.due.push(queue.to_owned());
        }
    }
    Ok(due)
}

fn take_scheduled(
    t: &mut Tables,
    queue: &str,
    until: u64,
    max: usize,
    changes: &mut Changes,
) -> Result<Vec<Message>, redb::Error> {
    let keys = scheduled_keys(t, queue, until, max)?;
    let mut out = Vec::with_capacity(keys.len());
    let mut shared = PagedShared::default();
    for (due, id) in keys {
        t.schedule.remove((queue, due, id))?;
        let Some(raw) = t.messages.remove(id)?.map(|r| r.value().to_vec()) else {
            continue;
        };
        match paged_message(t, id, &raw, usize::MAX, &mut shared)? {
            Ok((m, _)) => out.push(m),
            Err(why) => {
                tracing::error!(id = %uuid::Uuid::from_u128(id), %why, "undecodable record removed (bounced or expired)")
            }
        }
        if let Ok((_, stored)) = tables::split_record(&raw) {
            changes.release(stored);
        }
    }
    Ok(out)
}

/// Moves up to `max` entries due after `now` to `now`, queue by queue; the
/// moved entries sort before `now + 1`, so a next call does not see them.
fn retry_now(
    t: &mut Tables,
    now: u64,
    max: usize,
    changes: &mut Changes,
) -> Result<u64, redb::Error> {
    let queues: Vec<String> = t
        .queues
        .iter()?
        .map(|row| row.map(|(k, _)| k.value().to_owned()))
        .collect::<Result<_, _>>()?;
    let mut moved = 0;
    for queue in queues {
        let later: Vec<(u64, u128)> = t
            .schedule
            .range((queue.as_str(), now + 1, 0u128)..=(queue.as_str(), u64::MAX, u128::MAX))?
            .take(max - moved)
            .map(|row| row.map(|(k, _)| (k.value().1, k.value().2)))
            .collect::<Result<_, _>>()?;
        for (due, id) in &later {
            t.schedule.remove((queue.as_str(), *due, *id))?;
            t.schedule.insert((queue.as_str(), now, *id), ())?;
        }
        if !later.is_empty() {
            changes.touched.entry(queue).or_default();
        }
        moved += later.len();
        if moved >= max {
            break;
        }
    }
    Ok(moved as u64)
}

fn counts(t: &Tables, changes: &Changes) -> Result<SpoolCounts, redb::Error> {
    let journaled = changes.journal.live_count() as u64;
    let mut scheduled = Vec::new();
    for row in t.queues.iter()? {
        let (k, v) = row?;
        scheduled.push((k.value().to_owned(), v.value().0));
    }
    Ok(SpoolCounts {
        messages: t.messages.len()? + journaled,
        active: changes.active.len() as u64 + journaled,
        shared_bodies: t.bodies.len()?,
        scheduled,
    })
}

/// Up to `max` (due, id) of `queue`'s schedule with due <= `until`, earliest first.
fn scheduled_keys(
    t: &Tables,
    queue: &str,
    until: u64,
    max: usize,
) -> Result<Vec<(u64, u128)>, redb::Error> {
    let mut keys = Vec::new();
    for row in t
        .schedule
        .range((queue, 0u64, 0u128)..=(queue, until, u128::MAX))?
    {
        if keys.len() >= max {
            break;
        }
        let (k, _) = row?;
        let (_, due, id) = k.value();
        keys.push((due, id));
    }
    Ok(keys)
}

/// What the messages of one batch of reads share: recipients of one
/// injection get one copy of their body, read once (only bodies that fitted
/// the byte budget are kept), and one meta map, decoded once.
#[derive(Default)]
struct PagedShared {
    bodies: HashMap<u128, Option<Bytes>>,
    meta: tables::MetaMemo,
}

impl PagedShared {
    /// The stored body's size and, when it is at most `fits` bytes, the body.
    fn get(
        &mut self,
        t: &Tables,
        stored: tables::StoredBody,
        fits: usize,
    ) -> Result<Option<(usize, Option<Bytes>)>, redb::Error> {
        let id = match stored {
            tables::StoredBody::Inline(b) => {
                let body = (b.len() <= fits).then(|| Bytes::copy_from_slice(b));
                return Ok(Some((b.len(), body)));
            }
            tables::StoredBody::Shared(id) => id,
        };
        if let Some(Some(b)) = self.bodies.get(&id) {
            return Ok(Some((b.len(), (b.len() <= fits).then(|| b.clone()))));
        }
        let Some(row) = t.bodies.get(id)? else {
            return Ok(None);
        };
        let b = row.value();
        let body = (b.len() <= fits).then(|| Bytes::copy_from_slice(b));
        self.bodies.insert(id, body.clone());
        Ok(Some((b.len(), body)))
    }
}

/// A scheduled record as a message, with its body when it fits `budget`, and
/// the id of the shared body it refers to; `Err` says why the record cannot
/// be read.
fn paged_message(
    t: &Tables,
    id: u128,
    raw: &[u8],
    budget: usize,
    shared: &mut PagedShared,
) -> Result<Result<(Message, Option<u128>), String>, redb::Error> {
    let (env, stored) = match tables::split_record(raw) {
        Ok(parts) => parts,
        Err(why) => return Ok(Err(why)),
    };
    let envelope = match tables::decode_envelope_with(env, &mut shared.meta) {
        Ok(e) => e,
        Err(why) => return Ok(Err(why)),
    };
    let mid = MessageId::from_u128(id);
    let Some((size, body)) = shared.get(t, stored, budget)? else {
        return Ok(Err(format!("the shared body of message {mid} is missing")));
    };
    let m = match body {
        Some(b) => Message::from_parts(mid, envelope, b),
        None => Message::without_body(mid, envelope, size),
    };
    let shared = match stored {
        tables::StoredBody::Shared(b) => Some(b),
        tables::StoredBody::Inline(_) => None,
    };
    Ok(Ok((m, shared)))
}

fn page_in(
    t: &mut Tables,
    queue: &str,
    max: usize,
    now: u64,
    max_age_ms: u64,
    mut body_bytes: usize,
    changes: &mut Changes,
) -> Result<Paged, redb::Error> {
    // One more than wanted, to tell whether more are due.
    let mut keys = scheduled_keys(t, queue, now, max.saturating_add(1))?;
    let more_due = keys.len() > max;
    keys.truncate(max);
    let mut paged = Paged {
        more_due,
        ..Paged::default()
    };
    let mut shared = PagedShared::default();
    for (due, id) in keys {
        t.schedule.remove((queue, due, id))?;
        let read = match t.messages.get(id)? {
            None => None,
            Some(row) => Some(
                paged_message(t, id, row.value(), body_bytes, &mut shared)?
                    .map_err(|why| (why, row.value().to_vec())),
            ),
        };
        let (m, body_id) = match read {
            Some(Ok(found)) => found,
            Some(Err((why, raw))) => {
                t.quarantine(id, &raw, &why)?;
                continue;
            }
            None => {
                tracing::error!(id = %uuid::Uuid::from_u128(id), %queue, "scheduled message has no record; dropped from the schedule");
                continue;
            }
        };
        if now.saturating_sub(m.created_ms()) >= max_age_ms {
            // Its log record may name headers: bring the body along.
            if !m.has_body()
                && let Some(row) = t.messages.get(id)?
                && let Ok((_, stored)) = tables::split_record(row.value())
                && let Some((_, Some(b))) = shared.get(t, stored, usize::MAX)?
            {
                m.attach_body(b);
            }
            t.messages.remove(id)?;
            if let Some(b) = body_id {
                changes.release(tables::StoredBody::Shared(b));
            }
            paged.expired.push(m);
            continue;
        }
        if m.has_body() {
            body_bytes -= m.size();
        }
        paged.messages.push(m);
    }
    let ids: Vec<u128> = paged.messages.iter().map(|m| m.id().as_u128()).collect();
    changes.active.add(t, &ids)?;
    Ok(paged)
}
