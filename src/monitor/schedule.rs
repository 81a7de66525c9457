//! When each probe of a target goes out. Target `i` of `n` starts `i/n` of an interval late, so
//! probes of many targets are spread evenly instead of leaving in a burst; probe `k` is due at
//! `start + offset + (k - 1) * interval`, whatever happened before, so a stall delays one probe
//! and never bunches the following ones.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The probe times of one target.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    first: Instant,
    interval: Duration,
}

impl Schedule {
    /// The schedule of target `index` of `of` targets probed every `interval` from `start`.
    pub fn new(start: Instant, interval: Duration, index: usize, of: usize) -> Self {
        let of = u32::try_from(of.max(1)).unwrap_or(u32::MAX);
        let index = u32::try_from(index).unwrap_or(u32::MAX).min(of - 1);
        Self { first: start + interval / of * index, interval }
    }

    /// When probe `seq` (counted from 1) is due.
    pub fn due(&self, seq: u64) -> Instant {
        let turns = u32::try_from(seq.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first + self.interval.saturating_mul(turns)
    }
}

/// Probes one target on its schedule until `count` probes are done (forever with `None`) or
/// `stop`; every result (a [`Sample`](crate::probe::Sample), or one with more said about it) goes to `emit`. A probe
/// still running when `stop` comes is abandoned.
pub async fn run_probes<P, F, S>(
    schedule: Schedule,
    count: Option<u64>,
    stop: &CancellationToken,
    mut probe: P,
    mut emit: impl FnMut(S),
) where
    P: FnMut(u64) -> F,
    F: Future<Output = S>,
{
    let mut seq = 0;
    while count.is_none_or(|c| seq < c) {
        seq += 1;
        let sample = tokio::select! {
            _ = stop.cancelled() => return,
            s = async {
                tokio::time::sleep_until(schedule.due(seq)).await;
                probe(seq).await
            } => s,
        };
        emit(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Outcome, Sample};

    fn ok(seq: u64) -> Sample {
        Sample { seq, rtt: Some(Duration::from_millis(1)), outcome: Outcome::Connected }
    }

    #[test]
    fn targets_are_spread_evenly_over_the_interval() {
        let start = Instant::now();
        let offsets: Vec<Duration> =
            (0..4).map(|i| Schedule::new(start, Duration::from_secs(1), i, 4).due(1) - start).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(offsets, vec![ms(0), ms(250), ms(500), ms(750)]);
        assert_eq!(Schedule::new(start, Duration::from_secs(1), 1, 4).due(3) - start, ms(2250));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_go_out_on_their_turn_and_stop_at_the_count() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_secs(1), 1, 4);
        let mut sent = Vec::new();
        let mut got = Vec::new();
        let stop = CancellationToken::new();
        run_probes(
            schedule,
            Some(3),
            &stop,
            |seq| {
                sent.push((seq, (Instant::now() - start).as_millis()));
                async move { ok(seq) }
            },
            |s| got.push(s.seq),
        )
        .await;
        assert_eq!(sent, vec![(1, 250), (2, 1250), (3, 2250)]);
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_delays_the_next_one_but_the_grid_holds() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_secs(1), 0, 1);
        let mut sent = Vec::new();
        let stop = CancellationToken::new();
        run_probes(
            schedule,
            Some(4),
            &stop,
            |seq| {
                sent.push((Instant::now() - start).as_millis());
                // The first probe takes 1.5 intervals (a stall); the others are quick.
                let took = if seq == 1 { 1500 } else { 10 };
                async move {
                    tokio::time::sleep(Duration::from_millis(took)).await;
                    ok(seq)
                }
            },
            |_| {},
        )
        .await;
        // Probe 2 leaves as soon as probe 1 ends (late), probes 3 and 4 on their turn again.
        assert_eq!(sent, vec![0, 1500, 2000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_probes_at_once_even_between_turns() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_secs(60), 0, 1);
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        let mut n = 0;
        run_probes(schedule, None, &stop, |seq| async move { ok(seq) }, |_| n += 1).await;
        assert_eq!(n, 1, "the first probe went out, then it waited for the next turn");
        assert_eq!((Instant::now() - start).as_secs(), 1, "stopped when told, not at the next turn");
    }
}
