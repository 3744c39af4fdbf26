//! Learning-rate schedules, per optimisation step: linear warmup, then cosine decay to
//! zero, step decay, or constant. (Burn 0.21 has no warmup-then-cosine scheduler.)

use protocol::spec::{ScheduleName, ScheduleSpec};

/// The learning rate at `step` of `total` steps, with `steps_per_epoch` steps an epoch.
pub fn lr_at(base: f64, spec: &ScheduleSpec, epochs: u32, step: usize, steps_per_epoch: usize) -> f64 {
    let steps_per_epoch = steps_per_epoch.max(1);
    let total = (epochs as usize * steps_per_epoch).max(1);
    let warmup = spec.warmup_epochs.unwrap_or(0) as usize * steps_per_epoch;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match spec.name {
        ScheduleName::Constant => base,
        ScheduleName::Cosine => {
            let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
        ScheduleName::Step => {
            let every = spec.step_epochs.unwrap_or((epochs / 3).max(1)).max(1) as usize * steps_per_epoch;
            base * spec.gamma.unwrap_or(0.1).powi(((step - warmup) / every) as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: ScheduleName, warmup: Option<u32>) -> ScheduleSpec {
        ScheduleSpec { name, warmup_epochs: warmup, step_epochs: Some(2), gamma: Some(0.5) }
    }

    #[test]
    fn warmup_then_cosine_reaches_zero() {
        let s = spec(ScheduleName::Cosine, Some(1));
        assert!((lr_at(1.0, &s, 5, 0, 10) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 5, 9, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, &s, 5, 10, 10) - 1.0).abs() < 1e-12);
        assert!(lr_at(1.0, &s, 5, 49, 10) < 0.01);
    }

    #[test]
    fn step_decay_halves_every_two_epochs() {
        let s = spec(ScheduleName::Step, None);
        assert_eq!(lr_at(1.0, &s, 6, 19, 10), 1.0);
        assert_eq!(lr_at(1.0, &s, 6, 20, 10), 0.5);
        assert_eq!(lr_at(1.0, &s, 6, 45, 10), 0.25);
        assert_eq!(lr_at(0.3, &spec(ScheduleName::Constant, None), 6, 45, 10), 0.3);
    }
}
