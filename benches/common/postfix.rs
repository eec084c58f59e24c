//! A private Postfix instance for the SMTP bench: its own configuration,
//! queue directory and port, started in the foreground and stopped by the
//! bench. Every message is put on hold as it is received (HOLD at the DATA
//! stage), so it stays in the durable hold queue (cleanup fsyncs each queue
//! file before the 250) and nothing is delivered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    config: PathBuf,
    child: Child,
}

/// Installs Debian's postfix when it is missing (the bench runs as root, as the suite does).
fn ensure_installed() -> bool {
    if Path::new("/usr/sbin/postfix").exists() {
        return true;
    }
    eprintln!("postfix is missing; installing it with apt-get");
    Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null")
        .status()
        .is_ok_and(|s| s.success())
        && Path::new("/usr/sbin/postfix").exists()
}

impl Postfix {
    /// Starts an instance in `dir` on a free port; `None` if Postfix cannot run here.
    pub fn start(dir: &Path, port: u16) -> Option<Postfix> {
        if !ensure_installed() {
            return None;
        }
        let config = dir.join("etc");
        let data = dir.join("data");
        let queue = dir.join("queue");
        for d in [&config, &data, &queue] {
            std::fs::create_dir_all(d).ok()?;
        }
        // The data directory belongs to the mail owner.
        Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .ok()?;
        std::fs::write(
            config.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {queue}\n\
                 data_directory = {data}\n\
                 myhostname = bench.local\n\
                 mydestination =\n\
                 inet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject\n\
                 relay_domains = amqp\n\
                 alias_maps =\n\
                 alias_database =\n\
                 local_recipient_maps =\n\
                 smtpd_data_restrictions = check_client_access static:HOLD\n",
                queue = queue.display(),
                data = data.display()
            ),
        )
        .ok()?;
        // smtpd, qmgr and the services reception needs; every message is put
        // on hold, so it stays queued and nothing is delivered.
        std::fs::write(
            config.join("master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 cleanup   unix n - n - 0 cleanup\n\
                 rewrite   unix - - n - - trivial-rewrite\n\
                 anvil     unix - - n - 1 anvil\n\
                 scache    unix - - n - 1 scache\n\
                 bounce    unix - - n - 0 bounce\n\
                 defer     unix - - n - 0 bounce\n\
                 trace     unix - - n - 0 bounce\n\
                 verify    unix - - n - 1 verify\n\
                 proxymap  unix - - n - - proxymap\n\
                 qmgr      unix n - n 300 1 qmgr\n"
            ),
        )
        .ok()?;
        let child = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&config)
            .arg("start-fg")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let pf = Postfix { config, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(pf)
    }

    /// CPU seconds the instance has used: every live process under it, and
    /// the children it has reaped.
    pub fn cpu_secs(&self) -> f64 {
        let mut procs: Vec<(u32, u32, f64, f64)> = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let ppid = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            procs.push((pid, ppid, num(11) + num(12), num(13) + num(14)));
        }
        let mut mine = vec![self.child.id()];
        let mut ticks = 0.0;
        while let Some(p) = mine.pop() {
            for (pid, ppid, own, reaped) in &procs {
                if *pid == p {
                    ticks += own + reaped;
                }
                if *ppid == p {
                    mine.push(*pid);
                }
            }
        }
        ticks / 100.0
    }

    /// Messages in its durable hold queue.
    pub fn queued(&self, dir: &Path) -> usize {
        std::fs::read_dir(dir.join("queue/hold"))
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
