//! Preset prompt templates: `{{name}}` placeholders filled from a job's `variables`.
//!
//! Rules (documented in the README's preset section):
//! - a placeholder is `{{name}}` with `name` matching `[A-Za-z_][A-Za-z0-9_]*` (spaces inside the
//!   braces are allowed: `{{ name }}`);
//! - `\{{` is a literal `{{`; any other backslash is kept as it is;
//! - any other `{{` (unclosed, or not a valid name) makes the template invalid, refused when the
//!   preset is defined, so that a typo never reaches a model as literal braces;
//! - rendering is one pass: a value is inserted verbatim and never scanned again, so a variable
//!   holding `{{other}}` stays that text (no template injection);
//! - strict: a placeholder without a variable, or a variable the template does not use, is an
//!   error naming it.

use crate::error::{Error, Reason, Result};
use std::collections::{BTreeMap, BTreeSet};

/// One piece of a parsed template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `template` into text and placeholders; `Err` says what is wrong, in words.
fn parse(template: &str) -> std::result::Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        if rest[..at].ends_with('\\') {
            out.push(Piece::Text(&rest[..at - 1]));
            out.push(Piece::Text("{{"));
            rest = &rest[at + 2..];
            continue;
        }
        out.push(Piece::Text(&rest[..at]));
        let after = &rest[at + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed `{{{{` at byte {}",
                template.len() - rest.len() + at
            )
        })?;
        let name = after[..end].trim();
        if !valid_name(name) {
            return Err(format!(
                "`{{{{{}}}}}` is not a variable: names match [A-Za-z_][A-Za-z0-9_]* (write \\{{{{ \
                 for literal braces)",
                &after[..end]
            ));
        }
        out.push(Piece::Var(name));
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Whether `name` can be a variable name (also checked for the keys of `variables`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// Checks a template when a preset is defined; `field` names where it came from.
pub fn check(field: &str, template: &str) -> Result<()> {
    parse(template)
        .map(|_| ())
        .map_err(|msg| Error::invalid(Reason::InvalidField, field, format!("{field}: {msg}")))
}

/// The variables a template uses, in order of first use.
pub fn variables(template: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    parse(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(v) if seen.insert(v) => Some(v.to_owned()),
            _ => None,
        })
        .collect()
}

/// Renders `template` with `vars`, strictly (see the module comment).
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let pieces = parse(template).map_err(|msg| {
        Error::invalid(
            Reason::InvalidField,
            "preset",
            format!("the preset's prompt_template is invalid: {msg}"),
        )
    })?;
    let mut used = BTreeSet::new();
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => {
                let value = vars.get(name).ok_or_else(|| {
                    Error::invalid(
                        Reason::MissingVariable,
                        format!("variables[{name:?}]"),
                        format!("the preset's prompt_template needs variable {name:?}"),
                    )
                })?;
                used.insert(name);
                out.push_str(value);
            }
        }
    }
    if let Some(extra) = vars.keys().find(|k| !used.contains(k.as_str())) {
        return Err(Error::invalid(
            Reason::UnknownVariable,
            format!("variables[{extra:?}]"),
            format!("the preset's prompt_template has no variable {extra:?}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::tests::vars;

    #[test]
    fn renders_each_placeholder_once_without_rescanning_values() {
        let t = "Review {{file}} for {{ concern }}; again {{file}}.";
        let got = render(t, &vars(&[("file", "{{concern}}"), ("concern", "bugs")])).unwrap();
        assert_eq!(got, "Review {{concern}} for bugs; again {{concern}}.");
        assert_eq!(variables(t), vec!["file", "concern"]);
    }

    #[test]
    fn escapes_and_invalid_templates() {
        assert_eq!(render(r"a \{{x}} b", &vars(&[])).unwrap(), "a {{x}} b");
        assert_eq!(
            render(r"a\b {{x}}", &vars(&[("x", "1")])).unwrap(),
            r"a\b 1"
        );
        for bad in ["{{", "a {{x", "{{1x}}", "{{a b}}", "{{}}", "{{a-b}}"] {
            assert!(check("prompt_template", bad).is_err(), "{bad}");
        }
        check("prompt_template", "plain } {single} braces }}").unwrap();
    }

    #[test]
    fn strict_about_missing_and_unused_variables() {
        let err = render("{{a}} {{b}}", &vars(&[("a", "1")])).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { reason: Reason::MissingVariable, field, .. } if field.contains("\"b\"")),
            "{err:?}"
        );
        let err = render("{{a}}", &vars(&[("a", "1"), ("zz", "2")])).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidArgument {
                    reason: Reason::UnknownVariable,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
