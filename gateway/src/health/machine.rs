//! The connection state of one peer, driven by probe replies and losses.
//!
//! ```text
//! connecting --reply--> connected --N lost in a row--> error --reply--> connected
//! connecting --N lost in a row--> error
//! ```
//!
//! Pure: the caller passes the time, and gets a [`Transition`] back only when
//! the state changes.

use std::fmt;
use std::time::SystemTime;

/// Default number of consecutive lost probes that turn a peer to `error`.
pub const DEFAULT_LOST_THRESHOLD: u32 = 3;

/// Connection state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// No reply yet.
    Connecting,
    /// Probes are answered.
    Connected,
    /// The last probes were lost.
    Error,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Error => "error",
        })
    }
}

/// A state, why, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The state.
    pub state: HealthState,
    /// Why it is in that state.
    pub reason: String,
    /// When it entered it.
    pub since: SystemTime,
}

/// A change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: HealthState,
    /// The new status.
    pub to: Status,
}

/// The state machine of one peer.
#[derive(Debug, Clone)]
pub struct HealthMachine {
    threshold: u32,
    lost_in_a_row: u32,
    status: Status,
}

impl HealthMachine {
    /// A peer just added: `connecting`. `threshold` below 1 counts as 1.
    pub fn new(threshold: u32, now: SystemTime) -> Self {
        Self {
            threshold: threshold.max(1),
            lost_in_a_row: 0,
            status: Status {
                state: HealthState::Connecting,
                reason: "waiting for the first probe reply".into(),
                since: now,
            },
        }
    }

    /// The current status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Consecutive probes lost since the last reply.
    pub fn lost_in_a_row(&self) -> u32 {
        self.lost_in_a_row
    }

    /// A probe was answered.
    pub fn on_reply(&mut self, now: SystemTime) -> Option<Transition> {
        let lost = std::mem::take(&mut self.lost_in_a_row);
        match self.status.state {
            HealthState::Connected => None,
            HealthState::Connecting => {
                self.move_to(HealthState::Connected, "probe answered".into(), now)
            }
            HealthState::Error => self.move_to(
                HealthState::Connected,
                format!("probe answered again after {lost} lost"),
                now,
            ),
        }
    }

    /// A probe went unanswered within its timeout.
    pub fn on_lost(&mut self, now: SystemTime) -> Option<Transition> {
        self.lost_in_a_row = self.lost_in_a_row.saturating_add(1);
        if self.status.state == HealthState::Error || self.lost_in_a_row < self.threshold {
            return None;
        }
        let reason = format!("no reply to the last {} probes", self.lost_in_a_row);
        self.move_to(HealthState::Error, reason, now)
    }

    fn move_to(
        &mut self,
        state: HealthState,
        reason: String,
        now: SystemTime,
    ) -> Option<Transition> {
        let from = self.status.state;
        self.status = Status {
            state,
            reason,
            since: now,
        };
        Some(Transition {
            from,
            to: self.status.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Reply,
        Lost,
    }

    /// Runs events one second apart; returns (second, new state) of each transition.
    fn run(threshold: u32, events: &[Ev]) -> Vec<(u64, HealthState)> {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut m = HealthMachine::new(threshold, t0);
        let mut out = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64 + 1);
            let t = match ev {
                Ev::Reply => m.on_reply(now),
                Ev::Lost => m.on_lost(now),
            };
            if let Some(t) = t {
                assert_eq!(t.to.since, now);
                assert_eq!(&t.to, m.status());
                assert_ne!(t.from, t.to.state);
                out.push((i as u64 + 1, t.to.state));
            }
        }
        out
    }

    #[test]
    fn table() {
        use Ev::*;
        use HealthState::*;
        type Case = (&'static str, u32, Vec<Ev>, Vec<(u64, HealthState)>);
        let cases: Vec<Case> = vec![
            (
                "first reply connects",
                3,
                vec![Reply, Reply],
                vec![(1, Connected)],
            ),
            (
                "never answered: error after 3",
                3,
                vec![Lost, Lost, Lost, Lost],
                vec![(3, Error)],
            ),
            (
                "two lost are tolerated",
                3,
                vec![Reply, Lost, Lost, Reply, Lost, Lost],
                vec![(1, Connected)],
            ),
            (
                "down and back",
                3,
                vec![Reply, Lost, Lost, Lost, Lost, Reply],
                vec![(1, Connected), (4, Error), (6, Connected)],
            ),
            (
                "threshold 1",
                1,
                vec![Reply, Lost, Reply],
                vec![(1, Connected), (2, Error), (3, Connected)],
            ),
            ("threshold 0 counts as 1", 0, vec![Lost], vec![(1, Error)]),
            (
                "a reply resets the count",
                2,
                vec![Reply, Lost, Reply, Lost, Reply, Lost, Lost],
                vec![(1, Connected), (7, Error)],
            ),
        ];
        for (name, threshold, events, want) in cases {
            assert_eq!(run(threshold, &events), want, "{name}");
        }
    }

    #[test]
    fn reasons_say_why() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut m = HealthMachine::new(3, t0);
        assert_eq!(m.status().state, HealthState::Connecting);
        assert_eq!(m.status().since, t0);
        for _ in 0..2 {
            assert!(m.on_lost(t0).is_none());
        }
        let t = m.on_lost(t0).unwrap();
        assert_eq!(t.from, HealthState::Connecting);
        assert_eq!(t.to.reason, "no reply to the last 3 probes");
        assert!(m.on_lost(t0).is_none(), "already in error");
        let t = m.on_reply(t0).unwrap();
        assert_eq!(t.to.reason, "probe answered again after 4 lost");
    }
}
