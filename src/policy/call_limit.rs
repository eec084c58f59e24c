//! Limits on one call into a policy, checked by a hook every
//! [`HOOK_EVERY`] VM instructions: a deadline, past which the call fails; and
//! a call that computes for long hands its worker thread's other tasks to
//! another thread, so a policy looping until its deadline does not hold up
//! the listeners and the other queues (the runtime has about one worker per
//! core, not spare ones for this case).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// VM instructions between two checks.
pub const HOOK_EVERY: u32 = 100_000;
/// How long a hand-off waits for another thread to take over the worker.
const HANDOFF_PAUSE: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct CallLimit {
    deadline: Mutex<Option<Instant>>,
    /// Checks during the current call. From the second one on, the call
    /// itself ran at least `HOOK_EVERY` instructions (the first may count
    /// earlier calls' instructions too).
    checks: AtomicU32,
}

impl CallLimit {
    /// A new call starts: it may run until `limit` from now (None: no limit).
    pub fn start(&self, limit: Option<Duration>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) =
            limit.map(|l| Instant::now() + l);
        self.checks.store(0, Ordering::Relaxed);
    }

    /// The hook's check: an error past the deadline; the worker's other tasks
    /// handed away once the call has computed for long.
    pub fn check(&self) -> mlua::Result<mlua::VmState> {
        let expired = self
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|d| Instant::now() > d);
        if expired {
            return Err(mlua::Error::runtime(
                "the policy ran past its time limit (an endless loop?)",
            ));
        }
        // The 2nd, 4th, 8th… check: a hand-off that lost the race is tried
        // again, at a cost that stays negligible for a call this long.
        let n = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= 2 && n.is_power_of_two() {
            release_worker();
        }
        Ok(mlua::VmState::Continue)
    }
}

/// Lets the runtime run this worker's other tasks on another thread while the
/// current call goes on computing here (tokio's `block_in_place`; only a
/// multi-threaded runtime can do it).
fn release_worker() {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        // The other thread must take the worker's place before this returns,
        // or the worker is taken back; a short pause lets it.
        tokio::task::block_in_place(|| std::thread::sleep(HANDOFF_PAUSE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A state whose hook checks `limit`, as the policy's states do.
    fn limited_lua() -> (mlua::Lua, Arc<CallLimit>) {
        let lua = mlua::Lua::new();
        let limit = Arc::new(CallLimit::default());
        let hook_limit = limit.clone();
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| hook_limit.check(),
        )
        .unwrap();
        (lua, limit)
    }

    #[test]
    fn a_long_computation_hands_its_worker_to_the_other_tasks() {
        // One worker: while a policy spins, nothing else would run on it.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (lua, limit) = limited_lua();
            let stop = Arc::new(AtomicBool::new(false));
            let seen = stop.clone();
            let stopped = lua
                .create_function(move |_, ()| Ok(seen.load(Ordering::Relaxed)))
                .unwrap();
            lua.globals().set("stopped", stopped).unwrap();
            let spinning = Arc::new(AtomicBool::new(false));
            let started = spinning.clone();
            let spin = tokio::spawn(async move {
                started.store(true, Ordering::Relaxed);
                limit.start(Some(Duration::from_secs(3)));
                lua.load("while not stopped() do end")
                    .call_async::<()>(())
                    .await
            });
            while !spinning.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let other = tokio::spawn(async { tokio::time::sleep(Duration::from_millis(5)).await });
            let ran = tokio::time::timeout(Duration::from_secs(5), other).await;
            stop.store(true, Ordering::Relaxed);
            assert!(
                matches!(ran, Ok(Ok(()))),
                "another task ran while the policy computed"
            );
            spin.await
                .unwrap()
                .expect("stopped by the test, not by its deadline: other tasks ran meanwhile");
        });
    }

    #[test]
    fn past_the_deadline_the_call_fails() {
        let (lua, limit) = limited_lua();
        limit.start(Some(Duration::from_millis(50)));
        let err = lua.load("while true do end").exec().unwrap_err();
        assert!(err.to_string().contains("ran past its time limit"), "{err}");
        limit.start(None);
        lua.load("for i = 1, 300000 do end").exec().unwrap();
    }
}
