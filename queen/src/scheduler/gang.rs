//! Gang search: the sets of GPUs of one hive that can hold a tensor-parallel model
//! together (`gpus` devices with `vram_bytes` free on each, the topology the request
//! needs), tightest topology first and least loaded within it.
//!
//! A hive has at most [`MAX_GANG_GPUS`] GPUs, so a set is a `u64` bit mask over the
//! positions of the capabilities' GPU map. The search never enumerates every subset:
//! it forms *groups* (the maximal NVLink cliques, the maximal cliques of GPUs sharing a
//! PCIe switch, the NUMA nodes, the whole hive) and takes the GPUs with the most free
//! memory within each group. Any `k`-set with a property (all pairs on NVLink, all
//! pairs behind one switch, one NUMA node) lies inside one such group, so the tightest
//! level found is the tightest level that exists; the brute-force property test in
//! `tests` checks exactly that. Clique enumeration (Bron–Kerbosch with a pivot over bit
//! masks) is bounded by [`MAX_GANGS`] cliques and a step budget; real topologies (an
//! NVSwitch box is one clique, NVLink pairs are four) stay far below both.
//!
//! MIG instances are never part of a gang of two or more: NCCL has no peer-to-peer path
//! between MIG instances, so a tensor-parallel worker cannot span them. Each instance
//! is still placed on its own, like any GPU.

use std::sync::{Arc, RwLock, Weak};

use rbee_shared::bytesize::format_bytes;
use rbee_shared::lock::RwLockExt;
use rbee_shared::{GpuTopology, PcieLevel, VersionedCapabilities};

use super::request::{GangTopology, PlaceRequest};
use crate::fleet::HiveSnapshot;

/// Most GPUs a gang (and a hive searched for gangs) may have.
pub const MAX_GANG_GPUS: usize = 64;
/// Most gangs listed per hive (`hive.gangs(request)`), and most cliques formed per
/// topology graph.
pub const MAX_GANGS: usize = 64;
/// Most steps of one clique enumeration.
const CLIQUE_STEPS: usize = 20_000;

/// How tightly the GPUs of a set are connected, tightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Every pair talks over NVLink (or the set is one GPU).
    Nvlink,
    /// Every pair shares one PCIe switch (`PIX`) or board.
    PcieSwitch,
    /// All on one NUMA node.
    SameNuma,
    /// Anything else.
    Any,
}

impl Level {
    /// The name policies, reasons and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nvlink => "nvlink",
            Self::PcieSwitch => "pcie_switch",
            Self::SameNuma => "numa",
            Self::Any => "any",
        }
    }
}

/// One GPU that can take a member's share, as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// Its position in the capabilities' GPU map (its bit in a set).
    pub pos: usize,
    /// Free bytes after reservations.
    pub free: u64,
    /// Usable total bytes.
    pub total: u64,
    /// Utilisation, for ranking.
    pub util: f32,
}

/// A hive's topology as bit masks over GPU positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// Per position: the positions it reaches over NVLink.
    pub nvlink: Vec<u64>,
    /// Per position: the positions it shares a PCIe switch (or board) with.
    pub switch: Vec<u64>,
    /// Per position: its NUMA node, when reported.
    pub numa: Vec<Option<u32>>,
    /// Positions that are MIG instances.
    pub mig: u64,
}

/// Links read once per capabilities (they change only with them), by the address of
/// the capabilities' allocation; the `Weak` keeps that address from being reused while
/// the entry exists.
type LinksCache = std::collections::HashMap<usize, (Weak<VersionedCapabilities>, Option<Arc<Links>>)>;

static CACHE: std::sync::LazyLock<RwLock<LinksCache>> = std::sync::LazyLock::new(Default::default);

/// Most capabilities whose links are kept; past it, entries of capabilities no longer
/// held are dropped (and all of them, if that is not enough).
const CACHE_ENTRIES: usize = 65_536;

impl Links {
    /// [`Links::of`], read once per capabilities and shared.
    pub fn cached(h: &HiveSnapshot) -> Option<Arc<Links>> {
        let caps = h.caps.as_ref()?;
        let key = Arc::as_ptr(caps) as usize;
        if let Some((_, links)) = CACHE.read_unpoisoned().get(&key) {
            return links.clone();
        }
        let links = Self::of(h).map(Arc::new);
        let mut cache = CACHE.write_unpoisoned();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (weak, _)| weak.strong_count() > 0);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (Arc::downgrade(caps), links.clone()));
        links
    }

    /// Reads a hive's topology (every GPU of its capabilities, in map order); `None`
    /// when it has more than [`MAX_GANG_GPUS`] GPUs. A link reported by either side
    /// counts.
    pub fn of(h: &HiveSnapshot) -> Option<Self> {
        let caps = &h.caps.as_ref()?.caps;
        let n = caps.gpus.len();
        if n > MAX_GANG_GPUS {
            return None;
        }
        let ids: Vec<&str> = caps.gpus.keys().map(String::as_str).collect();
        let mut links = Links { nvlink: vec![0; n], switch: vec![0; n], numa: vec![None; n], mig: 0 };
        for (i, gpu) in caps.gpus.values().enumerate() {
            let t: &GpuTopology = &gpu.topology;
            links.numa[i] = t.numa_node;
            if t.mig_parent.is_some() {
                links.mig |= 1 << i;
            }
            // Links come ordered by peer id, as the GPU map is: walk both at once (a
            // link out of order is looked up from the start).
            let mut next = 0;
            for l in &t.links {
                let found = ids[next..].iter().position(|id| *id == l.peer).map(|off| next + off);
                let Some(j) = found.or_else(|| ids.iter().position(|id| *id == l.peer)) else { continue };
                next = (j + 1).min(n);
                if j == i {
                    continue;
                }
                if l.is_nvlink() {
                    links.nvlink[i] |= 1 << j;
                    links.nvlink[j] |= 1 << i;
                }
                if l.pcie.is_some_and(|p| p <= PcieLevel::Single) {
                    links.switch[i] |= 1 << j;
                    links.switch[j] |= 1 << i;
                }
            }
        }
        Some(links)
    }

    /// Whether every pair of `set` is connected in `adj`.
    fn all_pairs(adj: &[u64], set: u64) -> bool {
        bits(set).all(|i| set & !(1u64 << i) & !adj[i] == 0)
    }

    /// The NUMA node every GPU of `set` is on, if one.
    fn one_numa(&self, set: u64) -> Option<u32> {
        let mut nodes = bits(set).map(|i| self.numa[i]);
        let first = nodes.next()??;
        nodes.all(|n| n == Some(first)).then_some(first)
    }

    /// The tightest level `set` has.
    pub fn level(&self, set: u64) -> Level {
        if Self::all_pairs(&self.nvlink, set) {
            Level::Nvlink
        } else if Self::all_pairs(&self.switch, set) {
            Level::PcieSwitch
        } else if self.one_numa(set).is_some() {
            Level::SameNuma
        } else {
            Level::Any
        }
    }

    /// Whether `set` meets the request's topology.
    pub fn meets(&self, set: u64, need: GangTopology) -> bool {
        match need {
            GangTopology::Any => true,
            GangTopology::SameNuma => self.one_numa(set).is_some(),
            GangTopology::Nvlink => Self::all_pairs(&self.nvlink, set),
        }
    }
}

/// The positions set in a mask, lowest first.
pub fn bits(mut set: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (set != 0).then(|| {
            let i = set.trailing_zeros() as usize;
            set &= set - 1;
            i
        })
    })
}

/// One feasible set of a hive's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct GangSet {
    /// The GPUs, as a mask over positions.
    pub set: u64,
    /// Its tightest level.
    pub level: Level,
    /// Its load: the mean share of memory in use after the placement, then the mean
    /// utilisation (lower is better).
    pub load: (f32, f32),
}

impl GangSet {
    /// Ranking key: tightest level, then least loaded, then positions (a total order).
    fn key(&self) -> (Level, f32, f32, u64) {
        (self.level, self.load.0, self.load.1, self.set)
    }
}

/// Best first.
pub fn better(a: &GangSet, b: &GangSet) -> std::cmp::Ordering {
    let (ka, kb) = (a.key(), b.key());
    ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(ka.2.total_cmp(&kb.2)).then(ka.3.cmp(&kb.3))
}

/// Maximal cliques of `adj` within `pool` of at least `min` members (Bron–Kerbosch
/// with a pivot), at most [`MAX_GANGS`], within [`CLIQUE_STEPS`].
fn cliques(adj: &[u64], pool: u64, min: u32) -> Vec<u64> {
    fn walk(adj: &[u64], r: u64, mut p: u64, mut x: u64, min: u32, out: &mut Vec<u64>, steps: &mut usize) {
        if out.len() >= MAX_GANGS || *steps == 0 || (r | p).count_ones() < min {
            return;
        }
        *steps -= 1;
        if p == 0 {
            if x == 0 {
                out.push(r);
            }
            return;
        }
        let pivot = bits(p | x).max_by_key(|u| (p & adj[*u]).count_ones()).unwrap_or(0);
        for v in bits(p & !adj[pivot]) {
            let bit = 1u64 << v;
            walk(adj, r | bit, p & adj[v], x & adj[v], min, out, steps);
            p &= !bit;
            x |= bit;
        }
    }
    let mut out = Vec::new();
    let mut steps = CLIQUE_STEPS;
    walk(adj, 0, pool, 0, min, &mut out, &mut steps);
    out
}

/// The `k` members of `group` with the most free memory (ties: less utilised, lower
/// position), as a mask; `None` when it has fewer. `order`: the members' positions,
/// most free first.
fn pick(order: &[usize], group: u64, k: usize) -> Option<u64> {
    let mut set = 0u64;
    let mut n = 0;
    for pos in order.iter().filter(|p| group & (1u64 << **p) != 0) {
        set |= 1u64 << pos;
        n += 1;
        if n == k {
            return Some(set);
        }
    }
    None
}

fn load(members: &[Member], set: u64, vram: u64) -> (f32, f32) {
    let (mut used, mut util, mut n) = (0f32, 0f32, 0f32);
    for m in members.iter().filter(|m| set & (1u64 << m.pos) != 0) {
        let after = m.free.saturating_sub(vram);
        used += 1.0 - after as f32 / m.total.max(1) as f32;
        util += m.util;
        n += 1.0;
    }
    (used / n.max(1.0), util / n.max(1.0))
}

/// The feasible gangs of `k` GPUs among `members` (each already has the share free and
/// is healthy) meeting `need`, best first, at most [`MAX_GANGS`].
pub fn search(links: &Links, members: &[Member], k: usize, need: GangTopology, vram: u64) -> Vec<GangSet> {
    let mut all: u64 = members.iter().fold(0, |s, m| s | (1u64 << m.pos));
    if k > 1 {
        all &= !links.mig;
    }
    if k == 0 || (all.count_ones() as usize) < k {
        return Vec::new();
    }
    let min = k as u32;
    let mut order: Vec<&Member> = members.iter().collect();
    order.sort_by(|a, b| b.free.cmp(&a.free).then(a.util.total_cmp(&b.util)).then(a.pos.cmp(&b.pos)));
    let order: Vec<usize> = order.into_iter().map(|m| m.pos).collect();
    // Pools: a SAME_NUMA request searches each NUMA node on its own, so that the
    // tightest set it finds is also on one node.
    let pools: Vec<u64> = match need {
        GangTopology::SameNuma => {
            numa_groups(links, all).into_iter().filter(|g| g.count_ones() >= min).collect()
        }
        _ => vec![all],
    };
    let mut sets: Vec<u64> = Vec::new();
    for pool in pools {
        let mut groups = cliques(&links.nvlink, pool, min);
        if need != GangTopology::Nvlink {
            groups.extend(cliques(&links.switch, pool, min));
            groups.extend(numa_groups(links, pool).into_iter().filter(|g| g.count_ones() >= min));
            groups.push(pool);
        }
        sets.extend(groups.into_iter().filter_map(|g| pick(&order, g, k)));
    }
    sets.sort_unstable();
    sets.dedup();
    let mut out: Vec<GangSet> = sets
        .into_iter()
        .filter(|s| links.meets(*s, need))
        .map(|set| GangSet { set, level: links.level(set), load: load(members, set, vram) })
        .collect();
    out.sort_by(better);
    out.truncate(MAX_GANGS);
    out
}

/// `pool` split by NUMA node (GPUs without one are left out).
fn numa_groups(links: &Links, pool: u64) -> Vec<u64> {
    let mut groups: Vec<(u32, u64)> = Vec::new();
    for i in bits(pool) {
        let Some(node) = links.numa[i] else { continue };
        match groups.iter_mut().find(|(n, _)| *n == node) {
            Some((_, g)) => *g |= 1 << i,
            None => groups.push((node, 1 << i)),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Why a hive whose `members` have the share free has no gang for the request.
pub fn why_not(
    name: &str,
    links: &Links,
    members: &[Member],
    gpus: usize,
    k: usize,
    need: GangTopology,
    vram: u64,
) -> String {
    let free = format_bytes(vram);
    let have = members.len();
    if gpus < k {
        return format!("{name}: has {gpus} GPUs, the gang needs {k}");
    }
    let all: u64 = members.iter().fold(0, |s, m| s | (1u64 << m.pos));
    let usable = all & !links.mig;
    if (usable.count_ones() as usize) < k {
        let mig = (all & links.mig).count_ones();
        let mig =
            if mig > 0 { format!(" ({mig} more are MIG instances, never ganged)") } else { String::new() };
        return format!(
            "{name}: {} of {gpus} GPUs have {free} free{mig}, the gang needs {k}",
            usable.count_ones()
        );
    }
    let most = |groups: Vec<u64>| groups.iter().map(|g| g.count_ones()).max().unwrap_or(0);
    match need {
        GangTopology::Nvlink => format!(
            "{name}: {have} GPUs have {free} free but only {} share NVLink",
            most(cliques(&links.nvlink, usable, 1)).max(1)
        ),
        GangTopology::SameNuma => format!(
            "{name}: {have} GPUs have {free} free but at most {} share a NUMA node",
            most(numa_groups(links, usable))
        ),
        GangTopology::Any => format!("{name}: {have} GPUs have {free} free, the gang needs {k}"),
    }
}

/// The set (mask over positions) of `hive`'s GPUs named `ids` (unknown ids are left
/// out).
pub fn set_of(hive: &HiveSnapshot, ids: &[String]) -> u64 {
    let Some(caps) = hive.caps.as_ref() else { return 0 };
    ids.iter()
        .filter_map(|id| caps.caps.gpus.keys().position(|k| k == id).filter(|i| *i < MAX_GANG_GPUS))
        .fold(0, |s, i| s | (1u64 << i))
}

/// A hive's gang, ready to commit: the hive and the GPU ids, in position order.
#[derive(Debug, Clone)]
pub struct Gang {
    /// The hive.
    pub hive: Arc<HiveSnapshot>,
    /// The GPU ids.
    pub devices: Vec<String>,
    /// Its tightest level.
    pub level: Level,
    /// Its load (see [`GangSet::load`]).
    pub load: (f32, f32),
}

impl Gang {
    /// Makes the gang of a set of `hive`'s GPUs.
    pub fn of(hive: &Arc<HiveSnapshot>, s: &GangSet) -> Self {
        let ids: Vec<String> = hive
            .caps
            .as_ref()
            .map(|c| {
                c.caps
                    .gpus
                    .keys()
                    .enumerate()
                    .filter(|(i, _)| s.set & (1u64 << i) != 0)
                    .map(|(_, id)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        Self { hive: hive.clone(), devices: ids, level: s.level, load: s.load }
    }
}

/// The gangs of `req.gpus` GPUs the request can take on each hive, via the view's
/// eligibility rules: `found` hears each hive's feasible sets (best first, non-empty),
/// `note` why a hive has none.
pub fn scan_gangs(
    view: &super::view::FleetView,
    req: &PlaceRequest,
    found: impl FnMut(&Arc<HiveSnapshot>, Vec<GangSet>),
    note: impl FnMut(&dyn Fn() -> String),
) {
    gangs_in(view, req, None, found, note);
}

/// [`scan_gangs`] over the hives the view's index names (`Some(bound)`; no reasons for
/// the others), or over every hive (`None`). Returns whether the walk was bounded.
fn gangs_in(
    view: &super::view::FleetView,
    req: &PlaceRequest,
    bound: Option<super::index::Bound>,
    mut found: impl FnMut(&Arc<HiveSnapshot>, Vec<GangSet>),
    mut note: impl FnMut(&dyn Fn() -> String),
) -> bool {
    let k = req.gpus as usize;
    // Only for the reason: the index names no hive with fewer than `k` GPUs.
    let largest =
        || view.hives.iter().filter_map(|h| h.caps.as_ref().map(|c| c.caps.gpus.len())).max().unwrap_or(0);
    if bound.is_none()
        && let largest = largest()
        && k > largest
    {
        note(&|| format!("no hive has {k} GPUs (the largest has {largest}): a gang is on one hive"));
        return false;
    }
    let note = std::cell::RefCell::new(note);
    let mut flush = |hive: &Arc<HiveSnapshot>, members: Vec<Member>| {
        let gpus = hive.caps.as_ref().map_or(0, |c| c.caps.gpus.len());
        let mut note = note.borrow_mut();
        if gpus < k || members.len() < k {
            // Not enough GPUs with room: the links matter only for the reason.
            note(&|| match Links::of(hive) {
                Some(links) => why_not(name(hive), &links, &members, gpus, k, req.topology, req.vram_bytes),
                None => format!("{}: more than {MAX_GANG_GPUS} GPUs, not searched for gangs", name(hive)),
            });
            return;
        }
        let Some(links) = Links::cached(hive) else {
            note(&|| format!("{}: more than {MAX_GANG_GPUS} GPUs, not searched for gangs", name(hive)));
            return;
        };
        let sets = search(&links, &members, k, req.topology, req.vram_bytes);
        if sets.is_empty() {
            note(&|| why_not(name(hive), &links, &members, gpus, k, req.topology, req.vram_bytes));
        } else {
            found(hive, sets);
        }
    };
    let mut current: Option<(&Arc<HiveSnapshot>, Vec<Member>)> = None;
    let mut member = members_of(|hive, pos, total, free, util| {
        let m = Member { pos, free, total, util };
        match &mut current {
            Some((h, members)) if Arc::ptr_eq(h, hive) => members.push(m),
            _ => {
                if let Some((h, members)) = current.replace((hive, vec![m])) {
                    flush(h, members);
                }
            }
        }
    });
    let bounded = match bound {
        None => {
            super::view::scan_gpus(view, req, &mut member, |why| (note.borrow_mut())(why));
            false
        }
        Some(bound) => super::view::scan_fitting_gpus(view, req, bound, &mut member),
    };
    if let Some((h, members)) = current.take() {
        flush(h, members);
    }
    bounded
}

/// Types a closure that hears the GPUs of a scan (borrowed from the view).
fn members_of<'a, F: FnMut(&'a Arc<HiveSnapshot>, usize, u64, u64, f32)>(f: F) -> F {
    f
}

fn name(h: &HiveSnapshot) -> &str {
    if h.hive_id().is_empty() { &h.address } else { h.hive_id() }
}

/// The `n` best gangs of the fleet (best first; all when `n` is 0), at most one per
/// hive (its best), without keeping every hive's list.
pub fn best(view: &super::view::FleetView, req: &PlaceRequest, n: usize) -> Vec<Gang> {
    let order = |a: &(GangSet, Arc<HiveSnapshot>), b: &(GangSet, Arc<HiveSnapshot>)| {
        better(&a.0, &b.0).then_with(|| a.1.address.cmp(&b.1.address))
    };
    let mut sets: Vec<(GangSet, Arc<HiveSnapshot>)> = Vec::new();
    // On a large fleet the hives with the most free memory are scored first, a
    // bounded set of them (see `index`), unless that set holds fewer than `n` gangs.
    let mut bound = if n == 0 { super::index::Bound::Exact } else { super::index::Bound::MostFree };
    loop {
        let bounded = gangs_in(
            view,
            req,
            Some(bound),
            |h, found| {
                if let Some(first) = found.into_iter().next() {
                    sets.push((first, h.clone()));
                    if n > 0 && sets.len() >= 4 * n.max(16) {
                        sets.sort_by(order);
                        sets.truncate(n);
                    }
                }
            },
            |_| {},
        );
        if !bounded || sets.len() >= n {
            break;
        }
        sets.clear();
        bound = super::index::Bound::Exact;
    }
    sets.sort_by(order);
    if n > 0 {
        sets.truncate(n);
    }
    sets.iter().map(|(s, h)| Gang::of(h, s)).collect()
}

#[cfg(test)]
mod tests;
