//! Child processes of a run: start one with its output in a log file, wait until it answers HTTP,
//! stop it (SIGTERM, then SIGKILL), and list its process tree for the /proc readings.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// A running program that the harness started and will stop, also when it unwinds.
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Service {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(BenchError::io(format!("open {}", log.display())))?;
        let err = out.try_clone().map_err(BenchError::io("dup log file"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(BenchError::io(format!("start {name} ({:?})", command.get_program())))?;
        Ok(Self { name: name.to_owned(), log, child: Some(child) })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process and all its descendants (nginx's workers are children of its master).
    pub fn pids(&self) -> Vec<u32> {
        let root = self.pid();
        if root == 0 {
            return Vec::new();
        }
        let parents = parent_map();
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
            i += 1;
        }
        tree
    }

    /// The exit status, if the program has already ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id() as libc::pid_t;
        // SIGTERM first so nginx's master takes its workers down and caches are closed cleanly.
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} ignored SIGTERM for 10 s; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// pid → parent pid for every process, from /proc/<pid>/stat.
fn parent_map() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// A loopback port that was free a moment ago (the programs we start take a port number, not 0).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(BenchError::io("bind 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(BenchError::io("local_addr"))?.port())
}

/// Polls `url` until it answers with any status below 500; gives up early if the program exits.
pub async fn wait_ready(client: &reqwest::Client, url: &str, service: &mut Service) -> Result<()> {
    let timeout = Duration::from_secs(30);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = service.exited() {
            let log = fs::read_to_string(&service.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(BenchError::Other(format!(
                "{} exited ({status}) before answering; last lines of {}:\n{}",
                service.name,
                service.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if let Ok(resp) = client.get(url).send().await
            && resp.status().as_u16() < 500
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BenchError::NotReady(service.name.clone(), timeout, service.log.clone()))
}

/// The absolute path of a program the run needs, or a clear error.
pub fn require_program(path: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        return if p.exists() { Ok(p) } else { Err(BenchError::MissingProgram(path.to_owned())) };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| BenchError::MissingProgram(path.to_owned()))
}

/// First line of a program's version output (stdout or stderr: nginx prints to stderr).
pub fn version_of(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        }
        Err(_) => "unknown".to_owned(),
    }
}
