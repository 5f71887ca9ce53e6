//! An in-test TCP proxy between two nodes that can cut and heal the link.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    target: SocketAddr,
    cut: AtomicBool,
    /// Client-to-target bytes are swallowed (the connection stays open); replies still flow.
    mute_requests: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Added to every chunk's trip, each way (a delay line: chunks keep their spacing).
    delay_us: AtomicU64,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State { target, cut: AtomicBool::new(false), mute_requests: AtomicBool::new(false), stop: AtomicBool::new(false), conns: Mutex::new(vec![]), delay_us: AtomicU64::new(0) });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&st.target, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = st.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                for (upstream, mut from, to) in [(true, client.try_clone().unwrap(), server.try_clone().unwrap()), (false, server, client)] {
                    let st = st.clone();
                    // Reader → delay line → writer, so a delay holds each chunk back by
                    // the same amount without slowing the ones behind it.
                    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                    let (st2, mut to2, from2) = (st.clone(), to.try_clone().unwrap(), from.try_clone().unwrap());
                    std::thread::spawn(move || {
                        for (due, chunk) in rx {
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            if st2.cut.load(Ordering::SeqCst) || to2.write_all(&chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to2.shutdown(Shutdown::Both);
                        let _ = from2.shutdown(Shutdown::Both);
                    });
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(_) if upstream && st.mute_requests.load(Ordering::SeqCst) => {}
                                Ok(n) => {
                                    let due = Instant::now() + Duration::from_micros(st.delay_us.load(Ordering::SeqCst));
                                    if st.cut.load(Ordering::SeqCst) || tx.send((due, buf[..n].to_vec())).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        drop((tx, to)); // the writer drains what is queued, then closes both ends
                    });
                }
            }
        });
        Proxy { port, state }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every open connection and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// From now on, what the connecting side sends is silently dropped, while what the target
    /// sends still arrives: a one-way failure (requests and acks lost, replies delivered).
    pub fn mute_requests(&self) {
        self.state.mute_requests.store(true, Ordering::SeqCst);
    }

    /// Delays every byte by `d` in each direction from now on (new and open connections).
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_us.store(d.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        if self.state.mute_requests.swap(false, Ordering::SeqCst) {
            // Those streams lost bytes mid-frame: close them, the nodes reconnect.
            for c in self.state.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
