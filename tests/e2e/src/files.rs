//! A local HTTP server for image imports (`fixtures/images.py`, Python's standard library): files from a
//! directory on loopback, at a chosen rate so progress can be watched, and cut-off downloads on request.

use crate::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct HttpFiles {
    child: Child,
    pub port: u16,
}

impl HttpFiles {
    /// Serves `dir` at `rate` bytes per second; returns once it answers.
    pub fn start(dir: &Path, rate: u64) -> HttpFiles {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images.py");
        let port = free_port();
        let child = Command::new("python3")
            .arg(script)
            .arg(dir)
            .args([port.to_string(), rate.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 (the test HTTP server) is needed: apt-get install python3");
        let up = crate::eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        assert!(up.is_some(), "the test HTTP server did not start on port {port}");
        HttpFiles { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for HttpFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
