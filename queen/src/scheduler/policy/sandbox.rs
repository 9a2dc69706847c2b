//! The meter of one policy call: its wall-time deadline, the operations that natives
//! charge, the script position last seen and the log lines it wrote.
//!
//! A worker runs one call at a time (see [`super::pool`]), so this state is
//! thread-local. Rhai counts one operation per script step, but a native such as
//! `array.contains(x)` can walk 200,000 elements in one step; such natives are replaced
//! here by metered versions that charge one operation per element and check the
//! deadline as they go. The engine's progress hook checks the deadline at every step.

use std::cell::Cell;
use std::time::Instant;

use rhai::{Array, Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map, NativeCallContext, Position};

use crate::scheduler::bounded_text;

/// Most log lines (`print`, `debug`) one policy call may write; the rest are counted.
pub const MAX_LOG_LINES: u32 = 32;

/// Elements a metered native walks between two deadline checks.
const CHECK_EVERY: usize = 1024;

/// The token a stopped script carries when it ran out of time.
const OUT_OF_TIME: &str = "wall-time budget";
/// The token a stopped script carries when natives charged past the operation limit.
const OUT_OF_OPERATIONS: &str = "operations";

thread_local! {
    /// The deadline of the call running on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The operation limit of the call running on this thread.
    static MAX_OPERATIONS: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Operations charged by natives (on top of Rhai's own count).
    static CHARGED: Cell<u64> = const { Cell::new(0) };
    /// The script position last evaluated. Rhai reports limit and budget errors at the
    /// call site; this is where the script really was.
    static LAST_POS: Cell<Position> = const { Cell::new(Position::NONE) };
    /// Log lines written by this call.
    static LOG_LINES: Cell<u32> = const { Cell::new(0) };
}

/// Starts metering a call on this thread.
pub fn begin(deadline: Instant, max_operations: u64) {
    DEADLINE.with(|d| d.set(Some(deadline)));
    MAX_OPERATIONS.with(|m| m.set(max_operations));
    CHARGED.with(|c| c.set(0));
    LAST_POS.with(|p| p.set(Position::NONE));
    LOG_LINES.with(|n| n.set(0));
}

/// Stops metering; returns the log lines that were dropped.
pub fn end() -> u32 {
    DEADLINE.with(|d| d.set(None));
    MAX_OPERATIONS.with(|m| m.set(u64::MAX));
    LOG_LINES.with(|n| n.replace(0)).saturating_sub(MAX_LOG_LINES)
}

/// The position last evaluated.
pub fn last_position() -> Position {
    LAST_POS.with(Cell::get)
}

/// Why a script is stopped now, if it is: past its deadline, or past its operations
/// (Rhai's `ops` plus what natives charged).
fn stop_reason(ops: u64) -> Option<&'static str> {
    if DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() >= d)) {
        return Some(OUT_OF_TIME);
    }
    let charged = CHARGED.with(Cell::get);
    (ops.saturating_add(charged) > MAX_OPERATIONS.with(Cell::get)).then_some(OUT_OF_OPERATIONS)
}

/// A stop token, as a Rhai string.
fn token(reason: &'static str) -> Dynamic {
    Dynamic::from(ImmutableString::from(reason))
}

/// True when a stop token says the script ran out of operations (else: out of time).
pub fn is_out_of_operations(token: &Dynamic) -> bool {
    token.clone().into_immutable_string().is_ok_and(|s| s.as_str() == OUT_OF_OPERATIONS)
}

/// Charges `n` operations and checks the deadline: the error stops the script.
pub fn charge(n: usize) -> Result<(), Box<EvalAltResult>> {
    let charged = CHARGED.with(|c| {
        let v = c.get().saturating_add(n as u64);
        c.set(v);
        v
    });
    let stop = if charged > MAX_OPERATIONS.with(Cell::get) {
        Some(OUT_OF_OPERATIONS)
    } else {
        stop_reason(0).filter(|t| *t == OUT_OF_TIME)
    };
    match stop {
        Some(t) => Err(EvalAltResult::ErrorTerminated(token(t), Position::NONE).into()),
        None => Ok(()),
    }
}

/// Writes a script's log line (bounded), at most [`MAX_LOG_LINES`] per call.
fn log_line(debug: bool, text: &str) {
    let n = LOG_LINES.with(|n| {
        let v = n.get().saturating_add(1);
        n.set(v);
        v
    });
    if n > MAX_LOG_LINES {
        return;
    }
    let text = bounded_text::bound(text);
    if debug {
        tracing::debug!(target: "rbee_queen::policy", "{text}");
    } else {
        tracing::info!(target: "rbee_queen::policy", "{text}");
    }
}

/// Installs the meter on an engine: the progress hook, the position tracker, bounded
/// logging, and metered versions of the natives that walk a collection.
pub fn install(engine: &mut Engine) {
    engine.on_progress(|ops| stop_reason(ops).map(token));
    // Step through the script, remembering the position, so that limit and budget
    // errors can say where the script was (Rhai's debugger API is marked volatile).
    #[allow(deprecated)]
    engine.register_debugger(
        |_, debugger| debugger,
        |_, event, _, _, pos| {
            if matches!(event, rhai::debugger::DebuggerEvent::Step) && !pos.is_none() {
                LAST_POS.with(|p| p.set(pos));
            }
            Ok(rhai::debugger::DebuggerCommand::StepInto)
        },
    );
    // Scripts have no I/O: `print` and `debug` go to the log, bounded.
    engine.on_print(|s| log_line(false, s));
    engine.on_debug(|s, _, _| log_line(true, s));
    register_metered(engine);
}

/// `a == b` as Rhai defines it for any two values: directly for two values of one
/// primitive type, else through Rhai's `==`.
fn equal(ctx: &NativeCallContext, a: &mut Dynamic, b: &mut Dynamic) -> Result<bool, Box<EvalAltResult>> {
    if let (Ok(x), Ok(y)) = (a.as_int(), b.as_int()) {
        return Ok(x == y);
    }
    if a.is_string() && b.is_string() {
        let (x, y) = (a.read_lock::<ImmutableString>(), b.read_lock::<ImmutableString>());
        if let (Some(x), Some(y)) = (x, y) {
            return Ok(*x == *y);
        }
    }
    if let (Ok(x), Ok(y)) = (a.as_bool(), b.as_bool()) {
        return Ok(x == y);
    }
    if let (Ok(x), Ok(y)) = (a.as_char(), b.as_char()) {
        return Ok(x == y);
    }
    if a.is_unit() && b.is_unit() {
        return Ok(true);
    }
    let same_type = a.type_id() == b.type_id();
    match ctx.call_native_fn_raw("==", true, &mut [a, b]) {
        Ok(v) => Ok(v.as_bool().unwrap_or(false)),
        // Values of different types without an `==` between them are not equal.
        Err(e) if !same_type && matches!(*e, EvalAltResult::ErrorFunctionNotFound(..)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Charges the elements a native walks, checking the deadline every [`CHECK_EVERY`].
#[derive(Default)]
struct Walk {
    /// Elements walked since the last charge.
    pending: usize,
}

impl Walk {
    /// One more element.
    fn step(&mut self) -> Result<(), Box<EvalAltResult>> {
        self.pending += 1;
        if self.pending == CHECK_EVERY {
            self.pending = 0;
            charge(CHECK_EVERY)?;
        }
        Ok(())
    }

    /// The walk is over: charges the rest.
    fn done<T>(self, value: T) -> Result<T, Box<EvalAltResult>> {
        charge(self.pending)?;
        Ok(value)
    }
}

/// The index of the first element from `start` equal to `value`, charging one operation
/// per element walked.
fn find(
    ctx: &NativeCallContext,
    array: &mut Array,
    value: &Dynamic,
    start: usize,
) -> Result<Option<usize>, Box<EvalAltResult>> {
    let mut walk = Walk::default();
    for (i, item) in array.iter_mut().enumerate().skip(start) {
        walk.step()?;
        if equal(ctx, item, &mut value.clone())? {
            return walk.done(Some(i));
        }
    }
    walk.done(None)
}

/// Where `index_of(value, start)` starts: negative counts from the end.
fn start_index(len: usize, start: INT) -> usize {
    if start < 0 {
        len.saturating_sub(usize::try_from(start.unsigned_abs()).unwrap_or(usize::MAX))
    } else {
        usize::try_from(start).unwrap_or(usize::MAX).min(len)
    }
}

/// Element-wise equality of two arrays, metered.
fn arrays_equal(ctx: &NativeCallContext, a: &mut Array, b: &mut Array) -> Result<bool, Box<EvalAltResult>> {
    if a.len() != b.len() {
        return Ok(false);
    }
    let mut walk = Walk::default();
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        walk.step()?;
        if !equal(ctx, x, y)? {
            return walk.done(false);
        }
    }
    walk.done(true)
}

/// Key-wise equality of two maps, metered.
fn maps_equal(ctx: &NativeCallContext, a: &mut Map, b: &mut Map) -> Result<bool, Box<EvalAltResult>> {
    if a.len() != b.len() {
        return Ok(false);
    }
    let mut walk = Walk::default();
    for (k, x) in a.iter_mut() {
        walk.step()?;
        let Some(y) = b.get_mut(k) else { return walk.done(false) };
        if !equal(ctx, x, y)? {
            return walk.done(false);
        }
    }
    walk.done(true)
}

/// Replaces Rhai's built-in natives that compare every element of a collection (and run
/// no script code, so Rhai counts them as one operation) with metered ones. Functions
/// registered on the engine are found before the standard package's.
fn register_metered(engine: &mut Engine) {
    engine
        .register_fn("contains", |ctx: NativeCallContext, a: &mut Array, v: Dynamic| {
            find(&ctx, a, &v, 0).map(|i| i.is_some())
        })
        .register_fn("index_of", |ctx: NativeCallContext, a: &mut Array, v: Dynamic| {
            find(&ctx, a, &v, 0).map(|i| i.map_or(-1, |i| i as INT))
        })
        .register_fn("index_of", |ctx: NativeCallContext, a: &mut Array, v: Dynamic, start: INT| {
            let start = start_index(a.len(), start);
            find(&ctx, a, &v, start).map(|i| i.map_or(-1, |i| i as INT))
        })
        .register_fn("==", |ctx: NativeCallContext, a: &mut Array, mut b: Array| {
            arrays_equal(&ctx, a, &mut b)
        })
        .register_fn("!=", |ctx: NativeCallContext, a: &mut Array, mut b: Array| {
            arrays_equal(&ctx, a, &mut b).map(|e| !e)
        })
        .register_fn("==", |ctx: NativeCallContext, a: &mut Map, mut b: Map| maps_equal(&ctx, a, &mut b))
        .register_fn("!=", |ctx: NativeCallContext, a: &mut Map, mut b: Map| {
            maps_equal(&ctx, a, &mut b).map(|e| !e)
        });
}
