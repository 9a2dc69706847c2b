//! Per-core CPU in compact form: whole percents, one byte per core on a keyframe
//! (`cpu_per_core`), and on a delta whichever is smaller of that and every core's
//! change against the receiver's value, zigzag-coded in the fewest bits per core that
//! hold the largest change (`cpu_per_core_delta`).
//!
//! A core that idles at a few percent moves by a point or two from one second to the
//! next, so 16 cores' changes usually fit in two bits each: 5 bytes instead of 16.

use super::CompactError;

/// A percentage as one whole-percent byte (0..=100).
pub(super) fn core_byte(p: f32) -> u8 {
    if p.is_finite() { p.round().clamp(0.0, 100.0) as u8 } else { 0 }
}

fn zigzag(d: i16) -> u16 {
    ((d << 1) ^ (d >> 15)) as u16
}

fn unzigzag(z: u16) -> i16 {
    ((z >> 1) as i16) ^ -((z & 1) as i16)
}

/// `now` (whole percents) as changes against `held` (whole percents, as many): bits
/// per core, then the codes packed from the low bit up.
pub(super) fn pack(now: &[u8], held: &[u8]) -> Vec<u8> {
    let codes: Vec<u16> = now.iter().zip(held).map(|(n, h)| zigzag(i16::from(*n) - i16::from(*h))).collect();
    // Changes between whole percents are within ±100: codes fit in 8 bits.
    let max = codes.iter().copied().max().unwrap_or(0);
    let bits = (16 - max.leading_zeros()).max(1) as usize;
    let mut out = vec![0u8; 1 + (codes.len() * bits).div_ceil(8)];
    out[0] = bits as u8;
    for (i, code) in codes.iter().enumerate() {
        for b in 0..bits {
            if code >> b & 1 == 1 {
                let at = i * bits + b;
                out[1 + at / 8] |= 1 << (at % 8);
            }
        }
    }
    out
}

/// The receiver's side of [`pack`]: `held` moved on by `packed`.
pub(super) fn unpack(packed: &[u8], held: &[u8]) -> Result<Vec<u8>, CompactError> {
    let bad = |why: &'static str| CompactError::BadCoreDelta(why);
    // (An empty field is an absent one: it never gets here.)
    let (&bits, codes) = packed.split_first().ok_or(bad("it is empty"))?;
    if !(1..=8).contains(&bits) {
        return Err(bad("its bits per core are not 1..=8"));
    }
    if held.is_empty() {
        return Err(bad("the receiver holds no per-core values to change"));
    }
    let bits = usize::from(bits);
    if codes.len() != (held.len() * bits).div_ceil(8) {
        return Err(bad("its length does not match the cores held"));
    }
    held.iter()
        .enumerate()
        .map(|(i, h)| {
            let code = (0..bits).fold(0u16, |code, b| {
                let at = i * bits + b;
                code | u16::from(codes[at / 8] >> (at % 8) & 1) << b
            });
            u8::try_from(i16::from(*h) + unzigzag(code))
                .ok()
                .filter(|v| *v <= 100)
                .ok_or(bad("a core leaves 0..=100"))
        })
        .collect()
}
