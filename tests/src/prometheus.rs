//! A real Prometheus server (Debian's `prometheus`) scraping the agent's
//! /metrics on loopback every second, and its HTTP query API.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{wait_port, Proc, TempDir};

pub struct Prometheus {
    pub port: u16,
    _proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on `port`, scraping `target` (host:port).
    pub fn start(port: u16, target: &str) -> Self {
        let dir = TempDir::new("prometheus");
        let conf = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let conf_path = dir.0.join("prometheus.yml");
        std::fs::write(&conf_path, conf).expect("prometheus.yml");
        let proc = Proc::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", conf_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_port(port);
        // The port opens before the TSDB is ready (503 until then).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("curl")
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/-/ready"))
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "Prometheus never became ready");
            thread::sleep(Duration::from_millis(200));
        }
        Self {
            port,
            _proc: proc,
            _dir: dir,
        }
    }

    /// An instant query's result vector (`data.result`); panics on an API
    /// error, with the error.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "-G", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of a query with one series.
    pub fn value(&self, expr: &str) -> f64 {
        let r = self.query(expr);
        assert_eq!(r.len(), 1, "{expr}: one series expected: {r:#?}");
        r[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{expr}: {r:#?}"))
    }

    /// Waits until `expr` returns exactly `want` (scrapes are 1 s apart).
    pub fn wait_value(&self, expr: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(expr);
            let v = r
                .first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
            if v == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} never reached {want}: {r:#?}"
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}
