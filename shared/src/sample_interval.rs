//! The one rule for sample intervals: 100 ms ..= 60 s, default 1 s. Every place that
//! takes an interval (the hive's flags, a stream subscription, the queen's settings)
//! validates it through [`SampleInterval`].

use std::time::Duration;

/// The shortest sample interval a stream may ask for.
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// The longest sample interval a stream may ask for.
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(60);
/// The sample interval when a subscriber does not set one.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Why an interval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// Outside `MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL`.
    #[error("{got_ms} ms is out of range: must be {}..={} ms", MIN_SAMPLE_INTERVAL.as_millis(), MAX_SAMPLE_INTERVAL.as_millis())]
    OutOfRange {
        /// What was asked for, in ms.
        got_ms: u128,
    },
    /// Not a duration (`500ms`, `1s`, `2m`).
    #[error("{text:?} is not a duration: {reason} (e.g. 500ms, 1s, 2m)")]
    Unparsable {
        /// The text given.
        text: String,
        /// What the parser said.
        reason: String,
    },
}

/// A sample interval known to be within bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SampleInterval(Duration);

impl SampleInterval {
    /// The default interval (1 s).
    pub const DEFAULT: Self = Self(DEFAULT_SAMPLE_INTERVAL);

    /// Checks `d` against the bounds.
    pub fn new(d: Duration) -> Result<Self, IntervalError> {
        if (MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL).contains(&d) {
            Ok(Self(d))
        } else {
            Err(IntervalError::OutOfRange { got_ms: d.as_millis() })
        }
    }

    /// An interval given in milliseconds (the wire form).
    pub fn from_millis(ms: u64) -> Result<Self, IntervalError> {
        Self::new(Duration::from_millis(ms))
    }

    /// Parses a human duration such as `500ms`, `1s` or `2m` and checks the bounds.
    pub fn parse(text: &str) -> Result<Self, IntervalError> {
        let d = humantime::parse_duration(text.trim())
            .map_err(|e| IntervalError::Unparsable { text: text.to_owned(), reason: e.to_string() })?;
        Self::new(d)
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Milliseconds, as the wire carries them (always fits: at most 60 000).
    pub fn as_millis_u32(self) -> u32 {
        u32::try_from(self.0.as_millis()).unwrap_or(u32::MAX)
    }
}

impl Default for SampleInterval {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl From<SampleInterval> for Duration {
    fn from(i: SampleInterval) -> Duration {
        i.0
    }
}

impl std::str::FromStr for SampleInterval {
    type Err = IntervalError;
    fn from_str(s: &str) -> Result<Self, IntervalError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert!(SampleInterval::from_millis(100).is_ok());
        assert!(SampleInterval::from_millis(60_000).is_ok());
        for ms in [0, 99, 60_001, u64::from(u32::MAX)] {
            let err = SampleInterval::from_millis(ms).unwrap_err().to_string();
            assert!(err.contains("out of range") && err.contains("100..=60000"), "{err}");
        }
    }

    #[test]
    fn parses_human_durations() {
        assert_eq!(SampleInterval::parse("250ms").unwrap().get(), Duration::from_millis(250));
        assert_eq!(SampleInterval::parse("1m").unwrap().as_millis_u32(), 60_000);
        assert!(matches!(SampleInterval::parse("2h"), Err(IntervalError::OutOfRange { .. })));
        assert!(matches!(SampleInterval::parse("soon"), Err(IntervalError::Unparsable { .. })));
        assert_eq!(SampleInterval::default().get(), DEFAULT_SAMPLE_INTERVAL);
    }
}
