//! `netpulse monitor`: the monitor engine with the line printer as its sink (and Prometheus
//! with `--metrics`), until `--count` reports or Ctrl-C.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::UsageError;
use crate::cli::MonitorArgs;
use crate::dashboard::print;
use crate::metrics::Exporter;
use crate::monitor::engine::{Monitor, MonitorPlan};

pub(super) fn run(args: MonitorArgs) -> Result<ExitCode> {
    let plan = MonitorPlan::try_from(&args).map_err(UsageError)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let monitor = Monitor::new(plan);
    let stop = CancellationToken::new();
    let sinks = CancellationToken::new();
    if let Some(addr) = args.metrics {
        let listener = Exporter::bind(addr.0)?;
        tracing::info!("metrics on http://{}/metrics", addr.0);
        let exporter = Exporter::new(std::sync::Arc::from(Vec::new()));
        rt.spawn(exporter.clone().follow(monitor.subscribe()));
        let sinks = sinks.clone();
        rt.spawn(async move { exporter.serve(listener, sinks).await });
    }
    let mut history = crate::config::HistoryConfig::default();
    if args.record.no_history {
        history.enabled = false;
    }
    history.path = args.record.history.clone();
    let recorder = match super::up::open_history(&history).0 {
        Some(store) => {
            let no_balancers = std::sync::Arc::from(Vec::new());
            crate::history::writer::Recorder::start(store, monitor.subscribe(), no_balancers)
                .map_err(|e| tracing::warn!("history: cannot start its writer: {e}; running without history"))
                .ok()
        }
        None => None,
    };
    let reports = monitor.subscribe();
    let format = args.format;
    let mut printer = rt.spawn_blocking(move || print::print_reports(reports, format, &mut std::io::stdout()));
    let result = rt.block_on(async {
        let ctrl_c = stop.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            ctrl_c.cancel();
        });
        let run = monitor.run(stop.clone());
        tokio::pin!(run);
        // A printer that fails (a closed pipe) stops the monitor; otherwise it prints to the end.
        let printed = tokio::select! {
            r = &mut run => {
                let printed = (&mut printer).await;
                r?;
                printed
            }
            printed = &mut printer => {
                stop.cancel();
                let _ = run.await;
                printed
            }
        };
        printed.context("the printer crashed")?.map_err(anyhow::Error::from)
    });
    sinks.cancel();
    if let Some(r) = recorder {
        r.finish(std::time::Duration::from_secs(5));
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
