//! EC2's XML responses: elements in the API's `locationName`s, text
//! escaped by quick-xml.

use std::borrow::Cow;

use quick_xml::escape::escape;

/// `text` escaped, with each character XML 1.0 does not allow at all
/// (control characters but tab and line ends, U+FFFE, U+FFFF) replaced by
/// U+FFFD: a request's value echoed in an error message must not make the
/// answer unreadable to the client (the fuzz target found `\u{3}`).
fn escaped(text: &str) -> Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if text.chars().all(allowed) {
        return escape(text);
    }
    let clean: String = text
        .chars()
        .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
        .collect();
    Cow::Owned(escape(&clean).into_owned())
}

/// EC2's namespace for API version 2016-11-15 (the only one).
pub const EC2_NS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An XML document under construction.
#[derive(Default)]
pub struct Xml(String);

impl Xml {
    pub fn new() -> Self {
        Self::default()
    }

    /// `<name>text</name>`.
    pub fn text(&mut self, name: &str, text: &str) -> &mut Self {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push('>');
        self.0.push_str(&escaped(text));
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
        self
    }

    /// `<name>text</name>` when there is a text.
    pub fn opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.text(name, t);
        }
        self
    }

    pub fn num(&mut self, name: &str, n: impl std::fmt::Display) -> &mut Self {
        self.text(name, &n.to_string())
    }

    pub fn bool(&mut self, name: &str, b: bool) -> &mut Self {
        self.text(name, if b { "true" } else { "false" })
    }

    /// `<name>` ... `</name>` around what `body` writes.
    pub fn elem(&mut self, name: &str, body: impl FnOnce(&mut Self)) -> &mut Self {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push('>');
        body(self);
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
        self
    }

    /// `<name><item>...</item>...</name>`, one item per element of `items`.
    pub fn list<T>(
        &mut self,
        name: &str,
        items: impl IntoIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T),
    ) -> &mut Self {
        self.elem(name, |x| {
            for item in items {
                x.elem("item", |x| each(x, item));
            }
        })
    }

    /// `<tagSet>` of key/value pairs.
    pub fn tags(&mut self, name: &str, tags: &[(String, String)]) -> &mut Self {
        self.list(name, tags, |x, (k, v)| {
            x.text("key", k).text("value", v);
        })
    }

    /// The response document: `<ActionResponse xmlns=...>` with its
    /// request id and this body.
    pub fn response(self, action: &str, request_id: &str, ns: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"{ns}\"><requestId>{request_id}</requestId>{}</{action}Response>",
            self.0
        )
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// EC2's error document.
pub fn error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        escaped(code),
        escaped(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_xml_forbids_never_reaches_an_answer() {
        let doc = error("InvalidParameterValue", "bad \u{3}value\u{FFFF} <&>\t", "r");
        let parsed = roxmltree::Document::parse(&doc).expect("XML");
        let message = parsed
            .descendants()
            .find(|n| n.has_tag_name("Message"))
            .and_then(|n| n.text())
            .expect("a message");
        assert_eq!(message, "bad \u{FFFD}value\u{FFFD} <&>\t");
        let mut x = Xml::new();
        x.text("description", "a\u{0}b");
        assert!(roxmltree::Document::parse(&x.response("Describe", "r", EC2_NS)).is_ok());
    }
}
