//! What the pod-network tests share: a network namespace of the test's own for the "host"
//! side (bridges, veths and iptables rules die with it), plain HTTP GETs, and the leftovers
//! a torn-down pod network must not leave (veths, nat rules naming the pod).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `body` on a thread of its own moved into a new network namespace with `lo` up;
/// processes it starts inherit the namespace. The namespace goes when the thread ends.
pub fn in_own_network<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: CLONE_NEWNET changes only this thread's network namespace; no file
                // descriptor table or filesystem attribute other threads rely on is unshared.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                    .expect("a network namespace of the test's own (run as root)");
                let up = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("running ip");
                assert!(up.success(), "bringing lo up in the test's namespace");
                body()
            })
            .join()
            .expect("the network namespace's thread")
    })
}

/// An HTTP/1.0 GET of `/` from `addr`: the body.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// [`http_get`] until it answers (a server in a guest that is still starting), for at most
/// `limit`.
pub fn http_get_eventually(addr: SocketAddr, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        match http_get(addr) {
            Ok(body) if !body.is_empty() => return body,
            Ok(_) | Err(_) if started.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("GET http://{addr}/ did not answer within {limit:?}: {other:?}"),
        }
    }
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many veth interfaces this namespace has (one per pod on a bridge).
pub fn veth_count() -> usize {
    output("ip", &["-o", "link", "show", "type", "veth"])
        .lines()
        .count()
}

/// This namespace's nat rules that name `pod_id` (the bridge plugin's masquerade and
/// portmap's DNAT carry the container id in their comments).
pub fn nat_rules_naming(pod_id: &str) -> Vec<String> {
    output("iptables", &["-t", "nat", "-S"])
        .lines()
        .filter(|l| l.contains(pod_id))
        .map(str::to_owned)
        .collect()
}
