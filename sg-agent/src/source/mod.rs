//! Where the rules come from and how the agent learns they changed: today
//! the rules file and its directory watch ([`watch`]).

pub mod etcd;
pub mod watch;
