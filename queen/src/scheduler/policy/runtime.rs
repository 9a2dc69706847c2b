//! The Rhai runtime: a sandboxed engine with the policy API, compiling, and running one
//! call under the sandbox limits and a wall-time budget.
//!
//! Each call runs on a thread of its own, and at most one call per core runs at once
//! (the others wait for a slot, up to [`MAX_SLOT_WAIT`]), so that the wall-time budget
//! measures the script and not its neighbours. The budget starts when the call's thread
//! starts. The script is stopped at its deadline by the
//! engine's progress hook (checked at every step) and by the metered natives (checked as
//! they walk); and whatever the script calls, the caller stops waiting a grace period
//! after the deadline and answers [`PolicyError::Abandoned`]. A thread the caller gave
//! up on finishes on its own and keeps its slot until then, so runaway threads never
//! outnumber the slots. No policy thread holds a lock of the scheduler or a Tokio
//! worker, so nothing else (reservation upkeep, other RPCs, shutdown) waits on a policy.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Scope};

use super::decision::{self, Decision};
use super::error::{PolicyError, ScriptPosition};
use super::{Limits, Policy, api, sandbox};
use crate::scheduler::bounded_text;
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::view::FleetView;

/// Longest a call waits for a free slot before it is refused.
pub const MAX_SLOT_WAIT: Duration = Duration::from_secs(2);

/// The shortest grace the caller waits past the budget before it stops waiting.
const MIN_GRACE: Duration = Duration::from_millis(250);

/// Stack of a policy thread (scripts may nest calls 32 deep).
const STACK_BYTES: usize = 4 << 20;

/// A call's thread is running.
const RUNNING: u8 = 0;
/// It finished.
const FINISHED: u8 = 1;
/// Its caller stopped waiting for it.
const ABANDONED: u8 = 2;

/// The Rhai runtime with the policy API registered.
pub struct PolicyRuntime {
    /// The engine (Send + Sync with rhai's `sync` feature), shared with call threads.
    engine: Arc<Engine>,
    /// The limits, for the budget and messages.
    limits: Limits,
    /// Slots for calls running at once.
    slots: Arc<Slots>,
}

/// A counting semaphore for call threads (blocking: callers are blocking threads).
struct Slots {
    /// Slots free now.
    free: Mutex<usize>,
    /// Signalled when a slot is freed.
    freed: Condvar,
    /// Slots in all.
    total: usize,
}

impl Slots {
    fn new(total: usize) -> Self {
        Self { free: Mutex::new(total), freed: Condvar::new(), total }
    }

    /// Takes a slot, waiting at most `patience`.
    fn take(self: &Arc<Self>, patience: Duration) -> Option<Slot> {
        let deadline = Instant::now() + patience;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
            free = self.freed.wait_timeout(free, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *free -= 1;
        Some(Slot(self.clone()))
    }
}

/// A taken slot, given back when dropped (by the call's thread, when it ends).
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl PolicyRuntime {
    /// A sandboxed engine with the policy API.
    pub fn new(limits: Limits) -> Self {
        Self::with_natives(limits, |_| {})
    }

    /// [`Self::new`], with more natives (tests register misbehaving ones).
    pub(crate) fn with_natives(limits: Limits, more: impl FnOnce(&mut Engine)) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_modules(0);
        sandbox::install(&mut engine);
        api::register(&mut engine);
        more(&mut engine);
        Self { engine: Arc::new(engine), limits, slots: Arc::new(Slots::new(limits.parallel.max(1))) }
    }

    /// Compiles a policy; it must define `fn place(request, fleet)`.
    pub fn compile(&self, source: &str, text: &str) -> Result<Policy, PolicyError> {
        let ast = self.engine.compile(text).map_err(|e| PolicyError::Syntax {
            message: bounded_text::bound_owned(e.0.to_string()),
            at: e.1.into(),
        })?;
        if !ast.iter_functions().any(|f| f.name == "place" && f.params.len() == 2) {
            return Err(PolicyError::NoPlaceFn);
        }
        Ok(Policy { source: source.to_owned(), ast: Arc::new(ast) })
    }

    /// How long a caller waits for a call before it gives up on it.
    pub fn patience(&self) -> Duration {
        self.limits.budget + self.limits.budget.max(MIN_GRACE)
    }

    /// Runs `place(request, fleet)` on a thread of its own under the sandbox limits and
    /// the wall-time budget. Returns by the budget plus a grace period, whatever the
    /// script does.
    pub fn run(
        &self,
        policy: &Policy,
        request: &PlaceRequest,
        fleet: &FleetView,
    ) -> Result<Decision, PolicyError> {
        let queued = Instant::now();
        let Some(slot) = self.slots.take(MAX_SLOT_WAIT) else {
            return Err(PolicyError::Busy {
                slots: self.slots.total,
                waited_ms: queued.elapsed().as_millis() as u64,
            });
        };
        let started = Instant::now();
        let (tx, rx) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(RUNNING));
        let job = Call {
            engine: self.engine.clone(),
            limits: self.limits,
            policy: policy.clone(),
            request: request.clone(),
            fleet: fleet.clone(),
        };
        let thread_state = state.clone();
        std::thread::Builder::new()
            .name("policy".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                let result = job.run();
                if thread_state.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                    tracing::info!("an abandoned policy call ended");
                }
                let _ = tx.send(result);
            })
            .map_err(|e| PolicyError::Thread(format!("could not start: {e}")))?;
        match rx.recv_timeout(self.patience()) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(PolicyError::Thread("died".into())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if state.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    tracing::warn!(policy = %policy.source, "a policy call ran past its budget and did not stop; abandoned");
                    return Err(PolicyError::Abandoned {
                        budget_ms: self.limits.budget.as_millis() as u64,
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
                // It finished just now.
                rx.recv().unwrap_or_else(|_| Err(PolicyError::Thread("died".into())))
            }
        }
    }
}

/// One call, moved onto its thread.
struct Call {
    /// The engine.
    engine: Arc<Engine>,
    /// The limits.
    limits: Limits,
    /// The policy.
    policy: Policy,
    /// The request.
    request: PlaceRequest,
    /// The fleet.
    fleet: FleetView,
}

impl Call {
    /// Runs the script on this thread, metered.
    fn run(self) -> Result<Decision, PolicyError> {
        sandbox::begin(Instant::now() + self.limits.budget, self.limits.max_operations);
        let result = self.engine.call_fn::<Dynamic>(
            &mut Scope::new(),
            &self.policy.ast,
            "place",
            (self.request, self.fleet),
        );
        let dropped = sandbox::end();
        if dropped > 0 {
            tracing::info!(target: "rbee_queen::policy", dropped, "more log lines from this policy call were dropped");
        }
        let value = result.map_err(|e| failure(*e, &self.limits))?;
        decision::decision(value)
    }
}

/// The error inside the function-call wrappers, which carries the script position.
fn innermost(mut e: EvalAltResult) -> EvalAltResult {
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) = e {
        e = *inner;
    }
    e
}

/// A Rhai error as a policy error, with where the script was.
fn failure(e: EvalAltResult, limits: &Limits) -> PolicyError {
    let e = innermost(e);
    let at: ScriptPosition =
        if e.is_system_exception() { sandbox::last_position() } else { e.position() }.into();
    let budget_ms = limits.budget.as_millis() as u64;
    match e {
        EvalAltResult::ErrorTerminated(token, _) if sandbox::is_out_of_operations(&token) => {
            PolicyError::Operations { limit: limits.max_operations, at }
        }
        EvalAltResult::ErrorTerminated(..) => PolicyError::Budget { budget_ms, at },
        EvalAltResult::ErrorTooManyOperations(_) => {
            PolicyError::Operations { limit: limits.max_operations, at }
        }
        other => PolicyError::Script { message: bounded_text::bound_owned(other.to_string()), at },
    }
}
