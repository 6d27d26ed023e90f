//! LDAP search filters from templates (RFC 4515): each of the key's parts becomes an
//! escaped assertion value, so that a key can never widen or reshape the filter. Pure, so
//! the configuration checks a filter template with it.

use super::template::{self, Key, Part, TemplateError};

/// `filter` with the key's parts put in, each escaped per RFC 4515.
pub fn fill(filter: &str, key: &Key) -> Result<String, TemplateError> {
    Ok(fill_parts(&template::parse(filter)?, key))
}

/// Parts of a parsed filter template with the key's parts put in, escaped.
pub fn fill_parts(parts: &[Part], key: &Key) -> String {
    let mut out = String::new();
    for p in parts {
        match (p, p.value(key)) {
            (Part::Text(t), _) => out.push_str(t),
            (_, Some(v)) => out.push_str(&escape(v)),
            (_, None) => {}
        }
    }
    out
}

/// A key's part as an assertion value (RFC 4515): `*`, `(`, `)`, `\` and NUL become `\xx`
/// escapes, so that the value is matched literally. Other octets (UTF-8 included) are
/// valid as they are.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    ldap3::ldap_escape(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(filter: &str, key: &str) -> String {
        fill(filter, &Key::recipient(key)).unwrap()
    }

    #[test]
    fn hostile_keys_are_escaped_into_literal_values() {
        let f = "(&(objectClass=inetOrgPerson)(mail=%s))";
        let cases = [
            ("*", "(&(objectClass=inetOrgPerson)(mail=\\2a))"),
            (
                "*@example.test",
                "(&(objectClass=inetOrgPerson)(mail=\\2a@example.test))",
            ),
            (
                "alice)(mail=*",
                "(&(objectClass=inetOrgPerson)(mail=alice\\29\\28mail=\\2a))",
            ),
            ("a\0b", "(&(objectClass=inetOrgPerson)(mail=a\\00b))"),
            ("a\\00b", "(&(objectClass=inetOrgPerson)(mail=a\\5c00b))"),
            ("\"", "(&(objectClass=inetOrgPerson)(mail=\"))"),
            ("'", "(&(objectClass=inetOrgPerson)(mail='))"),
            (
                "Ünïcødé@example.test",
                "(&(objectClass=inetOrgPerson)(mail=Ünïcødé@example.test))",
            ),
        ];
        for (key, want) in cases {
            let got = filled(f, key);
            assert_eq!(got, want, "{key:?}");
            // Still one well-formed filter: the key did not end or open a component.
            assert!(ldap3::parse_filter(&got).is_ok(), "{key:?}: {got}");
        }
        let long = format!("{}@example.test", "x".repeat(64));
        assert_eq!(
            filled(f, &long),
            format!("(&(objectClass=inetOrgPerson)(mail={long}))")
        );
    }

    #[test]
    fn each_part_is_escaped_on_its_own() {
        let got = filled("(&(uid=%u)(domain=%d)(mail=%s))", "a*b@(x)");
        assert_eq!(
            got,
            "(&(uid=a\\2ab)(domain=\\28x\\29)(mail=a\\2ab@\\28x\\29))"
        );
    }
}
