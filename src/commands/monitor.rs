//! `netpulse monitor`: the monitor engine with the dashboard (on a terminal) or the line
//! printer as its sink (and the web dashboard, JSON API and Prometheus with `--web` or
//! `--metrics`), until `--count` reports, `q` or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::UsageError;
use crate::cli::MonitorArgs;
use crate::dashboard::web::Web;
use crate::dashboard::{print, tui};
use crate::metrics::Exporter;
use crate::monitor::engine::{Monitor, MonitorPlan};
use crate::stats::traffic::Balancers;

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
    let mut history = crate::config::HistoryConfig::default();
    if args.record.no_history {
        history.enabled = false;
    }
    history.path = args.record.history.clone();
    let store = super::up::open_history(&history).0;
    // `--web` and `--metrics` serve the same: the page, the JSON API and /metrics.
    let mut web_at = None;
    if let Some(addr) = args.web.or(args.metrics) {
        let listener = Web::bind(addr.0)?;
        web_at = listener.local_addr().ok();
        tracing::info!("dashboard on http://{0}/ and metrics on http://{0}/metrics", addr.0);
        let exporter = Exporter::new(Balancers::default());
        rt.spawn(exporter.clone().follow(monitor.subscribe()));
        let web = Web::new(exporter, Balancers::default(), monitor.plan().interval)
            .with_history(store.as_ref().map(|s| s.path.clone()));
        rt.spawn(web.clone().follow(monitor.subscribe()));
        let sinks = sinks.clone();
        rt.spawn(async move { web.serve(listener, sinks).await });
    }
    let recorder = match store {
        Some(store) => {
            let no_balancers = Balancers::default();
            crate::history::writer::Recorder::start(store, monitor.subscribe(), no_balancers)
                .map_err(|e| tracing::warn!("history: cannot start its writer: {e}; running without history"))
                .ok()
        }
        None => None,
    };
    if dashboard_wanted(&args) {
        let options = tui::Options {
            command: "monitor",
            interval: Some(monitor.plan().interval),
            ifaces: args.dashboard.ifaces.clone(),
            color: tui::Options::color_from_env(),
            log_pane: false,
            web: web_at,
        };
        let dashboard = tui::Dashboard::start(options, Some(monitor.subscribe()), Balancers::default(), "")
            .context("cannot start the dashboard (--no-tui prints lines instead)")?;
        let quit = dashboard.quit_requested();
        let result = rt.block_on(async {
            let ctrl_c = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = super::shutdown_signal() => {}
                    _ = quit.cancelled() => {}
                }
                ctrl_c.cancel();
            });
            monitor.run(stop.clone()).await
        });
        sinks.cancel();
        let closed = dashboard.close();
        if let Some(r) = recorder {
            r.finish(std::time::Duration::from_secs(5));
        }
        result?;
        closed.context("the dashboard failed")?;
        return Ok(ExitCode::SUCCESS);
    }
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

/// The dashboard runs on a terminal, for the table format, while the monitor runs on.
fn dashboard_wanted(args: &MonitorArgs) -> bool {
    !args.dashboard.no_tui
        && args.format == print::Format::Table
        && !args.once
        && args.count.is_none()
        && std::io::stdout().is_terminal()
}
