//! `--urgent-rt-priority`: the urgent path's threads run SCHED_FIFO, the rest do not. In a
//! test binary of its own, so that the threads counted by name are this test's only.

mod common;

use common::{have_uffd, synthetic, TestServer};

/// The scheduling policy of every thread of this process called `name` (field 41 of
/// /proc/self/task/TID/stat: 0 SCHED_OTHER, 1 SCHED_FIFO).
fn policies(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After the ")" that ends the command name, fields start at 3 (the state).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(policy) = rest.split_whitespace().nth(41 - 3) {
            out.push(policy.parse().expect("policy"));
        }
    }
    out
}

#[test]
fn urgent_rt_priority_makes_only_the_urgent_path_real_time() {
    if !have_uffd() {
        return;
    }
    use fault_client::client::{Client, ClientOptions};
    if let Err(err) = uffd_core::cpu::check_realtime(7) {
        uffd_testkit::skip(&format!("SCHED_FIFO: {err}"));
        return;
    }
    let server = TestServer::start_with(synthetic(64 << 20, 8, 0.0), |c| {
        c.urgent_priority = Some(7);
        // Slow enough that the stream is still running while the threads are looked at.
        c.max_bandwidth = Some(16 << 20);
    });
    let mut options = ClientOptions::new(server.endpoint.clone());
    options.urgent_priority = Some(7);
    let client = Client::open(&options).expect("client");
    client.touch(3);
    // A thread takes its name and its policy when it first runs, which on a busy machine can
    // be after the touch returned (the page may have come with the stream, unasked): wait
    // until the fault handler and the urgent receiver show up, then look.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let started = || policies("fault-handler") == vec![1] && policies("urgent-rx") == vec![1];
    while !started() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Client side: the fault handler and the urgent receiver are SCHED_FIFO, the
    // background receiver is not.
    assert_eq!(policies("fault-handler"), vec![1]);
    assert_eq!(policies("urgent-rx"), vec![1]);
    assert!(policies("background-rx").iter().all(|&p| p == 0));
    // Server side (same process here): one connection thread per connection, and only the
    // one serving the urgent connection is SCHED_FIFO.
    let conns = policies("conn");
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns.iter().filter(|&&p| p == 1).count(), 1, "{conns:?}");
    client.close().expect("close");
}
