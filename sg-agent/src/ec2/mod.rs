//! The EC2 API endpoint (`run --ec2-api ADDR:PORT`): EC2's Query API for
//! security groups, their rules, the instances' groups, tags, the VPC and
//! prefix lists, and STS's `GetCallerIdentity`, so that the AWS CLI, the
//! SDKs and Terraform's AWS provider drive sg-agent unchanged.
//!
//! It never touches the data plane: a change edits the rules file
//! (`store`), which the agent admits and puts in force exactly as a hand
//! edit; the answer is sent once the kernel enforces it.

mod actions;
pub mod edit;
pub mod error;
mod http;
pub mod ids;
pub mod query;
pub mod sigv4;
pub mod store;
pub mod view;
pub mod xml;

use std::{net::SocketAddr, sync::Arc};

pub use http::{answer, bind, serve};
pub use store::{Applied, AskApply, Store};
pub use view::Account;

/// `run --ec2-api` and what comes with it.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub listen: SocketAddr,
    /// `--ec2-api-credentials`: the access keys accepted (signatures
    /// checked); `None` only on a loopback address, where any credentials
    /// are accepted, as the emulators do.
    pub credentials: Option<sigv4::Credentials>,
    pub account: Account,
}

impl ApiOptions {
    /// Refuses an endpoint off loopback without credentials to check.
    pub fn new(
        listen: SocketAddr,
        credentials: Option<&std::path::Path>,
        account: Account,
    ) -> Result<Self, String> {
        let credentials = credentials.map(sigv4::Credentials::load).transpose()?;
        if credentials.is_none() && !listen.ip().is_loopback() {
            return Err(format!(
                "--ec2-api {listen} is not a loopback address: anyone who reaches it could change \
                 the firewall; pass --ec2-api-credentials FILE (the access keys it accepts), or \
                 listen on 127.0.0.1"
            ));
        }
        Ok(Self {
            listen,
            credentials,
            account,
        })
    }
}

/// What a request handler has.
pub struct Api {
    pub store: Arc<Store>,
    pub credentials: Option<sigv4::Credentials>,
}

pub type Shared = Arc<Api>;
