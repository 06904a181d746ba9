//! COM1 as a two-way byte stream: the emulator connects its COM1 to a
//! listener the runner opens (QEMU: a Unix socket; Bochs, which knows only
//! TCP: the loopback interface); what the machine sends is kept in a
//! [`Transcript`] (and echoed, logged), and bytes written to the
//! connection reach the machine's UART.
//!
//! Why not TCP for both: an emulator that exits with input its guest never
//! read closes its socket with unread data, and TCP then sends a reset,
//! which throws away whatever output the runner had not read yet (the last
//! lines, seen under QEMU on a loaded host). A Unix socket keeps that
//! output readable. Under Bochs the risk stays: a test that types into a
//! guest that never reads COM1 may lose the end of the console.
//!
//! Neither engine loses input, so nothing here paces it: QEMU's chardev
//! reads from the socket only as many bytes as the 16550's receive FIFO
//! has room for, and Bochs 2.7 (socket modes) takes the next byte from the
//! socket only when its receive buffer is empty. Bytes the guest has not
//! read yet wait in the socket. (Checked with a boot sector that echoes
//! COM1 slowly: 64 bytes sent at once came back whole under both.)

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Everything the machine has printed on COM1 so far, `\r` removed (as
/// [`super::BootOutcome::serial`] holds it), shared between the thread
/// that reads the emulator and whoever waits for text. Positions in it are
/// byte offsets, which only grow: a caller keeps one as a cursor to look
/// for text printed after what it has already matched.
#[derive(Clone, Default)]
pub struct Transcript {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    text: Vec<u8>,
    ended: bool,
}

/// Why [`Transcript::wait_for`] gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The time ran out first.
    TimedOut,
    /// The emulator closed COM1 (it exited) without printing it.
    Ended,
}

/// The offset just past the first `needle` that starts at or after `from`
/// in `text`. An empty needle matches at once (at `from`, or at the end of
/// `text` if `from` lies beyond it).
pub fn find_from(text: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let from = from.min(text.len());
    if needle.is_empty() {
        return Some(from);
    }
    text.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|at| from + at + needle.len())
}

impl Transcript {
    /// An empty transcript, still open.
    pub fn new() -> Transcript {
        Transcript::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves the bytes intact: keep using them.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends what the machine printed, `\r` bytes dropped.
    pub fn push(&self, bytes: &[u8]) {
        self.lock()
            .text
            .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        self.shared.changed.notify_all();
    }

    /// Marks the end: the emulator closed COM1; nothing more will come.
    pub fn end(&self) {
        self.lock().ended = true;
        self.shared.changed.notify_all();
    }

    /// Whether the emulator has closed COM1.
    pub fn ended(&self) -> bool {
        self.lock().ended
    }

    /// The number of bytes so far (the cursor of "everything seen").
    pub fn len(&self) -> usize {
        self.lock().text.len()
    }

    /// Whether nothing has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The console so far as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().text).into_owned()
    }

    /// The offset just past the first `needle` at or after `from`, if it
    /// has been printed yet.
    pub fn find(&self, from: usize, needle: &str) -> Option<usize> {
        find_from(&self.lock().text, from, needle.as_bytes())
    }

    /// Waits until `needle` appears at or after `from` and returns the
    /// offset just past it (the cursor for the next wait), or says why not
    /// within `timeout`.
    pub fn wait_for(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<usize, WaitError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.lock();
        loop {
            if let Some(end) = find_from(&state.text, from, needle.as_bytes()) {
                return Ok(end);
            }
            if state.ended {
                return Err(WaitError::Ended);
            }
            let left = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Err(WaitError::TimedOut),
                },
                // A timeout too long to add to now: wait in long steps.
                None => Duration::from_secs(3600),
            };
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits up to `timeout` for the end of COM1; true if it came.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.ended {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The writing end of COM1: bytes sent here reach the machine's UART in
/// order (the emulator takes them as the guest reads; see the module doc).
pub struct SerialInput {
    stream: Com1Stream,
}

/// A connected COM1, over either kind of socket.
pub(super) enum Com1Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Com1Stream {
    fn try_clone(&self) -> io::Result<Com1Stream> {
        Ok(match self {
            Com1Stream::Tcp(s) => Com1Stream::Tcp(s.try_clone()?),
            Com1Stream::Unix(s) => Com1Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Com1Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Com1Stream::Tcp(s) => s.read(buf),
            Com1Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Com1Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Com1Stream::Tcp(s) => s.write(buf),
            Com1Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Com1Stream::Tcp(s) => s.flush(),
            Com1Stream::Unix(s) => s.flush(),
        }
    }
}

impl SerialInput {
    /// Sends `bytes` to the machine's COM1.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Another handle on the same input, for a second thread.
    pub fn try_clone(&self) -> io::Result<SerialInput> {
        Ok(SerialInput {
            stream: self.stream.try_clone()?,
        })
    }
}

/// The listener the emulator's COM1 connects to.
pub(super) enum Com1Listener {
    /// On a free loopback port.
    Tcp(TcpListener, SocketAddr),
    /// At a path of its own in the temporary folder (a socket's path must
    /// be short, which the work folder's need not be); removed once the
    /// emulator has connected.
    Unix(UnixListener, PathBuf),
}

impl Com1Listener {
    pub(super) fn tcp() -> io::Result<Com1Listener> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        Ok(Com1Listener::Tcp(listener, addr))
    }

    pub(super) fn unix() -> io::Result<Com1Listener> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ferrovisor-com1-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with this id.
        let _ = std::fs::remove_file(&path);
        Ok(Com1Listener::Unix(UnixListener::bind(&path)?, path))
    }

    /// The TCP address to give the emulator, if it listens on TCP.
    pub(super) fn addr(&self) -> Option<SocketAddr> {
        match self {
            Com1Listener::Tcp(_, addr) => Some(*addr),
            Com1Listener::Unix(..) => None,
        }
    }

    /// The socket path to give the emulator, if it listens on one.
    pub(super) fn path(&self) -> Option<&Path> {
        match self {
            Com1Listener::Tcp(..) => None,
            Com1Listener::Unix(_, path) => Some(path),
        }
    }

    fn try_accept(&self) -> io::Result<Com1Stream> {
        match self {
            Com1Listener::Tcp(listener, _) => {
                let (stream, _) = listener.accept()?;
                stream.set_nonblocking(false)?;
                // Keystrokes go out as typed, not gathered.
                let _ = stream.set_nodelay(true);
                Ok(Com1Stream::Tcp(stream))
            }
            Com1Listener::Unix(listener, _) => {
                let (stream, _) = listener.accept()?;
                stream.set_nonblocking(false)?;
                Ok(Com1Stream::Unix(stream))
            }
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Com1Listener::Tcp(listener, _) => listener.set_nonblocking(true),
            Com1Listener::Unix(listener, _) => listener.set_nonblocking(true),
        }
    }

    /// Waits for the emulator (`child`) to connect. Both emulators connect
    /// while they start, before the machine runs, so this is quick; an
    /// emulator that exits first, or a minute with no connection, is an
    /// error.
    pub(super) fn accept(self, child: &mut Child) -> Result<Com1Stream, String> {
        self.set_nonblocking()
            .map_err(|e| format!("cannot poll the COM1 listener: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.try_accept() {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("cannot accept the COM1 connection: {e}")),
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the emulator exited ({status}) before connecting to COM1"
                ));
            }
            if Instant::now() > deadline {
                return Err("the emulator did not connect to COM1 within 60s".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Com1Listener {
    fn drop(&mut self) {
        if let Com1Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Splits a connected COM1 into its input and a thread that reads the
/// machine's output into `transcript` until the emulator closes it,
/// echoing it byte for byte to stdout when `echo` is set and appending it
/// (`\r` removed) to `log`.
pub(super) fn spawn_reader(
    stream: Com1Stream,
    transcript: Transcript,
    echo: bool,
    mut log: Option<File>,
) -> io::Result<(SerialInput, thread::JoinHandle<()>)> {
    let input = SerialInput {
        stream: stream.try_clone()?,
    };
    let mut stream = stream;
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset (the emulator left input unread) ends it too.
                Err(_) => break,
            };
            let bytes = buf.get(..n).unwrap_or_default();
            if echo {
                let mut out = io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            if let Some(file) = log.as_mut() {
                let text: Vec<u8> = bytes.iter().copied().filter(|&b| b != b'\r').collect();
                let _ = file.write_all(&text);
            }
            transcript.push(bytes);
        }
        transcript.end();
    });
    Ok((input, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    trait ReadWrite: Read + Write {}
    impl<T: Read + Write> ReadWrite for T {}

    #[test]
    fn find_from_returns_the_end_of_the_first_match_at_or_after_the_cursor() {
        let text = b"ready\nready\n";
        assert_eq!(find_from(text, 0, b"ready"), Some(5));
        assert_eq!(find_from(text, 5, b"ready"), Some(11));
        // A match that starts before the cursor is not a later one.
        assert_eq!(find_from(text, 7, b"ready"), None);
        assert_eq!(find_from(text, 0, b"absent"), None);
        // A cursor past the end finds nothing but the empty needle.
        assert_eq!(find_from(text, 99, b"r"), None);
        assert_eq!(find_from(text, 99, b""), Some(text.len()));
        assert_eq!(find_from(text, 3, b""), Some(3));
        assert_eq!(find_from(b"", 0, b"x"), None);
    }

    #[test]
    fn the_transcript_drops_carriage_returns_and_matches_across_chunks() {
        let t = Transcript::new();
        t.push(b"cpu0: VT-x un");
        t.push(b"available\r\npowering");
        t.push(b" off\r\n");
        assert_eq!(t.text(), "cpu0: VT-x unavailable\npowering off\n");
        let end = t.find(0, "unavailable\npowering").unwrap();
        assert_eq!(t.find(end, "powering"), None);
        assert_eq!(t.find(end, "off\n"), Some(t.len()));
    }

    #[test]
    fn wait_for_returns_the_cursor_past_a_later_occurrence() {
        let t = Transcript::new();
        t.push(b"login: \nlogin: ");
        let first = t.wait_for(0, "login: ", Duration::ZERO).unwrap();
        let second = t.wait_for(first, "login: ", Duration::ZERO).unwrap();
        assert_eq!((first, second), (7, 15));
        assert_eq!(
            t.wait_for(second, "login: ", Duration::from_millis(20)),
            Err(WaitError::TimedOut)
        );
    }

    #[test]
    fn wait_for_wakes_when_another_thread_prints_the_text() {
        let t = Transcript::new();
        let writer = t.clone();
        let printer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            writer.push(b"# ");
        });
        assert_eq!(t.wait_for(0, "# ", Duration::from_secs(10)), Ok(2));
        printer.join().unwrap();
    }

    #[test]
    fn wait_for_stops_at_the_end_of_com1_without_waiting_out_its_timeout() {
        let t = Transcript::new();
        t.push(b"powering off\n");
        t.end();
        let start = Instant::now();
        assert_eq!(
            t.wait_for(0, "login:", Duration::from_secs(60)),
            Err(WaitError::Ended)
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        // Text already printed is still found after the end.
        assert_eq!(t.wait_for(0, "off", Duration::ZERO), Ok(12));
        assert!(t.wait_ended(Duration::ZERO));
    }

    #[test]
    fn a_timeout_too_long_to_add_to_now_does_not_overflow() {
        let t = Transcript::new();
        t.push(b"x");
        assert_eq!(t.wait_for(0, "x", Duration::MAX), Ok(1));
    }

    #[test]
    fn bytes_sent_on_the_input_arrive_in_order_and_the_output_is_collected() {
        // The runner's side of COM1 against a stand-in emulator that
        // echoes what it reads, then closes.
        for listener in [Com1Listener::tcp().unwrap(), Com1Listener::unix().unwrap()] {
            a_stand_in_machine_echoes_64_bytes(listener);
        }
    }

    fn a_stand_in_machine_echoes_64_bytes(listener: Com1Listener) {
        let addr = listener.addr();
        let path = listener.path().map(Path::to_path_buf);
        let machine = thread::spawn(move || {
            let mut com1: Box<dyn ReadWrite> = match (addr, path) {
                (Some(addr), _) => Box::new(TcpStream::connect(addr).unwrap()),
                (None, Some(path)) => Box::new(UnixStream::connect(path).unwrap()),
                (None, None) => unreachable!(),
            };
            com1.write_all(b"READY\r\n").unwrap();
            let mut got = [0u8; 64];
            com1.read_exact(&mut got).unwrap();
            com1.write_all(&got).unwrap();
        });
        let stream = loop {
            match listener.try_accept() {
                Ok(stream) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let transcript = Transcript::new();
        let (mut input, reader) = spawn_reader(stream, transcript.clone(), false, None).unwrap();
        let at = transcript
            .wait_for(0, "READY\n", Duration::from_secs(10))
            .unwrap();
        let sent: Vec<u8> = (b'0'..b'0' + 64).collect();
        input.send(&sent).unwrap();
        let needle = String::from_utf8(sent).unwrap();
        assert!(transcript
            .wait_for(at, &needle, Duration::from_secs(10))
            .is_ok());
        machine.join().unwrap();
        assert!(transcript.wait_ended(Duration::from_secs(10)));
        reader.join().unwrap();
    }
}
