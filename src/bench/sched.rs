//! How the load generator's threads are scheduled: the generator usually shares the machine
//! with the server it measures, and should take as little of it as it can.
//!
//! Under `--wait` every reply the server sends wakes a generator thread. With the default
//! policy the woken thread preempts whatever runs on that core, which is most often the
//! server worker that was still inside the `send` of that very reply: measured at 130k ops/s
//! paced, server workers were preempted mid-send about 1,350 times a second. Under
//! `SCHED_BATCH` a woken thread waits for the running one's turn to end instead; the server
//! then kept its core (about 50 preemptions a second), and the generator spent about 15 %
//! less CPU per acked op (2.3–2.5 µs against 2.6–3.1 µs at 150k paced, 1.9–2.1 against
//! 2.1–2.7 unpaced; single interleaved pairs ranged from 2 to 28 %).

use tracing::warn;

/// The policy of the generator's threads (`--sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Sched {
    /// `SCHED_BATCH` (Linux): a generator thread that a reply wakes does not preempt the
    /// thread running on its core, usually the server's. Its nice value is kept.
    #[default]
    Batch,
    /// The system's default policy.
    Normal,
}

/// Applies `sched` to the calling thread. A policy the system refuses (or has not) is a
/// warning, not a failure: the run goes on, and is only less kind to a local server.
pub fn apply_to_current_thread(sched: Sched) {
    if sched == Sched::Normal {
        return;
    }
    if let Err(reason) = set_batch() {
        warn!(%reason, "bench: generator threads keep the default scheduling policy");
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> Result<(), String> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    let nice = rustix::process::getpriority_process(None)
        .map_err(|e| format!("cannot read the thread's nice value: {e}"))?;
    // The crate expresses a normal policy's nice value on its own 0–99 scale; the value
    // whose nice is the current one keeps the thread's priority as it is.
    let same_priority = (0..=u8::from(ThreadPriorityValue::MAX))
        .filter_map(|value| ThreadPriorityValue::try_from(value).ok())
        .map(ThreadPriority::Crossplatform)
        .find(|priority| priority.to_posix(policy).ok() == Some(nice))
        .ok_or_else(|| format!("nice value {nice} has no SCHED_BATCH equivalent"))?;
    set_thread_priority_and_policy(thread_native_id(), same_priority, policy)
        .map_err(|e| format!("cannot set SCHED_BATCH: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> Result<(), String> {
    Err("SCHED_BATCH exists on Linux only".into())
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};

    fn policy_and_nice() -> (ThreadSchedulePolicy, i32) {
        let policy = thread_priority::thread_schedule_policy().unwrap();
        (policy, rustix::process::getpriority_process(None).unwrap())
    }

    #[test]
    fn batch_changes_the_policy_and_keeps_the_nice_value() {
        std::thread::spawn(|| {
            let (before, nice) = policy_and_nice();
            assert_eq!(
                before,
                ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)
            );
            apply_to_current_thread(Sched::Batch);
            assert_eq!(
                policy_and_nice(),
                (
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
                    nice
                )
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn normal_leaves_the_thread_alone() {
        std::thread::spawn(|| {
            let before = policy_and_nice();
            apply_to_current_thread(Sched::Normal);
            assert_eq!(policy_and_nice(), before);
        })
        .join()
        .unwrap();
    }
}
