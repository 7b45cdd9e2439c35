//! One guest of the matrix: an initramfs of our own (busybox, the agent,
//! nginx, nghttpd and nghttp, and the shared libraries they need) booted under qemu (TCG:
//! `/dev/kvm` is not usable here), which runs the agent twice (capture;
//! then with context injection) against nginx and busybox `wget` on the
//! guest's loopback, and prints the attach report and spans on its
//! serial console between markers.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util::{copy_under, run, shared_libraries, which};

/// Requests each phase makes to each server.
pub const REQUESTS: usize = 5;
/// Longest a guest may run (boot, two agent phases, power-off). TCG boots
/// a 6.x kernel in 8-40 s here.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

const NGINX_CONF: &str = "\
daemon off;
master_process off;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path /tmp;
    proxy_temp_path /tmp;
    fastcgi_temp_path /tmp;
    uwsgi_temp_path /tmp;
    scgi_temp_path /tmp;
    server {
        listen 127.0.0.1:8080;
        location / { return 200 \"ok\\n\"; }
    }
}
";

/// The guest's /init. Each phase: start the agent, wait for it to be
/// ready (or to fail), make the requests, stop it, print what it said.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /tmp /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "=== kernel $(uname -r)"
/nginx/nginx -p /nginx -c /nginx/nginx.conf &
mkdir -p /www && echo hello > /www/index.html
httpd -p 127.0.0.1:8081 -h /www
/h2/nghttpd --no-tls --address=127.0.0.1 -d /www 8082 &
sleep 1
phase() {{
  name=$1; shift
  # Degradation off: under software emulation the agent's CPU reads as
  # overload; the matrix checks loading and capture, not backing off.
  /tracer --output json --log-level info --degradation off "$@" > /tmp/spans.$name 2> /tmp/log.$name &
  pid=$!
  i=0
  while [ $i -lt 900 ]; do
    grep -q "tracer ready" /tmp/log.$name && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.2; i=$((i+1))
  done
  # busybox httpd sat in accept() since before the agent: that call's
  # entry was not seen (a documented limit), so its connection is not
  # counted. One request first puts it back in a traced accept().
  wget -q -O /dev/null http://127.0.0.1:8081/warm-up 2>/dev/null
  n=1
  while [ $n -le {REQUESTS} ]; do
    wget -q -O /dev/null http://127.0.0.1:8080/item/$n
    wget -q -O /dev/null http://127.0.0.1:8081/index.html
    /h2/nghttp -n http://127.0.0.1:8082/index.html
    n=$((n+1))
  done
  # A stripped Go program over its own TLS (Go's crypto/tls probes,
  # RET uprobes, goroutines growing their stacks), started after the
  # agent: requests begin once its probes are on.
  /tlsload -workers 2 -requests {REQUESTS} -delay 3s > /tmp/tlsload.$name 2>&1
  echo "=== tlsload $name $?"
  sleep 1
  kill -INT $pid 2>/dev/null
  wait $pid
  echo "=== exit $name $?"
  echo "=== log $name"; cat /tmp/log.$name
  echo "=== spans $name"; cat /tmp/spans.$name
  echo "=== end $name"
}}
phase capture
phase inject --inject-context on --cgroup-path /sys/fs/cgroup
echo "=== done"
poweroff -f
"#
    )
}

/// Shared libraries `bin` loads, from `ldd`.
/// Builds the initramfs (gzip'ed newc cpio) at `out`.
pub fn build_initramfs(agent: &Path, out: &Path) -> anyhow::Result<()> {
    let busybox = which("busybox")
        .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.exists()))
        .context("busybox-static is not installed")?;
    let nginx = PathBuf::from("/usr/sbin/nginx");
    // HTTP/2 (h2c) server and client: nghttp2's own.
    let h2 = [
        PathBuf::from("/usr/sbin/nghttpd"),
        PathBuf::from("/usr/bin/nghttp"),
    ];
    let root = out.with_extension("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "etc", "nginx", "h2", "sys/fs/cgroup"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(&busybox, root.join("bin/busybox"))?;
    fs::copy(agent, root.join("tracer"))?;
    fs::copy(
        crate::setup::build_go_program("tlsload")?,
        root.join("tlsload"),
    )?;
    fs::copy(&nginx, root.join("nginx/nginx"))?;
    fs::write(root.join("nginx/nginx.conf"), NGINX_CONF)?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    for bin in &h2 {
        let name = bin.file_name().context("nghttp2 binary name")?;
        fs::copy(bin, root.join("h2").join(name))
            .with_context(|| format!("copying {} (apt nghttp2-server/-client)", bin.display()))?;
    }
    for bin in [agent, nginx.as_path(), &h2[0], &h2[1]] {
        for lib in shared_libraries(bin)? {
            copy_under(&root, &lib)?;
        }
    }
    let init = root.join("init");
    fs::write(&init, init_script())?;
    run(Command::new("chmod").args(["0755"]).arg(&init))?;
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        out.display()
    )))?;
    let _ = fs::remove_dir_all(&root);
    Ok(())
}

/// The accelerator qemu can use: KVM where the host's KVM runs stock
/// kernels, else TCG (software emulation), with why.
pub fn accelerator() -> (&'static str, String) {
    let kvm = Path::new("/dev/kvm").exists();
    let stock = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    if kvm && stock {
        ("kvm", "KVM".to_owned())
    } else if kvm {
        (
            "tcg",
            "TCG (software emulation): /dev/kvm here is not a stock KVM (kvm_pvm)".to_owned(),
        )
    } else {
        ("tcg", "TCG (software emulation): no /dev/kvm".to_owned())
    }
}

/// Boots `kernel` with `initrd` and returns its console output (also
/// written to `console`, as far as it got, when the guest hangs).
pub fn boot(kernel: &Path, initrd: &Path, console: &Path) -> anyhow::Result<String> {
    let qemu = which("qemu-system-x86_64").context("qemu-system-x86 is not installed")?;
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "1536",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        // No network device: the guest only has its own loopback.
        .args(["-nic", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).replace('\r', "")
    });
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            fs::write(console, &out)?;
            bail!(
                "guest did not finish in {GUEST_TIMEOUT:?} (console in {})",
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = reader.join().unwrap_or_default();
    fs::write(console, &out)?;
    Ok(out)
}

/// What one agent phase in the guest printed.
#[derive(Debug, Default)]
pub struct Phase {
    pub exit: Option<i32>,
    pub log: String,
    pub spans: Vec<serde_json::Value>,
}

/// The section of `out` between `=== {tag} {name}` and the next marker.
fn section<'a>(out: &'a str, tag: &str, name: &str) -> &'a str {
    let start = format!("=== {tag} {name}\n");
    let Some(i) = out.find(&start) else {
        return "";
    };
    let rest = &out[i + start.len()..];
    let end = rest.find("\n=== ").map_or(rest.len(), |j| j + 1);
    &rest[..end]
}

pub fn phase(out: &str, name: &str) -> Phase {
    let exit = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("=== exit {name} ")))
        .and_then(|v| v.trim().parse().ok());
    Phase {
        exit,
        log: section(out, "log", name).to_owned(),
        spans: section(out, "spans", name)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_sections() {
        let out = "boot noise\n=== exit capture 0\n=== log capture\nline 1\nline 2\n=== spans capture\n{\"kind\":\"SERVER\"}\nnot json\n=== end capture\n";
        let p = phase(out, "capture");
        assert_eq!(p.exit, Some(0));
        assert_eq!(p.log, "line 1\nline 2\n");
        assert_eq!(p.spans.len(), 1);
        assert!(phase(out, "inject").exit.is_none());
    }
}
