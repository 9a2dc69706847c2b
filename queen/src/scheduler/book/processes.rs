//! Settlement by process, where the hive lists who holds a device's memory.
//!
//! A process is *tagged* with a reservation when the hive reports that reservation's
//! id for it: the id its `RBEE_RESERVATION_TOKEN` stands for, which only the holder of
//! the token (the placing client) can give a process. A process whose id names no
//! active reservation of this device (a guessed token, or a worker of a reservation
//! elsewhere) is counted as untagged: its memory counts as used; and as it carries an
//! id, it settles nothing by size either (rule 2 takes only processes without one).
//!
//! 1. The workers tagged with an active reservation settle exactly that reservation
//!    once together they hold its bytes; until then what they hold counts as loaded.
//!    A tag never makes memory disappear: the reservation counts
//!    `max(its bytes, what its workers use)`, and anything beyond counts as used.
//! 2. Otherwise a process that was not on the device when the reservation was made,
//!    carries no reservation id, has settled nothing else here and holds at least the
//!    reserved bytes settles it: oldest reservation first, smallest such process first.
//! 3. Growth of processes already there settles nothing.
//!
//! A settlement by process lasts while a process that made it is listed: once every
//! one of them is gone from the device's list and the reservation is not released, it
//! is active again (its bytes count; it expires at its TTL), and may settle again by
//! the rules above. So a short-lived process cannot free another tenant's memory: an
//! untagged 20 GiB process that settles a victim's 20 GiB reservation by size and exits
//! before the victim's worker loads leaves the reservation counting (hostile round 3,
//! F4), as does a tagged worker that exits without releasing.
//!
//! Reservations made while the device had no process list (or restored after a
//! restart, which does not keep the pids) settle by the whole-device rule, in order.
//! Without a process list the whole device rule applies to all ([`Book::observe`]).

use std::collections::{HashMap, VecDeque};

use rbee_shared::GpuProcesses;

use super::{Book, DeviceBook, Reservation, ReservationState};

/// A reservation settled by process, and the pids that settled it.
#[derive(Debug, Clone)]
pub(super) struct SettledBy {
    /// The device.
    device_id: String,
    /// The reservation.
    id: String,
    /// The processes that settled it.
    pids: Vec<u32>,
}

/// Settles the active reservation at `pos` of the device's queue.
fn settle_at(
    d: &mut DeviceBook,
    reservations: &mut HashMap<String, Reservation>,
    pos: usize,
) -> Option<String> {
    let id = d.active.remove(pos)?;
    let bytes = reservations.get(&id).map_or(0, |r| r.bytes);
    d.baseline += bytes;
    d.active_bytes -= bytes;
    d.known.remove(&id);
    d.floors.remove(&id);
    if let Some(r) = reservations.get_mut(&id) {
        r.state = ReservationState::Settled;
    }
    Some(id)
}

fn position(active: &VecDeque<String>, id: &str) -> Option<usize> {
    active.iter().position(|a| a == id)
}

impl Book {
    /// The devices with a reservation settled by process.
    pub(super) fn settled_by_devices(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.settled_by
            .iter()
            .flat_map(|(a, list)| list.iter().map(move |s| (a.clone(), s.device_id.clone())))
    }

    /// Forgets how `id` (on the hive at `address`) was settled: it was released.
    pub(super) fn forget_settled_by(&mut self, address: &str, id: &str) {
        if let Some(list) = self.settled_by.get_mut(address) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                self.settled_by.remove(address);
            }
        }
    }

    /// Makes active again every reservation of the device settled by processes that are
    /// all gone from `processes`; returns their ids. It queues last on the device, the
    /// processes listed now counting as there before it (so only a new process may
    /// settle it again by size).
    fn unsettle_gone(
        &mut self,
        address: &str,
        device_id: &str,
        observed: u64,
        processes: &GpuProcesses,
    ) -> Vec<String> {
        let Some(list) = self.settled_by.get_mut(address) else { return Vec::new() };
        let listed = &processes.listed;
        let mut back = Vec::new();
        list.retain(|s| {
            let alive =
                s.device_id != device_id || s.pids.iter().any(|pid| listed.iter().any(|p| p.pid == *pid));
            if !alive {
                back.push(s.id.clone());
            }
            alive
        });
        if list.is_empty() {
            self.settled_by.remove(address);
        }
        back.retain(|id| {
            // Settled on this device: the whole reservation, or this GPU of a gang.
            let queued =
                self.hives.get(address).and_then(|h| h.get(device_id)).is_some_and(|d| d.active.contains(id));
            let Some(r) = self.reservations.get_mut(id).filter(|_| !queued) else {
                return false;
            };
            r.state = ReservationState::Active;
            let bytes = r.bytes;
            let d = self.hives.entry(address.to_owned()).or_default().entry(device_id);
            if d.active.is_empty() {
                d.baseline = observed;
                d.by_process = true;
            } else {
                // Its settlement moved its bytes into the baseline (or the baseline was
                // taken while its processes held them): they are gone now.
                d.baseline = d.baseline.saturating_sub(bytes);
            }
            d.known.insert(id.clone(), listed.iter().map(|p| p.pid).collect());
            d.active.push_back(id.clone());
            d.active_bytes += bytes;
            true
        });
        for id in &back {
            tracing::warn!(reservation = %id, device = %device_id, "every process that settled the reservation is gone before its release: it counts again");
        }
        back
    }

    /// Free bytes for placement on a device once settled with this sample: what
    /// [`Book::settle`] then [`Book::free`] would give, without changing the book (the
    /// settlement is tried on a copy of just this device's accounting). Devices without
    /// reservations are `total - observed` at once.
    pub fn free_settled(
        &self,
        address: &str,
        device_id: &str,
        total: u64,
        observed: u64,
        processes: Option<&GpuProcesses>,
    ) -> u64 {
        let device = self.hives.get(address).and_then(|h| h.get(device_id));
        let settled_here: Vec<SettledBy> = match (processes, self.settled_by.get(address)) {
            (Some(_), Some(list)) => list.iter().filter(|s| s.device_id == device_id).cloned().collect(),
            _ => Vec::new(),
        };
        if device.is_none() && settled_here.is_empty() {
            return total.saturating_sub(observed);
        }
        let mut scratch = Book::default();
        if let Some(d) = device {
            scratch.hives.entry(address.to_owned()).or_default().0.push((device_id.to_owned(), d.clone()));
        }
        let ids = device.into_iter().flat_map(|d| d.active.iter()).chain(settled_here.iter().map(|s| &s.id));
        for id in ids {
            if let Some(r) = self.reservations.get(id) {
                scratch.reservations.insert(id.clone(), r.clone());
            }
        }
        if !settled_here.is_empty() {
            scratch.settled_by.insert(address.to_owned(), settled_here);
        }
        scratch.settle(address, device_id, observed, processes);
        scratch.free(address, device_id, total, observed)
    }

    /// Settles active reservations on a device with its latest sample: by process when
    /// the sample lists the device's processes, else by whole-device usage. Returns the
    /// ids settled.
    pub fn settle(
        &mut self,
        address: &str,
        device_id: &str,
        observed: u64,
        processes: Option<&GpuProcesses>,
    ) -> Vec<String> {
        match processes {
            Some(p) => {
                self.unsettle_gone(address, device_id, observed, p);
                self.observe_processes(address, device_id, observed, p)
            }
            None => {
                if let Some(d) = self.hives.get_mut(address).and_then(|h| h.get_mut(device_id)) {
                    d.by_process = false;
                    d.loaded = 0;
                }
                self.observe(address, device_id, observed)
            }
        }
    }

    /// Settlement by process (see the module docs).
    fn observe_processes(
        &mut self,
        address: &str,
        device_id: &str,
        observed: u64,
        processes: &GpuProcesses,
    ) -> Vec<String> {
        let mut settled = Vec::new();
        let mut by: Vec<SettledBy> = Vec::new();
        let Some(devices) = self.hives.get_mut(address) else { return settled };
        let Some(d) = devices.get_mut(device_id) else { return settled };
        let reservations = &mut self.reservations;
        let bytes_of = |reservations: &HashMap<String, Reservation>, id: &str| {
            reservations.get(id).map_or(0, |r| r.bytes)
        };
        let listed = &processes.listed;
        d.by_process = true;
        d.claimed.retain(|pid| listed.iter().any(|p| p.pid == *pid));

        // 1. Workers tagged with an active reservation, each reservation's together.
        let mut tagged: Vec<(&str, u64, Vec<u32>)> = Vec::new();
        for p in listed {
            let Some(id) = p.reservation_id.as_deref().filter(|id| position(&d.active, id).is_some()) else {
                continue;
            };
            let used = p.used_vram_bytes.unwrap_or(0);
            match tagged.iter_mut().find(|(t, _, _)| *t == id) {
                Some((_, sum, pids)) => {
                    *sum = sum.saturating_add(used);
                    pids.push(p.pid);
                }
                None => tagged.push((id, used, vec![p.pid])),
            }
        }
        let mut loaded = 0u64;
        for (id, used, pids) in tagged {
            let Some(pos) = position(&d.active, id) else { continue };
            if used >= bytes_of(reservations, id) {
                d.claimed.extend(pids.iter().copied());
                by.push(SettledBy { device_id: device_id.to_owned(), id: id.to_owned(), pids });
                settled.extend(settle_at(d, reservations, pos));
            } else {
                // Below its bytes: the reservation still counts them all.
                loaded = loaded.saturating_add(used);
            }
        }

        // 2. New processes without an id that hold the reserved bytes.
        let mut i = 0;
        while i < d.active.len() {
            let id = &d.active[i];
            let Some(known) = d.known.get(id) else {
                i += 1;
                continue;
            };
            let bytes = bytes_of(reservations, id);
            let fit = listed
                .iter()
                .filter(|p| {
                    p.reservation_id.is_none() && !known.contains(&p.pid) && !d.claimed.contains(&p.pid)
                })
                .filter(|p| p.used_vram_bytes.is_some_and(|u| u >= bytes))
                .min_by_key(|p| (p.used_vram_bytes, p.pid));
            match fit {
                Some(p) => {
                    d.claimed.insert(p.pid);
                    by.push(SettledBy { device_id: device_id.to_owned(), id: id.clone(), pids: vec![p.pid] });
                    settled.extend(settle_at(d, reservations, i));
                }
                None => i += 1,
            }
        }

        // 3. Reservations made without a process list: the whole-device rule, in order.
        while let Some(id) = d.active.front() {
            // Above the usage it saw when it was made too: growth from before never counts.
            let floor = d.floors.get(id).copied().unwrap_or(0);
            if d.known.contains_key(id)
                || observed < d.baseline.max(floor).saturating_add(bytes_of(reservations, id))
            {
                break;
            }
            settled.extend(settle_at(d, reservations, 0));
        }

        d.loaded = loaded.min(d.active_bytes);
        if d.active.is_empty() {
            devices.remove(device_id);
            if devices.0.is_empty() {
                self.hives.remove(address);
            }
        }
        if !by.is_empty() {
            self.settled_by.entry(address.to_owned()).or_default().extend(by);
        }
        self.whole_gangs(address, settled)
    }
}
