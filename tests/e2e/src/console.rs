//! A guest's serial console through `kumo console` (the real CLI, through the API server), for tests that run
//! shell commands in the guest and read what they print.

use crate::{eventually, kumo_bin, Server};
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Console {
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    commands: u32,
}

impl Server {
    /// Opens `kumo console VMI`.
    pub fn console(&self, vmi: &str) -> Console {
        let mut child = Command::new(kumo_bin())
            .args(["console", vmi, "--kubeconfig"])
            .arg(self.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kumo console");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(String::new()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        Console { child, stdin, seen, reader: Some(reader), commands: 0 }
    }
}

impl Server {
    /// Runs `cmd` in the guest of `vmi` over its console and returns what it printed; panics (with what the
    /// console showed) if the guest does not answer within `timeout`.
    pub fn in_guest(&self, vmi: &str, cmd: &str, timeout: Duration) -> String {
        let mut c = self.console(vmi);
        let out = c.run(cmd, timeout);
        let seen = c.seen();
        let (_, stderr) = c.close();
        out.unwrap_or_else(|| panic!("the guest of {vmi} did not answer on its console: {stderr}\n{seen}"))
    }
}

impl Console {
    /// Everything the console printed so far.
    pub fn seen(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Types `line` (and a newline).
    pub fn send(&mut self, line: &str) {
        if let Err(e) = self.stdin.write_all(format!("{line}\n").as_bytes()) {
            // kumo console has ended: what it said is the reason.
            let _ = self.child.wait();
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            panic!("writing to kumo console: {e}; it said: {stderr}\nthe console showed: {}", self.seen());
        }
    }

    /// Waits until the output holds `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        eventually(timeout, || self.seen.lock().unwrap().contains(text).then_some(())).is_some()
    }

    /// Runs a shell command in the guest and returns what it printed (None if it did not finish in `timeout`).
    /// The output is framed by numbers the shell computes, so the echoed command line never matches them.
    /// What is typed while the guest still boots is lost, so a shell is first asked to answer.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        while self.framed("true", Duration::from_secs(2)).is_none() {
            if std::time::Instant::now() > deadline {
                return None;
            }
        }
        self.framed(cmd, deadline.saturating_duration_since(std::time::Instant::now()))
    }

    fn framed(&mut self, cmd: &str, timeout: Duration) -> Option<String> {
        self.commands += 1;
        let (start, end) = (700_000 + self.commands, 800_000 + self.commands);
        // The blank line first: busybox's console asks for Enter before it starts a shell.
        self.send(&format!("\necho @@$((700000+{n}))@@; {cmd}; echo @@$((800000+{n}))@@", n = self.commands));
        let (start, end) = (format!("@@{start}@@"), format!("@@{end}@@"));
        eventually(timeout, || {
            let seen = self.seen.lock().unwrap();
            let after = &seen[seen.rfind(&start)? + start.len()..];
            let out = &after[..after.find(&end)?];
            Some(without_guest_messages(out))
        })
    }

    /// Leaves with Ctrl-]: the exit status and what `kumo console` wrote to stderr.
    pub fn close(mut self) -> (ExitStatus, String) {
        let _ = self.stdin.write_all(&[0x1d]);
        let status = self.child.wait().expect("waiting for kumo console");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

/// A command's output without what the guest prints on its console by itself meanwhile: the test guest's
/// progress lines (`KUMO-GUEST: ...`) and kernel messages (`[   12.345678] ...`).
fn without_guest_messages(out: &str) -> String {
    let kernel = |l: &str| {
        l.strip_prefix('[').and_then(|r| r.split_once(']')).is_some_and(|(t, _)| t.trim().parse::<f64>().is_ok())
    };
    let lines: Vec<&str> =
        out.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.starts_with("KUMO-GUEST:") && !kernel(l)).collect();
    lines.join("\n").trim().to_string()
}
