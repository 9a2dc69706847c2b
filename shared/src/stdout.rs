//! A command's output on stdout, `head`-friendly: a write returns the error instead of
//! panicking as `println!` does ("failed printing to stdout: Broken pipe", exit 101),
//! and [`is_broken_pipe`] lets `main` end quietly with exit 0 when the reader closed the
//! pipe (`queen watch | head -1`), the convention of Unix filters.
//!
//! Write with [`outln!`](crate::outln) / [`out!`](crate::out) (or [`write`]) and `?`.

use std::error::Error;
use std::io::{self, Write};

/// Writes `text` to stdout and flushes it, so a closed pipe is reported here, by this
/// write, not by a later one or at exit.
pub fn write(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes bytes (a man page, a completion script) to stdout and flushes them.
pub fn write_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// Writes a line to stderr (a progress note such as "reconnecting..."), ignoring a
/// closed stderr: `eprintln!` would panic there, and a note is not worth a crash.
pub fn note(text: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// True when an error chain (outermost first, e.g. `anyhow::Error::chain`) holds a
/// broken pipe: the reader of our output went away, which is no failure of ours.
pub fn is_broken_pipe<'a>(mut chain: impl Iterator<Item = &'a (dyn Error + 'static)>) -> bool {
    chain.any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// Resolves when stdout is a pipe or socket whose reader has gone (the kernel reports
/// it closed for writing), so that a command that prints only now and then (`queen
/// watch | head -1` on a quiet fleet) ends when nobody reads instead of at its next line.
/// Never resolves when stdout cannot be watched (a regular file, `/dev/null`) or stays open.
pub async fn reader_gone() {
    use std::os::fd::AsFd;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    // A descriptor of our own for the same pipe: it stays open as long as the AsyncFd.
    let Ok(own) = io::stdout().as_fd().try_clone_to_owned() else {
        return std::future::pending().await;
    };
    // Deprecated because an arbitrary `AsRawFd` may close its descriptor while registered;
    // an `OwnedFd` given away here cannot.
    #[allow(deprecated)]
    let Ok(fd) = AsyncFd::with_interest(own, Interest::WRITABLE) else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut ready) = fd.ready(Interest::WRITABLE).await else {
            return std::future::pending().await;
        };
        if ready.ready().is_write_closed() || ready.ready().is_error() {
            return;
        }
        // Writable and open: wait for the next change (edge-triggered).
        ready.clear_ready();
    }
}

/// `println!` that returns an `io::Result` instead of panicking (see [`write`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::stdout::write(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that returns an `io::Result` instead of panicking (see [`write`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as `anyhow::Context` does.
    #[derive(Debug)]
    struct Printing(io::Error);

    impl std::fmt::Display for Printing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("printing")
        }
    }

    impl Error for Printing {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
        std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
    }

    #[test]
    fn a_broken_pipe_is_found_anywhere_in_the_chain() {
        let pipe = Printing(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(chain(&pipe)));
        let other = Printing(io::Error::from(io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(chain(&other)));
    }
}
