//! A TCP link between the programs and the broker that a test can make go
//! silent: from then on it passes nothing in either direction and closes
//! nothing, as a network that loses every packet (a partition, a dead
//! router) — no reset, no FIN, the sockets stay open. New connections are
//! still accepted, and go silent at once. The programs must notice by
//! themselves and reconnect elsewhere.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A link listening on a free loopback port, forwarding to `127.0.0.1:target`
/// until it goes silent; everything stops when it is dropped.
pub struct SilentLink {
    port: u16,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl SilentLink {
    /// Starts a link to `127.0.0.1:target`.
    pub fn to(target: u16) -> SilentLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the link");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().unwrap().port();
        let link = SilentLink {
            port,
            silent: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        let (silent, stop, accepted) = (
            link.silent.clone(),
            link.stop.clone(),
            link.accepted.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(broker) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        for (from, to) in [
                            (client.try_clone().unwrap(), broker.try_clone().unwrap()),
                            (broker, client),
                        ] {
                            let (silent, stop) = (silent.clone(), stop.clone());
                            thread::spawn(move || pump(from, to, &silent, &stop));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        link
    }

    /// The port the programs connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections the link has carried.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// From now on nothing passes, and nothing is closed.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

impl Drop for SilentLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while the link speaks; once silent, reads and
/// drops (so the sender is never held back by a full buffer, as with lost
/// packets). Ends, closing both, only when the link is dropped or a side
/// closes while the link still speaks.
fn pump(mut from: TcpStream, mut to: TcpStream, silent: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buffer) {
            Ok(0) if silent.load(Ordering::SeqCst) => thread::sleep(Duration::from_millis(100)),
            Ok(0) => break,
            Ok(n) => {
                if !silent.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) if silent.load(Ordering::SeqCst) => thread::sleep(Duration::from_millis(100)),
            Err(_) => break,
        }
    }
}
