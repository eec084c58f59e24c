//! A private RabbitMQ node per test binary (or per test that kills it): own
//! port, data dir, node name and Erlang cookie home.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

pub struct Broker {
    pub port: u16,
    /// With `private_tls`: the amqps:// port and the CA that signed its certificate.
    pub tls_port: Option<u16>,
    dist_port: u16,
    node: String,
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    /// The ports stay this broker's across a kill and restart.
    _leases: Vec<std::fs::File>,
}

/// Brokers take their ports from below the kernel's ephemeral range (so no
/// `free_port()` of a relay or an "unreachable" URL lands on one), each held
/// by a lock file for the broker's lifetime: a killed broker's port cannot be
/// taken by another test process's broker before it restarts.
const BROKER_PORTS: std::ops::Range<u16> = 20_000..30_000;

fn lease_port() -> (u16, std::fs::File) {
    let dir = std::env::temp_dir().join("amqp-relay-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lease directory");
    let span = BROKER_PORTS.end - BROKER_PORTS.start;
    let start = (std::process::id() as u16).wrapping_mul(7919) % span;
    for i in 0..span {
        let port = BROKER_PORTS.start + (start + i) % span;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("open a port lease file");
        if file.try_lock().is_ok() && port_is_free(port) {
            return (port, file);
        }
    }
    panic!("no free broker port in {BROKER_PORTS:?}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Installs rabbitmq-server from Debian when it is missing.
fn ensure_installed() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if Path::new(SERVER).exists() {
            return;
        }
        eprintln!("rabbitmq-server is missing; installing it with apt-get");
        let ok = Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok && Path::new(SERVER).exists(), "could not install rabbitmq-server");
    });
}

impl Broker {
    /// The broker on 5672, which the seed policy's `amqp://localhost` reaches; shared by the binary.
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(|| {
            // Test runners that run each test in its own process (nextest) would race
            // for 5672: the lock, held until this process exits, serialises them.
            let lock =
                std::fs::File::create(std::env::temp_dir().join("amqp-relay-tests-5672.lock"))
                    .expect("create the shared-broker lock file");
            lock.lock().expect("lock the shared-broker lock file");
            std::mem::forget(lock);
            // A previous run's node is killed by its watchdog within a second or two.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let free = loop {
                if port_is_free(5672) {
                    break true;
                }
                if std::time::Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            assert!(
                free,
                "port 5672 is taken: the seed policy connects to amqp://localhost, so the tests \
                 start their own broker there; stop whatever listens on 5672"
            );
            Broker::start_on(None, false)
        })
    }

    /// A broker of the test's own, on a free port.
    pub fn private() -> Broker {
        Broker::start_on(Some(lease_port()), false)
    }

    /// A broker of the test's own with an amqps:// listener too, its
    /// certificate (for localhost and 127.0.0.1) signed by a fresh CA.
    pub fn private_tls() -> Broker {
        Broker::start_on(Some(lease_port()), true)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// `n` nodes of one RabbitMQ cluster, each on leased ports with its own
    /// data directory, sharing one Erlang cookie; the others joined to the first.
    pub fn cluster(n: usize) -> Vec<Broker> {
        let cookie = format!("RELAYTESTCOOKIE{}", std::process::id());
        let nodes: Vec<Broker> = (0..n)
            .map(|_| Broker::start_with(Some(lease_port()), false, Some(&cookie)))
            .collect();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &nodes[0].node]);
            node.ctl(&["start_app"]);
        }
        nodes
    }

    /// On a leased port, or (None) on 5672, which the shared-broker lock guards.
    fn start_on(lease: Option<(u16, std::fs::File)>, tls: bool) -> Broker {
        Broker::start_with(lease, tls, None)
    }

    /// As `start_on`, with the Erlang cookie `cookie` (nodes of one cluster share it).
    fn start_with(lease: Option<(u16, std::fs::File)>, tls: bool, cookie: Option<&str>) -> Broker {
        ensure_installed();
        let mut leases = Vec::new();
        let port = match lease {
            Some((port, file)) => {
                leases.push(file);
                port
            }
            None => 5672,
        };
        let mut lease = || {
            let (port, file) = lease_port();
            leases.push(file);
            port
        };
        let tls_port = tls.then(&mut lease);
        let dist_port = lease();
        let dir = tempfile::Builder::new()
            .prefix("amqp-relay-rabbit-")
            .tempdir()
            .expect("temp dir");
        let b = Broker {
            port,
            tls_port,
            dist_port,
            node: format!("relaytest{port}x{}@localhost", std::process::id()),
            dir,
            child: Mutex::new(None),
            _leases: leases,
        };
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\nlog.console = false\nloopback_users = none\n"
        );
        if let Some(tls_port) = b.tls_port {
            make_certs(b.dir.path());
            let p = |n: &str| b.path(n).display().to_string();
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                p("ca.pem"),
                p("server.pem"),
                p("server.key")
            ));
        }
        std::fs::write(b.path("rabbitmq.conf"), conf).unwrap();
        std::fs::write(b.path("enabled_plugins"), "[].\n").unwrap();
        if let Some(cookie) = cookie {
            use std::os::unix::fs::PermissionsExt;
            let file = b.path(".erlang.cookie");
            std::fs::write(&file, cookie).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        b.boot();
        b
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.dir.path())
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.path("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.path("pid"));
    }

    fn boot(&self) {
        let _ = std::fs::remove_file(self.path("pid"));
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start rabbitmq-server");
        *self.child.lock().unwrap() = Some(child);
        // The pid file appears once beam starts; `wait` then blocks until the node is up.
        let mut ctl = Command::new(CTL);
        self.env(&mut ctl);
        let status = ctl
            .args(["-n", &self.node, "wait", "--timeout", "90"])
            .arg(self.path("pid"))
            .stdout(Stdio::null())
            .status()
            .expect("rabbitmqctl wait");
        assert!(
            status.success(),
            "rabbitmq node {} did not start",
            self.node
        );
        self.watchdog();
    }

    /// Kills the node if the test process dies without cleaning up.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 $(cat '{pid}') 2>/dev/null",
            parent = std::process::id(),
            pid = self.path("pid").display()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    pub fn beam_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.path("pid"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    pub fn kill9(&self) {
        if let Some(pid) = self.beam_pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The port is closed once beam is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "broker still answers after kill -9"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes the broker's metadata log to disk (queue declarations, which
    /// RabbitMQ 3.x logs through Mnesia and may still hold in memory for a
    /// moment): a `kill -9` right after declaring a durable queue would
    /// otherwise lose the queue, which is not what the tests are about.
    pub fn sync_metadata(&self) {
        self.ctl(&["eval", "mnesia:sync_log()."]);
    }

    pub fn restart(&self) {
        self.boot();
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl` against this node and returns what it printed.
    pub fn ctl_output(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .args(["-n", &self.node, "-q"])
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `rabbitmqctl` against this node; panics with its output on failure.
    pub fn ctl(&self, args: &[&str]) {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .args(["-n", &self.node])
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A virtual host the guest user may use, created on first call.
    pub fn vhost(&self, name: &str) -> String {
        self.ctl(&["add_vhost", name]);
        self.ctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
        format!("amqp://guest:guest@127.0.0.1:{}/{name}", self.port)
    }

    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default())
            .await
            .expect("test client connects to the broker")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh CA (`ca.pem`) and a server certificate for localhost and
/// 127.0.0.1 (`server.pem`, `server.key`) signed by it, in `dir`.
pub fn make_certs(dir: &Path) {
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=amqp-relay-test-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null
chmod 644 server.key
"#;
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "openssl could not make test certificates");
}
