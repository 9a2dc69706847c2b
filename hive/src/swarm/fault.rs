//! Scripted faults for the fleet simulator: `AT:ACTION:AMOUNT`, e.g. `30s:kill:10%`
//! (at 30 s, kill a tenth of the running hives) or `1m:restart:25`.

use std::str::FromStr;
use std::time::Duration;

/// Why a fault does not parse (the message quotes the text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    /// Not one of the actions.
    #[error("unknown action {0:?}; use kill, revive, silence, unsilence, restart or hotplug")]
    UnknownAction(String),
    /// A `N%` whose number does not parse.
    #[error("{0:?} is not a percentage")]
    NotPercentage(String),
    /// A percentage beyond 100 %.
    #[error("{0:?} is not within 0%..=100%")]
    PercentageRange(String),
    /// Neither a count nor a percentage.
    #[error("{0:?} is neither a count nor a percentage like 10%")]
    NotAmount(String),
    /// Not three `:`-separated parts.
    #[error("{0:?}: expected AT:ACTION:AMOUNT, e.g. 30s:kill:10%")]
    Shape(String),
    /// The time does not parse.
    #[error("{fault:?}: time {at:?}: {reason}")]
    Time {
        /// The whole fault.
        fault: String,
        /// Its time.
        at: String,
        /// Why.
        reason: humantime::DurationError,
    },
    /// The action does not parse.
    #[error("{fault:?}: {reason}")]
    Action {
        /// The whole fault.
        fault: String,
        /// Why.
        reason: Box<FaultError>,
    },
}

/// What a fault does to each hive it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Kill running hives: server, connections and tasks go away at once.
    Kill,
    /// Start killed hives again (a new epoch).
    Revive,
    /// Hold running hives silent: connections stay open, no samples.
    Silence,
    /// Let silenced hives sample again.
    Unsilence,
    /// Restart running hives on the same address with a new epoch.
    Restart,
    /// Plug a GPU into running hives, or pull the plugged one out again.
    HotPlug,
}

impl FromStr for Action {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        Ok(match s {
            "kill" => Self::Kill,
            "revive" => Self::Revive,
            "silence" => Self::Silence,
            "unsilence" => Self::Unsilence,
            "restart" => Self::Restart,
            "hotplug" => Self::HotPlug,
            other => {
                return Err(FaultError::UnknownAction(other.to_owned()));
            }
        })
    }
}

/// How many hives a fault picks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// This many (or all there are, if fewer).
    Count(usize),
    /// This fraction, 0..=1, rounded down.
    Fraction(f64),
}

impl Amount {
    /// How many of `n` candidates.
    pub fn of(self, n: usize) -> usize {
        match self {
            Self::Count(c) => c.min(n),
            Self::Fraction(f) => ((n as f64) * f).floor() as usize,
        }
    }
}

impl FromStr for Amount {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| FaultError::NotPercentage(s.to_owned()))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(FaultError::PercentageRange(s.to_owned()));
            }
            return Ok(Self::Fraction(p / 100.0));
        }
        s.parse().map(Self::Count).map_err(|_| FaultError::NotAmount(s.to_owned()))
    }
}

/// One scripted fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When, after all hives started.
    pub at: Duration,
    /// What.
    pub action: Action,
    /// To how many.
    pub amount: Amount,
}

impl FromStr for Fault {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        let mut parts = s.splitn(3, ':');
        let (Some(at), Some(action), Some(amount)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(FaultError::Shape(s.to_owned()));
        };
        let at = humantime::parse_duration(at).map_err(|reason| FaultError::Time {
            fault: s.to_owned(),
            at: at.to_owned(),
            reason,
        })?;
        let action =
            action.parse().map_err(|e| FaultError::Action { fault: s.to_owned(), reason: Box::new(e) })?;
        Ok(Self { at, action, amount: amount.parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_bad_ones_say_why() {
        let f: Fault = "30s:kill:10%".parse().unwrap();
        assert_eq!(
            f,
            Fault { at: Duration::from_secs(30), action: Action::Kill, amount: Amount::Fraction(0.1) }
        );
        assert_eq!("1m:hotplug:25".parse::<Fault>().unwrap().amount, Amount::Count(25));
        assert!("30s:explode:1".parse::<Fault>().unwrap_err().to_string().contains("unknown action"));
        assert!("30s:kill".parse::<Fault>().unwrap_err().to_string().contains("AT:ACTION:AMOUNT"));
        assert!("30s:kill:150%".parse::<Fault>().unwrap_err().to_string().contains("0%..=100%"));
        assert_eq!(Amount::Fraction(0.1).of(300), 30);
        assert_eq!(Amount::Count(5).of(3), 3);
    }
}
