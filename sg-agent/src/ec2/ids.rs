//! AWS ids for what the rules file names: the file's own `id` where it
//! gives one, else one derived from what identifies the thing (stable
//! across reloads and restarts, the same on every host reading the same
//! file); new ones for what the API creates, random as AWS's.

pub use crate::config::derived_id as derived;

/// `prefix-` and 17 random hex digits (the kernel's random source).
pub fn fresh(prefix: &str) -> String {
    let mut bytes = [0u8; 9];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if let Ok(n) = usize::try_from(n) {
            filled += n;
        }
    }
    let hex = crate::config::hex(&bytes);
    format!("{prefix}-{}", &hex[..17])
}

/// An EC2 request id (a UUID's shape).
pub fn request_id() -> String {
    let h = fresh("r");
    let more = fresh("r");
    let d = format!("{}{}", &h[2..], &more[2..]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..15],
        &d[15..18],
        &d[18..30]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_aws_shape() {
        let d = derived("sg", &["vpc", "web"]);
        assert!(crate::config::is_aws_id("sg", &d), "{d}");
        assert_eq!(d, derived("sg", &["vpc", "web"]));
        assert_ne!(d, derived("sg", &["vpcweb"]));
        let f = fresh("sgr");
        assert!(crate::config::is_aws_id("sgr", &f), "{f}");
        assert_ne!(f, fresh("sgr"));
        assert_eq!(request_id().len(), 36);
    }
}
