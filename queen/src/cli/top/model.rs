//! `queen top`'s state: WatchFleet events reduced into one row per hive, sorted and
//! filtered, the selection, the detail pane and the key bindings. Plain Rust, no
//! terminal: the drawing is `view`'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rbee_proto::v1 as pb;

/// A key, as `top` understands it (the terminal's events are mapped to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing more.
    None,
    /// Leave.
    Quit,
    /// Fetch the reservations of the hive at this address (the detail pane opened).
    Reservations(String),
}

/// The column the table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Hive id (else address).
    Name,
    /// Connection state, worst first.
    State,
    /// Health, worst first.
    Health,
    /// CPU busy, highest first.
    Cpu,
    /// RAM used share, highest first.
    Ram,
    /// VRAM free, least first.
    VramFree,
}

impl SortKey {
    /// The next key (`s` cycles).
    pub fn next(self) -> Self {
        match self {
            Self::Name => Self::State,
            Self::State => Self::Health,
            Self::Health => Self::Cpu,
            Self::Cpu => Self::Ram,
            Self::Ram => Self::VramFree,
            Self::VramFree => Self::Name,
        }
    }

    /// Its name in the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::State => "state",
            Self::Health => "health",
            Self::Cpu => "cpu",
            Self::Ram => "ram",
            Self::VramFree => "vram free",
        }
    }
}

/// One hive, as the events described it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The address the queen dials (the key).
    pub address: String,
    /// Its id, once discovered.
    pub hive_id: String,
    /// Connection state.
    pub state: pb::HiveState,
    /// Health level.
    pub health: pb::Health,
    /// Why, when not healthy.
    pub reasons: Vec<String>,
    /// Capabilities (GPUs, labels), once known.
    pub caps: Option<pb::Capabilities>,
    /// The newest sample.
    pub sample: Option<pb::Sample>,
    /// Its age when it arrived, and when that was.
    pub age_at: Option<(u64, Instant)>,
}

impl Row {
    fn from_view(v: pb::HiveView, now: Instant) -> Self {
        Self {
            state: v.state(),
            health: v.health(),
            address: v.address,
            hive_id: v.hive_id,
            reasons: v.health_reasons,
            caps: v.capabilities,
            age_at: v.sample_age_ms.map(|a| (a, now)),
            sample: v.latest_sample,
        }
    }

    /// The hive id, else the address.
    pub fn name(&self) -> &str {
        rbee_shared::identity::display_name(&self.hive_id, &self.address)
    }

    /// How old the newest sample is at `now`.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.age_at.map(|(ms, at)| Duration::from_millis(ms) + now.saturating_duration_since(at))
    }

    /// CPU busy, percent.
    pub fn cpu(&self) -> Option<f32> {
        self.sample.as_ref()?.cpu_percent
    }

    /// RAM used, as a share 0..=1.
    pub fn ram(&self) -> Option<f64> {
        let s = self.sample.as_ref()?;
        (s.ram_total_bytes > 0).then(|| s.ram_used_bytes as f64 / s.ram_total_bytes as f64)
    }

    /// Each GPU: index, id, name, VRAM used and total (from the newest sample).
    pub fn gpus(&self) -> Vec<GpuRow> {
        let Some(caps) = &self.caps else { return vec![] };
        let mut gpus: Vec<GpuRow> = crate::cli::render::wire_gpus(caps, self.sample.as_ref(), &[])
            .into_iter()
            .map(|crate::cli::render::WireGpu { device: g, live, .. }| GpuRow {
                index: g.index,
                id: g.id.clone(),
                name: g.name.clone(),
                total: g.vram_total_bytes,
                used: live.and_then(|l| l.vram_used_bytes),
                util: live.and_then(|l| l.gpu_util_percent),
                temperature: live.and_then(|l| l.temperature_c),
            })
            .collect();
        gpus.sort_by_key(|g| g.index);
        gpus
    }

    /// VRAM free over all GPUs (observed), when any GPU has a reading.
    pub fn vram_free(&self) -> Option<u64> {
        let gpus = self.gpus();
        let read: Vec<u64> = gpus.iter().filter_map(|g| Some(g.total.saturating_sub(g.used?))).collect();
        (!read.is_empty()).then(|| read.iter().sum())
    }

    /// The operator labels.
    pub fn labels(&self) -> Option<&std::collections::HashMap<String, String>> {
        Some(&self.caps.as_ref()?.labels)
    }
}

/// One GPU of a row.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRow {
    /// Index on its hive.
    pub index: u32,
    /// GPU id (UUID).
    pub id: String,
    /// Model name.
    pub name: String,
    /// VRAM installed.
    pub total: u64,
    /// VRAM used, when read.
    pub used: Option<u64>,
    /// Utilisation, percent.
    pub util: Option<f32>,
    /// Temperature, °C.
    pub temperature: Option<f32>,
}

/// The state of the view.
#[derive(Debug)]
pub struct Model {
    /// Hives by address.
    rows: BTreeMap<String, Row>,
    /// Sort column.
    pub sort: SortKey,
    /// Only hives with this label.
    pub filter: Option<(String, String)>,
    /// The filter being typed after `/`, if any.
    pub editing: Option<String>,
    /// A message for the status line (a bad filter, the watch state).
    pub status: String,
    /// The selected hive's address.
    pub selected: Option<String>,
    /// The detail pane is open.
    pub detail: bool,
    /// Reservations of the hive in the detail pane (fetched when it opens).
    pub reservations: Vec<pb::Reservation>,
    /// Events applied (the header shows it).
    pub events: u64,
    /// The last snapshot part said more parts follow.
    snapshot_continues: bool,
}

impl Model {
    /// A new watch begins: its first snapshot replaces the rows, even if the last
    /// watch broke between the parts of one.
    pub fn new_watch(&mut self) {
        self.snapshot_continues = false;
    }

    /// An empty view, filtered by `filter`.
    pub fn new(filter: Option<(String, String)>) -> Self {
        Self {
            rows: BTreeMap::new(),
            sort: SortKey::Name,
            filter,
            editing: None,
            status: "waiting for the fleet...".into(),
            selected: None,
            detail: false,
            reservations: vec![],
            events: 0,
            snapshot_continues: false,
        }
    }

    /// Applies one WatchFleet event received at `now`.
    pub fn apply(&mut self, event: pb::FleetEvent, now: Instant) {
        use pb::fleet_event::Event;
        self.events += 1;
        let Some(event) = event.event else { return };
        match event {
            Event::Snapshot(s) => {
                let rows = s.hives.into_iter().map(|v| (v.address.clone(), Row::from_view(v, now)));
                // A snapshot in parts: the first part replaces the rows, the others add to them.
                if self.snapshot_continues {
                    self.rows.extend(rows);
                } else {
                    self.rows = rows.collect();
                }
                self.snapshot_continues = s.more;
                self.status =
                    format!("following the fleet ({})", crate::cli::render::count(self.rows.len(), "hive"));
            }
            Event::HiveAdded(v) => {
                self.rows.insert(v.address.clone(), Row::from_view(v, now));
            }
            Event::HiveRemoved(r) => {
                self.rows.remove(&r.address);
            }
            Event::StateChanged(c) => {
                let to = c.to();
                if let Some(row) = self.rows.get_mut(&c.address) {
                    row.state = to;
                    if !c.hive_id.is_empty() {
                        row.hive_id = c.hive_id;
                    }
                }
            }
            Event::HealthChanged(c) => {
                let to = c.to();
                if let Some(row) = self.rows.get_mut(&c.address) {
                    row.health = to;
                    row.reasons = c.reasons;
                }
            }
            Event::CapabilitiesChanged(c) => {
                if let Some(row) = self.rows.get_mut(&c.address) {
                    row.caps = c.capabilities;
                    if !c.hive_id.is_empty() {
                        row.hive_id = c.hive_id;
                    }
                }
            }
            Event::Sample(s) => {
                if let Some(row) = self.rows.get_mut(&s.address) {
                    row.sample = s.sample;
                    row.age_at = Some((s.sample_age_ms, now));
                }
            }
            Event::ReservationDropped(d) => {
                self.reservations.retain(|r| r.id != d.reservation_id);
            }
        }
        self.keep_selection();
    }

    /// Replaces the detail pane's reservations.
    pub fn set_reservations(&mut self, address: &str, all: Vec<pb::Reservation>) {
        self.reservations = all.into_iter().filter(|r| r.address == address).collect();
    }

    /// The hives shown: filtered, then sorted.
    pub fn visible(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .values()
            .filter(|r| match &self.filter {
                None => true,
                Some((k, v)) => r.labels().and_then(|l| l.get(k)) == Some(v),
            })
            .collect();
        let worst_state = |s: pb::HiveState| match s {
            pb::HiveState::Lost => 0,
            pb::HiveState::Stale => 1,
            pb::HiveState::Connecting | pb::HiveState::Pending => 2,
            pb::HiveState::Online => 3,
            _ => 4,
        };
        let desc = |v: Option<f64>| std::cmp::Reverse(v.map(|x| (x * 1e6) as i64).unwrap_or(i64::MIN));
        match self.sort {
            SortKey::Name => rows.sort_by(|a, b| a.name().cmp(b.name())),
            SortKey::State => rows.sort_by_key(|r| (worst_state(r.state), r.name().to_owned())),
            SortKey::Health => {
                rows.sort_by_key(|r| (std::cmp::Reverse(r.health as i32), r.name().to_owned()))
            }
            SortKey::Cpu => rows.sort_by_key(|r| (desc(r.cpu().map(f64::from)), r.name().to_owned())),
            SortKey::Ram => rows.sort_by_key(|r| (desc(r.ram()), r.name().to_owned())),
            SortKey::VramFree => {
                rows.sort_by_key(|r| (r.vram_free().unwrap_or(u64::MAX), r.name().to_owned()))
            }
        }
        rows
    }

    /// The selected row, if it is visible.
    pub fn selected_row(&self) -> Option<&Row> {
        let address = self.selected.as_ref()?;
        self.visible().into_iter().find(|r| &r.address == address)
    }

    /// Keeps a visible hive selected (the first when the selection went away).
    fn keep_selection(&mut self) {
        let visible = self.visible();
        let kept = self.selected.as_ref().is_some_and(|a| visible.iter().any(|r| &r.address == a));
        if !kept {
            self.selected = visible.first().map(|r| r.address.clone());
        }
    }

    /// Moves the selection by `delta` rows.
    fn step(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let at =
            self.selected.as_ref().and_then(|a| visible.iter().position(|r| &r.address == a)).unwrap_or(0);
        let to = at.saturating_add_signed(delta).min(visible.len() - 1);
        self.selected = Some(visible[to].address.clone());
    }

    /// Handles a key.
    pub fn key(&mut self, key: Key) -> Action {
        if let Some(text) = &mut self.editing {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Esc => self.editing = None,
                Key::Enter => {
                    let text = self.editing.take().unwrap_or_default();
                    if text.trim().is_empty() {
                        self.filter = None;
                        self.status = "filter cleared".into();
                    } else {
                        match rbee_shared::labels::parse_label(text.trim()) {
                            Ok(label) => {
                                self.status = format!("filter {}={}", label.0, label.1);
                                self.filter = Some(label);
                            }
                            Err(e) => self.status = format!("bad filter {text:?}: {e}"),
                        }
                    }
                    self.keep_selection();
                }
                Key::Up | Key::Down => {}
            }
            return Action::None;
        }
        match key {
            Key::Char('q') => return Action::Quit,
            Key::Esc if self.detail => self.detail = false,
            Key::Esc => return Action::Quit,
            Key::Up | Key::Char('k') => self.step(-1),
            Key::Down | Key::Char('j') => self.step(1),
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => self.editing = Some(String::new()),
            Key::Char('c') => {
                self.filter = None;
                self.keep_selection();
            }
            Key::Enter => {
                self.detail = !self.detail;
                self.reservations.clear();
                if let (true, Some(a)) = (self.detail, &self.selected) {
                    return Action::Reservations(a.clone());
                }
            }
            _ => {}
        }
        Action::None
    }
}
