//! Rules from where AWS users keep them: the AWS CLI's JSON ([`aws`]), to a
//! rules file and back.

pub mod aws;
