//! Why a policy failed to compile or run, with the script position when known. The
//! position travels to the client: in the gRPC status message ("(line 3, column 5)") and
//! in its `rbee-policy-line` / `rbee-policy-column` metadata.

use std::fmt;

/// A position in a policy script (1-based), when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptPosition {
    /// Line.
    pub line: Option<usize>,
    /// Column.
    pub column: Option<usize>,
}

impl ScriptPosition {
    /// No position.
    pub const NONE: Self = Self { line: None, column: None };
}

impl From<rhai::Position> for ScriptPosition {
    fn from(pos: rhai::Position) -> Self {
        Self { line: pos.line(), column: pos.position() }
    }
}

/// Written as a suffix: ` (line 3, column 5)`, ` (line 3)` or nothing.
impl fmt::Display for ScriptPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (line {l}, column {c})"),
            (Some(l), None) => write!(f, " (line {l})"),
            _ => Ok(()),
        }
    }
}

/// A policy that failed to compile or run. Every text in it that the script controls is
/// bounded (see [`crate::scheduler::bounded_text`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The script does not parse.
    #[error("syntax error: {message}{at}")]
    Syntax {
        /// Rhai's message.
        message: String,
        /// Where.
        at: ScriptPosition,
    },
    /// The script has no `fn place(request, fleet)`.
    #[error("the policy must define fn place(request, fleet)")]
    NoPlaceFn,
    /// The script ran past its wall-time budget and was stopped.
    #[error("the policy ran past its {budget_ms} ms wall-time budget{at}")]
    Budget {
        /// The budget.
        budget_ms: u64,
        /// Where the script was.
        at: ScriptPosition,
    },
    /// The script ran past its budget and did not stop in time; the queen stopped
    /// waiting for it (its thread finishes on its own and its answer is dropped).
    #[error(
        "the policy ran past its {budget_ms} ms wall-time budget and did not stop; the queen stopped waiting after {waited_ms} ms"
    )]
    Abandoned {
        /// The budget.
        budget_ms: u64,
        /// How long the queen waited.
        waited_ms: u64,
    },
    /// The script ran past its operation limit (natives that walk a collection count
    /// one operation per element).
    #[error("the policy ran past its limit of {limit} operations{at}")]
    Operations {
        /// The limit.
        limit: u64,
        /// Where the script was.
        at: ScriptPosition,
    },
    /// The script raised an error or hit another sandbox limit.
    #[error("{message}{at}")]
    Script {
        /// Rhai's message (bounded).
        message: String,
        /// Where.
        at: ScriptPosition,
    },
    /// `place()` returned something that is not a decision.
    #[error("{0}")]
    Answer(String),
    /// Every policy worker stayed busy (other calls, or abandoned ones still ending)
    /// while the call waited for one.
    #[error("all {workers} policy workers stayed busy for {waited_ms} ms; try again shortly")]
    Busy {
        /// Policy calls that may run at once (workers).
        workers: usize,
        /// How long the call waited.
        waited_ms: u64,
    },
    /// The worker running the call died (a panic).
    #[error("the policy call {0}")]
    Thread(String),
}

impl PolicyError {
    /// Where in the script it happened, when known.
    pub fn position(&self) -> ScriptPosition {
        match self {
            Self::Syntax { at, .. }
            | Self::Budget { at, .. }
            | Self::Operations { at, .. }
            | Self::Script { at, .. } => *at,
            Self::NoPlaceFn
            | Self::Abandoned { .. }
            | Self::Answer(_)
            | Self::Busy { .. }
            | Self::Thread(_) => ScriptPosition::NONE,
        }
    }

    /// True when the script ran out of time (stopped, or abandoned).
    pub fn is_budget(&self) -> bool {
        matches!(self, Self::Budget { .. } | Self::Abandoned { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_is_part_of_the_message() {
        let e = PolicyError::Budget { budget_ms: 50, at: ScriptPosition { line: Some(3), column: Some(5) } };
        assert_eq!(e.to_string(), "the policy ran past its 50 ms wall-time budget (line 3, column 5)");
        assert_eq!(e.position().line, Some(3));
        let e = PolicyError::Script { message: "boom".into(), at: ScriptPosition::NONE };
        assert_eq!(e.to_string(), "boom");
    }
}
