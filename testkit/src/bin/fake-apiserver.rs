//! `fake-apiserver --port N --kubeconfig PATH [--load FILE]… [--bookmark-interval-ms N]
//! [--history-limit N]`: the stand-in Kubernetes API server of `testkit::apiserver`, on
//! `127.0.0.1:N` (0: any free port) until killed. Writes a kubeconfig for it to PATH, loads
//! objects from JSON or YAML files, and prints `listening on http://127.0.0.1:PORT` once ready.
//! Drive it through the Kubernetes API or `/_control/` (`POST /_control/apply`, …).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use testkit::apiserver::{ApiServer, ApiServerConfig, parse_documents};

const USAGE: &str = "usage: fake-apiserver --port N --kubeconfig PATH [--load FILE.yaml|json]... \
                     [--bookmark-interval-ms N] [--history-limit N] [--no-default-namespaces]";

struct Args {
    port: u16,
    kubeconfig: PathBuf,
    load: Vec<PathBuf>,
    config: ApiServerConfig,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut port = None;
    let mut kubeconfig = None;
    let mut load = Vec::new();
    let mut config = ApiServerConfig::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--port" => port = Some(value()?.parse::<u16>().context("--port")?),
            "--kubeconfig" => kubeconfig = Some(PathBuf::from(value()?)),
            "--load" => load.push(PathBuf::from(value()?)),
            "--bookmark-interval-ms" => {
                config.bookmark_interval = Duration::from_millis(value()?.parse().context("--bookmark-interval-ms")?)
            }
            "--history-limit" => config.history_limit = value()?.parse().context("--history-limit")?,
            "--no-default-namespaces" => config.default_namespaces = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        port: port.with_context(|| format!("--port is required\n{USAGE}"))?,
        kubeconfig: kubeconfig.with_context(|| format!("--kubeconfig is required\n{USAGE}"))?,
        load,
        config,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let server = ApiServer::with_config(args.config);
    for file in &args.load {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let docs = parse_documents(&text).with_context(|| format!("parsing {}", file.display()))?;
        let n = server
            .load(docs)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", file.display()))?;
        eprintln!("loaded {n} objects from {}", file.display());
    }
    let running = server.serve_at(args.port, Some(&args.kubeconfig))?;
    println!("listening on {}", running.url());
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
