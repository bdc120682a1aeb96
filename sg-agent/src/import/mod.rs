//! Rules from where AWS users keep them: the AWS CLI's JSON ([`aws`], to a
//! rules file and back) and Terraform's state ([`terraform`]), both written
//! by one renderer.

pub mod aws;
pub mod network_acls;
pub mod terraform;
pub mod vpc_links;
