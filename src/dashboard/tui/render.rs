//! The dashboard's drawing: each panel is a function of the [`State`] that draws into a
//! rectangle of the frame and does nothing else (no I/O, no clock), so every frame can be
//! checked with ratatui's `TestBackend`.
//!
//! Layout: a header (command, verdict, pause, targets up, time, the web dashboard's address;
//! shortened part by part to fit), the panels, a key line. On a
//! wide terminal the targets and the selected target's RTT chart take the left half, balancers,
//! interfaces and the log the right; on a narrow one they stack, and the focused panel gets the
//! room the others can spare (so 80×24 stays readable).

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::state::{BalancerView, IfaceView, Panel, Point, State, TargetView};
use crate::log::LineKind;
use crate::monitor::report::Connectivity;
use crate::stats::traffic::{BackendState, Proto, plural};

/// From this width on, panels go side by side.
pub const WIDE: u16 = 150;
/// Eight heights of a bar, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// A lost probe in a sparkline or the chart.
pub const LOST: char = '×';

/// Styles, or only bold/dim/reverse under `NO_COLOR`.
#[derive(Debug, Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color { Style::new().fg(c) } else { Style::new() }
    }
    fn good(self) -> Style {
        self.fg(Color::Green)
    }
    fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }
    fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn dim(self) -> Style {
        self.fg(Color::DarkGray).add_modifier(Modifier::DIM)
    }
    fn head(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }
    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
    fn band(self) -> Style {
        self.fg(Color::Blue)
    }
    fn title(self, focused: bool) -> Style {
        if focused {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD | Modifier::REVERSED)
        } else {
            self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
        }
    }
    /// By the share of probes lost: none, some, half or more.
    fn loss(self, pct: f64) -> Style {
        if pct <= 0.0 {
            self.good()
        } else if pct < 50.0 {
            self.warn()
        } else {
            self.bad()
        }
    }
}

/// Draws the whole dashboard.
pub fn draw(f: &mut Frame, s: &State) {
    let t = Theme { color: s.color };
    let area = f.area();
    let [head, body, foot] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    header(f, s, t, head);
    footer(f, s, t, foot);
    if body.width >= WIDE {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).spacing(1).areas(body);
        sections(f, s, t, left, &[Section::Targets, Section::Chart]);
        let mut right_side = vec![];
        if !s.view().balancers.is_empty() {
            right_side.push(Section::Balancers);
        }
        right_side.push(Section::Interfaces);
        if s.shows_log() {
            right_side.push(Section::Log);
        }
        sections(f, s, t, right, &right_side);
    } else {
        let mut all = vec![Section::Targets, Section::Chart];
        if !s.view().balancers.is_empty() {
            all.push(Section::Balancers);
        }
        all.push(Section::Interfaces);
        if s.shows_log() {
            all.push(Section::Log);
        }
        sections(f, s, t, body, &all);
    }
    if s.help {
        help(f, t, area);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Targets,
    Chart,
    Balancers,
    Interfaces,
    Log,
}

impl Section {
    /// Which comes first when there is not room for all (lower first), and gets rows to spare
    /// first: the log while it holds the banner (what listens where, how to try it) comes just
    /// after the targets.
    fn rank(self, s: &State) -> u8 {
        match self {
            Section::Targets => 0,
            Section::Log if s.banner_pinned() => 1,
            Section::Balancers => 2,
            Section::Chart => 3,
            Section::Log => 4,
            Section::Interfaces => 5,
        }
    }

    fn panel(self) -> Option<Panel> {
        match self {
            Section::Targets => Some(Panel::Targets),
            Section::Chart => None,
            Section::Balancers => Some(Panel::Balancers),
            Section::Interfaces => Some(Panel::Interfaces),
            Section::Log => Some(Panel::Log),
        }
    }

    /// (fewest rows worth showing, rows it could use).
    fn rows(self, s: &State) -> (u16, u16) {
        let n = |x: usize| u16::try_from(x).unwrap_or(u16::MAX);
        match self {
            Section::Targets => (3, n(s.view().targets.len().max(1)).saturating_add(2)),
            Section::Chart => (5, 14),
            Section::Balancers => (3, n(s.view().balancers.len() + s.backends_len()).saturating_add(3)),
            Section::Interfaces => (3, n(s.view().interfaces.len().max(1)).saturating_add(2)),
            // While the banner is pinned, at least its end (how to try it), at most all of it
            // and a line more.
            Section::Log if s.banner_pinned() => (4, n((s.banner.len() + 1).min(s.log_len()).max(3)).saturating_add(1)),
            Section::Log => (2, n(s.log_len().clamp(2, 12)).saturating_add(1)),
        }
    }
}

/// Heights for sections given as `(min, want)` in `avail` rows: the focused one and then the
/// others by rank get their minimum while they fit; the focused one then gets what it wants,
/// pushing out the lowest ranked if that is enough (never the targets), then the others; rows
/// left over go to `spare` (the chart, which scales). Sections that do not fit get 0.
fn fit(avail: u16, wants: &[(u16, u16)], ranks: &[u8], focus: Option<usize>, spare: Option<usize>) -> Vec<u16> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| (Some(i) != focus, ranks[i]));
    let mut h = vec![0u16; wants.len()];
    let mut left = avail;
    for &i in &order {
        if wants[i].0 <= left {
            h[i] = wants[i].0;
            left -= wants[i].0;
        }
    }
    // The focused one may push out others (the lowest ranked, never the targets) when that
    // gives it all it wants.
    if let Some(f) = focus.filter(|&f| h[f] > 0) {
        let need = wants[f].1.saturating_sub(h[f]);
        let mut out = Vec::new();
        let mut freed = left;
        for &i in order.iter().rev().filter(|&&i| i != f && ranks[i] > 0 && h[i] > 0) {
            if freed >= need {
                break;
            }
            freed += h[i];
            out.push(i);
        }
        if freed >= need {
            for i in out {
                h[i] = 0;
            }
            left = freed;
        }
    }
    for &i in &order {
        if h[i] > 0 {
            let more = wants[i].1.saturating_sub(h[i]).min(left);
            h[i] += more;
            left -= more;
        }
    }
    let take = spare.filter(|&i| h[i] > 0).or_else(|| order.iter().copied().find(|&i| h[i] > 0));
    if let Some(i) = take {
        h[i] += left;
    }
    h
}

fn sections(f: &mut Frame, s: &State, t: Theme, area: Rect, list: &[Section]) {
    let wants: Vec<(u16, u16)> = list.iter().map(|x| x.rows(s)).collect();
    let ranks: Vec<u8> = list.iter().map(|x| x.rank(s)).collect();
    let focus = list.iter().position(|x| x.panel() == Some(s.focus));
    // Rows to spare make the chart taller, or else show more of the log.
    let spare = list.iter().position(|x| *x == Section::Chart).or_else(|| list.iter().position(|x| *x == Section::Log));
    let heights = fit(area.height, &wants, &ranks, focus, spare);
    let mut y = area.y;
    for (x, h) in list.iter().zip(heights) {
        if h == 0 {
            continue;
        }
        let r = Rect { x: area.x, y, width: area.width, height: h };
        y += h;
        match x {
            Section::Targets => targets(f, s, t, r),
            Section::Chart => chart(f, s, t, r),
            Section::Balancers => balancers(f, s, t, r),
            Section::Interfaces => interfaces(f, s, t, r),
            Section::Log => log(f, s, t, r),
        }
    }
}

/// A panel's frame: a title on its top rule; returns the rectangle inside.
fn panel(f: &mut Frame, t: Theme, area: Rect, title: String, focused: bool) -> Rect {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(t.dim())
        .title(Span::styled(format!(" {title} "), t.title(focused)));
    let inner = block.inner(area);
    f.render_widget(block, area);
    inner
}

/// How much of each of the header's parts is shown (0: all; higher: shorter, then none).
#[derive(Debug, Clone, Copy, Default)]
struct HeaderForm {
    interval: u8,
    web: u8,
    time: u8,
    targets: u8,
    paused: u8,
}

/// The header's shortenings, in the order they are made until it fits: the interval goes
/// first, the web dashboard's address and the pause last.
const HEADER_CUTS: [fn(&mut HeaderForm); 10] = [
    |h| h.interval = 1,
    |h| h.time = 1,
    |h| h.web = 1,
    |h| h.time = 2,
    |h| h.targets = 1,
    |h| h.paused = 1,
    |h| h.web = 2,
    |h| h.targets = 2,
    |h| h.paused = 2,
    |h| h.web = 3,
];

fn header(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let width = usize::from(area.width);
    let mut form = HeaderForm::default();
    let mut cuts = HEADER_CUTS.iter();
    let (left, right) = loop {
        let (left, right) = header_parts(s, t, form);
        let used = left.width() + right.as_ref().map_or(0, |r| r.width() + 1);
        match cuts.next() {
            Some(cut) if used > width => cut(&mut form),
            _ => break (left, right),
        }
    };
    f.render_widget(Paragraph::new(left), area);
    if let Some(right) = right {
        f.render_widget(Paragraph::new(right).alignment(ratatui::layout::Alignment::Right), area);
    }
}

/// The header's left part (command, verdict, targets up, time, interval, pause) and right one
/// (where the web dashboard is), in the given form.
fn header_parts(s: &State, t: Theme, form: HeaderForm) -> (Line<'static>, Option<Line<'static>>) {
    let mut spans = vec![Span::styled(format!(" netpulse {} ", s.command), t.head()), Span::raw("│ ")];
    match s.view().connectivity {
        Some(c) => {
            let (word, style) = match c {
                Connectivity::Connected => ("● connected", t.good().add_modifier(Modifier::BOLD)),
                Connectivity::Degraded => ("▲ DEGRADED", t.warn().add_modifier(Modifier::BOLD)),
                Connectivity::Disconnected => ("✖ DISCONNECTED", t.bad()),
            };
            spans.push(Span::styled(word, style));
        }
        None if s.interval.is_some() => spans.push(Span::styled("waiting for the first report…", t.dim())),
        None => spans.push(Span::styled("no monitor", t.dim())),
    }
    if s.paused() {
        let n = s.behind();
        let held = match (n, form.paused) {
            (0, _) | (_, 2..) => String::new(),
            (n, 0) => format!(" ({} behind)", plural(n, "report", "reports")),
            (n, _) => format!(" ({n} behind)"),
        };
        spans.push(Span::raw(" │ "));
        spans.push(Span::styled(format!("PAUSED{held}"), t.warn().add_modifier(Modifier::BOLD | Modifier::REVERSED)));
    }
    if !s.view().targets.is_empty() && form.targets < 2 {
        let up = s.view().targets.iter().filter(|x| x.summary.up).count();
        let n = s.view().targets.len();
        let what = if form.targets == 0 { " targets up" } else { " up" };
        spans.push(Span::raw(format!(" │ {up}/{n}{what}")));
    }
    if let Some(time) = s.view().time.as_ref().filter(|_| form.time < 2) {
        let zone = if form.time == 0 { " UTC" } else { "" };
        spans.push(Span::raw(format!(" │ {}{zone}", hms(time))));
    }
    if let Some(i) = s.interval.filter(|_| form.interval == 0) {
        spans.push(Span::styled(format!(" │ every {}", crate::config::Dur(i)), t.dim()));
    }
    let right = s.web.filter(|_| form.web < 3).map(|addr| {
        let label = match form.web {
            0 => "web dashboard ",
            1 => "web ",
            _ => "",
        };
        Line::from(vec![
            Span::styled(label, t.dim()),
            Span::styled(format!("http://{addr}/"), t.fg(Color::Cyan).add_modifier(Modifier::UNDERLINED)),
            Span::raw(" "),
        ])
    });
    (Line::from(spans), right)
}

fn footer(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let key = |k: &'static str| Span::styled(k, t.head());
    let mut spans = vec![
        Span::raw(" "),
        key("↑↓"),
        Span::raw(" select  "),
        key("Tab"),
        Span::raw(" panel: "),
        Span::styled(s.focus.name(), t.title(false)),
        Span::raw("  "),
        key("p"),
        Span::raw(if s.paused() { " resume  " } else { " pause  " }),
        key("?"),
        Span::raw(" help  "),
        key("q"),
        Span::raw(" quit"),
    ];
    if s.command == "up" {
        spans.push(Span::styled(" (stops all)", t.dim()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// `HH:MM:SS` of an RFC 3339 time (or the text as it is).
fn hms(rfc3339: &str) -> &str {
    rfc3339.get(11..19).filter(|_| rfc3339.as_bytes().get(10) == Some(&b'T')).unwrap_or(rfc3339)
}

/// Milliseconds, with fewer decimals as they grow; `-` for none.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// A percentage like ping's, short: `0%`, `2.5%`, `36%`.
pub fn percent(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v == 0.0 || v >= 10.0 || v.fract() == 0.0 => format!("{v:.0}%"),
        Some(v) => format!("{v:.1}%"),
    }
}

/// A rate in bits per second, as nload shows it: `812 bit/s`, `12.3 kbit/s`, `1.23 Mbit/s`.
pub fn bits(bytes_per_sec: f64) -> String {
    let b = bytes_per_sec * 8.0;
    let (v, unit) = match b {
        b if b >= 1e9 => (b / 1e9, "Gbit/s"),
        b if b >= 1e6 => (b / 1e6, "Mbit/s"),
        b if b >= 1e3 => (b / 1e3, "kbit/s"),
        b => return format!("{b:.0} bit/s"),
    };
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// Events per second: `0.33`, `12.0`, `1.2k`.
pub fn per_sec(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000.0 => format!("{:.0}k", v / 1000.0),
        Some(v) if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        Some(v) if v >= 10.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

/// A duration in seconds, short: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `text` in `width` columns: padded, or cut on the left with `…` (the end of an address, its
/// port, is what tells targets apart).
fn fit_left(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return format!("{text:<width$}");
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = text.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// `text` in `width` columns, cut on the right with `…`.
fn fit_right(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return format!("{text:<width$}");
    }
    if width == 0 {
        return String::new();
    }
    let head: String = text.chars().take(width - 1).collect();
    format!("{head}…")
}

/// A target's name without its scheme (and the root path), for narrow tables: the chart's
/// title gives it whole.
fn short_name(name: &str) -> &str {
    let rest = name.split_once("://").map_or(name, |(_, rest)| rest);
    rest.strip_suffix('/').filter(|r| !r.contains('/')).unwrap_or(rest)
}

/// A target's name in the table: whole, or (`short`) a letter for its kind — `h`ttp, `t`cp,
/// `u`dp, `i`cmp — and the name without its scheme, so `http://H:P/` and `tcp://H:P` still
/// differ.
/// (The letter only without a KIND column.)
fn display_name(x: &TargetView, short: bool, with_kind: bool) -> std::borrow::Cow<'_, str> {
    match (short, with_kind) {
        (false, _) => x.name.as_str().into(),
        (true, true) => short_name(&x.name).into(),
        (true, false) => format!("{} {}", &x.kind.as_str()[..1], short_name(&x.name)).into(),
    }
}

/// The first row shown of a list of `len` rows in `rows` rows so that `selected` is visible.
fn scroll(selected: usize, len: usize, rows: usize) -> usize {
    if rows == 0 || len <= rows { 0 } else { selected.saturating_sub(rows - 1).min(len - rows) }
}

/// One sparkline cell per point, newest at the right: bars by RTT (relative to the highest
/// shown), `×` for a probe that got no answer.
fn spark_points<'a>(points: impl Iterator<Item = &'a Point>, width: usize, t: Theme) -> Vec<Span<'static>> {
    let shown: Vec<Point> = {
        let all: Vec<&Point> = points.collect();
        all[all.len().saturating_sub(width)..].iter().map(|p| **p).collect()
    };
    let max = shown.iter().filter_map(|p| p.rtt_ms).fold(0.0f32, f32::max);
    let mut spans = Vec::with_capacity(shown.len() + 1);
    if shown.len() < width {
        spans.push(Span::raw(" ".repeat(width - shown.len())));
    }
    for p in shown {
        spans.push(match p.rtt_ms {
            None => Span::styled(LOST.to_string(), t.bad()),
            Some(v) => {
                let level = if max > 0.0 { ((v / max) * 8.0).ceil() as usize } else { 1 };
                let style = if p.up { t.good() } else { t.warn() };
                Span::styled(BARS[level.clamp(1, 8) - 1].to_string(), style)
            }
        });
    }
    spans
}

/// Bars for plain values (rates), relative to the highest shown.
fn spark_values(values: impl Iterator<Item = f64>, width: usize) -> String {
    let all: Vec<f64> = values.collect();
    let shown = &all[all.len().saturating_sub(width)..];
    let max = shown.iter().copied().fold(0.0f64, f64::max);
    let mut out = " ".repeat(width - shown.len());
    for &v in shown {
        out.push(if max > 0.0 && v > 0.0 { BARS[(((v / max) * 8.0).ceil() as usize).clamp(1, 8) - 1] } else { ' ' });
    }
    out
}

fn targets(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let up = s.view().targets.iter().filter(|x| x.summary.up).count();
    let title = if s.view().targets.is_empty() {
        "Targets".to_string()
    } else {
        format!("Targets {up}/{} up", s.view().targets.len())
    };
    let inner = panel(f, t, area, title, s.focus == Panel::Targets);
    if inner.height == 0 {
        return;
    }
    if s.view().targets.is_empty() {
        let what = if s.command == "monitor" {
            "no targets: netpulse monitor HOST tcp://H:P udp://H:P http://H:P/PATH"
        } else {
            "no targets: the config has no [monitor] section"
        };
        f.render_widget(Paragraph::new(Span::styled(what, t.dim())), inner);
        return;
    }
    let w = usize::from(inner.width);
    let with_kind = w >= 100;
    // Marker, state, six numbers of 7 and their gaps: the fixed part; the name and the
    // sparkline share the rest.
    let fixed = 2 + 6 + 6 * 8 + if with_kind { 5 } else { 0 };
    // Full names when they fit beside a sparkline of 7, else a letter for the kind and the
    // name without its scheme.
    let width_of = |short: bool| {
        let name = |x: &TargetView| display_name(x, short, with_kind).chars().count();
        s.view().targets.iter().map(name).max().unwrap_or(0).clamp(8, 30)
    };
    let room = w.saturating_sub(fixed + 1);
    let short = width_of(false) + 7 > room;
    let name_w = width_of(short).min(room.saturating_sub(4).max(8));
    let spark_w = w.saturating_sub(fixed + name_w + 1);
    let mut head = format!("  {:<name_w$} ", "TARGET");
    if with_kind {
        head.push_str("KIND ");
    }
    head.push_str(&format!(
        "{:<5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} ",
        "STATE", "LOSS1m", "LOSSwin", "LAST ms", "AVG ms", "P95 ms", "JIT ms"
    ));
    let spark_head = if spark_w >= 12 { format!("RTT ({LOST} lost)") } else { "RTT".to_string() };
    head.push_str(&fit_right(&spark_head, spark_w));
    let buf = f.buffer_mut();
    buf.set_line(inner.x, inner.y, &Line::styled(head, t.head()), inner.width);
    let rows = usize::from(inner.height - 1);
    let first = scroll(s.selected_target, s.view().targets.len(), rows);
    let per_minute = s.probes_per_minute();
    for (i, x) in s.view().targets.iter().enumerate().skip(first).take(rows) {
        let y = inner.y + 1 + u16::try_from(i - first).unwrap_or(0);
        let line = target_row(x, i == s.selected_target, name_w, short, with_kind, spark_w, per_minute, t);
        buf.set_line(inner.x, y, &line, inner.width);
    }
    if s.view().targets.len() > rows && rows > 0 {
        let more =
            format!(" {}-{} of {} ", first + 1, (first + rows).min(s.view().targets.len()), s.view().targets.len());
        let x = inner.right().saturating_sub(u16::try_from(more.len()).unwrap_or(0));
        buf.set_string(x, area.y, more, t.dim());
    }
}

#[allow(clippy::too_many_arguments)]
fn target_row(
    x: &TargetView,
    selected: bool,
    name_w: usize,
    short: bool,
    with_kind: bool,
    spark_w: usize,
    per_minute: usize,
    t: Theme,
) -> Line<'static> {
    let s = &x.summary;
    let mut spans = vec![Span::raw(if selected { "› " } else { "  " })];
    let name_style = if selected { t.selected() } else { Style::new() };
    let name = match display_name(x, short, with_kind) {
        // Cut, the kind's letter stays in front.
        n if short && !with_kind && n.chars().count() > name_w => {
            format!("{}{}", &n[..2], fit_left(&n[2..], name_w.saturating_sub(2)))
        }
        n => fit_left(&n, name_w),
    };
    spans.push(Span::styled(name, name_style));
    spans.push(Span::raw(" "));
    if with_kind {
        spans.push(Span::styled(format!("{:<4} ", x.kind.as_str()), t.dim()));
    }
    let (status, style) = if x.points.is_empty() {
        ("…", t.dim())
    } else if s.up {
        ("up", t.good())
    } else {
        ("down", t.bad())
    };
    spans.push(Span::styled(format!("{status:<5} "), style));
    let loss_1m = x.loss_pct_last(per_minute);
    spans.push(Span::styled(format!("{:>7} ", percent(loss_1m)), t.loss(loss_1m.unwrap_or(0.0))));
    let loss_win = (s.sent > 0).then_some(s.loss_pct);
    spans.push(Span::styled(format!("{:>7} ", percent(loss_win)), t.loss(s.loss_pct)));
    for v in [s.rtt_last_ms, s.rtt_avg_ms, s.rtt_p95_ms, s.jitter_ms] {
        spans.push(Span::raw(format!("{:>7} ", ms(v))));
    }
    spans.extend(spark_points(x.points.iter(), spark_w, t));
    Line::from(spans)
}

/// The selected target's RTT over time, SmokePing-like: each column is a few probes, drawn as
/// the min–max band (`░`) with the median (`━`) coloured by the share lost; a column with a
/// lost probe has `×` on top, one that lost them all is a wall of `×`.
fn chart(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let Some(x) = s.target() else {
        panel(f, t, area, "RTT".into(), false);
        return;
    };
    // One probe a column until the probes fill the width, then as many as it takes: the
    // probes there are, not the history's capacity, fill the chart.
    let inner_w = usize::from(area.width.saturating_sub(8)).max(1);
    let per_col = x.points.len().div_ceil(inner_w).max(1);
    let per = format!(" · {}/column", plural(per_col as u64, "probe", "probes"));
    let mut title = format!("RTT of {} ({})", x.name, x.kind);
    let legend = format!(" · ━ median ░ min–max {LOST} lost{per}");
    if title.chars().count() + legend.chars().count() + 4 <= usize::from(area.width) {
        title.push_str(&legend);
    } else {
        title.push_str(&per);
    }
    let inner = panel(f, t, area, title, false);
    if inner.height < 2 || inner.width < 10 {
        return;
    }
    rtt_chart(f.buffer_mut(), x, inner, per_col, s.interval, t);
}

/// One column of the chart.
#[derive(Debug, Default, Clone)]
struct Column {
    rtts: Vec<f32>,
    lost: usize,
}

fn rtt_chart(
    buf: &mut Buffer,
    x: &TargetView,
    area: Rect,
    per_col: usize,
    interval: Option<std::time::Duration>,
    t: Theme,
) {
    const LABEL: u16 = 8;
    let plot = Rect { x: area.x + LABEL, y: area.y, width: area.width - LABEL, height: area.height - 1 };
    let cols = usize::from(plot.width);
    let mut columns = vec![Column::default(); cols];
    let pushed = x.points.pushed();
    let newest_bucket = pushed.saturating_sub(1) / per_col as u64;
    let first_number = pushed - x.points.len() as u64;
    for (i, p) in x.points.iter().enumerate() {
        let bucket = (first_number + i as u64) / per_col as u64;
        let back = usize::try_from(newest_bucket - bucket).unwrap_or(usize::MAX);
        let Some(col) = cols.checked_sub(back + 1) else { continue };
        match p.rtt_ms {
            Some(v) => columns[col].rtts.push(v),
            None => columns[col].lost += 1,
        }
    }
    let top = nice_ceiling(columns.iter().flat_map(|c| c.rtts.iter().copied()).fold(0.0f32, f32::max));
    let rows = usize::from(plot.height);
    let row_of = |v: f32| -> usize {
        let frac = (v / top).clamp(0.0, 1.0);
        rows - 1 - ((frac * (rows - 1) as f32).round() as usize)
    };
    // The axis: labels at the top, middle and bottom rows.
    for (row, v) in [(0, top), (row_of(top / 2.0), top / 2.0), (rows - 1, 0.0)] {
        let label = format!("{:>6}ms", ms(Some(f64::from(v))));
        buf.set_string(area.x, plot.y + u16::try_from(row).unwrap_or(0), fit_left(&label, 8), t.dim());
    }
    for (c, col) in columns.iter_mut().enumerate() {
        let cx = plot.x + u16::try_from(c).unwrap_or(0);
        let total = col.rtts.len() + col.lost;
        if total == 0 {
            continue;
        }
        let cell = |buf: &mut Buffer, row: usize, ch: char, style: Style| {
            if let Some(cell) = buf.cell_mut((cx, plot.y + u16::try_from(row).unwrap_or(0))) {
                cell.set_char(ch).set_style(style);
            }
        };
        if col.rtts.is_empty() {
            for row in 0..rows {
                cell(buf, row, LOST, t.bad());
            }
            continue;
        }
        col.rtts.sort_by(f32::total_cmp);
        let (lo, hi) = (col.rtts[0], col.rtts[col.rtts.len() - 1]);
        let median = col.rtts[col.rtts.len() / 2];
        for row in row_of(hi)..=row_of(lo) {
            cell(buf, row, '░', t.band());
        }
        let loss = col.lost as f64 * 100.0 / total as f64;
        cell(buf, row_of(median), '━', t.loss(loss).add_modifier(Modifier::BOLD));
        if col.lost > 0 {
            cell(buf, 0, LOST, t.bad());
        }
    }
    // The time axis under the plot.
    let span = interval.map(|i| i.saturating_mul(u32::try_from(per_col * cols).unwrap_or(u32::MAX)));
    let axis_y = plot.y + plot.height;
    let left = span.map_or_else(|| format!("-{} probes", per_col * cols), |d| format!("-{}", age(d.as_secs())));
    buf.set_string(plot.x, axis_y, &left, t.dim());
    if let Some(half) = span.map(|d| d / 2) {
        let mid = format!("-{}", age(half.as_secs()));
        let mx = plot.x + plot.width / 2;
        if usize::from(mx - plot.x) > left.len() + 1 {
            buf.set_string(mx.saturating_sub(u16::try_from(mid.len() / 2).unwrap_or(0)), axis_y, mid, t.dim());
        }
    }
    buf.set_string(plot.right().saturating_sub(3), axis_y, "now", t.dim());
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v` (at least 0.1 ms).
fn nice_ceiling(v: f32) -> f32 {
    let v = v.max(0.1);
    let mag = 10f32.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|&c| c >= v * 0.999).unwrap_or(10.0 * mag)
}

/// The balancers' error column: `ERR%` of HTTP (failed or 5xx), `NOREPLY%` of UDP (datagrams
/// sent less replies received).
fn err_header(s: &State) -> &'static str {
    let has = |p| s.view().balancers.iter().any(|b| b.proto == p);
    match (has(Proto::Http), has(Proto::Udp)) {
        (true, true) => "ERR%/NOREPLY%",
        (false, true) => "NOREPLY%",
        _ => "ERR%",
    }
}

/// `10 s`: the span the balancers' figures cover.
fn span_label(s: &State) -> Option<String> {
    let secs = s
        .view()
        .balancers
        .iter()
        .filter_map(|b| b.span_secs)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))?;
    Some(format!("last {:.0} s", secs.max(1.0)))
}

fn balancers(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let mut title = format!("Balancers ({})", s.view().balancers.len());
    if let Some(span) = span_label(s) {
        title.push_str(&format!(" · {span}"));
    }
    let inner = panel(f, t, area, title, s.focus == Panel::Balancers);
    if inner.height == 0 {
        return;
    }
    let w = usize::from(inner.width);
    // BACKEND, STATE 11, REQ/S 6, the error column, P50/P99 10, gaps; the share bar takes the
    // rest.
    let addr_w = s
        .view()
        .balancers
        .iter()
        .flat_map(|b| b.backends.iter())
        .map(|b| b.addr.to_string().len())
        .max()
        .unwrap_or(9)
        .clamp(9, 47);
    let err = err_header(s);
    let err_w = err.len();
    // WEIGHT only where weights say something: one configured, or measured.
    let weights =
        s.view().balancers.iter().flat_map(|b| b.backends.iter()).any(|b| b.weight != 1.0 || b.weight_why.is_some());
    let weight_w = if weights { 7 } else { 0 };
    let fixed = 2 + addr_w + 1 + 11 + weight_w + 6 + 1 + err_w + 1 + 10 + 1;
    let share_w = w.saturating_sub(fixed);
    let head = format!(
        "  {:<addr_w$} {:<11}{:>weight_w$}{:>6} {:>err_w$} {:>10} {}",
        "BACKEND",
        "STATE",
        if weights { "WEIGHT " } else { "" },
        "REQ/S",
        err,
        "P50/P99 ms",
        fit_right("SHARE", share_w)
    );
    // Every row: a balancer's line, then its backends (numbered for the selection); each row
    // knows its balancer.
    let mut lines: Vec<(usize, Option<usize>, Line<'static>)> = Vec::new();
    let mut n = 0;
    for (bi, b) in s.view().balancers.iter().enumerate() {
        lines.push((bi, None, balancer_line(b, t, w)));
        for be in &b.backends {
            let selected = s.focus == Panel::Balancers && n == s.selected_backend;
            let marker = if n == s.selected_backend { "› " } else { "  " };
            let mut spans = vec![Span::raw(marker)];
            spans.push(Span::styled(
                fit_left(&be.addr.to_string(), addr_w),
                if selected { t.selected() } else { Style::new() },
            ));
            spans.push(Span::raw(" "));
            let (word, style) = match be.state {
                BackendState::Up => ("up", t.good()),
                BackendState::Down => ("down", t.bad()),
                BackendState::Ejected => ("ejected", t.warn()),
                BackendState::Draining => ("draining", t.warn()),
                BackendState::Disabled => ("disabled", t.bad()),
            };
            let how_long = match (be.state, be.ejected_for_ms, be.for_secs) {
                (BackendState::Ejected, Some(left), _) => format!(" {}", age(left.div_ceil(1000))),
                (_, _, Some(secs)) => format!(" {}", age(secs)),
                _ => String::new(),
            };
            spans.push(Span::styled(format!("{:<11}", format!("{word}{how_long}")), style));
            if weights {
                spans.push(Span::raw(format!("{:>6} ", weight(be.weight))));
            }
            let r = be.recent.as_ref();
            let err_pct = r.and_then(|r| r.error_pct);
            spans.push(Span::raw(format!("{:>6} ", per_sec(r.map(|r| r.requests_per_s)))));
            spans.push(Span::styled(format!("{:>err_w$} ", percent(err_pct)), t.loss(err_pct.unwrap_or(0.0))));
            let quantiles = match (r.and_then(|r| r.p50_ms), r.and_then(|r| r.p99_ms)) {
                (None, None) => "-".to_string(),
                (p50, p99) => format!("{}/{}", ms(p50), ms(p99)),
            };
            spans.push(Span::raw(format!("{quantiles:>10} ")));
            let share = r.and_then(|r| r.share_pct);
            if share_w > 8 {
                let bar_w = share_w - 5;
                let full = (share.unwrap_or(0.0).clamp(0.0, 100.0) / 100.0 * bar_w as f64).round() as usize;
                spans.push(Span::styled("█".repeat(full), t.band()));
                spans.push(Span::styled("·".repeat(bar_w - full), t.dim()));
                spans.push(Span::raw(format!("{:>5}", percent(share))));
            } else if share_w >= 4 {
                spans.push(Span::raw(format!("{:>share_w$}", percent(share))));
            }
            lines.push((bi, Some(n), Line::from(spans)));
            n += 1;
        }
    }
    let buf = f.buffer_mut();
    buf.set_line(inner.x, inner.y, &Line::styled(head, t.head()), inner.width);
    // The selected backend's last change, on the bottom row when there is room.
    let detail = selected_backend(s, w).filter(|_| inner.height >= 4);
    let rows = usize::from(inner.height - 1) - usize::from(detail.is_some());
    let at = lines.iter().position(|(_, i, _)| *i == Some(s.selected_backend)).unwrap_or(0);
    for (k, i) in balancer_rows(&lines.iter().map(|(b, i, _)| (*b, i.is_none())).collect::<Vec<_>>(), at, rows)
        .into_iter()
        .enumerate()
    {
        buf.set_line(inner.x, inner.y + 1 + u16::try_from(k).unwrap_or(0), &lines[i].2, inner.width);
    }
    if let Some(d) = detail {
        buf.set_line(inner.x, inner.bottom() - 1, &Line::styled(d, t.dim()), inner.width);
    }
}

/// Which of the balancers' rows (`(balancer, is its own line)`, in order) to show in `rows`
/// rows so that row `at` is among them, and every backend shown under its balancer's name:
/// when the window starts inside a balancer's backends, its first row is that balancer's
/// line; with a single row, the line of the selected backend's balancer.
fn balancer_rows(lines: &[(usize, bool)], at: usize, rows: usize) -> Vec<usize> {
    if rows == 0 || lines.is_empty() {
        return Vec::new();
    }
    let owner = |i: usize| lines.iter().position(|&(b, own)| own && b == lines[i].0).unwrap_or(i);
    if rows == 1 {
        return vec![owner(at)];
    }
    let first = scroll(at, lines.len(), rows);
    let mut shown: Vec<usize> = (first..lines.len().min(first + rows)).collect();
    if !lines[first].1 {
        // A backend on top (never the selected one: scroll keeps that lower with 2 rows or
        // more): its balancer's name instead.
        shown[0] = owner(first);
    }
    shown
}

/// The selected backend's line: its last change, then as much as fits of what it was sent.
fn selected_backend(s: &State, width: usize) -> Option<String> {
    let be = s.view().balancers.iter().flat_map(|b| b.backends.iter()).nth(s.selected_backend)?;
    // Why it weighs what it does first while it is up (that is what moves its share), its
    // last change first otherwise.
    let why = match (be.why.as_deref(), be.weight_why.as_deref()) {
        (Some(state), Some(weight)) if be.state == BackendState::Up => format!("{weight} · {state}"),
        (Some(state), Some(weight)) => format!("{state} · {weight}"),
        (Some(why), None) | (None, Some(why)) => why.to_string(),
        (None, None) => "no change since the start".to_string(),
    };
    let mut line = format!("  {}: {why}", be.addr);
    let mut more = vec![format!("{} sent in all", be.total)];
    if let Some(r) = &be.recent {
        more.push(format!("{} out, {} in", bits(r.sent_bytes_per_s), bits(r.received_bytes_per_s)));
    }
    for m in more {
        if line.chars().count() + 3 + m.chars().count() > width {
            break;
        }
        line.push_str(" · ");
        line.push_str(&m);
    }
    Some(line)
}

/// A weight as the WEIGHT column shows it: `1`, `0.07`, `4.5`, `120`.
fn weight(v: f64) -> String {
    let s = if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// A balancer's line, as much of it as fits in `width`: name, figures over the span, and its
/// protocol, address, strategy and total when there is room.
fn balancer_line(b: &BalancerView, t: Theme, width: usize) -> Line<'static> {
    let (unit, err, open) = match b.proto {
        Proto::Http => ("req/s", "5xx", plural(b.open.max(0) as u64, "client", "clients")),
        Proto::Udp => ("dgram/s", "no reply", plural(b.open.max(0) as u64, "flow", "flows")),
    };
    let listen = b.listen.map_or_else(String::new, |a| format!(" {a}"));
    // From the most to the least said: (proto, listen, strategy, total).
    let forms = [
        (true, true, true, true),
        (true, true, true, false),
        (true, true, false, false),
        (false, true, false, false),
        (false, false, false, false),
    ];
    let mut last = Line::default();
    for (proto, with_listen, strategy, total) in forms {
        let mut about = String::new();
        if proto {
            about.push_str(&format!(" {}", b.proto));
        }
        if with_listen {
            about.push_str(&listen);
        }
        if strategy {
            about.push_str(&format!(" {}", b.strategy));
        }
        let in_all = if total { format!(" ({} in all)", b.total) } else { String::new() };
        let line = Line::from(vec![
            Span::styled(b.name.clone(), t.head()),
            Span::styled(about, t.dim()),
            Span::raw(format!(" · {} {unit}{in_all} · {err} {} · {open}", per_sec(b.rate), percent(b.err_pct),)),
        ]);
        if line.width() <= width {
            return line;
        }
        last = line;
    }
    last
}

fn interfaces(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let up = s.view().interfaces.iter().filter(|i| i.up).count();
    let title = format!("Interfaces {up}/{} up", s.view().interfaces.len());
    let inner = panel(f, t, area, title, s.focus == Panel::Interfaces);
    if inner.height == 0 {
        return;
    }
    if s.view().interfaces.is_empty() {
        let what = if s.view().time.is_none() { "waiting for the first report…" } else { "no interfaces to show" };
        f.render_widget(Paragraph::new(Span::styled(what, t.dim())), inner);
        return;
    }
    let w = usize::from(inner.width);
    let name_w = s.view().interfaces.iter().map(|i| i.name.chars().count()).max().unwrap_or(4).clamp(5, 16);
    let fixed = 2 + name_w + 1 + 5 + 12 + 1 + 12 + 1 + 6 + 1 + 6 + 1;
    let spark_w = w.saturating_sub(fixed);
    let head = format!(
        "  {:<name_w$} {:<5}{:>12} {:>12} {:>6} {:>6} {}",
        "IFACE",
        "LINK",
        "RX",
        "TX",
        "ERRS",
        "DROPS",
        fit_right("RX+TX", spark_w)
    );
    let buf = f.buffer_mut();
    buf.set_line(inner.x, inner.y, &Line::styled(head, t.head()), inner.width);
    let rows = usize::from(inner.height - 1);
    let first = scroll(s.selected_iface, s.view().interfaces.len(), rows);
    for (k, (i, x)) in s.view().interfaces.iter().enumerate().skip(first).take(rows).enumerate() {
        let line = iface_row(x, i == s.selected_iface && s.focus == Panel::Interfaces, name_w, spark_w, t);
        buf.set_line(inner.x, inner.y + 1 + u16::try_from(k).unwrap_or(0), &line, inner.width);
    }
}

fn iface_row(x: &IfaceView, selected: bool, name_w: usize, spark_w: usize, t: Theme) -> Line<'static> {
    let base = if x.up { Style::new() } else { t.dim() };
    let name_style = if selected { base.patch(t.selected()) } else { base };
    let text = format!(
        "{:<5}{:>12} {:>12} {:>6} {:>6} ",
        if x.up { "up" } else { "down" },
        bits(x.rx_bytes_per_sec),
        bits(x.tx_bytes_per_sec),
        x.errors,
        x.drops
    );
    Line::from(vec![
        Span::raw(if selected { "› " } else { "  " }),
        Span::styled(fit_right(&x.name, name_w), name_style),
        Span::raw(" "),
        Span::styled(text, if x.up { Style::new() } else { t.dim() }),
        Span::styled(spark_values(x.rates.iter().copied(), spark_w), if x.up { t.band() } else { t.dim() }),
    ])
}

fn log(f: &mut Frame, s: &State, t: Theme, area: Rect) {
    let rows = usize::from(area.height.saturating_sub(1));
    let shown = log_rows(s, rows);
    let title = if s.log_back > 0 {
        format!("Log · {} back (End: follow)", plural(s.log_back as u64, "line", "lines"))
    } else if s.banner_pinned() && shown.first().is_some_and(|&i| i > 0) && s.focus != Panel::Log {
        "Log · the end of the start-up banner (Tab: all)".to_string()
    } else {
        "Log".to_string()
    };
    let inner = panel(f, t, area, title, s.focus == Panel::Log);
    if inner.height == 0 {
        return;
    }
    if shown.is_empty() {
        f.render_widget(Paragraph::new(Span::styled("no log lines yet", t.dim())), inner);
        return;
    }
    let buf = f.buffer_mut();
    for (k, i) in shown.into_iter().enumerate() {
        let Some((kind, text)) = s.log_line(i) else { continue };
        let style = match kind {
            LineKind::Error => t.bad(),
            LineKind::Warn => t.warn(),
            LineKind::Debug => t.dim(),
            LineKind::Info | LineKind::Access => Style::new(),
        };
        let text = short_times(text);
        buf.set_line(inner.x, inner.y + u16::try_from(k).unwrap_or(0), &Line::styled(text, style), inner.width);
    }
}

/// Which lines of the log pane (banner first, see [`State::log_line`]) show in `rows` rows:
/// the newest (or those `log_back` lines back); while the banner is pinned, the banner (its
/// end, with "try:", when it does not fit) and below it the newest other lines.
fn log_rows(s: &State, rows: usize) -> Vec<usize> {
    let len = s.log_len();
    let banner = s.banner.len();
    if !s.banner_pinned() || s.log_back > 0 || len <= rows {
        let end = len.saturating_sub(s.log_back);
        return (end.saturating_sub(rows)..end).collect();
    }
    let others = len - banner;
    if banner < rows {
        // The whole banner, then the newest of the others.
        return (0..banner).chain(len - (rows - banner).min(others)..len).collect();
    }
    // The end of the banner, and the newest other line when there are rows for both.
    let newest = usize::from(others > 0 && rows >= 3);
    let from_banner = rows - newest;
    (banner - from_banner..banner).chain(len - newest..len).collect()
}

/// A log line with a leading RFC 3339 time shortened to `HH:MM:SS`.
fn short_times(line: &str) -> String {
    let trimmed = line.trim_start();
    let stamp_end = trimmed.find(' ').unwrap_or(trimmed.len());
    let stamp = &trimmed[..stamp_end];
    if stamp.len() >= 20 && stamp.as_bytes().get(10) == Some(&b'T') && stamp.ends_with('Z') {
        format!("{}{}", hms(stamp), &trimmed[stamp_end..])
    } else {
        line.to_string()
    }
}

fn help(f: &mut Frame, t: Theme, area: Rect) {
    let lines = vec![
        Line::styled("Keys", t.head()),
        Line::raw("  ↑ ↓  j k      select a target, backend or interface; scroll the log"),
        Line::raw("  PgUp PgDn     a page; Home End: first, last (End follows the log)"),
        Line::raw("  Tab Shift-Tab next / previous panel"),
        Line::raw("  p  space      pause the display (reports are kept and shown on resume)"),
        Line::raw("  ?             this help (any key closes it)"),
        Line::raw("  q  Ctrl-C     quit (under `up`: stop everything, as Ctrl-C does)"),
        Line::raw(""),
        Line::styled("Targets", t.head()),
        Line::raw("  LOSS1m: probes without an answer over the last minute; LOSSwin: over"),
        Line::raw("  the window (--window probes). RTT in ms; JIT: RFC 3550 jitter in ms."),
        Line::raw("  Narrow: the kind as a letter, h http, t tcp, u udp, i icmp."),
        Line::from(vec![
            Span::raw("  sparkline: one cell per probe, "),
            Span::styled("▁▃▅█", t.good()),
            Span::raw(" RTT (taller: slower), "),
            Span::styled(LOST.to_string(), t.bad()),
            Span::raw(" lost"),
        ]),
        Line::raw("  chart: per column of probes, ━ median, ░ min to max, × a probe lost"),
        Line::raw("  (a wall of × when all were); the median is red when most were lost."),
        Line::raw(""),
        Line::styled("Balancers: over the last 10 s, as on the web page", t.head()),
        Line::raw("  REQ/S: sent to the backend (UDP: datagrams). ERR%: failed or 5xx;"),
        Line::raw("  NOREPLY%: UDP datagrams sent less replies received. P50/P99: time to"),
        Line::raw("  the response head (HTTP). SHARE: of the balancer's traffic."),
        Line::raw("  WEIGHT: configured × measured (strategy measured: probes' RTT, loss)."),
    ];
    let width = lines.iter().map(Line::width).max().unwrap_or(40) as u16 + 4;
    let height = lines.len() as u16 + 2;
    let w = width.min(area.width);
    let h = height.min(area.height);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    let block = Block::bordered().title(Span::styled(" Help ", t.title(true))).border_style(t.head());
    f.render_widget(Paragraph::new(lines).block(block).wrap(Wrap { trim: false }), r);
}

#[cfg(test)]
mod tests;
