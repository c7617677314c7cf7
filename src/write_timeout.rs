//! A socket wrapper that fails a write which cannot make progress for `limits.write_timeout`,
//! so a client that stops reading is disconnected instead of holding its slot forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write first returns `Pending`, cleared on progress. Allocated only
    /// while a write is blocked, so idle and healthy connections carry no timer.
    stalled_since: Option<Pin<Box<Sleep>>>,
    /// Counted once when the timeout fires.
    on_timeout: IntCounter,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration, on_timeout: IntCounter) -> Self {
        Self {
            inner,
            timeout,
            stalled_since: None,
            on_timeout,
        }
    }

    /// Turn a `Pending` write into an error once it has been pending for too long.
    fn check_stall<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.stalled_since.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                if timer.as_mut().poll(cx).is_ready() {
                    self.on_timeout.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "write made no progress within limits.write_timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check_stall(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check_stall(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.check_stall(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check_stall(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_timeout() {
        // A duplex pipe with a tiny buffer that nobody reads: writes stall.
        let (client, _server) = tokio::io::duplex(16);
        let fired = counter();
        let mut io = WriteTimeout::new(client, Duration::from_secs(5), fired.clone());
        let start = Instant::now();
        let err = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert_eq!(fired.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_timer() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut io = WriteTimeout::new(client, Duration::from_secs(5), counter());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                    .await
                    .unwrap();
            }
        });
        io.write_all(&[0u8; 1024])
            .await
            .expect("a slow but moving reader is fine");
        reader.await.unwrap();
    }
}
