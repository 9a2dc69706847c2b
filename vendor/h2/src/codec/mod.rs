mod error;
mod framed_read;
mod framed_write;

pub use self::error::{SendError, UserError};

use self::framed_read::FramedRead;
use self::framed_write::FramedWrite;

use crate::frame::{self, Data, Frame};
use crate::proto::Error;

use bytes::Buf;
use futures_core::Stream;
use futures_sink::Sink;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::length_delimited;

use std::io;

/// The initial capacity of the read buffer.
///
/// Most frames are small (SETTINGS, WINDOW_UPDATE, PING, HEADERS, short DATA),
/// and every connection holds its read buffer for as long as it lives, busy or
/// idle. A larger frame grows the buffer to its length.
const INITIAL_READ_BUFFER_CAPACITY: usize = 1024;

#[derive(Debug)]
pub struct Codec<T, B> {
    inner: FramedRead<FramedWrite<T, B>>,
}

impl<T, B> Codec<T, B>
where
    T: AsyncRead + AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns a new `Codec` with the default max frame size
    #[inline]
    pub fn new(io: T) -> Self {
        Self::with_max_recv_frame_size(io, frame::DEFAULT_MAX_FRAME_SIZE as usize)
    }

    /// Returns a new `Codec` with the given maximum frame size
    pub fn with_max_recv_frame_size(io: T, max_frame_size: usize) -> Self {
        // Wrap with writer
        let framed_write = FramedWrite::new(io);

        // Delimit the frames
        let codec = length_delimited::Builder::new()
            .big_endian()
            .length_field_length(3)
            .length_adjustment(9)
            .num_skip(0) // Don't skip the header
            .new_codec();
        // Start the read buffer small: the codec grows it to the length of a
        // larger frame once that frame's header has been read.
        let delimited = tokio_util::codec::FramedRead::with_capacity(
            framed_write,
            codec,
            INITIAL_READ_BUFFER_CAPACITY,
        );

        let mut inner = FramedRead::new(delimited);

        // Use FramedRead's method since it checks the value is within range.
        inner.set_max_frame_size(max_frame_size);

        Codec { inner }
    }
}

impl<T, B> Codec<T, B> {
    /// Updates the max received frame size.
    ///
    /// The change takes effect the next time a frame is decoded. In other
    /// words, if a frame is currently in process of being decoded with a frame
    /// size greater than `val` but less than the max frame size in effect
    /// before calling this function, then the frame will be allowed.
    #[inline]
    pub fn set_max_recv_frame_size(&mut self, val: usize) {
        self.inner.set_max_frame_size(val)
    }

    /// Returns the current max received frame size setting.
    ///
    /// This is the largest size this codec will accept from the wire. Larger
    /// frames will be rejected.
    #[cfg(feature = "unstable")]
    #[inline]
    pub fn max_recv_frame_size(&self) -> usize {
        self.inner.max_frame_size()
    }

    /// Returns the max frame size that can be sent to the peer.
    pub fn max_send_frame_size(&self) -> usize {
        self.inner.get_ref().max_frame_size()
    }

    /// Set the peer's max frame size.
    pub fn set_max_send_frame_size(&mut self, val: usize) {
        self.framed_write().set_max_frame_size(val)
    }

    /// Set the peer's header table size size.
    pub fn set_send_header_table_size(&mut self, val: usize) {
        self.framed_write().set_header_table_size(val)
    }

    /// Set the decoder header table size size.
    pub fn set_recv_header_table_size(&mut self, val: usize) {
        self.inner.set_header_table_size(val)
    }

    /// Set the max header list size that can be received.
    pub fn set_max_recv_header_list_size(&mut self, val: usize) {
        self.inner.set_max_header_list_size(val);
    }

    /// Get a reference to the inner stream.
    #[cfg(feature = "unstable")]
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref().get_ref()
    }

    /// Get a mutable reference to the inner stream.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().get_mut()
    }

    /// Takes the data payload value that was fully written to the socket
    pub(crate) fn take_last_data_frame(&mut self) -> Option<Data<B>> {
        self.framed_write().take_last_data_frame()
    }

    fn framed_write(&mut self) -> &mut FramedWrite<T, B> {
        self.inner.get_mut()
    }
}

impl<T, B> Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    /// Returns `Ready` when the codec can buffer a frame
    pub fn poll_ready(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().poll_ready(cx)
    }

    /// Returns whether the codec can buffer a frame without flushing the
    /// underlying I/O object.
    pub(crate) fn has_send_capacity(&mut self) -> bool {
        self.framed_write().has_capacity()
    }

    /// Buffer a frame.
    ///
    /// `poll_ready` must be called first to ensure that a frame may be
    /// accepted.
    ///
    /// TODO: Rename this to avoid conflicts with Sink::buffer
    pub fn buffer(&mut self, item: Frame<B>) -> Result<(), UserError> {
        self.framed_write().buffer(item)
    }

    /// Flush buffered data to the wire
    pub fn flush(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().flush(cx)
    }

    /// Shutdown the send half
    pub fn shutdown(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        self.framed_write().shutdown(cx)
    }
}

impl<T, B> Stream for Codec<T, B>
where
    T: AsyncRead + Unpin,
{
    type Item = Result<Frame, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<T, B> Sink<Frame<B>> for Codec<T, B>
where
    T: AsyncWrite + Unpin,
    B: Buf,
{
    type Error = SendError;

    fn start_send(mut self: Pin<&mut Self>, item: Frame<B>) -> Result<(), Self::Error> {
        Codec::buffer(&mut self, item)?;
        Ok(())
    }
    /// Returns `Ready` when the codec can buffer a frame
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().poll_ready(cx).map_err(Into::into)
    }

    /// Flush buffered data to the wire
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.framed_write().flush(cx).map_err(Into::into)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

// TODO: remove (or improve) this
impl<T> From<T> for Codec<T, bytes::Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    fn from(src: T) -> Self {
        Self::new(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Ping, Settings, StreamId};
    use bytes::{Bytes, BytesMut};
    use std::future::poll_fn;
    use tokio::io::ReadBuf;

    /// An in-memory transport: reads come from `read`, writes go to `written`.
    struct Mock {
        read: io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl AsyncRead for Mock {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let pos = self.read.position() as usize;
            let src = &self.read.get_ref()[pos..];
            let n = src.len().min(buf.remaining());
            buf.put_slice(&src[..n]);
            self.read.set_position((pos + n) as u64);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn codec(read: Vec<u8>) -> Codec<Mock, Bytes> {
        Codec::new(Mock {
            read: io::Cursor::new(read),
            written: Vec::new(),
        })
    }

    async fn next(codec: &mut Codec<Mock, Bytes>) -> Option<Result<Frame, Error>> {
        poll_fn(|cx| Pin::new(&mut *codec).poll_next(cx)).await
    }

    #[tokio::test]
    async fn write_buffer_is_allocated_while_frames_are_buffered() {
        let mut codec = codec(Vec::new());
        assert_eq!(codec.framed_write().write_buffer_capacity(), 0);

        let payload = Bytes::from(vec![7u8; 16_000]);
        let frames: Vec<Frame<Bytes>> = vec![
            Settings::default().into(),
            Ping::new([1; 8]).into(),
            Data::new(StreamId::from(1), payload.clone()).into(),
            Ping::new([2; 8]).into(),
        ];
        let mut expected = BytesMut::new();
        Settings::default().encode(&mut expected);
        Ping::new([1; 8]).encode(&mut expected);
        Data::new(StreamId::from(1), payload.clone()).encode_chunk(&mut expected);
        Ping::new([2; 8]).encode(&mut expected);

        for frame in frames {
            poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
            codec.buffer(frame).unwrap();
            assert!(codec.framed_write().write_buffer_capacity() > 0);
        }
        poll_fn(|cx| codec.flush(cx)).await.unwrap();

        assert_eq!(codec.get_mut().written, &expected[..]);
        // Nothing is left to write: the buffer was given back.
        assert_eq!(codec.framed_write().write_buffer_capacity(), 0);

        // A control frame takes a small buffer, not the 16 KiB a flush may hold.
        poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
        codec.buffer(Ping::new([4; 8]).into()).unwrap();
        assert!(codec.framed_write().write_buffer_capacity() <= 2048);
        poll_fn(|cx| codec.flush(cx)).await.unwrap();
        assert_eq!(codec.framed_write().write_buffer_capacity(), 0);
    }

    #[tokio::test]
    async fn many_small_frames_grow_the_write_buffer_and_arrive_in_order() {
        let mut codec = codec(Vec::new());
        let mut expected = BytesMut::new();
        for i in 0..1000u32 {
            let payload = Bytes::from(vec![i as u8; 100]);
            Data::new(StreamId::from(1), payload.clone()).encode_chunk(&mut expected);
            poll_fn(|cx| codec.poll_ready(cx)).await.unwrap();
            codec
                .buffer(Data::new(StreamId::from(1), payload).into())
                .unwrap();
            // Never more than a flush's worth is buffered.
            assert!(codec.framed_write().write_buffer_capacity() <= 2 * 16 * 1024);
        }
        poll_fn(|cx| codec.flush(cx)).await.unwrap();
        assert_eq!(codec.get_mut().written, &expected[..]);
        assert_eq!(codec.framed_write().write_buffer_capacity(), 0);
    }

    #[tokio::test]
    async fn read_buffer_starts_small_and_a_large_frame_still_decodes() {
        let payload = Bytes::from((0..20_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let mut wire = BytesMut::new();
        Settings::default().encode(&mut wire);
        Data::new(StreamId::from(1), payload.clone()).encode_chunk(&mut wire);
        Ping::new([3; 8]).encode(&mut wire);

        let mut codec = codec(wire.to_vec());
        codec.set_max_recv_frame_size(32_768);
        // Every connection holds its read buffer for its whole life.
        assert!(codec.inner.read_buffer_capacity() <= 1024);

        assert!(matches!(
            next(&mut codec).await,
            Some(Ok(Frame::Settings(_)))
        ));
        match next(&mut codec).await {
            Some(Ok(Frame::Data(data))) => assert_eq!(data.payload(), &payload),
            other => panic!("expected DATA, got {other:?}"),
        }
        assert!(
            matches!(next(&mut codec).await, Some(Ok(Frame::Ping(p))) if p.payload() == &[3; 8])
        );
        assert!(next(&mut codec).await.is_none());
    }
}
