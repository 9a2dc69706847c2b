//! `humantime` strings ("10s", "500ms") for durations in configuration files. Use with
//! `#[serde(with = "rbee_shared::duration_serde")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as a humantime string.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Reads a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Config {
        #[serde(with = "super")]
        every: Duration,
    }

    #[test]
    fn round_trips_humantime_strings() {
        let c: Config = serde_json::from_str(r#"{"every":"1m 30s"}"#).unwrap();
        assert_eq!(c.every, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"every":"1m 30s"}"#);
        assert!(serde_json::from_str::<Config>(r#"{"every":"soon"}"#).is_err());
    }
}
