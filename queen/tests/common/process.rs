//! The real `queen` binary as a child process: started with a command, its log read on
//! a thread, its listen address taken from the log; killed when dropped, however the
//! test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_proto::v1::fleet_client::FleetClient;
use rbee_proto::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

use super::DEADLINE;

/// The `queen` binary, serving.
pub struct QueenProcess {
    /// The child.
    pub child: Child,
    /// `http://ADDR` it serves on.
    pub url: String,
    /// Everything it logged.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for QueenProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QueenProcess {
    /// Runs `cmd` (a `queen serve` command) and waits until it serves.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("start the queen binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("queen serving")
                    && let Some(rest) = line.split("listen=").nth(1)
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => panic!("the queen did not serve: {:?}", log.lock().unwrap()),
        };
        Self { child, url: format!("http://{addr}"), log }
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill_9(&mut self) {
        let status = Command::new("kill").args(["-9", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    /// A Scheduler client.
    pub async fn scheduler(&self) -> SchedulerClient<Channel> {
        SchedulerClient::connect(self.url.clone()).await.unwrap()
    }

    /// A Fleet client.
    pub async fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::connect(self.url.clone()).await.unwrap()
    }

    /// True once it has logged `what`.
    pub fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    /// Waits until it has logged `what` (its log is read on another thread).
    pub async fn wait_logged(&self, what: &str) {
        self.wait_logged_within(what, DEADLINE).await;
    }

    /// Waits at most `within` until it has logged `what`.
    pub async fn wait_logged_within(&self, what: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.logged(what) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queen did not log {what:?} within {within:?}: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
