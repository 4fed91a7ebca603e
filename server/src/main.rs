//! `fedfuse-server`: the platform's command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fedfuse_server::pki::{self, InitOptions, PlatformDir};

/// The fedfuse aggregator and the platform's certificate tooling.
///
/// A federation starts with `init`, which creates the platform CA and the aggregator's
/// certificate. Each partner store then gets a bundle from `issue-store`; hand it to the store
/// over a secure channel. A store whose key leaks, or who leaves, is cut off by `revoke-store`.
#[derive(Parser)]
#[command(name = "fedfuse-server", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a platform directory: CA, aggregator key and certificate, empty revocation list,
    /// store registry, and a commented config.toml.
    ///
    /// Example: fedfuse-server init --dir platform/ --aggregator-name agg.example.com --san 10.0.0.5
    Init {
        /// Directory to create or fill; private keys inside are written with mode 0600.
        #[arg(long)]
        dir: PathBuf,
        /// The name stores verify the aggregator's certificate against.
        #[arg(long, default_value = fedfuse_server::config::DEFAULT_AGGREGATOR_NAME)]
        aggregator_name: String,
        /// Extra DNS names or IP addresses for the aggregator certificate (repeatable).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1", "::1"])]
        extra_names: Vec<String>,
        /// Organisation name in the CA certificate.
        #[arg(long, default_value = "fedfuse platform")]
        platform_name: String,
        /// Replace an existing CA. Every bundle issued under the old CA stops working.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate to a partner store and write its bundle (key, certificate, CA).
    ///
    /// Example: fedfuse-server issue-store --dir platform/ --store berlin-01 --out berlin-01.bundle.toml
    IssueStore {
        #[arg(long)]
        dir: PathBuf,
        /// The store's name: 1-64 of a-z, 0-9, '-', '_'. It becomes the certificate's common
        /// name, which is how the aggregator knows the store.
        #[arg(long)]
        store: String,
        /// Where to write the bundle (mode 0600: it holds the store's private key).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a store's certificate: its serial goes on the CRL, and the aggregator refuses it
    /// from the next handshake on.
    RevokeStore {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Init {
            dir,
            aggregator_name,
            extra_names,
            platform_name,
            force,
        } => {
            let opts = InitOptions {
                platform_name,
                aggregator_name,
                extra_names,
                force,
                ..InitOptions::default()
            };
            pki::init(&dir, &opts).with_context(|| format!("initialising {}", dir.display()))?;
            println!("platform created in {}", dir.display());
            println!(
                "next: fedfuse-server issue-store --dir {} --store NAME --out NAME.bundle.toml",
                dir.display()
            );
        }
        Command::IssueStore { dir, store, out, days } => {
            let platform = PlatformDir::open(&dir)?;
            let bundle = platform.issue_store(&store, days)?;
            bundle.save(&out)?;
            println!(
                "issued store {store:?} (valid {days} days): bundle written to {}",
                out.display()
            );
        }
        Command::RevokeStore { dir, store } => {
            PlatformDir::open(&dir)?.revoke_store(&store)?;
            println!("revoked store {store:?}; {} updated", dir.join(pki::CRL).display());
        }
    }
    Ok(())
}
