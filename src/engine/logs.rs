//! Where log records go: local JSON-lines segments (rotated, optionally
//! zstd) and log hooks, which turn records into spooled messages.

use super::Engine;
use super::log_record::{Event, Selection};
use crate::model::log_config::{LocalLogsConfig, LogHookConfig};
use crate::model::message::Message;
use crate::model::message::MessageRef;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// On the way to the log hooks: (hook name, record), or a barrier that is
/// answered once everything sent before it is spooled.
pub enum HookItem {
    Record(String, Value),
    Barrier(oneshot::Sender<()>),
}

pub type HookRecords = mpsc::UnboundedReceiver<HookItem>;

enum LocalOp {
    Line(Vec<u8>),
    Close(oneshot::Sender<()>),
}

#[derive(Default)]
pub struct Logs {
    local: Option<(mpsc::UnboundedSender<LocalOp>, Selection)>,
    hooks: Vec<(String, Selection)>,
    hook_tx: Option<mpsc::UnboundedSender<HookItem>>,
}

/// A message made by a log hook: its own records are never hooked again.
pub fn is_hook_message(m: &Message) -> bool {
    m.get_meta("log_record").is_some()
}

impl Logs {
    pub fn new(
        local: Option<LocalLogsConfig>,
        hooks: Vec<LogHookConfig>,
    ) -> Result<(Logs, Option<HookRecords>), String> {
        let local = match local {
            Some(cfg) => {
                std::fs::create_dir_all(&cfg.log_dir).map_err(|e| {
                    format!("local logs: cannot create {}: {e}", cfg.log_dir.display())
                })?;
                if !(0..=22).contains(&cfg.compression_level) {
                    return Err("local logs: compression_level must be 0 to 22".into());
                }
                let sel = Selection {
                    headers: cfg.headers.clone(),
                    meta: cfg.meta.clone(),
                    per_record: cfg.per_record.clone(),
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let rt = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
                std::thread::Builder::new()
                    .name("local-logs".into())
                    .spawn(move || SegmentWriter::new(cfg, rt).run(rx))
                    .map_err(|e| e.to_string())?;
                Some((tx, sel))
            }
            None => None,
        };
        let (hook_tx, hook_rx) = if hooks.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let hooks = hooks
            .into_iter()
            .map(|h| {
                (
                    h.name,
                    Selection {
                        headers: h.headers,
                        meta: h.meta,
                        per_record: h.per_record,
                    },
                )
            })
            .collect();
        Ok((
            Logs {
                local,
                hooks,
                hook_tx,
            },
            hook_rx,
        ))
    }

    /// Someone reads log records (local logs or a log hook).
    pub fn wanted(&self) -> bool {
        self.local.is_some() || self.hook_tx.is_some()
    }

    pub fn emit(&self, ev: &Event) {
        if let Some((tx, sel)) = self.local.as_ref().filter(|(_, sel)| sel.wants(ev.kind)) {
            let mut line = serde_json::to_vec(&ev.record(sel)).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(LocalOp::Line(line));
        }
        if let Some(tx) = &self.hook_tx
            && !is_hook_message(ev.msg)
        {
            for (name, sel) in self.hooks.iter().filter(|(_, sel)| sel.wants(ev.kind)) {
                let _ = tx.send(HookItem::Record(name.clone(), ev.record(sel)));
            }
        }
    }

    /// Waits until every record emitted so far is spooled by its hook.
    pub async fn drain_hooks(&self) {
        if let Some(tx) = &self.hook_tx {
            let (done, wait) = oneshot::channel();
            if tx.send(HookItem::Barrier(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Closes the current local segment so everything written is readable.
    pub async fn close(&self) {
        if let Some((tx, _)) = &self.local {
            let (done, wait) = oneshot::channel();
            if tx.send(LocalOp::Close(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }
}

/// Turns records into spooled messages, in batches: each batch is offered to
/// `should_enqueue_log_record` and accepted with one durable commit.
pub async fn run_hooks(engine: Arc<Engine>, mut rx: HookRecords) {
    let mut items = Vec::new();
    while rx.recv_many(&mut items, 512).await > 0 {
        let mut records = Vec::new();
        for item in items.drain(..) {
            match item {
                HookItem::Record(hook, record) => records.push((hook, record)),
                HookItem::Barrier(done) => {
                    spool_records(&engine, std::mem::take(&mut records)).await;
                    let _ = done.send(());
                }
            }
        }
        spool_records(&engine, records).await;
    }
}

async fn spool_records(engine: &Arc<Engine>, records: Vec<(String, Value)>) {
    if records.is_empty() {
        return;
    }
    let policy = engine.policy();
    let mut msgs: Vec<MessageRef> = Vec::new();
    for (hook, record) in records {
        let mut body = serde_json::to_vec(&record).unwrap_or_default();
        body.push(b'\n');
        let mut meta = Map::new();
        meta.insert("log_record".into(), record);
        meta.insert("reception_protocol".into(), Value::from("LogRecord"));
        let msg = Arc::new(Message::new(
            "nobody@localhost".into(),
            format!("log@{hook}"),
            meta.into(),
            body.into(),
        ));
        match policy.should_enqueue_log_record(&msg, &hook).await {
            Ok(true) => msgs.push(msg),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(hook = %hook, error = %e, "should_enqueue_log_record failed; record dropped")
            }
        }
    }
    if msgs.is_empty() {
        return;
    }
    for (res, m) in engine.receive(msgs.clone()).await.into_iter().zip(&msgs) {
        if let Err(r) = res {
            tracing::warn!(id = %m.id(), code = r.code, reason = %r.reason, "log hook message not accepted");
        }
    }
}

struct SegmentWriter {
    cfg: LocalLogsConfig,
    rt: tokio::runtime::Handle,
    current: Option<Segment>,
    /// After `close`, the process may end at any moment: each later line
    /// goes into a segment that is finished at once, never left open.
    closed: bool,
}

struct Segment {
    out: Box<dyn Write + Send>,
    encoder: Option<zstd::Encoder<'static, std::io::BufWriter<std::fs::File>>>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

impl SegmentWriter {
    fn new(cfg: LocalLogsConfig, rt: tokio::runtime::Handle) -> Self {
        SegmentWriter {
            cfg,
            rt,
            current: None,
            closed: false,
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<LocalOp>) {
        loop {
            let wait = match (&self.current, self.cfg.max_segment_duration) {
                (Some(s), Some(d)) => d.saturating_sub(s.opened.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let op = self
                .rt
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await });
            match op {
                Ok(Some(LocalOp::Line(line))) => {
                    if let Err(e) = self.write(&line) {
                        tracing::error!(error = %e, dir = %self.cfg.log_dir.display(), "local log write failed");
                        self.current = None;
                    }
                    if self.closed {
                        self.close_segment();
                    }
                }
                Ok(Some(LocalOp::Close(done))) => {
                    self.close_segment();
                    self.closed = true;
                    let _ = done.send(());
                }
                Ok(None) => {
                    self.close_segment();
                    return;
                }
                // The segment is old enough: close it even though nothing came.
                Err(_) => self.close_segment(),
            }
        }
    }

    fn open(&self) -> std::io::Result<Segment> {
        let stamp = humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        let ext = if self.cfg.compression_level > 0 {
            ".zst"
        } else {
            ""
        };
        let path = self.cfg.log_dir.join(format!("{stamp}{ext}"));
        let file = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)?,
        );
        let (out, encoder): (Box<dyn Write + Send>, _) = if self.cfg.compression_level > 0 {
            (
                Box::new(std::io::sink()),
                Some(zstd::Encoder::new(file, self.cfg.compression_level)?),
            )
        } else {
            (Box::new(file), None)
        };
        Ok(Segment {
            out,
            encoder,
            path,
            bytes: 0,
            opened: Instant::now(),
        })
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let seg = self.current.as_mut().expect("opened above");
        match &mut seg.encoder {
            Some(enc) => enc.write_all(line)?,
            None => {
                seg.out.write_all(line)?;
                seg.out.flush()?;
            }
        }
        seg.bytes += line.len() as u64;
        let too_old = self
            .cfg
            .max_segment_duration
            .is_some_and(|d| seg.opened.elapsed() >= d);
        if seg.bytes >= self.cfg.max_file_size || too_old {
            self.close_segment();
        }
        Ok(())
    }

    fn close_segment(&mut self) {
        if let Some(mut seg) = self.current.take() {
            let result = match seg.encoder.take() {
                Some(enc) => enc.finish().and_then(|mut f| f.flush()),
                None => seg.out.flush(),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, path = %seg.path.display(), "closing a local log segment failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::message::Message;
    use std::io::Read;

    fn event(msg: &Message) -> Event<'_> {
        Event {
            kind: super::super::log_record::RecordType::Delivery,
            msg,
            queue: "q",
            response: super::super::log_record::Response::parse("250 ok"),
            lua_constructor: Some("make.q"),
        }
    }

    /// Every segment decodes to the end, with the lines it holds.
    fn complete_lines(dir: &std::path::Path) -> Option<usize> {
        let mut lines = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let mut text = String::new();
            let mut dec = zstd::Decoder::new(std::fs::File::open(e.path()).unwrap()).ok()?;
            dec.read_to_string(&mut text).ok()?;
            lines += text.lines().count();
        }
        Some(lines)
    }

    #[tokio::test]
    async fn a_record_after_close_never_leaves_a_truncated_segment() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: LocalLogsConfig = serde_json::from_value(serde_json::json!({
            "log_dir": dir.path(), "compression_level": 3
        }))
        .unwrap();
        let (logs, _) = Logs::new(Some(cfg), vec![]).unwrap();
        let m = Message::new("s@x".into(), "r@q".into(), Default::default(), "b".into());
        logs.emit(&event(&m));
        logs.close().await;
        assert_eq!(complete_lines(dir.path()), Some(1));
        // A record emitted after close (a late delivery at shutdown): the
        // process may exit now without closing again.
        logs.emit(&event(&m));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while complete_lines(dir.path()) != Some(2) {
            assert!(
                std::time::Instant::now() < deadline,
                "the segment opened after close is never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
