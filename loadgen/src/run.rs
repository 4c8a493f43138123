//! A run: setup, the cores, the per-second reporting, and the result.
//!
//! Threads: one setup executor (unpinned) checks the broker and the topic; then one glommio
//! executor per load core, pinned, runs its share of producers and consumers plus a ticker that
//! sends the core's interval statistics to the calling thread once a second over a bounded
//! channel. The calling thread merges the cores' intervals of each second, prints the live line,
//! decides when consumers have drained, and builds the [`RunResult`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{
    CpuSet, Latency, LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement,
    Shares,
};

use crate::cluster::{self, ClusterView};
use crate::consumer::{self, ConsumerCtx};
use crate::core::{CoreStats, RunShared, Window};
use crate::error::LoadgenError;
use crate::limits::Limits;
use crate::payload::Clock;
use crate::producer::{self, ProducerCtx};
use crate::stats::{Interval, Totals};

use crate::workload::Workload;

/// Which cores the load runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    /// This many executors, spread over the online CPUs.
    Count(usize),
    /// Exactly these CPUs, one executor each.
    List(Vec<usize>),
}

impl Cores {
    /// Parses `2` (a count) or `0,2-3` (a list; a single CPU is written `cpu:N`... or as a
    /// list with one range, `3-3`).
    pub fn parse(s: &str) -> Result<Cores, String> {
        let s = s.trim();
        if !s.contains(',') && !s.contains('-') {
            let n: usize = s.parse().map_err(|_| format!("bad core count '{s}'"))?;
            if n == 0 {
                return Err("at least one core".into());
            }
            return Ok(Cores::Count(n));
        }
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if let Some((a, b)) = part.split_once('-') {
                let a: usize = a.trim().parse().map_err(|_| format!("bad cpu '{a}'"))?;
                let b: usize = b.trim().parse().map_err(|_| format!("bad cpu '{b}'"))?;
                if a > b {
                    return Err(format!("bad cpu range '{part}'"));
                }
                cpus.extend(a..=b);
            } else {
                cpus.push(part.parse().map_err(|_| format!("bad cpu '{part}'"))?);
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Cores::List(cpus))
    }

    fn placement(&self) -> Result<PoolPlacement, LoadgenError> {
        let online = CpuSet::online().map_err(|e| LoadgenError::Executor(e.to_string()))?;
        match self {
            Cores::Count(n) => Ok(PoolPlacement::MaxSpread(*n, Some(online))),
            Cores::List(cpus) => {
                let mut sets = Vec::new();
                for &c in cpus {
                    let set = online.clone().filter(|l| l.cpu == c);
                    if set.is_empty() {
                        return Err(LoadgenError::Executor(format!("cpu {c} is not online")));
                    }
                    sets.push(set);
                }
                Ok(PoolPlacement::Custom(sets))
            }
        }
    }

    /// Executors this spec starts.
    pub fn count(&self) -> usize {
        match self {
            Cores::Count(n) => *n,
            Cores::List(v) => v.len(),
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub bootstrap: String,
    pub workload: Workload,
    pub cores: Cores,
    /// glommio io memory per executor (registered with io_uring; counts against locked memory).
    pub io_memory_bytes: usize,
    /// Print the live line every second.
    pub live: bool,
}

/// One second of the run, merged over cores.
#[derive(Debug, Clone)]
pub struct Second {
    /// Seconds since t0 at the end of this interval.
    pub t_s: u64,
    /// True during the warm-up.
    pub warmup: bool,
    pub interval: Interval,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub workload: Workload,
    pub bootstrap: String,
    pub cores: usize,
    pub cluster: ClusterView,
    pub seconds: Vec<Second>,
    pub totals: Totals,
    /// Largest schedule lag when the window closed, µs.
    pub lag_at_end_us: u64,
    /// Wall-clock start (Unix ms).
    pub started_unix_ms: u64,
    /// Run-wide counters, for the drain check.
    pub run_acked: u64,
    pub run_consumed: u64,
    /// How busy the load CPUs were over the measured window (`None` where it can not be read).
    pub cpu: Option<crate::cpu::CpuUsage>,
    /// [`Limits::load_cpu_busy_warn_fraction`] of the run.
    pub load_cpu_busy_warn_fraction: f64,
}

enum Report {
    Second {
        core: usize,
        index: u64,
        iv: Interval,
    },
    Done {
        core: usize,
        totals: Totals,
    },
}

/// Runs the workload and returns what it measured.
pub fn run(opts: &RunOptions, limits: &Limits) -> Result<RunResult, LoadgenError> {
    let w = opts.workload.clone();
    w.validate(limits)?;
    let placement = opts.cores.placement()?;
    let cores = placement.executor_count();
    // Setup: the broker, the topic, its leaders.
    let view = {
        let (bootstrap, wl, lim) = (opts.bootstrap.clone(), w.clone(), limits.clone());
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(opts.io_memory_bytes)
            .name("loadgen-setup")
            .spawn(move || async move { cluster::prepare(&bootstrap, &wl, &lim).await })
            .map_err(|e| LoadgenError::Executor(e.to_string()))?
            .join()
            .map_err(|e| LoadgenError::Executor(e.to_string()))??
    };
    let shared = Arc::new(RunShared::default());
    let clock = Clock::new();
    let (tx, rx) = sync_channel::<Report>(limits.report_queue_depth);
    let next_core = Arc::new(AtomicUsize::new(0));
    let pool = {
        let (shared, view, w, lim) = (shared.clone(), view.clone(), w.clone(), limits.clone());
        LocalExecutorPoolBuilder::new(placement)
            .io_memory(opts.io_memory_bytes)
            .name("loadgen")
            .on_all_shards(move || {
                let core = next_core.fetch_add(1, Ordering::Relaxed);
                let (shared, view, w, lim, tx) = (
                    shared.clone(),
                    view.clone(),
                    w.clone(),
                    lim.clone(),
                    tx.clone(),
                );
                async move { core_main(core, cores, shared, view, w, lim, clock, tx).await }
            })
            .map_err(|e| LoadgenError::Executor(e.to_string()))?
    };
    let started_unix_ms = clock.now_us() / 1000;
    let result = report_loop(opts, limits, &shared, &rx, cores, clock);
    if result.is_err() {
        shared.abort.store(true, Ordering::Relaxed);
    }
    let mut failure = None;
    for r in pool.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(LoadgenError::Executor(e.to_string()))),
        }
    }
    let (seconds, totals, cpu) = result?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(RunResult {
        workload: w,
        bootstrap: opts.bootstrap.clone(),
        cores,
        cluster: view,
        seconds,
        totals,
        lag_at_end_us: shared.lag_at_end_us.load(Ordering::Relaxed),
        started_unix_ms,
        run_acked: shared.run_acked.load(Ordering::Relaxed),
        run_consumed: shared.run_consumed.load(Ordering::Relaxed),
        cpu,
        load_cpu_busy_warn_fraction: limits.load_cpu_busy_warn_fraction,
    })
}

#[allow(clippy::too_many_arguments)]
async fn core_main(
    core: usize,
    cores: usize,
    shared: Arc<RunShared>,
    view: ClusterView,
    w: Workload,
    limits: Limits,
    clock: Clock,
    tx: SyncSender<Report>,
) -> Result<(), LoadgenError> {
    if let Some(cpu) = crate::cpu::current_cpu() {
        if let Ok(mut cpus) = shared.load_cpus.lock() {
            cpus.push(cpu);
        }
    }
    let workload = Rc::new(w);
    let limits = Rc::new(limits);
    let view = Rc::new(RefCell::new(view));
    let stats = Rc::new(CoreStats::new(clock));
    // A throughput queue with glommio's default preempt timer (100 ms): glommio polls sockets
    // only between task-queue runs, and producers sleep at least `producer_tick_us` between
    // turns (at max rate too), so the queue goes idle, and acks are read, far more often than
    // that. No latency-sensitive queue and no short preempt timer: with a 250 us latency queue
    // glommio 0.9 parked the load core with work queued for 0.2-1 s in about half of the runs
    // (acks unread in the socket queues, no socket poll armed; ARCHITECTURE.md, "Known quirks
    // (glommio)", and perf/README.md, session 6).
    let tq =
        glommio::executor().create_task_queue(Shares::default(), Latency::NotImportant, "load");
    let failure: Rc<RefCell<Option<LoadgenError>>> = Rc::new(RefCell::new(None));
    // Consumers first: they position themselves, then wait for t0.
    let mut tasks = Vec::new();
    for c in (0..workload.consumers).filter(|c| c % cores == core) {
        let ctx = ConsumerCtx {
            id: c,
            partitions: (0..workload.partitions)
                .filter(|p| p % workload.consumers == c)
                .collect(),
            workload: workload.clone(),
            limits: limits.clone(),
            view: view.clone(),
            stats: stats.clone(),
            shared: shared.clone(),
        };
        let (failure, shared) = (failure.clone(), shared.clone());
        tasks.push(spawn_into(tq, async move {
            if let Err(e) = consumer::run(ctx).await {
                eprintln!("consumer {c}: {e}");
                shared.abort.store(true, Ordering::Relaxed);
                failure.borrow_mut().get_or_insert(e);
            }
        }));
    }
    let t0 = loop {
        if let Some(t0) = shared.t0.get() {
            break *t0;
        }
        if shared.aborted() {
            for t in tasks {
                t.await;
            }
            let failed = failure.borrow_mut().take();
            return match failed {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    stats.set_window(Window::new(t0, workload.warmup_s, workload.duration_s));
    glommio::timer::sleep(t0.saturating_duration_since(Instant::now())).await;
    for p in (0..workload.producers).filter(|p| p % cores == core) {
        let ctx = ProducerCtx {
            id: p,
            workload: workload.clone(),
            limits: limits.clone(),
            view: view.clone(),
            stats: stats.clone(),
            shared: shared.clone(),
        };
        tasks.push(spawn_into(tq, producer::run(ctx)));
    }
    // The ticker: one report per second. `next` is the second being accumulated.
    let done = Rc::new(std::cell::Cell::new(false));
    let next = Rc::new(std::cell::Cell::new(0u64));
    let ticker = {
        let (stats, done, next, tx) = (stats.clone(), done.clone(), next.clone(), tx.clone());
        glommio::spawn_local(async move {
            loop {
                let k = next.get();
                let at = t0 + Duration::from_secs(k + 1);
                glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                if done.get() {
                    return;
                }
                send_second(&tx, &stats, core, k);
                next.set(k + 1);
            }
        })
    };
    for t in tasks {
        t.await;
    }
    done.set(true);
    drop(ticker);
    // What is left belongs to the second being accumulated.
    send_second(&tx, &stats, core, next.get());
    let totals = stats.totals.borrow().clone();
    // The reporting thread drains the channel until every core said Done: a blocking send
    // here waits at most for it to catch up.
    let _ = tx.send(Report::Done { core, totals });
    let failed = failure.borrow_mut().take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends this second's interval; if the queue is full, the interval stays and is merged into
/// the next one (late, but nothing is lost).
fn send_second(tx: &SyncSender<Report>, stats: &CoreStats, core: usize, index: u64) {
    let iv = stats.take_interval();
    match tx.try_send(Report::Second { core, index, iv }) {
        Ok(()) => {}
        Err(TrySendError::Full(Report::Second { iv, .. })) => {
            stats.interval.borrow_mut().merge(&iv);
        }
        Err(_) => {}
    }
}

fn spawn_into<T: 'static>(
    tq: glommio::TaskQueueHandle,
    fut: impl std::future::Future<Output = T> + 'static,
) -> glommio::task::JoinHandle<T> {
    // The queue was created on this executor just before: spawning into it can not fail.
    glommio::spawn_local_into(fut, tq)
        .expect("the load task queue exists")
        .detach()
}

type Merged = (Vec<Second>, Totals, Option<crate::cpu::CpuUsage>);

fn report_loop(
    opts: &RunOptions,
    limits: &Limits,
    shared: &Arc<RunShared>,
    rx: &std::sync::mpsc::Receiver<Report>,
    cores: usize,
    _clock: Clock,
) -> Result<Merged, LoadgenError> {
    let w = &opts.workload;
    // Consumers position first.
    let ready_deadline = Instant::now() + Duration::from_millis(limits.request_timeout_ms);
    while shared.consumers_ready.load(Ordering::Relaxed) < w.consumers {
        if shared.aborted() {
            break;
        }
        if Instant::now() > ready_deadline {
            return Err(LoadgenError::Executor(format!(
                "consumers not positioned after {} ms",
                limits.request_timeout_ms
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    let _ = shared.t0.set(t0);
    let window = Window::new(t0, w.warmup_s, w.duration_s);
    let drain_end = window.end + Duration::from_millis(limits.drain_timeout_ms);
    let watchdog = drain_end + Duration::from_millis(limits.request_timeout_ms);
    let mut pending: BTreeMap<u64, Interval> = BTreeMap::new();
    let mut last: Vec<Option<u64>> = vec![None; cores];
    let mut done = vec![false; cores];
    let mut totals = Totals::default();
    let mut seconds = Vec::new();
    let mut next = 0u64;
    let mut cum = (0u64, 0u64);
    let mut aborted_at: Option<Instant> = None;
    // CPU counters at the measured window's start and end (sampled within one loop turn).
    let mut cpu_from: Option<crate::cpu::CpuSample> = None;
    let mut cpu_usage = None;
    loop {
        let now = Instant::now();
        if cpu_from.is_none() && now >= window.measure_from {
            cpu_from = crate::cpu::sample();
        }
        if cpu_usage.is_none() && now >= window.end {
            if let (Some(a), Some(b)) = (&cpu_from, crate::cpu::sample()) {
                let cpus = shared
                    .load_cpus
                    .lock()
                    .map(|c| c.clone())
                    .unwrap_or_default();
                cpu_usage = Some(crate::cpu::usage(a, &b, &cpus));
            }
        }
        if shared.aborted() {
            // Cores stop at their next turn; give their last reports a moment, then stop.
            let at = *aborted_at.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Report::Second { core, index, iv }) => {
                pending.entry(index).or_default().merge(&iv);
                last[core] = Some(last[core].map_or(index, |l| l.max(index)));
            }
            Ok(Report::Done { core, totals: t }) => {
                done[core] = true;
                totals.merge(&t);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let all_done = done.iter().all(|d| *d);
        // Emit every second all cores have reported.
        loop {
            let complete = (0..cores).all(|c| done[c] || last[c].is_some_and(|l| l >= next));
            let any_later = pending.keys().next_back().is_some_and(|k| *k >= next);
            if !complete || !any_later {
                break;
            }
            let iv = pending.remove(&next).unwrap_or_default();
            cum.0 += iv.acked_msgs;
            cum.1 += iv.consumed_msgs;
            let s = Second {
                t_s: next + 1,
                warmup: next < w.warmup_s,
                interval: iv,
            };
            if opts.live {
                eprintln!("{}", crate::report::live_line(&s, cum, w));
            }
            seconds.push(s);
            next += 1;
        }
        if all_done {
            break;
        }
        // Consumers stop once they read everything acknowledged, or the drain timed out.
        let now = Instant::now();
        if !shared.stop_consumers.load(Ordering::Relaxed) {
            let producers_done = shared.producers_done.load(Ordering::Relaxed) >= w.producers;
            let caught_up = shared.run_consumed.load(Ordering::Relaxed)
                >= shared.run_acked.load(Ordering::Relaxed);
            let stop = if w.producers == 0 {
                now >= window.end
            } else {
                producers_done && (caught_up || now >= drain_end || w.consumers == 0)
            };
            if stop {
                shared.stop_consumers.store(true, Ordering::Relaxed);
            }
        }
        if now > watchdog && !shared.aborted() {
            eprintln!("loadgen: the run did not finish by its watchdog; aborting");
            shared.abort.store(true, Ordering::Relaxed);
        }
    }
    Ok((seconds, totals, cpu_usage))
}
