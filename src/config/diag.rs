//! How lowering reports: a `Diagnostic` at FILE:LINE:COL with a hint, collected into
//! `ConfigErrors`, and the small helpers every section shares (deserialising a section, reading
//! a duration or a bounded count) that report through them.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use super::Cx;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// `FILE:LINE:COL: warning: message` and its hint.
    pub fn as_warning(&self) -> String {
        let mut w = self.clone();
        w.message = format!("warning: {}", w.message);
        w.to_string()
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Cx<'_> {
    pub(super) fn error(&mut self, at: usize, message: impl Into<String>, hint: Option<String>) {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
            hint,
        });
    }

    pub(super) fn warn(&mut self, at: usize, message: impl Into<String>, hint: Option<String>) {
        self.error(at, message, hint);
        if let Some(d) = self.diags.pop() {
            self.warnings.push(d);
        }
    }

    pub(super) fn err_at<T>(
        &mut self,
        s: &Spanned<T>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.error(s.span().start, message, hint);
    }

    pub(super) fn de<T: DeserializeOwned>(
        &mut self,
        value: Spanned<DeValue<'_>>,
        what: &str,
    ) -> Option<T> {
        let start = value.span().start;
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = e.span().map_or(start, |s| s.start);
                let message = e.message().trim().to_string();
                let hint = message
                    .contains("unknown field")
                    .then(|| format!("see config/strangle.toml for every key of {what}"));
                self.error(at, message, hint);
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                let hint = Some("write a number with a unit: `500ms`, `20s`, `2m`".to_string());
                self.err_at(
                    v,
                    format!("bad duration `{}` for `{key}`: {e}", v.get_ref()),
                    hint,
                );
                default
            }
        }
    }

    /// A duration that is off when absent and must be more than zero when present.
    pub(super) fn optional_duration(
        &mut self,
        v: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<Duration> {
        let d = self.duration(v, key, Duration::ZERO);
        if let (Some(v), true) = (v, d.is_zero()) {
            let hint = Some(format!("leave `{key}` out to turn it off"));
            self.err_at(v, format!("`{key}` must be more than 0"), hint);
        }
        (!d.is_zero()).then_some(d)
    }

    pub(super) fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if !(min..=max).contains(&n) {
            self.err_at(
                v,
                format!("`{key}` must be between {min} and {max}, not {n}"),
                None,
            );
            return default;
        }
        n as usize
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
