//! Settlement by process, where the hive lists who holds a device's memory.
//!
//! A process is *tagged* with a reservation when the hive reports that reservation's
//! id for it: the id its `RBEE_RESERVATION_TOKEN` stands for, which only the holder of
//! the token (the placing client) can give a process. A process whose id names no
//! reservation of this device (a forged or stale tag) is untagged.
//!
//! 1. The workers tagged with an active reservation settle exactly that reservation
//!    once together they hold its bytes; until then what they hold counts as loaded.
//!    A tag never makes memory disappear: the reservation counts
//!    `max(its bytes, what its workers use)`, and anything beyond counts as used.
//! 2. Otherwise an untagged process that was not on the device when the reservation
//!    was made, has settled nothing else here and holds at least the reserved bytes
//!    settles it: oldest reservation first, smallest such process first.
//! 3. Growth of processes already there settles nothing.
//!
//! Reservations made while the device had no process list (or restored after a
//! restart, which does not keep the pids) settle by the whole-device rule, in order.
//! Without a process list the whole device rule applies to all ([`Book::observe`]).

use std::collections::{HashMap, VecDeque};

use rbee_shared::GpuProcesses;

use super::{Book, DeviceBook, Reservation, ReservationState};

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
    if let Some(r) = reservations.get_mut(&id) {
        r.state = ReservationState::Settled;
    }
    Some(id)
}

fn position(active: &VecDeque<String>, id: &str) -> Option<usize> {
    active.iter().position(|a| a == id)
}

impl Book {
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
            Some(p) => self.observe_processes(address, device_id, observed, p),
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
                d.claimed.extend(pids);
                settled.extend(settle_at(d, reservations, pos));
            } else {
                // Below its bytes: the reservation still counts them all.
                loaded = loaded.saturating_add(used);
            }
        }

        // 2. New, untagged processes that hold the reserved bytes. A process whose id
        //    names no reservation of this device is untagged.
        let tags_here = |reservations: &HashMap<String, Reservation>, p: &rbee_shared::GpuProcess| {
            p.reservation_id
                .as_deref()
                .and_then(|id| reservations.get(id))
                .is_some_and(|r| r.address == address && r.device_id == device_id)
        };
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
                    !tags_here(reservations, p) && !known.contains(&p.pid) && !d.claimed.contains(&p.pid)
                })
                .filter(|p| p.used_vram_bytes.is_some_and(|u| u >= bytes))
                .min_by_key(|p| (p.used_vram_bytes, p.pid));
            match fit {
                Some(p) => {
                    d.claimed.insert(p.pid);
                    settled.extend(settle_at(d, reservations, i));
                }
                None => i += 1,
            }
        }

        // 3. Reservations made without a process list: the whole-device rule, in order.
        while let Some(id) = d.active.front() {
            if d.known.contains_key(id) || observed < d.baseline.saturating_add(bytes_of(reservations, id)) {
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
        settled
    }
}
