//! Scripted faults for the fleet simulator: `AT:ACTION:AMOUNT`, e.g. `30s:kill:10%`
//! (at 30 s, kill a tenth of the running hives) or `1m:restart:25`.

use std::str::FromStr;
use std::time::Duration;

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kill" => Self::Kill,
            "revive" => Self::Revive,
            "silence" => Self::Silence,
            "unsilence" => Self::Unsilence,
            "restart" => Self::Restart,
            "hotplug" => Self::HotPlug,
            other => {
                return Err(format!(
                    "unknown action {other:?}; use kill, revive, silence, unsilence, restart or hotplug"
                ));
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.parse().map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&p) {
                return Err(format!("{s:?} is not within 0%..=100%"));
            }
            return Ok(Self::Fraction(p / 100.0));
        }
        s.parse().map(Self::Count).map_err(|_| format!("{s:?} is neither a count nor a percentage like 10%"))
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(at), Some(action), Some(amount)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{s:?}: expected AT:ACTION:AMOUNT, e.g. 30s:kill:10%"));
        };
        let at = humantime::parse_duration(at).map_err(|e| format!("{s:?}: time {at:?}: {e}"))?;
        Ok(Self { at, action: action.parse().map_err(|e| format!("{s:?}: {e}"))?, amount: amount.parse()? })
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
        assert!("30s:explode:1".parse::<Fault>().unwrap_err().contains("unknown action"));
        assert!("30s:kill".parse::<Fault>().unwrap_err().contains("AT:ACTION:AMOUNT"));
        assert!("30s:kill:150%".parse::<Fault>().unwrap_err().contains("0%..=100%"));
        assert_eq!(Amount::Fraction(0.1).of(300), 30);
        assert_eq!(Amount::Count(5).of(3), 3);
    }
}
