//! What a directory is asked ([`Key`]), and templates with `%s` (the whole key), `%u` (its local part), `%d` (its domain) and `%%`
//! (a `%`): split into literal text and placeholders, so that each source puts the key's
//! parts in its own safe way instead of pasting them into the text.

/// What is looked up: an SMTP recipient (an address) or a login name (POP3, SMTP AUTH).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: KeyKind,
    /// The address as `local@domain` (domain lower-cased) or the user name as given.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Recipient,
    User,
}

impl Key {
    pub fn recipient(text: impl Into<String>) -> Key {
        Key {
            kind: KeyKind::Recipient,
            text: text.into(),
        }
    }

    pub fn user(text: impl Into<String>) -> Key {
        Key {
            kind: KeyKind::User,
            text: text.into(),
        }
    }

    /// The part before the last `@`, or the whole key without one (`%u`).
    pub fn local(&self) -> &str {
        self.text.rsplit_once('@').map_or(&self.text, |(l, _)| l)
    }

    /// The part after the last `@`, or empty without one (`%d`).
    pub fn domain(&self) -> &str {
        self.text.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Whole,
    Local,
    Domain,
}

impl Part {
    /// The key's text for a placeholder; `None` for literal text.
    pub fn value<'k>(&self, key: &'k Key) -> Option<&'k str> {
        match self {
            Part::Text(_) => None,
            Part::Whole => Some(&key.text),
            Part::Local => Some(key.local()),
            Part::Domain => Some(key.domain()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder %{0} (use %s, %u, %d or %%)")]
    Unknown(char),
    #[error("a lone % at the end")]
    Dangling,
    #[error("no placeholder: every key would get the same answer")]
    NoPlaceholder,
}

/// Splits `template` into parts; it must use at least one placeholder.
pub fn parse(template: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let part = match chars.next() {
            Some('%') => {
                text.push('%');
                continue;
            }
            Some('s') => Part::Whole,
            Some('u') => Part::Local,
            Some('d') => Part::Domain,
            Some(other) => return Err(TemplateError::Unknown(other)),
            None => return Err(TemplateError::Dangling),
        };
        if !text.is_empty() {
            parts.push(Part::Text(std::mem::take(&mut text)));
        }
        parts.push(part);
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
        return Err(TemplateError::NoPlaceholder);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_split_from_the_text() {
        let p = parse("(&(mail=%s)(uid=%u)(dc=%d)) 100%%").unwrap();
        assert_eq!(
            p,
            [
                Part::Text("(&(mail=".into()),
                Part::Whole,
                Part::Text(")(uid=".into()),
                Part::Local,
                Part::Text(")(dc=".into()),
                Part::Domain,
                Part::Text(")) 100%".into()),
            ]
        );
        let key = Key::recipient("a@b.example");
        let filled: Vec<_> = p.iter().filter_map(|x| x.value(&key)).collect();
        assert_eq!(filled, ["a@b.example", "a", "b.example"]);
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(parse("x=%x"), Err(TemplateError::Unknown('x')));
        assert_eq!(parse("x=%"), Err(TemplateError::Dangling));
        assert_eq!(parse("(objectClass=*)"), Err(TemplateError::NoPlaceholder));
    }

    #[test]
    fn a_user_name_has_no_domain() {
        let k = Key::user("alice");
        assert_eq!((k.local(), k.domain()), ("alice", ""));
    }
}
