//! EC2's errors: a code its SDKs know, a message, an HTTP status.

/// An error answered in EC2's shape
/// (`<Response><Errors><Error><Code>...`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub status: u16,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: 400,
        }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("The request must contain the parameter {param}"),
        )
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }

    pub fn malformed(what: impl std::fmt::Display) -> Self {
        Self::new("MalformedQueryString", format!("The request has {what}"))
    }

    pub fn group_not_found(id: &str) -> Self {
        Self::new(
            "InvalidGroup.NotFound",
            format!("The security group '{id}' does not exist"),
        )
    }

    /// The agent could not do what it should (the rules file unreadable,
    /// the change not put in force): HTTP 500, as EC2's own.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: "InternalError",
            message: message.into(),
            status: 500,
        }
    }
}
