//! `${env:NAME}` and `${file:PATH}` in every string of the parsed tree, before any section is
//! deserialised.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::inputs::{self, Inputs};
use super::Cx;

impl Cx<'_> {
    pub(super) fn interpolate_table(&mut self, table: &mut DeTable<'_>) {
        for (_, value) in table.iter_mut() {
            self.interpolate(value);
        }
    }

    pub(super) fn interpolate(&mut self, value: &mut Spanned<DeValue<'_>>) {
        let start = value.span().start;
        match value.get_mut() {
            DeValue::String(s) if s.contains("${") => {
                match interpolate(s, self.base, self.inputs) {
                    Ok(v) => *s = v.into(),
                    Err(message) => self.error(start, message, None),
                }
            }
            DeValue::Array(a) => a.iter_mut().for_each(|v| self.interpolate(v)),
            DeValue::Table(t) => self.interpolate_table(t),
            _ => {}
        }
    }
}

/// Replaces `${env:NAME}` and `${file:PATH}` in a string. A resolved value is taken as it is,
/// never searched for references again; the message on failure never contains one.
pub(super) fn interpolate(text: &str, base: &Path, inputs: &dyn Inputs) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${` in string".to_string())?;
        let reference = &after[..end];
        match reference.split_once(':') {
            Some(("env", name)) => match inputs.var(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable `{name}` is not set")),
            },
            Some(("file", p)) => {
                let path = base.join(p);
                let v = inputs::text(inputs, &path)?;
                out.push_str(v.trim_end_matches(['\n', '\r']));
            }
            _ => {
                return Err(format!(
                    "unknown reference `${{{reference}}}`: use `${{env:NAME}}` or `${{file:PATH}}`"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
