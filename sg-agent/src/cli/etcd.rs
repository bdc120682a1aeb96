//! `sg-agent push FILE --etcd URL` and `sg-agent pull --etcd URL`: the VPC
//! description that every host's agent follows, kept in etcd.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    config,
    source::etcd::{self, EtcdError, EtcdOptions},
};

/// Where the description is kept: shared by `run`, `push` and `pull`.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, comma-separated (e.g.
    /// http://10.0.0.5:2379,http://10.0.0.6:2379).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix: the description is PREFIX/vpc.
    #[arg(long, value_name = "PREFIX", default_value = "/sg-agent")]
    pub etcd_prefix: String,
    /// The CA certificate (PEM) that signed etcd's server certificate
    /// (https:// URLs).
    #[arg(long, value_name = "PATH")]
    pub etcd_cacert: Option<PathBuf>,
    /// This client's certificate (PEM), for etcd's client-certificate
    /// authentication; with --etcd-key.
    #[arg(long, value_name = "PATH", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// This client's private key (PEM); with --etcd-cert.
    #[arg(long, value_name = "PATH", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user and password, as `USER:PASSWORD` (etcdctl's --user).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub etcd_user: Option<String>,
}

impl EtcdArgs {
    pub fn options(&self) -> EtcdOptions {
        let (user, password) = match self.etcd_user.as_deref().map(|u| u.split_once(':')) {
            Some(Some((u, p))) => (Some(u.to_owned()), Some(p.to_owned())),
            Some(None) => (self.etcd_user.clone(), None),
            None => (None, None),
        };
        EtcdOptions {
            endpoints: self.etcd.clone(),
            prefix: self.etcd_prefix.clone(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user,
            password,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The rules file to publish: validated here first, as `check` does
    /// (every node's instances).
    file: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The largest rules file read, in bytes.
    #[arg(long, default_value_t = crate::config::MAX_BYTES)]
    max_config_bytes: u64,
    /// Let this description stop enforcing more instances at once than
    /// the hosts allow otherwise (`run --etcd-max-detach`): it is marked
    /// so, on its first line.
    #[arg(long)]
    allow_detach: bool,
    /// Replace whatever the key holds, even a value that is not a
    /// description (not UTF-8): the way out of a key written by something
    /// else.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime")
}

/// Exit status 1 for everything that went wrong, said on stderr.
fn fail(e: &EtcdError) -> ExitCode {
    eprintln!("{}", super::error_chain(e));
    ExitCode::from(1)
}

pub fn push(args: &PushArgs) -> ExitCode {
    if args.etcd.etcd.is_empty() {
        eprintln!("push needs --etcd URL: where the description is kept");
        return ExitCode::from(2);
    }
    // The very test `check` applies, before anything is sent: a file that
    // does not validate reaches no host.
    let Ok((vpc, text)) = super::check::load(&args.file, args.max_config_bytes, true) else {
        return ExitCode::from(1);
    };
    if let Some(warnings) = config::render_warnings(&args.file, &text, &vpc, true) {
        eprintln!("{warnings}");
    }
    // The mark is the pusher's to give: one in the file is not kept.
    let body: String = if etcd::allows_detach(&text) {
        text.split_once('\n')
            .map_or("", |(_, rest)| rest)
            .to_owned()
    } else {
        text.clone()
    };
    let text = if args.allow_detach {
        format!("{}\n{body}", etcd::ALLOW_DETACH)
    } else {
        body
    };
    let opts = args.etcd.options();
    runtime().block_on(async {
        let result = async {
            let mut client = etcd::connect(&opts).await?;
            let (current, read_revision) = match etcd::read(&mut client, &opts).await {
                Ok((current, _)) => {
                    let revision = current.as_ref().map_or(0, |c| c.mod_revision);
                    (current, revision)
                }
                Err(EtcdError::NotText { revision, .. }) if args.force => (None, revision),
                Err(e) => return Err(e),
            };
            if current.as_ref().is_some_and(|c| c.text == text) {
                return Ok(None);
            }
            etcd::compare_and_put(&mut client, &opts, read_revision, &text)
                .await
                .map(Some)
        }
        .await;
        match result {
            Ok(Some(revision)) => {
                println!(
                    "pushed {} to {} at revision {revision} ({} bytes, {} instances, {} security groups)",
                    args.file.display(),
                    opts.key(),
                    text.len(),
                    vpc.instances.len(),
                    vpc.groups.len()
                );
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("{} already holds this description: nothing pushed", opts.key());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

pub fn pull(args: &PullArgs) -> ExitCode {
    if args.etcd.etcd.is_empty() {
        eprintln!("pull needs --etcd URL: where the description is kept");
        return ExitCode::from(2);
    }
    let opts = args.etcd.options();
    runtime().block_on(async {
        let result = async {
            let mut client = etcd::connect(&opts).await?;
            etcd::read(&mut client, &opts).await
        }
        .await;
        match result {
            Ok((Some(snapshot), _)) => {
                print!("{}", snapshot.text);
                eprintln!("{} at revision {}", opts.key(), snapshot.mod_revision);
                // What the agents would make of it.
                if let Err(d) =
                    config::from_str(&std::path::PathBuf::from(opts.display()), &snapshot.text)
                {
                    eprintln!(
                        "this is not a valid description: every agent keeps the policy it had \
                         (revision {}); fix it and `sg-agent push FILE`:\n{}",
                        snapshot.mod_revision,
                        d.brief()
                    );
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Ok((None, _)) => fail(&EtcdError::Missing(opts.key())),
            Err(e) => fail(&e),
        }
    })
}
