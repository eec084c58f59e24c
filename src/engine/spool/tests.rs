use super::tables::{MESSAGES, StoredBody, encode_envelope, encode_record};
use super::*;
use crate::model::message::now_ms;
use bytes::Bytes;
use redb::Database;
use redb::{ReadableDatabase, ReadableTable};
use std::sync::Arc;

fn message(n: usize) -> Message {
    Message::new(
        "s@x".into(),
        format!("r{n}@amqp"),
        Default::default(),
        Bytes::from(format!("body {n}\0\u{ff}").into_bytes()),
    )
}

/// `n` recipients of one injection, sharing `body`.
pub(super) fn recipients(n: usize, body: &Bytes) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(
                "s@x".into(),
                format!("r{i}@amqp"),
                Default::default(),
                body.clone(),
            )
        })
        .collect()
}

/// `msgs` as messages to store in `queue`, in memory or on the schedule.
pub(super) fn news<'a>(msgs: &'a [Message], queue: &'a str, active: bool) -> Vec<NewMessage<'a>> {
    msgs.iter()
        .map(|msg| NewMessage { msg, queue, active })
        .collect()
}

async fn store(spool: &Spool, msgs: &[Message], queue: &str, active: bool) {
    spool.insert(&news(msgs, queue, active)).await.unwrap();
}

/// The writer thread exits when the last handle drops; wait for the file lock.
async fn reopen(dir: &Path) -> (Spool, Opened) {
    loop {
        match Spool::open(dir) {
            Ok(x) => return x,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

fn never_skip() -> Box<dyn Fn(&str) -> bool + Send> {
    Box::new(|_| false)
}

#[tokio::test]
async fn reopened_spool_schedules_everything_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<_> = (0..50).map(message).collect();
    {
        let (spool, opened) = Spool::open(dir.path()).unwrap();
        assert_eq!(opened.messages, 0);
        store(&spool, &msgs[..30], "amqp", true).await;
        store(&spool, &msgs[30..], "amqp", false).await;
        spool.remove(msgs[0].id());
        msgs[1].record_attempt(42);
        spool.schedule(&msgs[1], "amqp");
        spool.flush().await.unwrap();
        let c = spool.counts().await.unwrap();
        assert_eq!((c.messages, c.active), (49, 28));
        assert_eq!(c.scheduled, vec![("amqp".to_string(), 21)]);
    }
    let (spool, opened) = reopen(dir.path()).await;
    assert_eq!(opened.messages, 49);
    let c = spool.counts().await.unwrap();
    assert_eq!(c.active, 0, "what was in memory went back on the schedule");
    assert_eq!(c.scheduled, vec![("amqp".to_string(), 49)]);
    let paged = spool
        .page_in("amqp", 100, u64::MAX, usize::MAX)
        .await
        .unwrap();
    assert_eq!(paged.messages.len(), 49);
    assert!(!paged.more_due);
    let one = paged
        .messages
        .iter()
        .find(|m| m.id() == msgs[1].id())
        .unwrap();
    assert_eq!(one.num_attempts(), 1);
    assert_eq!(one.due_ms(), Some(42));
    assert_eq!(one.data().unwrap().as_ref(), "body 1\0\u{ff}".as_bytes());
    assert!(paged.messages.iter().all(|m| m.id() != msgs[0].id()));
    // Earliest due first: the retried message (due 42) comes before the others.
    assert_eq!(paged.messages[0].id(), msgs[1].id());
    let c = spool.counts().await.unwrap();
    assert_eq!((c.active, c.scheduled.len()), (49, 0));
}

#[tokio::test]
async fn page_in_takes_what_is_due_in_order_and_expires_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let msgs: Vec<_> = (0..10).map(message).collect();
    msgs[9].set_due(Some(now_ms() + 3_600_000));
    store(&spool, &msgs, "q", false).await;
    let paged = spool.page_in("q", 4, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(paged.messages.len(), 4);
    assert!(paged.more_due);
    let ids: Vec<_> = paged.messages.iter().map(|m| m.id()).collect();
    assert_eq!(ids, msgs[..4].iter().map(|m| m.id()).collect::<Vec<_>>());
    // max_age 0: everything due is expired and removed, bodies kept for the log.
    let paged = spool.page_in("q", 100, 0, 0).await.unwrap();
    assert_eq!(paged.messages.len(), 0);
    assert_eq!(paged.expired.len(), 5);
    assert!(paged.expired.iter().all(|m| m.has_body()));
    // The one due in an hour is not due.
    let due = spool.due_queues(10, never_skip()).await.unwrap();
    assert!(due.due.is_empty());
    assert!(due.next.is_some_and(|t| t > now_ms() + 3_000_000));
    let c = spool.counts().await.unwrap();
    assert_eq!((c.messages, c.active), (5, 4));
}

#[tokio::test]
async fn bodies_come_along_within_the_byte_budget_and_load_later() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let msgs: Vec<_> = (0..3).map(message).collect();
    store(&spool, &msgs, "q", false).await;
    let size = msgs[0].size();
    let paged = spool.page_in("q", 3, u64::MAX, size * 2).await.unwrap();
    let with: Vec<bool> = paged.messages.iter().map(|m| m.has_body()).collect();
    assert_eq!(with, vec![true, true, false]);
    let refs: Vec<MessageRef> = paged.messages.into_iter().map(Arc::new).collect();
    assert_eq!(refs[2].size(), size, "the size is known without the body");
    spool.load_bodies(&refs).await.unwrap();
    assert_eq!(refs[2].data(), msgs[2].data());
}

#[tokio::test]
async fn due_queues_skip_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let (a, b, c) = (message(1), message(2), message(3));
    a.set_due(Some(10));
    b.set_due(Some(5));
    c.set_due(Some(now_ms() + 60_000));
    store(&spool, std::slice::from_ref(&a), "a", false).await;
    store(&spool, std::slice::from_ref(&b), "b", false).await;
    store(&spool, std::slice::from_ref(&c), "c", false).await;
    let due = spool.due_queues(10, never_skip()).await.unwrap();
    assert_eq!(due.due, vec!["b".to_string(), "a".to_string()]);
    let due = spool
        .due_queues(10, Box::new(|q: &str| q == "b"))
        .await
        .unwrap();
    assert_eq!(due.due, vec!["a".to_string()]);
    let due = spool.due_queues(1, never_skip()).await.unwrap();
    assert_eq!(due.due, vec!["b".to_string()]);
}

#[tokio::test]
async fn a_retry_is_due_as_soon_as_the_spool_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let m = message(1);
    store(&spool, std::slice::from_ref(&m), "q", true).await;
    // Scheduled (deferred in the writer) and asked for in the same breath.
    m.record_attempt(now_ms() - 1);
    spool.schedule(&m, "q");
    let due = spool.due_queues(10, never_skip()).await.unwrap();
    assert_eq!(due.due, vec!["q".to_string()]);
}

#[tokio::test]
async fn take_scheduled_removes_them_with_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let msgs: Vec<_> = (0..5).map(message).collect();
    store(&spool, &msgs, "q", false).await;
    let taken = spool.take_scheduled("q", 3).await.unwrap();
    assert_eq!(taken.len(), 3);
    assert!(taken.iter().all(|m| m.has_body()));
    let taken = spool.take_scheduled("q", 3).await.unwrap();
    assert_eq!(taken.len(), 2);
    let c = spool.counts().await.unwrap();
    assert_eq!(c.messages, 0);
    assert!(c.scheduled.is_empty());
}

#[tokio::test]
async fn retry_now_makes_later_retries_due_in_steps_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let later: Vec<_> = (0..25).map(message).collect();
    store(&spool, &later, "q", true).await;
    store(&spool, &[message(99)], "other", true).await;
    for m in &later {
        m.record_attempt(now_ms() + 3_600_000);
        spool.schedule(m, "q");
    }
    // Due already: not moved, not counted.
    let due_now = message(100);
    store(&spool, std::slice::from_ref(&due_now), "q", false).await;
    let none = spool.page_in("q", 100, u64::MAX, 1 << 20).await.unwrap();
    assert_eq!(none.messages.len(), 1, "only the one due now");
    assert_eq!(spool.retry_now(10).await.unwrap(), 10);
    assert_eq!(spool.retry_now(10).await.unwrap(), 10);
    assert_eq!(spool.retry_now(10).await.unwrap(), 5);
    assert_eq!(spool.retry_now(10).await.unwrap(), 0);
    let due = spool.due_queues(10, never_skip()).await.unwrap();
    assert_eq!(due.due, vec!["q".to_string()]);
    let paged = spool.page_in("q", 100, u64::MAX, 1 << 20).await.unwrap();
    assert_eq!(paged.messages.len(), 25);
    // Their retry bookkeeping is untouched: only the schedule moved.
    assert!(paged.messages.iter().all(|m| m.num_attempts() == 1));
}

#[tokio::test]
async fn a_late_schedule_does_not_resurrect_a_removed_message() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let m = message(1);
    store(&spool, std::slice::from_ref(&m), "q", true).await;
    spool.remove(m.id());
    spool.schedule(&m, "q");
    let c = spool.counts().await.unwrap();
    assert_eq!((c.messages, c.active, c.scheduled.len()), (0, 0, 0));
}

#[tokio::test]
async fn a_changed_body_is_written_when_the_message_is_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let m = message(1);
    store(&spool, std::slice::from_ref(&m), "q", true).await;
    m.set_data(Bytes::from_static(b"rewritten"));
    spool.schedule(&m, "q");
    let paged = spool.page_in("q", 1, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(paged.messages[0].data().unwrap().as_ref(), b"rewritten");
}

#[tokio::test]
async fn corrupt_records_are_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join("spool.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(MESSAGES).unwrap();
            t.insert(
                7u128,
                encode_record(b"{not json", StoredBody::Inline(b"x")).as_slice(),
            )
            .unwrap();
            t.insert(8u128, [200u8, 0, 0, 0, b'{'].as_slice()).unwrap();
            t.insert(9u128, [1u8].as_slice()).unwrap();
            let good = message(1);
            t.insert(
                good.id().as_u128(),
                encode_record(
                    &encode_envelope(&good.envelope()),
                    StoredBody::Inline(b"ok"),
                )
                .as_slice(),
            )
            .unwrap();
        }
        w.commit().unwrap();
    }
    let (spool, opened) = Spool::open(dir.path()).unwrap();
    assert_eq!(opened.quarantined, 3);
    assert_eq!(opened.messages, 1);
    let paged = spool
        .page_in("amqp", 10, u64::MAX, usize::MAX)
        .await
        .unwrap();
    assert_eq!(paged.messages.len(), 1);
}

#[tokio::test]
async fn two_table_spool_is_migrated_without_loss() {
    const OLD_DATA: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("data");
    const OLD_META: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<_> = (0..3).map(message).collect();
    {
        let db = Database::create(dir.path().join("spool.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w.open_table(OLD_META).unwrap();
            let mut data = w.open_table(OLD_DATA).unwrap();
            for m in &msgs {
                let key = m.id().as_u128();
                meta.insert(key, encode_envelope(&m.envelope()).as_slice())
                    .unwrap();
                data.insert(key, m.data().unwrap().as_ref()).unwrap();
            }
            // A torn record: an envelope without its body.
            let torn = message(9);
            meta.insert(1u128, encode_envelope(&torn.envelope()).as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let (spool, opened) = Spool::open(dir.path()).unwrap();
    assert_eq!(opened.messages, 3);
    assert_eq!(opened.quarantined, 1);
    let paged = spool
        .page_in("amqp", 10, u64::MAX, usize::MAX)
        .await
        .unwrap();
    for m in &msgs {
        let got = paged.messages.iter().find(|r| r.id() == m.id()).unwrap();
        assert_eq!(got.data(), m.data());
        assert_eq!(got.recipient(), m.recipient());
    }
}

#[tokio::test]
async fn space_of_a_drained_backlog_is_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let file = dir.path().join("spool.redb");
    let mut sizes = Vec::new();
    // Without reuse each round adds its own size; with it the file wanders
    // within a band (redb's allocation depends on commit timing).
    for round in 0..6 {
        for chunk in 0..20 {
            let msgs: Vec<_> = (0..500)
                .map(|i| message(round * 100_000 + chunk * 500 + i))
                .collect();
            store(&spool, &msgs, "q", false).await;
        }
        loop {
            let paged = spool.page_in("q", 1000, u64::MAX, 0).await.unwrap();
            for m in &paged.messages {
                spool.remove(m.id());
            }
            if !paged.more_due {
                break;
            }
        }
        spool.flush().await.unwrap();
        // Commits free pages only after a later commit: give it one.
        spool.flush().await.unwrap();
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    let most = *sizes.iter().max().unwrap();
    assert!(
        most < sizes[0] * 7 / 4,
        "the file keeps growing across equal backlogs: {sizes:?}"
    );
}

#[tokio::test]
async fn recipients_of_one_body_share_it_until_the_last_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let body = Bytes::from(vec![b'x'; 4096]);
    let msgs = recipients(5, &body);
    store(&spool, &msgs[..3], "amqp", true).await;
    store(&spool, &msgs[3..], "amqp", false).await;
    let c = spool.counts().await.unwrap();
    assert_eq!((c.messages, c.shared_bodies), (5, 2), "one body per insert");
    // Read back through the shared body, whole and without it.
    let refs: Vec<MessageRef> = msgs[..3]
        .iter()
        .map(|m| Arc::new(Message::without_body(m.id(), m.envelope(), m.size())))
        .collect();
    spool.load_bodies(&refs).await.unwrap();
    assert!(refs.iter().all(|m| m.data().unwrap() == body));
    let paged = spool.page_in("amqp", 10, u64::MAX, 0).await.unwrap();
    assert_eq!(paged.messages.len(), 2);
    assert!(
        paged
            .messages
            .iter()
            .all(|m| !m.has_body() && m.size() == 4096)
    );
    // One recipient's body changed by the policy becomes its own.
    msgs[0].set_data(Bytes::from_static(b"mine"));
    spool.schedule(&msgs[0], "amqp");
    for m in &msgs[1..] {
        spool.remove(m.id());
    }
    let c = spool.counts().await.unwrap();
    assert_eq!(
        (c.messages, c.shared_bodies),
        (1, 0),
        "no body outlives its records"
    );
    let paged = spool
        .page_in("amqp", 10, u64::MAX, usize::MAX)
        .await
        .unwrap();
    assert_eq!(paged.messages[0].data().unwrap().as_ref(), b"mine");
}

#[tokio::test]
async fn paged_in_recipients_share_one_copy_of_their_body() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let body = Bytes::from(vec![b'y'; 2048]);
    let msgs = recipients(4, &body);
    store(&spool, &msgs, "amqp", false).await;
    // Room for three bodies: the fourth recipient comes without one.
    let paged = spool.page_in("amqp", 10, u64::MAX, 3 * 2048).await.unwrap();
    let with: Vec<Bytes> = paged.messages.iter().filter_map(|m| m.data()).collect();
    assert_eq!((paged.messages.len(), with.len()), (4, 3));
    assert!(with.iter().all(|b| *b == body));
    assert!(
        with.iter().all(|b| b.as_ptr() == with[0].as_ptr()),
        "one copy in memory, not one per recipient"
    );
    assert_ne!(with[0].as_ptr(), body.as_ptr(), "read back from the spool");
}

#[tokio::test]
async fn paged_in_recipients_share_one_meta_map_until_one_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let meta = |v: &str| {
        let mut m = serde_json::Map::new();
        m.insert("tenant".into(), v.into());
        m.insert("received_from".into(), "10.0.0.1".into());
        crate::model::message::Meta::new(m)
    };
    let (a, b) = (meta("a"), meta("b"));
    let metas = [&a, &a, &b, &a];
    let msgs: Vec<_> = (0..4)
        .map(|i| {
            Message::new(
                "s@x".into(),
                format!("r{i}@amqp"),
                metas[i].clone(),
                "x".into(),
            )
        })
        .collect();
    store(&spool, &msgs, "amqp", false).await;
    let paged = spool
        .page_in("amqp", 10, u64::MAX, usize::MAX)
        .await
        .unwrap();
    let got: Vec<_> = paged.messages.iter().map(|m| m.envelope().meta).collect();
    let tenants: Vec<_> = got.iter().map(|m| m["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["a", "a", "b", "a"]);
    assert!(got.iter().all(|m| m["received_from"] == "10.0.0.1"));
    assert!(Arc::ptr_eq(&got[0], &got[1]), "read in a row: one map");
    assert!(!Arc::ptr_eq(&got[0], &a), "decoded from the spool");
    // A change is the changer's own.
    paged.messages[1].set_meta("tenant", "c".into());
    assert_eq!(paged.messages[1].get_meta("tenant").unwrap(), "c");
    assert_eq!(paged.messages[0].get_meta("tenant").unwrap(), "a");
    assert_eq!(got[0]["tenant"], "a");
}

#[test]
fn envelopes_read_back_as_written_and_older_ones_get_defaults() {
    use crate::model::message::Envelope;
    let mut meta = serde_json::Map::new();
    meta.insert("queue".into(), "q".into());
    meta.insert(
        "n".into(),
        serde_json::json!({"a": [1, 2.5, null, "\u{e9}\n"]}),
    );
    let e = Envelope {
        sender: "s\"x@y".into(),
        recipient: "r@z".into(),
        meta: meta.into(),
        created_ms: 7,
        num_attempts: 3,
        due_ms: Some(9),
    };
    assert_eq!(tables::decode_envelope(&encode_envelope(&e)).unwrap(), e);
    // As written before meta, attempts and retry times were recorded.
    let old = tables::decode_envelope(br#"{"sender":"s@x","recipient":"r@y","created_ms":5}"#);
    let old = old.unwrap();
    assert_eq!(
        (old.meta.len(), old.num_attempts, old.due_ms, old.created_ms),
        (0, 0, None, 5)
    );
    let bad = br#"{"sender":"s@x","recipient":"r@y","created_ms":5,"meta":[1]}"#;
    let err = tables::decode_envelope(bad).unwrap_err();
    assert!(err.starts_with("meta: "), "{err}");
}

#[test]
fn out_of_space_is_recognised_by_the_error_kind() {
    use std::io::{Error, ErrorKind};
    assert!(is_out_of_space(&Error::from_raw_os_error(28)));
    assert!(is_out_of_space(&Error::from_raw_os_error(122)));
    assert!(is_out_of_space(&Error::from(ErrorKind::StorageFull)));
    assert!(!is_out_of_space(&Error::from_raw_os_error(5)));
    assert!(!is_out_of_space(&Error::other("No space left on device")));
    let full = SpoolError::from_redb(redb::Error::Io(Error::from_raw_os_error(28)));
    assert!(full.is_full());
    let other = SpoolError::from_redb(redb::Error::Io(Error::from_raw_os_error(5)));
    assert!(!other.is_full());
}

#[tokio::test]
async fn in_memory_messages_are_one_row_per_batch_until_the_last_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<_> = (0..20).map(message).collect();
    {
        let (spool, _) = Spool::open(dir.path()).unwrap();
        store(&spool, &msgs[..10], "amqp", true).await;
        store(&spool, &msgs[10..], "amqp", false).await;
        let paged = spool
            .page_in("amqp", 10, u64::MAX, usize::MAX)
            .await
            .unwrap();
        assert_eq!(paged.messages.len(), 10);
        // The insert's row goes with its last message; the page-in's stays.
        for m in &msgs[..15] {
            spool.remove(m.id());
        }
        spool.flush().await.unwrap();
        assert_eq!(spool.counts().await.unwrap().active, 5);
        spool.close().await.unwrap();
    }
    let rows: Vec<Vec<u128>> = {
        let db = Database::open(dir.path().join("spool.redb")).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(tables::ACTIVE_SETS).unwrap();
        t.iter()
            .unwrap()
            .map(|row| tables::set_ids(row.unwrap().1.value()).collect())
            .collect()
    };
    let listed: Vec<u128> = msgs[10..].iter().map(|m| m.id().as_u128()).collect();
    assert_eq!(rows, vec![listed], "one row, listing the whole page-in");
    let (spool, opened) = reopen(dir.path()).await;
    assert_eq!(opened.messages, 5);
    let c = spool.counts().await.unwrap();
    assert_eq!(
        c.scheduled,
        vec![("amqp".to_string(), 5)],
        "only those left"
    );
}

/// Messages held in memory live in the journal until it is emptied into
/// redb: every few inserts here. Whether they were moved or not, delivering,
/// retrying, reading a body and counting act the same, and a restart
/// schedules what is left.
#[tokio::test]
async fn held_messages_outlive_the_journal_being_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let msgs: Vec<_> = (0..40).map(message).collect();
    {
        let (spool, _) = Spool::open_with_journal_limit(dir.path(), 512).unwrap();
        for m in &msgs {
            store(&spool, std::slice::from_ref(m), "amqp", true).await;
        }
        for m in &msgs[..13] {
            spool.remove(m.id());
        }
        for m in &msgs[13..26] {
            m.record_attempt(now_ms() + 3_600_000);
            spool.schedule(m, "amqp");
        }
        // One of the last inserts is still in the journal, one was moved.
        let refs: Vec<MessageRef> = [&msgs[30], &msgs[39]]
            .into_iter()
            .map(|m| Arc::new(Message::without_body(m.id(), m.envelope(), m.size())))
            .collect();
        spool.load_bodies(&refs).await.unwrap();
        assert_eq!(refs[0].data(), msgs[30].data());
        assert_eq!(refs[1].data(), msgs[39].data());
        spool.flush().await.unwrap();
        let c = spool.counts().await.unwrap();
        assert_eq!((c.messages, c.active), (27, 14));
        assert_eq!(c.scheduled, vec![("amqp".to_string(), 13)]);
        spool.close().await.unwrap();
    }
    let (spool, opened) = reopen(dir.path()).await;
    assert_eq!(opened.messages, 27);
    let taken = spool.take_scheduled("amqp", 100).await.unwrap();
    let mut got: Vec<_> = taken.iter().map(|m| (m.id(), m.data())).collect();
    let mut want: Vec<_> = msgs[13..].iter().map(|m| (m.id(), m.data())).collect();
    got.sort_by_key(|(id, _)| id.as_u128());
    want.sort_by_key(|(id, _)| id.as_u128());
    assert_eq!(got, want);
}
