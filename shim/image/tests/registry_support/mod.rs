//! A real registry for tests: Debian's `docker-registry` on 127.0.0.1 with its storage in a
//! temporary directory, optionally behind basic auth (htpasswd) and TLS (a self-signed
//! certificate made with openssl), images pushed into it with skopeo. Dropping it kills
//! the registry by its PID and removes the directory.
#![allow(dead_code)]

pub mod gate;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vpod_image::Digest;

/// How the registry is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// Require basic auth with this user and password.
    pub basic_auth: Option<(&'static str, &'static str)>,
    /// Serve HTTPS with a self-signed certificate for 127.0.0.1.
    pub tls: bool,
}

pub struct TestRegistry {
    child: Child,
    dir: TempDir,
    /// `127.0.0.1:PORT`.
    pub address: String,
    setup: Setup,
    skopeo: PathBuf,
}

/// The path of `tool`, or a failure naming the Debian package to install.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{tool} is not installed: `apt-get install {package}` (or `make deps`)")
        })
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestRegistry {
    pub fn start(setup: Setup) -> TestRegistry {
        let registry = require_tool("docker-registry", "docker-registry");
        let skopeo = require_tool("skopeo", "skopeo");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut extra = String::new();
        if let Some((user, password)) = setup.basic_auth {
            let htpasswd = require_tool("htpasswd", "apache2-utils");
            let file = dir.path().join("htpasswd");
            run(Command::new(htpasswd)
                .arg("-Bbc")
                .arg(&file)
                .arg(user)
                .arg(password));
            extra += &format!(
                "auth:\n  htpasswd:\n    realm: vpod-test\n    path: {}\n",
                file.display()
            );
        }
        if setup.tls {
            let openssl = require_tool("openssl", "openssl");
            run(Command::new(openssl)
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(dir.path().join("key.pem"))
                .arg("-out")
                .arg(dir.path().join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()));
        }

        // A free port can be taken between our probe and the registry's bind: try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let address = format!("127.0.0.1:{port}");
            let tls = if setup.tls {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.path().join("cert.pem").display(),
                    dir.path().join("key.pem").display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n{tls}{extra}",
                dir.path().join("storage").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write the registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new(&registry)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {}: {e}", registry.display()));
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(&address).is_ok() {
                    return TestRegistry {
                        child,
                        dir,
                        address,
                        setup,
                        skopeo,
                    };
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start listening:\n{log}");
    }

    /// Copies `source` (`oci:DIR:TAG`) to `REPO:TAG` in this registry; `all` copies every
    /// platform of an image index.
    pub fn push(&self, source: &str, destination: &str, all: bool) {
        let mut command = Command::new(&self.skopeo);
        command.args(["--insecure-policy", "copy", "--dest-tls-verify=false"]);
        if all {
            command.arg("--all");
        }
        if let Some((user, password)) = self.setup.basic_auth {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        command
            .arg(source)
            .arg(format!("docker://{}/{destination}", self.address))
            // skopeo keeps its temporary files here, not in the shared /var/tmp.
            .env("TMPDIR", self.dir.path());
        run(&mut command);
    }

    /// Pushes an image of `layers` (tar, compression) with the default config (linux,
    /// amd64) as `destination` (`REPO:TAG`); the digests (`sha256:...`) of the layer blobs
    /// as the registry holds them (skopeo compresses an uncompressed layer on its way in).
    pub fn push_layers(
        &self,
        layers: &[(Vec<u8>, vpod_image::oci::writer::LayerCompression)],
        destination: &str,
    ) -> Vec<String> {
        use vpod_image::oci::writer::{encode_layer, OciLayoutWriter};
        let dir = tempfile::tempdir().expect("temporary directory");
        let writer = OciLayoutWriter::create(dir.path()).expect("create layout");
        let written: Vec<_> = layers
            .iter()
            .map(|(tar, compression)| {
                let layer = encode_layer(tar, *compression).expect("encode layer");
                writer.write_layer(&layer).expect("write layer")
            })
            .collect();
        let manifest = writer
            .write_image(Default::default(), &written, Some("v1"))
            .expect("write image");
        writer.write_index(vec![manifest]).expect("write index");
        self.push(
            &format!("oci:{}:v1", dir.path().display()),
            destination,
            false,
        );
        self.layer_digests(destination)
    }

    /// The layer digests of the manifest tagged `REPO:TAG`, read from the registry's storage.
    pub fn layer_digests(&self, reference: &str) -> Vec<String> {
        let (repository, tag) = reference.rsplit_once(':').expect("REPO:TAG");
        let link = self
            .dir
            .path()
            .join("storage/docker/registry/v2/repositories")
            .join(repository)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link");
        let manifest: Digest = std::fs::read_to_string(&link)
            .expect("the tag's link")
            .trim()
            .parse()
            .expect("a digest");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.blob_data_path(&manifest)).unwrap())
                .expect("the manifest's JSON");
        manifest["layers"]
            .as_array()
            .expect("a manifest with layers")
            .iter()
            .map(|layer| layer["digest"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// The certificate it serves (its own CA), when it serves TLS.
    pub fn ca_certificate(&self) -> PathBuf {
        assert!(self.setup.tls, "this registry serves plain HTTP");
        self.dir.path().join("cert.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // Child::kill signals this very PID; the TempDir is removed after.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
