//! The kernels of the matrix: Debian cloud kernels, fetched as packages
//! with `apt-get download` (no change to the system's apt sources) and
//! unpacked into the cache once.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{
    setup::tools_dir,
    util::{output, run},
};

/// One kernel line of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec {
    /// Short name, as given to `--kernel`.
    pub name: &'static str,
    /// Package-name regex for `apt-cache search --names-only`; the highest
    /// version wins, so the matrix follows Debian's security updates.
    pub package: &'static str,
    /// Where it is used (for the report).
    pub fleets: &'static str,
    /// Which apt to ask: the system's, or a private state for an older
    /// Debian suite (the system's sources stay untouched).
    pub suite: Suite,
    /// `bpf_loop` (5.17) is there: context injection and the HTTP/2
    /// frame walk must load and work.
    pub injection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    System,
    /// A Debian release other than the host's, by code name.
    Other(&'static str),
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        fleets: "Debian 12, Amazon Linux 2023",
        suite: Suite::System,
        injection: true,
    },
    KernelSpec {
        name: "6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        fleets: "Debian 12 backports, Debian 13",
        suite: Suite::System,
        injection: true,
    },
    KernelSpec {
        name: "5.10",
        package: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
        fleets: "Debian 11, Amazon Linux 2",
        suite: Suite::Other("bullseye"),
        injection: false,
    },
];

fn cache() -> PathBuf {
    tools_dir().join("kernels")
}

/// The system's Debian mirrors from its deb822 sources: (archive,
/// security), found by the suites they serve.
fn system_mirrors() -> anyhow::Result<(String, String)> {
    let mut text = String::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                text.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
                text.push_str("\n\n");
            }
        }
    }
    let (mut archive, mut security) = (None, None);
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(uri), Some(suites)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        let uri = uri.split_whitespace().next().unwrap_or_default().to_owned();
        if suites.split_whitespace().any(|s| s.ends_with("-security")) {
            security.get_or_insert(uri);
        } else {
            archive.get_or_insert(uri);
        }
    }
    match (archive, security) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => bail!("no Debian archive and security sources in /etc/apt/sources.list.d"),
    }
}

/// apt options for a private state of `suite` (created and refreshed on
/// first use), on the system's mirrors.
fn private_apt(suite: &str) -> anyhow::Result<Vec<String>> {
    let dir = cache().join(format!("apt-{suite}"));
    let list = dir.join("sources.list");
    let opts = vec![
        format!("-oDir::State={}", dir.join("state").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        format!("-oDir::Etc::SourceList={}", list.display()),
        "-oDir::Etc::SourceParts=/nonexistent".to_owned(),
        "-oDir::State::status=/var/lib/dpkg/status".to_owned(),
    ];
    if !dir.join("state/lists").exists() {
        fs::create_dir_all(dir.join("state/lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let (archive, security) = system_mirrors()?;
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        fs::write(
            &list,
            format!(
                "deb [signed-by={key}] {archive} {suite} main\n\
                 deb [signed-by={key}] {security} {suite}-security main\n"
            ),
        )?;
        run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    }
    Ok(opts)
}

fn apt_options(spec: &KernelSpec) -> anyhow::Result<Vec<String>> {
    match spec.suite {
        Suite::System => Ok(Vec::new()),
        Suite::Other(s) => private_apt(s),
    }
}

/// Packages matching `spec.package`, newest first.
fn package_names(spec: &KernelSpec, opts: &[String]) -> anyhow::Result<Vec<String>> {
    let found = output(Command::new("apt-cache").args(opts).args([
        "search",
        "--names-only",
        spec.package,
    ]))?;
    let mut names: Vec<String> = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort_by(|a, b| version_cmp(b, a));
    if names.is_empty() {
        bail!(
            "no package matches {} (run `apt-get update` once?)",
            spec.package
        );
    }
    Ok(names)
}

/// Compares package names by their numeric runs, as `sort -V` does.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut num = String::new();
        let mut text = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                if !num.is_empty() {
                    out.push((num.parse().unwrap_or(0), std::mem::take(&mut text)));
                    num.clear();
                }
                text.push(c);
            }
        }
        out.push((num.parse().unwrap_or(0), text));
        out
    }
    parts(a).cmp(&parts(b))
}

/// The kernel image of `spec` (package name, vmlinuz), downloading and
/// unpacking it if needed. The newest package is tried first; a mirror
/// that lacks it (its index is newer than its pool) falls back to the
/// next.
pub fn fetch(spec: &KernelSpec) -> anyhow::Result<(String, PathBuf)> {
    let opts = apt_options(spec)?;
    let names = package_names(spec, &opts)?;
    for pkg in names.iter().take(4) {
        let dir = cache().join(pkg);
        if let Some(v) = find_vmlinuz(&dir) {
            return Ok((pkg.clone(), v));
        }
    }
    for pkg in names.iter().take(4) {
        let dir = cache().join(pkg);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Err(e) = run(Command::new("apt-get")
            .args(&opts)
            .args(["download", "-q", pkg])
            .current_dir(&dir))
        {
            eprintln!("matrix: {pkg} not downloadable ({e}); trying an older one");
            let _ = fs::remove_dir_all(&dir);
            continue;
        }
        let deb = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        run(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' ./boot && rm -f '{}'",
            deb.display(),
            dir.display(),
            deb.display()
        )))?;
        let v = find_vmlinuz(&dir).context("no vmlinuz in the package")?;
        return Ok((pkg.clone(), v));
    }
    bail!(
        "none of {:?} could be downloaded",
        &names[..names.len().min(4)]
    )
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_wins() {
        let mut v = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-10-cloud-amd64-unsigned",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], "linux-image-6.1.0-57-cloud-amd64-unsigned");
    }
}
