//! Debian's `docker-registry` on 127.0.0.1 for the image tests, behind basic auth, with the
//! images pushed by skopeo. Slow to start inside the emulated host (a Go binary under TCG),
//! so it gets two minutes. Killed by its PID on drop.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub address: String,
    credentials: (String, String),
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e} (apt-get install docker-registry skopeo apache2-utils)")
    });
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Registry {
    pub fn start(dir: PathBuf, user: &str, password: &str) -> Registry {
        std::fs::create_dir_all(&dir).expect("the registry directory");
        // The emulated KVM host boots with its loopback interface down.
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let htpasswd = dir.join("htpasswd");
        run(Command::new("htpasswd")
            .arg("-Bbc")
            .arg(&htpasswd)
            .arg(user)
            .arg(password));
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {address}\n  secret: vpod-e2e\nauth:\n  htpasswd:\n    realm: vpod\n    path: {}\n",
                dir.join("storage").display(),
                htpasswd.display()
            ),
        )
        .expect("the registry config");
        let log = std::fs::File::create(dir.join("registry.log")).expect("the registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the registry log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry starts (apt-get install docker-registry)");
        let mut registry = Registry {
            child,
            dir,
            address,
            credentials: (user.to_string(), password.to_string()),
        };
        let started = Instant::now();
        while TcpStream::connect(&registry.address).is_err() {
            let exited = registry.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > Duration::from_secs(120) {
                panic!(
                    "docker-registry did not listen on {} ({exited:?}):\n{}",
                    registry.address,
                    std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// Copies `source` (`oci:DIR:TAG`) to `REPO:TAG` here.
    pub fn push(&mut self, source: &str, destination: &str) {
        let (user, password) = &self.credentials;
        run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("--dest-creds={user}:{password}"))
            .arg(source)
            .arg(format!("docker://{}/{destination}", self.address))
            .env("TMPDIR", &self.dir));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
