//! The Rhai runtime: a sandboxed engine with the policy API, compiling, and running one
//! call under the sandbox limits and a wall-time budget.
//!
//! Each call runs on a thread of its own. The script is stopped at its deadline by the
//! engine's progress hook (checked at every step) and by the metered natives (checked as
//! they walk); and whatever the script calls, the caller stops waiting a grace period
//! after the deadline and answers [`PolicyError::Abandoned`]. A thread the caller gave
//! up on finishes on its own; while [`MAX_STRAY`] of them are still running, new calls
//! are refused at once. No policy thread holds a lock of the scheduler or a Tokio
//! worker, so nothing else (reservation upkeep, other RPCs, shutdown) waits on a policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Scope};

use super::decision::{self, Decision};
use super::error::{PolicyError, ScriptPosition};
use super::{Limits, Policy, api, sandbox};
use crate::scheduler::bounded_text;
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::view::FleetView;

/// Most policy threads still running after their caller stopped waiting; past this,
/// calls are refused at once instead of starting more.
pub const MAX_STRAY: usize = 8;

/// The shortest grace the caller waits past the budget before it stops waiting.
const MIN_GRACE: Duration = Duration::from_millis(100);

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
    /// Call threads still running after their caller gave up.
    stray: Arc<AtomicUsize>,
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
        Self { engine: Arc::new(engine), limits, stray: Arc::new(AtomicUsize::new(0)) }
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
        let stray = self.stray.load(Ordering::Relaxed);
        if stray >= MAX_STRAY {
            return Err(PolicyError::Overloaded { stray });
        }
        let started = Instant::now();
        let deadline = started + self.limits.budget;
        let (tx, rx) = mpsc::sync_channel(1);
        let state = Arc::new(AtomicU8::new(RUNNING));
        let job = Call {
            engine: self.engine.clone(),
            limits: self.limits,
            policy: policy.clone(),
            request: request.clone(),
            fleet: fleet.clone(),
            deadline,
        };
        let (thread_state, thread_stray) = (state.clone(), self.stray.clone());
        std::thread::Builder::new()
            .name("policy".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let result = job.run();
                if thread_state.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                    thread_stray.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = tx.send(result);
            })
            .map_err(|e| PolicyError::Thread(format!("could not start: {e}")))?;
        match rx.recv_timeout(self.patience()) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(PolicyError::Thread("died".into())),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if state.compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.stray.fetch_add(1, Ordering::Relaxed);
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
    /// When the budget runs out.
    deadline: Instant,
}

impl Call {
    /// Runs the script on this thread, metered.
    fn run(self) -> Result<Decision, PolicyError> {
        sandbox::begin(self.deadline, self.limits.max_operations);
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
        EvalAltResult::ErrorTooManyOperations(_) => PolicyError::Operations { limit: limits.max_operations, at },
        other => PolicyError::Script { message: bounded_text::bound_owned(other.to_string()), at },
    }
}
