//! The codec every generated rbee client and server uses: prost, with small buffers.
//!
//! tonic's default codec starts every stream's encode and decode buffers at 8 KiB. A
//! queen holds one long-lived `MetricsStream` per hive, each with one of each, so at
//! 10,000 hives that default alone was 160 MiB of mostly empty buffers; the messages
//! on it are a few dozen bytes (compact samples) to a few KiB (snapshots). These
//! buffers start at [`BUFFER_BYTES`] and grow when a larger message needs it, exactly
//! as the default ones do past 8 KiB.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Where each stream's encode and decode buffers start.
pub const BUFFER_BYTES: usize = 1024;

/// How much a stream encodes before it yields to the transport (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

/// prost encoding with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
