//! `humantime` strings ("10s", "500ms") for durations in configuration files. Use with
//! `#[serde(with = "rbee_shared::duration_serde")]`, or, for an optional field,
//! `#[serde(default, with = "rbee_shared::duration_serde::option")]`.

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

/// The same for `Option<Duration>`: `None` is an absent (or null) field.
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `Some(d)` as a humantime string, `None` as none.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Optional {
        #[serde(default, with = "super::option")]
        every: Option<Duration>,
    }

    #[test]
    fn optional_durations_may_be_absent() {
        let o: Optional = serde_json::from_str(r#"{"every":"500ms"}"#).unwrap();
        assert_eq!(o.every, Some(Duration::from_millis(500)));
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"every":"500ms"}"#);
        assert_eq!(serde_json::from_str::<Optional>("{}").unwrap(), Optional { every: None });
        assert_eq!(serde_json::to_string(&Optional { every: None }).unwrap(), r#"{"every":null}"#);
        assert!(serde_json::from_str::<Optional>(r#"{"every":"soon"}"#).is_err());
    }
}
