//! The bandwidth limiter: a token bucket in bytes, driven by the job's limit (none, fixed, or
//! a weekly schedule whose windows may hold transmission at zero).
//!
//! Shared by every job from one source to one target address, as the seeds share it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use chrono::{Datelike, Local, Timelike};
use understudy_core::spec::BandwidthLimit;

/// A byte-rate limiter.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<Bucket>,
    held: AtomicBool,
}

#[derive(Debug)]
struct Bucket {
    limit: BandwidthLimit,
    tokens: f64,
    refilled: Instant,
}

/// At most this much can be sent in one burst (a quarter second at the limit, at least one
/// 64 KiB packet's worth so a minimal limit still moves packets).
fn burst(rate: f64) -> f64 {
    (rate / 4.0).max(70_000.0)
}

impl Limiter {
    /// A limiter for `limit`.
    pub fn new(limit: BandwidthLimit) -> Self {
        Limiter {
            state: Mutex::new(Bucket { limit, tokens: 0.0, refilled: Instant::now() }),
            held: AtomicBool::new(false),
        }
    }

    /// Changes the limit while jobs run.
    pub fn set(&self, limit: BandwidthLimit) {
        let mut bucket = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.limit = limit;
    }

    /// The limit in force.
    pub fn limit(&self) -> BandwidthLimit {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).limit.clone()
    }

    /// Whether a schedule window holds transmission at zero right now.
    pub fn held_by_schedule(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// The rate now, in bytes per second (`None`: unlimited; `Some(0)`: held).
    fn rate_now(limit: &BandwidthLimit) -> Option<u64> {
        let now = Local::now();
        let minute = u16::try_from(now.hour() * 60 + now.minute()).unwrap_or(0);
        limit.limit_at(now.weekday(), minute)
    }

    /// Takes `bytes` from the bucket if they may be sent now (`None`), else says how long to
    /// wait before asking again.
    pub fn try_take(&self, bytes: u64) -> Option<Duration> {
        let mut bucket = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match Self::rate_now(&bucket.limit) {
            None => {
                self.held.store(false, Ordering::Relaxed);
                None
            }
            Some(0) => {
                // A window holds transmission: look again in a second.
                self.held.store(true, Ordering::Relaxed);
                bucket.tokens = 0.0;
                bucket.refilled = Instant::now();
                Some(Duration::from_secs(1))
            }
            Some(rate) => {
                self.held.store(false, Ordering::Relaxed);
                #[allow(clippy::cast_precision_loss)] // rates are far below 2^52
                let rate = rate as f64;
                let now = Instant::now();
                let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * rate).min(burst(rate));
                bucket.refilled = now;
                #[allow(clippy::cast_precision_loss)]
                let need = bytes as f64;
                // A frame larger than the burst goes once the bucket is full, and drives it
                // negative: the debt is paid before the next frame.
                if bucket.tokens >= need.min(burst(rate)) {
                    bucket.tokens -= need;
                    return None;
                }
                let missing = need.min(burst(rate)) - bucket.tokens;
                Some(Duration::from_secs_f64(missing / rate))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `bytes` may be sent, as the link does.
    async fn acquire(limiter: &Limiter, bytes: u64) {
        while let Some(wait) = limiter.try_take(bytes) {
            tokio::time::sleep(wait).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_limit_paces_bytes() {
        let limiter = Limiter::new(BandwidthLimit::Fixed { bytes_per_second: 1_000_000 });
        let started = Instant::now();
        for _ in 0..40 {
            acquire(&limiter, 100_000).await;
        }
        // 4 MB at 1 MB/s: about four seconds (less the initial burst allowance).
        let elapsed = started.elapsed().as_secs_f64();
        assert!((3.5..=4.5).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = Limiter::new(BandwidthLimit::Unlimited);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            acquire(&limiter, 1 << 20).await;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
