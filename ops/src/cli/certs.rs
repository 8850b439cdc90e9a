//! `tally certs init`: a cluster's TLS material, made the way `tally dev` makes its own
//! (`tally_common::transport::generate_cluster_certs`): a private cluster CA (`ca.pem`,
//! `ca.key`), a node certificate (`node.pem`, `node.key`: the name `tally-node` that clients
//! verify, plus the given hosts) and a client certificate (`client.pem`, `client.key`), all
//! signed by the CA. Keys are written readable by the owner only. Existing files are never
//! overwritten unless `--force` is given, and then only these six are replaced.

use std::path::PathBuf;

use anyhow::Context as _;
use tally_common::transport::generate_cluster_certs;

/// The files `certs init` writes.
pub const CERT_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "node.pem",
    "node.key",
    "client.pem",
    "client.key",
];

/// `tally certs init` arguments.
#[derive(Debug, clap::Args)]
pub struct CertsInitArgs {
    /// Directory to write the certificates to (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// The cluster's name (in the CA's subject).
    #[arg(long, default_value = "tally")]
    pub cluster: String,
    /// Host names or IP addresses the node certificate also names (repeatable).
    #[arg(long = "host", default_values_t = ["127.0.0.1".to_owned(), "localhost".to_owned()])]
    pub hosts: Vec<String>,
    /// Replace certificates that exist already.
    #[arg(long)]
    pub force: bool,
}

pub fn init(args: CertsInitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.cluster.trim().is_empty(),
        "--cluster must not be empty"
    );
    anyhow::ensure!(!args.hosts.is_empty(), "give at least one --host");
    let existing: Vec<&str> = CERT_FILES
        .iter()
        .copied()
        .filter(|f| args.dir.join(f).exists())
        .collect();
    if !existing.is_empty() {
        anyhow::ensure!(
            args.force,
            "{} already holds {}: not overwriting (--force replaces them)",
            args.dir.display(),
            existing.join(", ")
        );
        for f in existing {
            let path = args.dir.join(f);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    generate_cluster_certs(&args.dir, &args.cluster, &args.hosts)
        .with_context(|| format!("cannot create certificates in {}", args.dir.display()))?;
    println!(
        "certificates for cluster {:?} in {}: ca.pem, node.pem/node.key (for every node's \
         certs_dir), client.pem/client.key (for clients: --certs {})",
        args.cluster,
        args.dir.display(),
        args.dir.display()
    );
    Ok(())
}
