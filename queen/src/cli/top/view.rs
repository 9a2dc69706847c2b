//! Drawing `queen top` from its [`Model`]: a header, the hive table (a VRAM bar per
//! GPU), the detail pane of the selected hive, and a line of key help.

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table, Wrap};
use rbee_proto::v1 as pb;
use rbee_shared::bytesize::format_bytes;

use super::model::{GpuRow, Model, Row};

/// Characters of a VRAM bar in the table.
const BAR: usize = 10;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, model: &Model, now: Instant) {
    let detail = model.detail && model.selected_row().is_some();
    let [header, table, pane, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(if detail { 12 } else { 0 }),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, model);
    draw_table(frame, table, model, now);
    if detail && let Some(row) = model.selected_row() {
        draw_detail(frame, pane, model, row, now);
    }
    let help_text = match &model.editing {
        Some(text) => format!("filter (KEY=VALUE, Enter applies, Esc cancels): {text}_"),
        None => "q quit  ↑↓/jk select  Enter detail  s sort  / label filter  c clear filter".to_owned(),
    };
    frame.render_widget(Paragraph::new(help_text).style(Style::new().fg(Color::DarkGray)), help);
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let shown = model.visible().len();
    let filter = model.filter.as_ref().map_or("none".to_owned(), |(k, v)| format!("{k}={v}"));
    let text = Line::from(vec![
        Span::styled("rbee top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "| {} | sort: {} | filter: {filter} | {}",
            crate::cli::render::count(shown, "hive"),
            model.sort.as_str(),
            model.status
        )),
    ]);
    frame.render_widget(Paragraph::new(text), area);
}

/// A state's colour.
fn state_style(s: pb::HiveState) -> Style {
    match s {
        pb::HiveState::Online => Style::new().fg(Color::Green),
        pb::HiveState::Stale => Style::new().fg(Color::Yellow),
        pb::HiveState::Lost => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        _ => Style::new().fg(Color::Gray),
    }
}

/// A health level's colour.
fn health_style(h: pb::Health) -> Style {
    match h {
        pb::Health::Healthy => Style::new().fg(Color::Green),
        pb::Health::Degraded => Style::new().fg(Color::Yellow),
        _ => Style::new().fg(Color::Red),
    }
}

pub use crate::cli::render::{health_name, hive_state_name as state_name};

/// `[#####.....]` for `used` of `total`.
pub fn bar(used: Option<u64>, total: u64, width: usize) -> String {
    let Some(used) = used.filter(|_| total > 0) else { return format!("[{}]", "?".repeat(width)) };
    let filled = ((used.min(total) as f64 / total as f64) * width as f64).round() as usize;
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

fn age_text(row: &Row, now: Instant) -> String {
    row.age(now).map_or("-".into(), |a| format!("{:.1}s", a.as_secs_f64()))
}

fn draw_table(frame: &mut Frame<'_>, area: Rect, model: &Model, now: Instant) {
    let header = TableRow::new(["HIVE", "STATE", "HEALTH", "AGE", "CPU", "RAM", "VRAM (per GPU)"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows: Vec<TableRow<'_>> = model
        .visible()
        .into_iter()
        .map(|r| {
            let gpus: Vec<String> = r
                .gpus()
                .iter()
                .map(|g| format!("{}{}", bar(g.used, g.total, BAR), format_bytes(g.total)))
                .collect();
            let selected = model.selected.as_deref() == Some(r.address.as_str());
            let style = if selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
            TableRow::new(vec![
                Cell::from(r.name().to_owned()),
                Cell::from(state_name(r.state)).style(state_style(r.state)),
                Cell::from(health_name(r.health)).style(health_style(r.health)),
                Cell::from(age_text(r, now)),
                Cell::from(r.cpu().map_or("-".into(), |c| format!("{c:.0}%"))),
                Cell::from(r.ram().map_or("-".into(), |m| format!("{:.0}%", m * 100.0))),
                Cell::from(if gpus.is_empty() { "-".to_owned() } else { gpus.join(" ") }),
            ])
            .style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(20),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Min(20),
    ];
    let table = Table::new(rows, widths).header(header).block(Block::bordered().title(" hives "));
    frame.render_widget(table, area);
}

fn gpu_line(g: &GpuRow) -> Line<'static> {
    let used = g.used.map_or("?".into(), format_bytes);
    Line::from(format!(
        "gpu {} {} {} {used} / {}  util {}  {}",
        g.index,
        g.name,
        bar(g.used, g.total, 20),
        format_bytes(g.total),
        g.util.map_or("-".into(), |u| format!("{u:.0}%")),
        g.temperature.map_or("-".into(), |t| format!("{t:.0}°C")),
    ))
}

fn draw_detail(frame: &mut Frame<'_>, area: Rect, model: &Model, row: &Row, now: Instant) {
    let mut lines = vec![Line::from(vec![
        Span::styled(row.name().to_owned(), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {}  ", row.address)),
        Span::styled(state_name(row.state), state_style(row.state)),
        Span::raw("  "),
        Span::styled(health_name(row.health), health_style(row.health)),
        Span::raw(format!("  age {}", age_text(row, now))),
    ])];
    lines.extend(row.gpus().iter().map(gpu_line));
    if !row.reasons.is_empty() {
        lines.push(
            Line::from(format!("reasons: {}", row.reasons.join("; "))).style(Style::new().fg(Color::Yellow)),
        );
    }
    if let Some(labels) = row.labels().filter(|l| !l.is_empty()) {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        lines.push(Line::from(format!("labels: {}", l.join(" "))));
    }
    if model.reservations.is_empty() {
        lines.push(Line::from("reservations: none"));
    }
    for r in &model.reservations {
        lines.push(Line::from(format!(
            "reservation {} {} {} on {}",
            r.id,
            r.model,
            format_bytes(r.bytes),
            r.device_id
        )));
    }
    let pane = Paragraph::new(lines).wrap(Wrap { trim: true }).block(Block::bordered().title(" detail "));
    frame.render_widget(pane, area);
}
