//! The load's shape over time: k6-like stages of a target (requests/s in the open model,
//! connections in the closed model), ramped linearly from the previous stage's target.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Constant arrival rate: requests start on schedule whether or not earlier ones finished
    /// (latency is measured from the scheduled start, which corrects coordinated omission).
    Open,
    /// A fixed number of connections, each sending its next request when the last one ends.
    Closed,
}

/// One stage: reach `target` linearly over `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stage {
    /// How long the stage lasts.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Requests/s (open) or connections (closed) at its end.
    pub target: f64,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Why a stage list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad stage {0:?}: expected DURATION:TARGET, e.g. 30s:2000")]
pub struct BadStage(String);

/// Parses `30s:100,3m:100,30s:0`.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, BadStage> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (d, t) = item
                .trim()
                .split_once(':')
                .ok_or_else(|| BadStage(item.to_owned()))?;
            let duration =
                humantime::parse_duration(d.trim()).map_err(|_| BadStage(item.to_owned()))?;
            let target: f64 = t.trim().parse().map_err(|_| BadStage(item.to_owned()))?;
            if !(target >= 0.0 && target.is_finite()) {
                return Err(BadStage(item.to_owned()));
            }
            Ok(Stage { duration, target })
        })
        .collect()
}

/// The whole schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Open or closed.
    pub model: Model,
    /// Target at time zero.
    pub start: f64,
    /// Stages in order; empty means hold `start` until another limit ends the run.
    pub stages: Vec<Stage>,
}

impl Plan {
    /// Total length of the stages, `None` when they never end (no stages).
    pub fn duration(&self) -> Option<Duration> {
        if self.stages.is_empty() {
            None
        } else {
            Some(self.stages.iter().map(|s| s.duration).sum())
        }
    }

    /// The target at `t` since the start; after the last stage, its target.
    pub fn target_at(&self, t: Duration) -> f64 {
        let mut from = self.start;
        let mut begin = Duration::ZERO;
        for stage in &self.stages {
            let end = begin + stage.duration;
            if t < end {
                let f = if stage.duration.is_zero() {
                    1.0
                } else {
                    (t - begin).as_secs_f64() / stage.duration.as_secs_f64()
                };
                return from + (stage.target - from) * f;
            }
            from = stage.target;
            begin = end;
        }
        from
    }

    /// The highest target anywhere in the plan (the closed model spawns that many connections).
    pub fn peak(&self) -> f64 {
        self.stages
            .iter()
            .map(|s| s.target)
            .fold(self.start, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_ramp_linearly() {
        let stages = parse_stages("10s:100, 20s:100,10s:0").unwrap();
        assert_eq!(stages.len(), 3);
        let plan = Plan {
            model: Model::Open,
            start: 0.0,
            stages,
        };
        assert_eq!(plan.duration(), Some(Duration::from_secs(40)));
        assert_eq!(plan.target_at(Duration::ZERO), 0.0);
        assert_eq!(plan.target_at(Duration::from_secs(5)), 50.0);
        assert_eq!(plan.target_at(Duration::from_secs(25)), 100.0);
        assert_eq!(plan.target_at(Duration::from_secs(35)), 50.0);
        assert_eq!(plan.target_at(Duration::from_secs(99)), 0.0);
        assert_eq!(plan.peak(), 100.0);
        assert!(parse_stages("10s").is_err());
        assert!(parse_stages("x:1").is_err());
        assert!(parse_stages("1s:-3").is_err());
    }

    #[test]
    fn no_stages_hold_the_start_forever() {
        let plan = Plan {
            model: Model::Closed,
            start: 8.0,
            stages: vec![],
        };
        assert_eq!(plan.duration(), None);
        assert_eq!(plan.target_at(Duration::from_secs(1000)), 8.0);
    }
}
