//! The Rhai runtime: a sandboxed engine with the policy API, compiling, and running one
//! call under the sandbox limits and a wall-time budget.
//!
//! Calls run on the runtime's workers (see [`super::pool`]): at most one per core at
//! once, so that the wall-time budget measures the script and not its neighbours; the
//! budget starts when the call starts. The script is stopped at its deadline by the
//! engine's progress hook (checked at every step) and by the metered natives (checked as
//! they walk); and whatever the script calls, the caller stops waiting a grace period
//! after the deadline and answers [`PolicyError::Abandoned`]. A call given up on ends
//! on its worker, which takes no other call until then. No worker holds a lock of the
//! scheduler or a Tokio thread, so nothing else (reservation upkeep, other RPCs,
//! shutdown) waits on a policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Scope};

use super::decision::{self, Decision};
use super::error::{PolicyError, ScriptPosition};
use super::pool::{Missed, Pool};
use super::{Limits, Policy, api, sandbox};
use crate::scheduler::bounded_text;
use crate::scheduler::request::PlaceRequest;
use crate::scheduler::view::FleetView;

/// The shortest grace the caller waits past the budget before it stops waiting.
const MIN_GRACE: Duration = Duration::from_millis(250);

/// The Rhai runtime with the policy API registered.
pub struct PolicyRuntime {
    /// The engine (Send + Sync with rhai's `sync` feature), shared with call threads.
    engine: Arc<Engine>,
    /// The limits, for the budget and messages.
    limits: Limits,
    /// The workers that run calls.
    pool: Pool,
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
        super::gangs::register(&mut engine);
        more(&mut engine);
        Self { engine: Arc::new(engine), limits, pool: Pool::new(limits.parallel.max(1), "policy") }
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

    /// Runs `place(request, fleet)` on a worker under the sandbox limits and the
    /// wall-time budget. Returns by the budget plus a grace period once the call has
    /// started, whatever the script does.
    pub fn run(
        &self,
        policy: &Policy,
        request: &PlaceRequest,
        fleet: &FleetView,
    ) -> Result<Decision, PolicyError> {
        let call = Call {
            engine: self.engine.clone(),
            limits: self.limits,
            policy: policy.clone(),
            request: request.clone(),
            fleet: fleet.clone(),
        };
        match self.pool.run(self.patience(), move || call.run()) {
            Ok(result) => result,
            Err(Missed::NotStarted { waited }) => {
                Err(PolicyError::Busy { workers: self.pool.workers(), waited_ms: waited.as_millis() as u64 })
            }
            Err(Missed::Abandoned { ran }) => {
                tracing::warn!(policy = %policy.source, "a policy call ran past its budget and did not stop; abandoned");
                Err(PolicyError::Abandoned {
                    budget_ms: self.limits.budget.as_millis() as u64,
                    waited_ms: ran.as_millis() as u64,
                })
            }
            Err(Missed::Died) => Err(PolicyError::Thread("died".into())),
        }
    }
}

/// One call, moved onto a worker.
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
    /// Runs the script on this worker, metered.
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
