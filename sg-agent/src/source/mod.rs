//! Where the rules come from and how the agent learns they changed (the
//! rules file and its directory watch, [`watch`]; etcd, [`etcd`];
//! another EC2 endpoint's groups, [`follow`]), and
//! the links that appear where instances live ([`links`]).

pub mod etcd;
pub mod follow;
pub mod links;
pub mod watch;
