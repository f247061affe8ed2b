//! The page-server's session state machine over TCP: the input is a script of client
//! operations (see `session::Script::parse`) played against a real `page_server::Server`
//! started once per process on 127.0.0.1:0 (two variants: defaults, and token + no
//! preemption). Every answer is checked (see `src/session/`); then every session must be
//! gone, and a fresh well-behaved client must still get its page.
//!
//! `UFFD_FUZZ_TOLERATE_LEAKS=1` skips the session-leak check and lifts the session limit
//! (to keep fuzzing past a known leak).
#![no_main]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use page_server::{Config, Server};
use uffd_lab_fuzz::session::{self, Script, Target};

struct Live {
    addr: String,
    server: Arc<Server>,
}

struct Servers {
    image: Arc<page_server::Image>,
    a: Live,
    b: Live,
    tolerate_leaks: bool,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
static NEVER: AtomicBool = AtomicBool::new(false);

fn start(image: &Arc<page_server::Image>, variant_b: bool, tolerate_leaks: bool) -> Live {
    let mut config = Config::new("127.0.0.1:0".parse().expect("endpoint"));
    session::configure(&mut config, variant_b, tolerate_leaks);
    let server = Arc::new(Server::bind(config, Arc::clone(image)).expect("bind"));
    let addr = server.local_endpoint().expect("endpoint").to_string();
    let serving = Arc::clone(&server);
    std::thread::spawn(move || serving.serve(&NEVER).expect("serve"));
    Live { addr, server }
}

fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        // libFuzzer's main runs instead of Rust's, which would have ignored SIGPIPE: without
        // this, a write to a connection the peer reset kills the process.
        // SAFETY: setting SIGPIPE's disposition to SIG_IGN installs no handler code, and
        // happens once, before any thread of this harness writes to a socket.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let tolerate_leaks = std::env::var_os("UFFD_FUZZ_TOLERATE_LEAKS").is_some();
        let image = Arc::new(session::image());
        let a = start(&image, false, tolerate_leaks);
        let b = start(&image, true, tolerate_leaks);
        Servers {
            image,
            a,
            b,
            tolerate_leaks,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let servers = servers();
    let script = Script::parse(data);
    let live = if script.variant_b {
        &servers.b
    } else {
        &servers.a
    };
    let count = || live.server.sessions();
    let target = Target {
        addr: &live.addr,
        image: &servers.image,
        token: script.variant_b.then_some(session::TOKEN),
        sessions: Some(&count),
        leftover_sessions: servers.tolerate_leaks,
    };
    session::play(&target, &script.ops);
    let page = data
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31) ^ u64::from(b));
    session::still_serves(&target, page);
});
