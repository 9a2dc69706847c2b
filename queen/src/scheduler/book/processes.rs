//! Settlement by process, where the hive lists who holds a device's memory.
//!
//! 1. A worker that carries its reservation id (`RBEE_RESERVATION_ID`) settles exactly
//!    that reservation once it holds the reserved bytes; until then what it holds
//!    counts as loaded.
//! 2. Otherwise a process that was not on the device when the reservation was made,
//!    carries no reservation id, has settled nothing else here and holds at least the
//!    reserved bytes settles it: oldest reservation first, smallest such process first.
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

        // 1. Workers that carry their reservation id.
        let mut loaded = 0u64;
        for p in listed {
            let Some(pos) = p.reservation_id.as_deref().and_then(|id| position(&d.active, id)) else {
                continue;
            };
            let used = p.used_vram_bytes.unwrap_or(0);
            if used >= bytes_of(reservations, &d.active[pos]) {
                d.claimed.insert(p.pid);
                settled.extend(settle_at(d, reservations, pos));
            } else {
                loaded = loaded.saturating_add(used);
            }
        }

        // 2. New, untagged processes that hold the reserved bytes.
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
