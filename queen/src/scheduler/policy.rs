//! Placement policies in Rhai: the sandboxed engine, the API scripts see, compiling,
//! running with a wall-time budget, and reading a script's decision.
//!
//! A policy defines `fn place(request, fleet)` and returns a device, a map
//! `#{ hive: ..., device: ... }`, an array of them (ranked, best first), or
//! `reject("reason")`. See `docs/scheduling.md`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{AST, Array, Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map, Position, Scope};

use super::request::PlaceRequest;
use super::view::{self, DeviceRef, FleetView, HiveRef};
use crate::fleet::Health;

/// The built-in default policy (least loaded), also shipped as `queen/policies/least-loaded.rhai`.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/least-loaded.rhai");
/// Name of the built-in default.
pub const DEFAULT_POLICY_NAME: &str = "built-in:least-loaded";

/// Most devices a ranked answer may carry; the queen tries them in order.
pub const MAX_RANKED: usize = 64;

/// Sandbox limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most operations per call.
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Deepest expression nesting (global, in functions).
    pub max_expr_depth: (usize, usize),
    /// Longest string.
    pub max_string_size: usize,
    /// Largest array.
    pub max_array_size: usize,
    /// Largest map.
    pub max_map_size: usize,
    /// Wall-time budget per call.
    pub budget: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 5_000_000,
            max_call_levels: 32,
            max_expr_depth: (64, 32),
            max_string_size: 64 * 1024,
            max_array_size: 200_000,
            max_map_size: 10_000,
            budget: Duration::from_millis(50),
        }
    }
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from (a path, or the built-in name).
    pub source: String,
    /// The compiled script.
    ast: AST,
}

/// A policy that failed to compile or run, with the script position when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// What went wrong.
    pub message: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{} (line {l}, column {c})", self.message),
            (Some(l), None) => write!(f, "{} (line {l})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

fn at(message: String, pos: Position) -> PolicyError {
    PolicyError { message, line: pos.line(), column: pos.position() }
}

/// What a policy decided.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Devices to try, best first.
    Ranked(Vec<Choice>),
    /// No placement, with the policy's reason.
    Reject(String),
}

/// One device a policy chose.
#[derive(Debug, Clone)]
pub enum Choice {
    /// A device handle from the API.
    Device(DeviceRef),
    /// A hive (id or address) and device id from a map.
    Named {
        /// Hive id or address.
        hive: String,
        /// GPU id or "cpu".
        device: String,
    },
}

thread_local! {
    /// The wall-time deadline of the policy call running on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The script position last evaluated on this thread. Rhai reports limit and
    /// budget errors at the call site; this is where the script really was.
    static LAST_POS: Cell<Position> = const { Cell::new(Position::NONE) };
}

/// The Rhai runtime with the policy API registered.
pub struct PolicyRuntime {
    /// The engine (Send + Sync with rhai's `sync` feature).
    engine: Engine,
    /// The limits, for the budget.
    limits: Limits,
}

fn opt_f(v: Option<f32>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |x| Dynamic::from_float(f64::from(x) as rhai::FLOAT))
}

fn opt_i(v: Option<u64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |x| Dynamic::from_int(int(x)))
}

fn int(v: u64) -> INT {
    INT::try_from(v).unwrap_or(INT::MAX)
}

fn map_of(labels: &std::collections::BTreeMap<String, String>) -> Map {
    labels.iter().map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone()))).collect()
}

fn devices_of(h: &HiveRef) -> Array {
    let locked = view::read(&h.book);
    let books = view::Books { locked: &locked, shared: &h.book };
    let mut out: Array = Vec::new();
    if let Some(caps) = h.hive.caps.as_ref() {
        for gpu in caps.caps.gpus_by_index() {
            if let Some(d) = view::gpu_ref(&h.hive, &gpu.id, &books) {
                out.push(Dynamic::from(d));
            }
        }
    }
    if let Some(d) = view::cpu_ref(&h.hive, &books) {
        out.push(Dynamic::from(d));
    }
    out
}

fn device_array(arr: Array) -> Vec<DeviceRef> {
    arr.into_iter().filter_map(|d| d.try_cast::<DeviceRef>()).collect()
}

fn register_api(engine: &mut Engine) {
    engine
        .register_type_with_name::<PlaceRequest>("Request")
        .register_get("model", |r: &mut PlaceRequest| r.model.clone())
        .register_get("vram", |r: &mut PlaceRequest| int(r.vram_bytes))
        .register_get("ram", |r: &mut PlaceRequest| opt_i(r.ram_bytes))
        .register_get("kind", |r: &mut PlaceRequest| r.kind.as_str().to_owned())
        .register_get("labels", |r: &mut PlaceRequest| map_of(&r.labels))
        .register_get("dry_run", |r: &mut PlaceRequest| r.dry_run)
        .register_fn("without_label", |r: &mut PlaceRequest, key: ImmutableString| -> PlaceRequest {
            let mut r = r.clone();
            r.labels.remove(key.as_str());
            r
        });

    engine
        .register_type_with_name::<FleetView>("Fleet")
        .register_get("hives", |f: &mut FleetView| -> Array {
            f.hives.iter().map(|h| Dynamic::from(HiveRef { hive: h.clone(), book: f.book.clone() })).collect()
        })
        .register_fn("len", |f: &mut FleetView| f.hives.len() as INT)
        .register_fn("hive", |f: &mut FleetView, key: ImmutableString| -> Dynamic {
            f.hives
                .iter()
                .find(|h| h.matches(key.as_str()))
                .map_or(Dynamic::UNIT, |h| Dynamic::from(HiveRef { hive: h.clone(), book: f.book.clone() }))
        })
        .register_fn("candidates", |f: &mut FleetView, r: PlaceRequest| -> Array {
            view::assess(f, &r, false).0.into_iter().map(Dynamic::from).collect()
        })
        .register_fn("least_loaded", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Array {
            let n = usize::try_from(n).unwrap_or(0).min(MAX_RANKED);
            view::rank(f, &r, view::Order::LeastLoaded, n).into_iter().map(Dynamic::from).collect()
        })
        .register_fn("bin_pack", |f: &mut FleetView, r: PlaceRequest, n: INT| -> Array {
            let n = usize::try_from(n).unwrap_or(0).min(MAX_RANKED);
            view::rank(f, &r, view::Order::BinPack, n).into_iter().map(Dynamic::from).collect()
        });

    engine
        .register_type_with_name::<HiveRef>("Hive")
        .register_get("id", |h: &mut HiveRef| h.hive.hive_id().to_owned())
        .register_get("address", |h: &mut HiveRef| h.hive.address.clone())
        .register_get("state", |h: &mut HiveRef| h.hive.state.as_str().to_owned())
        .register_get("online", |h: &mut HiveRef| h.hive.state == crate::fleet::ConnState::Online)
        .register_get("health", |h: &mut HiveRef| h.hive.health.health.as_str().to_owned())
        .register_get("healthy", |h: &mut HiveRef| h.hive.health.health == Health::Healthy)
        .register_get("reasons", |h: &mut HiveRef| -> Array {
            h.hive.health.reasons.iter().map(|r| Dynamic::from(r.clone())).collect()
        })
        .register_get("labels", |h: &mut HiveRef| {
            h.hive.caps.as_ref().map(|c| map_of(&c.caps.labels)).unwrap_or_default()
        })
        .register_get("cpu", |h: &mut HiveRef| opt_f(h.hive.latest.as_ref().and_then(|s| s.cpu_percent)))
        .register_get("cpu_mean", |h: &mut HiveRef| opt_f(h.hive.stats.cpu_mean_percent))
        .register_get("ram_total", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().map(|s| s.ram_total_bytes)))
        .register_get("ram_used", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().map(|s| s.ram_used_bytes)))
        .register_get("ram_available", |h: &mut HiveRef| {
            opt_i(h.hive.latest.as_ref().map(|s| s.ram_available_bytes))
        })
        .register_get("uptime", |h: &mut HiveRef| opt_i(h.hive.latest.as_ref().and_then(|s| s.uptime_s)))
        .register_get("age_ms", |h: &mut HiveRef| opt_i(h.hive.sample_age().map(|a| a.as_millis() as u64)))
        .register_get("devices", |h: &mut HiveRef| devices_of(h));

    engine
        .register_type_with_name::<DeviceRef>("Device")
        .register_get("id", |d: &mut DeviceRef| d.id.clone())
        .register_get("index", |d: &mut DeviceRef| {
            d.gpu().map_or(Dynamic::UNIT, |g| Dynamic::from_int(INT::from(g.index)))
        })
        .register_get(
            "kind",
            |d: &mut DeviceRef| if d.is_cpu() { "cpu".to_owned() } else { "cuda".to_owned() },
        )
        .register_get("name", |d: &mut DeviceRef| {
            d.gpu().map_or_else(|| "cpu".to_owned(), |g| g.name.clone())
        })
        .register_get("vram_total", |d: &mut DeviceRef| int(d.total))
        .register_get("vram_used", |d: &mut DeviceRef| int(d.used))
        .register_get("vram_free", |d: &mut DeviceRef| int(d.free))
        .register_get("util", |d: &mut DeviceRef| opt_f(d.util()))
        .register_get("temperature", |d: &mut DeviceRef| opt_f(d.live().and_then(|g| g.temperature_c)))
        .register_get("power_w", |d: &mut DeviceRef| {
            opt_f(d.live().and_then(|g| g.power_draw_mw).map(|mw| mw as f32 / 1000.0))
        })
        .register_get("health", |d: &mut DeviceRef| d.health().as_str().to_owned())
        .register_get("hive", |d: &mut DeviceRef| HiveRef { hive: d.hive.clone(), book: d.book.clone() });

    engine
        .register_fn("sort_least_loaded", |arr: Array| -> Array {
            let mut d = device_array(arr);
            view::sort_least_loaded(&mut d);
            d.into_iter().map(Dynamic::from).collect()
        })
        .register_fn("sort_bin_pack", |arr: Array| -> Array {
            let mut d = device_array(arr);
            view::sort_bin_pack(&mut d);
            d.into_iter().map(Dynamic::from).collect()
        })
        .register_fn("reject", |reason: ImmutableString| -> Map {
            let mut m = Map::new();
            m.insert("reject".into(), Dynamic::from(reason));
            m
        })
        .register_fn("gib", |n: INT| n.saturating_mul(1 << 30))
        .register_fn("gib", |n: rhai::FLOAT| (n * (1u64 << 30) as rhai::FLOAT) as INT)
        .register_fn("format_bytes", |n: INT| {
            rbee_shared::bytesize::format_bytes(u64::try_from(n).unwrap_or(0))
        });
}

impl PolicyRuntime {
    /// A sandboxed engine with the policy API.
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_modules(0);
        engine.on_progress(|ops| {
            if ops % 256 != 0 {
                return None;
            }
            let late = DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() > d));
            late.then(|| Dynamic::from("wall-time budget exceeded"))
        });
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
        // Scripts have no I/O: `print` and `debug` go to the log.
        engine.on_print(|s| tracing::info!(target: "rbee_queen::policy", "{s}"));
        engine.on_debug(|s, _, pos| tracing::debug!(target: "rbee_queen::policy", ?pos, "{s}"));
        register_api(&mut engine);
        Self { engine, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles a policy; it must define `fn place(request, fleet)`.
    pub fn compile(&self, source: &str, text: &str) -> Result<Policy, PolicyError> {
        let ast = self.engine.compile(text).map_err(|e| at(format!("syntax error: {}", e.0), e.1))?;
        if !ast.iter_functions().any(|f| f.name == "place" && f.params.len() == 2) {
            return Err(PolicyError {
                message: "the policy must define fn place(request, fleet)".into(),
                line: None,
                column: None,
            });
        }
        Ok(Policy { source: source.to_owned(), ast })
    }

    /// Runs `place(request, fleet)` under the sandbox limits and wall-time budget.
    pub fn run(
        &self,
        policy: &Policy,
        request: &PlaceRequest,
        fleet: &FleetView,
    ) -> Result<Decision, PolicyError> {
        DEADLINE.with(|d| d.set(Some(Instant::now() + self.limits.budget)));
        LAST_POS.with(|p| p.set(Position::NONE));
        let result = self.engine.call_fn::<Dynamic>(
            &mut Scope::new(),
            &policy.ast,
            "place",
            (request.clone(), fleet.clone()),
        );
        DEADLINE.with(|d| d.set(None));
        let value = result.map_err(|e| {
            let e = innermost(*e);
            let pos = if e.is_system_exception() { LAST_POS.with(Cell::get) } else { e.position() };
            let message = match e {
                EvalAltResult::ErrorTerminated(_, _) => {
                    format!("the policy ran past its {} ms wall-time budget", self.limits.budget.as_millis())
                }
                EvalAltResult::ErrorTooManyOperations(_) => {
                    format!("the policy ran past its limit of {} operations", self.limits.max_operations)
                }
                other => format!("the policy failed: {other}"),
            };
            at(message, pos)
        })?;
        decision(value)
    }
}

/// The error inside the function-call wrappers, which carries the script position.
fn innermost(mut e: EvalAltResult) -> EvalAltResult {
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) = e {
        e = *inner;
    }
    e
}

fn choice(value: Dynamic) -> Result<Choice, PolicyError> {
    if value.is::<DeviceRef>() {
        return Ok(Choice::Device(value.cast::<DeviceRef>()));
    }
    if value.is_map() {
        let map = value.cast::<Map>();
        let field = |k: &str| map.get(k).map(|v| v.to_string());
        return match (field("hive"), field("device")) {
            (Some(hive), Some(device)) => Ok(Choice::Named { hive, device }),
            _ => Err(PolicyError {
                message: "a placement map needs both `hive` and `device`".into(),
                line: None,
                column: None,
            }),
        };
    }
    Err(PolicyError {
        message: format!(
            "place() returned {} ({}); expected a device, #{{hive, device}}, an array of them, or reject(reason)",
            value,
            value.type_name()
        ),
        line: None,
        column: None,
    })
}

/// Reads a script's return value.
fn decision(value: Dynamic) -> Result<Decision, PolicyError> {
    if value.is_unit() {
        return Ok(Decision::Reject("the policy found no placement".into()));
    }
    if value.is_map()
        && let Some(reason) = value.read_lock::<Map>().and_then(|m| m.get("reject").map(ToString::to_string))
    {
        return Ok(Decision::Reject(reason));
    }
    if value.is_array() {
        // The queen tries a ranking in order; past the first MAX_RANKED it is moot.
        let arr = value.cast::<Array>();
        return arr.into_iter().take(MAX_RANKED).map(choice).collect::<Result<_, _>>().map(Decision::Ranked);
    }
    Ok(Decision::Ranked(vec![choice(value)?]))
}
